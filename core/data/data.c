/*
 * data.c — in-memory datasets: validation on creation, normalisation, the seeded
 * train/validation split, the order of an epoch and gathering a batch.
 *
 * The dataset keeps contiguous inputs so a batch is one memcpy per sample row: batching
 * sits on the training hot path and must cost microseconds. File parsing lives in
 * data_formats.c.
 */
#include "kn_internal.h"
#include "kn_data.h"
#include "kn_train_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- seeds ------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Mixing both halves through splitmix64 makes neighbouring (seed, epoch) pairs give
 * unrelated mt19937 seeds; a plain seed + epoch would make (s, e+1) equal (s+1, e). */
static uint64_t mix_seed(uint64_t seed, uint64_t stream)
{
    return splitmix64(seed ^ splitmix64(stream));
}

/* The split's permutation uses a stream no epoch reaches (epochs are >= 0). */
#define SPLIT_STREAM 0xd1b54a32d192ed03ULL

/* ---- datasets --------------------------------------------------------------------- */

static int64_t row_elements(const kn_tensor *inputs)
{
    int64_t n = 1;
    for (int d = 1; d < inputs->ndim; d++) n *= inputs->shape[d];
    return n;
}

/* The bytes of one sample of t [N, ...] (inputs of either dtype; labels [N], [N, T, ...] or
 * [N, K]); 0 for NULL (an unlabeled dataset). */
static size_t sample_bytes(const kn_tensor *t)
{
    return t ? (size_t)row_elements(t) * kn_dtype_size(t->dtype) : 0;
}

/* The bytes from one sample of t to the next: sample_bytes, or less for the overlapping
 * windows of a token stream (data_windows.c); 0 for NULL. */
static size_t sample_pitch(const kn_tensor *t)
{
    return t ? (size_t)t->strides[0] * kn_dtype_size(t->dtype) : 0;
}

/* An unregistered cpu tensor of t's dtype and sample shape with n samples. */
static kn_tensor *samples_like(const kn_tensor *t, int64_t n)
{
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = n;
    return kn__empty_raw(shape, t->ndim, t->dtype, kn_cpu());
}

static const char *dtype_of(const kn_tensor *t)
{
    return kn_dtype_name(t->dtype);
}

/* Checks that nothing in data is NaN or infinite; names the first bad sample. */
static kn_status check_finite(const float *data, int64_t count, int64_t row)
{
    int64_t total = count * row;
    for (int64_t i = 0; i < total; i++) {
        if (isfinite(data[i])) continue;
        return kn__error(KN_ERR_VALUE,
                         "dataset: inputs must be finite, sample %lld has %g at element %lld "
                         "of the sample",
                         (long long)(i / row), (double)data[i], (long long)(i % row));
    }
    return KN_OK;
}

/* Class labels, count samples of per_sample each (1, or the positions of labels per
 * position): >= 0 and < INT64_MAX (num_classes, the largest + 1, must fit); a position's
 * label may also be ignore_index, which the losses skip as torch's do. Returns the
 * largest (-1 when every position is ignored), or -2 after setting the error. */
static int64_t check_classes(const int64_t *label, int64_t count, int64_t per_sample)
{
    int64_t max_label = -1, total = count * per_sample;
    bool per_position = per_sample > 1;
    for (int64_t i = 0; i < total; i++) {
        bool ignored = per_position && label[i] == KN_DEFAULT_IGNORE_INDEX;
        if (label[i] < 0 && !ignored) {
            if (per_position)
                kn__error(KN_ERR_VALUE,
                          "dataset: labels must be >= 0 or %d (ignore_index: a position the loss "
                          "skips), sample %lld has %lld at position %lld",
                          KN_DEFAULT_IGNORE_INDEX, (long long)(i / per_sample), (long long)label[i],
                          (long long)(i % per_sample));
            else
                kn__error(KN_ERR_VALUE, "dataset: labels must be >= 0, sample %lld has %lld",
                          (long long)i, (long long)label[i]);
            return -2;
        }
        if (label[i] == INT64_MAX) {
            kn__error(KN_ERR_VALUE,
                      "dataset: labels must be < %lld (class indices), sample %lld has %lld",
                      (long long)INT64_MAX, (long long)(i / per_sample), (long long)label[i]);
            return -2;
        }
        if (label[i] > max_label) max_label = label[i];
    }
    return max_label;
}

/* Float targets must be finite: a NaN target makes every loss NaN. */
static kn_status check_finite_targets(const float *t, int64_t count, int64_t row)
{
    for (int64_t i = 0; i < count * row; i++)
        if (!isfinite(t[i]))
            return kn__error(KN_ERR_VALUE,
                             "dataset: targets must be finite, sample %lld has %g at target %lld",
                             (long long)(i / row), (double)t[i], (long long)(i % row));
    return KN_OK;
}

static kn_status check_labels(const kn_tensor *inputs, const kn_tensor *labels)
{
    if (labels->device.type != KN_DEVICE_CPU)
        return kn__error(KN_ERR_DEVICE, "dataset: inputs and labels must be on the cpu");
    /* int64 [N]: a class per sample; int64 [N, T, ...]: a class per position (a sequence's
     * tokens); float32 [N] or [N, K]: targets of regression, binary and multi-label tasks */
    bool classes = labels->dtype == KN_INT64 && labels->ndim >= 1;
    bool targets = labels->dtype == KN_FLOAT32 && (labels->ndim == 1 || labels->ndim == 2);
    if (!classes && !targets)
        return kn__error(labels->dtype == KN_INT64 || labels->dtype == KN_FLOAT32 ? KN_ERR_SHAPE
                                                                                  : KN_ERR_DTYPE,
                         "dataset: labels must be int64 class indices [N] (a class per sample) "
                         "or [N, T, ...] (a class per position), or float32 targets [N] or "
                         "[N, K], got %s %s",
                         dtype_of(labels), kn__shape(labels));
    if (labels->shape[0] != inputs->shape[0])
        return kn__error(KN_ERR_SHAPE, "dataset: inputs have %lld samples %s but labels have %lld",
                         (long long)inputs->shape[0], kn__shape(inputs),
                         (long long)labels->shape[0]);
    if (targets && labels->ndim == 2 && labels->shape[1] == 0)
        return kn__error(KN_ERR_SHAPE, "dataset: targets %s have no columns", kn__shape(labels));
    return KN_OK;
}

kn_dataset *kn_dataset_new(kn_tensor *inputs, kn_tensor *labels)
{
    if (!inputs) return kn__error_null(KN_ERR_NULL, "dataset: inputs is NULL");
    if (inputs->device.type != KN_DEVICE_CPU)
        return kn__error_null(KN_ERR_DEVICE, "dataset: inputs and labels must be on the cpu");
    if (inputs->dtype != KN_FLOAT32 && inputs->dtype != KN_INT64)
        return kn__error_null(KN_ERR_DTYPE, "dataset: inputs must be float32 or int64, got %s",
                              dtype_of(inputs));
    if (inputs->ndim < 2)
        return kn__error_null(KN_ERR_SHAPE,
                              "dataset: inputs must be [N, ...] with at least 2 dims, got %s",
                              kn__shape(inputs));
    if (labels && check_labels(inputs, labels) != KN_OK) return NULL;
    if (inputs->shape[0] == 0) return kn__error_null(KN_ERR_SHAPE, "dataset: no samples");

    kn_tensor *x = kn__contiguous_raw(inputs);
    kn_tensor *y = x && labels ? kn__contiguous_raw(labels) : NULL;
    if (!x || (labels && !y)) {
        kn_release(x);
        return NULL;
    }
    int64_t count = inputs->shape[0];
    int64_t max_label = -1;
    bool ok = true;
    if (y && y->dtype == KN_INT64) {
        max_label = check_classes(kn__data_ptr(y), count, row_elements(y));
        ok = max_label >= -1;
    } else if (y) {
        ok = check_finite_targets(kn__data_ptr(y), count, row_elements(y)) == KN_OK;
    }
    /* int64 inputs (token indices) are finite by construction */
    ok = ok &&
         (x->dtype != KN_FLOAT32 || check_finite(kn__data_ptr(x), count, row_elements(x)) == KN_OK);
    kn_dataset *ds = ok ? malloc(sizeof *ds) : NULL;
    if (!ds) {
        kn_release(x);
        kn_release(y);
        return ok ? kn__error_null(KN_ERR_MEMORY, "dataset: out of memory") : NULL;
    }
    ds->inputs = x;
    ds->labels = y;
    ds->count = count;
    ds->num_classes = max_label + 1;
    return ds;
}

void kn_dataset_free(kn_dataset *ds)
{
    if (!ds) return;
    kn_release(ds->inputs);
    kn_release(ds->labels);
    free(ds);
}

kn_status kn_dataset_normalize(kn_dataset *ds, double scale, const double *mean, const double *std,
                               int channels)
{
    if (!ds) return kn__error(KN_ERR_NULL, "dataset_normalize: dataset is NULL");
    kn_tensor *x = ds->inputs;
    /* One channel covers every element, whatever the layout ([N, H, W] images). */
    if (channels > 1 && x->shape[1] != channels)
        return kn__error(KN_ERR_SHAPE,
                         "dataset_normalize: %d channels of mean/std but inputs %s have %lld in "
                         "dim 1",
                         channels, kn__shape(x), (long long)x->shape[1]);
    /* int64 inputs (token indices) stay int64 unless there is arithmetic to do; the
     * arguments are checked (on no data) before they are converted, so a refused call
     * leaves them as they were */
    if (x->dtype == KN_INT64) {
        kn_status st = kn_normalize_floats(NULL, 0, row_elements(x), scale, mean, std, channels);
        if (st != KN_OK || ((float)scale == 1.0f && channels == 0)) return st;
        st = kn_dataset_to_dtype(ds, KN_FLOAT32);
        if (st != KN_OK) return st;
        x = ds->inputs;
    }
    return kn_normalize_floats(kn__data_ptr(x), ds->count, row_elements(x), scale, mean, std,
                               channels);
}

kn_status kn_normalize_floats(float *data, int64_t count, int64_t sample, double scale,
                              const double *mean, const double *std, int channels)
{
    if (!data && count * sample > 0) return kn__error(KN_ERR_NULL, "dataset_normalize: no data");
    if (!isfinite(scale) || scale == 0)
        return kn__error(KN_ERR_VALUE,
                         "dataset_normalize: scale must be finite and non-zero, got %g", scale);
    if (channels < 0)
        return kn__error(KN_ERR_VALUE, "dataset_normalize: channels must be >= 0, got %d",
                         channels);
    if (channels > 0 && (!mean || !std))
        return kn__error(KN_ERR_NULL, "dataset_normalize: %d channels but mean or std is NULL",
                         channels);
    if (count < 0 || sample < 0 || (channels > 1 && sample % channels))
        return kn__error(KN_ERR_SHAPE,
                         "dataset_normalize: %lld samples of %lld values do not split into %d "
                         "channels",
                         (long long)count, (long long)sample, channels);
    for (int c = 0; c < channels; c++) {
        if (!isfinite(mean[c]))
            return kn__error(KN_ERR_VALUE, "dataset_normalize: mean[%d] must be finite, got %g", c,
                             mean[c]);
        if (!(std[c] > 0) || !isfinite(std[c]) || !((float)std[c] > 0))
            return kn__error(KN_ERR_VALUE, "dataset_normalize: std[%d] must be > 0, got %g", c,
                             std[c]);
    }
    int64_t total = count * sample;
    /* float arithmetic, as torchvision's Normalize does on float32 tensors */
    const float s = (float)scale;
    if (s != 1.0f)
        for (int64_t i = 0; i < total; i++) data[i] *= s;
    if (channels == 0) return KN_OK;
    int64_t inner = channels == 1 ? total : sample / channels;
    int64_t outer = channels == 1 ? 1 : count;
    for (int64_t n = 0; n < outer; n++) {
        for (int c = 0; c < channels; c++) {
            float m = (float)mean[c], sd = (float)std[c];
            float *p = data + (n * channels + c) * inner;
            for (int64_t i = 0; i < inner; i++) p[i] = (p[i] - m) / sd;
        }
    }
    return KN_OK;
}

/* Element i of float32 or int64 data, as a double (int64 token inputs have stats too). */
static double value_at(const void *data, kn_dtype dtype, int64_t i)
{
    return dtype == KN_INT64 ? (double)((const int64_t *)data)[i] : ((const float *)data)[i];
}

kn_status kn_dataset_channel_stats(const kn_dataset *ds, int channels, double *mean, double *std)
{
    if (!ds || !mean || !std) return kn__error(KN_ERR_NULL, "dataset_channel_stats: NULL argument");
    const kn_tensor *x = ds->inputs;
    if (channels < 1 || (channels > 1 && x->shape[1] != channels))
        return kn__error(KN_ERR_SHAPE,
                         "dataset_channel_stats: %d channels but inputs %s have %lld in dim 1",
                         channels, kn__shape(x), (long long)x->shape[1]);
    const void *data = kn__data_ptr((kn_tensor *)x);
    kn_dtype dtype = x->dtype;
    int64_t inner = channels == 1 ? kn_numel(x) : row_elements(x) / channels;
    int64_t outer = channels == 1 ? 1 : ds->count;
    double n = (double)(inner * outer);
    /* two passes in double: the mean, then the squares about it (no cancellation) */
    for (int c = 0; c < channels; c++) {
        double sum = 0;
        for (int64_t o = 0; o < outer; o++) {
            int64_t at = (o * channels + c) * inner;
            for (int64_t i = 0; i < inner; i++) sum += value_at(data, dtype, at + i);
        }
        double m = sum / n, squares = 0;
        for (int64_t o = 0; o < outer; o++) {
            int64_t at = (o * channels + c) * inner;
            for (int64_t i = 0; i < inner; i++) {
                double d = value_at(data, dtype, at + i) - m;
                squares += d * d;
            }
        }
        double sd = sqrt(squares / n);
        mean[c] = m;
        /* a constant channel is only centred (scikit-learn's StandardScaler does the same);
         * the float32 cast must not make the std zero either */
        std[c] = (float)sd > 0 ? sd : 1.0;
    }
    return KN_OK;
}

/* Integral float32 values that fit int64 (2^63 is exactly representable in float). */
static bool integral(float v)
{
    return v == floorf(v) && v >= -9223372036854775808.0f && v < 9223372036854775808.0f;
}

kn_status kn_dataset_to_dtype(kn_dataset *ds, kn_dtype dtype)
{
    if (!ds) return kn__error(KN_ERR_NULL, "dataset_to_dtype: dataset is NULL");
    if (dtype != KN_FLOAT32 && dtype != KN_INT64)
        return kn__error(KN_ERR_DTYPE, "dataset_to_dtype: unknown dtype %d", (int)dtype);
    kn_tensor *x = ds->inputs;
    if (x->dtype == dtype) return KN_OK;
    if (kn__dataset_is_windows(ds))
        return kn__error(KN_ERR_DTYPE,
                         "dataset_to_dtype: the samples are token windows of a language model's "
                         "text: they stay int64 token ids (the model must start with an "
                         "embedding)");
    int64_t total = kn_numel(x), row = row_elements(x);
    if (dtype == KN_INT64) {
        const float *v = kn__data_ptr(x);
        for (int64_t i = 0; i < total; i++)
            if (!integral(v[i]))
                return kn__error(KN_ERR_VALUE,
                                 "dataset: inputs must be integers to be int64 indices, sample "
                                 "%lld has %g at element %lld of the sample",
                                 (long long)(i / row), (double)v[i], (long long)(i % row));
    }
    kn_scope_begin();
    kn_tensor *converted = kn_retain(kn_to_dtype(x, dtype));
    kn_scope_end();
    if (!converted) return kn_last_status();
    kn_release(ds->inputs);
    ds->inputs = converted;
    return KN_OK;
}

/* A new dataset with the samples whose keep[i] equals want, in their original order. */
static kn_dataset *subset(const kn_dataset *ds, const unsigned char *keep, unsigned char want,
                          int64_t n)
{
    kn_tensor *x = samples_like(ds->inputs, n);
    kn_tensor *y = x && ds->labels ? samples_like(ds->labels, n) : NULL;
    kn_dataset *out = x && (y || !ds->labels) ? malloc(sizeof *out) : NULL;
    if (!out) {
        kn_release(x);
        kn_release(y);
        return kn__error_null(KN_ERR_MEMORY, "dataset_split: out of memory");
    }
    size_t row = sample_bytes(ds->inputs), label_row = sample_bytes(ds->labels);
    size_t pitch = sample_pitch(ds->inputs), label_pitch = sample_pitch(ds->labels);
    const char *src = kn__data_ptr(ds->inputs);
    const char *src_labels = y ? kn__data_ptr(ds->labels) : NULL;
    char *dst = kn__data_ptr(x);
    char *dst_labels = y ? kn__data_ptr(y) : NULL;
    int64_t j = 0;
    for (int64_t i = 0; i < ds->count; i++) {
        if (keep[i] != want) continue;
        memcpy(dst + (size_t)j * row, src + (size_t)i * pitch, row);
        if (y)
            memcpy(dst_labels + (size_t)j * label_row, src_labels + (size_t)i * label_pitch,
                   label_row);
        j++;
    }
    out->inputs = x;
    out->labels = y;
    out->count = n;
    /* Both parts keep the full data set's class count: the model's output size must not
     * depend on which classes happened to land in the validation part. */
    out->num_classes = ds->num_classes;
    return out;
}

kn_status kn_dataset_split(const kn_dataset *ds, double fraction, uint64_t seed, kn_dataset **train,
                           kn_dataset **validation)
{
    if (!ds || !train || !validation) return kn__error(KN_ERR_NULL, "dataset_split: NULL argument");
    *train = *validation = NULL;
    if (kn__dataset_is_windows(ds))
        return kn__error(KN_ERR_VALUE,
                         "dataset_split: the samples are overlapping windows of one token "
                         "stream: split the stream instead (nanoGPT's first and last parts), "
                         "then make the windows of each part");
    if (!(fraction > 0 && fraction < 1))
        return kn__error(KN_ERR_VALUE, "dataset_split: fraction must be in (0, 1), got %g",
                         fraction);
    /* The small slack keeps 0.1 * 60000 at 6000 despite rounding in the product. */
    int64_t n_val = (int64_t)floor(fraction * (double)ds->count + 1e-6);
    if (n_val < 1 || n_val >= ds->count)
        return kn__error(KN_ERR_VALUE,
                         "dataset_split: fraction %g of %lld samples leaves %lld for validation "
                         "and %lld for training; both need at least 1",
                         fraction, (long long)ds->count, (long long)n_val,
                         (long long)(ds->count - n_val));
    kn_generator *gen = kn_generator_new(mix_seed(seed, SPLIT_STREAM));
    unsigned char *is_val = calloc((size_t)ds->count, 1);
    if (!gen || !is_val) {
        kn_generator_free(gen);
        free(is_val);
        return kn__error(KN_ERR_MEMORY, "dataset_split: out of memory");
    }
    kn_scope_begin();
    kn_tensor *perm = kn_randperm(ds->count, gen);
    kn_generator_free(gen);
    if (!perm) {
        kn_scope_end();
        free(is_val);
        return kn_last_status();
    }
    const int64_t *p = kn__data_ptr(perm);
    for (int64_t i = ds->count - n_val; i < ds->count; i++) is_val[p[i]] = 1;
    kn_scope_end();
    *train = subset(ds, is_val, 0, ds->count - n_val);
    *validation = *train ? subset(ds, is_val, 1, n_val) : NULL;
    free(is_val);
    if (!*validation) {
        kn_dataset_free(*train);
        *train = NULL;
        return kn_last_status();
    }
    return KN_OK;
}

/* ---- epochs and batches ----------------------------------------------------------- */

kn_tensor *kn_epoch_order(int64_t count, uint64_t seed, int64_t epoch, bool shuffle)
{
    if (count < 0)
        return kn__error_null(KN_ERR_VALUE, "epoch_order: count must be >= 0, got %lld",
                              (long long)count);
    if (epoch < 0)
        return kn__error_null(KN_ERR_VALUE, "epoch_order: epoch must be >= 0, got %lld",
                              (long long)epoch);
    if (!shuffle) return kn_arange(count);
    kn_generator *gen = kn_generator_new(mix_seed(seed, (uint64_t)epoch));
    if (!gen) return kn__error_null(KN_ERR_MEMORY, "epoch_order: out of memory");
    kn_tensor *order = kn_randperm(count, gen);
    kn_generator_free(gen);
    return order;
}

int64_t kn_batches_per_epoch(int64_t count, int64_t batch_size, bool drop_last)
{
    if (count < 0 || batch_size <= 0) {
        kn__error(KN_ERR_VALUE,
                  "batches_per_epoch: need count >= 0 and batch_size > 0, got %lld "
                  "and %lld",
                  (long long)count, (long long)batch_size);
        return 0;
    }
    return drop_last ? count / batch_size : (count + batch_size - 1) / batch_size;
}

/* Checks a batch request; *start and *n are the batch's first position and its rows. */
static kn_status batch_range(const kn_dataset *ds, kn_tensor *order, int64_t batch_index,
                             int64_t batch_size, int64_t *start, int64_t *n)
{
    if (!ds || !order) return kn__error(KN_ERR_NULL, "dataset_batch: dataset or order is NULL");
    if (order->dtype != KN_INT64 || order->ndim != 1 || order->device.type != KN_DEVICE_CPU)
        return kn__error(KN_ERR_DTYPE,
                         "dataset_batch: order must be a 1-D int64 cpu tensor, "
                         "got %s %s",
                         dtype_of(order), kn__shape(order));
    if (batch_size <= 0)
        return kn__error(KN_ERR_VALUE, "dataset_batch: batch_size must be > 0, got %lld",
                         (long long)batch_size);
    int64_t length = order->shape[0];
    if (batch_index < 0 || batch_index > (length - 1) / batch_size || length == 0)
        return kn__error(KN_ERR_VALUE,
                         "dataset_batch: batch %lld is out of range: an order of %lld samples "
                         "has %lld batches of %lld",
                         (long long)batch_index, (long long)length,
                         (long long)kn_batches_per_epoch(length, batch_size, false),
                         (long long)batch_size);
    *start = batch_index * batch_size;
    *n = length - *start < batch_size ? length - *start : batch_size;
    return KN_OK;
}

/* Copies rows order[start .. start + n) of the dataset to dst and dst_labels (labels only
 * when the dataset has them). */
static kn_status gather_rows(const kn_dataset *ds, kn_tensor *order, int64_t start, int64_t n,
                             void *dst, void *dst_labels)
{
    const int64_t *idx = (const int64_t *)order->storage->data + order->offset;
    int64_t stride = order->strides[0];
    size_t row = sample_bytes(ds->inputs), label_row = sample_bytes(ds->labels);
    size_t pitch = sample_pitch(ds->inputs), label_pitch = sample_pitch(ds->labels);
    const char *src = kn__data_ptr(ds->inputs);
    const char *src_labels = ds->labels ? kn__data_ptr(ds->labels) : NULL;
    for (int64_t j = 0; j < n; j++) {
        int64_t i = idx[(start + j) * stride];
        if (i < 0 || i >= ds->count)
            return kn__error(KN_ERR_VALUE,
                             "dataset_batch: order[%lld] = %lld is out of range for %lld samples",
                             (long long)(start + j), (long long)i, (long long)ds->count);
        memcpy((char *)dst + (size_t)j * row, src + (size_t)i * pitch, row);
        if (src_labels)
            memcpy((char *)dst_labels + (size_t)j * label_row, src_labels + (size_t)i * label_pitch,
                   label_row);
    }
    return KN_OK;
}

kn_status kn_dataset_batch(const kn_dataset *ds, kn_tensor *order, int64_t batch_index,
                           int64_t batch_size, kn_tensor **inputs, kn_tensor **labels)
{
    if (!inputs || !labels) return kn__error(KN_ERR_NULL, "dataset_batch: NULL output pointer");
    *inputs = *labels = NULL;
    int64_t start = 0, n = 0;
    kn_status st = batch_range(ds, order, batch_index, batch_size, &start, &n);
    if (st != KN_OK) return st;
    kn_tensor *x = samples_like(ds->inputs, n);
    kn_tensor *y = x && ds->labels ? samples_like(ds->labels, n) : NULL;
    if (!x || (ds->labels && !y)) {
        kn_release(x);
        return kn_last_status() ? kn_last_status() : KN_ERR_MEMORY;
    }
    st = gather_rows(ds, order, start, n, kn__data_ptr(x), y ? kn__data_ptr(y) : NULL);
    if (st != KN_OK) {
        kn_release(x);
        kn_release(y);
        return st;
    }
    *inputs = kn__result(x);
    *labels = y ? kn__result(y) : NULL;
    return KN_OK;
}

kn_status kn__dataset_gather(const kn_dataset *ds, kn_tensor *order, int64_t batch_index,
                             int64_t batch_size, void *inputs, void *labels, int64_t *rows)
{
    int64_t start = 0, n = 0;
    kn_status st = batch_range(ds, order, batch_index, batch_size, &start, &n);
    if (st == KN_OK) st = gather_rows(ds, order, start, n, inputs, labels);
    *rows = st == KN_OK ? n : 0;
    return st;
}

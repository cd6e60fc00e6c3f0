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

/* The bytes of one sample of t [N, ...] (inputs of either dtype, labels [N] or [N, T]). */
static size_t sample_bytes(const kn_tensor *t)
{
    return (size_t)row_elements(t) * kn_dtype_size(t->dtype);
}

/* The bytes from one sample of t to the next: sample_bytes, or less for the overlapping
 * windows of a token stream (data_windows.c). */
static size_t sample_pitch(const kn_tensor *t)
{
    return (size_t)t->strides[0] * kn_dtype_size(t->dtype);
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

kn_dataset *kn_dataset_new(kn_tensor *inputs, kn_tensor *labels)
{
    if (!inputs || !labels)
        return kn__error_null(KN_ERR_NULL, "dataset: %s is NULL", inputs ? "labels" : "inputs");
    if (inputs->device.type != KN_DEVICE_CPU || labels->device.type != KN_DEVICE_CPU)
        return kn__error_null(KN_ERR_DEVICE, "dataset: inputs and labels must be on the cpu");
    if (inputs->dtype != KN_FLOAT32 && inputs->dtype != KN_INT64)
        return kn__error_null(KN_ERR_DTYPE, "dataset: inputs must be float32 or int64, got %s",
                              dtype_of(inputs));
    if (inputs->ndim < 2)
        return kn__error_null(KN_ERR_SHAPE,
                              "dataset: inputs must be [N, ...] with at least 2 dims, got %s",
                              kn__shape(inputs));
    if (labels->dtype != KN_INT64)
        return kn__error_null(KN_ERR_DTYPE, "dataset: labels must be int64, got %s",
                              dtype_of(labels));
    if (labels->ndim < 1)
        return kn__error_null(KN_ERR_SHAPE,
                              "dataset: labels must be [N] (a class per sample) or [N, T, ...] (a "
                              "class per position), got %s",
                              kn__shape(labels));
    if (labels->shape[0] != inputs->shape[0])
        return kn__error_null(
            KN_ERR_SHAPE, "dataset: inputs have %lld samples %s but labels have %lld",
            (long long)inputs->shape[0], kn__shape(inputs), (long long)labels->shape[0]);
    if (inputs->shape[0] == 0) return kn__error_null(KN_ERR_SHAPE, "dataset: no samples");

    kn_tensor *x = kn__contiguous_raw(inputs);
    kn_tensor *y = x ? kn__contiguous_raw(labels) : NULL;
    if (!y) {
        kn_release(x);
        return NULL;
    }
    int64_t count = inputs->shape[0];
    const int64_t *label = kn__data_ptr(y);
    int64_t max_label = -1, per_sample = row_elements(y), total = count * per_sample;
    for (int64_t i = 0; i < total; i++) {
        /* a position's label may be ignore_index: the losses skip it, as torch's do */
        bool ignored = y->ndim > 1 && label[i] == KN_DEFAULT_IGNORE_INDEX;
        if (label[i] < 0 && !ignored) {
            kn_release(x);
            kn_release(y);
            if (y->ndim > 1)
                return kn__error_null(KN_ERR_VALUE,
                                      "dataset: labels must be >= 0 or %d (ignore_index: a "
                                      "position the loss skips), sample %lld has %lld at "
                                      "position %lld",
                                      KN_DEFAULT_IGNORE_INDEX, (long long)(i / per_sample),
                                      (long long)label[i], (long long)(i % per_sample));
            return kn__error_null(KN_ERR_VALUE,
                                  "dataset: labels must be >= 0, sample %lld has %lld",
                                  (long long)i, (long long)label[i]);
        }
        if (label[i] == INT64_MAX) { /* num_classes, the largest label + 1, must fit */
            kn_release(x);
            kn_release(y);
            return kn__error_null(KN_ERR_VALUE,
                                  "dataset: labels must be < %lld (class indices), sample %lld "
                                  "has %lld",
                                  (long long)INT64_MAX, (long long)(i / per_sample),
                                  (long long)label[i]);
        }
        if (label[i] > max_label) max_label = label[i];
    }
    if (x->dtype == KN_FLOAT32 && check_finite(kn__data_ptr(x), count, row_elements(x)) != KN_OK) {
        kn_release(x);
        kn_release(y);
        return NULL;
    }
    kn_dataset *ds = malloc(sizeof *ds);
    if (!ds) {
        kn_release(x);
        kn_release(y);
        return kn__error_null(KN_ERR_MEMORY, "dataset: out of memory");
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
    if (!isfinite(scale) || scale == 0)
        return kn__error(KN_ERR_VALUE,
                         "dataset_normalize: scale must be finite and non-zero, got %g", scale);
    if (channels < 0)
        return kn__error(KN_ERR_VALUE, "dataset_normalize: channels must be >= 0, got %d",
                         channels);
    if (channels > 0 && (!mean || !std))
        return kn__error(KN_ERR_NULL, "dataset_normalize: %d channels but mean or std is NULL",
                         channels);
    kn_tensor *x = ds->inputs;
    /* One channel covers every element, whatever the layout ([N, H, W] images). */
    if (channels > 1 && x->shape[1] != channels)
        return kn__error(KN_ERR_SHAPE,
                         "dataset_normalize: %d channels of mean/std but inputs %s have %lld in "
                         "dim 1",
                         channels, kn__shape(x), (long long)x->shape[1]);
    for (int c = 0; c < channels; c++) {
        if (!isfinite(mean[c]))
            return kn__error(KN_ERR_VALUE, "dataset_normalize: mean[%d] must be finite, got %g", c,
                             mean[c]);
        if (!(std[c] > 0) || !isfinite(std[c]))
            return kn__error(KN_ERR_VALUE, "dataset_normalize: std[%d] must be > 0, got %g", c,
                             std[c]);
    }
    /* int64 inputs (token indices) stay int64 unless there is arithmetic to do */
    if (x->dtype == KN_INT64) {
        if ((float)scale == 1.0f && channels == 0) return KN_OK;
        kn_status st = kn_dataset_to_dtype(ds, KN_FLOAT32);
        if (st != KN_OK) return st;
        x = ds->inputs;
    }
    float *data = kn__data_ptr(x);
    int64_t total = kn_numel(x);
    /* float arithmetic, as torchvision's Normalize does on float32 tensors */
    const float s = (float)scale;
    if (s != 1.0f)
        for (int64_t i = 0; i < total; i++) data[i] *= s;
    if (channels == 0) return KN_OK;
    int64_t inner = channels == 1 ? total : row_elements(x) / channels;
    int64_t outer = channels == 1 ? 1 : ds->count;
    for (int64_t n = 0; n < outer; n++) {
        for (int c = 0; c < channels; c++) {
            float m = (float)mean[c], sd = (float)std[c];
            float *p = data + (n * channels + c) * inner;
            for (int64_t i = 0; i < inner; i++) p[i] = (p[i] - m) / sd;
        }
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
    kn_tensor *y = x ? samples_like(ds->labels, n) : NULL;
    kn_dataset *out = y ? malloc(sizeof *out) : NULL;
    if (!out) {
        kn_release(x);
        kn_release(y);
        return kn__error_null(KN_ERR_MEMORY, "dataset_split: out of memory");
    }
    size_t row = sample_bytes(ds->inputs), label_row = sample_bytes(ds->labels);
    size_t pitch = sample_pitch(ds->inputs), label_pitch = sample_pitch(ds->labels);
    const char *src = kn__data_ptr(ds->inputs), *src_labels = kn__data_ptr(ds->labels);
    char *dst = kn__data_ptr(x), *dst_labels = kn__data_ptr(y);
    int64_t j = 0;
    for (int64_t i = 0; i < ds->count; i++) {
        if (keep[i] != want) continue;
        memcpy(dst + (size_t)j * row, src + (size_t)i * pitch, row);
        memcpy(dst_labels + (size_t)j * label_row, src_labels + (size_t)i * label_pitch, label_row);
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

/* Copies rows order[start .. start + n) of the dataset to dst and dst_labels. */
static kn_status gather_rows(const kn_dataset *ds, kn_tensor *order, int64_t start, int64_t n,
                             void *dst, void *dst_labels)
{
    const int64_t *idx = (const int64_t *)order->storage->data + order->offset;
    int64_t stride = order->strides[0];
    size_t row = sample_bytes(ds->inputs), label_row = sample_bytes(ds->labels);
    size_t pitch = sample_pitch(ds->inputs), label_pitch = sample_pitch(ds->labels);
    const char *src = kn__data_ptr(ds->inputs), *src_labels = kn__data_ptr(ds->labels);
    for (int64_t j = 0; j < n; j++) {
        int64_t i = idx[(start + j) * stride];
        if (i < 0 || i >= ds->count)
            return kn__error(KN_ERR_VALUE,
                             "dataset_batch: order[%lld] = %lld is out of range for %lld samples",
                             (long long)(start + j), (long long)i, (long long)ds->count);
        memcpy((char *)dst + (size_t)j * row, src + (size_t)i * pitch, row);
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
    kn_tensor *y = x ? samples_like(ds->labels, n) : NULL;
    if (!y) {
        kn_release(x);
        return kn_last_status() ? kn_last_status() : KN_ERR_MEMORY;
    }
    st = gather_rows(ds, order, start, n, kn__data_ptr(x), kn__data_ptr(y));
    if (st != KN_OK) {
        kn_release(x);
        kn_release(y);
        return st;
    }
    *inputs = kn__result(x);
    *labels = kn__result(y);
    return KN_OK;
}

kn_status kn__dataset_gather(const kn_dataset *ds, kn_tensor *order, int64_t batch_index,
                             int64_t batch_size, void *inputs, int64_t *labels, int64_t *rows)
{
    int64_t start = 0, n = 0;
    kn_status st = batch_range(ds, order, batch_index, batch_size, &start, &n);
    if (st == KN_OK) st = gather_rows(ds, order, start, n, inputs, labels);
    *rows = st == KN_OK ? n : 0;
    return st;
}

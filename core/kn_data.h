/*
 * kn_data.h — in-memory datasets and the batches a training loop draws from them.
 *
 * A dataset is a tensor of inputs [N, ...], float32 (features, images) or int64 (token
 * indices for an embedding: [N, T] token matrices), and its labels: int64 class indices
 * [N], one per sample (classification), or [N, T, ...], one per position (a sequence's
 * tokens), where a position may be KN_DEFAULT_IGNORE_INDEX (-100) for the loss to skip, as
 * torch's; float32 targets [N] or [N, K] (regression, binary and multi-label tasks); or
 * none (inputs to predict on).
 * Batch order is a pure function of (seed, epoch): the permutation of epoch e comes
 * from a generator seeded with a mix of the two, so a run is reproducible and a run
 * resumed at epoch e, batch b continues the very same sequence.
 *
 * Ownership: kn_dataset_new retains the tensors given (a strided tensor is copied to a
 * contiguous one first, so that a batch is one memcpy per sample); the caller frees the
 * dataset with kn_dataset_free. Batch tensors belong to the open scope (engine rule).
 */
#ifndef KN_DATA_H
#define KN_DATA_H

#include "kn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kn_dataset {
    kn_tensor *inputs; /* float32 or int64 [N, ...] */
    kn_tensor *labels; /* int64 [N] or [N, T, ...], float32 [N] or [N, K], or NULL (unlabeled) */
    int64_t count;
    int64_t num_classes; /* int64 labels: 1 + the largest label; otherwise 0 */
} kn_dataset;

/* Checks shapes, dtypes, label range (0 <= label < INT64_MAX; -100 also in labels per
 * position), N >= 1 and finiteness of float inputs and of float targets (an error names the
 * first bad sample and its value). CPU tensors only. labels may be NULL: an unlabeled
 * dataset, whose batches have no labels. */
kn_dataset *kn_dataset_new(kn_tensor *inputs, kn_tensor *labels);
void kn_dataset_free(kn_dataset *ds);

/* In place (the inputs tensor given to kn_dataset_new sees it when it was contiguous):
 * x = x * scale, then (x - mean[c]) / std[c] in float32 when channels > 0; int64 inputs
 * become float32 first, unless there is nothing to do (scale 1, no channels). channels == 1
 * applies mean[0]/std[0] to every element ([N, H, W] images); channels > 1 needs
 * inputs [N, channels, ...]. std must be > 0, scale finite and non-zero. */
kn_status kn_dataset_normalize(kn_dataset *ds, double scale, const double *mean, const double *std,
                               int channels);
/* The same arithmetic on count samples of sample floats in place (inference applies a
 * job's preprocessing with it, so served inputs get the training data's very floats);
 * arguments as checked by kn_dataset_normalize. */
kn_status kn_normalize_floats(float *data, int64_t count, int64_t sample, double scale,
                              const double *mean, const double *std, int channels);

/* Per-channel mean and standard deviation of the inputs (the population's, as
 * scikit-learn's StandardScaler; double accumulation), in the layout of
 * kn_dataset_normalize (float32 or int64 inputs): channels 1 is every element, channels > 1
 * is dim 1. mean and std
 * hold channels values; a channel without spread gets std 1, so normalising only centres
 * it. */
kn_status kn_dataset_channel_stats(const kn_dataset *ds, int channels, double *mean, double *std);

/* The inputs as dtype (ds->inputs replaced; labels untouched): int64 to float32 always
 * (rounded as torch's .float()), float32 to int64 only when every value is an integer
 * in int64's range (else an error naming the first sample and element that is not). */
kn_status kn_dataset_to_dtype(kn_dataset *ds, kn_dtype dtype);

/* Splits off the last floor(fraction * N) samples of a seeded permutation as validation:
 * *train and *validation are new datasets (copies, samples in their original order,
 * both with ds->num_classes), caller frees both. Both parts must be non-empty. */
kn_status kn_dataset_split(const kn_dataset *ds, double fraction, uint64_t seed, kn_dataset **train,
                           kn_dataset **validation);

/* The sample order of an epoch: an int64 tensor [N] (scope rule). shuffle false gives
 * 0..N-1; otherwise kn_randperm(count) from a fresh generator seeded with
 * splitmix64(seed ^ splitmix64(epoch)). epoch >= 0. */
kn_tensor *kn_epoch_order(int64_t count, uint64_t seed, int64_t epoch, bool shuffle);

/* Batch b of an order (any 1-D int64 tensor of sample indices; the last batch is
 * smaller when batch_size does not divide it; with drop_last, ask only for the first
 * kn_batches_per_epoch(..., true) batches): inputs and labels gathered into new
 * contiguous tensors (scope rule); *labels is NULL for an unlabeled dataset. */
kn_status kn_dataset_batch(const kn_dataset *ds, kn_tensor *order, int64_t batch_index,
                           int64_t batch_size, kn_tensor **inputs, kn_tensor **labels);
int64_t kn_batches_per_epoch(int64_t count, int64_t batch_size, bool drop_last);

/* ---- language models (issue 12) ------------------------------------------------------ */
/* A language model's dataset, nanoGPT's get_batch: the windows of one int64 token
 * stream [L]. Sample i is stream[i * stride : i * stride + block_size] (inputs, [N, T]
 * token ids) with the next token of each position as its labels (stream shifted by one),
 * count = (L - block_size - 1) / stride + 1, num_classes 1 + the largest token. The
 * samples are overlapping views of the stream (it is copied once if strided), so a
 * corpus of L tokens takes 8 L bytes whatever the windows. Stride 1 with shuffled epochs
 * gives nanoGPT's random windows (each at most once an epoch); stride block_size scores
 * every position once (validation). Such a dataset is not split (split the stream) and
 * stays int64 (kn_dataset_to_dtype refuses). Errors: fewer than block_size + 1 tokens,
 * a negative token, a stream that is not cpu int64 [L]. */
kn_dataset *kn_dataset_windows(kn_tensor *stream, int64_t block_size, int64_t stride);

/* ---- file formats (bytes already in memory; gzip is the caller's business) ---------- */
/* IDX (MNIST's format): ubyte/byte/short/int/float/double payloads. Returns a float32
 * tensor (images) or, with as_labels, an int64 tensor. Errors name the offending header
 * field or the size mismatch. */
kn_tensor *kn_parse_idx(const void *bytes, size_t size, bool as_labels);
/* NPY v1/v2/v3: little-endian <f4 <f8 <i8 <i4 <i2 <u2 |u1 |i1, C order. Labels come out
 * int64 ([N], or [N, T, ...] for labels per position; float files must hold integers).
 * Inputs keep integers as integers: <i8 <i4 <i2 <u2 give int64 (token indices stay
 * exact), while floats and bytes (|u1 |i1: images) give float32. */
kn_tensor *kn_parse_npy(const void *bytes, size_t size, bool as_labels);
/* Targets of any task as stored: integer dtypes give int64 [N] or [N, K, ...] (class
 * labels, 0/1 multi-label, labels per position), float dtypes float32 [N] or [N, K] (the
 * caller decides what the task accepts). */
kn_tensor *kn_parse_npy_targets(const void *bytes, size_t size);
/* CSV with a header line: label_column names the label (integer) column, the rest are
 * float features (strtod: "nan" parses, kn_dataset_new refuses it). Blank lines are
 * skipped, ragged rows refused. Errors name the line and column. *inputs float32 [N, F],
 * *labels int64 [N] (scope rule). */
kn_status kn_parse_csv(const char *text, size_t size, const char *label_column, kn_tensor **inputs,
                       kn_tensor **labels);
/* The same with float targets: the n_columns named columns (in that order) are *targets,
 * float32 [N, n_columns], every other column a feature. n_columns 0, or optional with
 * none of the columns in the header, gives *targets NULL and every column as a feature
 * (inputs to predict on); optional with only some of them is still an error. */
kn_status kn_parse_csv_targets(const char *text, size_t size, const char *const *columns,
                               int n_columns, bool optional, kn_tensor **inputs,
                               kn_tensor **targets);

#ifdef __cplusplus
}
#endif
#endif

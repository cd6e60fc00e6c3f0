/*
 * kn_data.h — in-memory datasets and the batches a training loop draws from them.
 *
 * A dataset is a float32 tensor of inputs [N, ...] and an int64 tensor of labels [N].
 * Batch order is a pure function of (seed, epoch): the permutation of epoch e comes
 * from a generator seeded with a mix of the two, so a run is reproducible and a run
 * resumed at epoch e, batch b continues the very same sequence.
 *
 * Ownership: kn_dataset_new retains the tensors given; the caller frees the dataset
 * with kn_dataset_free. Batch tensors belong to the open scope (engine rule).
 */
#ifndef KN_DATA_H
#define KN_DATA_H

#include "kn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kn_dataset {
    kn_tensor *inputs; /* float32 [N, ...] */
    kn_tensor *labels; /* int64 [N] */
    int64_t count;
    int64_t num_classes; /* 1 + the largest label */
} kn_dataset;

/* Checks shapes, dtypes, label range (>= 0) and finiteness of inputs (an error names the
 * first bad sample). */
kn_dataset *kn_dataset_new(kn_tensor *inputs, kn_tensor *labels);
void kn_dataset_free(kn_dataset *ds);

/* In place: x = x * scale, then per-channel (dim 1 of the samples, or the only channel)
 * (x - mean[c]) / std[c] when channels > 0. */
kn_status kn_dataset_normalize(kn_dataset *ds, double scale, const double *mean,
                               const double *std, int channels);

/* Splits off the last `fraction` of a seeded permutation as validation: *train and
 * *validation are new datasets (copies), caller frees both. */
kn_status kn_dataset_split(const kn_dataset *ds, double fraction, uint64_t seed,
                           kn_dataset **train, kn_dataset **validation);

/* The sample order of an epoch: an int64 tensor [N] (scope rule). shuffle false gives
 * 0..N-1. */
kn_tensor *kn_epoch_order(int64_t count, uint64_t seed, int64_t epoch, bool shuffle);

/* Batch b of an order (the last batch may be smaller unless drop_last): inputs and
 * labels gathered into new contiguous tensors (scope rule). */
kn_status kn_dataset_batch(const kn_dataset *ds, kn_tensor *order, int64_t batch_index,
                           int64_t batch_size, kn_tensor **inputs, kn_tensor **labels);
int64_t kn_batches_per_epoch(int64_t count, int64_t batch_size, bool drop_last);

/* ---- file formats (bytes already in memory; gzip is the caller's business) ---------- */
/* IDX (MNIST's format): ubyte/byte/short/int/float/double payloads. Returns a float32
 * tensor (images) or, with as_labels, an int64 tensor. Errors name the offending header
 * field or the size mismatch. */
kn_tensor *kn_parse_idx(const void *bytes, size_t size, bool as_labels);
/* NPY v1/v2/v3: little-endian <f4 <f8 <i8 <i4 |u1 |i1, C order. float32 or int64 out. */
kn_tensor *kn_parse_npy(const void *bytes, size_t size, bool as_labels);
/* CSV with a header line: label_column names the label (integer) column, the rest are
 * float features. Errors name the line and column. *inputs float32 [N, F], *labels int64. */
kn_status kn_parse_csv(const char *text, size_t size, const char *label_column,
                       kn_tensor **inputs, kn_tensor **labels);

#ifdef __cplusplus
}
#endif
#endif

/*
 * data_windows.c — a language model's dataset (issue 12): the block_size windows of one
 * int64 token stream, as nanoGPT's get_batch draws them (x = data[i : i + T], y =
 * data[i + 1 : i + 1 + T]). The samples are overlapping views of the stream, rows of a
 * strided [count, T] tensor, so a corpus of L tokens costs 8 L bytes however many
 * windows it has; data.c gathers a batch row by row through the rows' pitch.
 */
#include "kn_data.h"
#include "kn_internal.h"
#include "kn_train_internal.h"

#include <stdlib.h>

kn_dataset *kn_dataset_windows(kn_tensor *stream, int64_t block_size, int64_t stride)
{
    if (!stream) return kn__error_null(KN_ERR_NULL, "dataset_windows: stream is NULL");
    if (stream->device.type != KN_DEVICE_CPU || stream->dtype != KN_INT64 || stream->ndim != 1)
        return kn__error_null(KN_ERR_SHAPE,
                              "dataset_windows: expected a cpu int64 token stream [L], got %s %s",
                              kn_dtype_name(stream->dtype), kn__shape(stream));
    if (block_size < 1 || stride < 1)
        return kn__error_null(KN_ERR_VALUE,
                              "dataset_windows: block_size and stride must be positive, got %lld "
                              "and %lld",
                              (long long)block_size, (long long)stride);
    int64_t length = stream->shape[0];
    if (length < block_size + 1)
        return kn__error_null(KN_ERR_VALUE,
                              "dataset_windows: %lld tokens make no window of block_size %lld "
                              "(a window needs block_size + 1 tokens: its inputs and the next "
                              "token of each)",
                              (long long)length, (long long)block_size);
    kn_tensor *tokens = kn__contiguous_raw(stream);
    if (!tokens) return NULL;
    const int64_t *t = kn__data_ptr(tokens);
    int64_t largest = 0;
    for (int64_t i = 0; i < length; i++) {
        if (t[i] < 0) {
            kn_release(tokens);
            return kn__error_null(KN_ERR_VALUE,
                                  "dataset_windows: token ids must be >= 0, token %lld is %lld",
                                  (long long)i, (long long)t[i]);
        }
        if (t[i] > largest) largest = t[i];
    }
    int64_t count = (length - block_size - 1) / stride + 1;
    int64_t shape[2] = {count, block_size}, strides[2] = {stride, 1};
    kn_tensor *x = kn__view_raw(tokens, shape, strides, 2, tokens->offset);
    kn_tensor *y = x ? kn__view_raw(tokens, shape, strides, 2, tokens->offset + 1) : NULL;
    kn_dataset *ds = y ? malloc(sizeof *ds) : NULL;
    kn_release(tokens); /* the views hold the storage */
    if (!ds) {
        kn_release(x);
        kn_release(y);
        return kn__error_null(KN_ERR_MEMORY, "dataset_windows: out of memory");
    }
    ds->inputs = x;
    ds->labels = y;
    ds->count = count;
    ds->num_classes = largest + 1;
    return ds;
}

bool kn__dataset_is_windows(const kn_dataset *ds)
{
    return ds->labels && ds->inputs->storage == ds->labels->storage; /* NULL: unlabeled */
}

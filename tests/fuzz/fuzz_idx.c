/*
 * fuzz_idx.c — IDX uploads (MNIST's format) as kilnd checks them: gunzipped when gzip,
 * then kn_parse_idx as images (float32) and as labels (int64, 1-D). A parsed tensor's
 * storage must cover its shape, and its shape must be the header's.
 */
#include "fuzz.h"

/* byte 3 of an IDX header is the number of dimensions */
static void header_dims(const kn_tensor *t, const uint8_t *data, size_t size, bool as_labels)
{
    (void)as_labels;
    FUZZ_CHECK(size >= 4 && t->ndim == data[3], "idx header says %d dims, the tensor has %d",
               size >= 4 ? data[3] : -1, t->ndim);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_array_upload(data, size, kn_parse_idx, header_dims, "kn_parse_idx");
    return 0;
}

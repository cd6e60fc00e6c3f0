/*
 * fuzz_idx.c — IDX uploads (MNIST's format) as kilnd checks them: gunzipped when gzip,
 * then kn_parse_idx as images (float32) and as labels (int64, 1-D). A parsed tensor's
 * storage must cover its shape, and its shape must be the header's.
 */
#include "fuzz.h"

#include <stdlib.h>

static void parse(const uint8_t *data, size_t size, bool as_labels)
{
    kn_clear_error();
    kn_scope_begin();
    kn_tensor *t = kn_parse_idx(data, size, as_labels);
    if (t) {
        fuzz_check_tensor(t, as_labels ? KN_INT64 : KN_FLOAT32);
        FUZZ_CHECK(size >= 4 && t->ndim == data[3], "idx header says %d dims, the tensor has %d",
                   size >= 4 ? data[3] : -1, t->ndim);
        FUZZ_CHECK(!as_labels || t->ndim == 1, "labels with %d dims", t->ndim);
        if (as_labels)
            fuzz_check_dataset(NULL, t);
        else if (t->ndim >= 2)
            fuzz_check_dataset(t, NULL);
    } else {
        fuzz_check_kn_error("kn_parse_idx");
    }
    kn_scope_end();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void *owned;
    size_t plain_size;
    const uint8_t *plain = fuzz_gunzip_if_gzip(data, size, &plain_size, &owned);
    if (plain) {
        parse(plain, plain_size, false);
        parse(plain, plain_size, true);
    }
    free(owned);
    return 0;
}

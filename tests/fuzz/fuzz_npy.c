/*
 * fuzz_npy.c — NPY uploads (numpy's format, also what kilnd writes for JSON arrays) as
 * kilnd checks them: gunzipped when gzip, then kn_parse_npy as inputs (float32, or int64
 * for integers wider than a byte) and as labels (int64, [N] or [N, T, ...]), and
 * kn_parse_npy_targets as a job's targets (int64 [N, ...] or float32 [N] or [N, K]). A
 * parsed tensor's storage must cover its shape.
 */
#include "fuzz.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_array_upload(data, size, kn_parse_npy, NULL, "kn_parse_npy");
    void *owned;
    size_t plain_size;
    const uint8_t *plain = fuzz_gunzip_if_gzip(data, size, &plain_size, &owned);
    if (plain) {
        kn_clear_error();
        kn_scope_begin();
        kn_tensor *t = kn_parse_npy_targets(plain, plain_size);
        if (t) {
            fuzz_check_tensor(t, t->dtype);
            FUZZ_CHECK(t->dtype == KN_INT64 || t->dtype == KN_FLOAT32, "targets of dtype %d",
                       (int)t->dtype);
            FUZZ_CHECK(t->ndim == 1 || t->ndim == 2 || (t->dtype == KN_INT64 && t->ndim >= 1),
                       "targets of %s with %d dims", kn_dtype_name(t->dtype), t->ndim);
            fuzz_check_dataset(NULL, t);
        } else {
            fuzz_check_kn_error("kn_parse_npy_targets");
        }
        kn_scope_end();
    }
    free(owned);
    return 0;
}

/*
 * fuzz_npy.c — NPY uploads (numpy's format, also what kilnd writes for JSON arrays) as
 * kilnd checks them: gunzipped when gzip, then kn_parse_npy as inputs (float32, or int64
 * for integers wider than a byte) and as labels (int64, [N] or [N, T]). A parsed tensor's
 * storage must cover its shape.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_array_upload(data, size, kn_parse_npy, NULL, "kn_parse_npy");
    return 0;
}

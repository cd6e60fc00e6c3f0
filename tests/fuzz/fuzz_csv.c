/*
 * fuzz_csv.c — CSV uploads as kilnd checks them and jobs load them: gunzipped when gzip,
 * kn_parse_csv with the label column "label", then kn_dataset_new. A parse gives inputs
 * float32 [N, F] and labels int64 [N] with N, F >= 1, or an error naming the line. Then
 * kn_parse_csv_targets as kilnd's upload check (every column a feature) and as a
 * regression job with two target columns, optional (kiln predict).
 */
#include "fuzz.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void *owned;
    size_t text_size;
    const uint8_t *text = fuzz_gunzip_if_gzip(data, size, &text_size, &owned);
    if (!text) return 0;
    kn_clear_error();
    kn_scope_begin();
    kn_tensor *inputs = NULL, *labels = NULL;
    kn_status st = kn_parse_csv((const char *)text, text_size, "label", &inputs, &labels);
    if (st == KN_OK) {
        FUZZ_CHECK(inputs && labels, "kn_parse_csv succeeded without tensors");
        fuzz_check_tensor(inputs, KN_FLOAT32);
        fuzz_check_tensor(labels, KN_INT64);
        FUZZ_CHECK(inputs->ndim == 2 && labels->ndim == 1 && inputs->shape[0] >= 1 &&
                       inputs->shape[1] >= 1 && labels->shape[0] == inputs->shape[0],
                   "csv gave inputs of %d dims and labels of %d", inputs->ndim, labels->ndim);
        fuzz_check_dataset(inputs, labels);
    } else {
        FUZZ_CHECK(!inputs && !labels, "kn_parse_csv failed but set its outputs");
        fuzz_check_kn_error("kn_parse_csv");
    }
    static const char *const columns[2] = {"label", "y"};
    for (int n = 0; n <= 2; n += 2) {
        kn_clear_error();
        inputs = labels = NULL;
        st = kn_parse_csv_targets((const char *)text, text_size, columns, n, n > 0, &inputs,
                                  &labels);
        if (st == KN_OK) {
            FUZZ_CHECK(inputs != NULL, "kn_parse_csv_targets succeeded without inputs");
            fuzz_check_tensor(inputs, KN_FLOAT32);
            FUZZ_CHECK(inputs->ndim == 2 && inputs->shape[0] >= 1 && inputs->shape[1] >= 1,
                       "csv targets gave inputs of %d dims", inputs->ndim);
            if (labels) {
                fuzz_check_tensor(labels, KN_FLOAT32);
                FUZZ_CHECK(labels->ndim == 2 && labels->shape[0] == inputs->shape[0] &&
                               labels->shape[1] >= 1 && labels->shape[1] <= n,
                           "csv targets of %d dims", labels->ndim);
            }
            fuzz_check_dataset(inputs, labels);
        } else {
            FUZZ_CHECK(!inputs && !labels, "kn_parse_csv_targets failed but set its outputs");
            fuzz_check_kn_error("kn_parse_csv_targets");
        }
    }
    kn_scope_end();
    free(owned);
    return 0;
}

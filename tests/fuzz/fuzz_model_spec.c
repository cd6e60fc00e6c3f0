/*
 * fuzz_model_spec.c — model specs as POST /v1/models, kiln validate and every job with
 * an inline model read them: kapi_model_spec_parse on arbitrary bytes. A spec comes back
 * exactly when there are no errors; a valid one passes fuzz_check_model_spec (shapes and
 * parameter counts agree with the engine's model); a refused one has errors whose text
 * and JSON bodies read back.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse((const char *)data, size, &errors);
    if (spec) {
        FUZZ_CHECK(errors.count == 0, "a spec with %d errors (first: %s)", errors.count,
                   errors.items[0].message);
        fuzz_check_model_spec(spec);
    } else {
        fuzz_check_kapi_errors(&errors, "kapi_model_spec_parse", fuzz_utf8_valid(data, size));
    }
    kapi_model_spec_free(spec);
    kapi_errors_free(&errors);
    return 0;
}

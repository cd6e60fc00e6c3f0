/*
 * fuzz_weights.c — weights files as "init_weights" and kiln eval/predict load them:
 * kn_module_load_weights (strict, then not) of arbitrary bytes into FUZZ_SMALL_MODEL.
 * A refused load must say why and change nothing; a load never changes a shape.
 */
#include "fuzz.h"
#include "kn_train.h"

static void load(kn_module *model, const char *path, bool strict)
{
    fuzz_state *before = fuzz_state_save(model);
    kn_clear_error();
    kn_status st = kn_module_load_weights(model, path, strict);
    if (st != KN_OK) {
        fuzz_check_kn_error("kn_module_load_weights");
        FUZZ_CHECK(fuzz_state_same(before, model), "a refused load (%s) changed the model",
                   kn_last_error());
    } else {
        FUZZ_CHECK(fuzz_state_same_shapes(before, model), "a load changed the model's shapes");
    }
    fuzz_state_free(before);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static kn_module *model;
    if (!model) model = fuzz_small_model();
    const char *path = fuzz_as_file(data, size);
    load(model, path, true);
    load(model, path, false);
    return 0;
}

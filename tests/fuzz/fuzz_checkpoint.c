/*
 * fuzz_checkpoint.c — checkpoints as "resume_from" (kiln train) and kilnd's resumed jobs
 * load them: kn_trainer_load_checkpoint of arbitrary bytes into a trainer of
 * FUZZ_SMALL_MODEL (Adam, batch_size 4, its own generator). A refused checkpoint must
 * say why and, as checkpoint.c promises, change nothing: not the weights, the position
 * of the run nor the generator.
 */
#include "fuzz.h"
#include "kn_train.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    kn_module *model;
    kn_generator *gen;
    kn_trainer *trainer;
} fixture;

static fixture *get_fixture(void)
{
    static fixture f;
    if (f.trainer) return &f;
    f.model = fuzz_small_model();
    f.gen = kn_generator_new(0);
    kn_train_config config = kn_train_config_defaults();
    config.batch_size = 4;
    config.generator = f.gen;
    f.trainer = kn_trainer_new(f.model, &config);
    FUZZ_CHECK(f.trainer, "kn_trainer_new: %s", kn_last_error());
    return &f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fixture *f = get_fixture();
    size_t state_size = kn_generator_state_size();
    unsigned char *gen_before = malloc(state_size), *gen_after = malloc(state_size);
    FUZZ_CHECK(gen_before && gen_after, "out of memory");
    kn_generator_get_state(f->gen, gen_before);
    fuzz_state *before = fuzz_state_save(f->model);
    int64_t step = kn_trainer_step(f->trainer);

    kn_clear_error();
    kn_status st = kn_trainer_load_checkpoint(f->trainer, fuzz_as_file(data, size));
    kn_generator_get_state(f->gen, gen_after);
    if (st != KN_OK) {
        fuzz_check_kn_error("kn_trainer_load_checkpoint");
        FUZZ_CHECK(fuzz_state_same(before, f->model), "a refused checkpoint (%s) changed the model",
                   kn_last_error());
        FUZZ_CHECK(kn_trainer_step(f->trainer) == step, "a refused checkpoint moved the step");
        FUZZ_CHECK(memcmp(gen_before, gen_after, state_size) == 0,
                   "a refused checkpoint changed the generator");
    } else {
        FUZZ_CHECK(fuzz_state_same_shapes(before, f->model), "a checkpoint changed the shapes");
        FUZZ_CHECK(kn_trainer_step(f->trainer) >= 0, "step %lld after loading",
                   (long long)kn_trainer_step(f->trainer));
    }
    fuzz_state_free(before);
    free(gen_before);
    free(gen_after);
    return 0;
}

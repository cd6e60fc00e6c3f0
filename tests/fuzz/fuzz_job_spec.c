/*
 * fuzz_job_spec.c — job specs as POST /v1/jobs reads them (no local paths) and as kiln
 * train reads them (paths allowed): kapi_job_spec_parse on arbitrary bytes, both ways.
 * A spec comes back exactly when there are no errors, with a training configuration in
 * range and an inline model that passes fuzz_check_model_spec.
 */
#include "fuzz.h"

#include <string.h>

static void check_job(const kapi_job_spec *job, bool allow_paths)
{
    const kn_train_config *c = &job->train;
    FUZZ_CHECK(c->batch_size >= 1, "batch_size %lld", (long long)c->batch_size);
    FUZZ_CHECK(c->epochs >= 1 || c->max_steps >= 1, "neither epochs nor max_steps");
    FUZZ_CHECK(c->eval_batch_size >= 0 && c->checkpoint_every_steps >= 0,
               "negative eval_batch_size or checkpoint_every_steps");
    FUZZ_CHECK(job->model || job->model_name[0], "a job without a model");
    FUZZ_CHECK(!(job->model && job->model_name[0]), "a job with both an inline and a named model");
    FUZZ_CHECK(memchr(job->device, '\0', sizeof job->device), "device is not a string");
    if (!allow_paths)
        FUZZ_CHECK(!job->resume_from[0] && !job->init_weights[0] && !job->data.train.present,
                   "a server job with local paths");
    const kapi_data_spec *d = &job->data;
    FUZZ_CHECK(d->dataset[0] || d->train.present, "a job without training data");
    FUZZ_CHECK(d->channels >= 0 && d->channels <= 16, "%d normalisation channels", d->channels);
    for (int i = 0; i < d->channels; i++)
        FUZZ_CHECK(d->std[i] > 0, "normalize.std[%d] = %g", i, d->std[i]);
    if (job->model) fuzz_check_model_spec(job->model);
}

static void parse(const uint8_t *data, size_t size, bool allow_paths)
{
    kapi_errors errors = {0};
    kapi_job_parse_options options = {.allow_paths = allow_paths};
    kapi_job_spec *job = kapi_job_spec_parse((const char *)data, size, options, &errors);
    if (job) {
        FUZZ_CHECK(errors.count == 0, "a job with %d errors (first: %s)", errors.count,
                   errors.items[0].message);
        check_job(job, allow_paths);
    } else {
        fuzz_check_kapi_errors(&errors, "kapi_job_spec_parse", fuzz_utf8_valid(data, size));
    }
    kapi_job_spec_free(job);
    kapi_errors_free(&errors);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse(data, size, false);
    parse(data, size, true);
    return 0;
}

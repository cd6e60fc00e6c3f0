/*
 * job.c — turning a job file into something to run, for train, eval and predict: the
 * spec parsed and validated (errors as "path: message", exit 2), a model referenced by
 * file loaded, the model built on the job's device from the job's seed, and the data
 * loaded, scaled, normalised and shaped as the model's input_shape. Relative paths in a
 * job are tried as given, then next to the job file.
 */
#include "kcli.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void kcli_print_errors(const kapi_errors *errors)
{
    char *text = kapi_errors_to_text(errors);
    if (text) fprintf(stderr, "%s\n", text);
    free(text);
}

/* path relative to the job's folder when it does not exist as given. */
static void resolve_path(char *path, size_t size, const char *job_dir)
{
    if (!path[0] || path[0] == '/' || access(path, F_OK) == 0) return;
    char *joined = kcli_join(job_dir, path);
    if (joined && access(joined, F_OK) == 0 && strlen(joined) < size)
        snprintf(path, size, "%s", joined);
    free(joined);
}

static void resolve_source(kapi_data_source *s, const char *job_dir)
{
    if (!s->present) return;
    resolve_path(s->inputs_path, sizeof s->inputs_path, job_dir);
    resolve_path(s->labels_path, sizeof s->labels_path, job_dir);
}

/* "model": "NAME" on the command line names a model file: NAME or NAME.json. */
static int load_model_file(kcli_job *job, const char *job_dir)
{
    const char *name = job->spec->model_name;
    char candidates[4][1024];
    char *in_dir = kcli_join(job_dir, name);
    snprintf(candidates[0], sizeof candidates[0], "%s", name);
    snprintf(candidates[1], sizeof candidates[1], "%s.json", name);
    snprintf(candidates[2], sizeof candidates[2], "%s", in_dir ? in_dir : name);
    snprintf(candidates[3], sizeof candidates[3], "%s.json", in_dir ? in_dir : name);
    free(in_dir);
    for (int i = 0; i < 4; i++) {
        if (access(candidates[i], R_OK) != 0) continue;
        kapi_errors errors = {0};
        size_t size = 0;
        char *text = kapi_read_file(candidates[i], &size, &errors);
        if (text) job->model_owned = kapi_model_spec_parse(text, size, &errors);
        free(text);
        if (!job->model_owned) {
            fprintf(stderr, "model %s:\n", candidates[i]);
            kcli_print_errors(&errors);
            kapi_errors_free(&errors);
            return KCLI_EXIT_SPEC;
        }
        kapi_errors_free(&errors);
        job->model_spec = job->model_owned;
        return 0;
    }
    fprintf(stderr,
            "model: no model file \"%s\" or \"%s.json\" (the command line reads a "
            "model given by name from a file; or write the model inline)\n",
            name, name);
    return KCLI_EXIT_SPEC;
}

int kcli_prepare_dataset(const kcli_job *job, kn_dataset *ds, const char *what)
{
    const kapi_data_spec *d = &job->spec->data;
    if (kn_dataset_normalize(ds, d->scale, d->mean, d->std, d->channels) != KN_OK) {
        fprintf(stderr, "%s: %s\n", what, kn_last_error());
        return KCLI_EXIT_RUNTIME;
    }
    /* IDX images come as [N, 28, 28]; the model may want [N, 1, 28, 28] or [N, 784];
     * token indices stay int64 for an embedding (kilnd fits its data the same way) */
    kapi_errors errors = {0};
    bool fits = kapi_dataset_fit_model(ds, job->model_spec, what, &errors);
    if (!fits) kcli_print_errors(&errors);
    kapi_errors_free(&errors);
    return fits ? 0 : KCLI_EXIT_SPEC;
}

static int load_source(kcli_job *job, const kapi_data_source *src, const char *what,
                       kn_dataset **out)
{
    kapi_errors errors = {0};
    *out = kapi_load_data_source(src, &errors);
    if (!*out) {
        if (errors.count == 0) fprintf(stderr, "%s: %s\n", what, kn_last_error());
        kcli_print_errors(&errors);
        kapi_errors_free(&errors);
        return KCLI_EXIT_RUNTIME;
    }
    kapi_errors_free(&errors);
    return kcli_prepare_dataset(job, *out, what);
}

static int choose_device(kcli_job *job)
{
    const char *name = job->spec->device[0] ? job->spec->device : "cpu";
    if (strcmp(name, "auto") == 0) {
        kn_device cuda = {KN_DEVICE_CUDA, 0};
        job->device = kn_device_available(cuda) ? cuda : kn_cpu();
        return 0;
    }
    if (kn_device_parse(name, &job->device) != KN_OK) {
        fprintf(stderr,
                "device: expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\", got "
                "\"%s\"\n",
                name);
        return KCLI_EXIT_SPEC;
    }
    if (!kn_device_available(job->device)) {
        fprintf(stderr, "device: %s is not available on this machine\n", name);
        return KCLI_EXIT_RUNTIME;
    }
    return 0;
}

int kcli_job_open(kcli_job *job, const char *path, bool want_train, bool want_test)
{
    memset(job, 0, sizeof *job);
    kapi_errors errors = {0};
    size_t size = 0;
    char *text = kapi_read_file(path, &size, &errors);
    if (!text) {
        kcli_print_errors(&errors);
        kapi_errors_free(&errors);
        return KCLI_EXIT_RUNTIME;
    }
    kapi_job_parse_options parse = {.allow_paths = true};
    job->spec = kapi_job_spec_parse(text, size, parse, &errors);
    free(text);
    if (!job->spec) {
        kcli_print_errors(&errors);
        kapi_errors_free(&errors);
        return KCLI_EXIT_SPEC;
    }
    kapi_errors_free(&errors);

    char *copy = strdup(path);
    if (!copy) return KCLI_EXIT_RUNTIME;
    const char *job_dir = dirname(copy);
    int rc = 0;
    job->model_spec = job->spec->model;
    if (!job->model_spec) rc = load_model_file(job, job_dir);
    resolve_source(&job->spec->data.train, job_dir);
    resolve_source(&job->spec->data.test, job_dir);
    resolve_path(job->spec->init_weights, sizeof job->spec->init_weights, job_dir);
    resolve_path(job->spec->resume_from, sizeof job->spec->resume_from, job_dir);
    free(copy);
    if (rc == 0) rc = choose_device(job);
    if (rc != 0) return rc;

    /* the seed decides the initial weights, as torch.manual_seed before building */
    kn_manual_seed(job->spec->train.seed);
    job->model = kapi_model_build(job->model_spec, NULL);
    if (!job->model) {
        fprintf(stderr, "model: %s\n", kn_last_error());
        return KCLI_EXIT_RUNTIME;
    }
    if (job->device.type != KN_DEVICE_CPU && kn_module_to(job->model, job->device) != KN_OK) {
        fprintf(stderr, "device: %s\n", kn_last_error());
        return KCLI_EXIT_RUNTIME;
    }

    const kapi_data_spec *d = &job->spec->data;
    if (want_train) {
        if (!d->train.present) {
            fprintf(stderr, "data.train: required field missing: expected the training data "
                            "(local files on the command line)\n");
            return KCLI_EXIT_SPEC;
        }
        rc = load_source(job, &d->train, "data.train", &job->train);
        if (rc == 0 && d->validation_split > 0) {
            kn_dataset *train = NULL, *val = NULL;
            if (kn_dataset_split(job->train, d->validation_split, job->spec->train.seed, &train,
                                 &val) != KN_OK) {
                fprintf(stderr, "data.validation_split: %s\n", kn_last_error());
                return KCLI_EXIT_RUNTIME;
            }
            kn_dataset_free(job->train);
            job->train = train;
            job->validation = val;
        }
    }
    if (rc == 0 && want_test && d->test.present)
        rc = load_source(job, &d->test, "data.test", &job->test);
    if (rc == 0 && !job->validation) job->validation = job->test; /* borrowed: freed as test */
    return rc;
}

void kcli_job_close(kcli_job *job)
{
    if (job->validation && job->validation != job->test) kn_dataset_free(job->validation);
    kn_dataset_free(job->train);
    kn_dataset_free(job->test);
    kn_module_free(job->model);
    kapi_model_spec_free(job->model_owned);
    kapi_job_spec_free(job->spec);
    memset(job, 0, sizeof *job);
}

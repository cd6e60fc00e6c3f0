/*
 * commands.c — `kiln train`, `kiln eval` and `kiln predict`: the job set up by job.c,
 * then the shared trainer (core/train.c) with the progress reporter, evaluation of a
 * checkpoint on the job's test data, and class probabilities for inputs from a file.
 */
#include "kcli.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static volatile int interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* mkdir -p */
static int make_dirs(const char *dir)
{
    char *path = strdup(dir);
    if (!path) return -1;
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            free(path);
            return -1;
        }
        *p = '/';
    }
    int rc = mkdir(path, 0777) != 0 && errno != EEXIST ? -1 : 0;
    free(path);
    return rc;
}

static void print_json(cJSON *o)
{
    char *text = cJSON_PrintUnformatted(o);
    if (text) printf("%s\n", text);
    free(text);
    fflush(stdout);
}

static int save_outputs(kn_trainer *trainer, const char *dir, bool quiet)
{
    char *weights = kcli_join(dir, "model.safetensors");
    char *checkpoint = kcli_join(dir, "checkpoint.safetensors");
    int rc = 0;
    if (!weights || !checkpoint ||
        kn_module_save_weights(kn_trainer_model(trainer), weights) != KN_OK ||
        kn_trainer_save_checkpoint(trainer, checkpoint) != KN_OK) {
        fprintf(stderr, "error: --out %s: %s\n", dir, kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
    } else if (!quiet) {
        fprintf(stderr, "wrote %s and %s\n", weights, checkpoint);
    }
    free(weights);
    free(checkpoint);
    return rc;
}

int kcli_train(const char *job_path, const kcli_options *options)
{
    kcli_job job;
    int rc = kcli_job_open(&job, job_path, true, true);
    kn_trainer *trainer = NULL;
    bool tf32_before = kn_get_allow_tf32(); /* the job's choice until it is done */
    if (rc != 0) goto done;
    kn_set_allow_tf32(job.spec->allow_tf32);
    if (options->out_dir && make_dirs(options->out_dir) != 0) {
        fprintf(stderr, "error: --out %s: %s\n", options->out_dir, strerror(errno));
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    if (job.spec->init_weights[0] &&
        kn_module_load_weights(job.model, job.spec->init_weights, true) != KN_OK) {
        fprintf(stderr, "init_weights: %s\n", kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    trainer = kn_trainer_new(job.model, &job.spec->train);
    if (!trainer) {
        fprintf(stderr, "error: %s\n", kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    if (job.spec->resume_from[0] &&
        kn_trainer_load_checkpoint(trainer, job.spec->resume_from) != KN_OK) {
        fprintf(stderr, "resume_from: %s\n", kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    if (!options->quiet && !options->json) {
        char device[32];
        fprintf(stderr, "training %s (%lld parameters) on %lld samples, %s, %d threads\n",
                job.model_spec->name[0] ? job.model_spec->name : "model",
                (long long)kn_module_parameter_count(job.model), (long long)job.train->count,
                kn_device_str(job.device, device, sizeof device), kn_get_num_threads());
    }

    kcli_progress progress;
    kcli_progress_init(&progress, options, trainer, &interrupted);
    kn_train_callbacks callbacks = kcli_progress_callbacks(&progress);
    signal(SIGINT, on_sigint);
    kn_train_summary summary;
    kn_status st = kn_trainer_run(trainer, job.train, job.validation, &callbacks, &summary);
    signal(SIGINT, SIG_DFL);
    kcli_progress_finish(&progress);
    if (st != KN_OK) {
        if (interrupted)
            fprintf(stderr, "interrupted at step %lld\n", (long long)kn_trainer_step(trainer));
        else
            fprintf(stderr, "error: %s\n", kn_last_error());
        /* what was trained so far is still worth keeping */
        if (interrupted && options->out_dir)
            save_outputs(trainer, options->out_dir, options->quiet);
        rc = interrupted ? 130 : KCLI_EXIT_RUNTIME;
        goto done;
    }

    /* the test set's numbers: the last validation when that was the test set */
    bool has_test = job.test != NULL;
    kn_eval_result test = {0};
    if (has_test && job.validation == job.test && summary.has_validation &&
        summary.final_validation.step == summary.steps) {
        test = summary.final_validation;
    } else if (has_test) {
        st = kn_evaluate(job.model, job.test, job.spec->train.loss, job.spec->train.eval_batch_size,
                         &test);
        if (st != KN_OK) {
            fprintf(stderr, "error: evaluating data.test: %s\n", kn_last_error());
            rc = KCLI_EXIT_RUNTIME;
            goto done;
        }
    }
    if (options->out_dir)
        rc = save_outputs(trainer, options->out_dir, options->quiet || options->json);

    if (options->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "event", "summary");
        cJSON_AddNumberToObject(o, "steps", (double)summary.steps);
        cJSON_AddNumberToObject(o, "epochs_completed", (double)summary.epochs_completed);
        cJSON_AddNumberToObject(o, "train_seconds", summary.train_seconds);
        cJSON_AddNumberToObject(o, "samples_per_second", summary.samples_per_second);
        if (has_test) {
            cJSON_AddNumberToObject(o, "test_loss", test.loss);
            cJSON_AddNumberToObject(o, "test_accuracy", test.accuracy);
        } else {
            cJSON_AddNullToObject(o, "test_loss");
            cJSON_AddNullToObject(o, "test_accuracy");
        }
        cJSON_AddBoolToObject(o, "stopped_early", summary.stopped_early);
        cJSON_AddNumberToObject(o, "skipped_steps", (double)summary.skipped_steps);
        if (summary.cuda_note[0]) {
            cJSON_AddStringToObject(o, "cuda", summary.cuda_note);
            cJSON_AddNumberToObject(o, "graph_steps", (double)summary.graph_steps);
        }
        print_json(o);
        cJSON_Delete(o);
    } else {
        printf("steps %lld, %.1f s training, %.0f samples/s%s\n", (long long)summary.steps,
               summary.train_seconds, summary.samples_per_second,
               summary.stopped_early ? ", stopped early" : "");
        if (summary.skipped_steps)
            printf("skipped %lld non-finite steps\n", (long long)summary.skipped_steps);
        if (summary.cuda_note[0])
            printf("cuda: %s; %lld steps replayed from a graph\n", summary.cuda_note,
                   (long long)summary.graph_steps);
        if (has_test)
            printf("test loss %.4f, accuracy %.4f (%lld samples)\n", test.loss, test.accuracy,
                   (long long)test.count);
    }
done:
    kn_trainer_free(trainer);
    kcli_job_close(&job);
    kn_set_allow_tf32(tf32_before);
    return rc;
}

int kcli_eval(const char *checkpoint, const char *job_path, const kcli_options *options)
{
    kcli_job job;
    int rc = kcli_job_open(&job, job_path, false, true);
    if (rc != 0) goto done;
    if (!job.test) {
        fprintf(stderr, "data.test: required field missing: kiln eval needs test data\n");
        rc = KCLI_EXIT_SPEC;
        goto done;
    }
    if (kn_module_load_weights(job.model, checkpoint, true) != KN_OK) {
        fprintf(stderr, "error: %s\n", kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    kn_eval_result r;
    if (kn_evaluate(job.model, job.test, job.spec->train.loss, job.spec->train.eval_batch_size,
                    &r) != KN_OK) {
        fprintf(stderr, "error: %s\n", kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    if (options->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "test_loss", r.loss);
        cJSON_AddNumberToObject(o, "test_accuracy", r.accuracy);
        cJSON_AddNumberToObject(o, "count", (double)r.count);
        print_json(o);
        cJSON_Delete(o);
    } else {
        printf("test loss %.4f, accuracy %.4f (%lld samples)\n", r.loss, r.accuracy,
               (long long)r.count);
    }
done:
    kcli_job_close(&job);
    return rc;
}

/* The inputs to predict: --input FILE in the job's data format, else the job's test
 * (or training) inputs. Labels are not needed: a file without them gets zeros. */
static kn_dataset *predict_inputs(kcli_job *job, const kcli_options *options, int *rc)
{
    const kapi_data_spec *d = &job->spec->data;
    kapi_data_source src = d->test.present ? d->test : d->train;
    if (!src.present && !options->input) {
        fprintf(stderr, "predict: give --input FILE or data.test in the job\n");
        *rc = KCLI_EXIT_SPEC;
        return NULL;
    }
    kn_tensor *inputs = NULL, *labels = NULL;
    kapi_errors errors = {0};
    if (options->input) {
        size_t size = 0;
        char *bytes = kapi_read_file(options->input, &size, &errors);
        if (bytes) {
            if (src.present && src.format == KAPI_FORMAT_CSV)
                kn_parse_csv(bytes, size, src.label_column[0] ? src.label_column : "label", &inputs,
                             &labels);
            else if (src.present && src.format == KAPI_FORMAT_NPY)
                inputs = kn_parse_npy(bytes, size, false);
            else
                inputs = kn_parse_idx(bytes, size, false);
            if (!inputs) fprintf(stderr, "--input %s: %s\n", options->input, kn_last_error());
        }
        free(bytes);
    } else {
        kn_dataset *ds = kapi_load_data_source(&src, &errors);
        if (ds) {
            inputs = kn_retain(ds->inputs);
            kn_dataset_free(ds);
        }
    }
    if (errors.count) kcli_print_errors(&errors);
    kapi_errors_free(&errors);
    if (!inputs) {
        kn_release(labels);
        *rc = KCLI_EXIT_RUNTIME;
        return NULL;
    }
    if (!labels) { /* placeholders of the shape the model's output takes: [N] or [N, T] */
        const kapi_model_spec *m = job->model_spec;
        int64_t shape[KN_MAX_DIMS] = {inputs->shape[0]};
        int ndim = m->output_ndim > 0 ? m->output_ndim : 1;
        for (int i = 1; i < ndim; i++) shape[i] = m->output_shape[i - 1];
        labels = kn_zeros(shape, ndim, KN_INT64);
    }
    kn_dataset *ds = kn_dataset_new(inputs, labels);
    kn_release(inputs);
    kn_release(labels);
    if (!ds) {
        fprintf(stderr, "predict: %s\n", kn_last_error());
        *rc = KCLI_EXIT_RUNTIME;
        return NULL;
    }
    *rc = kcli_prepare_dataset(job, ds, options->input ? "--input" : "data");
    if (*rc) {
        kn_dataset_free(ds);
        return NULL;
    }
    return ds;
}

/* Prints the batch's probabilities, one line (or JSON object) per sample. */
static int print_predictions(kn_tensor *probs, int64_t first, bool json)
{
    kn_tensor *p = kn_contiguous(kn_to(probs, kn_cpu()));
    if (!p) return KCLI_EXIT_RUNTIME;
    int64_t n = p->shape[0], c = p->ndim == 2 ? p->shape[1] : 1;
    const float *v = kn_data_f32(p);
    for (int64_t i = 0; i < n; i++) {
        int64_t best = 0;
        for (int64_t k = 1; k < c; k++)
            if (v[i * c + k] > v[i * c + best]) best = k;
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "index", (double)(first + i));
            cJSON_AddNumberToObject(o, "class", (double)best);
            cJSON *arr = cJSON_AddArrayToObject(o, "probabilities");
            for (int64_t k = 0; k < c; k++)
                cJSON_AddItemToArray(arr, cJSON_CreateNumber(v[i * c + k]));
            char *text = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            if (text) printf("%s\n", text);
            free(text);
        } else {
            printf("%lld\t%lld", (long long)(first + i), (long long)best);
            for (int64_t k = 0; k < c; k++) printf("\t%.4f", v[i * c + k]);
            printf("\n");
        }
    }
    return 0;
}

/* Outputs with a class per position ([N, T, V], issue 12): per sample, the argmax of every
 * position (the last dim's classes), and with --json the probabilities per position. */
static int print_sequence_predictions(kn_tensor *probs, int64_t first, bool json)
{
    kn_tensor *p = kn_contiguous(kn_to(probs, kn_cpu()));
    if (!p) return KCLI_EXIT_RUNTIME;
    int64_t n = p->shape[0], c = p->shape[p->ndim - 1], positions = kn_numel(p) / (n * c);
    const float *v = kn_data_f32(p);
    for (int64_t i = 0; i < n; i++) {
        cJSON *o = json ? cJSON_CreateObject() : NULL;
        cJSON *classes = o ? cJSON_AddArrayToObject(o, "classes") : NULL;
        cJSON *rows = o ? cJSON_AddArrayToObject(o, "probabilities") : NULL;
        if (o) cJSON_AddNumberToObject(o, "index", (double)(first + i));
        if (!json) printf("%lld\t", (long long)(first + i));
        for (int64_t t = 0; t < positions; t++) {
            const float *row = v + (i * positions + t) * c;
            int64_t best = 0;
            for (int64_t k = 1; k < c; k++)
                if (row[k] > row[best]) best = k;
            if (!json) {
                printf("%s%lld", t ? " " : "", (long long)best);
                continue;
            }
            cJSON_AddItemToArray(classes, cJSON_CreateNumber((double)best));
            cJSON *probabilities = cJSON_CreateArray();
            for (int64_t k = 0; k < c; k++)
                cJSON_AddItemToArray(probabilities, cJSON_CreateNumber(row[k]));
            cJSON_AddItemToArray(rows, probabilities);
        }
        if (json) {
            char *text = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            if (text) printf("%s\n", text);
            free(text);
        } else {
            printf("\n");
        }
    }
    return 0;
}

int kcli_predict(const char *checkpoint, const char *job_path, const kcli_options *options)
{
    kcli_job job;
    kn_dataset *ds = NULL;
    int rc = kcli_job_open(&job, job_path, false, false);
    if (rc != 0) goto done;
    if (kn_module_load_weights(job.model, checkpoint, true) != KN_OK) {
        fprintf(stderr, "error: %s\n", kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    ds = predict_inputs(&job, options, &rc);
    if (!ds) goto done;
    int64_t count = options->limit > 0 && options->limit < ds->count ? options->limit : ds->count;
    kn_module_train(job.model, false);
    kn_no_grad_begin();
    bool sequence = job.model_spec->output_ndim > 1; /* a class per position */
    if (!options->json)
        printf(sequence ? "# index\tclass of each position\n"
                        : "# index\tclass\tprobabilities...\n");
    kn_scope_begin();
    kn_tensor *order = kn_epoch_order(ds->count, 0, 0, false);
    const int64_t batch = 1000;
    for (int64_t b = 0; rc == 0 && b * batch < count; b++) {
        kn_scope_begin();
        kn_tensor *x = NULL, *y = NULL;
        int64_t n = count - b * batch < batch ? count - b * batch : batch;
        if (kn_dataset_batch(ds, order, b, batch, &x, &y) != KN_OK) {
            fprintf(stderr, "error: %s\n", kn_last_error());
            rc = KCLI_EXIT_RUNTIME;
        } else {
            kn_tensor *logits =
                kn_module_forward(job.model, kn_to(kn_narrow(x, 0, 0, n), job.device));
            kn_tensor *probs = logits && logits->ndim >= 2 ? kn_softmax(logits, -1) : logits;
            if (!probs) {
                fprintf(stderr, "error: %s\n", kn_last_error());
                rc = KCLI_EXIT_RUNTIME;
            } else if (sequence) {
                rc = print_sequence_predictions(probs, b * batch, options->json);
            } else {
                rc = print_predictions(probs, b * batch, options->json);
            }
        }
        kn_scope_end();
    }
    kn_scope_end();
    kn_no_grad_end();
done:
    kn_dataset_free(ds);
    kcli_job_close(&job);
    return rc;
}

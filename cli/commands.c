/*
 * commands.c — `kiln train`, `kiln eval` and `kiln predict`: the job set up by job.c,
 * then the shared trainer (core/train.c) with the progress reporter, evaluation of a
 * checkpoint on the job's test data, and class probabilities for inputs from a file.
 */
#include "kcli.h"

#include "kn_dist.h"

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

/* The weights (with the job's preprocessing in their metadata) and a checkpoint. In a
 * distributed run every rank calls it (the checkpoint is a collective) and rank 0 writes
 * the weights. */
static int save_outputs(const kcli_job *job, kn_trainer *trainer, const char *dir, bool quiet,
                        const kcli_rank *rank)
{
    char *weights = kcli_join(dir, "model.safetensors");
    char *checkpoint = kcli_join(dir, "checkpoint.safetensors");
    int rc = 0;
    kapi_errors errors = {0};
    if (!weights || !checkpoint ||
        (rank->rank == 0 &&
         !kapi_save_weights(kn_trainer_model(trainer), weights, &job->preprocessing,
                            job->model_spec, NULL, &errors)) ||
        kn_trainer_save_checkpoint(trainer, checkpoint) != KN_OK) {
        fprintf(stderr, "error: --out %s: %s\n", dir,
                errors.count ? errors.items[0].message : kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
    } else if (!quiet) {
        fprintf(stderr, "wrote %s and %s\n", weights, checkpoint);
    }
    free(weights);
    free(checkpoint);
    kapi_errors_free(&errors);
    return rc;
}

/* The task's metrics into o under prefix ("test_accuracy"), or as text ("accuracy 0.9").
 * Also used by the progress lines of evaluations. */
void kcli_metrics_json(cJSON *o, const char *prefix, const kn_eval_result *r)
{
    kapi_metric m[KAPI_MAX_METRICS];
    int n = kapi_eval_metrics(r, m);
    char name[64];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, m[i].name);
        cJSON_AddNumberToObject(o, name, m[i].value);
    }
}

void kcli_metrics_text(char *out, size_t size, const kn_eval_result *r)
{
    kapi_metric m[KAPI_MAX_METRICS];
    int n = kapi_eval_metrics(r, m);
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < n && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%s %.4f", i ? ", " : "", m[i].name,
                                 m[i].value);
}

/* The details at the end: the confusion matrix, or each label's F1. */
static void print_details(const kn_eval_result *r)
{
    if (r->confusion && r->classes <= 30) {
        printf("confusion matrix (rows: true class, columns: predicted)\n");
        for (int64_t i = 0; i < r->classes; i++) {
            printf("%4lld |", (long long)i);
            for (int64_t j = 0; j < r->classes; j++)
                printf(" %6lld", (long long)r->confusion[i * r->classes + j]);
            printf("\n");
        }
    }
    if (r->label_f1) {
        printf("f1 per label:");
        for (int64_t k = 0; k < r->classes; k++)
            printf(" %lld: %.4f", (long long)k, r->label_f1[k]);
        printf("\n");
    }
}

static void add_details(cJSON *o, const kn_eval_result *r)
{
    char *text = kapi_eval_details_json(r);
    cJSON *details = text ? cJSON_Parse(text) : NULL;
    free(text);
    const cJSON *matrix = cJSON_GetObjectItemCaseSensitive(details, "confusion_matrix");
    const cJSON *f1 = cJSON_GetObjectItemCaseSensitive(details, "label_f1");
    if (matrix) cJSON_AddItemToObject(o, "confusion_matrix", cJSON_Duplicate(matrix, true));
    if (f1) cJSON_AddItemToObject(o, "label_f1", cJSON_Duplicate(f1, true));
    cJSON_Delete(details);
}

/* The end of the summary's JSON and text: a distributed run's world and its waiting. */
static void add_world(cJSON *o, const kn_train_summary *summary)
{
    if (summary->world_size <= 1) return;
    cJSON_AddNumberToObject(o, "world_size", summary->world_size);
    cJSON_AddNumberToObject(o, "communication_seconds", summary->communication_seconds);
}

/* A distributed run stopped by a signal on the ranks: what rank 0 was asked decides
 * (a pause saves a checkpoint for kilnd, Ctrl-C the outputs of --out). */
static int stopped_rank(const kcli_job *job, kn_trainer *trainer, const kcli_options *options,
                        kcli_rank *rank)
{
    int reason = kcli_rank_agree_stop(rank, interrupted);
    int64_t step = kn_trainer_step(trainer);
    int rc = 0;
    if (reason == KCLI_STOP_SAVE && options->out_dir) {
        if (options->events) { /* as kilnd names the checkpoints of its jobs */
            char name[64];
            snprintf(name, sizeof name, "checkpoint-%lld.safetensors", (long long)step);
            char *path = kcli_join(options->out_dir, name);
            if (!path || kn_trainer_save_checkpoint(trainer, path) != KN_OK) {
                fprintf(stderr, "error: checkpoint at step %lld: %s\n", (long long)step,
                        kn_last_error());
                rc = KCLI_EXIT_RUNTIME;
            } else if (rank->rank == 0) {
                kcli_print_checkpoint_event(step, path);
            }
            free(path);
        } else {
            rc = save_outputs(job, trainer, options->out_dir, options->quiet, rank);
        }
    }
    if (rank->rank == 0 && options->events) {
        printf("{\"event\":\"stopped\",\"reason\":\"%s\",\"step\":%lld}\n",
               reason == KCLI_STOP_SAVE ? "pause" : "cancel", (long long)step);
        fflush(stdout);
    } else if (rank->rank == 0 && !options->quiet) {
        fprintf(stderr, "interrupted at step %lld\n", (long long)step);
    }
    return rc;
}

int kcli_train(const char *job_path, const kcli_options *options_given)
{
    kcli_options local_options = *options_given; /* a rank other than 0 is quiet */
    kcli_options *options = &local_options;
    kcli_job job;
    kcli_rank rank = {0};
    int rc = kcli_job_open(&job, job_path, true, true);
    kn_trainer *trainer = NULL;
    kn_eval_result test = {0};
    bool tf32_before = kn_get_allow_tf32(); /* the job's choice until it is done */
    if (rc == 0 && kn_dist_launched()) rc = kcli_rank_join(&rank, &job, options, &interrupted);
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
        char device[32], world[96] = "";
        if (rank.dist)
            snprintf(world, sizeof world, " per process, %d processes (%s)", rank.world,
                     kn_dist_backend(rank.dist));
        fprintf(stderr, "training %s (%lld parameters) on %lld samples, %s, %d threads%s\n",
                job.model_spec->name[0] ? job.model_spec->name : "model",
                (long long)kn_module_parameter_count(job.model), (long long)job.train->count,
                kn_device_str(job.device, device, sizeof device), kn_get_num_threads(), world);
    }

    kcli_progress progress;
    kcli_progress_init(&progress, options, trainer, &interrupted);
    kn_train_callbacks callbacks = kcli_progress_callbacks(&progress);
    signal(SIGINT, on_sigint);
    kn_train_summary summary;
    /* only rank 0 evaluates */
    kn_status st = kn_trainer_run(trainer, job.train, rank.rank == 0 ? job.validation : NULL,
                                  &callbacks, &summary);
    signal(SIGINT, SIG_DFL);
    kcli_progress_finish(&progress);
    if (st != KN_OK && rank.dist && summary.stopped) {
        rc = stopped_rank(&job, trainer, options, &rank);
        goto done;
    }
    if (st != KN_OK) {
        if (interrupted)
            fprintf(stderr, "interrupted at step %lld\n", (long long)kn_trainer_step(trainer));
        else
            fprintf(stderr, "error: %s\n", kn_last_error());
        /* what was trained so far is still worth keeping */
        if (interrupted && options->out_dir)
            save_outputs(&job, trainer, options->out_dir, options->quiet, &rank);
        rc = interrupted ? 130 : KCLI_EXIT_RUNTIME;
        goto done;
    }

    /* the test set's numbers (rank 0's), with its confusion matrix (or per-label F1) */
    bool has_test = job.test != NULL && rank.rank == 0;
    if (has_test) {
        st = kn_evaluate_config(job.model, job.test, &job.spec->train, &test);
        if (st != KN_OK) {
            fprintf(stderr, "error: evaluating data.test: %s\n", kn_last_error());
            rc = KCLI_EXIT_RUNTIME;
            goto done;
        }
    }
    if (options->out_dir)
        rc = save_outputs(&job, trainer, options->out_dir, options->quiet || options->json, &rank);

    if (rank.rank != 0) {
        /* rank 0 reports */
    } else if (options->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "event", "summary");
        cJSON_AddNumberToObject(o, "steps", (double)summary.steps);
        cJSON_AddNumberToObject(o, "epochs_completed", (double)summary.epochs_completed);
        cJSON_AddNumberToObject(o, "train_seconds", summary.train_seconds);
        cJSON_AddNumberToObject(o, "samples_per_second", summary.samples_per_second);
        cJSON_AddStringToObject(o, "task", kn_task_name(job.spec->train.task));
        if (has_test) {
            cJSON_AddNumberToObject(o, "test_loss", test.loss);
            kcli_metrics_json(o, "test_", &test);
            add_details(o, &test);
        } else {
            cJSON_AddNullToObject(o, "test_loss");
        }
        cJSON_AddBoolToObject(o, "stopped_early", summary.stopped_early);
        cJSON_AddNumberToObject(o, "skipped_steps", (double)summary.skipped_steps);
        if (summary.cuda_note[0]) {
            cJSON_AddStringToObject(o, "cuda", summary.cuda_note);
            cJSON_AddNumberToObject(o, "graph_steps", (double)summary.graph_steps);
        }
        add_world(o, &summary);
        print_json(o);
        cJSON_Delete(o);
    } else {
        printf("steps %lld, %.1f s training, %.0f samples/s%s\n", (long long)summary.steps,
               summary.train_seconds, summary.samples_per_second,
               summary.stopped_early ? ", stopped early" : "");
        if (summary.world_size > 1)
            printf("%d processes; %.2f s waiting for communication (%.1f%% of training)\n",
                   summary.world_size, summary.communication_seconds,
                   summary.train_seconds > 0
                       ? 100.0 * summary.communication_seconds / summary.train_seconds
                       : 0.0);
        if (summary.skipped_steps)
            printf("skipped %lld non-finite steps\n", (long long)summary.skipped_steps);
        if (summary.cuda_note[0])
            printf("cuda: %s; %lld steps replayed from a graph\n", summary.cuda_note,
                   (long long)summary.graph_steps);
        if (has_test) {
            char metrics[256];
            kcli_metrics_text(metrics, sizeof metrics, &test);
            printf("test loss %.4f, %s (%lld samples)\n", test.loss, metrics,
                   (long long)test.count);
            print_details(&test);
        }
    }
done:
    kn_eval_result_clear(&test);
    kn_trainer_free(trainer);
    kcli_job_close(&job);
    kn_set_allow_tf32(tf32_before);
    kcli_rank_leave(&rank, rc);
    return rc;
}

int kcli_eval(const char *checkpoint, const char *job_path, const kcli_options *options)
{
    kn_eval_result r = {0};
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
    if ((rc = kcli_job_preprocessing(&job, checkpoint)) != 0 ||
        (rc = kcli_job_apply_preprocessing(&job, job.test, "data.test")) != 0)
        goto done;
    if (kn_evaluate_config(job.model, job.test, &job.spec->train, &r) != KN_OK) {
        fprintf(stderr, "error: %s\n", kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    if (options->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "task", kn_task_name(job.spec->train.task));
        cJSON_AddNumberToObject(o, "test_loss", r.loss);
        kcli_metrics_json(o, "test_", &r);
        cJSON_AddNumberToObject(o, "count", (double)r.count);
        add_details(o, &r);
        print_json(o);
        cJSON_Delete(o);
    } else {
        char metrics[256];
        kcli_metrics_text(metrics, sizeof metrics, &r);
        printf("test loss %.4f, %s (%lld samples)\n", r.loss, metrics, (long long)r.count);
        print_details(&r);
    }
done:
    kn_eval_result_clear(&r);
    kcli_job_close(&job);
    return rc;
}

/* The inputs to predict on, raw (the preprocessing is applied after): --input FILE in the
 * job's data format (a CSV with or without its target columns, an NPY of inputs alone, IDX
 * images), else the job's test (or training) data. Labels are not needed. */
static kn_dataset *predict_inputs(kcli_job *job, const kcli_options *options, int *rc)
{
    const kapi_data_spec *d = &job->spec->data;
    kapi_data_source src = d->test.present ? d->test : d->train;
    if (!src.present && !options->input) {
        fprintf(stderr, "predict: give --input FILE or data.test in the job\n");
        *rc = KCLI_EXIT_SPEC;
        return NULL;
    }
    if (options->input) {
        /* the file alone, read as the job's data format reads inputs */
        kapi_data_format format = src.present ? src.format : KAPI_FORMAT_NPY;
        kapi_data_source input = {.present = true, .format = format};
        snprintf(input.inputs_path, sizeof input.inputs_path, "%s", options->input);
        if (format == KAPI_FORMAT_CSV) {
            memcpy(input.label_column, src.label_column, sizeof input.label_column);
            memcpy(input.target_columns, src.target_columns, sizeof input.target_columns);
        }
        src = input;
    }
    kn_dataset *ds = NULL;
    *rc = kcli_job_load_unlabeled(job, &src, options->input ? "--input" : "data", &ds);
    if (*rc == 0) *rc = kcli_job_apply_preprocessing(job, ds, options->input ? "--input" : "data");
    if (*rc != 0) {
        kn_dataset_free(ds);
        return NULL;
    }
    return ds;
}

/* Prints an output that is not a [N, classes] float: each sample's values, flattened. */
static int print_values(kn_tensor *output, int64_t first, bool json)
{
    kn_tensor *p = kn_contiguous(kn_to(output, kn_cpu()));
    if (!p) return KCLI_EXIT_RUNTIME;
    int64_t n = p->ndim > 0 ? p->shape[0] : 1, row = n ? kn_numel(p) / n : 0;
    double *v = malloc(sizeof *v * (size_t)(row ? row : 1));
    if (!v) return KCLI_EXIT_RUNTIME;
    for (int64_t i = 0; i < n; i++) {
        int64_t index[KN_MAX_DIMS] = {i};
        for (int64_t k = 0; k < row; k++) { /* row-major within the sample */
            int64_t flat = k;
            for (int d = p->ndim - 1; d >= 1; d--) {
                index[d] = flat % p->shape[d];
                flat /= p->shape[d];
            }
            v[k] = kn_get(p, index);
        }
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "index", (double)(first + i));
            cJSON *arr = cJSON_AddArrayToObject(o, "output");
            for (int64_t k = 0; k < row; k++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(v[k]));
            char *text = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            if (text) printf("%s\n", text);
            free(text);
        } else {
            printf("%lld\t-", (long long)(first + i));
            for (int64_t k = 0; k < row; k++) printf("\t%.6g", v[k]);
            printf("\n");
        }
    }
    free(v);
    return 0;
}

static double sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* One line (or JSON object) per sample, as the task reads its outputs: classes with their
 * probabilities (softmax; one output: the sigmoid of the positive class), regression
 * values, multi-label labels over 0.5 with each probability. */
static int print_predictions(kn_tensor *outputs, int64_t first, kn_task task, bool json)
{
    /* a graph's output of another kind (int64, a sequence's [N, T, V]) */
    if (outputs->dtype != KN_FLOAT32 || (task != KN_TASK_REGRESSION && outputs->ndim > 2))
        return print_values(outputs, first, json);
    kn_tensor *p = kn_contiguous(kn_to(outputs, kn_cpu()));
    if (!p) return KCLI_EXIT_RUNTIME;
    int64_t n = p->shape[0], c = kn_numel(p) / (n > 0 ? n : 1);
    const float *v = kn_data_f32(p);
    for (int64_t i = 0; i < n; i++) {
        const float *row = v + i * c;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", (double)(first + i));
        if (!json) printf("%lld", (long long)(first + i));
        if (task == KN_TASK_REGRESSION) {
            cJSON *values = cJSON_AddArrayToObject(o, "values");
            for (int64_t k = 0; k < c; k++) {
                cJSON_AddItemToArray(values, cJSON_CreateNumber(row[k]));
                if (!json) printf("\t%.6g", (double)row[k]);
            }
        } else if (task == KN_TASK_MULTILABEL) {
            cJSON *labels = cJSON_AddArrayToObject(o, "labels");
            cJSON *probs = cJSON_AddArrayToObject(o, "probabilities");
            char text[1024] = "";
            size_t used = 0;
            for (int64_t k = 0; k < c; k++) {
                double prob = sigmoid(row[k]);
                cJSON_AddItemToArray(probs, cJSON_CreateNumber(prob));
                if (prob <= 0.5) continue;
                cJSON_AddItemToArray(labels, cJSON_CreateNumber((double)k));
                if (used < sizeof text)
                    used += (size_t)snprintf(text + used, sizeof text - used, "%s%lld",
                                             used ? "," : "", (long long)k);
            }
            if (!json) {
                printf("\t%s", text[0] ? text : "-");
                for (int64_t k = 0; k < c; k++) printf("\t%.4f", sigmoid(row[k]));
            }
        } else {
            /* one output: a binary classifier (bce); else softmax over the classes */
            double probs[2], *prob = probs, max = row[0], sum = 0;
            int64_t classes = c == 1 ? 2 : c, best = 0;
            if (c > 1 && !(prob = malloc(sizeof *prob * (size_t)c))) {
                /* p belongs to the caller's scope: releasing it here released it twice */
                fprintf(stderr, "error: out of memory for %lld class probabilities\n",
                        (long long)c);
                cJSON_Delete(o);
                return KCLI_EXIT_RUNTIME;
            }
            if (c == 1) {
                probs[1] = sigmoid(row[0]);
                probs[0] = 1 - probs[1];
            } else {
                for (int64_t k = 1; k < c; k++) max = row[k] > max ? row[k] : max;
                for (int64_t k = 0; k < c; k++) sum += prob[k] = exp((double)row[k] - max);
                for (int64_t k = 0; k < c; k++) prob[k] /= sum;
            }
            for (int64_t k = 1; k < classes; k++)
                if (prob[k] > prob[best]) best = k;
            cJSON_AddNumberToObject(o, "class", (double)best);
            cJSON *arr = cJSON_AddArrayToObject(o, "probabilities");
            if (!json) printf("\t%lld", (long long)best);
            for (int64_t k = 0; k < classes; k++) {
                cJSON_AddItemToArray(arr, cJSON_CreateNumber(prob[k]));
                if (!json) printf("\t%.4f", prob[k]);
            }
            if (prob != probs) free(prob);
        }
        if (json) {
            char *text = cJSON_PrintUnformatted(o);
            if (text) printf("%s\n", text);
            free(text);
        } else {
            printf("\n");
        }
        cJSON_Delete(o);
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
    if ((rc = kcli_job_preprocessing(&job, checkpoint)) != 0) goto done;
    ds = predict_inputs(&job, options, &rc);
    if (!ds) goto done;
    kn_task task = job.spec->train.task;
    int64_t count = options->limit > 0 && options->limit < ds->count ? options->limit : ds->count;
    kn_module_train(job.model, false);
    kn_no_grad_begin();
    /* outputs with a class per position ([N, T, V], issue 12) */
    bool sequence =
        task != KN_TASK_REGRESSION && task != KN_TASK_MULTILABEL && job.model_spec->output_ndim > 1;
    if (!options->json)
        printf("%s\n", task == KN_TASK_REGRESSION   ? "# index\tvalues..."
                       : task == KN_TASK_MULTILABEL ? "# index\tlabels\tprobabilities..."
                       : sequence                   ? "# index\tclass of each position"
                                                    : "# index\tclass\tprobabilities...");
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
            /* a graph's first output is its prediction (kn_module_forward gives it) */
            kn_tensor *outputs =
                kn_module_forward(job.model, kn_to(kn_narrow(x, 0, 0, n), job.device));
            if (!outputs) {
                fprintf(stderr, "error: %s\n", kn_last_error());
                rc = KCLI_EXIT_RUNTIME;
            } else if (sequence) {
                kn_tensor *probs = kn_softmax(outputs, -1);
                rc = probs ? print_sequence_predictions(probs, b * batch, options->json)
                           : KCLI_EXIT_RUNTIME;
                if (!probs) fprintf(stderr, "error: %s\n", kn_last_error());
            } else {
                rc = print_predictions(outputs, b * batch, task, options->json);
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

/*
 * test_tasks.c — tasks and preprocessing in the JSON contract (api/): a job's task and loss
 * parameters parsed; data loaded as the task takes it (float targets kept, refused for
 * classification with the field to change); targets checked against the model's outputs;
 * "normalize": "auto" measured on the training split only; the preprocessing written into
 * a weights file's metadata and applied to raw inputs with the training data's very floats.
 */
#include "kapi.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void temp_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "/tmp/kiln-test-tasks-%d-%s", (int)getpid(), name);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

/* An .npy file of float64 values in shape (n,) or (n, k). */
static void write_npy_f8(const char *path, const double *v, int64_t n, int64_t k)
{
    int64_t shape[2] = {n, k};
    cr_assert(kn_test_write_npy(path, "<f8", shape, k > 0 ? 2 : 1, v), "%s", path);
}

static kapi_job_spec *job(const char *json, bool cli)
{
    kapi_errors errors = {0};
    kapi_job_parse_options options = {.allow_paths = cli};
    kapi_job_spec *spec = kapi_job_spec_parse(json, strlen(json), options, &errors);
    char *text = kapi_errors_to_text(&errors);
    cr_assert_not_null(spec, "%s", text);
    free(text);
    kapi_errors_free(&errors);
    return spec;
}

#define TABULAR                                                                                    \
    "\"model\": {\"input_shape\": [20], \"layers\": [{\"type\": \"linear\", \"out_features\": "    \
    "1}]}"

Test(tasks, task_and_loss_parameters_parse)
{
    kapi_job_spec *j =
        job("{" TABULAR ", \"data\": {\"dataset\": \"d\"}, \"loss\": \"mse\"}", false);
    cr_expect_eq(j->train.task, KN_TASK_REGRESSION, "inferred from the loss");
    cr_expect_not(j->task_given);
    kapi_job_spec_free(j);
    j = job("{" TABULAR ", \"data\": {\"dataset\": \"d\"}, \"loss\": {\"type\": \"smooth_l1\", "
            "\"beta\": 0.25}}",
            false);
    cr_expect_eq(j->train.loss, KN_LOSS_SMOOTH_L1);
    cr_expect_float_eq(j->train.smooth_l1_beta, 0.25, 0);
    cr_expect_float_eq(j->train.huber_delta, 1, 0, "torch's default");
    kapi_job_spec_free(j);
    j = job("{" TABULAR
            ", \"data\": {\"dataset\": \"d\"}, \"loss\": {\"type\": \"bce_with_logits\", "
            "\"pos_weight\": [3]}}",
            false);
    cr_expect_eq(j->train.task, KN_TASK_MULTILABEL);
    cr_expect_eq(j->train.pos_weight_count, 1);
    cr_expect_float_eq(j->train.pos_weight[0], 3, 0);
    kapi_job_spec_free(j);
    j = job("{\"model\": \"m\", \"task\": \"classification\", \"data\": {\"dataset\": \"d\", "
            "\"label_column\": \"species\"}, \"loss\": {\"type\": \"cross_entropy\", \"weight\": "
            "[1, 2.5, 0]}}",
            false);
    cr_expect(j->task_given);
    cr_expect_eq(j->train.class_weight_count, 3);
    cr_expect_float_eq(j->train.class_weight[1], 2.5, 0);
    cr_expect_str_eq(j->data.label_column, "species");
    kapi_job_spec_free(j);
    /* 30 per-feature means and stds (more than the 16 channels of old), or "auto" */
    char text[4096];
    int used = snprintf(text, sizeof text,
                        "{\"model\": \"m\", \"data\": {\"dataset\": \"d\", \"target_columns\": "
                        "[\"a\", \"b\"], \"normalize\": {\"mean\": [");
    for (int i = 0; i < 30; i++)
        used += snprintf(text + used, sizeof text - used, "%s%d", i ? ", " : "", i);
    used += snprintf(text + used, sizeof text - used, "], \"std\": [");
    for (int i = 0; i < 30; i++)
        used += snprintf(text + used, sizeof text - used, "%s%d.5", i ? ", " : "", i);
    snprintf(text + used, sizeof text - used, "]}}, \"loss\": \"l1\"}");
    j = job(text, false);
    cr_expect_eq(j->data.channels, 30);
    cr_expect_float_eq(j->data.std[29], 29.5, 0);
    cr_expect_str_eq(j->data.target_columns, "a,b");
    kapi_job_spec_free(j);
    j = job("{\"model\": \"m\", \"data\": {\"dataset\": \"d\", \"normalize\": \"auto\"}}", false);
    cr_expect(j->data.normalize_auto);
    cr_expect_eq(j->data.channels, 0);
    kapi_job_spec_free(j);
}

/* Diabetes-like data: a CSV whose target is a float column, read for regression; the same
 * file is refused for classification, saying what to change. */
Test(tasks, csv_regression_targets)
{
    kn_scope_begin();
    char csv[256];
    temp_path(csv, sizeof csv, "reg.csv");
    write_text(csv, "age,bmi,target\n0.03,0.06,151.0\n-0.001,-0.05,75\n0.08,0.04,141.5\n");
    kapi_data_source src = {.present = true, .format = KAPI_FORMAT_CSV};
    snprintf(src.inputs_path, sizeof src.inputs_path, "%s", csv);
    snprintf(src.label_column, sizeof src.label_column, "target");
    kapi_errors errors = {0};
    kapi_load_options load = {.task = KN_TASK_REGRESSION};
    kn_dataset *ds = kapi_load_data(&src, load, &errors);
    cr_assert_not_null(ds, "%s", errors.count ? errors.items[0].message : kn_last_error());
    KN_ASSERT_SHAPE(ds->labels, KN_SHAPE(3, 1));
    KN_ASSERT_CLOSE(ds->labels, {151, 75, 141.5f});
    kn_dataset_free(ds);
    load.task = KN_TASK_CLASSIFICATION;
    cr_assert_null(kapi_load_data(&src, load, &errors));
    cr_assert_eq(errors.count, 1);
    cr_expect_str_eq(errors.items[0].path, csv);
    cr_expect(strstr(errors.items[0].message, "expected an integer label, got '151.0'") &&
                  strstr(errors.items[0].message, "\"task\": \"regression\""),
              "%s", errors.items[0].message);
    kapi_errors_free(&errors);
    remove(csv);
    kn_scope_end();
}

/* Float NPY targets are never cast to classes (68.5 stayed 68 before): regression keeps
 * them, classification refuses them naming the file. */
Test(tasks, npy_float_targets)
{
    kn_scope_begin();
    char x[256], y[256];
    temp_path(x, sizeof x, "x.npy");
    temp_path(y, sizeof y, "y.npy");
    double xs[6] = {1, 2, 3, 4, 5, 6}, ys[3] = {68.5, 151, -2};
    write_npy_f8(x, xs, 3, 2);
    write_npy_f8(y, ys, 3, 0);
    kapi_data_source src = {.present = true, .format = KAPI_FORMAT_NPY};
    snprintf(src.inputs_path, sizeof src.inputs_path, "%s", x);
    snprintf(src.labels_path, sizeof src.labels_path, "%s", y);
    kapi_errors errors = {0};
    kapi_load_options load = {.task = KN_TASK_REGRESSION};
    kn_dataset *ds = kapi_load_data(&src, load, &errors);
    cr_assert_not_null(ds);
    KN_ASSERT_CLOSE(ds->labels, {68.5f, 151, -2});
    kn_dataset_free(ds);
    load.task = KN_TASK_CLASSIFICATION;
    cr_assert_null(kapi_load_data(&src, load, &errors));
    cr_expect_str_eq(errors.items[0].path, y, "the labels file is named");
    cr_expect(strstr(errors.items[0].message,
                     "targets are float32 [3] but task classification needs integer class labels"),
              "%s", errors.items[0].message);
    kapi_errors_free(&errors);
    /* inputs alone: predict on them */
    src.labels_path[0] = '\0';
    load.allow_unlabeled = true;
    ds = kapi_load_data(&src, load, &errors);
    cr_assert_not_null(ds);
    cr_expect_null(ds->labels);
    kn_dataset_free(ds);
    remove(x);
    remove(y);
    kn_scope_end();
}

static kapi_model_spec *model(const char *json)
{
    kapi_errors errors = {0};
    kapi_model_spec *m = kapi_model_spec_parse(json, strlen(json), &errors);
    cr_assert_not_null(m);
    kapi_errors_free(&errors);
    return m;
}

/* The checks a job's labels get before training, each naming what to change. */
Test(tasks, labels_checked_against_the_model)
{
    kn_scope_begin();
    kapi_model_spec *one = model("{\"input_shape\": [2], \"layers\": [{\"type\": \"linear\", "
                                 "\"out_features\": 1}]}");
    kapi_model_spec *three = model("{\"input_shape\": [2], \"layers\": [{\"type\": \"linear\", "
                                   "\"out_features\": 3}]}");
    kn_train_config c = kn_train_config_defaults();
    kapi_errors errors = {0};
    /* the diabetes mistake: class labels up to 346 for one output and cross_entropy */
    kn_tensor *classes = kn_from_int64s((int64_t[]){151, 75, 346}, KN_SHAPE(3));
    cr_expect_not(kapi_check_labels(classes, one, &c, "data.train (labels)", &errors));
    cr_expect_str_eq(errors.items[0].path, "data.train (labels)");
    cr_expect(
        strstr(errors.items[0].message, "labels go up to 346 but the model outputs 1 classes") &&
            strstr(errors.items[0].message, "\"task\": \"regression\""),
        "%s", errors.items[0].message);
    kapi_errors_free(&errors);
    /* one logit with bce: binary labels */
    c.loss = KN_LOSS_BCE_WITH_LOGITS;
    cr_expect(kapi_check_labels(kn_from_int64s((int64_t[]){0, 1, 1}, KN_SHAPE(3)), one, &c, "d",
                                &errors));
    cr_expect_not(kapi_check_labels(classes, one, &c, "d", &errors));
    cr_expect(strstr(errors.items[0].message, "binary labels 0 and 1"), "%s",
              errors.items[0].message);
    kapi_errors_free(&errors);
    /* a target width that is not the model's output width */
    c.loss = KN_LOSS_MSE;
    c.task = KN_TASK_REGRESSION;
    kn_tensor *targets = kn_zeros(KN_SHAPE(3, 2), KN_FLOAT32);
    cr_expect_not(kapi_check_labels(targets, three, &c, "data.train (targets)", &errors));
    cr_expect(strstr(errors.items[0].message,
                     "targets have 2 values per sample but the model outputs 3 (output_shape [3])"),
              "%s", errors.items[0].message);
    kapi_errors_free(&errors);
    /* multi-label targets in [0, 1]; class weights one per class */
    c.loss = KN_LOSS_BCE_WITH_LOGITS;
    c.task = KN_TASK_MULTILABEL;
    cr_expect_not(
        kapi_check_labels(kn_full(KN_SHAPE(2, 3), 2, KN_FLOAT32), three, &c, "d", &errors));
    cr_expect(strstr(errors.items[0].message, "targets in [0, 1]"), "%s", errors.items[0].message);
    kapi_errors_free(&errors);
    c = kn_train_config_defaults();
    const float w[2] = {1, 2};
    c.class_weight = w;
    c.class_weight_count = 2;
    cr_expect_not(kapi_check_labels(kn_zeros(KN_SHAPE(3), KN_INT64), three, &c, "d", &errors));
    cr_expect_str_eq(errors.items[0].path, "loss.weight");
    kapi_errors_free(&errors);
    kapi_model_spec_free(one);
    kapi_model_spec_free(three);
    kn_scope_end();
}

/* "auto": the mean and std of each feature of the training part, after scaling, never of
 * the validation or test data; every split normalised with them. */
Test(tasks, normalize_auto_uses_the_training_split_only)
{
    kn_scope_begin();
    kapi_job_spec *j = job("{\"model\": {\"input_shape\": [2], \"layers\": [{\"type\": \"linear\", "
                           "\"out_features\": 1}]}, \"data\": {\"dataset\": \"d\", "
                           "\"validation_split\": 0.25, \"scale\": 2, \"normalize\": \"auto\"}, "
                           "\"loss\": \"mse\", \"seed\": 4}",
                           false);
    int64_t n = 8;
    kn_tensor *x = kn_zeros(KN_SHAPE(n, 2), KN_FLOAT32);
    for (int64_t i = 0; i < n; i++) {
        kn_data_f32(x)[2 * i] = (float)i;
        kn_data_f32(x)[2 * i + 1] = (float)(100 - 3 * i);
    }
    kn_dataset *train = kn_dataset_new(x, kn_zeros(KN_SHAPE(n, 1), KN_FLOAT32));
    kn_dataset *test = kn_dataset_new(kn_full(KN_SHAPE(2, 2), 1000, KN_FLOAT32),
                                      kn_zeros(KN_SHAPE(2, 1), KN_FLOAT32));
    kn_dataset *validation = NULL;
    kapi_preprocessing p;
    kapi_errors errors = {0};
    cr_assert(kapi_prepare_data(j, j->model, &train, &validation, &test, &p, &errors), "%s",
              errors.count ? errors.items[0].message : "");
    cr_expect_eq(train->count, 6);
    cr_expect_eq(validation->count, 2);
    cr_expect_eq(p.channels, 2);
    cr_expect_float_eq(p.scale, 2, 0);
    /* the training part's features, scaled: their mean and population std */
    double train_mean[2], train_std[2];
    cr_assert_eq(kn_dataset_channel_stats(train, 2, train_mean, train_std), KN_OK);
    cr_expect_float_eq(train_mean[0], 0, 1e-6, "the training part is centred");
    cr_expect_float_eq(train_std[0], 1, 1e-6, "and unit");
    cr_expect_float_eq(train_mean[1], 0, 1e-5);
    /* the test data (1000 everywhere) moved by the training statistics, not its own */
    float want0 = (2000.0f - (float)p.mean[0]) / (float)p.std[0];
    cr_expect_float_eq(kn_data_f32(test->inputs)[0], want0, 1e-3);
    cr_expect_gt(fabs(kn_data_f32(test->inputs)[0]), 10, "not normalised with its own stats");
    kapi_preprocessing_free(&p);
    kn_dataset_free(train);
    kn_dataset_free(validation);
    kn_dataset_free(test);
    kapi_errors_free(&errors);
    kapi_job_spec_free(j);
    kn_scope_end();
}

/* Written into the weights' metadata and read back: raw inputs get the very floats the
 * training data got; files from elsewhere have none; an unknown step is refused. */
Test(tasks, preprocessing_travels_with_the_weights)
{
    kn_scope_begin();
    kapi_model_spec *m = model("{\"input_shape\": [3], \"layers\": [{\"type\": \"linear\", "
                               "\"out_features\": 1}]}");
    kn_module *module = kapi_model_build(m, NULL);
    double mean[3] = {0.1, -2.5, 1e6}, std[3] = {0.3, 1.0 / 3, 12345.678};
    kapi_preprocessing p = {
        .scale = 0.00392156862745098, .channels = 3, .task = KN_TASK_REGRESSION};
    p.mean = malloc(sizeof mean);
    p.std = malloc(sizeof std);
    memcpy(p.mean, mean, sizeof mean);
    memcpy(p.std, std, sizeof std);
    char path[256];
    temp_path(path, sizeof path, "w.safetensors");
    kapi_errors errors = {0};
    cr_assert(kapi_save_weights(module, path, &p, m, NULL, &errors));
    kapi_preprocessing back;
    bool found = false;
    cr_assert(kapi_load_preprocessing(path, &back, &found, &errors), "%s",
              errors.count ? errors.items[0].message : "");
    cr_assert(found);
    cr_expect_eq(back.task, KN_TASK_REGRESSION);
    cr_expect_eq(back.channels, 3);
    cr_expect_eq(back.scale, p.scale, "exact");
    for (int c = 0; c < 3; c++) {
        cr_expect_eq(back.mean[c], mean[c], "mean[%d] exact", c);
        cr_expect_eq(back.std[c], std[c], "std[%d] exact", c);
    }
    /* the weights still load into the model, and into torch (checked by the full test) */
    cr_assert_eq(kn_module_load_weights(module, path, true), KN_OK, "%s", kn_last_error());
    /* served: the same floats as the dataset normalisation */
    float raw[6] = {12, 200, 1000003, 0, 255, 999990};
    kn_dataset *ds = kn_dataset_new(kn_from_floats(raw, KN_SHAPE(2, 3)), NULL);
    cr_assert_eq(kn_dataset_normalize(ds, p.scale, p.mean, p.std, 3), KN_OK);
    cr_assert_eq(kapi_preprocess(&back, raw, 2, 3), KN_OK);
    cr_expect_eq(memcmp(raw, kn_data_f32(ds->inputs), sizeof raw), 0, "bit for bit");
    kn_dataset_free(ds);
    kapi_preprocessing_free(&back);
    /* a file without it: the identity */
    cr_assert_eq(kn_module_save_weights(module, path), KN_OK);
    cr_assert(kapi_load_preprocessing(path, &back, &found, &errors));
    cr_expect_not(found);
    cr_expect(kapi_preprocessing_is_identity(&back));
    /* a step a later kiln writes is not silently skipped */
    cr_expect_not(kapi_preprocessing_from_json(
        "{\"version\": 1, \"steps\": [{\"type\": \"char_vocabulary\", \"chars\": \"ab\"}]}", &back,
        &errors));
    cr_expect(strstr(errors.items[0].message, "unknown preprocessing step \"char_vocabulary\""),
              "%s", errors.items[0].message);
    kapi_errors_free(&errors);
    cr_expect_not(kapi_preprocessing_from_json(
        "{\"version\": 1, \"steps\": [{\"type\": \"normalize\", \"mean\": [0], \"std\": [0]}]}",
        &back, &errors));
    kapi_errors_free(&errors);
    char *json = kapi_preprocessing_to_json(&p, m);
    cr_expect(strstr(json, "\"input_shape\":[3]") && strstr(json, "\"type\":\"scale\""), "%s",
              json);
    free(json);
    kapi_preprocessing_free(&p);
    remove(path);
    kn_module_free(module);
    kapi_model_spec_free(m);
    kn_scope_end();
}

/*
 * test_server_tasks.c — regression, binary and multi-label jobs through a real kilnd:
 * datasets with float targets (a CSV whose target column the job names, JSON rows of 0/1
 * labels), the submission refusing labels that do not fit the task or the model (400
 * naming the field), "normalize": "auto" measured on the training part, the metrics of
 * each task as series and the final evaluation (confusion matrix, per-label F1) in the
 * job, and v2 infer taking raw inputs with the job's preprocessing from the weights'
 * metadata (the same outputs as a local forward of the preprocessed inputs).
 */
#include "server_harness.h"

#include "kapi.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static harness H;

static void teardown(void)
{
    h_cleanup(&H);
}

TestSuite(server_tasks, .fini = teardown, .timeout = 300);

#define FEATURES 4
#define TRAIN 320
#define TEST 60

/* Features of very different scales (feature j ~ 10^j), a target of the standardised
 * features around 150, as scikit-learn's diabetes set has. Deterministic. */
static void sample(int i, double *x, double *y)
{
    double z[FEATURES];
    for (int j = 0; j < FEATURES; j++) {
        z[j] = sin(1.7 * i + 2.3 * j) + 0.5 * cos(0.31 * i * (j + 1));
        x[j] = z[j] * pow(10, j) + 3 * pow(10, j);
    }
    *y = 150 + 30 * z[0] - 20 * z[1] + 10 * z[2] + 0.25 * z[3];
}

static void write_csv(const char *path, int first, int n)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "f0,f1,f2,f3,y\n");
    for (int i = first; i < first + n; i++) {
        double x[FEATURES], y;
        sample(i, x, &y);
        fprintf(f, "%.9g,%.9g,%.9g,%.9g,%.6f\n", x[0], x[1], x[2], x[3], y);
    }
    cr_assert_eq(fclose(f), 0);
}

static void upload(const char *path, const char *file)
{
    khttp_response r = h_request_full(&H, "PUT", path, NULL, 0, file, NULL, NULL);
    cr_assert_eq(r.status, 201, "PUT %s: %d %s", path, r.status, r.body);
    khttp_response_free(&r);
}

/* A submission that must be refused with 400 and this path; the message must hold want. */
static void refused(const char *spec, const char *path, const char *want)
{
    khttp_response r = h_request(&H, "POST", "/v1/jobs", spec);
    cr_assert_eq(r.status, 400, "%s -> %d %s", spec, r.status, r.body);
    cJSON *doc = cJSON_Parse(r.body);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    cr_expect_str_eq(h_string(error, "path"), path, "%s", r.body);
    cr_expect(strstr(h_string(error, "message"), want), "wanted \"%s\" in %s", want, r.body);
    cJSON_Delete(doc);
    khttp_response_free(&r);
}

static char *submit(const char *spec)
{
    cJSON *doc = h_json(&H, "POST", "/v1/jobs", spec, 202);
    char *id = strdup(h_string(doc, "id"));
    cJSON_Delete(doc);
    return id;
}

static cJSON *succeeded(const char *id)
{
    cJSON *job = h_wait_job(&H, id, 240);
    char *text = cJSON_PrintUnformatted(job);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "%s", text);
    free(text);
    return job;
}

#define REG_MODEL                                                                                  \
    "{\"name\": \"reg\", \"input_shape\": [4], \"layers\": [{\"type\": \"linear\", "               \
    "\"out_features\": 16}, {\"type\": \"relu\"}, {\"type\": \"linear\", \"out_features\": 1}]}"

Test(server_tasks, regression_with_auto_normalize_and_raw_inference)
{
    h_start(&H, NULL);
    char train[400], test[400];
    snprintf(train, sizeof train, "%s/train.csv", H.files_dir);
    snprintf(test, sizeof test, "%s/test.csv", H.files_dir);
    write_csv(train, 0, TRAIN);
    write_csv(test, TRAIN, TEST);
    /* a CSV without a "label" column uploads: which columns are targets is the job's */
    upload("/v1/datasets/reg/files/train", train);
    upload("/v1/datasets/reg/files/test", test);

    /* refused at submission, before any training, each naming the field */
    refused("{\"model\": " REG_MODEL ", \"data\": {\"dataset\": \"reg\", \"label_column\": \"y\"}}",
            "data.dataset", "expected an integer label");
    refused("{\"model\": " REG_MODEL ", \"data\": {\"dataset\": \"reg\", \"label_column\": \"y\"}, "
            "\"task\": \"classification\", \"loss\": \"mse\"}",
            "data.dataset", "\"task\": \"regression\"");
    refused("{\"model\": " REG_MODEL
            ", \"data\": {\"dataset\": \"reg\", \"label_column\": \"nope\"}, "
            "\"loss\": \"mse\"}",
            "data.dataset", "no column named 'nope'");
    refused("{\"model\": {\"input_shape\": [4], \"layers\": [{\"type\": \"linear\", "
            "\"out_features\": 2}]}, \"data\": {\"dataset\": \"reg\", \"label_column\": \"y\"}, "
            "\"loss\": \"huber\"}",
            "data.dataset", "targets have 1 value per sample but the model outputs 2");
    refused("{\"model\": " REG_MODEL ", \"data\": {\"dataset\": \"reg\", \"target_columns\": "
            "[\"y\", \"f3\"]}, \"loss\": \"mse\"}",
            "data.dataset", "targets have 2 values per sample");

    char *id =
        submit("{\"model\": " REG_MODEL ", \"data\": {\"dataset\": \"reg\", \"label_column\": "
               "\"y\", \"validation_split\": 0.2, \"normalize\": \"auto\"}, \"loss\": "
               "\"mse\", \"optimizer\": {\"type\": \"adam\", \"lr\": 0.03}, \"batch_size\": "
               "32, \"epochs\": 60, \"seed\": 1}");
    cJSON *job = succeeded(id);
    const cJSON *metrics = cJSON_GetObjectItemCaseSensitive(job, "metrics");
    cr_expect(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(metrics, "test_r2")),
              "the final test evaluation reports r2");
    cr_expect_gt(h_number(metrics, "val_r2"), 0.95, "val_r2 %g", h_number(metrics, "val_r2"));
    cr_expect_gt(h_number(metrics, "test_r2"), 0.95, "test_r2 %g", h_number(metrics, "test_r2"));
    cr_expect(isnan(h_number(metrics, "val_accuracy")), "no accuracy for a regression");
    const cJSON *evaluation = cJSON_GetObjectItemCaseSensitive(job, "evaluation");
    cr_assert_not_null(evaluation, "the job has its final evaluation");
    cr_expect_str_eq(h_string(evaluation, "task"), "regression");
    cr_expect_str_eq(h_string(evaluation, "split"), "test");
    cr_expect_eq(h_number(evaluation, "count"), TEST);
    cJSON_Delete(job);
    /* every evaluation is a series: val_mse, val_mae, val_r2 and the test ones */
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=val_r2,val_mae,test_mse", id);
    cJSON *series = h_json(&H, "GET", path, NULL, 200);
    cr_expect_geq(cJSON_GetArraySize(h_series(series, "val_r2")), 60, "one point per epoch");
    cr_expect_eq(cJSON_GetArraySize(h_series(series, "test_mse")), 1);
    cJSON_Delete(series);

    /* the downloaded weights carry the preprocessing: auto's statistics of the training
     * part of the training file, per feature */
    char weights[400];
    snprintf(weights, sizeof weights, "%s/reg.safetensors", H.files_dir);
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", id);
    khttp_response r = h_request(&H, "GET", path, NULL);
    cr_assert_eq(r.status, 200);
    FILE *f = fopen(weights, "wb");
    fwrite(r.body, 1, r.body_length, f);
    fclose(f);
    khttp_response_free(&r);
    kapi_preprocessing p;
    bool found = false;
    kapi_errors errors = {0};
    cr_assert(kapi_load_preprocessing(weights, &p, &found, &errors));
    cr_assert(found, "kiln.preprocessing in the metadata");
    cr_expect_eq(p.task, KN_TASK_REGRESSION);
    cr_assert_eq(p.channels, FEATURES);
    for (int j = 0; j < FEATURES; j++) {
        cr_expect(fabs(p.mean[j] / pow(10, j) - 3) < 0.3, "mean[%d] %g", j, p.mean[j]);
        cr_expect(p.std[j] / pow(10, j) > 0.3 && p.std[j] / pow(10, j) < 1.5, "std[%d] %g", j,
                  p.std[j]);
    }

    /* raw test rows through v2 infer equal a local forward of the preprocessed rows */
    float raw[TEST * FEATURES], prepared[TEST * FEATURES];
    cJSON *body = cJSON_CreateObject();
    cJSON *input = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(body, "inputs"), input);
    cJSON_AddStringToObject(input, "name", "input");
    cJSON_AddItemToObject(input, "shape", cJSON_CreateIntArray((const int[]){TEST, FEATURES}, 2));
    cJSON_AddStringToObject(input, "datatype", "FP64");
    cJSON *data = cJSON_AddArrayToObject(input, "data");
    for (int i = 0; i < TEST; i++) {
        double x[FEATURES], y;
        sample(TRAIN + i, x, &y);
        for (int j = 0; j < FEATURES; j++) {
            /* the value the CSV holds, as the dataset read it */
            char text[32];
            snprintf(text, sizeof text, "%.9g", x[j]);
            raw[i * FEATURES + j] = (float)strtod(text, NULL);
            cJSON_AddItemToArray(data, cJSON_CreateNumber(raw[i * FEATURES + j]));
        }
    }
    memcpy(prepared, raw, sizeof raw);
    cr_assert_eq(kapi_preprocess(&p, prepared, TEST, FEATURES), KN_OK);
    char *text = cJSON_PrintUnformatted(body);
    snprintf(path, sizeof path, "/v2/models/reg/versions/%s/infer", id);
    cJSON *answer = h_json(&H, "POST", path, text, 200);
    free(text);
    const cJSON *out = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(answer, "outputs"), 0), "data");
    cr_assert_eq(cJSON_GetArraySize(out), TEST);

    kapi_model_spec *m = kapi_model_spec_parse(REG_MODEL, strlen(REG_MODEL), &errors);
    kn_module *model = kapi_model_build(m, NULL);
    cr_assert_eq(kn_module_load_weights(model, weights, true), KN_OK, "%s", kn_last_error());
    kn_scope_begin();
    kn_no_grad_begin();
    kn_tensor *local =
        kn_contiguous(kn_module_forward(model, kn_from_floats(prepared, KN_SHAPE(TEST, FEATURES))));
    cr_assert_not_null(local, "%s", kn_last_error());
    double sq = 0, var = 0, mean = 0;
    for (int i = 0; i < TEST; i++) {
        double x[FEATURES], y;
        sample(TRAIN + i, x, &y);
        mean += y / TEST;
    }
    for (int i = 0; i < TEST; i++) {
        double served = cJSON_GetArrayItem(out, i)->valuedouble, x[FEATURES], y;
        float want = kn_data_f32(local)[i];
        cr_assert_float_eq(served, want, 1e-4 * (1 + fabs(want)), "row %d: served %g, local %g", i,
                           served, want);
        sample(TRAIN + i, x, &y);
        sq += (served - y) * (served - y);
        var += (y - mean) * (y - mean);
    }
    cr_expect_gt(1 - sq / var, 0.95, "raw inputs served: r2 %g", 1 - sq / var);
    kn_no_grad_end();
    kn_scope_end();
    /* "preprocessed": true takes the model's inputs as they are */
    cJSON_AddBoolToObject(cJSON_AddObjectToObject(body, "parameters"), "preprocessed", true);
    cJSON_ReplaceItemInObject(input, "data", cJSON_CreateFloatArray(prepared, TEST * FEATURES));
    cJSON_ReplaceItemInObject(input, "datatype", cJSON_CreateString("FP32"));
    text = cJSON_PrintUnformatted(body);
    cJSON *again = h_json(&H, "POST", path, text, 200);
    free(text);
    const cJSON *out2 = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(again, "outputs"), 0), "data");
    cr_assert_eq(cJSON_GetArraySize(out2), TEST);
    for (int i = 0; i < TEST; i++)
        cr_expect_float_eq(cJSON_GetArrayItem(out2, i)->valuedouble,
                           cJSON_GetArrayItem(out, i)->valuedouble, 0, "row %d: the same outputs",
                           i);
    cJSON_Delete(again);
    cJSON_Delete(answer);
    cJSON_Delete(body);
    kn_module_free(model);
    kapi_model_spec_free(m);
    kapi_preprocessing_free(&p);
    kapi_errors_free(&errors);
    free(id);
}

/* Labels as JSON: 0/1 for a binary classifier with one logit, rows of three 0/1 labels. */
static char *json_dataset(int n, bool multilabel)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *inputs = cJSON_AddArrayToObject(root, "inputs");
    cJSON *labels = cJSON_AddArrayToObject(root, "labels");
    for (int i = 0; i < n; i++) {
        double x[3] = {sin(1.3 * i), cos(0.7 * i + 1), sin(0.37 * i + 2)};
        cJSON_AddItemToArray(inputs, cJSON_CreateDoubleArray(x, 3));
        if (multilabel) {
            double y[3] = {x[0] > 0.2, x[1] > -0.1, x[0] + x[2] > 0};
            cJSON_AddItemToArray(labels, cJSON_CreateDoubleArray(y, 3));
        } else {
            cJSON_AddItemToArray(labels, cJSON_CreateNumber(x[0] - x[1] > 0.1));
        }
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

#define SMALL_MODEL(out)                                                                           \
    "{\"input_shape\": [3], \"layers\": [{\"type\": \"linear\", \"out_features\": 16}, "           \
    "{\"type\": \"relu\"}, {\"type\": \"linear\", \"out_features\": " #out "}]}"

Test(server_tasks, binary_and_multilabel)
{
    h_start(&H, NULL);
    char *text = json_dataset(400, false);
    cJSON_Delete(h_json(&H, "POST", "/v1/datasets/binary/files/train", text, 201));
    free(text);
    text = json_dataset(400, true);
    cJSON_Delete(h_json(&H, "POST", "/v1/datasets/labels3/files/train", text, 201));
    free(text);

    /* bce with one logit used to fail: "labels go up to 1 but the model outputs 1 classes" */
    refused("{\"model\": " SMALL_MODEL(1) ", \"data\": {\"dataset\": \"binary\"}, \"loss\": "
                                          "\"cross_entropy\"}",
            "data.dataset", "labels go up to 1 but the model outputs 1 classes");
    char *binary = submit("{\"model\": " SMALL_MODEL(
        1) ", \"task\": \"classification\", \"data\": {\"dataset\": \"binary\", "
           "\"validation_split\": 0.25}, \"loss\": \"bce_with_logits\", \"optimizer\": {\"type\": "
           "\"adam\", \"lr\": 0.02}, \"epochs\": 30, \"batch_size\": 32}");
    cJSON *job = succeeded(binary);
    const cJSON *metrics = cJSON_GetObjectItemCaseSensitive(job, "metrics");
    cr_expect_gt(h_number(metrics, "val_accuracy"), 0.9, "val_accuracy %g",
                 h_number(metrics, "val_accuracy"));
    cr_expect(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(metrics, "val_f1")));
    const cJSON *evaluation = cJSON_GetObjectItemCaseSensitive(job, "evaluation");
    const cJSON *matrix = cJSON_GetObjectItemCaseSensitive(evaluation, "confusion_matrix");
    cr_assert_eq(cJSON_GetArraySize(matrix), 2, "a 2 x 2 confusion matrix");
    double total = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            total += cJSON_GetArrayItem(cJSON_GetArrayItem(matrix, i), j)->valuedouble;
    cr_expect_eq(total, 100, "every validation sample counted once");
    cJSON_Delete(job);

    /* multi-label: rows of 0/1 with bce_with_logits (the task inferred) and a pos_weight */
    refused("{\"model\": " SMALL_MODEL(2) ", \"data\": {\"dataset\": \"labels3\"}, \"loss\": "
                                          "\"bce_with_logits\"}",
            "data.dataset", "targets have 3 values per sample but the model outputs 2");
    char *multi = submit("{\"model\": " SMALL_MODEL(
        3) ", \"data\": {\"dataset\": \"labels3\", \"validation_split\": 0.25}, \"loss\": "
           "{\"type\": "
           "\"bce_with_logits\", \"pos_weight\": [1, 1.5, 1]}, \"optimizer\": {\"type\": "
           "\"adam\", \"lr\": 0.02}, \"epochs\": 40, \"batch_size\": 32}");
    job = succeeded(multi);
    metrics = cJSON_GetObjectItemCaseSensitive(job, "metrics");
    cr_expect_gt(h_number(metrics, "val_exact_match"), 0.8, "exact match %g",
                 h_number(metrics, "val_exact_match"));
    evaluation = cJSON_GetObjectItemCaseSensitive(job, "evaluation");
    cr_expect_str_eq(h_string(evaluation, "task"), "multilabel");
    const cJSON *f1 = cJSON_GetObjectItemCaseSensitive(evaluation, "label_f1");
    cr_assert_eq(cJSON_GetArraySize(f1), 3);
    for (int k = 0; k < 3; k++)
        cr_expect_gt(cJSON_GetArrayItem(f1, k)->valuedouble, 0.8, "label %d f1", k);
    cJSON_Delete(job);
    free(binary);
    free(multi);
}

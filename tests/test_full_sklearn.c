/*
 * test_full_sklearn.c — the acceptance run of regression and tabular classification
 * (label "full"): scikit-learn's bundled diabetes set (10 features, a float target) and
 * breast-cancer set (30 features, normalize "auto"), split and written by
 * tests/full/sklearn_reference.py, uploaded to a real kilnd over HTTP (a CSV whose target
 * column the job names; NPY inputs and labels), trained there, and compared with the same
 * model and recipe in PyTorch: test R^2 and accuracy within 0.02. Then raw test rows go
 * through v2 infer: the job's preprocessing comes from its weights, so the served outputs
 * score what the job's test evaluation scored, and equal a PyTorch forward of the
 * downloaded weights with the preprocessing read from their metadata.
 * Skips, saying why, when /usr/bin/python3 lacks torch or scikit-learn (python3-sklearn).
 */
#include "server_harness.h"

#include "kn_test.h"

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

#define SCRIPT KILN_SOURCE_DIR "/tests/full/sklearn_reference.py"

/* Runs the reference script; its stdout (one JSON line) parsed. Skips on status 77. */
static cJSON *reference(const char *args)
{
    char command[2048], out[1 << 16];
    snprintf(command, sizeof command, "/usr/bin/python3 %s %s 2>&1", SCRIPT, args);
    FILE *p = popen(command, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        cr_skip_test("needs torch and scikit-learn under /usr/bin/python3 (apt install "
                     "python3-torch python3-sklearn): %s",
                     out);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed: %s", command, out);
    char *line = strrchr(out, '{') ? strchr(out, '{') : NULL;
    cr_assert_not_null(line, "no JSON from %s: %s", command, out);
    cJSON *doc = cJSON_Parse(line);
    cr_assert_not_null(doc, "not JSON from %s: %s", command, out);
    return doc;
}

static void put_file(const char *dataset, const char *role, const char *file)
{
    char path[256], local[512];
    snprintf(path, sizeof path, "/v1/datasets/%s/files/%s", dataset, role);
    snprintf(local, sizeof local, "%s/%s", H.files_dir, file);
    khttp_response r = h_request_full(&H, "PUT", path, NULL, 0, local, NULL, NULL);
    cr_assert_eq(r.status, 201, "PUT %s: %d %s", path, r.status, r.body);
    khttp_response_free(&r);
}

static double recipe_number(const cJSON *recipes, const char *set, const char *key)
{
    return h_number(cJSON_GetObjectItemCaseSensitive(recipes, set), key);
}

/* The job of a recipe on a dataset, its test metric once it has succeeded. */
static char *run_job(const cJSON *recipes, const char *set, const char *dataset, const char *extra)
{
    char spec[2048];
    snprintf(
        spec, sizeof spec,
        "{\"model\": {\"name\": \"%s\", \"input_shape\": [%.0f], \"layers\": [{\"type\": "
        "\"linear\", \"out_features\": %.0f}, {\"type\": \"relu\"}, {\"type\": \"linear\", "
        "\"out_features\": %.0f}]}, \"data\": {\"dataset\": \"%s\", \"normalize\": \"auto\"%s}, "
        "\"loss\": \"%s\", \"optimizer\": {\"type\": \"adam\", \"lr\": %.17g}, "
        "\"batch_size\": %.0f, \"epochs\": %.0f, \"seed\": %.0f}",
        set, recipe_number(recipes, set, "features"), recipe_number(recipes, set, "hidden"),
        recipe_number(recipes, set, "outputs"), dataset, extra,
        h_string(cJSON_GetObjectItemCaseSensitive(recipes, set), "loss"),
        recipe_number(recipes, set, "lr"), recipe_number(recipes, set, "batch_size"),
        recipe_number(recipes, set, "epochs"), recipe_number(recipes, set, "seed"));
    cJSON *doc = h_json(&H, "POST", "/v1/jobs", spec, 202);
    char *id = strdup(h_string(doc, "id"));
    cJSON_Delete(doc);
    cJSON *job = h_wait_job(&H, id, 600);
    char *text = cJSON_PrintUnformatted(job);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "%s", text);
    fprintf(stderr, "%s job: %s\n", set, text);
    free(text);
    cJSON_Delete(job);
    return id;
}

static double job_metric(const char *id, const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    cJSON *job = h_json(&H, "GET", path, NULL, 200);
    double v = h_number(cJSON_GetObjectItemCaseSensitive(job, "metrics"), name);
    cJSON_Delete(job);
    return v;
}

/* The data of an .npy the script wrote (8-byte elements, malloc'd) and its shape [n, k]
 * (k 1 for [n]). */
static void *read_npy(const char *file, int64_t *n, int64_t *k)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", H.files_dir, file);
    size_t size = 0;
    unsigned char *bytes = (unsigned char *)h_slurp(path, &size);
    cr_assert(bytes && size > 10);
    size_t len = (size_t)bytes[8] | (size_t)bytes[9] << 8;
    const char *shape = strstr((const char *)bytes + 10, "'shape': (");
    cr_assert_not_null(shape);
    long long a = 0, b = 1;
    int got = sscanf(shape + 10, "%lld, %lld", &a, &b);
    *n = a;
    *k = got == 2 ? b : 1;
    cr_assert_eq(size - 10 - len, (size_t)(*n * *k) * 8, "%s", file);
    void *v = malloc(size - 10 - len);
    memcpy(v, bytes + 10 + len, size - 10 - len);
    free(bytes);
    return v;
}

/* Served outputs for raw rows x [n, k] from version id of model. */
static cJSON *infer(const char *model, const char *id, const double *x, int64_t n, int64_t k)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *input = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(body, "inputs"), input);
    cJSON_AddStringToObject(input, "name", "input");
    cJSON_AddItemToObject(input, "shape", cJSON_CreateIntArray((const int[]){(int)n, (int)k}, 2));
    cJSON_AddStringToObject(input, "datatype", "FP64");
    cJSON_AddItemToObject(input, "data", cJSON_CreateDoubleArray(x, (int)(n * k)));
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    char path[256];
    snprintf(path, sizeof path, "/v2/models/%s/versions/%s/infer", model, id);
    cJSON *answer = h_json(&H, "POST", path, text, 200);
    free(text);
    cJSON *data = cJSON_DetachItemFromObjectCaseSensitive(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(answer, "outputs"), 0), "data");
    cJSON_Delete(answer);
    cr_assert_eq(cJSON_GetArraySize(data), (int)n * (int)(strcmp(model, "cancer") ? 1 : 2));
    return data;
}

/* The weights of a job downloaded, forwarded by PyTorch on the raw rows of x_file. */
static cJSON *torch_forward(const char *id, const char *x_file)
{
    char path[128], weights[512], args[1200];
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", id);
    snprintf(weights, sizeof weights, "%s/%s.safetensors", H.files_dir, id);
    khttp_response r = h_request(&H, "GET", path, NULL);
    cr_assert_eq(r.status, 200);
    /* the whole file: as many bytes as the job's final weights */
    snprintf(path, sizeof path, "/v1/jobs/%s/checkpoints", id);
    cJSON *list = h_json(&H, "GET", path, NULL, 200);
    double bytes = -1;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(
                              list, "checkpoints")) if (!strcmp(h_string(c, "kind"), "final"))
        bytes = h_number(c, "bytes");
    cJSON_Delete(list);
    cr_assert_eq((double)r.body_length, bytes, "downloaded %zu bytes of %.0f", r.body_length,
                 bytes);
    FILE *f = fopen(weights, "wb");
    cr_assert_eq(fwrite(r.body, 1, r.body_length, f), r.body_length);
    fclose(f);
    khttp_response_free(&r);
    snprintf(args, sizeof args, "forward %s %s/%s", weights, H.files_dir, x_file);
    cJSON *doc = reference(args);
    cJSON *outputs = cJSON_DetachItemFromObjectCaseSensitive(doc, "outputs");
    cJSON_Delete(doc);
    return outputs;
}

Test(full_sklearn, diabetes_and_breast_cancer_match_pytorch, .fini = teardown, .timeout = 1800)
{
    h_make_root(&H);
    char args[512];
    snprintf(args, sizeof args, "prepare %s", H.files_dir);
    cJSON *ref = reference(args);
    const cJSON *recipes = cJSON_GetObjectItemCaseSensitive(ref, "recipes");
    const cJSON *torch = cJSON_GetObjectItemCaseSensitive(ref, "torch");
    h_start(&H, NULL);

    put_file("diabetes", "train", "diabetes_train.csv");
    put_file("diabetes", "test", "diabetes_test.csv");
    put_file("cancer", "train_inputs", "cancer_x_train.npy");
    put_file("cancer", "train_labels", "cancer_y_train.npy");
    put_file("cancer", "test_inputs", "cancer_x_test.npy");
    put_file("cancer", "test_labels", "cancer_y_test.npy");

    char *reg = run_job(recipes, "diabetes", "diabetes", ", \"label_column\": \"target\"");
    char *cls = run_job(recipes, "cancer", "cancer", "");
    double r2 = job_metric(reg, "test_r2"), accuracy = job_metric(cls, "test_accuracy");
    double torch_r2 = h_number(torch, "diabetes_r2");
    double torch_accuracy = h_number(torch, "cancer_accuracy");
    fprintf(stderr,
            "full_sklearn: diabetes test R^2 kiln %.6f, pytorch %.6f; breast cancer test "
            "accuracy kiln %.6f, pytorch %.6f\n",
            r2, torch_r2, accuracy, torch_accuracy);
    cr_expect(fabs(r2 - torch_r2) <= 0.02, "diabetes R^2: kiln %.4f, pytorch %.4f", r2, torch_r2);
    cr_expect(fabs(accuracy - torch_accuracy) <= 0.02,
              "breast cancer accuracy: kiln %.4f, pytorch %.4f", accuracy, torch_accuracy);
    cr_expect_gt(accuracy, 0.9);

    /* raw test rows served: the job's preprocessing is applied by kilnd */
    int64_t n, k, n_labels, one;
    double *x = read_npy("cancer_x_test.npy", &n, &k);
    int64_t *labels = read_npy("cancer_y_test.npy", &n_labels, &one);
    cr_assert_eq(n_labels, n);
    cJSON *served = infer("cancer", cls, x, n, k);
    cJSON *expected = torch_forward(cls, "cancer_x_test.npy");
    int right = 0;
    for (int64_t i = 0; i < n; i++) {
        double a = cJSON_GetArrayItem(served, (int)(2 * i))->valuedouble;
        double b = cJSON_GetArrayItem(served, (int)(2 * i + 1))->valuedouble;
        right += (b > a) == (labels[i] == 1);
        for (int c = 0; c < 2; c++) {
            double want = cJSON_GetArrayItem(cJSON_GetArrayItem(expected, (int)i), c)->valuedouble;
            double got = c ? b : a;
            cr_expect(fabs(got - want) <= 1e-4 * (1 + fabs(want)),
                      "cancer row %lld logit %d: served %g, pytorch %g", (long long)i, c, got,
                      want);
        }
    }
    cr_expect_float_eq((double)right / (double)n, accuracy, 1e-9,
                       "raw rows served score the job's test accuracy (%d of %lld right)", right,
                       (long long)n);
    cJSON_Delete(served);
    cJSON_Delete(expected);
    free(x);
    free(labels);

    /* diabetes: the test CSV's rows without the target, as an NPY for the reference */
    char csv_path[512];
    snprintf(csv_path, sizeof csv_path, "%s/diabetes_test.csv", H.files_dir);
    size_t size = 0;
    char *csv = h_slurp(csv_path, &size);
    cr_assert_not_null(csv);
    double rows[200][10], targets[200];
    int m = 0;
    for (char *line = strchr(csv, '\n') + 1, *next; line && *line && m < 200; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *p = line;
        for (int j = 0; j < 10; j++) {
            rows[m][j] = strtod(p, &p);
            p++; /* the comma */
        }
        targets[m++] = strtod(p, NULL);
    }
    free(csv);
    /* as the dataset read them: float32 */
    for (int i = 0; i < m; i++)
        for (int j = 0; j < 10; j++) rows[i][j] = (float)rows[i][j];
    char npy[512];
    snprintf(npy, sizeof npy, "%s/diabetes_x_test.npy", H.files_dir);
    cr_assert(kn_test_write_npy(npy, "<f8", (int64_t[]){m, 10}, 2, rows));
    served = infer("diabetes", reg, &rows[0][0], m, 10);
    expected = torch_forward(reg, "diabetes_x_test.npy");
    double sq = 0, mean = 0, var = 0;
    for (int i = 0; i < m; i++) mean += targets[i] / m;
    for (int i = 0; i < m; i++) {
        double got = cJSON_GetArrayItem(served, i)->valuedouble;
        double want = cJSON_GetArrayItem(cJSON_GetArrayItem(expected, i), 0)->valuedouble;
        cr_expect(fabs(got - want) <= 1e-4 * (1 + fabs(want)),
                  "diabetes row %d: served %g, pytorch %g", i, got, want);
        sq += (got - targets[i]) * (got - targets[i]);
        var += (targets[i] - mean) * (targets[i] - mean);
    }
    fprintf(stderr, "full_sklearn: diabetes R^2 of raw rows served %.6f\n", 1 - sq / var);
    cr_expect_float_eq(1 - sq / var, r2, 1e-4, "raw rows served score the job's test R^2");
    cJSON_Delete(served);
    cJSON_Delete(expected);
    free(reg);
    free(cls);
    cJSON_Delete(ref);
}

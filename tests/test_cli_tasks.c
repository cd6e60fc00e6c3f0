/*
 * test_cli_tasks.c — `kiln train`, `kiln eval` and `kiln predict` on regression and
 * multi-label data: a CSV whose float target column the job names, normalize "auto", the
 * metrics of the task in the summary, the weights carrying their preprocessing so that
 * predict takes raw unlabeled inputs (a CSV without the target column, an NPY of inputs
 * alone) and eval of weights or of a checkpoint agree; and a float label refused for
 * classification, saying what to change.
 */
#include "kn_test.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[256];

static void setup(void)
{
    cr_assert(kn_test_temp_dir("kiln-cli-tasks", dir, sizeof dir), "mkdtemp in /tmp");
}

static void teardown(void)
{
    kn_test_remove_dir(dir);
}

TestSuite(cli_tasks, .init = setup, .fini = teardown, .timeout = 300);

/* Runs kiln with args; stdout (and stderr when merge) into out; returns the exit status. */
static int kiln(const char *args, char *out, size_t size, bool merge)
{
    char command[2048];
    snprintf(command, sizeof command, "cd '%s' && %s/kiln %s%s", dir, KILN_BINARY_DIR, args,
             merge ? " 2>&1" : " 2>/dev/null");
    return kn_test_run(command, out, size);
}

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

/* Row i: 3 features of scales 1, 100, 10000 and a target around 150. */
static void row(int i, double *x, double *y)
{
    double z[3];
    for (int j = 0; j < 3; j++) z[j] = sin(1.1 * i + 1.9 * j) + 0.4 * cos(0.23 * i * (j + 2));
    for (int j = 0; j < 3; j++) x[j] = z[j] * pow(100, j) + 5 * pow(100, j);
    *y = 150 + 25 * z[0] - 15 * z[1] + 8 * z[2];
}

static void write_csv(const char *name, int first, int n, bool with_target)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fprintf(f, with_target ? "a,y,b,c\n" : "a,b,c\n");
    for (int i = first; i < first + n; i++) {
        double x[3], y;
        row(i, x, &y);
        if (with_target)
            fprintf(f, "%.9g,%.4f,%.9g,%.9g\n", x[0], y, x[1], x[2]);
        else
            fprintf(f, "%.9g,%.9g,%.9g\n", x[0], x[1], x[2]);
    }
    fclose(f);
}

/* The last line of out parsed as JSON (the summary of --json). */
static cJSON *last_json(char *out)
{
    char *line = out, *last = NULL;
    for (char *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (line[0] == '{') last = line;
    }
    cr_assert_not_null(last, "no JSON line");
    return cJSON_Parse(last);
}

/* R^2 of predict --json lines ({"values": [v]}) against rows first.. */
static double predicted_r2(char *out, int first, int n)
{
    double sq = 0, mean = 0, var = 0, y;
    double x[3];
    for (int i = 0; i < n; i++) {
        row(first + i, x, &y);
        mean += y / n;
    }
    int seen = 0;
    for (char *line = out, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (line[0] != '{') continue;
        cJSON *o = cJSON_Parse(line);
        int index = (int)cJSON_GetObjectItem(o, "index")->valuedouble;
        const cJSON *values = cJSON_GetObjectItem(o, "values");
        cr_assert_eq(cJSON_GetArraySize(values), 1, "%s", line);
        row(first + index, x, &y);
        double v = cJSON_GetArrayItem(values, 0)->valuedouble;
        sq += (v - y) * (v - y);
        var += (y - mean) * (y - mean);
        seen++;
        cJSON_Delete(o);
    }
    cr_assert_eq(seen, n);
    return 1 - sq / var;
}

#define MODEL                                                                                      \
    "{\"input_shape\": [3], \"layers\": [{\"type\": \"linear\", \"out_features\": 16}, "           \
    "{\"type\": \"relu\"}, {\"type\": \"linear\", \"out_features\": 1}]}"

Test(cli_tasks, regression_train_eval_predict)
{
    write_csv("train.csv", 0, 300, true);
    write_csv("test.csv", 300, 50, true);
    write_csv("raw.csv", 300, 50, false);
    write_file("job.json", "{\"model\": " MODEL ", \"data\": {\"train\": {\"format\": \"csv\", "
                           "\"path\": \"train.csv\", \"label_column\": \"y\"}, \"test\": "
                           "{\"format\": \"csv\", \"path\": \"test.csv\", \"label_column\": "
                           "\"y\"}, \"validation_split\": 0.2, \"normalize\": \"auto\"}, "
                           "\"loss\": \"huber\", \"optimizer\": {\"type\": \"adam\", \"lr\": "
                           "0.03}, \"batch_size\": 32, \"epochs\": 60, \"seed\": 2}");
    static char out[1 << 16];
    int rc = kiln("train job.json --out run --json", out, sizeof out, false);
    cr_assert_eq(rc, 0, "%s", out);
    cJSON *summary = last_json(out);
    cr_expect_str_eq(cJSON_GetObjectItem(summary, "task")->valuestring, "regression");
    double test_r2 = cJSON_GetObjectItem(summary, "test_r2")->valuedouble;
    cr_expect_gt(test_r2, 0.9, "test_r2 %g", test_r2);
    cr_expect_null(cJSON_GetObjectItem(summary, "test_accuracy"));
    cJSON_Delete(summary);

    /* eval of the weights (preprocessing from their metadata) and of the checkpoint (the
     * job's "auto" measured again on the training data) give the same numbers */
    const char *files[2] = {"run/model.safetensors", "run/checkpoint.safetensors"};
    for (int k = 0; k < 2; k++) {
        char args[256];
        snprintf(args, sizeof args, "eval %s job.json --json", files[k]);
        cr_assert_eq(kiln(args, out, sizeof out, false), 0, "%s", out);
        cJSON *e = last_json(out);
        cr_expect_float_eq(cJSON_GetObjectItem(e, "test_r2")->valuedouble, test_r2, 1e-6, "%s",
                           files[k]);
        cJSON_Delete(e);
    }

    /* raw rows without the target column, and the test CSV with it: the same predictions */
    cr_assert_eq(kiln("predict run/model.safetensors job.json --input raw.csv --json", out,
                      sizeof out, false),
                 0, "%s", out);
    static char again[1 << 16];
    memcpy(again, out, sizeof out);
    double r2 = predicted_r2(out, 300, 50);
    cr_expect_gt(r2, 0.9, "predicted r2 %g", r2);
    cr_assert_eq(kiln("predict run/model.safetensors job.json --input test.csv --json", out,
                      sizeof out, false),
                 0);
    cr_expect_str_eq(out, again, "the target column is dropped when present");
    cr_assert_eq(kiln("predict run/model.safetensors job.json --limit 2", out, sizeof out, false),
                 0);
    cr_expect(strstr(out, "# index\tvalues"), "%s", out);
    /* a prediction that went well says nothing on stderr (every data load wrote an empty
     * line there, which broke a caller reading stdout and stderr together) */
    char command[1024];
    snprintf(command, sizeof command,
             "cd '%s' && %s/kiln predict run/model.safetensors job.json --limit 2 2>&1 >/dev/null",
             dir, KILN_BINARY_DIR);
    FILE *p = popen(command, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0);
    cr_expect_str_empty(out, "stderr: \"%s\"", out);
}

Test(cli_tasks, float_labels_refused_for_classification)
{
    write_csv("train.csv", 0, 20, true);
    write_file("job.json", "{\"model\": " MODEL ", \"data\": {\"train\": {\"format\": \"csv\", "
                           "\"path\": \"train.csv\", \"label_column\": \"y\"}}}");
    static char out[8192];
    cr_assert_neq(kiln("train job.json", out, sizeof out, true), 0);
    cr_expect(strstr(out, "expected an integer label, got") &&
                  strstr(out, "set \"task\": \"regression\""),
              "%s", out);
}

/* An .npy of float32 [n, k] in the test's folder. */
static void write_npy(const char *name, const float *v, int n, int k)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cr_assert(kn_test_write_npy(path, "<f4", (int64_t[]){n, k}, 2, v), "%s", path);
}

Test(cli_tasks, multilabel_npy_and_unlabeled_predict)
{
    enum { N = 300 };
    static float x[N * 3], y[N * 3];
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 3; j++) x[i * 3 + j] = (float)sin(0.7 * i + 1.3 * j + 0.1 * i * j);
        y[i * 3 + 0] = x[i * 3] > 0;
        y[i * 3 + 1] = x[i * 3 + 1] + x[i * 3 + 2] > 0.3f;
        y[i * 3 + 2] = x[i * 3 + 2] < -0.2f;
    }
    write_npy("x.npy", x, N, 3);
    write_npy("y.npy", y, N, 3);
    write_npy("x_test.npy", x, 40, 3);
    write_file("job.json", "{\"model\": {\"input_shape\": [3], \"layers\": [{\"type\": "
                           "\"linear\", \"out_features\": 16}, {\"type\": \"relu\"}, {\"type\": "
                           "\"linear\", \"out_features\": 3}]}, \"data\": {\"train\": "
                           "{\"format\": \"npy\", \"inputs\": \"x.npy\", \"labels\": \"y.npy\"}, "
                           "\"validation_split\": 0.2}, \"loss\": {\"type\": \"bce_with_logits\", "
                           "\"pos_weight\": [1, 1, 2]}, \"optimizer\": {\"type\": \"adam\", "
                           "\"lr\": 0.02}, \"epochs\": 40, \"batch_size\": 32}");
    static char out[1 << 16];
    cr_assert_eq(kiln("train job.json --out run", out, sizeof out, true), 0, "%s", out);
    cr_expect(strstr(out, "f1 per label:") == NULL, "no test set, no details: %s", out);
    /* an NPY of inputs alone */
    cr_assert_eq(kiln("predict run/model.safetensors job.json --input x_test.npy --json", out,
                      sizeof out, false),
                 0, "%s", out);
    int right = 0, lines = 0;
    for (char *line = out, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        cJSON *o = cJSON_Parse(line);
        int i = (int)cJSON_GetObjectItem(o, "index")->valuedouble;
        const cJSON *labels = cJSON_GetObjectItem(o, "labels");
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "probabilities")), 3);
        bool want[3] = {y[i * 3] > 0, y[i * 3 + 1] > 0, y[i * 3 + 2] > 0}, got[3] = {0};
        const cJSON *l;
        cJSON_ArrayForEach(l, labels) got[(int)l->valuedouble] = true;
        right += got[0] == want[0] && got[1] == want[1] && got[2] == want[2];
        lines++;
        cJSON_Delete(o);
    }
    cr_assert_eq(lines, 40);
    cr_expect_geq(right, 32, "%d of 40 samples with every label right", right);
}

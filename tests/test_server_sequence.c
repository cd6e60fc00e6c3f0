/*
 * test_server_sequence.c — kilnd trains models with an embedding on int64 token data
 * (issue 12; every such job failed at step 1 with "embedding: expected indices to be an
 * int64 tensor, got float32" before): token matrices uploaded as NPY int64 over HTTP
 * with one label per sequence (sequence classification) or one per position ([N, T],
 * -100 for positions the loss skips), jobs with inline models submitted, polled to
 * success, their loss falling and their test accuracy high; the samples route shows the
 * tokens and the labels per position as stored; a job whose labels do not fit the
 * model's output is refused at submission (400 invalid_data at data.dataset); the trained
 * classifier is served by v2 infer from INT64 tokens (float data and tokens outside the
 * embedding get 400); the tagger as a graph spec (named int64 input, a transformer layer)
 * trains on the same tokens and is served by its input's name. The built kilnd over real
 * HTTP (tests/server_harness.h).
 */
#include "server_harness.h"

#include "kn_test_tokens.h"

#include <criterion/criterion.h>

static harness H;

static void teardown(void)
{
    h_cleanup(&H);
}

TestSuite(server_sequence, .fini = teardown, .timeout = 300);

#define VOCAB KN_TEST_VOCAB
#define SEQ KN_TEST_SEQ

/* The tokens of a split and both tasks' labels (kn_test_tokens.h). */
static void write_split(const char *split, int64_t n, uint64_t seed)
{
    int64_t *tokens = malloc(sizeof(int64_t) * (size_t)(n * SEQ));
    int64_t *per_sample = malloc(sizeof(int64_t) * (size_t)n);
    int64_t *per_position = malloc(sizeof(int64_t) * (size_t)(n * SEQ));
    kn_test_make_tokens(n, seed, tokens, per_sample, per_position);
    char path[512];
    snprintf(path, sizeof path, "%s/%s-tokens.npy", H.files_dir, split);
    cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){n, SEQ}, 2, tokens), "%s", path);
    snprintf(path, sizeof path, "%s/%s-classes.npy", H.files_dir, split);
    cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){n}, 1, per_sample), "%s", path);
    snprintf(path, sizeof path, "%s/%s-tags.npy", H.files_dir, split);
    cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){n, SEQ}, 2, per_position), "%s", path);
    free(tokens);
    free(per_sample);
    free(per_position);
}

/* Dataset name with its train/test inputs (the tokens) and labels (file `labels`). */
static void upload(const char *name, const char *labels)
{
    char path[256], file[512];
    snprintf(path, sizeof path, "{\"name\": \"%s\"}", name);
    cJSON_Delete(h_json(&H, "POST", "/v1/datasets", path, 201));
    const char *splits[2] = {"train", "test"};
    for (int s = 0; s < 2; s++) {
        for (int k = 0; k < 2; k++) {
            snprintf(path, sizeof path, "/v1/datasets/%s/files/%s_%s?format=npy", name, splits[s],
                     k ? "labels" : "inputs");
            snprintf(file, sizeof file, "%s/%s-%s.npy", H.files_dir, splits[s],
                     k ? labels : "tokens");
            khttp_response r = h_request_full(&H, "PUT", path, NULL, 0, file, NULL, NULL);
            cr_assert(r.status == 200 || r.status == 201, "PUT %s: %d %s", path, r.status, r.body);
            khttp_response_free(&r);
        }
    }
}

static const char CLASSIFIER[] = KN_TEST_CLASSIFIER;
static const char TAGGER[] = KN_TEST_TAGGER;
static const char GRAPH_TAGGER[] = KN_TEST_GRAPH_TAGGER;

/* Submits the model (inline) on dataset, waits for the end; the job document. */
static cJSON *run_job(const char *model, const char *dataset, int steps, double lr)
{
    char spec[2048];
    snprintf(spec, sizeof spec,
             "{\"model\": %s, \"data\": {\"dataset\": \"%s\", \"validation_split\": 0.1},"
             " \"optimizer\": {\"type\": \"adam\", \"lr\": %g}, \"batch_size\": 32,"
             " \"max_steps\": %d, \"validation\": {\"every_steps\": 100}, \"seed\": 3}",
             model, dataset, lr, steps);
    cJSON *doc = h_json(&H, "POST", "/v1/jobs", spec, 202);
    char id[64];
    snprintf(id, sizeof id, "%s", h_string(doc, "id"));
    cJSON_Delete(doc);
    return h_wait_job(&H, id, 120);
}

static void expect_learnt(cJSON *job)
{
    char *text = cJSON_PrintUnformatted(job);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "%s", text);
    free(text);
    const char *id = h_string(job, "id");
    double first, loss = h_series_end(&H, id, "loss", &first);
    cr_assert_lt(loss, first / 4, "loss %g after %g", loss, first);
    double accuracy = h_series_end(&H, id, "test_accuracy", NULL);
    cr_assert_gt(accuracy, 0.95, "test accuracy %g", accuracy);
}

/* v2 infer of the trained classifier: INT64 tokens in, the test accuracy out; float
 * data and tokens outside the embedding are refused with 400, batched or not. */
static void expect_served(const char *model)
{
    char path[128];
    snprintf(path, sizeof path, "/v2/models/%s", model);
    cJSON *meta = h_json(&H, "GET", path, NULL, 200);
    const cJSON *input = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(meta, "inputs"), 0);
    cr_assert_str_eq(h_string(input, "datatype"), "INT64");
    cJSON_Delete(meta);
    enum { N = 64 };
    int64_t tokens[N * SEQ], labels[N];
    kn_test_make_tokens(N, 99, tokens, labels, NULL); /* the first test samples */
    char body[16384];
    int used = snprintf(body, sizeof body,
                        "{\"inputs\": [{\"name\": \"input\", \"shape\": [%d, %d], "
                        "\"datatype\": \"INT64\", \"data\": [",
                        N, SEQ);
    for (int i = 0; i < N * SEQ; i++)
        used += snprintf(body + used, sizeof body - (size_t)used, "%s%lld", i ? "," : "",
                         (long long)tokens[i]);
    snprintf(body + used, sizeof body - (size_t)used, "]}]}");
    snprintf(path, sizeof path, "/v2/models/%s/infer", model);
    cJSON *answer = h_json(&H, "POST", path, body, 200);
    const cJSON *out = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(answer, "outputs"), 0);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(out, "data");
    cr_assert_eq(cJSON_GetArraySize(data), N * 2);
    int correct = 0;
    for (int i = 0; i < N; i++) {
        double no = cJSON_GetArrayItem(data, 2 * i)->valuedouble;
        double yes = cJSON_GetArrayItem(data, 2 * i + 1)->valuedouble;
        correct += (yes > no) == (labels[i] == 1);
    }
    cr_assert_geq(correct, N * 95 / 100, "%d of %d right", correct, N);
    cJSON_Delete(answer);
    const char *bad[] = {
        "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 8], \"datatype\": \"FP32\", "
        "\"data\": [1, 2, 3, 4, 5, 6, 7, 8]}]}",
        "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 8], \"datatype\": \"INT64\", "
        "\"data\": [1, 2, 3, 4, 5, 6, 7, 12]}]}",
    };
    const char *why[] = {"expected INT64 (or another integer type), got FP32",
                         "inputs[0].data[7]: token 12 is outside the embedding's 12 rows (0 to "
                         "11)"};
    for (int k = 0; k < 2; k++) {
        khttp_response r = h_request(&H, "POST", path, bad[k]);
        cr_assert_eq(r.status, 400, "%d %s", r.status, r.body);
        cr_assert(strstr(r.body, why[k]), "%s", r.body);
        khttp_response_free(&r);
    }
}

/* The tagger as a graph spec (named int64 input, attention): the same uploaded int64
 * tokens train it (the data path keeps them int64 for the graph's input as for a chain's),
 * v2 infer takes its input by name and refuses a token outside wte's rows, and
 * data.scale is refused for it as for the chain, naming the input. */
static void expect_graph_tagger(void)
{
    cJSON *job = run_job(GRAPH_TAGGER, "tags", 300, 0.01);
    expect_learnt(job);
    cJSON_Delete(job);
    const char *path = "/v2/models/graph-tagger/infer";
    cJSON *answer = h_json(&H, "POST", path,
                           "{\"inputs\": [{\"name\": \"tokens\", \"shape\": [1, 8], \"datatype\": "
                           "\"INT64\", \"data\": [1, 2, 3, 4, 5, 6, 7, 8]}]}",
                           200);
    const cJSON *out = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(answer, "outputs"), 0);
    cr_assert_str_eq(h_string(out, "name"), "head");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(out, "data");
    cr_assert_eq(cJSON_GetArraySize(data), SEQ * VOCAB);
    for (int t = 1; t < SEQ; t++) { /* the learnt tag of each position: (3 token + t) % 12 */
        int best = 0;
        for (int v = 1; v < VOCAB; v++)
            if (cJSON_GetArrayItem(data, t * VOCAB + v)->valuedouble >
                cJSON_GetArrayItem(data, t * VOCAB + best)->valuedouble)
                best = v;
        cr_expect_eq(best, (3 * (t + 1) + t) % VOCAB, "position %d", t);
    }
    cJSON_Delete(answer);
    khttp_response r = h_request(&H, "POST", path,
                                 "{\"inputs\": [{\"name\": \"tokens\", \"shape\": [1, 8], "
                                 "\"datatype\": \"INT32\", \"data\": [1, 2, 3, 4, 5, 6, 7, 12]}]}");
    cr_assert_eq(r.status, 400, "%d %s", r.status, r.body);
    cr_assert(strstr(r.body, "inputs[0].data[7]: token 12 is outside the embedding's 12 rows (0 "
                             "to 11)"),
              "%s", r.body);
    khttp_response_free(&r);
    char spec[2048];
    snprintf(
        spec, sizeof spec,
        "{\"model\": %s, \"data\": {\"dataset\": \"tags\", \"scale\": 0.5}, \"max_steps\": 10}",
        GRAPH_TAGGER);
    cJSON *refused = h_json(&H, "POST", "/v1/jobs", spec, 400);
    char *text = cJSON_PrintUnformatted(refused);
    cr_assert(strstr(text, "data.scale") &&
                  strstr(text, "the model's input \\\"tokens\\\" takes int64 token indices, which "
                               "are not scaled or normalised"),
              "%s", text);
    free(text);
    cJSON_Delete(refused);
}

Test(server_sequence, embedding_models_train_on_uploaded_int64_tokens)
{
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    write_split("train", 1024, 11);
    write_split("test", 256, 99);
    upload("seven", "classes");
    upload("tags", "tags");

    cJSON *job = run_job(CLASSIFIER, "seven", 400, 0.02);
    expect_learnt(job);
    cJSON_Delete(job);
    expect_served("seven");
    job = run_job(TAGGER, "tags", 600, 0.01);
    expect_learnt(job);
    cJSON_Delete(job);
    expect_graph_tagger();

    /* the samples as stored: integer tokens, labels per position with the ignored ones */
    cJSON *page = h_json(&H, "GET", "/v1/datasets/tags/samples?split=test&limit=2", NULL, 200);
    const cJSON *sample = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(page, "samples"), 0);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(sample, "data");
    const cJSON *label = cJSON_GetObjectItemCaseSensitive(sample, "label");
    cr_assert_eq(cJSON_GetArraySize(data), SEQ);
    cr_assert(cJSON_IsArray(label) && cJSON_GetArraySize(label) == SEQ);
    cr_assert_eq(cJSON_GetArrayItem(label, 0)->valueint, -100);
    for (int t = 1; t < SEQ; t++) {
        int token = cJSON_GetArrayItem(data, t)->valueint;
        cr_assert_eq(cJSON_GetArrayItem(data, t)->valuedouble, (double)token, "an integer");
        cr_assert_eq(cJSON_GetArrayItem(label, t)->valueint, (3 * token + t) % VOCAB);
    }
    cJSON_Delete(page);

    /* labels per position for a model with one output per sequence: refused at submission,
     * where kilnd reads the dataset's labels against the model (i13a's check) */
    char spec[1024];
    snprintf(spec, sizeof spec,
             "{\"model\": %s, \"data\": {\"dataset\": \"tags\"}, \"max_steps\": 10}", CLASSIFIER);
    cJSON *refused = h_json(&H, "POST", "/v1/jobs", spec, 400);
    char *text = cJSON_PrintUnformatted(refused);
    cr_assert(strstr(text, "invalid_data") && strstr(text, "data.dataset") &&
                  strstr(text, "labels are [8] per sample (a class per position) but the model "
                               "outputs [2] per sample: expected an output [8, classes]"),
              "%s", text);
    free(text);
    cJSON_Delete(refused);
}

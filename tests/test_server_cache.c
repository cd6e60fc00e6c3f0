/*
 * test_server_cache.c — the inference model cache under more versions than it holds
 * (issue 11, item 1): a server in-process on 127.0.0.1 (port 0, no workers) whose store
 * gets 10 models of 50 succeeded versions each (jobs finished by hand, each with its own
 * random weights), a cache of 4 entries. Sequential requests over six versions (where the
 * fifth used to free itself and answer garbage), then 8 threads calling all 500 versions
 * round-robin: every answer must equal a forward, here, of the weights downloaded from
 * GET /v1/jobs/{id}/weights. Run under ./test.sh --asan, a use-after-free fails it. Also
 * the byte bound (--model-cache-bytes) and the cache's counters in /metrics.
 */
#define _GNU_SOURCE
#include "kapi.h"
#include "kn_test_http.h"
#include "kn_test_server.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MODELS 10
#define VERSIONS 50
#define FEATURES 8
#define CLASSES 3
#define SAMPLES 2
#define THREADS 8

static kn_test_server T;
static ksrv_server *server; /* T.server */

typedef struct version {
    int model;
    char id[40];
    float expected[SAMPLES * CLASSES]; /* the local forward of the downloaded weights */
} version;

static version versions[MODELS * VERSIONS];
static float INPUT[SAMPLES * FEATURES];

/* Model m: 8 -> (4 + m) -> 3, so versions of different models differ in shape too. */
static void model_spec(int m, char *out, size_t size)
{
    snprintf(out, size,
             "{\"name\": \"m%d\", \"input_shape\": [%d], \"layers\": [{\"type\": \"linear\", "
             "\"out_features\": %d}, {\"type\": \"relu\"}, {\"type\": \"linear\", "
             "\"out_features\": %d}]}",
             m, FEATURES, 4 + m, CLASSES);
}

static kn_module *build(int m, uint64_t seed)
{
    char text[512];
    model_spec(m, text, sizeof text);
    return kn_test_build_model(text, seed);
}

/* A succeeded job of model m with its own weights: what a worker leaves behind. */
static void add_version(int m, uint64_t seed, char id[40])
{
    char spec[512], name[16];
    model_spec(m, spec, sizeof spec);
    snprintf(name, sizeof name, "m%d", m);
    kn_test_server_add_version(&T, name, spec, seed, id);
}

/* The expected answer of a version: its weights downloaded over HTTP, loaded into a fresh
 * module and run forward here. */
static void expect_from_download(version *v)
{
    char url[96], path[700];
    snprintf(url, sizeof url, "/v1/jobs/%s/weights", v->id);
    kn_test_reply r = kn_test_http(server->port, "GET", url, NULL, NULL, 0);
    cr_assert_eq(r.status, 200, "%s: %d", url, r.status);
    snprintf(path, sizeof path, "%s/downloaded.safetensors", T.config.data_dir);
    FILE *f = fopen(path, "wb");
    cr_assert(f && fwrite(r.body, 1, r.body_length, f) == r.body_length);
    fclose(f);
    kn_test_reply_free(&r);
    kn_module *module = build(v->model, 999); /* other values: the download overwrites them */
    cr_assert_eq(kn_module_load_weights(module, path, true), KN_OK, "%s", kn_last_error());
    kn_module_train(module, false);
    kn_no_grad_begin();
    kn_scope_begin();
    kn_tensor *y = kn_contiguous(
        kn_module_forward(module, kn_from_floats(INPUT, KN_SHAPE(SAMPLES, FEATURES))));
    cr_assert_not_null(y, "%s", kn_last_error());
    memcpy(v->expected, kn_data_f32(y), sizeof v->expected);
    kn_scope_end();
    kn_no_grad_end();
    kn_module_free(module);
}

static void start(int entries, size_t bytes)
{
    kn_test_server_config(&T);
    T.config.http_threads = THREADS;
    T.config.model_cache_entries = entries;
    if (bytes) T.config.model_cache_bytes = bytes;
    kn_test_server_start(&T);
    server = T.server;
    for (int i = 0; i < SAMPLES * FEATURES; i++) INPUT[i] = (float)((i * 7) % 11) * 0.25f - 1.2f;
}

/* n_models models of n_versions versions each, their expected answers downloaded. */
static void add_versions(int n_models, int n_versions)
{
    kstore *store = ksrv_thread_store(server);
    cr_assert_not_null(store);
    for (int m = 0; m < n_models; m++) {
        char spec[512], name[16];
        model_spec(m, spec, sizeof spec);
        snprintf(name, sizeof name, "m%d", m);
        cr_assert_eq(kstore_model_put(store, name, spec, 1), KSTORE_OK);
        for (int k = 0; k < n_versions; k++) {
            version *v = &versions[m * n_versions + k];
            v->model = m;
            add_version(m, (uint64_t)(m * 1000 + k + 1), v->id);
        }
    }
    for (int i = 0; i < n_models * n_versions; i++) expect_from_download(&versions[i]);
}

static void teardown(void)
{
    kn_test_server_stop(&T);
    server = NULL;
}

/* Built once and never rewritten: the threads of the round-robin test send it while
 * others start (rewriting it cut it short at its "data": [, a race of the test). */
static char *infer_body(void)
{
    static char body[1024];
    if (body[0]) return body;
    int at = snprintf(body, sizeof body,
                      "{\"inputs\": [{\"name\": \"input\", \"shape\": [%d, %d], \"datatype\": "
                      "\"FP32\", \"data\": [",
                      SAMPLES, FEATURES);
    for (int i = 0; i < SAMPLES * FEATURES; i++)
        at +=
            snprintf(body + at, sizeof body - (size_t)at, "%s%.9g", i ? "," : "", (double)INPUT[i]);
    snprintf(body + at, sizeof body - (size_t)at, "]}]}");
    return body;
}

/* Asks version v once; "" when the answer is the expected one, else what was wrong. */
static void ask(const version *v, const char *body, char *problem, size_t size)
{
    char url[128];
    snprintf(url, sizeof url, "/v2/models/m%d/versions/%s/infer", v->model, v->id);
    kn_test_reply r;
    problem[0] = '\0';
    if (!kn_test_http_try(server->port, "POST", url, NULL, body, strlen(body), &r)) {
        snprintf(problem, size, "%s: no answer", url);
        return;
    }
    cJSON *doc = r.status == 200 ? cJSON_ParseWithLength(r.body, r.body_length) : NULL;
    const cJSON *data =
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "outputs"), 0), "data");
    const cJSON *answered = cJSON_GetObjectItem(doc, "model_version");
    if (r.status != 200)
        snprintf(problem, size, "%s: status %d: %.200s", url, r.status, r.body);
    else if (!cJSON_IsString(answered) || strcmp(answered->valuestring, v->id))
        snprintf(problem, size, "%s: answered by another version", url);
    else if (cJSON_GetArraySize(data) != SAMPLES * CLASSES)
        snprintf(problem, size, "%s: %d values", url, cJSON_GetArraySize(data));
    int i = 0;
    for (const cJSON *c = data ? data->child : NULL; c && !problem[0]; c = c->next, i++)
        if (fabs(c->valuedouble - v->expected[i]) > 1e-5 * (1 + fabs(v->expected[i])))
            snprintf(problem, size, "%s: value %d is %.9g, the local forward gives %.9g", url, i,
                     c->valuedouble, (double)v->expected[i]);
    cJSON_Delete(doc);
    kn_test_reply_free(&r);
}

TestSuite(cache, .fini = teardown, .timeout = 600);

/* The report's reproduction: one model, six versions, each asked in turn. */
Test(cache, six_versions_in_turn_with_four_entries)
{
    start(4, 0);
    add_versions(1, 6);
    char problem[512];
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 6; i++) {
            ask(&versions[i], infer_body(), problem, sizeof problem);
            cr_assert_str_empty(problem, "round %d, version %d: %s", round, i, problem);
        }
    ksrv_model_cache_stats stats = ksrv_model_cache_get_stats(server->models);
    cr_assert_leq(stats.entries, 4, "%d entries kept, 4 allowed", stats.entries);
    cr_assert_geq(stats.evictions, 2);
}

typedef struct caller {
    int index, asked, failed;
    char problem[512];
} caller;

static void *call_round_robin(void *arg)
{
    caller *c = arg;
    const char *body = infer_body();
    /* every thread walks all 500 versions, from its own starting point */
    for (int k = 0; k < MODELS * VERSIONS; k++) {
        const version *v = &versions[(c->index * 61 + k) % (MODELS * VERSIONS)];
        char problem[512];
        ask(v, body, problem, sizeof problem);
        c->asked++;
        if (problem[0] && !c->failed++) snprintf(c->problem, sizeof c->problem, "%s", problem);
    }
    return NULL;
}

Test(cache, eight_threads_over_five_hundred_versions)
{
    start(4, 0);
    add_versions(MODELS, VERSIONS);
    infer_body(); /* before any thread sends it */
    pthread_t threads[THREADS];
    caller callers[THREADS];
    for (int t = 0; t < THREADS; t++) {
        callers[t] = (caller){.index = t};
        cr_assert_eq(pthread_create(&threads[t], NULL, call_round_robin, &callers[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    for (int t = 0; t < THREADS; t++)
        cr_expect_eq(callers[t].failed, 0, "thread %d: %d of %d answers wrong; the first: %s", t,
                     callers[t].failed, callers[t].asked, callers[t].problem);
    ksrv_model_cache_stats stats = ksrv_model_cache_get_stats(server->models);
    /* nothing in use any more: back within the bound */
    cr_assert_leq(stats.entries, 4, "%d entries kept, 4 allowed", stats.entries);
    cr_assert_geq(stats.loads, MODELS * VERSIONS, "every version was loaded at least once");
    kn_test_reply r = kn_test_http(server->port, "GET", "/metrics", NULL, NULL, 0);
    char line[80];
    snprintf(line, sizeof line, "\nkilnd_inference_cache_entries %d\n", stats.entries);
    cr_expect(strstr(r.body, line), "/metrics lacks \"%s\"", line + 1);
    cr_expect(strstr(r.body, "\nkilnd_inference_cache_evictions_total "));
    kn_test_reply_free(&r);
}

/* --model-cache-bytes: versions of model 9 hold 8*13+13+13*3+3 = 159 floats (636 bytes);
 * a bound of 1,500 bytes keeps two of them whatever the entry bound says. */
Test(cache, byte_bound)
{
    start(100, 1500);
    kstore *store = ksrv_thread_store(server);
    char spec[512];
    model_spec(9, spec, sizeof spec);
    cr_assert_eq(kstore_model_put(store, "m9", spec, 1), KSTORE_OK);
    for (int k = 0; k < 5; k++) {
        versions[k].model = 9;
        add_version(9, (uint64_t)(k + 1), versions[k].id);
        expect_from_download(&versions[k]);
    }
    char problem[512];
    for (int k = 0; k < 5; k++) {
        ask(&versions[k], infer_body(), problem, sizeof problem);
        cr_assert_str_empty(problem, "%s", problem);
        ksrv_model_cache_stats stats = ksrv_model_cache_get_stats(server->models);
        cr_assert_leq(stats.bytes, 1500, "%zu bytes kept", stats.bytes);
        cr_assert_eq(stats.entries, k < 2 ? k + 1 : 2, "after %d versions: %d entries", k + 1,
                     stats.entries);
    }
    /* one version bigger than the whole bound is still served, then let go */
    ksrv_stop(server);
    T.config.model_cache_bytes = 512;
    kn_test_server_start(&T);
    server = T.server;
    ask(&versions[0], infer_body(), problem, sizeof problem);
    cr_assert_str_empty(problem, "%s", problem);
    cr_assert_eq(ksrv_model_cache_get_stats(server->models).entries, 0);
}

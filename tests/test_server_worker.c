/*
 * test_server_worker.c — kilnd's workers and inference, in-process: a server on
 * 127.0.0.1 (port 0) with a temporary data directory and one worker; a model and a
 * synthetic dataset (NPY files) put in the store; jobs queued and polled to their end
 * (success with unique increasing metric steps, checkpoints and final weights; cancel;
 * pause and resume; a cuda job on a machine without one; with a GPU, a cpu and a cuda:0
 * worker each running only the jobs meant for it; a restart mid-training that resumes
 * from the checkpoint), which jobs each worker of a pool claims (pure, and against a
 * store), and the v2 inference routes over real HTTP (metadata,
 * single, batched and concurrent requests matching kn_module_forward, error cases).
 * Every wait is bounded in time.
 */
#include "kapi.h"
#include "kn_test.h"
#include "ksrv.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FEATURES 8
#define CLASSES 3
#define SAMPLES 600

static const char *MODEL_SPEC =
    "{\"name\": \"blobs-mlp\", \"input_shape\": [8], \"layers\": ["
    "{\"type\": \"linear\", \"out_features\": 64}, {\"type\": \"relu\"},"
    "{\"type\": \"linear\", \"out_features\": 3}]}";

static char data_dir[256];
static ksrv_server *server;

/* ---- helpers ------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One HTTP/1.1 request with Connection: close; the body is malloc'd. */
static int http(const char *method, const char *path, const char *body, char **out)
{
    *out = NULL;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)server->port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    size_t blen = body ? strlen(body) : 0;
    char head[512];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     method, path, server->port, blen);
    if (write(fd, head, (size_t)n) != n || (blen && write(fd, body, blen) != (ssize_t)blen)) {
        close(fd);
        return -1;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1024 > cap) buf = realloc(buf, cap *= 2);
        ssize_t got = read(fd, buf + len, cap - len - 1);
        if (got <= 0) break;
        len += (size_t)got;
    }
    close(fd);
    buf[len] = '\0';
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        fprintf(stderr, "http %s %s (port %d): no status in %zu bytes: %.200s (%s)\n", method, path,
                server->port, len, buf, strerror(errno));
    char *start = strstr(buf, "\r\n\r\n");
    *out = strdup(start ? start + 4 : "");
    free(buf);
    return status;
}

static cJSON *http_json(const char *method, const char *path, const char *body, int *status)
{
    char *text = NULL;
    *status = http(method, path, body, &text);
    cJSON *o = text ? cJSON_Parse(text) : NULL;
    free(text);
    return o;
}

static kstore *store(void)
{
    kstore *s = ksrv_thread_store(server);
    cr_assert(s);
    return s;
}

/* Three separable blobs: class k has feature k shifted by +3. */
static void add_dataset(const char *name)
{
    char dir[512], path[1024];
    snprintf(dir, sizeof dir, "%s/datasets/%s", data_dir, name);
    mkdir(dir, 0700);
    cr_assert_eq(kstore_dataset_create(store(), name, "synthetic"), KSTORE_OK);
    const char *splits[] = {"train", "test"};
    uint64_t x = 12345;
    for (int s = 0; s < 2; s++) {
        int64_t n = s == 0 ? SAMPLES : 150;
        float *in = malloc(sizeof(float) * (size_t)(n * FEATURES));
        int64_t *labels = malloc(sizeof(int64_t) * (size_t)n);
        for (int64_t i = 0; i < n; i++) {
            labels[i] = i % CLASSES;
            for (int j = 0; j < FEATURES; j++) {
                x = x * 6364136223846793005ULL + 1442695040888963407ULL;
                in[i * FEATURES + j] = (float)((double)(x >> 40) / (double)(1 << 24) - 0.5) +
                                       (j == labels[i] ? 3.0f : 0.0f);
            }
        }
        const char *kinds[] = {"inputs", "labels"};
        for (int k = 0; k < 2; k++) {
            kstore_dataset_file f = {.samples = n};
            snprintf(f.role, sizeof f.role, "%s_%s", splits[s], kinds[k]);
            snprintf(f.format, sizeof f.format, "npy");
            snprintf(f.path, sizeof f.path, "datasets/%s/%s.npy", name, f.role);
            snprintf(path, sizeof path, "%s/%s", data_dir, f.path);
            if (k == 0)
                cr_assert(kn_test_write_npy(path, "<f4", (int64_t[]){n, FEATURES}, 2, in));
            else
                cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){n}, 1, labels));
            struct stat sb;
            stat(path, &sb);
            f.bytes = sb.st_size;
            cr_assert_eq(kstore_dataset_add_file(store(), name, &f), KSTORE_OK);
        }
        free(in);
        free(labels);
    }
}

/* A server with workers cycling over devices ("cpu,cuda:0"; NULL: the default, cpu). */
static void start_server_on(int workers, const char *devices)
{
    ksrv_config config;
    ksrv_config_defaults(&config);
    config.port = 0;
    snprintf(config.data_dir, sizeof config.data_dir, "%s", data_dir);
    config.workers = workers;
    if (devices) snprintf(config.devices, sizeof config.devices, "%s", devices);
    config.checkpoint_every_steps = 100;
    config.threads_per_worker = 2;
    snprintf(config.log_level, sizeof config.log_level, "warn");
    char *error = NULL;
    server = ksrv_start(&config, &error);
    cr_assert(server, "ksrv_start: %s", error ? error : "?");
}

static void start_server(int workers)
{
    start_server_on(workers, NULL);
}

static void setup(void)
{
    snprintf(data_dir, sizeof data_dir, "/tmp/kiln-worker-XXXXXX");
    cr_assert(mkdtemp(data_dir));
    start_server(1);
    cr_assert_eq(kstore_model_put(store(), "blobs-mlp", MODEL_SPEC, 771), KSTORE_OK);
    add_dataset("blobs");
}

static void teardown(void)
{
    ksrv_stop(server);
    server = NULL;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data_dir);
    cr_assert_eq(system(cmd), 0);
}

/* Queues a job asking for device (as the server passes the spec's "device"); its id
 * into id. */
static void submit_on(const char *spec, const char *device, int64_t total, char id[40])
{
    kstore_job job;
    memset(&job, 0, sizeof job);
    bool created = false;
    cr_assert_eq(kstore_job_create(store(), spec, "blobs-mlp", "blobs", NULL, device, 0, total,
                                   &job, &created),
                 KSTORE_OK, "%s", kstore_last_error(store()));
    memcpy(id, job.id, 40);
    kstore_job_free(&job);
    ksrv_workers_notify(server->workers);
}

static void submit(const char *spec, int64_t total, char id[40])
{
    submit_on(spec, "cpu", total, id);
}

/* Polls until the job is in state (or the timeout); returns the job (free it). */
static kstore_job wait_state(const char *id, kstore_job_state state, double timeout)
{
    double end = now_s() + timeout;
    kstore_job job;
    for (;;) {
        memset(&job, 0, sizeof job);
        cr_assert_eq(kstore_job_get(store(), id, &job), KSTORE_OK);
        if (job.state == state || now_s() > end) break;
        kstore_job_free(&job);
        sleep_ms(10);
    }
    cr_assert_eq(job.state, state, "job %s is %s, waited for %s (error %s: %s)", id,
                 kstore_job_state_name(job.state), kstore_job_state_name(state), job.error_code,
                 job.error_message ? job.error_message : "");
    return job;
}

/* Polls until the running job has reported at least step. */
static void wait_step(const char *id, int64_t step, double timeout)
{
    double end = now_s() + timeout;
    for (;;) {
        kstore_job job;
        memset(&job, 0, sizeof job);
        cr_assert_eq(kstore_job_get(store(), id, &job), KSTORE_OK);
        int64_t at = job.step;
        kstore_job_state state = job.state;
        kstore_job_free(&job);
        if (at >= step) return;
        cr_assert(state == KSTORE_JOB_RUNNING || state == KSTORE_JOB_QUEUED, "state %s",
                  kstore_job_state_name(state));
        cr_assert(now_s() < end, "job %s did not reach step %lld", id, (long long)step);
        sleep_ms(5);
    }
}

/* The loss series has exactly steps 1..total. */
static void check_loss_steps(const char *id, int64_t total)
{
    kstore_metric_point *points = NULL;
    int count = 0;
    cr_assert_eq(kstore_metrics_query(store(), id, "loss", 0, 0, &points, &count), KSTORE_OK);
    cr_assert_eq(count, total, "%d loss points for %lld steps", count, (long long)total);
    for (int i = 0; i < count; i++) {
        cr_assert_eq(points[i].step, i + 1, "point %d is step %lld", i, (long long)points[i].step);
        cr_assert(isfinite(points[i].value));
    }
    free(points);
}

static const char *JOB_FMT =
    "{\"model\": \"blobs-mlp\", \"data\": {\"dataset\": \"blobs\"%s},"
    " \"batch_size\": 16, \"max_steps\": %d, \"seed\": 7, \"optimizer\": {\"type\": \"adam\","
    " \"lr\": 0.01}%s}";

static void job_spec(char *out, size_t size, int steps, const char *data_extra, const char *extra)
{
    snprintf(out, size, JOB_FMT, data_extra, steps, extra);
}

TestSuite(server_worker, .init = setup, .fini = teardown, .timeout = 120);

/* ---- training ---------------------------------------------------------------------- */

/* The module of a finished job, built and loaded as inference does. */
static kn_module *load_final(const char *id)
{
    kstore_checkpoint final;
    cr_assert_eq(kstore_checkpoint_latest(store(), id, "final", &final), KSTORE_OK);
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(MODEL_SPEC, strlen(MODEL_SPEC), &errors);
    cr_assert(spec);
    kn_module *m = kapi_model_build(spec, NULL);
    kapi_model_spec_free(spec);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", data_dir, final.path);
    cr_assert_eq(kn_module_load_weights(m, path, true), KN_OK, "%s", kn_last_error());
    kn_module_train(m, false);
    return m;
}

static void expect_forward(kn_module *m, const float *x, int64_t n, const cJSON *data)
{
    kn_no_grad_begin();
    kn_scope_begin();
    kn_tensor *y = kn_contiguous(kn_module_forward(m, kn_from_floats(x, KN_SHAPE(n, FEATURES))));
    cr_assert(y);
    const float *v = kn_data_f32(y);
    cr_assert_eq(cJSON_GetArraySize(data), n * CLASSES);
    int i = 0;
    for (const cJSON *c = data->child; c; c = c->next, i++)
        cr_assert_float_eq(c->valuedouble, v[i], 1e-5 * (1 + fabs(v[i])), "value %d", i);
    kn_scope_end();
    kn_no_grad_end();
}

static char *infer_body(const float *x, int64_t n, const char *extra)
{
    size_t cap = 64 + (size_t)(n * FEATURES) * 20 + 200;
    char *body = malloc(cap);
    int at = snprintf(body, cap,
                      "{\"id\": \"req-1\", \"inputs\": [{\"name\": \"input\", "
                      "\"shape\": [%lld, %d], \"datatype\": \"FP32\", \"data\": [",
                      (long long)n, FEATURES);
    for (int64_t i = 0; i < n * FEATURES; i++)
        at += snprintf(body + at, cap - (size_t)at, "%s%.9g", i ? "," : "", (double)x[i]);
    snprintf(body + at, cap - (size_t)at, "]}]%s}", extra);
    return body;
}

static float SAMPLE_X[4 * FEATURES];

static void fill_samples(void)
{
    for (int i = 0; i < 4 * FEATURES; i++)
        SAMPLE_X[i] = (float)((i * 37) % 11) * 0.3f - 1.0f + (i % FEATURES == i / FEATURES ? 3 : 0);
}

Test(server_worker, trains_to_success_then_serves)
{
    char spec[1024], id[40];
    job_spec(spec, sizeof spec, 300, "", ", \"validation\": {\"every_steps\": 100}");
    submit(spec, 300, id);
    kstore_job job = wait_state(id, KSTORE_JOB_SUCCEEDED, 60);
    cr_assert_eq(job.step, 300);
    cr_assert(job.latest_metrics_json && strstr(job.latest_metrics_json, "test_accuracy"));
    kstore_job_free(&job);
    check_loss_steps(id, 300);

    kstore_metric_point *acc = NULL;
    int count = 0;
    cr_assert_eq(kstore_metrics_query(store(), id, "test_accuracy", 0, 0, &acc, &count), KSTORE_OK);
    /* every 100 steps and at each epoch's end (37.5 batches) */
    cr_assert_geq(count, 3, "evaluations: %d", count);
    for (int i = 1; i < count; i++) cr_assert_gt(acc[i].step, acc[i - 1].step);
    cr_assert_eq(acc[count - 1].step, 300);
    cr_assert_gt(acc[count - 1].value, 0.9, "accuracy %g", acc[count - 1].value);
    free(acc);

    kstore_checkpoint *cps = NULL;
    cr_assert_eq(kstore_checkpoint_list(store(), id, &cps, &count), KSTORE_OK);
    int checkpoints = 0, finals = 0;
    for (int i = 0; i < count; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", data_dir, cps[i].path);
        cr_assert_eq(access(path, R_OK), 0, "%s", path);
        if (!strcmp(cps[i].kind, "final"))
            finals++;
        else
            checkpoints++;
    }
    free(cps);
    cr_assert_eq(checkpoints, 3);
    cr_assert_eq(finals, 1);

    /* ---- inference on the trained version ---- */
    int status;
    cJSON *meta = http_json("GET", "/v2/models/blobs-mlp", NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(cJSON_GetObjectItem(meta, "platform")->valuestring, "kiln");
    cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "versions"), 0)->valuestring, id);
    cJSON *in = cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "inputs"), 0);
    cJSON *shape = cJSON_GetObjectItem(in, "shape");
    cr_assert_eq(cJSON_GetArraySize(shape), 2);
    cr_assert_eq(cJSON_GetArrayItem(shape, 0)->valueint, -1);
    cr_assert_eq(cJSON_GetArrayItem(shape, 1)->valueint, FEATURES);
    cJSON *out = cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "outputs"), 0);
    cr_assert_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(out, "shape"), 1)->valueint, CLASSES);
    cJSON_Delete(meta);
    cJSON *ready = http_json("GET", "/v2/models/blobs-mlp/ready", NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(ready, "ready")));
    cJSON_Delete(ready);

    fill_samples();
    kn_module *m = load_final(id);
    for (int n = 1; n <= 4; n += 3) {
        char *body = infer_body(SAMPLE_X, n, "");
        char path[128];
        snprintf(path, sizeof path,
                 n == 1 ? "/v2/models/blobs-mlp/infer" : "/v2/models/blobs-mlp/versions/%s/infer",
                 id);
        cJSON *r = http_json("POST", path, body, &status);
        free(body);
        cr_assert_eq(status, 200);
        cr_assert_str_eq(cJSON_GetObjectItem(r, "model_version")->valuestring, id);
        cr_assert_str_eq(cJSON_GetObjectItem(r, "id")->valuestring, "req-1");
        cJSON *o = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "outputs"), 0);
        cr_assert_str_eq(cJSON_GetObjectItem(o, "name")->valuestring, "output");
        cr_assert_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "shape"), 0)->valueint, n);
        expect_forward(m, SAMPLE_X, n, cJSON_GetObjectItem(o, "data"));
        cJSON_Delete(r);
    }
    /* softmax rows sum to 1 */
    char *body = infer_body(SAMPLE_X, 2, ", \"parameters\": {\"softmax\": true}");
    cJSON *r = http_json("POST", "/v2/models/blobs-mlp/infer", body, &status);
    free(body);
    cr_assert_eq(status, 200);
    cJSON *data =
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "outputs"), 0), "data");
    double sum = 0;
    for (int k = 0; k < CLASSES; k++) sum += cJSON_GetArrayItem(data, k)->valuedouble;
    cr_assert_float_eq(sum, 1.0, 1e-5);
    cJSON_Delete(r);
    kn_module_free(m);
}

/* ---- inference errors and concurrency ------------------------------------------------- */

typedef struct infer_thread {
    int index, ok;
    char id[40];
} infer_thread;

static void *infer_worker(void *arg)
{
    infer_thread *t = arg;
    for (int i = 0; i < 10; i++) {
        int n = 1 + (t->index + i) % 4;
        char *body = infer_body(SAMPLE_X, n, "");
        char *text = NULL;
        int status = http("POST", "/v2/models/blobs-mlp/infer", body, &text);
        free(body);
        cJSON *r = text ? cJSON_Parse(text) : NULL;
        free(text);
        cJSON *o = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "outputs"), 0);
        if (status == 200 && cJSON_GetArraySize(cJSON_GetObjectItem(o, "data")) == n * CLASSES)
            t->ok++;
        cJSON_Delete(r);
    }
    return NULL;
}

static void expect_v2_error(const char *method, const char *path, const char *body, int want,
                            const char *fragment)
{
    int status;
    cJSON *r = http_json(method, path, body, &status);
    cr_assert_eq(status, want, "%s %s: status %d", method, path, status);
    cJSON *e = cJSON_GetObjectItem(r, "error");
    cr_assert(cJSON_IsString(e), "%s: error is not a string", path);
    cr_assert(strstr(e->valuestring, fragment), "%s: \"%s\" lacks \"%s\"", path, e->valuestring,
              fragment);
    cJSON_Delete(r);
}

Test(server_worker, inference_errors_and_concurrency)
{
    expect_v2_error("GET", "/v2/models/nope", NULL, 404, "unknown model");
    expect_v2_error("POST", "/v2/models/nope/infer", "{}", 404, "unknown model");
    expect_v2_error("POST", "/v2/models/blobs-mlp/infer", "{}", 404, "no version");
    int status;
    cJSON *ready = http_json("GET", "/v2/models/blobs-mlp/ready", NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(ready, "ready")));
    cJSON_Delete(ready);
    cJSON *live = http_json("GET", "/v2/health/live", NULL, &status);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(live, "live")));
    cJSON_Delete(live);
    live = http_json("GET", "/v2/health/ready", NULL, &status);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(live, "ready")));
    cJSON_Delete(live);

    char spec[1024], id[40];
    job_spec(spec, sizeof spec, 60, "", "");
    submit(spec, 60, id);
    kstore_job job = wait_state(id, KSTORE_JOB_SUCCEEDED, 60);
    kstore_job_free(&job);

    const char *p = "/v2/models/blobs-mlp/infer";
    expect_v2_error("POST", "/v2/models/blobs-mlp/versions/job_0000000000000000/infer", "{}", 404,
                    "unknown version");
    expect_v2_error("POST", p, "{\"inputs\": [", 400, "invalid JSON");
    expect_v2_error("POST", p, "{\"inputs\": []}", 400, "inputs");
    expect_v2_error("POST", p,
                    "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 3], \"datatype\": "
                    "\"FP32\", \"data\": [1, 2, 3]}]}",
                    400, "expected [-1, 8]");
    expect_v2_error("POST", p,
                    "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 8], \"datatype\": "
                    "\"BYTES\", \"data\": [1, 2, 3, 4, 5, 6, 7, 8]}]}",
                    400, "datatype");
    expect_v2_error("POST", p,
                    "{\"inputs\": [{\"name\": \"input\", \"shape\": [2, 8], \"datatype\": "
                    "\"FP32\", \"data\": [1, 2, 3, 4, 5, 6, 7, 8]}]}",
                    400, "needs 16 values, got 8");
    expect_v2_error("POST", p,
                    "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 8], \"datatype\": "
                    "\"INT32\", \"data\": [1, 2, 3, 4, 5, 6, 7, 8.5]}]}",
                    400, "integers");
    expect_v2_error("POST", p,
                    "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 8], \"datatype\": "
                    "\"FP32\", \"data\": [1, 2, 3, 4, 5, 6, 7, \"x\"]}]}",
                    400, "string");
    expect_v2_error("POST", p,
                    "{\"outputs\": [{\"name\": \"probs\"}], \"inputs\": [{\"name\": \"input\", "
                    "\"shape\": [1, 8], \"datatype\": \"FP32\", \"data\": [1,2,3,4,5,6,7,8]}]}",
                    400, "output");
    expect_v2_error("POST", p, "{\"inputs\": [], \"extra\": 1}", 400, "unknown field");
    /* nested data and integer types are accepted */
    cJSON *r = http_json("POST", p,
                         "{\"inputs\": [{\"name\": \"input\", \"shape\": [2, 8], \"datatype\": "
                         "\"INT64\", \"data\": [[1,0,0,0,0,0,0,0],[0,1,0,0,0,0,0,0]]}]}",
                         &status);
    cr_assert_eq(status, 200);
    cJSON_Delete(r);

    fill_samples();
    enum { THREADS = 8 };
    pthread_t threads[THREADS];
    infer_thread state[THREADS];
    for (int i = 0; i < THREADS; i++) {
        state[i] = (infer_thread){.index = i};
        cr_assert_eq(pthread_create(&threads[i], NULL, infer_worker, &state[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        cr_assert_eq(state[i].ok, 10, "thread %d: %d of 10 succeeded", i, state[i].ok);
    }
    pthread_mutex_lock(&server->stats.lock);
    uint64_t count = server->stats.infer_count;
    uint64_t batches = server->stats.infer_batches;
    uint64_t batched = server->stats.infer_batched_requests;
    pthread_mutex_unlock(&server->stats.lock);
    cr_assert_geq(count, THREADS * 10);
    /* every valid request went through one forward; a forward serves one or more */
    cr_assert_geq(batched, THREADS * 10);
    cr_assert(batches >= 1 && batches <= batched, "%llu batches for %llu requests",
              (unsigned long long)batches, (unsigned long long)batched);
    char *text = NULL;
    cr_assert_eq(http("GET", "/metrics", NULL, &text), 200);
    char line[96];
    snprintf(line, sizeof line, "\nkilnd_inference_batched_requests_total %llu\n",
             (unsigned long long)batched);
    cr_assert(strstr(text, line), "/metrics lacks \"%s\"", line + 1);
    cr_assert(strstr(text, "\nkilnd_inference_batches_total "));
    free(text);
}

/* ---- the per-job memory budget --------------------------------------------------------- */

/* POST /v1/jobs with body: its status, and the error's code and path (or ""). */
static int post_job(const char *body, char code[64], char path[64])
{
    int status;
    cJSON *r = http_json("POST", "/v1/jobs", body, &status);
    const cJSON *e = cJSON_GetObjectItem(r, "error");
    const cJSON *c = cJSON_GetObjectItem(e, "code"), *p = cJSON_GetObjectItem(e, "path");
    snprintf(code, 64, "%s", cJSON_IsString(c) ? c->valuestring : "");
    snprintf(path, 64, "%s", cJSON_IsString(p) ? p->valuestring : "");
    cJSON_Delete(r);
    return status;
}

Test(server_worker, jobs_over_the_memory_budget)
{
    server->job_memory_limit = (int64_t)2 << 20; /* as --max-job-memory 2M would set it */
    char code[64], path[64];
    /* 8 -> 200000 -> 3 with Adam: 2.6 M parameters, 41 MB of state */
    int status = post_job("{\"model\": {\"name\": \"wide\", \"input_shape\": [8], \"layers\": "
                          "[{\"type\": \"linear\", \"out_features\": 200000}, {\"type\": "
                          "\"linear\", \"out_features\": 3}]}, \"data\": {\"dataset\": "
                          "\"blobs\"}, \"max_steps\": 1}",
                          code, path);
    cr_assert_eq(status, 400);
    cr_assert_str_eq(code, "insufficient_memory");
    cr_assert_str_eq(path, "model");
    /* the stored model fits; 100,000 samples a batch do not */
    status = post_job("{\"model\": \"blobs-mlp\", \"data\": {\"dataset\": \"blobs\"}, "
                      "\"batch_size\": 100000, \"max_steps\": 1}",
                      code, path);
    cr_assert_eq(status, 400);
    cr_assert_str_eq(code, "insufficient_memory");
    cr_assert_str_eq(path, "batch_size");
    /* what fits is accepted, and validate_only says how much it needs of how much */
    cJSON *v = http_json("POST", "/v1/jobs?validate_only=true",
                         "{\"model\": \"blobs-mlp\", \"data\": {\"dataset\": \"blobs\"}, "
                         "\"max_steps\": 1}",
                         &status);
    cr_assert_eq(status, 200);
    double need = cJSON_GetObjectItem(v, "memory_bytes")->valuedouble;
    cr_assert(need > 0 && need <= (double)(2 << 20), "memory_bytes %.0f", need);
    cr_assert_eq(cJSON_GetObjectItem(v, "job_memory_limit_bytes")->valuedouble, (double)(2 << 20));
    cJSON_Delete(v);

    /* a job queued before the budget (here: straight into the store) fails cleanly when a
     * worker takes it, instead of allocating what the machine does not have */
    char id[40];
    submit("{\"model\": \"blobs-mlp\", \"data\": {\"dataset\": \"blobs\"}, "
           "\"batch_size\": 100000, \"max_steps\": 1}",
           1, id);
    kstore_job job = wait_state(id, KSTORE_JOB_FAILED, 30);
    cr_assert_str_eq(job.error_code, "out_of_memory");
    cr_assert(job.error_message && strstr(job.error_message, "batch_size") &&
                  strstr(job.error_message, "--max-job-memory"),
              "%s", job.error_message);
    kstore_job_free(&job);
}

/* A dataset whose file holds a NaN (one too big to be checked whole at upload, or stored
 * before uploads were checked) fails its job with data_error at data.train, naming the
 * file by dataset and name, never by its path on the server. */
Test(server_worker, non_finite_data_fails_without_server_paths)
{
    char dir[512], path[1024];
    snprintf(dir, sizeof dir, "%s/datasets/holes", data_dir);
    mkdir(dir, 0700);
    cr_assert_eq(kstore_dataset_create(store(), "holes", "a NaN inside"), KSTORE_OK);
    float in[4 * FEATURES] = {0};
    in[FEATURES + 2] = NAN;
    int64_t labels[4] = {0, 1, 2, 0};
    const char *roles[] = {"train_inputs", "train_labels"};
    for (int k = 0; k < 2; k++) {
        kstore_dataset_file f = {.samples = 4};
        snprintf(f.role, sizeof f.role, "%s", roles[k]);
        snprintf(f.format, sizeof f.format, "npy");
        snprintf(f.path, sizeof f.path, "datasets/holes/%s.npy", roles[k]);
        snprintf(path, sizeof path, "%s/%s", data_dir, f.path);
        if (k == 0)
            cr_assert(kn_test_write_npy(path, "<f4", (int64_t[]){4, FEATURES}, 2, in));
        else
            cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){4}, 1, labels));
        struct stat sb;
        stat(path, &sb);
        f.bytes = sb.st_size;
        cr_assert_eq(kstore_dataset_add_file(store(), "holes", &f), KSTORE_OK);
    }
    char id[40];
    bool created = false;
    kstore_job job;
    memset(&job, 0, sizeof job);
    cr_assert_eq(kstore_job_create(store(),
                                   "{\"model\": \"blobs-mlp\", \"data\": {\"dataset\": "
                                   "\"holes\"}, \"batch_size\": 2, \"max_steps\": 2}",
                                   "blobs-mlp", "holes", NULL, "cpu", 0, 2, &job, &created),
                 KSTORE_OK);
    memcpy(id, job.id, sizeof id);
    kstore_job_free(&job);
    ksrv_workers_notify(server->workers);
    job = wait_state(id, KSTORE_JOB_FAILED, 30);
    cr_assert_str_eq(job.error_code, "data_error");
    const char *message = job.error_message ? job.error_message : "";
    cr_assert(strstr(message, "data.train") && strstr(message, "holes/train_inputs.npy") &&
                  strstr(message, "finite"),
              "%s", message);
    cr_assert_null(strstr(message, data_dir), "the server's path shows: %s", message);
    kstore_job_free(&job);
}

/* ---- control: cancel, pause/resume, device ------------------------------------------ */

Test(server_worker, cancel_running_job)
{
    char spec[1024], id[40];
    job_spec(spec, sizeof spec, 1000000, "", "");
    submit(spec, 1000000, id);
    wait_step(id, 20, 30);
    kstore_job job;
    memset(&job, 0, sizeof job);
    cr_assert_eq(kstore_job_cancel(store(), id, &job), KSTORE_OK);
    kstore_job_free(&job);
    job = wait_state(id, KSTORE_JOB_CANCELED, 20);
    kstore_job_free(&job);
    cr_assert_eq(ksrv_workers_busy(server->workers), 0);
}

Test(server_worker, pause_and_resume)
{
    char spec[1024], id[40];
    job_spec(spec, sizeof spec, 1000000, "", "");
    submit(spec, 1000000, id);
    wait_step(id, 20, 30);
    kstore_job job;
    memset(&job, 0, sizeof job);
    cr_assert_eq(kstore_job_pause(store(), id, &job), KSTORE_OK);
    kstore_job_free(&job);
    job = wait_state(id, KSTORE_JOB_PAUSED, 20);
    int64_t paused_at = job.step;
    kstore_job_free(&job);
    kstore_checkpoint cp;
    cr_assert_eq(kstore_checkpoint_latest(store(), id, "checkpoint", &cp), KSTORE_OK);
    cr_assert_eq(cp.step, paused_at, "checkpoint %lld, paused at %lld", (long long)cp.step,
                 (long long)paused_at);

    memset(&job, 0, sizeof job);
    cr_assert_eq(kstore_job_resume(store(), id, &job), KSTORE_OK);
    kstore_job_free(&job);
    ksrv_workers_notify(server->workers);
    wait_step(id, paused_at + 20, 30);
    memset(&job, 0, sizeof job);
    cr_assert_eq(kstore_job_cancel(store(), id, &job), KSTORE_OK);
    kstore_job_free(&job);
    job = wait_state(id, KSTORE_JOB_CANCELED, 20);
    kstore_job_free(&job);
    /* the resumed run went on from the checkpoint: no step is missing or repeated */
    kstore_metric_point *points = NULL;
    int count = 0;
    cr_assert_eq(kstore_metrics_query(store(), id, "loss", 0, 0, &points, &count), KSTORE_OK);
    cr_assert_gt(count, paused_at);
    for (int i = 0; i < count; i++) cr_assert_eq(points[i].step, i + 1);
    free(points);
}

Test(server_worker, cuda_job_fails_when_unavailable)
{
    kn_device cuda = {KN_DEVICE_CUDA, 0};
    if (kn_device_available(cuda)) cr_skip_test("this machine has a GPU");
    char spec[1024], id[40];
    job_spec(spec, sizeof spec, 10, "", ", \"device\": \"cuda\"");
    submit_on(spec, "cuda", 10, id);
    /* the only worker is a CPU one and no worker owns a GPU: it is meant for cuda jobs
     * too, so the job fails rather than waiting for a worker that will never come */
    kstore_job job = wait_state(id, KSTORE_JOB_FAILED, 20);
    cr_assert_str_eq(job.requested_device, "cuda");
    cr_assert_str_eq(job.device, "cpu");
    cr_assert_str_eq(job.error_code, "device_unavailable");
    cr_assert(job.error_message && strstr(job.error_message, "cuda"));
    kstore_job_free(&job);
}

/* With a GPU: a cpu worker and a cuda:0 worker, each given only the jobs meant for it. */
Test(server_worker, mixed_pool_routes_jobs_by_device)
{
    kn_device cuda = {KN_DEVICE_CUDA, 0};
    if (!kn_device_available(cuda)) cr_skip_test("needs a GPU (cuda:0)");
    ksrv_stop(server);
    start_server_on(2, "cpu,cuda:0");
    static const char *const ASKED[] = {"cpu", "cuda", "", "cuda:0", "cpu", "auto"};
    enum { N = sizeof ASKED / sizeof ASKED[0] };
    char ids[N][40];
    for (int i = 0; i < N; i++) {
        char spec[1024], extra[64] = "";
        if (ASKED[i][0]) snprintf(extra, sizeof extra, ", \"device\": \"%s\"", ASKED[i]);
        job_spec(spec, sizeof spec, 20, "", extra);
        submit_on(spec, ASKED[i], 20, ids[i]);
    }
    for (int i = 0; i < N; i++) {
        kstore_job job = wait_state(ids[i], KSTORE_JOB_SUCCEEDED, 60);
        const char *expect = !ASKED[i][0] || !strcmp(ASKED[i], "cpu") ? "cpu" : "cuda:0";
        cr_assert_str_eq(job.device, expect, "a job asking for \"%s\" ran on %s", ASKED[i],
                         job.device);
        kstore_job_free(&job);
    }
}

/* ---- which jobs each worker claims (worker.h): pure, no server, no GPU ------------- */

/* Whether the worker on pool[index] takes a job asking for requested, as its claims do
 * (kstore_claim_filter): one in its list, or one in no worker's list. */
static bool takes(const char *const *pool, int n, int index, const char *requested)
{
    const char *mine[KSRV_ACCEPTS_MAX], *all[64 + 3];
    int m = ksrv_worker_accepts(pool, n, index, mine);
    int k = ksrv_pool_accepts(pool, n, all);
    for (int i = 0; i < m; i++)
        if (!strcmp(mine[i], requested)) return true;
    for (int i = 0; i < k; i++)
        if (!strcmp(all[i], requested)) return false;
    return true;
}

static const char *const ASKED_FOR[] = {"cpu", "auto", "cuda", "cuda:0", "cuda:1", "cuda:2"};
#define N_ASKED ((int)(sizeof ASKED_FOR / sizeof ASKED_FOR[0]))

/* What the worker on pool[index] takes of ASKED_FOR, space-separated. */
static void taken(const char *const *pool, int n, int index, char *out, size_t size)
{
    out[0] = '\0';
    for (int i = 0; i < N_ASKED; i++)
        if (takes(pool, n, index, ASKED_FOR[i]))
            snprintf(out + strlen(out), size - strlen(out), "%s%s", out[0] ? " " : "",
                     ASKED_FOR[i]);
}

#define ALL "cpu auto cuda cuda:0 cuda:1 cuda:2"

Test(claim_rules, per_pool)
{
    static const struct {
        const char *pool[3];
        int n;
        const char *expect[3]; /* per worker */
    } CASES[] = {
        {{"cpu"}, 1, {ALL}},
        {{"cpu", "cpu"}, 2, {ALL, ALL}},
        {{"cuda:0"}, 1, {ALL}},
        /* cuda:1 and cuda:2 are nobody's: either worker takes them (and fails or runs them) */
        {{"cpu", "cuda:0"}, 2, {"cpu cuda:1 cuda:2", "auto cuda cuda:0 cuda:1 cuda:2"}},
        {{"cuda:0", "cuda:1"}, 2, {"cpu auto cuda cuda:0 cuda:2", "cpu auto cuda cuda:1 cuda:2"}},
        /* jobs asking for cuda:0, which no worker owns, are not stranded */
        {{"cpu", "cuda:1"}, 2, {"cpu cuda:0 cuda:2", "auto cuda cuda:0 cuda:1 cuda:2"}},
        /* workers on the same device take the same jobs */
        {{"cuda:0", "cpu", "cuda:0"},
         3,
         {"auto cuda cuda:0 cuda:1 cuda:2", "cpu cuda:1 cuda:2", "auto cuda cuda:0 cuda:1 cuda:2"}},
    };
    for (size_t c = 0; c < sizeof CASES / sizeof CASES[0]; c++) {
        for (int w = 0; w < CASES[c].n; w++) {
            char got[128];
            taken(CASES[c].pool, CASES[c].n, w, got, sizeof got);
            cr_assert_str_eq(got, CASES[c].expect[w], "pool case %zu, worker %d (%s)", c, w,
                             CASES[c].pool[w]);
        }
        /* every job reaches some worker */
        for (int i = 0; i < N_ASKED; i++) {
            bool someone = false;
            for (int w = 0; w < CASES[c].n; w++)
                someone = someone || takes(CASES[c].pool, CASES[c].n, w, ASKED_FOR[i]);
            cr_assert(someone, "pool case %zu: nobody takes %s", c, ASKED_FOR[i]);
        }
    }
}

Test(claim_rules, lists)
{
    const char *pool[] = {"cpu", "cuda:0", "cuda:0"};
    const char *mine[KSRV_ACCEPTS_MAX], *all[6];
    cr_assert_eq(ksrv_worker_accepts(pool, 3, 0, mine), 1);
    cr_assert_str_eq(mine[0], "cpu");
    cr_assert_eq(ksrv_worker_accepts(pool, 3, 1, mine), 3);
    cr_assert_eq(mine[0], pool[1]); /* the pool's own name, not a copy */
    cr_assert_str_eq(mine[1], "cuda");
    cr_assert_str_eq(mine[2], "auto");
    cr_assert_eq(ksrv_pool_accepts(pool, 3, all), 4); /* cpu, cuda:0, cuda, auto: once each */
    cr_assert_eq(ksrv_worker_accepts(pool, 3, 3, mine), 0);
    cr_assert_eq(ksrv_worker_accepts(pool, 3, -1, mine), 0);
}

/* The lists as a worker hands them to the store: on a pool of a CPU and a cuda:1 worker,
 * the CPU worker claims the cpu job and the one asking for cuda:0 (nobody's), best first,
 * and leaves auto, cuda and cuda:1 to the GPU worker. */
Test(claim_rules, claims_from_a_store)
{
    char dir[] = "/tmp/kiln-claims-XXXXXX", db[64];
    cr_assert(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/kiln.db", dir);
    char *error = NULL;
    kstore *s = kstore_open(db, &error);
    cr_assert(s, "%s", error ? error : "");
    static const struct {
        const char *device;
        int priority;
    } JOBS[] = {{"cuda:1", 9}, {"auto", 8}, {"cpu", 1}, {"cuda:0", 5}, {"cuda", 7}};
    char ids[5][40];
    for (int i = 0; i < 5; i++) {
        kstore_job j;
        cr_assert_eq(kstore_job_create(s, "{}", "m", "d", NULL, JOBS[i].device, JOBS[i].priority, 1,
                                       &j, NULL),
                     KSTORE_OK);
        memcpy(ids[i], j.id, 40);
        kstore_job_free(&j);
    }
    const char *pool[] = {"cpu", "cuda:1"};
    const char *mine[KSRV_ACCEPTS_MAX], *all[5];
    kstore_claim_filter cpu = {mine, ksrv_worker_accepts(pool, 2, 0, mine), all,
                               ksrv_pool_accepts(pool, 2, all)};
    const int expect[] = {3, 2}; /* cuda:0 (priority 5), then cpu (1) */
    for (int i = 0; i < 2; i++) {
        kstore_job j;
        cr_assert_eq(kstore_job_claim(s, "cpu", &cpu, &j), KSTORE_OK, "%s", kstore_last_error(s));
        cr_assert_str_eq(j.id, ids[expect[i]], "claimed the job asking for %s", j.requested_device);
        kstore_job_free(&j);
    }
    kstore_job j;
    cr_assert_eq(kstore_job_claim(s, "cpu", &cpu, &j), KSTORE_NOT_FOUND);
    cr_assert_eq(kstore_job_count(s, KSTORE_JOB_QUEUED), 3);
    kstore_close(s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

Test(server_worker, bad_dataset_is_a_data_error)
{
    char spec[1024], id[40];
    snprintf(spec, sizeof spec, "{\"model\": \"blobs-mlp\", \"data\": {\"dataset\": \"nope\"}}");
    submit(spec, 10, id);
    kstore_job job = wait_state(id, KSTORE_JOB_FAILED, 20);
    cr_assert_str_eq(job.error_code, "data_error");
    kstore_job_free(&job);
}

/* ---- restart ---------------------------------------------------------------------- */

Test(server_worker, restart_resumes_from_checkpoint)
{
    char spec[1024], id[40];
    const int total = 20000;
    job_spec(spec, sizeof spec, total, "", "");
    submit(spec, total, id);
    wait_step(id, 120, 30);
    ksrv_stop(server); /* checkpoints and leaves the job running */
    server = NULL;

    char db[600];
    snprintf(db, sizeof db, "%s/kiln.db", data_dir);
    char *error = NULL;
    kstore *direct = kstore_open(db, &error);
    cr_assert(direct, "%s", error ? error : "");
    kstore_job job;
    memset(&job, 0, sizeof job);
    cr_assert_eq(kstore_job_get(direct, id, &job), KSTORE_OK);
    cr_assert_eq(job.state, KSTORE_JOB_RUNNING, "state %s", kstore_job_state_name(job.state));
    int64_t stopped_at = job.step;
    kstore_job_free(&job);
    cr_assert_lt(stopped_at, total, "the job ended before the stop: nothing to resume");
    kstore_checkpoint cp;
    cr_assert_eq(kstore_checkpoint_latest(direct, id, "checkpoint", &cp), KSTORE_OK);
    cr_assert_eq(cp.step, stopped_at);
    kstore_close(direct);

    start_server(1);
    job = wait_state(id, KSTORE_JOB_SUCCEEDED, 60);
    cr_assert_eq(job.step, total);
    kstore_job_free(&job);
    check_loss_steps(id, total);
}

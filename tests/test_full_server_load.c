/*
 * test_full_server_load.c — kilnd under hostile and heavy load at once, for 60 s (issue 11's
 * acceptance; ctest label full: ./test.sh --full). The built daemon on a free loopback port
 * with its defaults (--model-cache-entries 4, --max-connections-per-ip 64,
 * --header-timeout 10), 12 versions of 3 models trained through the API, then together:
 *   - an idle flood: 1,100 connections from 127.0.0.2-5 that send nothing, each reopened
 *     a second after the server closes (or refuses) it;
 *   - slowloris: 50 connections from 127.0.0.6 trickling a header byte a second;
 *   - metric pollers: 4 threads asking /v1/jobs/{id}/metrics and /metrics;
 *   - inference: 8 threads calling the 12 versions round-robin (3 times the cache);
 *   - a health check: GET /v2/health/live from 127.0.0.1 every 50 ms.
 * It fails on any 5xx, any health check without a 200, any inference answer that differs
 * from the first answer of its version. It prints (stderr: ctest -V shows it) health p50,
 * p99 and max, the requests of each kind, kilnd's RSS before and after, and what the
 * flood and the header deadline did. KILN_LOAD_SECONDS shortens the 60 s for a try.
 */
#define _GNU_SOURCE
#include "kn_test_http.h"
#include "server_harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>

#define MODELS 3
#define VERSIONS_EACH 4
#define VERSIONS (MODELS * VERSIONS_EACH)
#define FLOOD 1100
#define FLOOD_SOURCES 4
#define SLOWLORIS 50
#define POLLERS 4
#define CALLERS 8

static harness H;
static double load_seconds = 60;
static atomic_int stop;

static void teardown(void)
{
    h_cleanup(&H);
}

TestSuite(load, .fini = teardown, .timeout = 900);

typedef struct version {
    char model[16], id[40];
    double first[6]; /* the first answer's outputs: every later one must match */
    bool answered;
    pthread_mutex_t lock;
} version;

static version versions[VERSIONS];
static char a_job[40];

static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    if (f) fclose(f);
    return kib;
}

static cJSON *post_json(const char *path, const char *body, int want)
{
    kn_test_reply r = kn_test_http(H.port, "POST", path, NULL, body, strlen(body));
    cr_assert_eq(r.status, want, "POST %s: %d %s", path, r.status, r.body);
    cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
    kn_test_reply_free(&r);
    return doc;
}

/* 3 models, 4 succeeded jobs of each (the versions), on 240 samples of 8 features. */
static void train_versions(void)
{
    char arrays[64 * 1024];
    int at = snprintf(arrays, sizeof arrays, "{\"inputs\": [");
    for (int i = 0; i < 240; i++) {
        at += snprintf(arrays + at, sizeof arrays - (size_t)at, "%s[", i ? "," : "");
        for (int j = 0; j < 8; j++)
            at += snprintf(arrays + at, sizeof arrays - (size_t)at, "%s%.2f", j ? "," : "",
                           (double)((i * 37 + j * 11) % 17) / 17.0 + (j == i % 3 ? 2.0 : 0.0));
        at += snprintf(arrays + at, sizeof arrays - (size_t)at, "]");
    }
    at += snprintf(arrays + at, sizeof arrays - (size_t)at, "], \"labels\": [");
    for (int i = 0; i < 240; i++)
        at += snprintf(arrays + at, sizeof arrays - (size_t)at, "%s%d", i ? "," : "", i % 3);
    snprintf(arrays + at, sizeof arrays - (size_t)at, "]}");
    cJSON_Delete(post_json("/v1/datasets/blobs/files/train", arrays, 201));
    for (int m = 0; m < MODELS; m++) {
        char spec[512];
        snprintf(spec, sizeof spec,
                 "{\"name\": \"load%d\", \"input_shape\": [8], \"layers\": [{\"type\": "
                 "\"linear\", \"out_features\": %d}, {\"type\": \"relu\"}, {\"type\": \"linear\", "
                 "\"out_features\": 3}]}",
                 m, 32 << m);
        cJSON_Delete(post_json("/v1/models", spec, 201));
        for (int k = 0; k < VERSIONS_EACH; k++) {
            version *v = &versions[m * VERSIONS_EACH + k];
            snprintf(v->model, sizeof v->model, "load%d", m);
            pthread_mutex_init(&v->lock, NULL);
            char job[256];
            snprintf(job, sizeof job,
                     "{\"model\": \"load%d\", \"data\": {\"dataset\": \"blobs\"}, \"batch_size\": "
                     "16, \"max_steps\": 60, \"seed\": %d}",
                     m, k + 1);
            cJSON *doc = post_json("/v1/jobs", job, 202);
            snprintf(v->id, sizeof v->id, "%s", h_string(doc, "id"));
            cJSON_Delete(doc);
        }
    }
    for (int i = 0; i < VERSIONS; i++) {
        cJSON *done = h_wait_job(&H, versions[i].id, 120);
        cr_assert_str_eq(h_string(done, "state"), "succeeded");
        cJSON_Delete(done);
    }
    snprintf(a_job, sizeof a_job, "%s", versions[0].id);
}

/* ---- the load ------------------------------------------------------------------------ */

typedef struct tally {
    atomic_long requests, server_errors, failures; /* failures: no answer or unexpected */
    char first_problem[512];
    atomic_flag noted;
} tally;

static tally infer_tally, poll_tally, health_tally;
static double health_ms[200000];
static atomic_int health_count;

static void note(tally *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(tally *t, const char *fmt, ...)
{
    if (atomic_flag_test_and_set(&t->noted)) return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(t->first_problem, sizeof t->first_problem, fmt, args);
    va_end(args);
}

/* Counts one answer; true when it is a 200. */
static bool count(tally *t, bool answered, const kn_test_reply *r, const char *what)
{
    atomic_fetch_add(&t->requests, 1);
    if (!answered) {
        atomic_fetch_add(&t->failures, 1);
        note(t, "%s: no answer", what);
        return false;
    }
    if (r->status >= 500) {
        atomic_fetch_add(&t->server_errors, 1);
        note(t, "%s: %d %.200s", what, r->status, r->body);
    } else if (r->status != 200) {
        atomic_fetch_add(&t->failures, 1);
        note(t, "%s: %d %.200s", what, r->status, r->body);
    }
    return r->status == 200;
}

static const char *INFER_BODY = "{\"inputs\": [{\"name\": \"input\", \"shape\": [2, 8], "
                                "\"datatype\": \"FP32\", \"data\": [1, 0, 0, 0.5, 0, 0, 0, 0, "
                                "0, 2, 0.25, 0, 0, 1, 0, 0]}]}";

static void *call_versions(void *arg)
{
    int k = (int)(intptr_t)arg;
    while (!atomic_load(&stop)) {
        version *v = &versions[k++ % VERSIONS];
        char url[128];
        snprintf(url, sizeof url, "/v2/models/%s/versions/%s/infer", v->model, v->id);
        kn_test_reply r;
        bool answered =
            kn_test_http_try(H.port, "POST", url, NULL, INFER_BODY, strlen(INFER_BODY), &r);
        if (count(&infer_tally, answered, &r, url)) {
            /* the same up to float rounding: a batch of other requests' rows sums in
             * another order */
            cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
            const cJSON *data = cJSON_GetObjectItem(
                cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "outputs"), 0), "data");
            pthread_mutex_lock(&v->lock);
            bool same = cJSON_GetArraySize(data) == 6;
            for (int i = 0; same && i < 6; i++) {
                double x = cJSON_GetArrayItem(data, i)->valuedouble;
                if (!v->answered) v->first[i] = x;
                same = fabs(x - v->first[i]) <= 1e-5 * (1 + fabs(v->first[i]));
            }
            v->answered = true;
            pthread_mutex_unlock(&v->lock);
            if (!same) {
                atomic_fetch_add(&infer_tally.failures, 1);
                note(&infer_tally, "%s answered otherwise than before: %.300s", url, r.body);
            }
            cJSON_Delete(doc);
        }
        if (answered) kn_test_reply_free(&r);
    }
    return NULL;
}

static void *poll_metrics(void *arg)
{
    int k = (int)(intptr_t)arg;
    while (!atomic_load(&stop)) {
        char url[160];
        const char *job = versions[k % VERSIONS].id;
        if (k % 3 == 0)
            snprintf(url, sizeof url, "/metrics");
        else if (k % 3 == 1)
            snprintf(url, sizeof url, "/v1/jobs/%s/metrics?names=loss,lr,loss&max_points=200", job);
        else
            snprintf(url, sizeof url, "/v1/jobs/%s/metrics?after_step=10", job);
        k++;
        kn_test_reply r;
        bool answered = kn_test_http_try(H.port, "GET", url, NULL, NULL, 0, &r);
        count(&poll_tally, answered, &r, url);
        if (answered) kn_test_reply_free(&r);
        usleep(50000);
    }
    return NULL;
}

static void *check_health(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        double t0 = h_now();
        kn_test_reply r;
        bool answered = kn_test_http_try(H.port, "GET", "/v2/health/live", NULL, NULL, 0, &r);
        double ms = (h_now() - t0) * 1e3;
        count(&health_tally, answered, &r, "/v2/health/live");
        if (answered) kn_test_reply_free(&r);
        int i = atomic_fetch_add(&health_count, 1);
        if (i < (int)(sizeof health_ms / sizeof health_ms[0])) health_ms[i] = ms;
        usleep(50000);
    }
    return NULL;
}

/* Connections that send nothing (flood) or a header byte a second (slowloris), each
 * reopened when the server closes it; counts how often it did. */
typedef struct hostile {
    int n;
    bool trickle;
    const char *sources[FLOOD_SOURCES];
    int n_sources;
    long opened, closed_by_server;
} hostile;

static void *hold_connections(void *arg)
{
    hostile *h = arg;
    int *fds = calloc((size_t)h->n, sizeof *fds);
    double *next_byte = calloc((size_t)h->n, sizeof *next_byte);
    int *sent = calloc((size_t)h->n, sizeof *sent);
    char head[128];
    int head_length = snprintf(head, sizeof head,
                               "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Slow: ", H.port);
    for (int i = 0; i < h->n; i++) fds[i] = -1;
    while (!atomic_load(&stop)) {
        double now = h_now();
        for (int i = 0; i < h->n; i++) {
            if (fds[i] < 0) {
                if (now < next_byte[i]) continue; /* a closed slot waits a second */
                fds[i] = kn_test_connect_from(H.port, h->sources[i % h->n_sources]);
                if (fds[i] >= 0) h->opened++;
                next_byte[i] = now + 1;
                sent[i] = 0;
                continue;
            }
            char byte;
            ssize_t got = recv(fds[i], &byte, 1, MSG_DONTWAIT);
            bool gone = got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
            if (!gone && h->trickle && now >= next_byte[i]) {
                char c = sent[i] < head_length ? head[sent[i]] : 'a';
                gone = send(fds[i], &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EAGAIN;
                sent[i]++;
                next_byte[i] = now + 1;
            }
            if (gone) {
                h->closed_by_server++;
                close(fds[i]);
                fds[i] = -1;
                next_byte[i] = now + 1;
            }
        }
        usleep(100000);
    }
    for (int i = 0; i < h->n; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(fds);
    free(next_byte);
    free(sent);
    return NULL;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static long prometheus_value(const char *name)
{
    kn_test_reply r = kn_test_http(H.port, "GET", "/metrics", NULL, NULL, 0);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *at = strstr(r.body, key);
    long value = at ? atol(at + strlen(key)) : -1;
    kn_test_reply_free(&r);
    return value;
}

Test(load, sixty_seconds_of_flood_slowloris_pollers_and_inference)
{
    const char *seconds = getenv("KILN_LOAD_SECONDS");
    if (seconds && atof(seconds) > 0) load_seconds = atof(seconds);
    struct rlimit files;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &files), 0);
    if (files.rlim_max < FLOOD + SLOWLORIS + 512) cr_skip_test("needs more file descriptors");
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);

    h_start(&H, (const char *const[]){"--log-level", "warn", "--workers", "1", NULL});
    train_versions();
    usleep(500000);
    long rss_before = rss_kib(H.pid);

    pthread_t flood_thread, slow_thread, pollers[POLLERS], callers[CALLERS], health;
    hostile flood = {.n = FLOOD,
                     .sources = {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"},
                     .n_sources = FLOOD_SOURCES};
    hostile slow = {.n = SLOWLORIS, .trickle = true, .sources = {"127.0.0.6"}, .n_sources = 1};
    double t0 = h_now();
    cr_assert_eq(pthread_create(&flood_thread, NULL, hold_connections, &flood), 0);
    cr_assert_eq(pthread_create(&slow_thread, NULL, hold_connections, &slow), 0);
    for (int i = 0; i < POLLERS; i++)
        cr_assert_eq(pthread_create(&pollers[i], NULL, poll_metrics, (void *)(intptr_t)i), 0);
    for (int i = 0; i < CALLERS; i++)
        cr_assert_eq(pthread_create(&callers[i], NULL, call_versions, (void *)(intptr_t)(i * 5)),
                     0);
    cr_assert_eq(pthread_create(&health, NULL, check_health, NULL), 0);
    long rss_peak = rss_before;
    while (h_now() - t0 < load_seconds) {
        usleep(250000);
        long rss = rss_kib(H.pid);
        if (rss > rss_peak) rss_peak = rss;
        cr_assert_gt(rss, 0, "kilnd is gone (log %s)", H.log_path);
    }
    atomic_store(&stop, 1);
    pthread_join(flood_thread, NULL);
    pthread_join(slow_thread, NULL);
    for (int i = 0; i < POLLERS; i++) pthread_join(pollers[i], NULL);
    for (int i = 0; i < CALLERS; i++) pthread_join(callers[i], NULL);
    pthread_join(health, NULL);
    double elapsed = h_now() - t0;
    sleep(2);
    long rss_after = rss_kib(H.pid);
    long header_timeouts = prometheus_value("kilnd_http_header_timeouts_total");
    long loads = prometheus_value("kilnd_inference_cache_loads_total");
    long entries = prometheus_value("kilnd_inference_cache_entries");

    int n = atomic_load(&health_count);
    if (n > (int)(sizeof health_ms / sizeof health_ms[0]))
        n = (int)(sizeof health_ms / sizeof health_ms[0]);
    qsort(health_ms, (size_t)n, sizeof *health_ms, compare_double);
    double p50 = n ? health_ms[n / 2] : NAN, p99 = n ? health_ms[(int)(n * 0.99)] : NAN,
           max = n ? health_ms[n - 1] : NAN;
    long server_errors =
        infer_tally.server_errors + poll_tally.server_errors + health_tally.server_errors;
    fprintf(stderr,
            "load: %.0f s on 127.0.0.1 (kilnd defaults, 1 worker, 8 HTTP threads)\n"
            "load: health  %ld checks, p50 %.2f ms, p99 %.2f ms, max %.2f ms, %ld failed\n"
            "load: infer   %ld requests (%.0f/s) over %d versions (cache 4 entries), %ld 5xx, "
            "%ld other failures; %ld loads, %ld entries after\n"
            "load: polls   %ld metric requests, %ld 5xx, %ld other failures\n"
            "load: flood   %d idle connections from %d addresses: %ld opened, %ld closed by "
            "kilnd\n"
            "load: slowloris %d connections: %ld opened, %ld cut; header timeouts %ld\n"
            "load: 5xx     %ld\n"
            "load: RSS     before %.1f MB, peak %.1f MB, after %.1f MB\n",
            elapsed, (long)health_tally.requests, p50, p99, max,
            (long)(health_tally.failures + health_tally.server_errors), (long)infer_tally.requests,
            (double)infer_tally.requests / elapsed, VERSIONS, (long)infer_tally.server_errors,
            (long)infer_tally.failures, loads, entries, (long)poll_tally.requests,
            (long)poll_tally.server_errors, (long)poll_tally.failures, FLOOD, FLOOD_SOURCES,
            flood.opened, flood.closed_by_server, SLOWLORIS, slow.opened, slow.closed_by_server,
            header_timeouts, server_errors, rss_before / 1024.0, rss_peak / 1024.0,
            rss_after / 1024.0);
    cr_expect_eq(server_errors, 0, "5xx answers; the first: %s %s %s", infer_tally.first_problem,
                 poll_tally.first_problem, health_tally.first_problem);
    cr_expect_eq(health_tally.failures, 0, "health checks without a 200: %s",
                 health_tally.first_problem);
    cr_expect_eq(infer_tally.failures, 0, "inference: %s", infer_tally.first_problem);
    cr_expect_eq(poll_tally.failures, 0, "metrics: %s", poll_tally.first_problem);
    cr_expect_gt(infer_tally.requests, VERSIONS, "the inference callers got nowhere");
    cr_expect_gt(slow.closed_by_server, 0, "no slowloris connection was cut");
    cr_expect_leq(entries, 4, "the cache kept %ld entries at rest", entries);
    cr_expect_eq(h_signal_wait(&H, SIGTERM), 0, "kilnd did not stop cleanly after the load");
}

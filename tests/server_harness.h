/*
 * server_harness.h — what the tests that drive a real kilnd share (test_server_api.c,
 * test_full_server_fmnist.c): a temporary directory, the built kilnd started on a free
 * loopback port with its data directory there, requests over the kiln client's own
 * HTTP code (cli/khttp.h over libcurl, the kiln_http library), and a clean stop that surfaces any
 * sanitizer report from the daemon's log. Header-only (static) so each test has its own.
 * Debugging: KILN_KEEP_TEST_DIR=1 keeps the directory (and kilnd.log); KILN_TEST_GDB=1
 * runs kilnd under gdb, so a crash leaves its backtrace in the log.
 */
#ifndef KILN_SERVER_HARNESS_H
#define KILN_SERVER_HARNESS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw, mkdtemp */
#endif
#include "khttp.h"
#include "kn_test.h" /* kn_test_run */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>
#include <criterion/criterion.h>
#include <ftw.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

/* Not every test uses every helper. */
#define H_FN static __attribute__((unused))

typedef struct harness {
    char root[256]; /* temporary directory: data/, files/, kilnd.log */
    char data_dir[300];
    char files_dir[300];
    char log_path[300];
    char url[64];
    char token[128]; /* sent when non-empty */
    int port;
    pid_t pid;
} harness;

H_FN double h_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A port that was free a moment ago: bind port 0 on loopback, read it back, close. */
H_FN int h_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
              getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

H_FN void h_make_root(harness *h)
{
    snprintf(h->root, sizeof h->root, "/tmp/kiln-server-test-XXXXXX");
    cr_assert_not_null(mkdtemp(h->root));
    snprintf(h->data_dir, sizeof h->data_dir, "%s/data", h->root);
    snprintf(h->files_dir, sizeof h->files_dir, "%s/files", h->root);
    snprintf(h->log_path, sizeof h->log_path, "%s/kilnd.log", h->root);
    cr_assert_eq(mkdir(h->files_dir, 0700), 0);
}

H_FN khttp_response h_request_full(harness *h, const char *method, const char *path,
                                   const char *body, size_t length, const char *body_file,
                                   const char *extra_headers, const char *host_header);

/* Starts kilnd (extra: NULL-terminated extra flags) and waits for /v2/health/live. */
H_FN void h_start(harness *h, const char *const *extra)
{
    char kilnd[1024];
    snprintf(kilnd, sizeof kilnd, "%s/kilnd", KILN_BINARY_DIR);
    if (access(kilnd, X_OK) != 0) cr_skip_test("%s is not built", kilnd);
    if (!h->root[0]) h_make_root(h);
    h->port = h_free_port();
    snprintf(h->url, sizeof h->url, "http://127.0.0.1:%d", h->port);
    char port[16];
    snprintf(port, sizeof port, "%d", h->port);
    const char *argv[40] = {kilnd, "--listen",   "127.0.0.1", "--port",
                            port,  "--data-dir", h->data_dir, "--threads-per-worker",
                            "2"};
    int argc = 9;
    for (int i = 0; extra && extra[i] && argc < 38; i++) argv[argc++] = extra[i];
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        int fd = open(h->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (getenv("KILN_TEST_GDB")) {
            const char *g[48] = {"/usr/bin/gdb", "-batch", "-ex", "run", "-ex", "bt", "--args"};
            for (int i = 0; i <= argc; i++) g[7 + i] = argv[i];
            execv(g[0], (char *const *)g);
        }
        execv(kilnd, (char *const *)argv);
        _exit(127);
    }
    h->pid = pid;
    for (double t0 = h_now(); h_now() - t0 < 30;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            h->pid = 0;
            char tail[4096] = "";
            FILE *f = fopen(h->log_path, "r");
            if (f) {
                size_t n = fread(tail, 1, sizeof tail - 1, f);
                tail[n] = '\0';
                fclose(f);
            }
            cr_assert_fail("kilnd exited at start (status %d):\n%s", status, tail);
        }
        khttp_response r = h_request_full(h, "GET", "/v2/health/live", NULL, 0, NULL, NULL, NULL);
        bool up = r.status == 200;
        khttp_response_free(&r);
        if (up) return;
        usleep(50000);
    }
    cr_assert_fail("kilnd did not answer /v2/health/live within 30 s (log %s)", h->log_path);
}

/* A whole file, malloc'd (NUL-terminated), *size its length; NULL when unreadable. */
H_FN char *h_slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *data = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)n + 1)) &&
        fread(data, 1, (size_t)n, f) == (size_t)n) {
        data[n] = '\0';
        *size = (size_t)n;
    } else {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

/* Runs a shell command; its output (stdout, and stderr when the command says 2>&1) into
 * out. Returns the exit status (-1 when it did not exit). */
H_FN int h_run(const char *command, char *out, size_t size)
{
    return kn_test_run(command, out, size);
}

/* Sends sig and waits for the exit (SIGKILL after 20 s). */
H_FN int h_signal_wait(harness *h, int sig)
{
    if (h->pid <= 0) return -1;
    kill(h->pid, sig);
    int status = 0;
    for (double t0 = h_now();;) {
        if (waitpid(h->pid, &status, WNOHANG) == h->pid) break;
        if (h_now() - t0 > 20) {
            kill(h->pid, SIGKILL);
            waitpid(h->pid, &status, 0);
            break;
        }
        usleep(20000);
    }
    h->pid = 0;
    return status;
}

/* Copies sanitizer reports from the daemon's log to stderr, where test.sh --asan looks. */
H_FN void h_report_sanitizers(harness *h)
{
    FILE *f = fopen(h->log_path, "r");
    if (!f) return;
    char line[4096];
    bool in_report = false;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "ERROR: AddressSanitizer") || strstr(line, "ERROR: LeakSanitizer") ||
            strstr(line, "runtime error:"))
            in_report = true;
        if (in_report) fprintf(stderr, "kilnd: %s", line);
    }
    fclose(f);
}

H_FN int h_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Stops kilnd (SIGTERM: a clean stop), removes the directory. Safe to call twice. */
H_FN void h_cleanup(harness *h)
{
    if (h->pid > 0) h_signal_wait(h, SIGTERM);
    if (h->root[0]) {
        h_report_sanitizers(h);
        if (!getenv("KILN_KEEP_TEST_DIR")) nftw(h->root, h_rm, 16, FTW_DEPTH | FTW_PHYS);
        h->root[0] = '\0';
    }
}

H_FN khttp_response h_request_full(harness *h, const char *method, const char *path,
                                   const char *body, size_t length, const char *body_file,
                                   const char *extra_headers, const char *host_header)
{
    khttp_request r = {.method = method,
                       .base_url = h->url,
                       .path = path,
                       .token = h->token,
                       .body = body,
                       .body_length = length,
                       .body_file = body_file,
                       .content_type = body_file ? "application/octet-stream" : NULL,
                       .extra_headers = extra_headers,
                       .host_header = host_header,
                       .timeout_seconds = 60};
    khttp_response response;
    char error[512];
    if (!khttp_do(&r, &response, error, sizeof error)) {
        memset(&response, 0, sizeof response);
        response.body = calloc(1, 1);
        snprintf(response.content_type, sizeof response.content_type, "error: %.100s", error);
    }
    return response;
}

H_FN khttp_response h_request(harness *h, const char *method, const char *path, const char *body)
{
    return h_request_full(h, method, path, body, body ? strlen(body) : 0, NULL, NULL, NULL);
}

/* A request whose answer must have this status; returns the parsed JSON body (caller
 * deletes; NULL for a body that is not JSON). */
H_FN cJSON *h_json(harness *h, const char *method, const char *path, const char *body,
                   int want_status)
{
    khttp_response r = h_request(h, method, path, body);
    cr_assert_eq(r.status, want_status, "%s %s: status %d, want %d: %.500s %s", method, path,
                 r.status, want_status, r.body ? r.body : "", r.content_type);
    cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
    khttp_response_free(&r);
    return doc;
}

H_FN double h_number(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v))
        v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "progress"), name);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

H_FN const char *h_string(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* Polls GET /v1/jobs/{id} until a terminal state or the timeout; returns the job. */
H_FN cJSON *h_wait_job(harness *h, const char *id, double timeout_seconds)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    for (double t0 = h_now();;) {
        cJSON *job = h_json(h, "GET", path, NULL, 200);
        const char *state = h_string(job, "state");
        if (!strcmp(state, "succeeded") || !strcmp(state, "failed") || !strcmp(state, "canceled"))
            return job;
        if (h_now() - t0 > timeout_seconds) {
            char *text = cJSON_PrintUnformatted(job);
            cr_assert_fail("job %s not finished after %.0f s: %s", id, timeout_seconds, text);
        }
        cJSON_Delete(job);
        usleep(100000);
    }
}

/* The [[step, wall_time, value], ...] of series `name` in a metrics answer. */
H_FN const cJSON *h_series(const cJSON *doc, const char *name)
{
    const cJSON *series = cJSON_GetObjectItemCaseSensitive(doc, "series");
    if (cJSON_IsObject(series)) return cJSON_GetObjectItemCaseSensitive(series, name);
    const cJSON *s;
    cJSON_ArrayForEach(s, series)
    {
        if (strcmp(h_string(s, "name"), name) == 0) {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(s, "points");
            return p ? p : cJSON_GetObjectItemCaseSensitive(s, "data");
        }
    }
    return NULL;
}

/* The last value of job id's metric series name (GET .../metrics?names=name), and in
 * *first (may be NULL) its first; fails the test when the series has no point. */
H_FN double h_series_end(harness *h, const char *id, const char *name, double *first)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=%s", id, name);
    cJSON *m = h_json(h, "GET", path, NULL, 200);
    const cJSON *points = h_series(m, name);
    int n = cJSON_GetArraySize(points);
    cr_assert_gt(n, 0, "no %s points", name);
    if (first) *first = cJSON_GetArrayItem(cJSON_GetArrayItem(points, 0), 2)->valuedouble;
    double value = cJSON_GetArrayItem(cJSON_GetArrayItem(points, n - 1), 2)->valuedouble;
    cJSON_Delete(m);
    return value;
}

/* A small tabular problem: sample i of 4 features is class i % 3, around its class's
 * centre with noise from an LCG (deterministic in seed and i). */
#define H_BLOB_FEATURES 4
#define H_BLOB_CLASSES 3
H_FN int h_blob(uint32_t seed, int i, float x[H_BLOB_FEATURES])
{
    static const float centres[H_BLOB_CLASSES][H_BLOB_FEATURES] = {
        {2, 0, 0, 1}, {0, 2, 0, -1}, {0, 0, 2, 0}};
    uint32_t s = seed * 2654435761u + (uint32_t)i * 40503u + 7;
    int label = i % H_BLOB_CLASSES;
    for (int k = 0; k < H_BLOB_FEATURES; k++) {
        s = s * 1664525u + 1013904223u;
        x[k] = centres[label][k] + ((float)(s >> 8) / 16777216.0f - 0.5f);
    }
    return label;
}

/* n blobs as CSV: x0..x3 and a label column. */
H_FN void h_write_blobs_csv(const char *path, uint32_t seed, int n)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("x0,x1,x2,x3,label\n", f);
    for (int i = 0; i < n; i++) {
        float x[H_BLOB_FEATURES];
        int label = h_blob(seed, i, x);
        fprintf(f, "%.6f,%.6f,%.6f,%.6f,%d\n", x[0], x[1], x[2], x[3], label);
    }
    cr_assert_eq(fclose(f), 0);
}

/* Writes an IDX file: images (ndim 3, type 0x08) or labels (ndim 1). */
H_FN void h_write_idx(const char *path, const uint8_t *data, int ndim, const int32_t *dims)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    uint8_t magic[4] = {0, 0, 0x08, (uint8_t)ndim};
    fwrite(magic, 1, 4, f);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        uint8_t be[4] = {(uint8_t)(dims[i] >> 24), (uint8_t)(dims[i] >> 16),
                         (uint8_t)(dims[i] >> 8), (uint8_t)dims[i]};
        fwrite(be, 1, 4, f);
        n *= (size_t)dims[i];
    }
    fwrite(data, 1, n, f);
    cr_assert_eq(fclose(f), 0);
}

#endif

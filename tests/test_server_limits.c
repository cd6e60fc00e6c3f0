/*
 * test_server_limits.c — kilnd under resource exhaustion (issue 11, items 3-5), in-process
 * on 127.0.0.1 with a short --header-timeout:
 *   - 1,100 connections that send nothing, from 127.0.0.2 (another client than the health
 *     check's 127.0.0.1): /v2/health/live still answers at once, the flood gets at most
 *     --max-connections-per-ip, and what it holds is cut at the header deadline;
 *   - a slowloris connection trickling header bytes is cut at the deadline all the same,
 *     an idle kept-alive connection too, while a slow body after complete headers is not;
 *   - names= with 5,000 repeats gives one series, more than 64 distinct names a 400, and
 *     an answer over 1,000,000 points a 400;
 *   - a chunked upload over --max-upload-bytes is refused without being read to its end.
 * Every wait is bounded.
 */
#define _GNU_SOURCE
#include "kn_test_http.h"
#include "kn_test_server.h"

#include <arpa/inet.h>
#include <cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEADER_TIMEOUT 2
#define FLOOD 1100

static kn_test_server T;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void start(void)
{
    kn_test_server_config(&T);
    T.config.header_timeout = HEADER_TIMEOUT;
    T.config.max_upload_bytes = 1 << 20;
    kn_test_server_start(&T);
}

static void teardown(void)
{
    kn_test_server_stop(&T);
}

static int connect_from(const char *source)
{
    return kn_test_connect_from(T.server->port, source);
}

/* A connection from 127.0.0.1, connected, that has sent head. */
static int connect_and_send(const char *head, size_t length)
{
    int fd = connect_from("127.0.0.1");
    cr_assert_geq(fd, 0);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    cr_assert_eq(poll(&p, 1, 2000), 1);
    cr_assert_eq(send(fd, head, length, MSG_NOSIGNAL), (ssize_t)length);
    return fd;
}

/* Whether the server has closed fd (EOF or reset), waiting at most seconds. */
static bool closed_by_server(int fd, double seconds)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)(seconds * 1000)) <= 0) return false;
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* GET /v2/health/live from 127.0.0.1: its status, and how long it took into *seconds. */
static int health(double *seconds)
{
    double t0 = now();
    kn_test_reply r;
    bool answered = kn_test_http_try(T.server->port, "GET", "/v2/health/live", NULL, NULL, 0, &r);
    *seconds = now() - t0;
    int status = answered ? r.status : 0;
    if (answered) kn_test_reply_free(&r);
    return status;
}

TestSuite(limits, .init = start, .fini = teardown, .timeout = 120);

Test(limits, idle_flood_leaves_health_answering)
{
    struct rlimit files;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &files), 0);
    if (files.rlim_max < FLOOD + 512) cr_skip_test("needs %d descriptors", FLOOD + 512);
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);

    static int flood[FLOOD];
    int opened = 0;
    for (int i = 0; i < FLOOD; i++)
        if ((flood[i] = connect_from("127.0.0.2")) >= 0) opened++;
    cr_assert_eq(opened, FLOOD, "the kernel refused flood connections");
    usleep(300000); /* let the daemon accept (and refuse) them */
    double seconds;
    int status = health(&seconds);
    cr_expect_eq(status, 200, "health with the flood on: status %d", status);
    cr_expect_lt(seconds, 2.0, "health took %.2f s with the flood on", seconds);

    /* the flood holds at most --max-connections-per-ip: the rest were closed at once */
    int refused = 0;
    for (int i = 0; i < FLOOD; i++) refused += closed_by_server(flood[i], 0);
    cr_expect_geq(refused, FLOOD - T.config.max_connections_per_ip,
                  "%d of %d flood connections refused (per-IP limit %d)", refused, FLOOD,
                  T.config.max_connections_per_ip);
    /* and what it holds is cut at the header deadline */
    int cut = 0;
    double deadline = now() + HEADER_TIMEOUT + 3;
    for (int i = 0; i < FLOOD; i++) {
        double left = deadline - now();
        cut += closed_by_server(flood[i], left > 0 ? left : 0);
        close(flood[i]);
    }
    cr_expect_eq(cut, FLOOD, "%d of %d idle connections closed by the server", cut, FLOOD);
    status = health(&seconds);
    cr_expect_eq(status, 200);
    kn_test_reply r = kn_test_http(T.server->port, "GET", "/metrics", NULL, NULL, 0);
    cr_expect(strstr(r.body, "\nkilnd_http_header_timeouts_total "), "%s", r.body);
    cr_expect_null(strstr(r.body, "\nkilnd_http_header_timeouts_total 0\n"),
                   "the deadline cut nothing");
    kn_test_reply_free(&r);
}

Test(limits, slowloris_is_cut_at_the_header_deadline)
{
    int fd = connect_and_send("", 0);
    char head[128];
    int n = snprintf(head, sizeof head,
                     "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Slow: ", T.server->port);
    double t0 = now();
    bool cut = false;
    /* a byte every 0.2 s: never silent long enough for an idle timeout */
    for (int i = 0; !cut && now() - t0 < HEADER_TIMEOUT + 4; i++) {
        char byte = i < n ? head[i] : 'a';
        if (send(fd, &byte, 1, MSG_NOSIGNAL) != 1) cut = true;
        if (!cut) cut = closed_by_server(fd, 0.2);
    }
    double took = now() - t0;
    close(fd);
    cr_assert(cut, "a connection trickling its headers was still open after %.1f s", took);
    cr_assert_geq(took, HEADER_TIMEOUT - 0.5, "cut after %.2f s, before the deadline", took);
}

Test(limits, kept_alive_connection_is_cut_when_idle)
{
    char head[128];
    int n = snprintf(head, sizeof head,
                     "GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", T.server->port);
    int fd = connect_and_send(head, (size_t)n);
    char answer[2048];
    struct pollfd in = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&in, 1, 2000), 1);
    cr_assert_gt(recv(fd, answer, sizeof answer, 0), 0);
    cr_assert_eq(strncmp(answer, "HTTP/1.1 200", 12), 0);
    double t0 = now();
    bool cut = closed_by_server(fd, HEADER_TIMEOUT + 3);
    close(fd);
    cr_assert(cut, "an idle kept-alive connection stayed open %.1f s", now() - t0);
}

Test(limits, slow_body_after_complete_headers_is_not_cut)
{
    const char *body = "{\"name\": \"slow\", \"description\": \"sent slowly\"}";
    size_t length = strlen(body);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     T.server->port, length);
    int fd = connect_and_send(head, (size_t)n);
    /* the body over 1.5 header timeouts */
    for (size_t i = 0; i < length; i++) {
        cr_assert_eq(send(fd, body + i, 1, MSG_NOSIGNAL), 1, "cut while sending the body");
        usleep((useconds_t)(HEADER_TIMEOUT * 1.5e6 / (double)length));
    }
    char answer[4096];
    size_t used = 0;
    struct pollfd in = {.fd = fd, .events = POLLIN};
    while (used + 1 < sizeof answer && poll(&in, 1, 5000) == 1) {
        ssize_t k = recv(fd, answer + used, sizeof answer - used - 1, 0);
        if (k <= 0) break;
        used += (size_t)k;
    }
    answer[used] = '\0';
    close(fd);
    cr_assert_eq(strncmp(answer, "HTTP/1.1 201", 12), 0, "answer: %s", answer);
}

/* ---- names= ------------------------------------------------------------------------- */

/* A finished job with a loss series of `points` steps (and lr); its id into id. */
static void job_with_metrics(int points, const char *const *names, int n_names, char id[40])
{
    kstore *store = ksrv_thread_store(T.server);
    cr_assert_not_null(store);
    kstore_job job;
    bool created;
    cr_assert_eq(kstore_job_create(store, "{\"model\": \"m\", \"data\": {\"dataset\": \"d\"}}", "m",
                                   "d", NULL, "cpu", 0, points, &job, &created),
                 KSTORE_OK);
    kstore_job_free(&job);
    cr_assert_eq(kstore_job_claim(store, "cpu", NULL, &job), KSTORE_OK);
    memcpy(id, job.id, 40);
    kstore_job_free(&job);
    kstore_metric_point *p = malloc(sizeof *p * (size_t)points);
    for (int i = 0; i < points; i++)
        p[i] = (kstore_metric_point){.step = i + 1, .wall_time = 1e9 + i, .value = 1.0 / (i + 1)};
    for (int k = 0; k < n_names; k++)
        cr_assert_eq(kstore_metrics_append(store, id, names[k], p, points), KSTORE_OK);
    free(p);
    cr_assert_eq(kstore_job_finish(store, id, KSTORE_JOB_SUCCEEDED, NULL, NULL, -1), KSTORE_OK);
}

Test(limits, repeated_names_count_once)
{
    char id[40];
    job_with_metrics(1800, (const char *const[]){"loss", "lr"}, 2, id);
    /* 5,000 repeats: the report's answer was 286 MB for this job */
    size_t size = 64 + 5000 * 5;
    char *url = malloc(size);
    int at = snprintf(url, size, "/v1/jobs/%s/metrics?names=", id);
    for (int i = 0; i < 5000; i++)
        at += snprintf(url + at, size - (size_t)at, "%sloss", i ? "," : "");
    kn_test_reply r = kn_test_http(T.server->port, "GET", url, NULL, NULL, 0);
    free(url);
    cr_assert_eq(r.status, 200, "%.300s", r.body);
    cr_assert_lt(r.body_length, 100000, "%zu bytes for one series of 1,800 points", r.body_length);
    cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
    const cJSON *series = cJSON_GetObjectItem(doc, "series");
    cr_assert_eq(cJSON_GetArraySize(series), 1);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(series, "loss")), 1800);
    cJSON_Delete(doc);
    kn_test_reply_free(&r);

    /* order kept, repeats dropped */
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=lr,loss,lr,,loss&max_points=2", id);
    r = kn_test_http(T.server->port, "GET", path, NULL, NULL, 0);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"series\":{\"lr\":[") && strstr(r.body, "],\"loss\":["), "%s",
              r.body);
    kn_test_reply_free(&r);

    /* 65 distinct names: 400 */
    size = 64 + 65 * 8;
    url = malloc(size);
    at = snprintf(url, size, "/v1/jobs/%s/metrics?names=", id);
    for (int i = 0; i < 65; i++)
        at += snprintf(url + at, size - (size_t)at, "%ss%d", i ? "," : "", i);
    r = kn_test_http(T.server->port, "GET", url, NULL, NULL, 0);
    free(url);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert(strstr(r.body, "invalid_query") && strstr(r.body, "at most 64"), "%s", r.body);
    kn_test_reply_free(&r);
}

Test(limits, an_answer_holds_at_most_a_million_points)
{
    char id[40];
    job_with_metrics(500001, (const char *const[]){"loss", "lr"}, 2, id);
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics", id);
    kn_test_reply r = kn_test_http(T.server->port, "GET", path, NULL, NULL, 0);
    cr_assert_eq(r.status, 400, "status %d, %zu bytes", r.status, r.body_length);
    cr_assert(strstr(r.body, "too_many_points") && strstr(r.body, "max_points"), "%s", r.body);
    kn_test_reply_free(&r);
    /* one series of them fits, and so do both, downsampled */
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss", id);
    r = kn_test_http(T.server->port, "GET", path, NULL, NULL, 0);
    cr_assert_eq(r.status, 200);
    kn_test_reply_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?max_points=1000", id);
    r = kn_test_http(T.server->port, "GET", path, NULL, NULL, 0);
    cr_assert_eq(r.status, 200);
    kn_test_reply_free(&r);
}

/* ---- endless chunked bodies --------------------------------------------------------- */

Test(limits, chunked_upload_over_the_limit_is_refused_early)
{
    int fd = connect_from("127.0.0.1");
    cr_assert_geq(fd, 0);
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    struct timeval timeout = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    cr_assert_eq(poll(&p, 1, 2000), 1);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "PUT /v1/datasets/big/files/train_images HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n",
                     T.server->port);
    cr_assert_eq(send(fd, head, (size_t)n, MSG_NOSIGNAL), n);
    /* up to 256 MB in 64 KiB chunks against a 1 MiB limit */
    enum { CHUNK = 64 * 1024 };
    static char chunk[CHUNK + 16];
    int header = snprintf(chunk, sizeof chunk, "%x\r\n", CHUNK);
    memset(chunk + header, 'x', CHUNK);
    memcpy(chunk + header + CHUNK, "\r\n", 2);
    size_t length = (size_t)header + CHUNK + 2;
    size_t sent = 0;
    double t0 = now();
    while (sent < ((size_t)256 << 20) && now() - t0 < 20) {
        ssize_t k = send(fd, chunk, length, MSG_NOSIGNAL);
        if (k <= 0) break;
        sent += (size_t)k;
    }
    char answer[2048] = "";
    ssize_t got = recv(fd, answer, sizeof answer - 1, 0);
    close(fd);
    cr_assert_lt(sent, (size_t)48 << 20, "%zu MB were taken before the refusal", sent >> 20);
    if (got > 0) { /* the answer, when the client could still read it */
        answer[got] = '\0';
        cr_expect(strstr(answer, "HTTP/1.1 413") && strstr(answer, "body_too_large"), "%s", answer);
    }
    double seconds;
    cr_assert_eq(health(&seconds), 200);
    /* the refused upload left nothing behind */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s/tmp", T.config.data_dir);
    usleep(200000);
    char command[700];
    snprintf(command, sizeof command, "test -z \"$(ls -A '%s')\"", tmp);
    cr_expect_eq(system(command), 0, "files left in %s", tmp);
}

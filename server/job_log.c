/*
 * job_log.c — a job's own log: the lines its worker and the handlers write about it
 * (queued, started and where, each evaluation, checkpoints, warnings, pause/cancel, the
 * error with its step, the end), kept in the store, and GET /v1/jobs/{id}/logs, which
 * reads them as JSON pages (?after=SEQ&limit=N), plain text (?format=text) or, with
 * ?follow=true, as server-sent events until the job has ended and every line was sent:
 *   log  {"seq", "time", "level", "message"} (the event's id is seq: a reconnect's
 *        Last-Event-ID resumes after it)
 *   end  {"state"} once the job is terminal and its last line was sent
 */
#define _GNU_SOURCE
#include "registry.h"
#include "routes_v1.h"
#include "sse.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MESSAGE_MAX 2000
#define PAGE_DEFAULT 1000
#define PAGE_MAX 10000
#define STREAM_BATCH 500

static const char *const LEVEL_NAMES[] = {"info", "warn", "error"};

void ksrv_job_log(kstore *store, const char *job_id, ksrv_job_level level, const char *fmt, ...)
{
    char message[MESSAGE_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    ksrv_log(level == KSRV_JOB_INFO ? KSRV_LOG_INFO : KSRV_LOG_WARN, "job %s: %s", job_id, message);
    if (!store) return;
    int64_t seq = 0;
    if (kstore_job_log_append(store, job_id, LEVEL_NAMES[level], message, KSRV_JOB_LOG_MAX_INFO,
                              &seq) != KSTORE_OK) {
        ksrv_log(KSRV_LOG_WARN, "job %s: a log line was not kept: %s", job_id,
                 kstore_last_error(store));
        return;
    }
    if (seq == KSRV_JOB_LOG_MAX_INFO) {
        char note[160];
        snprintf(note, sizeof note,
                 "the log holds %d lines: further info lines are not kept (warnings and errors "
                 "are)",
                 KSRV_JOB_LOG_MAX_INFO);
        kstore_job_log_append(store, job_id, "warn", note, 0, NULL);
    }
}

static bool terminal(kstore_job_state state)
{
    return state == KSTORE_JOB_SUCCEEDED || state == KSTORE_JOB_FAILED ||
           state == KSTORE_JOB_CANCELED;
}

static cJSON *line_json(const kstore_log_line *l)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seq", (double)l->seq);
    cJSON_AddNumberToObject(o, "time", l->time);
    cJSON_AddStringToObject(o, "level", l->level);
    cJSON_AddStringToObject(o, "message", l->message);
    return o;
}

/* ---- following: server-sent events ----------------------------------------------------- */
typedef struct follower {
    char job_id[40];
    int64_t after;
} follower;

static void poll_log(ksrv_sse *sse, void *context, kstore *store)
{
    follower *f = context;
    kstore_job j;
    memset(&j, 0, sizeof j);
    kstore_status status = kstore_job_get(store, f->job_id, &j);
    if (status != KSTORE_OK) { /* deleted meanwhile, or the store failed */
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "message",
                                status == KSTORE_NOT_FOUND ? "the job is gone" : "store error");
        ksrv_sse_event(sse, "end", -1, o);
        ksrv_sse_end(sse);
        return;
    }
    /* the job is read first: when it is terminal, every line it wrote is committed */
    bool done = terminal(j.state);
    kstore_log_line *lines = NULL;
    int n = 0;
    if (kstore_job_log_query(store, f->job_id, f->after, STREAM_BATCH, &lines, &n) == KSTORE_OK) {
        for (int i = 0; i < n; i++) {
            ksrv_sse_event(sse, "log", lines[i].seq, line_json(&lines[i]));
            f->after = lines[i].seq;
        }
        kstore_job_log_free(lines, n);
    } else {
        done = false; /* try again at the next poll */
    }
    if (done && n < STREAM_BATCH) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "state", kstore_job_state_name(j.state));
        ksrv_sse_event(sse, "end", f->after, o);
        ksrv_sse_end(sse);
    }
    kstore_job_free(&j);
}

/* ---- GET /v1/jobs/{id}/logs ----------------------------------------------------------- */
static void respond_text(ksrv_response *response, const kstore_log_line *lines, int n)
{
    ksrv_text t = {0};
    ksrv_text_put(&t, "", 0);
    for (int i = 0; i < n; i++) {
        time_t seconds = (time_t)lines[i].time;
        struct tm tm;
        gmtime_r(&seconds, &tm);
        char stamp[32];
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        ksrv_text_printf(&t, "%s.%03dZ %-5s %s\n", stamp,
                         (int)((lines[i].time - (double)seconds) * 1000), lines[i].level,
                         lines[i].message);
    }
    ksrv_respond_text(response, &t, "text/plain; charset=utf-8");
}

void ksrv_handle_jobs_logs(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    long long after = 0, limit = PAGE_DEFAULT;
    bool follow = false;
    if (!ksrv_query_int(request, response, "after", 0, (long long)1 << 62, &after) ||
        !ksrv_query_int(request, response, "limit", 1, PAGE_MAX, &limit) ||
        !ksrv_query_bool(request, response, "follow", &follow))
        return;
    const char *format = ksrv_query(request, "format");
    if (format && strcmp(format, "json") != 0 && strcmp(format, "text") != 0) {
        ksrv_respond_error(response, 400, "invalid_query", "format",
                           "query parameter format: expected json or text, got \"%.40s\"", format);
        return;
    }
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    const char *id = request->params[0];
    kstore_job j;
    memset(&j, 0, sizeof j);
    kstore_status status = kstore_job_get(store, id, &j);
    if (status == KSTORE_NOT_FOUND) {
        ksrv_respond_error(response, 404, "not_found", NULL, "no job %s", id);
        return;
    }
    if (status != KSTORE_OK) {
        ksrv_respond_store_error(response, store, status, "job");
        return;
    }
    if (follow) {
        kstore_job_free(&j);
        follower *f = calloc(1, sizeof *f);
        if (!f) {
            ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
            return;
        }
        snprintf(f->job_id, sizeof f->job_id, "%.39s", id);
        f->after = after;
        /* a reconnecting EventSource says where it was */
        const char *last_id =
            MHD_lookup_connection_value(request->connection, MHD_HEADER_KIND, "Last-Event-ID");
        char *end = NULL;
        long long resumed = last_id && last_id[0] ? strtoll(last_id, &end, 10) : -1;
        if (end && !*end && resumed >= 0) f->after = resumed;
        ksrv_sse_respond(server, response, 1000, poll_log, f, free);
        return;
    }
    kstore_log_line *lines = NULL;
    int n = 0;
    status = kstore_job_log_query(store, id, after, (int)limit, &lines, &n);
    if (status != KSTORE_OK) {
        kstore_job_free(&j);
        ksrv_respond_store_error(response, store, status, "job log");
        return;
    }
    if (format && !strcmp(format, "text")) {
        respond_text(response, lines, n);
    } else {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "job_id", id);
        cJSON_AddStringToObject(root, "state", kstore_job_state_name(j.state));
        cJSON *array = cJSON_AddArrayToObject(root, "lines");
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(array, line_json(&lines[i]));
        cJSON_AddNumberToObject(root, "next_after", (double)(n > 0 ? lines[n - 1].seq : after));
        /* a full page may have more after it; a short one is everything written so far */
        cJSON_AddBoolToObject(root, "more", n == limit);
        ksrv_respond_json(response, 200, root);
    }
    kstore_job_log_free(lines, n);
    kstore_job_free(&j);
}

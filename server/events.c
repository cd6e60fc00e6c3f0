/*
 * events.c — GET /v1/jobs/{id}/events: a job's progress as server-sent events, for the
 * dashboard's live curves.
 *
 * Events (each with an id: the highest metric step sent so far):
 *   metrics     {"series": {"loss": [[step, wall_time, value], ...], ...}} new points
 *   state       {"id", "state", "step", "total_steps", "epoch", "eta_seconds",
 *                "samples_per_second", "metrics", "error"?} on a change of state or step
 *   checkpoint  {"step", "kind", "bytes", "url"} for each checkpoint not sent yet
 *   end         {} once the job is terminal and everything has been sent
 * A reconnect's Last-Event-ID (or ?after_step= on the first connect) resumes the metric
 * series after that step; the one step before it is sent again because series of one
 * step commit separately, and the client drops points it has.
 *
 * The stream (server/sse.c) polls the store through the calling MHD thread's own handle
 * and holds that thread for at most a short sleep at a time; streams end after
 * KSRV_SSE_SECONDS and EventSource reconnects by itself.
 */
#define _GNU_SOURCE
#include "sse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_MIN_INTERVAL 0.25 /* step-only changes, at most 4 per second */
#define BACKLOG_POINTS 5000     /* per series and event: a long backlog is downsampled */
#define MAX_SERIES 32
#define MAX_CHECKPOINTS_TRACKED 512

typedef struct series_cursor {
    char name[64];
    int64_t after;
} series_cursor;

typedef struct stream {
    ksrv_sse *sse; /* the stream being polled, for append_event */
    char job_id[40];
    int64_t base_after; /* where series first seen start */
    int64_t watermark;  /* the id of the events */
    series_cursor series[MAX_SERIES];
    int n_series;
    struct {
        int64_t step;
        char kind[16];
    } sent_checkpoints[MAX_CHECKPOINTS_TRACKED];
    int n_checkpoints;
    bool state_sent;
    kstore_job_state last_state;
    int64_t last_step;
    double last_state_time;
} stream;

/* One event, its id the watermark. */
static void append_event(stream *s, const char *event, cJSON *data)
{
    ksrv_sse_event(s->sse, event, s->watermark, data);
}

static cJSON *number(double v)
{
    if (isnan(v)) return cJSON_CreateString("NaN");
    if (isinf(v)) return cJSON_CreateString(v > 0 ? "Infinity" : "-Infinity");
    return cJSON_CreateNumber(v);
}

static series_cursor *cursor_for(stream *s, const char *name)
{
    for (int i = 0; i < s->n_series; i++)
        if (!strcmp(s->series[i].name, name)) return &s->series[i];
    if (s->n_series == MAX_SERIES || strlen(name) >= sizeof s->series[0].name) return NULL;
    series_cursor *c = &s->series[s->n_series++];
    snprintf(c->name, sizeof c->name, "%s", name);
    c->after = s->base_after;
    return c;
}

static void poll_metrics(stream *s, kstore *store)
{
    char **names = NULL;
    int n_names = 0;
    if (kstore_metrics_names(store, s->job_id, &names, &n_names) != KSTORE_OK) return;
    cJSON *data = NULL, *all = NULL;
    for (int i = 0; i < n_names; i++) {
        series_cursor *c = cursor_for(s, names[i]);
        kstore_metric_point *points = NULL;
        int count = 0;
        if (!c ||
            kstore_metrics_query(store, s->job_id, names[i], c->after, BACKLOG_POINTS, &points,
                                 &count) != KSTORE_OK ||
            count == 0) {
            free(points);
            continue;
        }
        if (!data) {
            data = cJSON_CreateObject();
            all = cJSON_AddObjectToObject(data, "series");
        }
        cJSON *array = cJSON_AddArrayToObject(all, names[i]);
        for (int k = 0; k < count; k++) {
            cJSON *p = cJSON_CreateArray();
            cJSON_AddItemToArray(p, cJSON_CreateNumber((double)points[k].step));
            cJSON_AddItemToArray(p, cJSON_CreateNumber(points[k].wall_time));
            cJSON_AddItemToArray(p, number(points[k].value));
            cJSON_AddItemToArray(array, p);
        }
        c->after = points[count - 1].step;
        if (c->after > s->watermark) s->watermark = c->after;
        free(points);
    }
    kstore_strings_free(names, n_names);
    if (data) append_event(s, "metrics", data);
}

static void poll_checkpoints(stream *s, kstore *store)
{
    kstore_checkpoint *list = NULL;
    int n = 0;
    if (kstore_checkpoint_list(store, s->job_id, &list, &n) != KSTORE_OK) return;
    for (int i = 0; i < n; i++) {
        bool seen = false;
        for (int k = 0; k < s->n_checkpoints && !seen; k++)
            seen = s->sent_checkpoints[k].step == list[i].step &&
                   !strcmp(s->sent_checkpoints[k].kind, list[i].kind);
        if (seen || s->n_checkpoints == MAX_CHECKPOINTS_TRACKED) continue;
        s->sent_checkpoints[s->n_checkpoints].step = list[i].step;
        snprintf(s->sent_checkpoints[s->n_checkpoints].kind, sizeof s->sent_checkpoints[0].kind,
                 "%s", list[i].kind);
        s->n_checkpoints++;
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "step", (double)list[i].step);
        cJSON_AddStringToObject(c, "kind", list[i].kind);
        cJSON_AddNumberToObject(c, "bytes", (double)list[i].bytes);
        cJSON_AddNumberToObject(c, "created_at", list[i].created_at);
        char url[200];
        if (!strcmp(list[i].kind, "final"))
            snprintf(url, sizeof url, "/v1/jobs/%s/weights", s->job_id);
        else
            snprintf(url, sizeof url, "/v1/jobs/%s/checkpoints/%lld", s->job_id,
                     (long long)list[i].step);
        cJSON_AddStringToObject(c, "url", url);
        append_event(s, "checkpoint", c);
    }
    free(list);
}

static bool terminal(kstore_job_state state)
{
    return state == KSTORE_JOB_SUCCEEDED || state == KSTORE_JOB_FAILED ||
           state == KSTORE_JOB_CANCELED;
}

static void append_state(stream *s, const kstore_job *j)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "state", kstore_job_state_name(j->state));
    cJSON_AddNumberToObject(o, "step", (double)j->step);
    cJSON_AddNumberToObject(o, "total_steps", (double)j->total_steps);
    cJSON_AddNumberToObject(o, "epoch", (double)j->epoch);
    cJSON_AddItemToObject(o, "eta_seconds",
                          j->eta_seconds >= 0 ? number(j->eta_seconds) : cJSON_CreateNull());
    cJSON_AddItemToObject(o, "samples_per_second", number(j->samples_per_second));
    cJSON *metrics = j->latest_metrics_json ? cJSON_Parse(j->latest_metrics_json) : NULL;
    /* as in GET /v1/jobs/{id}: the final evaluation is the job's own field */
    cJSON *evaluation = cJSON_DetachItemFromObjectCaseSensitive(metrics, "evaluation");
    cJSON_AddItemToObject(o, "metrics", metrics ? metrics : cJSON_CreateObject());
    if (evaluation) cJSON_AddItemToObject(o, "evaluation", evaluation);
    cJSON_AddBoolToObject(o, "cancel_requested", j->cancel_requested);
    cJSON_AddBoolToObject(o, "pause_requested", j->pause_requested);
    cJSON *distributed = j->distributed_json ? cJSON_Parse(j->distributed_json) : NULL;
    if (distributed) cJSON_AddItemToObject(o, "distributed", distributed);
    if (j->error_code[0]) {
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "code", j->error_code);
        cJSON_AddStringToObject(e, "message", j->error_message ? j->error_message : "");
        cJSON_AddItemToObject(e, "step",
                              j->error_step >= 0 ? cJSON_CreateNumber((double)j->error_step)
                                                 : cJSON_CreateNull());
    }
    append_event(s, "state", o);
}

/* Appends whatever is new; ends the stream when the job is gone or finished and sent. */
static void poll_job(ksrv_sse *sse, void *context, kstore *store)
{
    stream *s = context;
    s->sse = sse;
    kstore_job j;
    memset(&j, 0, sizeof j);
    kstore_status status = kstore_job_get(store, s->job_id, &j);
    if (status != KSTORE_OK) {
        /* deleted meanwhile, or the store failed: the client falls back to polling */
        if (status == KSTORE_NOT_FOUND) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "message", "the job is gone");
            append_event(s, "end", o);
        }
        ksrv_sse_end(sse);
        return;
    }
    /* the job is read first: when it is terminal, every metric it wrote is committed */
    poll_metrics(s, store);
    poll_checkpoints(s, store);
    double now = ksrv_monotonic();
    bool changed = !s->state_sent || j.state != s->last_state;
    bool stepped = j.step != s->last_step && now - s->last_state_time >= STATE_MIN_INTERVAL;
    if (changed || stepped) {
        append_state(s, &j);
        s->state_sent = true;
        s->last_state = j.state;
        s->last_step = j.step;
        s->last_state_time = now;
    }
    if (terminal(j.state)) {
        append_event(s, "end", cJSON_CreateObject());
        ksrv_sse_end(sse);
    }
    kstore_job_free(&j);
}

/* A non-negative step from a header or query value; false when malformed. */
static bool parse_step(const char *text, int64_t *out)
{
    char *end;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end || v < -1) return false;
    *out = v;
    return true;
}

void ksrv_handle_jobs_events(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    kstore_job j;
    memset(&j, 0, sizeof j);
    kstore_status status = kstore_job_get(store, request->params[0], &j);
    if (status == KSTORE_NOT_FOUND) {
        ksrv_respond_error(response, 404, "not_found", NULL, "no job %s", request->params[0]);
        return;
    }
    if (status != KSTORE_OK) {
        ksrv_respond_store_error(response, store, status, "job");
        return;
    }
    kstore_job_free(&j);

    int64_t after = -1;
    const char *last_id =
        MHD_lookup_connection_value(request->connection, MHD_HEADER_KIND, "Last-Event-ID");
    const char *query = ksrv_query(request, "after_step");
    if (last_id && last_id[0]) {
        if (!parse_step(last_id, &after))
            after = -1; /* not one of ours: start over */
        else if (after >= 0)
            after--; /* that step's other series */
    } else if (query && !parse_step(query, &after)) {
        ksrv_respond_error(response, 400, "invalid_query", "after_step",
                           "after_step: expected an integer >= -1, got \"%.40s\"", query);
        return;
    }
    stream *s = calloc(1, sizeof *s);
    if (!s) {
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return;
    }
    snprintf(s->job_id, sizeof s->job_id, "%.39s", request->params[0]);
    s->base_after = after;
    s->watermark = after < 0 ? 0 : after;
    ksrv_sse_respond(server, response, 1000, poll_job, s, free);
}

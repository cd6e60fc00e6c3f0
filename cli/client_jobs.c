/*
 * client_jobs.c — the kiln client's job commands: submit (and --follow with the progress
 * bar), jobs, job, cancel/pause/resume, logs (and --follow over server-sent events),
 * metrics, and weights (a resumable download).
 */
#define _GNU_SOURCE
#include "kclient.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static bool terminal_state(const char *state)
{
    return !strcmp(state, "succeeded") || !strcmp(state, "failed") || !strcmp(state, "canceled");
}

/* A metric value: a number, or "NaN"/"Infinity"/"-Infinity" as strings. */
static double metric_value(const cJSON *v)
{
    if (cJSON_IsNumber(v)) return v->valuedouble;
    if (cJSON_IsString(v)) return strtod(v->valuestring, NULL); /* strtod reads nan, inf */
    return NAN;
}

/* "job ID STATE: code: message (step N)" or "job ID succeeded at step N: {metrics}". */
static int print_outcome(const cJSON *job)
{
    const char *id = kcli_string(job, "id"), *state = kcli_string(job, "state");
    bool ok = !strcmp(state, "succeeded");
    if (ok) {
        char *m = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(job, "metrics"));
        printf("job %s succeeded at step %.0f%s%s\n", id, kcli_number(job, "step", 0),
               m ? ": " : "", m ? m : "");
        free(m);
    } else {
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(job, "error");
        printf("job %s %s", id, state);
        if (kcli_string(error, "code")[0]) printf(": %s", kcli_string(error, "code"));
        if (kcli_string(error, "message")[0]) printf(": %s", kcli_string(error, "message"));
        if (kcli_number(error, "step", -1) >= 0)
            printf(" (step %.0f)", kcli_number(error, "step", -1));
        printf("\n");
    }
    fflush(stdout);
    return ok ? 0 : KCLI_EXIT_RUNTIME;
}

/* Polls the job and its loss until it ends, drawing the progress bar; the exit code. */
static int follow(const kcli_args *a, const char *id)
{
    kcli_bar bar;
    kcli_bar_init(&bar, stderr, !a->local.quiet);
    char path[512], last_state[32] = "";
    long long after_step = -1;
    double loss = NAN, last_line = 0;
    for (int failures = 0;;) {
        khttp_response r;
        snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss&after_step=%lld", id,
                 after_step);
        if (kcli_request(a, "GET", path, NULL, NULL, &r) && r.status == 200) {
            cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
            const cJSON *points = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(doc, "series"), "loss");
            const cJSON *p;
            cJSON_ArrayForEach(p, points)
            {
                const cJSON *step = cJSON_GetArrayItem(p, 0);
                if (cJSON_IsNumber(step) && (long long)step->valuedouble > after_step)
                    after_step = (long long)step->valuedouble;
                loss = metric_value(cJSON_GetArrayItem(p, 2));
            }
            cJSON_Delete(doc);
            khttp_response_free(&r);
        }
        snprintf(path, sizeof path, "/v1/jobs/%s", id);
        if (!kcli_request(a, "GET", path, NULL, NULL, &r)) {
            if (++failures >= 30) return KCLI_EXIT_RUNTIME; /* gone for ~30 s */
            sleep(1);
            continue;
        }
        failures = 0;
        if (r.status != 200) {
            kcli_bar_end(&bar);
            int rc = kcli_print_error(&r);
            khttp_response_free(&r);
            return rc;
        }
        cJSON *job = cJSON_ParseWithLength(r.body, r.body_length);
        khttp_response_free(&r);
        char state[32];
        snprintf(state, sizeof state, "%s", kcli_string(job, "state"));
        const cJSON *recipe = cJSON_GetObjectItemCaseSensitive(job, "hyperparameters");
        kcli_bar_state s = {.label = state,
                            .step = (int64_t)kcli_number(job, "step", 0),
                            .total = (int64_t)kcli_number(job, "total_steps", 0),
                            .epoch = (int64_t)kcli_number(job, "epoch", 0),
                            .epochs = (int64_t)kcli_number(recipe, "epochs", 0),
                            .loss = loss,
                            .samples_per_second = kcli_number(job, "samples_per_second", 0),
                            .eta_seconds = kcli_number(job, "eta_seconds", -1)};
        bool ended = terminal_state(state);
        double now = kcli_now();
        if (bar.tty)
            kcli_bar_draw(&bar, &s, ended || strcmp(state, last_state) != 0);
        else if (!a->local.quiet && (strcmp(state, last_state) != 0 || now - last_line >= 5)) {
            kcli_bar_line(&bar, &s);
            last_line = now;
        }
        snprintf(last_state, sizeof last_state, "%s", state);
        if (ended) {
            kcli_bar_end(&bar);
            int rc = print_outcome(job);
            cJSON_Delete(job);
            return rc;
        }
        cJSON_Delete(job);
        usleep(bar.tty ? 500000 : 1000000);
    }
}

int kcli_cmd_submit(kcli_args *a)
{
    size_t size;
    char *body = kcli_read_all(a->positional[0], &size);
    if (!body) return KCLI_EXIT_RUNTIME;
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs?priority=%lld%s", a->priority,
             a->validate_only ? "&validate_only=true" : "");
    int rc = 0;
    cJSON *doc = kcli_expect(a, "POST", path, body, 0, &rc);
    free(body);
    if (!doc) return rc;
    if (a->validate_only) {
        if (a->local.json)
            kcli_print_json(doc);
        else
            printf("valid: %.0f steps, about %.1f MiB of memory (the limit is %.1f MiB)\n",
                   kcli_number(doc, "total_steps", 0),
                   kcli_number(doc, "memory_bytes", 0) / 1048576.0,
                   kcli_number(doc, "job_memory_limit_bytes", 0) / 1048576.0);
        cJSON_Delete(doc);
        return 0;
    }
    char id[64];
    snprintf(id, sizeof id, "%s", kcli_string(doc, "id"));
    if (a->local.json)
        kcli_print_json(doc);
    else
        printf("%s %s\n", id, kcli_string(doc, "state"));
    fflush(stdout);
    cJSON_Delete(doc);
    if (!id[0]) {
        fprintf(stderr, "kiln: the server's answer has no job id\n");
        return KCLI_EXIT_RUNTIME;
    }
    return a->follow ? follow(a, id) : 0;
}

int kcli_cmd_jobs(kcli_args *a)
{
    char path[512], cursor[128] = "", state[64] = "";
    if (a->state && !kcli_escape(a->state, state, sizeof state)) return KCLI_EXIT_SPEC;
    long long shown = 0, limit = a->local.limit > 0 ? a->local.limit : 1000000;
    for (int page = 0; shown < limit; page++) {
        long long want = limit - shown < 1000 ? limit - shown : 1000;
        int n = snprintf(path, sizeof path, "/v1/jobs?limit=%lld", want);
        if (state[0]) n += snprintf(path + n, sizeof path - (size_t)n, "&state=%s", state);
        if (cursor[0]) snprintf(path + n, sizeof path - (size_t)n, "&cursor=%s", cursor);
        int rc = 0;
        cJSON *doc = kcli_expect(a, "GET", path, NULL, 200, &rc);
        if (!doc) return rc;
        if (page == 0 && !a->local.json)
            printf("%-22s %-10s %-13s %-16s %-24s %s\n", "ID", "STATE", "STEP", "MODEL", "NAME",
                   "ERROR");
        const cJSON *job;
        cJSON_ArrayForEach(job, cJSON_GetObjectItemCaseSensitive(doc, "jobs"))
        {
            shown++;
            if (a->local.json) {
                kcli_print_json(job);
                continue;
            }
            char step[48];
            snprintf(step, sizeof step, "%.0f/%.0f", kcli_number(job, "step", 0),
                     kcli_number(job, "total_steps", 0));
            const cJSON *error = cJSON_GetObjectItemCaseSensitive(job, "error");
            printf("%-22s %-10s %-13s %-16s %-24.24s %s\n", kcli_string(job, "id"),
                   kcli_string(job, "state"), step, kcli_string(job, "model"),
                   kcli_string(job, "name")[0] ? kcli_string(job, "name") : "-",
                   kcli_string(error, "code"));
        }
        const char *next = kcli_string(doc, "next_cursor");
        bool more = next[0] && khttp_escape(next, cursor, sizeof cursor);
        cJSON_Delete(doc);
        if (!more) break;
    }
    return 0;
}

int kcli_cmd_job(kcli_args *a)
{
    char id[256], path[320];
    if (!kcli_escape(a->positional[0], id, sizeof id)) return KCLI_EXIT_SPEC;
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    int rc = 0;
    cJSON *job = kcli_expect(a, "GET", path, NULL, 200, &rc);
    if (!job) return rc;
    if (a->local.json) {
        kcli_print_json(job);
        cJSON_Delete(job);
        return 0;
    }
    char eta[32];
    kcli_format_duration(kcli_number(job, "eta_seconds", -1), eta, sizeof eta);
    printf("job       %s%s%s\n", kcli_string(job, "id"), kcli_string(job, "name")[0] ? "  " : "",
           kcli_string(job, "name"));
    printf("state     %s\n", kcli_string(job, "state"));
    printf("model     %s, dataset %s, device %s\n", kcli_string(job, "model"),
           kcli_string(job, "dataset"), kcli_string(job, "device"));
    printf("progress  step %.0f/%.0f, epoch %.0f, %.0f samples/s, ETA %s\n",
           kcli_number(job, "step", 0), kcli_number(job, "total_steps", 0),
           kcli_number(job, "epoch", 0) + 1, kcli_number(job, "samples_per_second", 0), eta);
    const cJSON *recipe = cJSON_GetObjectItemCaseSensitive(job, "hyperparameters");
    if (recipe) {
        printf("recipe    %s lr %g, batch size %.0f", kcli_string(recipe, "optimizer"),
               kcli_number(recipe, "lr", 0), kcli_number(recipe, "batch_size", 0));
        if (kcli_number(recipe, "epochs", -1) >= 0)
            printf(", %.0f epochs", kcli_number(recipe, "epochs", 0));
        else
            printf(", %.0f steps", kcli_number(recipe, "max_steps", 0));
        printf("\n");
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(job, "metrics"))
    {
        printf("metric    %s %.6g\n", m->string, metric_value(m));
    }
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(job, "error");
    if (error) {
        printf("error     %s: %s", kcli_string(error, "code"), kcli_string(error, "message"));
        if (kcli_number(error, "step", -1) >= 0)
            printf(" (step %.0f)", kcli_number(error, "step", -1));
        printf("\n");
    }
    cJSON_Delete(job);
    return 0;
}

/* cancel, pause or resume (the command's name is the route's last segment) */
int kcli_cmd_cancel(kcli_args *a)
{
    char id[256], path[320];
    if (!kcli_escape(a->positional[0], id, sizeof id)) return KCLI_EXIT_SPEC;
    snprintf(path, sizeof path, "/v1/jobs/%s/%s", id, a->command);
    int rc = 0;
    cJSON *doc = kcli_expect(a, "POST", path, "", 200, &rc);
    if (!doc) return rc;
    if (a->local.json) {
        kcli_print_json(doc);
    } else {
        bool requested = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "cancel_requested")) ||
                         cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "pause_requested"));
        printf("%s %s%s\n", a->positional[0], kcli_string(doc, "state"),
               requested ? " (requested: the worker stops at its next step)" : "");
    }
    cJSON_Delete(doc);
    return 0;
}

/* ---- logs ------------------------------------------------------------------------------ */
static void print_line(const kcli_args *a, const cJSON *line)
{
    if (a->local.json) {
        kcli_print_json(line);
    } else {
        double t = kcli_number(line, "time", 0);
        time_t seconds = (time_t)t;
        struct tm tm;
        gmtime_r(&seconds, &tm);
        char stamp[32];
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        printf("%s.%03dZ %-5s %s\n", stamp, (int)((t - (double)seconds) * 1000),
               kcli_string(line, "level"), kcli_string(line, "message"));
    }
    fflush(stdout);
}

/* Server-sent events as they arrive: "log" lines printed, "end" remembered. */
typedef struct event_reader {
    const kcli_args *args;
    char *buffer;
    size_t length, capacity;
    long long last_seq;
    bool ended;
    char state[32];
} event_reader;

static void handle_event(event_reader *r, char *event)
{
    const char *type = "message";
    char *data = NULL;
    for (char *save = NULL, *line = strtok_r(event, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "event: ", 7)) type = line + 7;
        if (!strncmp(line, "data: ", 6)) data = line + 6;
    }
    if (!data) return;
    cJSON *doc = cJSON_Parse(data);
    if (!strcmp(type, "log") && doc) {
        print_line(r->args, doc);
        r->last_seq = (long long)kcli_number(doc, "seq", (double)r->last_seq);
    } else if (!strcmp(type, "end")) {
        r->ended = true;
        snprintf(r->state, sizeof r->state, "%s", kcli_string(doc, "state"));
    }
    cJSON_Delete(doc);
}

static bool on_events(void *context, const char *data, size_t size)
{
    event_reader *r = context;
    if (r->length + size + 1 > r->capacity) {
        size_t capacity = r->capacity ? r->capacity : 8192;
        while (capacity < r->length + size + 1) capacity *= 2;
        char *grown = realloc(r->buffer, capacity);
        if (!grown) return false;
        r->buffer = grown;
        r->capacity = capacity;
    }
    memcpy(r->buffer + r->length, data, size);
    r->length += size;
    r->buffer[r->length] = '\0';
    char *end;
    while ((end = strstr(r->buffer, "\n\n"))) { /* one whole event */
        *end = '\0';
        handle_event(r, r->buffer);
        size_t used = (size_t)(end + 2 - r->buffer);
        memmove(r->buffer, end + 2, r->length - used + 1);
        r->length -= used;
    }
    return true;
}

/* Follows the log until the job ends (each stream lasts a minute: reconnect after the
 * last line); the exit code says how the job ended. */
static int follow_log(const kcli_args *a, const char *id)
{
    event_reader r = {.args = a, .last_seq = a->after};
    int failures = 0, rc = 0;
    while (!r.ended) {
        char path[320];
        snprintf(path, sizeof path, "/v1/jobs/%s/logs?follow=true&after=%lld", id, r.last_seq);
        khttp_request request = {.method = "GET",
                                 .base_url = a->url,
                                 .path = path,
                                 .token = a->token,
                                 .ca_file = a->ca_file,
                                 .on_data = on_events,
                                 .on_data_context = &r,
                                 .timeout_seconds = 60};
        khttp_response response;
        char error[512];
        r.length = 0;
        if (!khttp_do(&request, &response, error, sizeof error)) {
            if (++failures >= 30) {
                fprintf(stderr, "kiln: %s\n", error);
                rc = KCLI_EXIT_RUNTIME;
                break;
            }
            sleep(1);
            continue;
        }
        failures = 0;
        if (response.status != 200) {
            rc = kcli_print_error(&response);
            khttp_response_free(&response);
            break;
        }
        khttp_response_free(&response);
    }
    free(r.buffer);
    if (r.ended && strcmp(r.state, "succeeded") != 0) rc = KCLI_EXIT_RUNTIME;
    return rc;
}

int kcli_cmd_logs(kcli_args *a)
{
    char id[256];
    if (!kcli_escape(a->positional[0], id, sizeof id)) return KCLI_EXIT_SPEC;
    if (a->follow) return follow_log(a, id);
    long long after = a->after;
    for (;;) {
        char path[320];
        snprintf(path, sizeof path, "/v1/jobs/%s/logs?after=%lld&limit=1000", id, after);
        int rc = 0;
        cJSON *doc = kcli_expect(a, "GET", path, NULL, 200, &rc);
        if (!doc) return rc;
        const cJSON *line;
        cJSON_ArrayForEach(line, cJSON_GetObjectItemCaseSensitive(doc, "lines"))
        {
            print_line(a, line);
        }
        after = (long long)kcli_number(doc, "next_after", (double)after);
        bool more = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "more"));
        cJSON_Delete(doc);
        if (!more) return 0;
    }
}

/* ---- metrics ---------------------------------------------------------------------------- */
int kcli_cmd_metrics(kcli_args *a)
{
    char id[256], names[512] = "", path[1024];
    if (!kcli_escape(a->positional[0], id, sizeof id)) return KCLI_EXIT_SPEC;
    if (a->names && !khttp_escape(a->names, names, sizeof names))
        return kcli_usage_error(a, "--names is too long");
    int n = snprintf(path, sizeof path, "/v1/jobs/%s/metrics?max_points=%lld", id, a->max_points);
    if (names[0]) snprintf(path + n, sizeof path - (size_t)n, "&names=%s", names);
    int rc = 0;
    cJSON *doc = kcli_expect(a, "GET", path, NULL, 200, &rc);
    if (!doc) return rc;
    if (a->local.json) {
        kcli_print_json(doc);
    } else {
        printf("# name\tstep\tvalue\n");
        const cJSON *series;
        cJSON_ArrayForEach(series, cJSON_GetObjectItemCaseSensitive(doc, "series"))
        {
            const cJSON *p;
            cJSON_ArrayForEach(p, series)
            {
                printf("%s\t%.0f\t%.9g\n", series->string, cJSON_GetArrayItem(p, 0)->valuedouble,
                       metric_value(cJSON_GetArrayItem(p, 2)));
            }
        }
    }
    cJSON_Delete(doc);
    return 0;
}

/* ---- weights: a resumable download ------------------------------------------------------- */
int kcli_cmd_weights(kcli_args *a)
{
    if (!a->output) return kcli_usage_error(a, "-o FILE is required");
    char id[256], path[400], part[4096];
    if (!kcli_escape(a->positional[0], id, sizeof id)) return KCLI_EXIT_SPEC;
    if (a->step > 0)
        snprintf(path, sizeof path, "/v1/jobs/%s/checkpoints/%lld", id, a->step);
    else
        snprintf(path, sizeof path, "/v1/jobs/%s/weights", id);
    snprintf(part, sizeof part, "%s.part", a->output);
    for (int attempt = 0; attempt < 2; attempt++) {
        struct stat st;
        long long had = stat(part, &st) == 0 ? (long long)st.st_size : 0;
        khttp_request r = {.method = "GET",
                           .base_url = a->url,
                           .path = path,
                           .token = a->token,
                           .ca_file = a->ca_file,
                           .out_file = part,
                           .resume = true,
                           .timeout_seconds = 60};
        khttp_response response;
        char error[1024];
        if (!khttp_do(&r, &response, error, sizeof error)) {
            fprintf(stderr, "kiln: %s\n(%s keeps what came: run the command again to continue)\n",
                    error, part);
            return KCLI_EXIT_RUNTIME;
        }
        int status = response.status;
        if (status == 416) { /* the part is not a prefix of the file: start over */
            khttp_response_free(&response);
            unlink(part);
            continue;
        }
        if (status != 200 && status != 206) {
            int rc = kcli_print_error(&response);
            khttp_response_free(&response);
            return rc;
        }
        khttp_response_free(&response);
        if (rename(part, a->output) != 0) {
            perror(a->output);
            return KCLI_EXIT_RUNTIME;
        }
        long long size = stat(a->output, &st) == 0 ? (long long)st.st_size : -1;
        if (a->local.json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "file", a->output);
            cJSON_AddNumberToObject(o, "bytes", (double)size);
            cJSON_AddNumberToObject(o, "resumed_from", status == 206 ? (double)had : 0);
            kcli_print_json(o);
            cJSON_Delete(o);
        } else if (status == 206)
            printf("wrote %s (%lld bytes; %lld were already there)\n", a->output, size, had);
        else
            printf("wrote %s (%lld bytes)\n", a->output, size);
        return 0;
    }
    fprintf(stderr, "kiln: the server refuses to resume %s\n", part);
    return KCLI_EXIT_RUNTIME;
}

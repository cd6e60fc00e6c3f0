/*
 * client.c — `kiln submit`, `kiln jobs`, `kiln cancel`, `kiln upload` and `kiln health`:
 * kilnd's API driven from the command line over khttp.h. The URL comes from --url, $KILN_URL or
 * http://127.0.0.1:8080; the bearer token from --token-file or $KILN_TOKEN. Error bodies
 * ({"error": {"code", "message", "path", "details"}}) are printed as "path: message".
 * Exit codes: 0 success, 1 a runtime error or a job that failed or was canceled, 2 a
 * usage error or a request the server rejected as invalid (4xx).
 */
#include "kclient.h"
#include "khttp.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char KCLI_CLIENT_USAGE[] =
    "client commands (talk to a running kilnd):\n"
    "  submit JOB.json [--follow]              POST the job (model inline or by name, data\n"
    "                                          by dataset name); --follow shows progress\n"
    "                                          until it ends: exit 0 succeeded, 1 failed\n"
    "                                          or canceled\n"
    "  jobs [--state S]                        list jobs (queued, running, paused,\n"
    "                                          succeeded, failed, canceled)\n"
    "  cancel ID                               cancel a job\n"
    "  upload NAME --train-images F --train-labels F [--test-images F --test-labels F]\n"
    "  upload NAME --train-csv F [--test-csv F]\n"
    "  upload NAME --train-text F                (a language model's text, gzip or plain)\n"
    "                                          create dataset NAME and stream the files\n"
    "  health                                  is kilnd ready? (GET /v2/health/ready, no\n"
    "                                          token needed): exit 0 ready, 1 stopping or\n"
    "                                          unreachable (a container's HEALTHCHECK)\n"
    "  client options: --url URL (default $KILN_URL, else http://127.0.0.1:8080),\n"
    "                  --token-file F (default: the token in $KILN_TOKEN), --json\n";

typedef struct client {
    const char *url;
    char token[512];
    bool json;
    bool follow;
    const char *state;
    const char *positional[2];
    int n_positional;
    /* train_images, train_labels, test_images, test_labels, csv x2, train_text */
    const char *files[7];
} client;

static const char *FILE_FLAGS[7] = {"--train-images", "--train-labels", "--test-images",
                                    "--test-labels",  "--train-csv",    "--test-csv",
                                    "--train-text"};
static const char *FILE_ROLES[7] = {"train_images", "train_labels", "test_images", "test_labels",
                                    "train",        "test",         "train_text"};
static const char *FILE_FORMATS[7] = {"idx", "idx", "idx", "idx", "csv", "csv", "text"};

bool kcli_is_client_command(const char *command)
{
    return strcmp(command, "submit") == 0 || strcmp(command, "jobs") == 0 ||
           strcmp(command, "cancel") == 0 || strcmp(command, "upload") == 0 ||
           strcmp(command, "health") == 0;
}

static int usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "kiln: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nrun `kiln --help` for usage\n");
    return 2;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool read_token(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "kiln: cannot read token file %s: %s\n", path, strerror(errno));
        return false;
    }
    size_t n = fread(out, 1, size - 1, f);
    fclose(f);
    out[n] = '\0';
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ')) out[--n] = 0;
    return true;
}

/* One request; prints connection errors. false when no response came. */
static bool request(const client *c, const char *method, const char *path, const char *body,
                    const char *body_file, const char *content_type, khttp_response *response)
{
    khttp_request r = {.method = method,
                       .base_url = c->url,
                       .path = path,
                       .token = c->token,
                       .body = body,
                       .body_length = body ? strlen(body) : 0,
                       .body_file = body_file,
                       .content_type = content_type,
                       .timeout_seconds = body_file ? 600 : 30};
    char error[512];
    if (!khttp_do(&r, response, error, sizeof error)) {
        fprintf(stderr, "kiln: %s %s: %s\n", method, path, error);
        return false;
    }
    return true;
}

/* Prints an error response as "kiln: STATUS code: message" and "path: message" lines;
 * returns the exit code (2 for 4xx, 1 otherwise). */
static int print_error(const khttp_response *response)
{
    cJSON *doc = cJSON_ParseWithLength(response->body, response->body_length);
    cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    if (cJSON_IsString(error)) {
        fprintf(stderr, "kiln: %d: %s\n", response->status, error->valuestring);
    } else if (cJSON_IsObject(error)) {
        cJSON *code = cJSON_GetObjectItemCaseSensitive(error, "code");
        cJSON *message = cJSON_GetObjectItemCaseSensitive(error, "message");
        cJSON *path = cJSON_GetObjectItemCaseSensitive(error, "path");
        cJSON *details = cJSON_GetObjectItemCaseSensitive(error, "details");
        fprintf(stderr, "kiln: %d %s\n", response->status,
                cJSON_IsString(code) ? code->valuestring : "error");
        if (cJSON_GetArraySize(details) > 0) {
            cJSON *d;
            cJSON_ArrayForEach(d, details)
            {
                cJSON *dp = cJSON_GetObjectItemCaseSensitive(d, "path");
                cJSON *dm = cJSON_GetObjectItemCaseSensitive(d, "message");
                fprintf(stderr, "%s%s%s\n", cJSON_IsString(dp) ? dp->valuestring : "",
                        cJSON_IsString(dp) && dp->valuestring[0] ? ": " : "",
                        cJSON_IsString(dm) ? dm->valuestring : "");
            }
        } else {
            bool has_path = cJSON_IsString(path) && path->valuestring[0];
            fprintf(stderr, "%s%s%s\n", has_path ? path->valuestring : "", has_path ? ": " : "",
                    cJSON_IsString(message) ? message->valuestring : "");
        }
    } else {
        fprintf(stderr, "kiln: HTTP %d: %.300s\n", response->status,
                response->body ? response->body : "");
    }
    cJSON_Delete(doc);
    return response->status >= 400 && response->status < 500 ? 2 : 1;
}

/* A number from the job object or its "progress" object (either layout is accepted). */
static double job_number(const cJSON *job, const char *name, double fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(job, name);
    if (!cJSON_IsNumber(v))
        v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(job, "progress"),
                                             name);
    return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

static const char *job_string(const cJSON *job, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(job, name);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* A metric value: a number, or "NaN"/"Infinity"/"-Infinity" as strings. */
static double metric_value(const cJSON *v)
{
    if (cJSON_IsNumber(v)) return v->valuedouble;
    if (cJSON_IsString(v)) return strtod(v->valuestring, NULL); /* strtod reads nan, inf */
    return NAN;
}

/* The [[step, wall_time, value], ...] array of series `name` in a metrics response:
 * {"series": {"loss": [...]}}, {"series": [{"name": "loss", "points": [...]}]} or
 * {"loss": [...]}. */
static const cJSON *metric_points(const cJSON *doc, const char *name)
{
    const cJSON *series = cJSON_GetObjectItemCaseSensitive(doc, "series");
    if (cJSON_IsObject(series)) return cJSON_GetObjectItemCaseSensitive(series, name);
    if (cJSON_IsArray(series)) {
        const cJSON *s;
        cJSON_ArrayForEach(s, series)
        {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(s, "name");
            if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0) {
                const cJSON *p = cJSON_GetObjectItemCaseSensitive(s, "points");
                return p ? p : cJSON_GetObjectItemCaseSensitive(s, "data");
            }
        }
        return NULL;
    }
    return cJSON_GetObjectItemCaseSensitive(doc, name);
}

static void format_eta(double seconds, char *buf, size_t size)
{
    if (!(seconds >= 0) || seconds > 1e7) {
        snprintf(buf, size, "?");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

static bool terminal_state(const char *state)
{
    return strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
           strcmp(state, "canceled") == 0;
}

/* Polls the job and its loss series until it ends; a bar on a terminal, plain lines
 * otherwise. Returns the exit code. */
static int follow(const client *c, const char *id)
{
    bool tty = isatty(STDERR_FILENO);
    char path[512], last_state[32] = "";
    long long after_step = -1;
    double loss = NAN, last_line = 0;
    bool bar_open = false;
    for (int failures = 0;;) {
        khttp_response r;
        snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss&after_step=%lld", id,
                 after_step);
        if (request(c, "GET", path, NULL, NULL, NULL, &r) && r.status == 200) {
            cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
            const cJSON *points = metric_points(doc, "loss"), *p;
            cJSON_ArrayForEach(p, points)
            {
                const cJSON *step = cJSON_GetArrayItem(p, 0);
                if (!cJSON_IsNumber(step)) continue;
                if ((long long)step->valuedouble > after_step)
                    after_step = (long long)step->valuedouble;
                loss = metric_value(cJSON_GetArrayItem(p, 2));
            }
            cJSON_Delete(doc);
        }
        khttp_response_free(&r);
        snprintf(path, sizeof path, "/v1/jobs/%s", id);
        if (!request(c, "GET", path, NULL, NULL, NULL, &r)) {
            if (++failures >= 30) return 1; /* the server has been gone for ~30 s */
            sleep(1);
            continue;
        }
        failures = 0;
        if (r.status != 200) {
            if (bar_open) fputc('\n', stderr);
            int rc = print_error(&r);
            khttp_response_free(&r);
            return rc;
        }
        cJSON *job = cJSON_ParseWithLength(r.body, r.body_length);
        khttp_response_free(&r);
        char state[32];
        snprintf(state, sizeof state, "%s", job_string(job, "state"));
        double step = job_number(job, "step", 0), total = job_number(job, "total_steps", 0);
        double epoch = job_number(job, "epoch", 0);
        double rate = job_number(job, "samples_per_second", 0);
        double eta_s = job_number(job, "eta_seconds", -1);
        char eta[32];
        format_eta(eta_s, eta, sizeof eta);
        double t = now_seconds();
        char loss_text[32] = "-";
        if (!isnan(loss)) snprintf(loss_text, sizeof loss_text, "%.4f", loss);
        if (tty) {
            int width = 30, filled = total > 0 ? (int)(width * step / total) : 0;
            if (filled > width) filled = width;
            char bar[64];
            for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
            bar[width] = '\0';
            fprintf(stderr,
                    "\r\033[K%s [%s] %3.0f%% step %.0f/%.0f epoch %.0f loss %s "
                    "%.0f samples/s ETA %s",
                    state, bar, total > 0 ? 100 * step / total : 0, step, total, epoch, loss_text,
                    rate, eta);
            bar_open = true;
        } else if (strcmp(state, last_state) != 0 || t - last_line >= 5) {
            fprintf(stderr, "%s step %.0f/%.0f epoch %.0f loss %s %.0f samples/s ETA %s\n", state,
                    step, total, epoch, loss_text, rate, eta);
            last_line = t;
        }
        fflush(stderr);
        snprintf(last_state, sizeof last_state, "%s", state);
        if (terminal_state(state)) {
            if (bar_open) fputc('\n', stderr);
            int rc = strcmp(state, "succeeded") == 0 ? 0 : 1;
            cJSON *metrics = cJSON_GetObjectItemCaseSensitive(job, "metrics");
            if (!metrics) metrics = cJSON_GetObjectItemCaseSensitive(job, "latest_metrics");
            char *m = metrics ? cJSON_PrintUnformatted(metrics) : NULL;
            if (rc == 0) {
                printf("job %s succeeded at step %.0f%s%s\n", id, step, m ? ": " : "", m ? m : "");
            } else {
                cJSON *error = cJSON_GetObjectItemCaseSensitive(job, "error");
                const char *code = job_string(error, "code");
                const char *message = job_string(error, "message");
                double at = job_number(error, "step", -1);
                printf("job %s %s", id, state);
                if (code[0]) printf(": %s", code);
                if (message[0]) printf(": %s", message);
                if (at >= 0) printf(" (step %.0f)", at);
                printf("\n");
            }
            free(m);
            cJSON_Delete(job);
            return rc;
        }
        cJSON_Delete(job);
        usleep(tty ? 500000 : 1000000);
    }
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kiln: cannot read %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 65536, n = 0;
    char *text = malloc(cap);
    size_t got;
    while (text && (got = fread(text + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *grown = realloc(text, cap *= 2);
            if (!grown) free(text);
            text = grown;
        }
    }
    fclose(f);
    if (text) text[n] = '\0';
    return text;
}

static int submit(const client *c)
{
    char *body = read_text(c->positional[0]);
    if (!body) return 1;
    khttp_response r;
    bool ok = request(c, "POST", "/v1/jobs", body, NULL, NULL, &r);
    free(body);
    if (!ok) return 1;
    if (r.status != 200 && r.status != 201 && r.status != 202) {
        int rc = print_error(&r);
        khttp_response_free(&r);
        return rc;
    }
    cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
    char id[64];
    snprintf(id, sizeof id, "%s", job_string(doc, "id"));
    if (c->json)
        printf("%s\n", r.body);
    else
        printf("%s %s\n", id, job_string(doc, "state"));
    fflush(stdout);
    cJSON_Delete(doc);
    khttp_response_free(&r);
    if (!id[0]) {
        fprintf(stderr, "kiln: the server's answer has no job id\n");
        return 1;
    }
    return c->follow ? follow(c, id) : 0;
}

static int list_jobs(const client *c)
{
    char path[512], cursor[128] = "", state[64] = "";
    if (c->state && !khttp_escape(c->state, state, sizeof state)) return usage("bad --state", "");
    for (int page = 0; page < 100; page++) {
        int n = snprintf(path, sizeof path, "/v1/jobs?limit=100");
        if (state[0]) n += snprintf(path + n, sizeof path - (size_t)n, "&state=%s", state);
        if (cursor[0]) snprintf(path + n, sizeof path - (size_t)n, "&cursor=%s", cursor);
        khttp_response r;
        if (!request(c, "GET", path, NULL, NULL, NULL, &r)) return 1;
        if (r.status != 200) {
            int rc = print_error(&r);
            khttp_response_free(&r);
            return rc;
        }
        cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
        khttp_response_free(&r);
        if (page == 0 && !c->json)
            printf("%-22s %-10s %-15s %-20s %s\n", "ID", "STATE", "STEP", "MODEL", "ERROR");
        const cJSON *jobs =
            cJSON_IsArray(doc) ? doc : cJSON_GetObjectItemCaseSensitive(doc, "jobs");
        const cJSON *job;
        cJSON_ArrayForEach(job, jobs)
        {
            if (c->json) {
                char *text = cJSON_PrintUnformatted(job);
                if (text) printf("%s\n", text);
                free(text);
                continue;
            }
            char step[48];
            snprintf(step, sizeof step, "%.0f/%.0f", job_number(job, "step", 0),
                     job_number(job, "total_steps", 0));
            const char *model = job_string(job, "model");
            if (!model[0]) model = job_string(job, "model_name");
            const cJSON *error = cJSON_GetObjectItemCaseSensitive(job, "error");
            printf("%-22s %-10s %-15s %-20s %s\n", job_string(job, "id"), job_string(job, "state"),
                   step, model, job_string(error, "code"));
        }
        const char *next = job_string(doc, "next_cursor");
        bool more = next[0] && khttp_escape(next, cursor, sizeof cursor);
        cJSON_Delete(doc);
        if (!more) break;
    }
    return 0;
}

static int cancel(const client *c)
{
    char id[256], path[320];
    if (!khttp_escape(c->positional[0], id, sizeof id)) return usage("bad job id", "");
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
    khttp_response r;
    if (!request(c, "POST", path, "", NULL, NULL, &r)) return 1;
    int rc = 0;
    if (r.status >= 300) {
        rc = print_error(&r);
    } else {
        cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
        printf("%s %s%s\n", c->positional[0], job_string(doc, "state"),
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "cancel_requested"))
                   ? " (cancel requested)"
                   : "");
        cJSON_Delete(doc);
    }
    khttp_response_free(&r);
    return rc;
}

static int upload(const client *c)
{
    const char *name = c->positional[0];
    bool idx = c->files[0] || c->files[1] || c->files[2] || c->files[3];
    bool csv = c->files[4] || c->files[5];
    bool text = c->files[6] != NULL;
    if (idx + csv + text != 1)
        return usage("upload takes IDX files (--train-images ...), CSV files (--train-csv ...) "
                     "or a text (--train-text F)%s",
                     "");
    if (idx && (!c->files[0] || !c->files[1]))
        return usage("upload needs --train-images and --train-labels%s", "");
    if (idx && (!c->files[2] != !c->files[3]))
        return usage("--test-images and --test-labels go together%s", "");
    if (csv && !c->files[4]) return usage("upload needs --train-csv%s", "");
    char escaped[400], path[600];
    if (!khttp_escape(name, escaped, sizeof escaped)) return usage("bad dataset name", "");
    cJSON *create = cJSON_CreateObject();
    cJSON_AddStringToObject(create, "name", name);
    char *body = cJSON_PrintUnformatted(create);
    cJSON_Delete(create);
    khttp_response r;
    bool ok = body && request(c, "POST", "/v1/datasets", body, NULL, NULL, &r);
    free(body);
    if (!ok) return 1;
    /* 409: the dataset exists; its files are replaced role by role */
    if (r.status >= 300 && r.status != 409) {
        int rc = print_error(&r);
        khttp_response_free(&r);
        return rc;
    }
    khttp_response_free(&r);
    for (int i = 0; i < 7; i++) {
        if (!c->files[i]) continue;
        snprintf(path, sizeof path, "/v1/datasets/%s/files/%s?format=%s", escaped, FILE_ROLES[i],
                 FILE_FORMATS[i]);
        double t0 = now_seconds();
        if (!request(c, "PUT", path, NULL, c->files[i], "application/octet-stream", &r)) return 1;
        if (r.status >= 300) {
            fprintf(stderr, "kiln: uploading %s as %s failed\n", c->files[i], FILE_ROLES[i]);
            int rc = print_error(&r);
            khttp_response_free(&r);
            return rc;
        }
        cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
        if (c->json) {
            printf("%s\n", r.body);
        } else {
            double samples = job_number(doc, "samples", -1), bytes = job_number(doc, "bytes", -1);
            printf("%s: %s uploaded", FILE_ROLES[i], c->files[i]);
            if (bytes >= 0) printf(", %.0f bytes", bytes);
            if (samples >= 0 && i != 6) printf(", %.0f samples", samples);
            double characters = job_number(doc, "characters", -1);
            if (characters >= 0)
                printf(", %.0f characters, %.0f distinct", characters,
                       job_number(doc, "vocab_size", -1));
            printf(" (%.1f s)\n", now_seconds() - t0);
        }
        cJSON_Delete(doc);
        khttp_response_free(&r);
    }
    return 0;
}

/* Exit 0 when kilnd answers that it is ready, 1 otherwise: never 2, which a container's
 * HEALTHCHECK reserves. A short timeout, inside a HEALTHCHECK's usual 5 s. */
static int health(const client *c)
{
    khttp_request q = {.method = "GET",
                       .base_url = c->url,
                       .path = "/v2/health/ready",
                       .token = c->token,
                       .timeout_seconds = 4};
    khttp_response r;
    char error[512];
    if (!khttp_do(&q, &r, error, sizeof error)) {
        fprintf(stderr, "kiln: %s is not reachable: %s\n", c->url, error);
        return 1;
    }
    cJSON *doc = r.status == 200 ? cJSON_ParseWithLength(r.body, r.body_length) : NULL;
    bool ready = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "ready"));
    if (ready)
        printf("%s ready\n", c->url);
    else if (r.status == 200)
        fprintf(stderr, "kiln: %s is not ready (stopping)\n", c->url);
    else
        print_error(&r);
    cJSON_Delete(doc);
    khttp_response_free(&r);
    return ready ? 0 : 1;
}

int kcli_client_main(int argc, char **argv)
{
    client c = {0};
    const char *command = argv[0], *token_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        int file = -1;
        for (int k = 0; k < 7; k++)
            if (strcmp(a, FILE_FLAGS[k]) == 0) file = k;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(KCLI_CLIENT_USAGE, stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            c.json = true;
        } else if (strcmp(a, "--follow") == 0 || strcmp(a, "-f") == 0) {
            c.follow = true;
        } else if (strcmp(a, "--url") == 0 || strcmp(a, "--token-file") == 0 ||
                   strcmp(a, "--state") == 0 || file >= 0) {
            if (!has_value) return usage("%s needs a value", a);
            const char *v = argv[++i];
            if (file >= 0)
                c.files[file] = v;
            else if (strcmp(a, "--url") == 0)
                c.url = v;
            else if (strcmp(a, "--state") == 0)
                c.state = v;
            else
                token_file = v;
        } else if (a[0] == '-' && a[1]) {
            return usage("unknown option %s", a);
        } else if (c.n_positional < 2) {
            c.positional[c.n_positional++] = a;
        } else {
            return usage("unexpected argument %s", a);
        }
    }
    if (!c.url)
        c.url = getenv("KILN_URL") && getenv("KILN_URL")[0] ? getenv("KILN_URL")
                                                            : "http://127.0.0.1:8080";
    if (token_file) {
        if (!read_token(token_file, c.token, sizeof c.token)) return 1;
    } else if (getenv("KILN_TOKEN")) {
        snprintf(c.token, sizeof c.token, "%s", getenv("KILN_TOKEN"));
    }
    int want = strcmp(command, "jobs") == 0 || strcmp(command, "health") == 0 ? 0 : 1;
    if (c.n_positional != want)
        return usage(want ? "%s takes one argument" : "%s takes no argument", command);
    if (c.follow && strcmp(command, "submit") != 0) return usage("--follow is for submit%s", "");
    if (strcmp(command, "submit") == 0) return submit(&c);
    if (strcmp(command, "jobs") == 0) return list_jobs(&c);
    if (strcmp(command, "cancel") == 0) return cancel(&c);
    if (strcmp(command, "health") == 0) return health(&c);
    return upload(&c);
}

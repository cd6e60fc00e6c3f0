/*
 * http.c — kilnd's HTTP layer on libmicrohttpd: the daemon (internal thread pool over
 * epoll, select where epoll is missing), the route table, request bodies (JSON bodies
 * buffered up to max_body_bytes; dataset and weights uploads streamed to a temporary file under
 * data_dir/tmp up to max_upload_bytes, never held in memory), JSON and file responses,
 * one log line and one counter per request.
 */
#define _GNU_SOURCE /* mkostemp, asprintf */
#include "ksrv_http.h"
#include "registry.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

typedef enum { BODY_NONE, BODY_JSON, BODY_UPLOAD } body_kind;

typedef struct route {
    const char *method, *pattern;
    ksrv_handler handler;
    body_kind body;
} route;

static const route ROUTES[] = {
    {"GET", "/v1/health", ksrv_handle_health, BODY_NONE},
    {"GET", "/metrics", ksrv_handle_prometheus, BODY_NONE},
    {"POST", "/v1/models", ksrv_handle_models_create, BODY_JSON},
    {"GET", "/v1/models", ksrv_handle_models_list, BODY_NONE},
    {"GET", "/v1/models/{name}", ksrv_handle_models_get, BODY_NONE},
    {"DELETE", "/v1/models/{name}", ksrv_handle_models_delete, BODY_NONE},
    {"GET", "/v1/models/{name}/versions", ksrv_handle_models_versions, BODY_NONE},
    {"GET", "/v1/models/{name}/versions/{version}", ksrv_handle_models_version_get, BODY_NONE},
    {"DELETE", "/v1/models/{name}/versions/{version}", ksrv_handle_models_version_delete,
     BODY_NONE},
    {"PUT", "/v1/models/{name}/versions/{version}/weights", ksrv_handle_models_weights_upload,
     BODY_UPLOAD},
    {"POST", "/v1/models/{name}/versions/{version}/weights", ksrv_handle_models_weights_upload,
     BODY_UPLOAD},
    {"GET", "/v1/models/{name}/versions/{version}/weights", ksrv_handle_models_weights_download,
     BODY_NONE},
    {"GET", "/v1/models/{name}/aliases", ksrv_handle_models_aliases, BODY_NONE},
    {"GET", "/v1/models/{name}/aliases/{alias}", ksrv_handle_models_alias_get, BODY_NONE},
    {"PUT", "/v1/models/{name}/aliases/{alias}", ksrv_handle_models_alias_put, BODY_JSON},
    {"DELETE", "/v1/models/{name}/aliases/{alias}", ksrv_handle_models_alias_delete, BODY_NONE},
    /* ---- generation (issue 12) ---- */
    {"POST", "/v1/models/{name}/generate", ksrv_handle_models_generate, BODY_JSON},
    {"POST", "/v1/models/{name}/versions/{version}/generate", ksrv_handle_models_generate,
     BODY_JSON},
    {"POST", "/v1/datasets", ksrv_handle_datasets_create, BODY_JSON},
    {"GET", "/v1/datasets", ksrv_handle_datasets_list, BODY_NONE},
    {"GET", "/v1/datasets/{name}", ksrv_handle_datasets_get, BODY_NONE},
    {"DELETE", "/v1/datasets/{name}", ksrv_handle_datasets_delete, BODY_NONE},
    {"PUT", "/v1/datasets/{name}/files/{role}", ksrv_handle_datasets_upload, BODY_UPLOAD},
    /* POST too: curl --data-binary posts; small JSON arrays come the same way */
    {"POST", "/v1/datasets/{name}/files/{role}", ksrv_handle_datasets_upload, BODY_UPLOAD},
    {"GET", "/v1/datasets/{name}/samples", ksrv_handle_datasets_samples, BODY_NONE},
    {"POST", "/v1/jobs", ksrv_handle_jobs_create, BODY_JSON},
    {"GET", "/v1/jobs", ksrv_handle_jobs_list, BODY_NONE},
    {"GET", "/v1/jobs/{id}", ksrv_handle_jobs_get, BODY_NONE},
    {"POST", "/v1/jobs/{id}/cancel", ksrv_handle_jobs_cancel, BODY_NONE},
    {"POST", "/v1/jobs/{id}/pause", ksrv_handle_jobs_pause, BODY_NONE},
    {"POST", "/v1/jobs/{id}/resume", ksrv_handle_jobs_resume, BODY_NONE},
    {"GET", "/v1/jobs/{id}/metrics", ksrv_handle_jobs_metrics, BODY_NONE},
    {"GET", "/v1/jobs/{id}/checkpoints", ksrv_handle_jobs_checkpoints, BODY_NONE},
    {"GET", "/v1/jobs/{id}/checkpoints/{step}", ksrv_handle_jobs_checkpoint_download, BODY_NONE},
    {"GET", "/v1/jobs/{id}/weights", ksrv_handle_jobs_weights, BODY_NONE},
    {"GET", "/v1/jobs/{id}/events", ksrv_handle_jobs_events, BODY_NONE},
    {"GET", "/v1/jobs/{id}/logs", ksrv_handle_jobs_logs, BODY_NONE},
    {"GET", "/", ksrv_handle_web_index, BODY_NONE},
    {"GET", "/ui/{file}", ksrv_handle_web_asset, BODY_NONE},
    {"GET", "/v2/health/live", ksrv_handle_v2_live, BODY_NONE},
    {"GET", "/v2/health/ready", ksrv_handle_v2_ready, BODY_NONE},
    {"GET", "/v2/models/{name}", ksrv_handle_v2_model, BODY_NONE},
    {"GET", "/v2/models/{name}/ready", ksrv_handle_v2_model_ready, BODY_NONE},
    {"POST", "/v2/models/{name}/infer", ksrv_handle_v2_infer, BODY_JSON},
    {"POST", "/v2/models/{name}/versions/{version}/infer", ksrv_handle_v2_infer, BODY_JSON},
};
#define N_ROUTES (sizeof ROUTES / sizeof ROUTES[0])

/* Per-connection state of one request, from the first callback to completion. */
typedef struct request_state {
    ksrv_request request;
    const route *route;
    const char *version; /* "HTTP/1.1", ... */
    double started;
    char *body;
    size_t body_length, body_capacity;
    int upload_fd;
    char upload_path[600];
    int write_errno; /* why storing the body failed (ENOSPC: 507) */
    bool too_large, write_failed, responded;
} request_state;

double ksrv_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

double ksrv_monotonic(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void ksrv_stats_count(ksrv_stats *stats, const char *route_name, int status)
{
    pthread_mutex_lock(&stats->lock);
    int i = 0;
    for (; i < stats->n_requests; i++)
        if (stats->requests[i].status == status && !strcmp(stats->requests[i].route, route_name))
            break;
    if (i == stats->n_requests && i < (int)(sizeof stats->requests / sizeof stats->requests[0])) {
        snprintf(stats->requests[i].route, sizeof stats->requests[i].route, "%s", route_name);
        stats->requests[i].status = status;
        stats->requests[i].count = 0;
        stats->n_requests++;
    }
    if (i < stats->n_requests) stats->requests[i].count++;
    pthread_mutex_unlock(&stats->lock);
}

/* Matches path against pattern segment by segment; {x} takes one non-empty segment. */
static bool match(const char *pattern, const char *path, ksrv_request *request)
{
    int n = 0;
    while (*pattern && *path) {
        if (*pattern != '/' || *path != '/') return false;
        pattern++, path++;
        const char *pattern_end = strchr(pattern, '/');
        const char *path_end = strchr(path, '/');
        size_t pattern_length = pattern_end ? (size_t)(pattern_end - pattern) : strlen(pattern);
        size_t path_length = path_end ? (size_t)(path_end - path) : strlen(path);
        if (pattern[0] == '{') {
            if (path_length == 0 || path_length >= sizeof request->params[0] ||
                n >= KSRV_MAX_PARAMS)
                return false;
            memcpy(request->params[n], path, path_length);
            request->params[n][path_length] = '\0';
            n++;
        } else if (pattern_length != path_length || strncmp(pattern, path, path_length)) {
            return false;
        }
        pattern += pattern_length, path += path_length;
    }
    if (*pattern || *path) return false;
    request->n_params = n;
    return true;
}

/* The route for method + path; *path_known says whether another method would match.
 * HEAD takes the GET route: libmicrohttpd sends the headers of its answer, not the body. */
static const route *find_route(const char *method, const char *path, ksrv_request *request,
                               bool *path_known, char *allow, size_t allow_size)
{
    *path_known = false;
    allow[0] = '\0';
    const route *found = NULL;
    const char *wanted = !strcmp(method, "HEAD") ? "GET" : method;
    for (size_t i = 0; i < N_ROUTES; i++) {
        ksrv_request scratch;
        if (!match(ROUTES[i].pattern, path, &scratch)) continue;
        *path_known = true;
        size_t used = strlen(allow);
        if (!strstr(allow, ROUTES[i].method))
            snprintf(allow + used, allow_size - used, "%s%s%s", used ? ", " : "", ROUTES[i].method,
                     !strcmp(ROUTES[i].method, "GET") ? ", HEAD" : "");
        if (!found && !strcmp(ROUTES[i].method, wanted)) {
            found = &ROUTES[i];
            request->n_params = scratch.n_params;
            memcpy(request->params, scratch.params, sizeof request->params);
        }
    }
    return found;
}

const char *ksrv_query(const ksrv_request *request, const char *name)
{
    return MHD_lookup_connection_value(request->connection, MHD_GET_ARGUMENT_KIND, name);
}

void ksrv_respond_json(ksrv_response *response, int status, cJSON *body)
{
    free(response->body);
    response->status = status;
    response->body = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    /* a name from the URL (%FF) may be echoed in a message: the body stays UTF-8 */
    if (response->body && !ksrv_json_repair_utf8(&response->body)) {
        free(response->body);
        response->body = NULL;
    }
    if (!response->body) {
        /* out of memory while printing: a fixed body still says what happened */
        response->status = 500;
        response->body =
            strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
    }
    response->content_type = "application/json";
}

static cJSON *error_json(cJSON **error, const char *code, const char *path, const char *fmt,
                         va_list args)
{
    char message[2048];
    vsnprintf(message, sizeof message, fmt, args);
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", message);
    if (path) cJSON_AddStringToObject(e, "path", path);
    if (error) *error = e;
    return root;
}

cJSON *ksrv_error_json(cJSON **error, const char *code, const char *path, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    cJSON *root = error_json(error, code, path, fmt, args);
    va_end(args);
    return root;
}

void ksrv_respond_error(ksrv_response *response, int status, const char *code, const char *path,
                        const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    cJSON *root = error_json(NULL, code, path, fmt, args);
    va_end(args);
    ksrv_respond_json(response, status, root);
}

void ksrv_respond_v2_error(ksrv_response *response, int status, const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "error", message);
    ksrv_respond_json(response, status, root);
}

/* ---- strict JSON bodies ------------------------------------------------------------ */
static int compare_names(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

static void child_path(char *out, size_t size, const char *parent, const cJSON *item, int index)
{
    if (item->string)
        snprintf(out, size, "%s%s%s", parent, parent[0] ? "." : "", item->string);
    else
        snprintf(out, size, "%s[%d]", parent, index);
}

/* Finds the first duplicate key anywhere in the tree; its path goes into path. */
static bool find_duplicate(const cJSON *node, const char *where, char *path, size_t size)
{
    if (cJSON_IsObject(node)) {
        int n = cJSON_GetArraySize(node);
        if (n > 1) {
            const cJSON **items = malloc((size_t)n * sizeof *items);
            if (!items) return false;
            int i = 0;
            for (const cJSON *c = node->child; c; c = c->next) items[i++] = c;
            /* sorting makes big objects O(n log n); equal neighbours are duplicates */
            qsort(items, (size_t)n, sizeof *items, compare_names);
            for (i = 1; i < n; i++)
                if (!strcmp(items[i]->string, items[i - 1]->string)) {
                    child_path(path, size, where, items[i], 0);
                    free(items);
                    return true;
                }
            free(items);
        }
    }
    if (!cJSON_IsObject(node) && !cJSON_IsArray(node)) return false;
    int index = 0;
    char inner[512];
    for (const cJSON *c = node->child; c; c = c->next, index++) {
        if (!cJSON_IsObject(c) && !cJSON_IsArray(c)) continue;
        child_path(inner, sizeof inner, where, c, index);
        if (find_duplicate(c, inner, path, size)) return true;
    }
    return false;
}

static void syntax_error(ksrv_response *response, const char *body, size_t offset, const char *what)
{
    int line = 1, column = 1;
    for (size_t i = 0; i < offset; i++) {
        if (body[i] == '\n')
            line++, column = 1;
        else
            column++;
    }
    cJSON *error;
    cJSON *root =
        ksrv_error_json(&error, "malformed_json", NULL, "%s at offset %zu (line %d, column %d)",
                        what, offset, line, column);
    cJSON_AddNumberToObject(error, "offset", (double)offset);
    cJSON_AddNumberToObject(error, "line", line);
    cJSON_AddNumberToObject(error, "column", column);
    ksrv_respond_json(response, 400, root);
}

/* ---- strings cut at NUL ------------------------------------------------------------ */
/* cJSON decodes the escape \u0000 into a NUL byte and keeps NUL-terminated strings, so
 * {"model": "victim\u0000zzz"} would read as "victim": a body with such a string is
 * refused, naming where it is. The scan runs on text cJSON has parsed (valid JSON, at most
 * CJSON_NESTING_LIMIT deep), and only when the escape occurs at all. */

typedef struct json_frame {
    bool object;
    int index;       /* arrays: the element being read */
    const char *key; /* objects: the key being read (raw text), NULL before the first */
    size_t key_length;
} json_frame;

static void frames_path(const json_frame *stack, int depth, char *path, size_t size)
{
    size_t used = 0;
    path[0] = '\0';
    for (int d = 0; d < depth && used + 1 < size; d++) {
        int n = stack[d].object
                    ? snprintf(path + used, size - used, "%s%.*s", used ? "." : "",
                               (int)stack[d].key_length, stack[d].key ? stack[d].key : "")
                    : snprintf(path + used, size - used, "[%d]", stack[d].index);
        if (n < 0) break;
        used += (size_t)n < size - used ? (size_t)n : size - used - 1;
    }
}

/* The path of the first string (a key or a value) holding \u0000; false when none. */
static bool find_nul_escape(const char *text, size_t length, char *path, size_t size)
{
    if (!memmem(text, length, "\\u0000", 6)) return false;
    json_frame *stack = malloc(sizeof *stack * (CJSON_NESTING_LIMIT + 2));
    if (!stack) {
        snprintf(path, size, "%s", "");
        return true; /* cannot say where: refused all the same */
    }
    int depth = 0;
    bool expect_key = false, found = false;
    for (size_t i = 0; i < length && !found; i++) {
        char c = text[i];
        if ((c == '{' || c == '[') && depth <= CJSON_NESTING_LIMIT) {
            stack[depth++] = (json_frame){.object = c == '{'};
            expect_key = c == '{';
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
            expect_key = false;
        } else if (c == ',' && depth > 0) {
            stack[depth - 1].index++;
            expect_key = stack[depth - 1].object;
        } else if (c == ':') {
            expect_key = false;
        } else if (c == '"') {
            size_t start = ++i;
            bool nul = false;
            for (; i < length && text[i] != '"'; i++)
                if (text[i] == '\\') {
                    nul |= i + 5 < length && !memcmp(text + i + 1, "u0000", 5);
                    i++; /* the escaped character (\" does not end the string) */
                }
            if (expect_key && depth > 0) {
                stack[depth - 1].key = text + start;
                stack[depth - 1].key_length = i - start;
            }
            if (nul) {
                frames_path(stack, depth, path, size);
                found = true;
            }
        }
    }
    free(stack);
    return found;
}

cJSON *ksrv_parse_body(const ksrv_request *request, ksrv_response *response)
{
    if (!request->body || request->body_length == 0) {
        ksrv_respond_error(response, 400, "missing_body", "", "a JSON object body is required");
        return NULL;
    }
    const char *nul = memchr(request->body, '\0', request->body_length);
    if (nul) {
        syntax_error(response, request->body, (size_t)(nul - request->body),
                     "NUL byte in the body");
        return NULL;
    }
    /* JSON is UTF-8 (RFC 8259): other bytes would be echoed into answers that are not */
    size_t valid = ksrv_utf8_valid_length(request->body, request->body_length);
    if (valid < request->body_length) {
        syntax_error(response, request->body, valid, "invalid UTF-8");
        return NULL;
    }
    /* length + 1 takes in the terminating NUL, which makes cJSON refuse trailing data */
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(request->body, request->body_length + 1, &end, 1);
    if (!root) {
        size_t offset = end && end >= request->body ? (size_t)(end - request->body) : 0;
        if (offset > request->body_length) offset = request->body_length;
        syntax_error(response, request->body, offset, "invalid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        ksrv_respond_error(response, 400, "invalid_body", "", "the body must be a JSON object");
        return NULL;
    }
    char path[512];
    if (find_duplicate(root, "", path, sizeof path)) {
        cJSON_Delete(root);
        ksrv_respond_error(response, 400, "duplicate_key", path, "duplicate key \"%s\"", path);
        return NULL;
    }
    if (find_nul_escape(request->body, request->body_length, path, sizeof path)) {
        cJSON_Delete(root);
        ksrv_respond_error(response, 400, "invalid_value", path,
                           "%s%sa string may not hold a NUL character (\\u0000)", path,
                           path[0] ? ": " : "");
        return NULL;
    }
    return root;
}

/* ---- the libmicrohttpd callbacks ----------------------------------------------------- */
static enum MHD_Result send_response(ksrv_server *server, request_state *state, ksrv_response *r)
{
    struct MHD_Connection *connection = state->request.connection;
    struct MHD_Response *response = r->prepared;
    if (!response && r->file_path) response = ksrv_file_response(connection, r);
    if (!response) {
        if (!r->body) ksrv_respond_error(r, 500, "internal", NULL, "the handler gave no response");
        size_t length = r->body_length ? r->body_length : strlen(r->body);
        response = MHD_create_response_from_buffer(length, r->body, MHD_RESPMEM_MUST_FREE);
        if (!response) return MHD_NO;
        r->body = NULL; /* MHD owns it now */
    }
    const char *type = r->file_path && !r->content_type ? "application/octet-stream"
                       : r->content_type                ? r->content_type
                                                        : "application/json";
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (r->header_name[0]) MHD_add_response_header(response, r->header_name, r->header_value);
    if (r->varies_by_encoding) MHD_add_response_header(response, "Vary", "Accept-Encoding");
    if (r->etag[0]) {
        MHD_add_response_header(response, "ETag", r->etag);
        /* stored, but asked again each time: a 304 costs a round trip and no body */
        MHD_add_response_header(response, "Cache-Control", "no-cache");
    }
    const char *origin = ksrv_auth_cors_origin(server, connection);
    if (origin) {
        MHD_add_response_header(response, "Access-Control-Allow-Origin", origin);
        MHD_add_response_header(response, "Vary", "Origin");
    }
    enum MHD_Result result = MHD_queue_response(connection, (unsigned)r->status, response);
    MHD_destroy_response(response);

    state->responded = true;
    double ms = (ksrv_monotonic() - state->started) * 1e3;
    const char *route_name = state->request.route ? state->request.route : "unmatched";
    ksrv_stats_count(&server->stats, route_name, r->status);
    ksrv_log(r->status >= 500 ? KSRV_LOG_WARN : KSRV_LOG_INFO, "%s %s %d %.1fms",
             state->request.method, state->request.path, r->status, ms);
    free(r->body);
    free(r->file_path);
    return result;
}

static void response_init(ksrv_response *r)
{
    memset(r, 0, sizeof *r);
    r->status = 200;
}

static enum MHD_Result respond_now(ksrv_server *server, request_state *state, ksrv_response *r)
{
    return send_response(server, state, r);
}

static bool open_upload(ksrv_server *server, request_state *state)
{
    if (!ksrv_data_path(server, "tmp/upload-XXXXXX", state->upload_path, sizeof state->upload_path))
        return false;
    state->upload_fd = mkostemp(state->upload_path, O_CLOEXEC);
    if (state->upload_fd < 0) {
        state->write_errno = errno;
        ksrv_log(KSRV_LOG_ERROR, "cannot create %s: %s", state->upload_path, strerror(errno));
        state->upload_path[0] = '\0';
        return false;
    }
    return true;
}

void ksrv_respond_write_error(ksrv_response *r, int error_number, const char *what)
{
    if (error_number == ENOSPC || error_number == EDQUOT)
        ksrv_respond_error(r, 507, "insufficient_storage", NULL,
                           "the data directory is full: cannot store %s (%s); deleting "
                           "datasets frees space",
                           what, strerror(error_number));
    else
        ksrv_respond_error(r, 500, "internal", NULL, "cannot store %s%s%s", what,
                           error_number ? ": " : "", error_number ? strerror(error_number) : "");
}

/* Takes a chunk of the body: appended to the buffer or the upload file, or dropped once
 * the request is over its limit (the 413 goes out when the body has been read). */
static void take_chunk(ksrv_server *server, request_state *state, const char *data, size_t size)
{
    if (state->too_large || state->write_failed) return;
    body_kind kind = state->route ? state->route->body : BODY_NONE;
    if (kind == BODY_NONE) return;
    size_t total = (kind == BODY_UPLOAD ? state->request.upload_bytes : state->body_length) + size;
    size_t limit =
        kind == BODY_UPLOAD ? server->config.max_upload_bytes : server->config.max_body_bytes;
    if (total > limit) {
        state->too_large = true;
        free(state->body);
        state->body = NULL;
        state->body_length = 0;
        return;
    }
    if (kind == BODY_UPLOAD) {
        while (size > 0) {
            ssize_t n = write(state->upload_fd, data, size);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                state->write_errno = n < 0 ? errno : ENOSPC;
                ksrv_log(KSRV_LOG_ERROR, "writing %s: %s", state->upload_path,
                         strerror(state->write_errno));
                state->write_failed = true;
                return;
            }
            data += n, size -= (size_t)n;
            state->request.upload_bytes += (size_t)n;
        }
        return;
    }
    if (state->body_length + size + 1 > state->body_capacity) {
        size_t capacity = state->body_capacity ? state->body_capacity : 4096;
        while (capacity < state->body_length + size + 1) capacity *= 2;
        char *grown = realloc(state->body, capacity);
        if (!grown) {
            state->write_errno = ENOMEM;
            state->write_failed = true;
            return;
        }
        state->body = grown;
        state->body_capacity = capacity;
    }
    memcpy(state->body + state->body_length, data, size);
    state->body_length += size;
    state->body[state->body_length] = '\0';
}

typedef struct length_headers {
    int count;
    bool differ;
    const char *first;
} length_headers;

static enum MHD_Result count_length(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    length_headers *seen = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0) return MHD_YES;
    if (seen->count++ == 0)
        seen->first = value;
    else if (strcmp(seen->first, value ? value : "") != 0)
        seen->differ = true;
    return MHD_YES;
}

/* What libmicrohttpd lets through and HTTP/1.1 (RFC 9112) forbids: a request without Host,
 * Content-Length headers that disagree (which length frames the body?). */
static bool well_formed(request_state *state, ksrv_response *r)
{
    struct MHD_Connection *c = state->request.connection;
    if (state->version && !strcmp(state->version, MHD_HTTP_VERSION_1_1) &&
        !MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST)) {
        ksrv_respond_error(r, 400, "missing_host", NULL, "an HTTP/1.1 request needs a Host header");
        return false;
    }
    length_headers seen = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_length, &seen);
    if (seen.differ) {
        ksrv_respond_error(r, 400, "invalid_header", "Content-Length",
                           "the request has %d Content-Length headers that differ", seen.count);
        return false;
    }
    return true;
}

static enum MHD_Result first_call(ksrv_server *server, request_state *state)
{
    ksrv_request *request = &state->request;
    ksrv_response r;
    response_init(&r);
    ksrv_conn_guard_headers_done(server->guard, request->connection);
    if (!well_formed(state, &r) || !ksrv_auth_check(server, request, &r))
        return respond_now(server, state, &r);

    bool path_known;
    char allow[64];
    state->route =
        find_route(request->method, request->path, request, &path_known, allow, sizeof allow);
    if (!state->route && !strcmp(request->method, "OPTIONS") && path_known) {
        /* a CORS preflight from an allowed origin (auth passed) */
        r.status = 204;
        r.body = strdup("");
        r.content_type = "text/plain";
        snprintf(r.header_name, sizeof r.header_name, "Access-Control-Allow-Methods");
        snprintf(r.header_value, sizeof r.header_value, "%s", allow);
        return respond_now(server, state, &r);
    }
    if (!state->route) {
        if (path_known) {
            ksrv_respond_error(&r, 405, "method_not_allowed", NULL,
                               "%s is not allowed on %s (allowed: %s)", request->method,
                               request->path, allow);
            snprintf(r.header_name, sizeof r.header_name, "Allow");
            snprintf(r.header_value, sizeof r.header_value, "%s", allow);
        } else {
            ksrv_respond_error(&r, 404, "not_found", NULL, "no route %s %s", request->method,
                               request->path);
        }
        return respond_now(server, state, &r);
    }
    request->route = state->route->pattern;
    const char *length_header = MHD_lookup_connection_value(request->connection, MHD_HEADER_KIND,
                                                            MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long declared = length_header ? strtoull(length_header, NULL, 10) : 0;
    size_t limit = state->route->body == BODY_UPLOAD ? server->config.max_upload_bytes
                                                     : server->config.max_body_bytes;
    if (state->route->body != BODY_NONE && declared > limit) {
        /* refuse before reading a byte of it */
        ksrv_respond_error(&r, 413, "body_too_large", NULL,
                           "the body has %llu bytes, over the limit of %zu", declared, limit);
        return respond_now(server, state, &r);
    }
    if (state->route->body == BODY_UPLOAD && !open_upload(server, state)) {
        ksrv_respond_write_error(&r, state->write_errno, "the request body");
        return respond_now(server, state, &r);
    }
    return MHD_YES;
}

/* A chunked body has no length to refuse it by up front: it is refused the moment it
 * passes the limit, without reading the rest. libmicrohttpd (0.9.75) queues no answer in
 * the middle of a body (MHD_queue_response wants the headers or the whole request), so
 * the 413 is written to the socket here, best effort and without blocking, before
 * returning MHD_NO, which makes libmicrohttpd close the connection. A client still
 * sending may see the connection reset rather than read the answer. */
static enum MHD_Result refuse_mid_body(ksrv_server *server, request_state *state)
{
    size_t limit = state->route->body == BODY_UPLOAD ? server->config.max_upload_bytes
                                                     : server->config.max_body_bytes;
    ksrv_response r;
    response_init(&r);
    ksrv_respond_error(&r, 413, "body_too_large", NULL,
                       "the body is over the limit of %zu bytes: refused without reading the rest",
                       limit);
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(state->request.connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     strlen(r.body));
    if (info && n > 0 && send(info->connect_fd, head, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) == n)
        (void)send(info->connect_fd, r.body, strlen(r.body), MSG_NOSIGNAL | MSG_DONTWAIT);
    state->responded = true;
    ksrv_stats_count(&server->stats, state->request.route, 413);
    ksrv_log(KSRV_LOG_INFO, "%s %s 413 %.1fms (body over %zu bytes: connection closed)",
             state->request.method, state->request.path, (ksrv_monotonic() - state->started) * 1e3,
             limit);
    free(r.body);
    return MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    ksrv_server *server = cls;
    request_state *state = *con_cls;
    if (!state) {
        state = calloc(1, sizeof *state);
        if (!state) return MHD_NO;
        state->upload_fd = -1;
        state->started = ksrv_monotonic();
        state->version = version;
        state->request.method = method;
        state->request.path = url;
        state->request.connection = connection;
        *con_cls = state;
        return first_call(server, state);
    }
    if (state->responded) {
        *upload_data_size = 0; /* an early error went out: drop the rest of the body */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        take_chunk(server, state, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return state->too_large ? refuse_mid_body(server, state) : MHD_YES;
    }

    /* the whole body is in: run the handler */
    ksrv_response r;
    response_init(&r);
    if (state->too_large) {
        size_t limit = state->route->body == BODY_UPLOAD ? server->config.max_upload_bytes
                                                         : server->config.max_body_bytes;
        ksrv_respond_error(&r, 413, "body_too_large", NULL,
                           "the body is over the limit of %zu bytes", limit);
    } else if (state->write_failed) {
        ksrv_respond_write_error(&r, state->write_errno, "the request body");
    } else {
        if (state->route->body == BODY_UPLOAD) {
            close(state->upload_fd);
            state->upload_fd = -1;
            state->request.upload_path = state->upload_path;
        } else {
            state->request.body = state->body;
            state->request.body_length = state->body_length;
        }
        state->route->handler(server, &state->request, &r);
        /* a handler that kept the upload (renamed it) sets upload_path to NULL */
        if (state->route->body == BODY_UPLOAD && !state->request.upload_path)
            state->upload_path[0] = '\0';
    }
    return send_response(server, state, &r);
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode code)
{
    (void)code;
    ksrv_server *server = cls;
    ksrv_conn_guard_request_done(server->guard, connection);
    request_state *state = *con_cls;
    if (!state) return;
    if (state->upload_fd >= 0) close(state->upload_fd);
    /* an upload no handler kept (errors, aborted transfers) is removed */
    if (state->upload_path[0]) unlink(state->upload_path);
    free(state->body);
    free(state);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list args)
{
    (void)cls;
    char message[512];
    vsnprintf(message, sizeof message, fmt, args);
    size_t n = strlen(message);
    while (n && message[n - 1] == '\n') message[--n] = '\0';
    ksrv_log(KSRV_LOG_DEBUG, "libmicrohttpd: %s", message);
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Decodes %XX in the URL and its query, except %00: libmicrohttpd hands both over as C
 * strings, where a decoded NUL would cut "victim%00zzz" to "victim". Left as "%00", the
 * name is simply unknown (404) or invalid (400). Returns the decoded length. */
static size_t unescape(void *cls, struct MHD_Connection *connection, char *s)
{
    (void)cls, (void)connection;
    char *out = s;
    for (const char *in = s; *in;) {
        int hi, lo;
        if (in[0] == '%' && (hi = hex_digit(in[1])) >= 0 && (lo = hex_digit(in[2])) >= 0 &&
            (hi || lo)) {
            *out++ = (char)(hi * 16 + lo);
            in += 3;
        } else {
            *out++ = *in++;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

bool ksrv_http_start(ksrv_server *server, char **error)
{
    const ksrv_config *config = &server->config;
    struct sockaddr_in6 address6;
    struct sockaddr_in address4;
    struct sockaddr *address;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    memset(&address4, 0, sizeof address4);
    memset(&address6, 0, sizeof address6);
    if (inet_pton(AF_INET, config->listen_address, &address4.sin_addr) == 1) {
        address4.sin_family = AF_INET;
        address4.sin_port = htons((uint16_t)config->port);
        address = (struct sockaddr *)&address4;
    } else if (inet_pton(AF_INET6, config->listen_address, &address6.sin6_addr) == 1) {
        address6.sin6_family = AF_INET6;
        address6.sin6_port = htons((uint16_t)config->port);
        address = (struct sockaddr *)&address6;
        flags |= MHD_USE_IPv6;
    } else {
        if (asprintf(error, "--listen: \"%s\" is not an IPv4 or IPv6 address",
                     config->listen_address) < 0)
            *error = NULL;
        return false;
    }
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES) flags |= MHD_USE_EPOLL;
    server->guard = ksrv_conn_guard_start(config->header_timeout, &server->stats);
    if (!server->guard) {
        if (asprintf(error, "cannot start the connection guard thread") < 0) *error = NULL;
        return false;
    }
    server->daemon = MHD_start_daemon(
        flags, (uint16_t)config->port, NULL, NULL, on_request, server, MHD_OPTION_SOCK_ADDR,
        address, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)config->http_threads,
        /* MHD zeroes a connection's whole pool after every request: at 256 KB that memset
         * was a third of a small request's cost. 32 KB (MHD's default) holds any sane
         * header block; bodies are streamed to handlers in pieces, whatever this size. */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32 * 1024, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)config->max_connections,
        /* one client cannot take every connection: the others (health checks) still get in */
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)config->max_connections_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)config->idle_timeout, MHD_OPTION_NOTIFY_CONNECTION,
        ksrv_conn_guard_notify, server->guard, MHD_OPTION_NOTIFY_COMPLETED, on_completed, server,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
        MHD_OPTION_END);
    if (!server->daemon) {
        if (asprintf(error, "cannot listen on %s:%d (in use, or not an address of this host?)",
                     config->listen_address, config->port) < 0)
            *error = NULL;
        return false;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(server->daemon, MHD_DAEMON_INFO_BIND_PORT);
    server->port = info && info->port ? info->port : config->port;
    return true;
}

void ksrv_http_stop(ksrv_server *server)
{
    if (server->daemon) MHD_stop_daemon(server->daemon);
    server->daemon = NULL;
    ksrv_conn_guard_stop(server->guard); /* after the daemon: no connection is left */
    server->guard = NULL;
}

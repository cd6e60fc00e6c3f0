/*
 * http.c — khttp.h over libcurl. Each thread keeps one easy handle between requests
 * (curl_easy_reset keeps its connection cache), so the requests a command makes reuse
 * one kept-alive connection; TLS, proxies from the environment and redirects are
 * libcurl's. Bodies: memory, or a file streamed by libcurl's read callback. Responses:
 * memory (capped), a file (a 2xx only; error bodies stay in memory for the message), or
 * the caller's callback. A resumed download sends its own Range header so that a 206
 * appends and a 200 (a server or proxy without ranges) starts the file over.
 */
#define _GNU_SOURCE
#include "khttp.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define DEFAULT_TIMEOUT 30.0
#define DEFAULT_MAX_BODY ((size_t)256 << 20)

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static pthread_key_t handle_key;
static long connections_opened;
static bool global_ok;

static void free_handle(void *handle)
{
    curl_easy_cleanup(handle);
}

/* The main thread never runs a key destructor: clean its handle up at exit. */
static void cleanup_at_exit(void)
{
    CURL *handle = pthread_getspecific(handle_key);
    if (handle) {
        pthread_setspecific(handle_key, NULL);
        curl_easy_cleanup(handle);
    }
    curl_global_cleanup();
}

static void global_init(void)
{
    global_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK &&
                pthread_key_create(&handle_key, free_handle) == 0;
    if (global_ok) atexit(cleanup_at_exit);
}

/* This thread's handle, reset for a new request; NULL when libcurl cannot start. */
static CURL *thread_handle(void)
{
    pthread_once(&global_once, global_init);
    if (!global_ok) return NULL;
    CURL *handle = pthread_getspecific(handle_key);
    if (handle) {
        curl_easy_reset(handle);
        return handle;
    }
    handle = curl_easy_init();
    if (handle && pthread_setspecific(handle_key, handle) != 0) {
        curl_easy_cleanup(handle);
        handle = NULL;
    }
    return handle;
}

long khttp_connections_opened(void)
{
    return __atomic_load_n(&connections_opened, __ATOMIC_RELAXED);
}

/* ---- one transfer -------------------------------------------------------------------- */
typedef struct transfer {
    const khttp_request *request;
    khttp_response *response;
    CURL *handle;
    FILE *out;        /* out_file, opened when a 2xx arrives */
    long resume_from; /* bytes of out_file already there */
    char *body;
    size_t length, capacity, cap;
    bool too_big, write_failed, status_known, streaming;
    char error[256];
} transfer;

/* Called with the first bytes of the body: decides where the body goes. */
static void route_body(transfer *t)
{
    t->status_known = true;
    long status = 0;
    curl_easy_getinfo(t->handle, CURLINFO_RESPONSE_CODE, &status);
    t->response->status = (int)status;
    bool success = status >= 200 && status < 300;
    if (!success) return; /* error bodies stay in memory: they carry the message */
    if (t->request->out_file) {
        bool append = status == 206 && t->resume_from > 0;
        t->out = fopen(t->request->out_file, append ? "ab" : "wb");
        if (!t->out) {
            snprintf(t->error, sizeof t->error, "cannot write %s: %s", t->request->out_file,
                     strerror(errno));
            t->write_failed = true;
        }
        t->streaming = true;
    } else if (t->request->on_data) {
        t->streaming = true;
    }
}

static size_t on_body(char *data, size_t size, size_t count, void *context)
{
    transfer *t = context;
    size_t n = size * count;
    if (!t->status_known) route_body(t);
    if (t->write_failed) return 0;
    if (t->streaming && t->out) {
        if (fwrite(data, 1, n, t->out) != n) {
            snprintf(t->error, sizeof t->error, "writing %s: %s", t->request->out_file,
                     strerror(errno));
            t->write_failed = true;
            return 0;
        }
        return n;
    }
    if (t->streaming) {
        if (!t->request->on_data(t->request->on_data_context, data, n)) {
            snprintf(t->error, sizeof t->error, "stopped by the reader");
            t->write_failed = true;
            return 0;
        }
        return n;
    }
    if (t->length + n > t->cap) {
        snprintf(t->error, sizeof t->error, "the response is over %zu bytes", t->cap);
        t->too_big = true;
        return 0;
    }
    if (t->length + n + 1 > t->capacity) {
        size_t capacity = t->capacity ? t->capacity : 16384;
        while (capacity < t->length + n + 1) capacity *= 2;
        char *grown = realloc(t->body, capacity);
        if (!grown) {
            snprintf(t->error, sizeof t->error, "out of memory");
            t->write_failed = true;
            return 0;
        }
        t->body = grown;
        t->capacity = capacity;
    }
    memcpy(t->body + t->length, data, n);
    t->length += n;
    t->body[t->length] = '\0';
    return n;
}

/* Copies a header's value (trimmed) when the line is "name: value". */
static void header_value(const char *line, size_t n, const char *name, char *out, size_t size)
{
    size_t k = strlen(name);
    if (n <= k + 1 || strncasecmp(line, name, k) != 0 || line[k] != ':') return;
    const char *v = line + k + 1;
    size_t m = n - k - 1;
    while (m && (*v == ' ' || *v == '\t')) v++, m--;
    while (m && (v[m - 1] == '\r' || v[m - 1] == '\n' || v[m - 1] == ' ')) m--;
    snprintf(out, size, "%.*s", (int)m, v);
}

static size_t on_header(char *line, size_t size, size_t count, void *context)
{
    transfer *t = context;
    size_t n = size * count;
    if (n >= 5 && !strncmp(line, "HTTP/", 5)) { /* a new response (after a 100 or redirect) */
        t->response->content_type[0] = t->response->retry_after[0] = t->response->etag[0] = '\0';
        return n;
    }
    header_value(line, n, "Content-Type", t->response->content_type,
                 sizeof t->response->content_type);
    header_value(line, n, "Retry-After", t->response->retry_after, sizeof t->response->retry_after);
    header_value(line, n, "ETag", t->response->etag, sizeof t->response->etag);
    return n;
}

/* "Name: value\r\n..." lines into the list; false when out of memory. */
static bool add_headers(struct curl_slist **list, const char *lines)
{
    while (lines && *lines) {
        const char *end = strstr(lines, "\r\n");
        size_t n = end ? (size_t)(end - lines) : strlen(lines);
        if (n > 0) {
            char *line = strndup(lines, n);
            struct curl_slist *grown = line ? curl_slist_append(*list, line) : NULL;
            free(line);
            if (!grown) return false;
            *list = grown;
        }
        lines += n + (end ? 2 : 0);
    }
    return true;
}

static bool add_header(struct curl_slist **list, const char *fmt, const char *value)
{
    char line[1024];
    snprintf(line, sizeof line, fmt, value);
    struct curl_slist *grown = curl_slist_append(*list, line);
    if (grown) *list = grown;
    return grown != NULL;
}

bool khttp_do(const khttp_request *request, khttp_response *response, char *error,
              size_t error_size)
{
    memset(response, 0, sizeof *response);
    CURL *handle = thread_handle();
    if (!handle) {
        snprintf(error, error_size, "libcurl could not start");
        return false;
    }
    transfer t = {.request = request,
                  .response = response,
                  .handle = handle,
                  .cap = request->max_body_bytes ? request->max_body_bytes : DEFAULT_MAX_BODY};
    char url[4096], curl_error[CURL_ERROR_SIZE] = "";
    size_t base = strlen(request->base_url);
    while (base > 0 && request->base_url[base - 1] == '/') base--;
    snprintf(url, sizeof url, "%.*s%s", (int)base, request->base_url, request->path);

    struct curl_slist *headers = NULL;
    FILE *body_file = NULL;
    bool ok = true;
    double timeout = request->timeout_seconds > 0 ? request->timeout_seconds : DEFAULT_TIMEOUT;
    bool has_body = request->body || request->body_file;
    if (request->token && request->token[0])
        ok = ok && add_header(&headers, "Authorization: Bearer %s", request->token);
    if (has_body)
        ok = ok && add_header(&headers, "Content-Type: %s",
                              request->content_type ? request->content_type : "application/json");
    if (request->host_header) ok = ok && add_header(&headers, "Host: %s", request->host_header);
    ok = ok && add_headers(&headers, request->extra_headers);
    if (request->out_file && request->resume) {
        struct stat st;
        if (stat(request->out_file, &st) == 0 && st.st_size > 0) {
            t.resume_from = (long)st.st_size;
            char range[64];
            snprintf(range, sizeof range, "%ld-", t.resume_from);
            ok = ok && add_header(&headers, "Range: bytes=%s", range);
        }
    }
    if (!ok) {
        snprintf(error, error_size, "out of memory");
        curl_slist_free_all(headers);
        return false;
    }
    curl_easy_setopt(handle, CURLOPT_URL, url);
    curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, curl_error);
    curl_easy_setopt(handle, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(handle, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(handle, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(handle, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(handle, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout * 1000));
    /* no byte for `timeout` seconds fails the request; a long stream that keeps talking
     * (server-sent events, a big download) does not */
    curl_easy_setopt(handle, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(handle, CURLOPT_LOW_SPEED_TIME, (long)(timeout + 0.999));
    curl_easy_setopt(handle, CURLOPT_USERAGENT,
                     "kiln/"
                     "0.1");
    if (request->ca_file) curl_easy_setopt(handle, CURLOPT_CAINFO, request->ca_file);
    const char *method = request->method ? request->method : "GET";
    if (request->body_file) {
        body_file = fopen(request->body_file, "rb");
        struct stat st;
        if (!body_file || fstat(fileno(body_file), &st) != 0) {
            snprintf(error, error_size, "cannot read %s: %s", request->body_file, strerror(errno));
            if (body_file) fclose(body_file);
            curl_slist_free_all(headers);
            return false;
        }
        curl_easy_setopt(handle, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(handle, CURLOPT_READDATA, body_file);
        curl_easy_setopt(handle, CURLOPT_INFILESIZE_LARGE, (curl_off_t)st.st_size);
        if (strcmp(method, "PUT") != 0) curl_easy_setopt(handle, CURLOPT_CUSTOMREQUEST, method);
    } else if (request->body || !strcmp(method, "POST") || !strcmp(method, "PUT")) {
        curl_easy_setopt(handle, CURLOPT_POSTFIELDS, request->body ? request->body : "");
        curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)(request->body ? request->body_length : 0));
        if (strcmp(method, "POST") != 0) curl_easy_setopt(handle, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(handle, CURLOPT_CUSTOMREQUEST, method);
    }

    CURLcode rc = curl_easy_perform(handle);
    long status = 0, connects = 0;
    curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(handle, CURLINFO_NUM_CONNECTS, &connects);
    __atomic_add_fetch(&connections_opened, connects, __ATOMIC_RELAXED);
    response->status = (int)status;
    if (rc == CURLE_OK && !t.status_known) route_body(&t); /* an empty body */
    if (t.out && fclose(t.out) != 0 && rc == CURLE_OK) {
        snprintf(t.error, sizeof t.error, "writing %s: %s", request->out_file, strerror(errno));
        t.write_failed = true;
    }
    if (body_file) fclose(body_file);
    curl_slist_free_all(headers);
    /* a request refused early (413 before the whole body was sent) still answered */
    bool answered =
        status > 0 && (rc == CURLE_OK || rc == CURLE_SEND_ERROR) && !t.write_failed && !t.too_big;
    if (!answered) {
        const char *why = t.error[0]      ? t.error
                          : curl_error[0] ? curl_error
                                          : curl_easy_strerror(rc);
        snprintf(error, error_size, "%s: %s", url, why);
        free(t.body);
        response->status = 0;
        return false;
    }
    response->body = t.body ? t.body : t.streaming ? NULL : calloc(1, 1);
    response->body_length = t.length;
    return true;
}

void khttp_response_free(khttp_response *response)
{
    free(response->body);
    response->body = NULL;
    response->body_length = 0;
}

bool khttp_escape(const char *text, char *out, size_t size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || strchr("-._~", *p);
        if (n + (plain ? 1 : 3) >= size) return false;
        if (plain) {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = '\0';
    return true;
}

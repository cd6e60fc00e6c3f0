/*
 * http_client.c — khttp.h's HTTP/1.1 client: parses the base URL, connects (IPv4 or
 * IPv6, with a timeout), writes the request with Content-Length (bodies of files are
 * streamed, never loaded whole), and reads the status line, the headers and the body
 * (Content-Length, chunked, or up to the close). One connection per request keeps it
 * simple and correct; kilnd's clients make few requests.
 */
#define _GNU_SOURCE /* strcasestr */
#include "khttp.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

typedef struct conn {
    int fd;
    char buf[16384];
    size_t start, end; /* unread bytes are buf[start..end) */
    int timeout_ms;
} conn;

static bool fail(char *error, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool fail(char *error, size_t size, const char *fmt, ...)
{
    if (error && size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error, size, fmt, ap);
        va_end(ap);
    }
    return false;
}

/* "http://host[:port][/prefix]" → host, port, prefix (without a trailing slash). */
static bool parse_url(const char *url, char *host, size_t host_size, char *port, size_t port_size,
                      char *prefix, size_t prefix_size)
{
    if (strncmp(url, "http://", 7) != 0) return false;
    const char *p = url + 7, *end = p;
    if (*p == '[') { /* [v6]:port */
        end = strchr(p, ']');
        if (!end || (size_t)(end - p - 1) >= host_size) return false;
        snprintf(host, host_size, "%.*s", (int)(end - p - 1), p + 1);
        end++;
    } else {
        while (*end && *end != ':' && *end != '/') end++;
        if (end == p || (size_t)(end - p) >= host_size) return false;
        snprintf(host, host_size, "%.*s", (int)(end - p), p);
    }
    snprintf(port, port_size, "80");
    if (*end == ':') {
        const char *q = ++end;
        while (*end >= '0' && *end <= '9') end++;
        if (end == q || end - q > 5) return false;
        snprintf(port, port_size, "%.*s", (int)(end - q), q);
    }
    if (*end && *end != '/') return false;
    size_t n = strlen(end);
    while (n > 0 && end[n - 1] == '/') n--;
    if (n >= prefix_size) return false;
    snprintf(prefix, prefix_size, "%.*s", (int)n, end);
    return true;
}

static int connect_to(const char *host, const char *port, int timeout_ms, char *error,
                      size_t error_size)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fail(error, error_size, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, last = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        /* non-blocking connect so a dead address fails within the timeout */
        int flags = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
        int c = connect(fd, a->ai_addr, a->ai_addrlen);
        if (c != 0 && errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t len = sizeof soerr;
            if (poll(&pfd, 1, timeout_ms) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0)
                c = 0;
            else
                errno = soerr ? soerr : ETIMEDOUT;
        }
        if (c != 0) {
            last = errno;
            close(fd);
            fd = -1;
            continue;
        }
        fcntl(fd, F_SETFL, flags);
    }
    freeaddrinfo(res);
    if (fd < 0) fail(error, error_size, "cannot connect to %s:%s: %s", host, port, strerror(last));
    return fd;
}

static bool send_all(conn *c, const void *data, size_t size)
{
    const char *p = data;
    while (size > 0) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        if (poll(&pfd, 1, c->timeout_ms) != 1) return false;
        ssize_t n = send(c->fd, p, size, MSG_NOSIGNAL);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return false;
        p += n;
        size -= (size_t)n;
    }
    return true;
}

/* Refills the buffer; false at EOF, on error or timeout. */
static bool fill(conn *c)
{
    if (c->start == c->end) c->start = c->end = 0;
    if (c->end == sizeof c->buf) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
        if (c->end == sizeof c->buf) return false;
    }
    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int r = poll(&pfd, 1, c->timeout_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r != 1) return false;
        ssize_t n = recv(c->fd, c->buf + c->end, sizeof c->buf - c->end, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return false;
        c->end += (size_t)n;
        return true;
    }
}

/* One CRLF-terminated line (without the CRLF) into line; false on EOF or overlong. */
static bool read_line(conn *c, char *line, size_t size)
{
    for (;;) {
        char *nl = memchr(c->buf + c->start, '\n', c->end - c->start);
        if (nl) {
            size_t n = (size_t)(nl - (c->buf + c->start));
            if (n > 0 && c->buf[c->start + n - 1] == '\r') n--;
            if (n >= size) return false;
            memcpy(line, c->buf + c->start, n);
            line[n] = '\0';
            c->start = (size_t)(nl - c->buf) + 1;
            return true;
        }
        if (!fill(c)) return false;
    }
}

/* Where body bytes go: memory (growing, capped) or a file. */
typedef struct sink {
    FILE *file;
    char *data;
    size_t length, capacity, cap;
} sink;

static bool sink_write(sink *s, const char *data, size_t n)
{
    if (s->file) return fwrite(data, 1, n, s->file) == n;
    if (s->length + n + 1 > s->cap) return false;
    if (s->length + n + 1 > s->capacity) {
        size_t cap = s->capacity ? s->capacity : 4096;
        while (cap < s->length + n + 1) cap *= 2;
        char *grown = realloc(s->data, cap);
        if (!grown) return false;
        s->data = grown;
        s->capacity = cap;
    }
    memcpy(s->data + s->length, data, n);
    s->length += n;
    s->data[s->length] = '\0';
    return true;
}

/* Copies exactly n bytes (or, with n == SIZE_MAX, up to EOF) to the sink. */
static bool copy_body(conn *c, sink *s, size_t n)
{
    bool to_eof = n == SIZE_MAX;
    while (n > 0) {
        if (c->start == c->end && !fill(c)) return to_eof;
        size_t take = c->end - c->start;
        if (!to_eof && take > n) take = n;
        if (!sink_write(s, c->buf + c->start, take)) return false;
        c->start += take;
        if (!to_eof) n -= take;
    }
    return true;
}

static bool copy_chunked(conn *c, sink *s)
{
    char line[256];
    for (;;) {
        if (!read_line(c, line, sizeof line)) return false;
        char *end = NULL;
        unsigned long long n = strtoull(line, &end, 16);
        if (end == line) return false;
        if (n == 0) {
            while (read_line(c, line, sizeof line) && line[0]) {
            } /* trailers */
            return true;
        }
        if (!copy_body(c, s, (size_t)n) || !read_line(c, line, sizeof line)) return false;
    }
}

static bool send_request(conn *c, const khttp_request *r, const char *host, const char *port,
                         const char *prefix, char *error, size_t error_size)
{
    size_t body_length = r->body_length;
    FILE *file = NULL;
    if (r->body_file) {
        file = fopen(r->body_file, "rb");
        struct stat st;
        if (!file || fstat(fileno(file), &st) != 0) {
            if (file) fclose(file);
            return fail(error, error_size, "cannot read %s: %s", r->body_file, strerror(errno));
        }
        body_length = (size_t)st.st_size;
    }
    bool has_body = r->body || r->body_file;
    char head[4096];
    char host_value[300];
    if (strchr(host, ':'))
        snprintf(host_value, sizeof host_value, "[%s]:%s", host, port);
    else
        snprintf(host_value, sizeof host_value, "%s:%s", host, port);
    int n = snprintf(head, sizeof head,
                     "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kiln/1\r\n"
                     "Accept: */*\r\nConnection: close\r\n",
                     r->method, prefix, r->path, r->host_header ? r->host_header : host_value);
    if (r->token && r->token[0])
        n += snprintf(head + n, sizeof head - (size_t)n, "Authorization: Bearer %s\r\n", r->token);
    if (has_body)
        n += snprintf(head + n, sizeof head - (size_t)n,
                      "Content-Type: %s\r\nContent-Length: %zu\r\n",
                      r->content_type ? r->content_type : "application/json", body_length);
    else if (strcmp(r->method, "POST") == 0 || strcmp(r->method, "PUT") == 0)
        n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: 0\r\n");
    if (r->extra_headers) n += snprintf(head + n, sizeof head - (size_t)n, "%s", r->extra_headers);
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    if ((size_t)n >= sizeof head) {
        if (file) fclose(file);
        return fail(error, error_size, "request headers too long");
    }
    bool ok = send_all(c, head, (size_t)n);
    if (ok && r->body) ok = send_all(c, r->body, body_length);
    if (ok && file) {
        char chunk[65536];
        size_t got;
        while (ok && (got = fread(chunk, 1, sizeof chunk, file)) > 0) ok = send_all(c, chunk, got);
        if (ferror(file)) ok = false;
    }
    if (file) fclose(file);
    /* The server may answer early (413, 401) and close before the whole body is sent:
     * the response is still read, so a failed send is not yet an error. */
    (void)ok;
    return true;
}

bool khttp_do(const khttp_request *r, khttp_response *response, char *error, size_t error_size)
{
    memset(response, 0, sizeof *response);
    char host[256], port[8], prefix[512];
    if (!parse_url(r->base_url, host, sizeof host, port, sizeof port, prefix, sizeof prefix))
        return fail(error, error_size, "bad URL \"%s\" (expected http://HOST[:PORT])", r->base_url);
    double timeout = r->timeout_seconds > 0 ? r->timeout_seconds : 30;
    conn *c = calloc(1, sizeof *c);
    if (!c) return fail(error, error_size, "out of memory");
    c->timeout_ms = (int)(timeout * 1000);
    c->fd = connect_to(host, port, c->timeout_ms, error, error_size);
    if (c->fd < 0) {
        free(c);
        return false;
    }
    bool ok = send_request(c, r, host, port, prefix, error, error_size);
    char line[8192];
    long long content_length = -1;
    bool chunked = false;
    if (ok && !read_line(c, line, sizeof line))
        ok = fail(error, error_size, "%s: no response (connection closed or timed out)",
                  r->base_url);
    if (ok && (sscanf(line, "HTTP/1.%*d %d", &response->status) != 1 || response->status < 100))
        ok = fail(error, error_size, "bad status line \"%.80s\"", line);
    while (ok) {
        if (!read_line(c, line, sizeof line)) {
            ok = fail(error, error_size, "truncated response headers");
            break;
        }
        if (!line[0]) break;
        char *colon = strchr(line, ':');
        if (!colon) continue;
        *colon = '\0';
        const char *value = colon + 1;
        while (*value == ' ' || *value == '\t') value++;
        if (strcasecmp(line, "Content-Length") == 0)
            content_length = strtoll(value, NULL, 10);
        else if (strcasecmp(line, "Transfer-Encoding") == 0 && strcasestr(value, "chunked"))
            chunked = true;
        else if (strcasecmp(line, "Content-Type") == 0)
            snprintf(response->content_type, sizeof response->content_type, "%s", value);
        else if (strcasecmp(line, "Retry-After") == 0)
            snprintf(response->retry_after, sizeof response->retry_after, "%s", value);
        else if (strcasecmp(line, "ETag") == 0)
            snprintf(response->etag, sizeof response->etag, "%s", value);
    }
    sink s = {.cap = r->max_body_bytes ? r->max_body_bytes : (size_t)256 << 20};
    bool to_file = ok && r->out_file && response->status >= 200 && response->status < 300;
    if (to_file) {
        s.file = fopen(r->out_file, "wb");
        if (!s.file)
            ok = fail(error, error_size, "cannot write %s: %s", r->out_file, strerror(errno));
    }
    if (ok && strcmp(r->method, "HEAD") != 0 && response->status != 204 &&
        response->status != 304) {
        bool body_ok =
            chunked ? copy_chunked(c, &s)
                    : copy_body(c, &s, content_length >= 0 ? (size_t)content_length : SIZE_MAX);
        if (!body_ok) ok = fail(error, error_size, "truncated or oversized response body");
    }
    if (s.file && fclose(s.file) != 0 && ok)
        ok = fail(error, error_size, "cannot write %s", r->out_file);
    close(c->fd);
    free(c);
    if (!ok) {
        free(s.data);
        memset(response, 0, sizeof *response);
        return false;
    }
    if (!to_file && !s.data) s.data = calloc(1, 1);
    response->body = s.data;
    response->body_length = s.length;
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

/*
 * khttp.h — the kiln client's HTTP requests to kilnd, through libcurl (cli/http.c): http
 * and https URLs (a kilnd behind a TLS reverse proxy), the proxies of the usual
 * environment variables (http_proxy, https_proxy, no_proxy), connections kept alive and
 * reused between the requests of a thread, bodies from memory or streamed from a file,
 * responses into memory, streamed to a file (resumable) or handed to a callback as they
 * arrive (server-sent events).
 *
 * Built as its own library (kiln_http) so the tests that drive a real kilnd use the same
 * client as the command line.
 */
#ifndef KHTTP_H
#define KHTTP_H

#include <stdbool.h>
#include <stddef.h>

/* Called with each piece of a streamed body as it arrives; false stops the transfer. */
typedef bool (*khttp_on_data)(void *context, const char *data, size_t size);

typedef struct khttp_request {
    const char *method;       /* "GET", "POST", ... */
    const char *base_url;     /* "http://127.0.0.1:8080" or "https://host/kiln" (a path
                                 prefix is kept) */
    const char *path;         /* "/v1/jobs?state=running" */
    const char *token;        /* NULL or "": no Authorization header */
    const char *content_type; /* default application/json when there is a body */
    const char *body;         /* in-memory body (may contain NULs) */
    size_t body_length;
    const char *body_file;     /* stream this file as the body instead */
    const char *host_header;   /* override Host (tests); NULL: host[:port] of base_url */
    const char *extra_headers; /* "Name: value\r\n" lines, added as given */
    const char *out_file;      /* write a 2xx body to this file instead of memory */
    bool resume;               /* out_file: continue a partial file with a Range request
                                  (206 appends; a 200 starts the file over) */
    khttp_on_data on_data;     /* stream a 2xx body here instead (out_file NULL) */
    void *on_data_context;
    const char *ca_file;    /* PEM certificates to trust for https (NULL: the system's) */
    double timeout_seconds; /* connect, and no byte for this long; 0: 30 s */
    size_t max_body_bytes;  /* in-memory response cap; 0: 256 MiB */
} khttp_request;

typedef struct khttp_response {
    int status; /* 0 when no response */
    char *body; /* NUL-terminated (malloc'd; NULL when streamed to a file or callback) */
    size_t body_length;
    char content_type[128];
    char retry_after[32];
    char etag[64]; /* the ETag header, quotes included; "" when absent */
} khttp_response;

/* Performs the request. Returns true when a response arrived (any status), false with
 * error filled on a connection, TLS, protocol or file problem. */
bool khttp_do(const khttp_request *request, khttp_response *response, char *error,
              size_t error_size);
void khttp_response_free(khttp_response *response);

/* Percent-encodes a path segment or query value into out; false when it does not fit. */
bool khttp_escape(const char *text, char *out, size_t size);

/* How many connections this process has opened (keep-alive reuses them). */
long khttp_connections_opened(void);

#endif

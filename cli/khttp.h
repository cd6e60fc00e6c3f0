/*
 * khttp.h — a minimal HTTP/1.1 client over plain sockets for talking to kilnd: one
 * request per connection (Connection: close), bodies from memory or streamed from a
 * file, responses into memory or streamed to a file, Content-Length or chunked.
 * No TLS: kilnd is reached on loopback or through a proxy that terminates TLS.
 *
 * Self-contained (libc only) so the integration tests can compile it in as well.
 */
#ifndef KHTTP_H
#define KHTTP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct khttp_request {
    const char *method;       /* "GET", "POST", ... */
    const char *base_url;     /* "http://127.0.0.1:8080" (a path prefix is kept) */
    const char *path;         /* "/v1/jobs?state=running" */
    const char *token;        /* NULL or "": no Authorization header */
    const char *content_type; /* default application/json when there is a body */
    const char *body;         /* in-memory body (may contain NULs) */
    size_t body_length;
    const char *body_file;     /* stream this file as the body instead */
    const char *host_header;   /* override Host (tests); NULL: host[:port] of base_url */
    const char *extra_headers; /* "Name: value\r\n" lines, added as given */
    const char *out_file;      /* write a 2xx body to this file instead of memory */
    double timeout_seconds;    /* per send/receive; 0: 30 s */
    size_t max_body_bytes;     /* in-memory response cap; 0: 256 MiB */
} khttp_request;

typedef struct khttp_response {
    int status; /* 0 when no response */
    char *body; /* NUL-terminated (malloc'd; NULL when streamed to a file) */
    size_t body_length;
    char content_type[128];
    char retry_after[32];
    char etag[64]; /* the ETag header, quotes included; "" when absent */
} khttp_response;

/* Performs the request. Returns true when a response arrived (any status), false with
 * error filled on a connection, protocol or file problem. */
bool khttp_do(const khttp_request *request, khttp_response *response, char *error,
              size_t error_size);
void khttp_response_free(khttp_response *response);

/* Percent-encodes a path segment or query value into out; false when it does not fit. */
bool khttp_escape(const char *text, char *out, size_t size);

#endif

/*
 * ksrv_http.h — what kilnd's HTTP files (http.c, auth.c, server.c, routes_v1*.c) share
 * beyond ksrv.h: the daemon's start/stop, the access checks, the request counters, and
 * small helpers of the v1 routes. Owned by the HTTP side; not part of the helper contract.
 */
#ifndef KSRV_HTTP_H
#define KSRV_HTTP_H

#include "ksrv.h"

#include <microhttpd.h>

/* Starts libmicrohttpd on config.listen_address:port; server->port gets the bound port. */
bool ksrv_http_start(ksrv_server *server, char **error);
void ksrv_http_stop(ksrv_server *server);

/* Reads --token-file into server->token; refuses a file others can read or write. */
bool ksrv_auth_load(ksrv_server *server, char **error);
/* Host/Origin (403) and bearer token (401) checks; false with the error response set. */
bool ksrv_auth_check(ksrv_server *server, ksrv_request *request, ksrv_response *response);
/* The Origin to echo in Access-Control-Allow-Origin, or NULL (not allowed or absent). */
const char *ksrv_auth_cors_origin(ksrv_server *server, struct MHD_Connection *connection);

/* Whether an If-None-Match list names tag (or is "*"); weak comparison, as RFC 9110 has
 * it for If-None-Match. False for a NULL list or an empty tag. (server/http_files.c) */
bool ksrv_etag_listed(const char *list, const char *tag);
/* The response for r->file_path (server/http_files.c): the file, or a range of it (206),
 * or 304 when If-None-Match names it, or 416; r's status and etag set. NULL with r's
 * error body set when the file is gone (or NULL, nothing set, when out of memory). */
struct MHD_Response *ksrv_file_response(struct MHD_Connection *connection, ksrv_response *r);

/* Counts one request for GET /metrics. */
void ksrv_stats_count(ksrv_stats *stats, const char *route, int status);

/* Now in unix seconds (wall clock) and a monotonic clock for durations. */
double ksrv_now(void);
double ksrv_monotonic(void);

/* mkdir -p with mode for the folders it creates. */
bool ksrv_mkdirs(const char *path, mode_t mode);
/* Removes data_dir/relative and the files in it (a flat folder: datasets/<name>,
 * jobs/<id>, models/<name>); nothing when it is absent or the path climbs out. */
void ksrv_remove_folder(const ksrv_server *server, const char *relative);

/* Maps a store status to an HTTP error response (404 with what, 409, 503, 500). */
void ksrv_respond_store_error(ksrv_response *response, kstore *store, kstore_status status,
                              const char *what);
/* The thread store or a 500 response; NULL when it failed. */
kstore *ksrv_store_or_500(ksrv_server *server, ksrv_response *response);
/* A growing text buffer (server/text.c). Zero-initialise; data is NUL-terminated and
 * malloc'd (hand it to a response or free it); failed says an allocation failed. */
typedef struct ksrv_text {
    char *data;
    size_t length, capacity;
    bool failed;
} ksrv_text;
void ksrv_text_put(ksrv_text *t, const char *bytes, size_t n);
void ksrv_text_printf(ksrv_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ksrv_text_json_string(ksrv_text *t, const char *s); /* s as a JSON string literal */
/* A 200 with t's text as the body (taken) and content_type; a 500 when t failed. */
void ksrv_respond_text(ksrv_response *response, ksrv_text *t, const char *content_type);
/* A finite number as the shortest decimal that reads back as the same value: a value
 * that is exactly a float (losses, weights: the engine computes in float32) reads back
 * as that float, any other double as that double. Returns the length written to out,
 * NUL-terminated; out must hold 32 bytes. Non-finite values are the caller's to spell. */
int ksrv_format_number(char out[32], double v);

/* Names of models and datasets: 1-128 of [A-Za-z0-9._-], not starting with '.'. */
bool ksrv_valid_name(const char *name);

#endif

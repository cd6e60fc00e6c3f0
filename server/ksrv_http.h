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

/* The header deadline (server/conn_guard.c): connections still sending a request's headers
 * --header-timeout seconds after they opened (or after their previous answer) are cut.
 * NULL when the thread cannot start. Stop it after the daemon. */
ksrv_conn_guard *ksrv_conn_guard_start(int header_timeout_seconds, ksrv_stats *stats);
void ksrv_conn_guard_stop(ksrv_conn_guard *guard);
/* MHD_OPTION_NOTIFY_CONNECTION's callback (cls: the guard). */
void ksrv_conn_guard_notify(void *cls, struct MHD_Connection *connection, void **socket_context,
                            enum MHD_ConnectionNotificationCode code);
/* A request's headers are in (its first access-handler call); its answer is done. */
void ksrv_conn_guard_headers_done(ksrv_conn_guard *guard, struct MHD_Connection *connection);
void ksrv_conn_guard_request_done(ksrv_conn_guard *guard, struct MHD_Connection *connection);

/* Reads --token-file into server->token; refuses a file others can read or write and a
 * token shorter than KSRV_MIN_TOKEN_LENGTH. */
#define KSRV_MIN_TOKEN_LENGTH 16
bool ksrv_auth_load(ksrv_server *server, char **error);
/* NULL when kilnd may listen on config's address, else why not (malloc'd): an address
 * other than loopback needs a token, or --insecure-no-token. */
char *ksrv_auth_listen_check(const ksrv_config *config, bool have_token);
/* 127.0.0.0/8, ::1 or ::ffff:127.x.y.z. */
bool ksrv_loopback_address(const char *address);
/* Whether a Host header value names this server (see auth.c). */
bool ksrv_auth_host_allowed(const ksrv_server *server, const char *host);
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

/* The space reserve (server.c): a file of the data directory given up so that a delete
 * can commit on a full disk (release: true when there was one), made again after. */
void ksrv_space_reserve_make(ksrv_server *server);
bool ksrv_space_reserve_release(ksrv_server *server);

/* mkdir -p with mode for the folders it creates. */
bool ksrv_mkdirs(const char *path, mode_t mode);
/* Removes data_dir/relative and the files in it (a flat folder: datasets/<name>,
 * jobs/<id>, models/<name>); nothing when it is absent or the path climbs out. */
void ksrv_remove_folder(const ksrv_server *server, const char *relative);

/* A file that could not be written (errno): 507 insufficient_storage when the disk or
 * quota is full, else 500; what names it ("the request body"). */
void ksrv_respond_write_error(ksrv_response *response, int error_number, const char *what);
/* Maps a store status to an HTTP error response (404 with what, 409, 503, 507, 500). */
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
/* The length of the longest prefix of text that is well-formed UTF-8. */
size_t ksrv_utf8_valid_length(const char *text, size_t length);
/* Replaces each byte of *json (cJSON's output: NUL-terminated, malloc'd) that is not part
 * of a well-formed UTF-8 character by the escape \ufffd, so a body stays UTF-8 whatever
 * a request made it echo (a URL's %FF). False when out of memory (*json unchanged). */
bool ksrv_json_repair_utf8(char **json);
/* A finite number as the shortest decimal that reads back as the same value: a value
 * that is exactly a float (losses, weights: the engine computes in float32) reads back
 * as that float, any other double as that double. Returns the length written to out,
 * NUL-terminated; out must hold 32 bytes. Non-finite values are the caller's to spell. */
int ksrv_format_number(char out[32], double v);

/* Names of models and datasets: 1-128 of [A-Za-z0-9._-], not starting with '.'. */
bool ksrv_valid_name(const char *name);

#endif

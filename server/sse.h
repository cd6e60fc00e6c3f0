/*
 * sse.h — server-sent event streams (server/sse.c), shared by a job's events
 * (server/events.c) and its log (server/job_log.c): the buffering, the bounded stream,
 * keep-alives, and the libmicrohttpd callback that drives a route's poll function.
 */
#ifndef KSRV_SSE_H
#define KSRV_SSE_H

#include "ksrv_http.h"

typedef struct ksrv_sse ksrv_sse;

/* Called with nothing buffered: appends whatever is new (ksrv_sse_event) through the
 * calling thread's store, and calls ksrv_sse_end once the stream is complete. */
typedef void (*ksrv_sse_poll)(ksrv_sse *sse, void *context, kstore *store);

/* A text/event-stream response that calls poll until it ends, the server stops or
 * KSRV_SSE_SECONDS pass (EventSource reconnects by itself, after retry_ms). Between
 * polls that found nothing it sleeps at most 100 ms once per call and sends a comment
 * line, so one stream holds its libmicrohttpd thread for at most that long at a time.
 * context is freed with free_context (may be NULL) when the response is done. Sets
 * response (status, content type, the prepared response); a 500 when out of memory. */
#define KSRV_SSE_SECONDS 60.0
void ksrv_sse_respond(ksrv_server *server, ksrv_response *response, int retry_ms,
                      ksrv_sse_poll poll, void *context, void (*free_context)(void *));

/* One event, "id: <id>" first when id >= 0; data (taken and deleted) is one line of JSON. */
void ksrv_sse_event(ksrv_sse *sse, const char *event, int64_t id, cJSON *data);
/* The stream is complete: what is buffered is sent, then it closes. */
void ksrv_sse_end(ksrv_sse *sse);

#endif

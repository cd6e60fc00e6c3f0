/*
 * sse.c — server-sent event streams over a libmicrohttpd callback response. The route
 * gives a poll function; each callback with nothing left to send polls once, and when
 * that finds nothing sleeps POLL_SLEEP_MS and polls again before answering a one-line
 * comment (returning 0 bytes would make MHD spin): so a stream holds its MHD thread for
 * at most POLL_SLEEP_MS at a time, and streams end after KSRV_SSE_SECONDS.
 */
#define _GNU_SOURCE
#include "sse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POLL_SLEEP_MS 100
#define KEEPALIVE_SECONDS 15.0

struct ksrv_sse {
    ksrv_server *server;
    ksrv_sse_poll poll;
    void *context;
    void (*free_context)(void *);
    double started, last_write;
    bool ended;
    ksrv_text pending; /* what is still to send, from offset on */
    size_t offset;
};

static void append(ksrv_sse *s, const char *text, size_t n)
{
    ksrv_text_put(&s->pending, text, n);
}

void ksrv_sse_event(ksrv_sse *s, const char *event, int64_t id, cJSON *data)
{
    char *text = cJSON_PrintUnformatted(data);
    cJSON_Delete(data);
    if (!text) {
        s->pending.failed = true;
        return;
    }
    char head[128];
    int n = id >= 0
                ? snprintf(head, sizeof head, "id: %lld\nevent: %s\ndata: ", (long long)id, event)
                : snprintf(head, sizeof head, "event: %s\ndata: ", event);
    append(s, head, (size_t)n);
    append(s, text, strlen(text));
    append(s, "\n\n", 2);
    free(text);
}

void ksrv_sse_end(ksrv_sse *s)
{
    s->ended = true;
}

static void poll_once(ksrv_sse *s)
{
    kstore *store = ksrv_thread_store(s->server);
    if (!store) {
        s->ended = true; /* the client reconnects, or falls back to polling */
        return;
    }
    s->poll(s, s->context, store);
}

static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    ksrv_sse *s = cls;
    if (s->offset == s->pending.length) {
        s->offset = s->pending.length = 0;
        if (s->ended || s->pending.failed || s->server->stopping ||
            ksrv_monotonic() - s->started > KSRV_SSE_SECONDS)
            return MHD_CONTENT_READER_END_OF_STREAM;
        poll_once(s);
        if (s->pending.length == 0 && !s->ended) {
            struct timespec pause = {0, POLL_SLEEP_MS * 1000000L};
            nanosleep(&pause, NULL);
            if (!s->server->stopping) poll_once(s);
        }
        if (s->pending.failed) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (s->pending.length == 0 && !s->ended) {
            /* nothing new: a comment line (a keep-alive every 15 s, a bare one between) */
            if (ksrv_monotonic() - s->last_write >= KEEPALIVE_SECONDS)
                append(s, ": keep-alive\n\n", 14);
            else
                append(s, ":\n", 2);
        }
        s->last_write = ksrv_monotonic();
        if (s->pending.length == 0) return MHD_CONTENT_READER_END_OF_STREAM;
    }
    size_t n = s->pending.length - s->offset;
    if (n > max) n = max;
    memcpy(buf, s->pending.data + s->offset, n);
    s->offset += n;
    return (ssize_t)n;
}

static void free_stream(void *cls)
{
    ksrv_sse *s = cls;
    if (s->free_context) s->free_context(s->context);
    free(s->pending.data);
    free(s);
}

void ksrv_sse_respond(ksrv_server *server, ksrv_response *response, int retry_ms,
                      ksrv_sse_poll poll, void *context, void (*free_context)(void *))
{
    ksrv_sse *s = calloc(1, sizeof *s);
    if (!s) {
        if (free_context) free_context(context);
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return;
    }
    *s = (ksrv_sse){.server = server,
                    .poll = poll,
                    .context = context,
                    .free_context = free_context,
                    .started = ksrv_monotonic()};
    s->last_write = s->started;
    /* retry: how soon EventSource reconnects after the stream's bounded end */
    char retry[32];
    int n = snprintf(retry, sizeof retry, "retry: %d\n\n", retry_ms);
    append(s, retry, (size_t)n);
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, read_stream, s, free_stream);
    if (!r) {
        free_stream(s);
        ksrv_respond_error(response, 500, "internal", NULL, "cannot create the stream");
        return;
    }
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no"); /* proxies: do not buffer */
    response->status = 200;
    response->content_type = "text/event-stream";
    response->prepared = r;
}

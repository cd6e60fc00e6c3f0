/*
 * conn_guard.c — the header deadline of kilnd's connections: a connection must send the
 * headers of each request within --header-timeout seconds of opening (or of its previous
 * answer, when it is kept alive), however slowly it trickles them in.
 *
 * Why here: libmicrohttpd (0.9.75) has one timeout, for a connection that sends nothing,
 * and every byte restarts it, so a client sending a header byte every few seconds
 * (slowloris) holds its connection for ever. The guard records each connection as it
 * starts (MHD_OPTION_NOTIFY_CONNECTION), http.c says when a request's headers are in
 * and when its answer is done, and a thread cuts, with shutdown(2), the connections that
 * are past their deadline while still waiting for headers: libmicrohttpd then reads the
 * end of the stream and closes them itself. A connection's record is removed under the
 * guard's lock before libmicrohttpd closes its socket (it notifies the close first), so
 * the guard never touches a descriptor that has been closed and reused.
 */
#include "ksrv_http.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

/* How often the thread looks for late connections: the deadline is kept within this. */
#define SWEEP_SECONDS 0.25

typedef struct guarded {
    struct guarded *prev, *next;
    int fd;
    double deadline;      /* monotonic seconds */
    bool waiting_headers; /* between requests or inside a request's headers */
    bool cut;
} guarded;

struct ksrv_conn_guard {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    bool stop;
    double timeout;
    guarded *head;
    ksrv_stats *stats;
};

static void *sweep(void *arg)
{
    ksrv_conn_guard *g = arg;
    pthread_mutex_lock(&g->lock);
    while (!g->stop) {
        double now = ksrv_monotonic();
        for (guarded *c = g->head; c; c = c->next) {
            if (!c->waiting_headers || c->cut || now < c->deadline) continue;
            /* the socket is open: its record would be gone otherwise */
            shutdown(c->fd, SHUT_RDWR);
            c->cut = true;
            pthread_mutex_lock(&g->stats->lock);
            g->stats->header_timeouts++;
            pthread_mutex_unlock(&g->stats->lock);
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        long nanoseconds = until.tv_nsec + (long)(SWEEP_SECONDS * 1e9);
        until.tv_sec += nanoseconds / 1000000000L;
        until.tv_nsec = nanoseconds % 1000000000L;
        pthread_cond_timedwait(&g->wake, &g->lock, &until);
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

ksrv_conn_guard *ksrv_conn_guard_start(int header_timeout_seconds, ksrv_stats *stats)
{
    ksrv_conn_guard *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->wake, NULL);
    g->timeout = header_timeout_seconds;
    g->stats = stats;
    if (pthread_create(&g->thread, NULL, sweep, g) != 0) {
        pthread_cond_destroy(&g->wake);
        pthread_mutex_destroy(&g->lock);
        free(g);
        return NULL;
    }
    return g;
}

void ksrv_conn_guard_stop(ksrv_conn_guard *g)
{
    if (!g) return;
    pthread_mutex_lock(&g->lock);
    g->stop = true;
    pthread_cond_signal(&g->wake);
    pthread_mutex_unlock(&g->lock);
    pthread_join(g->thread, NULL);
    /* the daemon is stopped first: every connection has been closed and forgotten */
    for (guarded *c = g->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    pthread_cond_destroy(&g->wake);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

void ksrv_conn_guard_notify(void *cls, struct MHD_Connection *connection, void **socket_context,
                            enum MHD_ConnectionNotificationCode code)
{
    ksrv_conn_guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
        guarded *c = info ? calloc(1, sizeof *c) : NULL;
        *socket_context = c;
        if (!c) return; /* not guarded: the idle timeout still applies */
        c->fd = info->connect_fd;
        c->waiting_headers = true;
        c->deadline = ksrv_monotonic() + g->timeout;
        pthread_mutex_lock(&g->lock);
        c->next = g->head;
        if (g->head) g->head->prev = c;
        g->head = c;
        pthread_mutex_unlock(&g->lock);
        return;
    }
    guarded *c = *socket_context;
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        g->head = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&g->lock);
    free(c);
    *socket_context = NULL;
}

/* The record of a connection, through the socket context MHD keeps for it. */
static guarded *record_of(struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

void ksrv_conn_guard_headers_done(ksrv_conn_guard *g, struct MHD_Connection *connection)
{
    guarded *c = g ? record_of(connection) : NULL;
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    c->waiting_headers = false;
    pthread_mutex_unlock(&g->lock);
}

void ksrv_conn_guard_request_done(ksrv_conn_guard *g, struct MHD_Connection *connection)
{
    guarded *c = g ? record_of(connection) : NULL;
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    c->waiting_headers = true; /* kept alive: the next request's headers, on the same clock */
    c->deadline = ksrv_monotonic() + g->timeout;
    pthread_mutex_unlock(&g->lock);
}

/*
 * kn_test_http.h — a tiny raw HTTP/1.1 client for the tests that start kilnd in-process
 * (tests/test_server_http.c, tests/test_server_samples.c): one request per connection to
 * 127.0.0.1:port, any method, raw extra header lines and a body the server may refuse
 * early (413) and close on. Raw on purpose: those tests send what a well-behaved client
 * (cli/khttp.c) never would — a foreign Host, a body over the limit. Header-only because
 * it uses Criterion's assertions.
 */
#ifndef KN_TEST_HTTP_H
#define KN_TEST_HTTP_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* head and body point into one malloc'd buffer: kn_test_reply_free frees it. */
typedef struct kn_test_reply {
    int status;
    char *head, *body;
    size_t body_length;
} kn_test_reply;

static __attribute__((unused)) void kn_test_reply_free(kn_test_reply *r)
{
    free(r->head);
    r->head = r->body = NULL;
}

/* Sends head (the request line and headers, as they are) and body on a fresh connection
 * to 127.0.0.1:port and reads the answer to its end; false with *r zeroed when the
 * connection or the status line failed. No assertions: usable from threads. */
static __attribute__((unused)) bool kn_test_http_exchange(int port, const char *head,
                                                          size_t head_length, const void *body,
                                                          size_t length, kn_test_reply *r)
{
    memset(r, 0, sizeof *r);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    struct timeval timeout = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        send(fd, head, head_length, MSG_NOSIGNAL) != (ssize_t)head_length) {
        close(fd);
        return false;
    }
    size_t sent = 0;
    while (sent < length) {
        ssize_t k = send(fd, (const char *)body + sent, length - sent, MSG_NOSIGNAL);
        if (k <= 0) break; /* the server may answer early (413) and close */
        sent += (size_t)k;
    }
    size_t capacity = 1 << 16, used = 0;
    char *buffer = malloc(capacity);
    for (int rounds = 0; buffer && rounds < 100000; rounds++) {
        if (used + 1 >= capacity) {
            char *grown = realloc(buffer, capacity *= 2);
            if (!grown) break;
            buffer = grown;
        }
        ssize_t k = recv(fd, buffer + used, capacity - used - 1, 0);
        if (k <= 0) break;
        used += (size_t)k;
    }
    close(fd);
    if (!buffer) return false;
    buffer[used] = '\0';
    char *split = strstr(buffer, "\r\n\r\n");
    if (sscanf(buffer, "HTTP/1.%*d %d", &r->status) != 1 || !split) {
        free(buffer);
        r->status = 0;
        return false;
    }
    r->head = buffer;
    *split = '\0';
    r->body = split + 4;
    r->body_length = used - (size_t)(r->body - buffer);
    return true;
}

/* One request ("Connection: close") without assertions. extra: raw header lines
 * ("Name: value\r\n"), or NULL; a Host line in it replaces ours. */
static __attribute__((unused)) bool kn_test_http_try(int port, const char *method, const char *path,
                                                     const char *extra, const void *body,
                                                     size_t length, kn_test_reply *r)
{
    char host[64] = "";
    if (!extra || !strstr(extra, "Host:")) /* the default Host: ours */
        snprintf(host, sizeof host, "Host: 127.0.0.1:%d\r\n", port);
    size_t head_size = strlen(method) + strlen(path) + (extra ? strlen(extra) : 0) + 256;
    char *head = malloc(head_size);
    int n = head ? snprintf(head, head_size,
                            "%s %s HTTP/1.1\r\n%s%sContent-Length: %zu\r\nConnection: "
                            "close\r\n\r\n",
                            method, path, host, extra ? extra : "", length)
                 : -1;
    bool ok = n > 0 && kn_test_http_exchange(port, head, (size_t)n, body, length, r);
    free(head);
    if (!ok) memset(r, 0, sizeof *r);
    return ok;
}

/* A non-blocking connection to 127.0.0.1:port from source (an address of 127/8: the
 * server sees another client than 127.0.0.1); -1 when the connect failed at once. */
static __attribute__((unused)) int kn_test_connect_from(int port, const char *source)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    struct sockaddr_in from = {.sin_family = AF_INET};
    inet_pton(AF_INET, source, &from.sin_addr);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        (connect(fd, (struct sockaddr *)&to, sizeof to) != 0 && errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The same, asserting that an answer came. */
static __attribute__((unused)) kn_test_reply kn_test_http(int port, const char *method,
                                                          const char *path, const char *extra,
                                                          const void *body, size_t length)
{
    kn_test_reply r;
    cr_assert(kn_test_http_try(port, method, path, extra, body, length, &r),
              "%s %s: no HTTP answer from port %d (%s)", method, path, port, strerror(errno));
    return r;
}

#endif

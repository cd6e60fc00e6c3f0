/*
 * auth.c — who may talk to kilnd. A page in a browser can reach a localhost port, so
 * every request's Host must be one DNS rebinding cannot produce (an address literal such as
 * 127.0.0.1 or [::1], or localhost, with any port: the port a client used is not kilnd's
 * behind a published container port, a NAT or an SSH tunnel) or name this server (its
 * listen address with the port, a name in --allowed-hosts, an allowed origin's host),
 * and an Origin, when sent, must be http://<one of kilnd's own host:port forms>, the
 * page's own Host, or listed in --allowed-origins: otherwise 403 (DNS rebinding and
 * cross-site requests stop here).
 * With --token-file, every route but /v2/health/... also needs "Authorization: Bearer
 * <token>", compared in constant time; kilnd refuses to listen on an address other than
 * loopback without one unless --insecure-no-token says so (ksrv_auth_listen_check).
 */
#define _GNU_SOURCE /* asprintf */
#include "ksrv_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static char *fail(const char *fmt, const char *a, const char *b)
{
    char *message = NULL;
    if (asprintf(&message, fmt, a, b) < 0) message = NULL;
    return message;
}

bool ksrv_auth_load(ksrv_server *server, char **error)
{
    server->token[0] = '\0';
    const char *path = server->config.token_file;
    if (!path[0]) return true;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        *error = fail("--token-file %s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return false;
    }
    if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
        close(fd);
        char mode[16];
        snprintf(mode, sizeof mode, "%04o", (unsigned)(st.st_mode & 07777));
        *error = fail("--token-file %s has mode %s: it must be a regular file readable only by "
                      "its owner (chmod 600)", path, mode);
        return false;
    }
    char buffer[sizeof server->token + 2];
    ssize_t n = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (n < 0) {
        *error = fail("--token-file %s: %s", path, strerror(errno));
        return false;
    }
    buffer[n] = '\0';
    /* one line: the token; trailing whitespace (an editor's newline) is not part of it */
    while (n > 0 && (buffer[n - 1] == '\n' || buffer[n - 1] == '\r' || buffer[n - 1] == ' ' ||
                     buffer[n - 1] == '\t'))
        buffer[--n] = '\0';
    if (n < KSRV_MIN_TOKEN_LENGTH || (size_t)n >= sizeof server->token ||
        strpbrk(buffer, " \t\r\n")) {
        char range[64];
        snprintf(range, sizeof range, "%d to %zu", KSRV_MIN_TOKEN_LENGTH, sizeof server->token - 1);
        *error = fail("--token-file %s: expected one token of %s characters without spaces "
                      "(a short token is guessed: try `openssl rand -hex 32`)",
                      path, range);
        return false;
    }
    memcpy(server->token, buffer, (size_t)n + 1);
    return true;
}

/* Constant time in the length of the token we hold: no early exit on a mismatch. */
static bool same_token(const char *given, const char *expected)
{
    size_t given_length = strlen(given), expected_length = strlen(expected);
    unsigned char diff = given_length != expected_length;
    for (size_t i = 0; i < expected_length; i++)
        diff |= (unsigned char)expected[i] ^ (unsigned char)(i < given_length ? given[i] : 0);
    return diff == 0;
}

static bool host_is_ours(const ksrv_server *server, const char *host, size_t length);
static bool host_of_allowed_origin(const ksrv_server *server, const char *host);

/* 127.0.0.0/8, ::1 and ::ffff:127.x.y.z: only this machine can connect. */
bool ksrv_loopback_address(const char *address)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, address, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, address, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

char *ksrv_auth_listen_check(const ksrv_config *config, bool have_token)
{
    if (have_token || config->insecure_no_token || ksrv_loopback_address(config->listen_address))
        return NULL;
    return fail("--listen %s reaches beyond this machine: give a --token-file (every route "
                "but /v2/health then needs it), or --insecure-no-token to serve %s to anyone "
                "who can reach it",
                config->listen_address, "kilnd");
}

/* Splits a Host value into its host ("[v6]" keeps its brackets) and port (-1 when none);
 * false when it is not host[:port]. */
static bool split_host(const char *host, size_t length, char *name, size_t size, int *port)
{
    const char *end = host + length;
    const char *colon = NULL;
    if (length > 0 && host[0] == '[') {
        const char *close = memchr(host, ']', length);
        if (!close) return false;
        colon = close + 1 < end ? close + 1 : NULL;
        if (colon && *colon != ':') return false;
    } else {
        colon = memchr(host, ':', length);
    }
    size_t name_length = colon ? (size_t)(colon - host) : length;
    if (name_length == 0 || name_length >= size) return false;
    memcpy(name, host, name_length);
    name[name_length] = '\0';
    *port = -1;
    if (colon) {
        char *stop;
        long p = strtol(colon + 1, &stop, 10);
        if (stop != end || colon + 1 == end || p < 0 || p > 65535) return false;
        *port = (int)p;
    }
    return true;
}

/* Is host ("name" or "name:port") in --allowed-hosts? An entry without a port takes any. */
static bool host_listed(const ksrv_server *server, const char *host, size_t length)
{
    char name[256];
    int port;
    if (!split_host(host, length, name, sizeof name, &port)) return false;
    const char *list = server->config.allowed_hosts;
    while (*list) {
        while (*list == ',' || *list == ' ') list++;
        size_t n = strcspn(list, ", ");
        char entry[256];
        int entry_port;
        if (n && split_host(list, n, entry, sizeof entry, &entry_port) &&
            !strcasecmp(entry, name) && (entry_port < 0 || entry_port == port))
            return true;
        list += n;
    }
    return false;
}

/* A Host that DNS rebinding cannot produce: the attack needs a name whose DNS answer the
 * attacker controls, so an address literal (dotted IPv4, IPv6 in brackets: the forms a
 * browser sends) or localhost is safe with any port. The port is not checked because it
 * is the client's view: behind `docker run -p 9000:8080`, a NAT or an SSH tunnel the
 * Host says 9000 while kilnd listens on 8080. */
static bool host_cannot_be_rebound(const char *host, size_t length)
{
    char name[128];
    int port;
    if (!split_host(host, length, name, sizeof name, &port)) return false;
    if (!strcasecmp(name, "localhost")) return true;
    struct in_addr a4;
    struct in6_addr a6;
    size_t n = strlen(name);
    if (name[0] != '[') return inet_pton(AF_INET, name, &a4) == 1;
    char bare[128];
    snprintf(bare, sizeof bare, "%.*s", (int)n - 2, name + 1);
    char *zone = strchr(bare, '%');
    if (zone) *zone = '\0';
    return inet_pton(AF_INET6, bare, &a6) == 1;
}

bool ksrv_auth_host_allowed(const ksrv_server *server, const char *host)
{
    size_t length = strlen(host);
    return host_cannot_be_rebound(host, length) || host_is_ours(server, host, length) ||
           host_listed(server, host, length) || host_of_allowed_origin(server, host);
}

/* host:port forms that name this server. */
static bool host_is_ours(const ksrv_server *server, const char *host, size_t length)
{
    char candidate[128];
    const char *names[] = {server->config.listen_address, "localhost", "127.0.0.1", "[::1]"};
    for (int i = 0; i < 4; i++) {
        bool v6 = strchr(names[i], ':') && names[i][0] != '[';
        snprintf(candidate, sizeof candidate, v6 ? "[%s]:%d" : "%s:%d", names[i], server->port);
        if (strlen(candidate) == length && !strncasecmp(candidate, host, length)) return true;
    }
    return false;
}

/* Is origin (scheme://host[:port]) in --allowed-origins? */
static bool origin_listed(const ksrv_server *server, const char *origin, size_t length)
{
    const char *list = server->config.allowed_origins;
    while (*list) {
        while (*list == ',' || *list == ' ') list++;
        size_t n = strcspn(list, ", ");
        while (n > 0 && list[n - 1] == '/') n--;
        if (n && n == length && !strncasecmp(list, origin, length)) return true;
        list += strcspn(list, ",");
    }
    return false;
}

/* The Host of any allowed origin also addresses us (a reverse proxy in front). */
static bool host_of_allowed_origin(const ksrv_server *server, const char *host)
{
    const char *list = server->config.allowed_origins;
    while (*list) {
        while (*list == ',' || *list == ' ') list++;
        size_t n = strcspn(list, ", ");
        const char *scheme_end = memmem(list, n, "://", 3);
        if (scheme_end) {
            const char *h = scheme_end + 3;
            size_t hn = n - (size_t)(h - list);
            while (hn > 0 && h[hn - 1] == '/') hn--;
            if (hn && strlen(host) == hn && !strncasecmp(h, host, hn)) return true;
        }
        list += strcspn(list, ",");
    }
    return false;
}

static bool origin_allowed(const ksrv_server *server, const char *origin, const char *host)
{
    size_t length = strlen(origin);
    while (length > 0 && origin[length - 1] == '/') length--;
    if (origin_listed(server, origin, length)) return true;
    if (length > 7 && !strncasecmp(origin, "http://", 7)) {
        if (host_is_ours(server, origin + 7, length - 7)) return true;
        /* a same-origin page (Origin == Host) is ours when its Host is */
        if (host && strlen(host) == length - 7 && !strncasecmp(origin + 7, host, length - 7) &&
            ksrv_auth_host_allowed(server, host))
            return true;
    }
    return false;
}

const char *ksrv_auth_cors_origin(ksrv_server *server, struct MHD_Connection *connection)
{
    const char *origin = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Origin");
    const char *host = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Host");
    return origin && origin_allowed(server, origin, host) ? origin : NULL;
}

bool ksrv_auth_check(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    struct MHD_Connection *c = request->connection;
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    /* HTTP/1.0 clients may omit Host (http.c refuses HTTP/1.1 without); browsers send it */
    if (host && !ksrv_auth_host_allowed(server, host)) {
        ksrv_respond_error(response, 403, "forbidden_host", NULL,
                           "Host \"%.100s\" does not name this server (see --allowed-hosts)", host);
        return false;
    }
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    if (origin && !origin_allowed(server, origin, host)) {
        ksrv_respond_error(response, 403, "forbidden_origin", NULL,
                           "Origin \"%.100s\" is not allowed (see --allowed-origins)", origin);
        return false;
    }
    if (!server->token[0] || !strncmp(request->path, "/v2/health/", 11)) return true;
    /* The dashboard's page and static files hold no data and a browser cannot attach a
     * token when opening a page; every API call the page makes still needs the token. */
    if (!strcmp(request->method, "GET") &&
        (!strcmp(request->path, "/") || !strncmp(request->path, "/ui/", 4)))
        return true;
    /* a preflight carries no credentials; the request that follows it must */
    if (!strcmp(request->method, "OPTIONS") && origin) return true;
    const char *authorization = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                            MHD_HTTP_HEADER_AUTHORIZATION);
    if (authorization && !strncasecmp(authorization, "Bearer ", 7)) {
        const char *token = authorization + 7;
        while (*token == ' ') token++;
        if (same_token(token, server->token)) return true;
    }
    ksrv_respond_error(response, 401, "unauthorized", NULL,
                       "this server needs \"Authorization: Bearer <token>\"");
    snprintf(response->header_name, sizeof response->header_name, "WWW-Authenticate");
    snprintf(response->header_value, sizeof response->header_value, "Bearer");
    return false;
}

/*
 * dist_hosts.c — where a distributed job's processes run and the mpirun command that
 * starts them, shared by `kiln train --processes` and kilnd:
 *
 *   - hostfiles in Open MPI's format ("node1 slots=4", # comments), each host checked
 *     before anything starts: this machine's names need nothing, another host must
 *     resolve and answer on ssh's port (mpirun reaches it through ssh), within a timeout;
 *   - the default when there is no hostfile: this machine, with as many slots as it has
 *     cores (or GPUs, for a job with one GPU per process);
 *   - mpirun's argument vector: the process count, the hosts, the environment the ranks
 *     need, and what Open MPI asks of a root user (--allow-run-as-root).
 */
#define _GNU_SOURCE
#include "kapi.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SSH_PORT "22"

static void set_error(char *error, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(char *error, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error, size, fmt, ap);
    va_end(ap);
}

bool kapi_host_is_local(const char *host)
{
    char self[256] = "";
    gethostname(self, sizeof self - 1);
    if (!strcmp(host, "localhost") || !strncmp(host, "127.", 4) || !strcmp(host, "::1"))
        return true;
    if (!self[0]) return false;
    if (!strcmp(host, self)) return true;
    /* "node1" for "node1.cluster", and the other way round */
    size_t n = strcspn(self, "."), m = strcspn(host, ".");
    return n == m && !strncmp(host, self, n) && (!self[n] || !host[m]);
}

/* Resolves host and connects to its ssh port within timeout_ms; false with why. */
static bool reachable(const char *host, int timeout_ms, char *why, size_t size)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *list = NULL;
    int rc = getaddrinfo(host, SSH_PORT, &hints, &list);
    if (rc != 0) {
        set_error(why, size, "its name does not resolve (%s)", gai_strerror(rc));
        return false;
    }
    bool ok = false;
    int last_errno = ETIMEDOUT;
    for (struct addrinfo *a = list; a && !ok; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            ok = true;
        } else if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t len = sizeof err;
            if (poll(&p, 1, timeout_ms) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
                ok = true;
            else
                last_errno = err ? err : ETIMEDOUT;
        } else {
            last_errno = errno;
        }
        close(fd);
    }
    freeaddrinfo(list);
    if (!ok)
        set_error(why, size, "ssh (port %s) does not answer: %s", SSH_PORT,
                  last_errno == ETIMEDOUT ? "no answer within the timeout" : strerror(last_errno));
    return ok;
}

void kapi_hosts_free(kapi_hosts *hosts)
{
    if (!hosts) return;
    free(hosts->items);
    memset(hosts, 0, sizeof *hosts);
}

kapi_hosts_status kapi_hosts_load(const char *path, kapi_hosts *out, int timeout_ms, char *error,
                                  size_t error_size)
{
    memset(out, 0, sizeof *out);
    snprintf(out->path, sizeof out->path, "%s", path);
    FILE *f = fopen(path, "r");
    if (!f) {
        set_error(error, error_size, "hostfile %s: %s", path, strerror(errno));
        return KAPI_HOSTS_INVALID;
    }
    char line[1024];
    int number = 0;
    kapi_hosts_status status = KAPI_HOSTS_OK;
    while (status == KAPI_HOSTS_OK && fgets(line, sizeof line, f)) {
        number++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *save = NULL, *word = strtok_r(line, " \t\r\n", &save);
        if (!word) continue;
        if (strlen(word) >= sizeof out->items[0].name) {
            set_error(error, error_size, "hostfile %s line %d: host name too long", path, number);
            status = KAPI_HOSTS_INVALID;
            break;
        }
        kapi_host host = {.slots = 1, .line = number};
        snprintf(host.name, sizeof host.name, "%s", word);
        while ((word = strtok_r(NULL, " \t\r\n", &save))) {
            char *end = NULL;
            long v = 0;
            if (!strncmp(word, "slots=", 6)) {
                v = strtol(word + 6, &end, 10);
                if (*end || end == word + 6 || v < 1 || v > 100000) {
                    set_error(error, error_size,
                              "hostfile %s line %d: slots: expected a positive integer, got "
                              "\"%.40s\"",
                              path, number, word + 6);
                    status = KAPI_HOSTS_INVALID;
                    break;
                }
                host.slots = (int)v;
            } else if (strncmp(word, "max_slots=", 10) != 0) {
                set_error(error, error_size,
                          "hostfile %s line %d: unknown \"%.40s\" (expected \"HOST slots=N\")",
                          path, number, word);
                status = KAPI_HOSTS_INVALID;
                break;
            }
        }
        if (status != KAPI_HOSTS_OK) break;
        kapi_host *grown = realloc(out->items, sizeof *grown * (size_t)(out->count + 1));
        if (!grown) {
            set_error(error, error_size, "hostfile %s: out of memory", path);
            status = KAPI_HOSTS_INVALID;
            break;
        }
        out->items = grown;
        host.local = kapi_host_is_local(host.name);
        out->items[out->count++] = host;
        out->slots += host.slots;
    }
    fclose(f);
    if (status == KAPI_HOSTS_OK && out->count == 0) {
        set_error(error, error_size, "hostfile %s: no hosts (expected lines \"HOST slots=N\")",
                  path);
        status = KAPI_HOSTS_INVALID;
    }
    for (int i = 0; status == KAPI_HOSTS_OK && i < out->count; i++) {
        char why[256];
        if (out->items[i].local || reachable(out->items[i].name, timeout_ms, why, sizeof why))
            continue;
        set_error(error, error_size, "hostfile %s line %d: host %s is not reachable: %s", path,
                  out->items[i].line, out->items[i].name, why);
        status = KAPI_HOSTS_UNREACHABLE;
    }
    if (status != KAPI_HOSTS_OK) kapi_hosts_free(out);
    return status;
}

kapi_hosts_status kapi_hosts_local(int slots, kapi_hosts *out)
{
    memset(out, 0, sizeof *out);
    out->items = calloc(1, sizeof *out->items);
    if (!out->items) return KAPI_HOSTS_INVALID;
    out->count = 1;
    snprintf(out->items[0].name, sizeof out->items[0].name, "localhost");
    out->items[0].slots = slots > 0 ? slots : 1;
    out->items[0].local = true;
    out->slots = out->items[0].slots;
    return KAPI_HOSTS_OK;
}

bool kapi_hosts_all_local(const kapi_hosts *hosts)
{
    for (int i = 0; i < hosts->count; i++)
        if (!hosts->items[i].local) return false;
    return true;
}

bool kapi_hosts_write(const kapi_hosts *hosts, const char *path, char *error, size_t error_size)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        set_error(error, error_size, "%s: %s", path, strerror(errno));
        return false;
    }
    for (int i = 0; i < hosts->count; i++)
        fprintf(f, "%s slots=%d\n", hosts->items[i].name, hosts->items[i].slots);
    if (fclose(f) != 0) {
        set_error(error, error_size, "%s: %s", path, strerror(errno));
        return false;
    }
    return true;
}

/* ---- mpirun's command line -------------------------------------------------------------- */

void kapi_argv_free(char **argv)
{
    if (!argv) return;
    for (char **a = argv; *a; a++) free(*a);
    free(argv);
}

typedef struct argv_builder {
    char **items;
    int count, capacity;
    bool failed;
} argv_builder;

static void add(argv_builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(argv_builder *b, const char *fmt, ...)
{
    if (b->failed) return;
    if (b->count + 2 > b->capacity) {
        int capacity = b->capacity ? 2 * b->capacity : 32;
        char **grown = realloc(b->items, sizeof *grown * (size_t)capacity);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->items = grown;
        b->capacity = capacity;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&b->items[b->count], fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    b->items[++b->count] = NULL;
}

char **kapi_mpirun_argv(const kapi_launch *l)
{
    argv_builder b = {0};
    add(&b, "%s", l->mpirun);
    add(&b, "-np");
    add(&b, "%d", l->processes);
    add(&b, "--hostfile");
    add(&b, "%s", l->hostfile);
    /* Open MPI refuses root unless told; a root user asked for this run */
    if (geteuid() == 0) add(&b, "--allow-run-as-root");
    /* the ranks' threads (and a loaded machine) decide where they run; stdin is not the
     * ranks' (a background mpirun must not stop for the terminal) */
    add(&b, "--bind-to");
    add(&b, "none");
    add(&b, "--stdin");
    add(&b, "none");
    if (l->oversubscribe) add(&b, "--oversubscribe");
    /* names of the variables every rank needs, wherever it runs */
    for (int i = 0; l->export_env && l->export_env[i]; i++) {
        if (!getenv(l->export_env[i])) continue;
        add(&b, "-x");
        add(&b, "%s", l->export_env[i]);
    }
    for (int i = 0; l->program[i]; i++) add(&b, "%s", l->program[i]);
    if (b.failed) {
        for (int i = 0; i < b.count; i++) free(b.items[i]);
        free(b.items);
        return NULL;
    }
    return b.items;
}

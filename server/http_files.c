/*
 * http_files.c — file downloads (checkpoints, final weights): the file streamed from
 * disk, a validator so a client can ask "has it changed?" (ETag, If-None-Match -> 304),
 * and byte ranges so an interrupted download of a large checkpoint resumes where it
 * stopped (Range: bytes=..., If-Range; `curl -C -` does this) instead of starting over.
 * A stored checkpoint never changes once written (it is renamed into place whole), so
 * its size and modification time identify it.
 */
#include "ksrv_http.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void file_tag(const struct stat *st, char etag[24])
{
    uint64_t modified = (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec;
    uint64_t mixed = modified * 0x9e3779b97f4a7c15ull ^ (uint64_t)st->st_size;
    snprintf(etag, 24, "\"f%015" PRIx64 "\"", (uint64_t)(mixed & 0x0fffffffffffffffull));
}

/* The one range of a "bytes=a-b", "bytes=a-" or "bytes=-n" header over size bytes:
 * 1 with [*first, *last], 0 when the header is to be ignored (absent, malformed, several
 * ranges: the whole file is sent, as RFC 9110 allows), -1 when unsatisfiable. */
static int parse_range(const char *header, int64_t size, int64_t *first, int64_t *last)
{
    if (!header || strncmp(header, "bytes=", 6) != 0 || strchr(header, ',')) return 0;
    const char *p = header + 6;
    char *end;
    if (*p == '-') { /* the last n bytes */
        long long n = strtoll(p + 1, &end, 10);
        if (end == p + 1 || *end || n < 0) return 0;
        if (n == 0 || size == 0) return -1;
        *first = n >= size ? 0 : size - n;
        *last = size - 1;
        return 1;
    }
    long long a = strtoll(p, &end, 10);
    if (end == p || *end != '-' || a < 0) return 0;
    p = end + 1;
    long long b = size - 1;
    if (*p) {
        b = strtoll(p, &end, 10);
        if (end == p || *end || b < a) return 0;
    }
    if (a >= size) return -1;
    *first = a;
    *last = b >= size ? size - 1 : b;
    return 1;
}

bool ksrv_etag_listed(const char *list, const char *tag)
{
    if (!list || !tag[0]) return false;
    size_t n = strlen(tag);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (*p == '*') return true;
        if (p[0] == 'W' && p[1] == '/') p += 2;
        if (!strncmp(p, tag, n) && (p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '\t'))
            return true;
        while (*p && *p != ',') p++;
    }
    return false;
}

struct MHD_Response *ksrv_file_response(struct MHD_Connection *connection, ksrv_response *r)
{
    int fd = open(r->file_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        ksrv_respond_error(r, 404, "not_found", NULL, "the file is gone");
        return NULL;
    }
    file_tag(&st, r->etag);
    const char *if_none_match =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "If-None-Match");
    if (ksrv_etag_listed(if_none_match, r->etag)) {
        close(fd);
        r->status = 304;
        return MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    }
    int64_t size = (int64_t)st.st_size, first = 0, last = size - 1;
    const char *range = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Range");
    /* If-Range: the range only holds for the file the client has part of */
    const char *if_range = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "If-Range");
    int ranged =
        if_range && strcmp(if_range, r->etag) ? 0 : parse_range(range, size, &first, &last);
    char content_range[80];
    if (ranged < 0) {
        close(fd);
        ksrv_respond_error(r, 416, "range_not_satisfiable", NULL,
                           "Range %.60s: the file has %" PRId64 " bytes", range, size);
        snprintf(content_range, sizeof content_range, "bytes */%" PRId64, size);
        struct MHD_Response *refusal =
            MHD_create_response_from_buffer(strlen(r->body), r->body, MHD_RESPMEM_MUST_COPY);
        if (refusal) MHD_add_response_header(refusal, "Content-Range", content_range);
        return refusal;
    }
    struct MHD_Response *response =
        MHD_create_response_from_fd_at_offset64((uint64_t)(last - first + 1), fd, (uint64_t)first);
    if (!response) {
        close(fd);
        return NULL;
    }
    MHD_add_response_header(response, "Accept-Ranges", "bytes");
    if (ranged > 0) {
        r->status = 206;
        snprintf(content_range, sizeof content_range, "bytes %" PRId64 "-%" PRId64 "/%" PRId64,
                 first, last, size);
        MHD_add_response_header(response, "Content-Range", content_range);
    }
    return response;
}

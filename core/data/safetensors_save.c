/*
 * safetensors_save.c — writing safetensors files atomically: the header and data go to
 * "<path>.tmp.<pid>", which is flushed, fsynced and renamed over path, and then the
 * folder is fsynced, so a crash leaves either the old file or the new one, never half.
 *
 * The layout follows the python library: tensors sorted by name, data contiguous in
 * that order, "__metadata__" first in the header, the header padded with spaces so the
 * data starts at a multiple of 8.
 */
#include "kn_internal.h"
#include "kn_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- a growing string for the header ------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} sbuf;

static void put(sbuf *s, const char *text, size_t n)
{
    if (s->failed) return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + n + 1) cap *= 2;
        char *grown = realloc(s->data, cap);
        if (!grown) {
            s->failed = true;
            return;
        }
        s->data = grown;
        s->cap = cap;
    }
    memcpy(s->data + s->len, text, n);
    s->len += n;
    s->data[s->len] = '\0';
}

static void puts_(sbuf *s, const char *text)
{
    put(s, text, strlen(text));
}

static void put_uint(sbuf *s, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    put(s, tmp, (size_t)n);
}

/* A JSON string literal; bytes >= 0x80 (UTF-8) pass through as they are. */
static void put_json_string(sbuf *s, const char *text)
{
    put(s, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            put(s, esc, 2);
        } else if (*p < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            put(s, esc, 6);
        } else {
            put(s, (const char *)p, 1);
        }
    }
    put(s, "\"", 1);
}

/* ---- saving ----------------------------------------------------------------------- */

typedef struct {
    const char *name;
    kn_tensor *tensor; /* contiguous, one reference owned here */
    uint64_t bytes;
} save_item;

static int compare_name(const void *a, const void *b)
{
    return strcmp(((const save_item *)a)->name, ((const save_item *)b)->name);
}

static bool write_all(FILE *f, const void *data, size_t n)
{
    return n == 0 || fwrite(data, 1, n, f) == n;
}

/* fsync of the folder holding path, so the rename itself is durable. */
static int sync_folder(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    free(copy);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static kn_status check_args(const char *path, const char *const *names, kn_tensor *const *tensors,
                            int count, const kn_safetensors_meta *metadata, int metadata_count)
{
    if (!path) return kn__error(KN_ERR_NULL, "safetensors_save: path is NULL");
    if (count < 0 || metadata_count < 0 || (count && (!names || !tensors)) ||
        (metadata_count && !metadata))
        return kn__error(KN_ERR_NULL, "safetensors_save %s: bad tensor or metadata list", path);
    for (int i = 0; i < count; i++) {
        if (!names[i] || !names[i][0])
            return kn__error(KN_ERR_VALUE, "safetensors_save %s: tensor %d has no name", path, i);
        if (strcmp(names[i], "__metadata__") == 0)
            return kn__error(KN_ERR_VALUE,
                             "safetensors_save %s: '__metadata__' is reserved and "
                             "cannot name a tensor",
                             path);
        if (!tensors[i])
            return kn__error(KN_ERR_NULL, "safetensors_save %s: tensor '%s' is NULL", path,
                             names[i]);
        if (tensors[i]->device.type != KN_DEVICE_CPU)
            return kn__error(KN_ERR_DEVICE, "safetensors_save %s: tensor '%s' must be on the cpu",
                             path, names[i]);
        for (int k = 0; k < i; k++)
            if (strcmp(names[k], names[i]) == 0)
                return kn__error(KN_ERR_VALUE,
                                 "safetensors_save %s: tensor name '%s' appears "
                                 "twice",
                                 path, names[i]);
    }
    for (int i = 0; i < metadata_count; i++) {
        if (!metadata[i].key || !metadata[i].value)
            return kn__error(KN_ERR_NULL,
                             "safetensors_save %s: metadata entry %d has a NULL key "
                             "or value",
                             path, i);
        for (int k = 0; k < i; k++)
            if (strcmp(metadata[k].key, metadata[i].key) == 0)
                return kn__error(KN_ERR_VALUE,
                                 "safetensors_save %s: metadata key '%s' appears "
                                 "twice",
                                 path, metadata[i].key);
    }
    return KN_OK;
}

static void build_header(sbuf *h, const save_item *items, int count,
                         const kn_safetensors_meta *metadata, int metadata_count)
{
    puts_(h, "{");
    if (metadata_count) {
        puts_(h, "\"__metadata__\":{");
        for (int i = 0; i < metadata_count; i++) {
            if (i) puts_(h, ",");
            put_json_string(h, metadata[i].key);
            puts_(h, ":");
            put_json_string(h, metadata[i].value);
        }
        puts_(h, "}");
    }
    uint64_t offset = 0;
    for (int i = 0; i < count; i++) {
        const kn_tensor *t = items[i].tensor;
        if (i || metadata_count) puts_(h, ",");
        put_json_string(h, items[i].name);
        puts_(h, t->dtype == KN_FLOAT32 ? ":{\"dtype\":\"F32\",\"shape\":["
                                        : ":{\"dtype\":\"I64\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) puts_(h, ",");
            put_uint(h, (uint64_t)t->shape[d]);
        }
        puts_(h, "],\"data_offsets\":[");
        put_uint(h, offset);
        puts_(h, ",");
        put_uint(h, offset + items[i].bytes);
        puts_(h, "]}");
        offset += items[i].bytes;
    }
    puts_(h, "}");
    while (h->len % 8) puts_(h, " ");
}

kn_status kn_safetensors_save(const char *path, const char *const *names, kn_tensor *const *tensors,
                              int count, const kn_safetensors_meta *metadata, int metadata_count)
{
    kn_status status = check_args(path, names, tensors, count, metadata, metadata_count);
    if (status != KN_OK) return status;
    save_item *items = calloc((size_t)(count ? count : 1), sizeof *items);
    if (!items) return kn__error(KN_ERR_MEMORY, "safetensors_save %s: out of memory", path);
    sbuf header = {0};
    char *tmp = NULL;
    FILE *f = NULL;
    for (int i = 0; i < count; i++) {
        items[i].name = names[i];
        /* contiguous copies of strided tensors; int64 stays int64, everything else F32 */
        items[i].tensor = kn__contiguous_raw(tensors[i]);
        if (!items[i].tensor) {
            status = kn_last_status();
            goto done;
        }
        items[i].bytes = (uint64_t)kn_numel(items[i].tensor) * kn_dtype_size(tensors[i]->dtype);
    }
    qsort(items, (size_t)count, sizeof *items, compare_name);
    build_header(&header, items, count, metadata, metadata_count);
    if (header.failed) {
        status = kn__error(KN_ERR_MEMORY, "safetensors_save %s: out of memory", path);
        goto done;
    }
    size_t tmp_size = strlen(path) + 32;
    tmp = malloc(tmp_size);
    if (!tmp) {
        status = kn__error(KN_ERR_MEMORY, "safetensors_save %s: out of memory", path);
        goto done;
    }
    snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid());
    f = fopen(tmp, "wb");
    if (!f) {
        status = kn__error(KN_ERR_VALUE, "safetensors_save %s: cannot create %s: %s", path, tmp,
                           strerror(errno));
        goto done;
    }
    uint64_t hlen = header.len;
    bool ok = write_all(f, &hlen, 8) && write_all(f, header.data, header.len);
    for (int i = 0; ok && i < count; i++)
        ok = write_all(f, kn__data_ptr(items[i].tensor), (size_t)items[i].bytes);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int saved_errno = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        saved_errno = errno;
    }
    f = NULL;
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        saved_errno = errno;
    }
    if (!ok) {
        unlink(tmp);
        status = kn__error(KN_ERR_VALUE, "safetensors_save %s: writing failed: %s", path,
                           strerror(saved_errno));
        errno = saved_errno; /* for callers that tell a full disk apart (kilnd: 507) */
        goto done;
    }
    if (sync_folder(path) != 0)
        status = kn__error(KN_ERR_VALUE,
                           "safetensors_save %s: written, but syncing its folder "
                           "failed: %s",
                           path, strerror(errno));
done:
    for (int i = 0; i < count; i++) kn_release(items[i].tensor);
    free(items);
    free(header.data);
    free(tmp);
    return status;
}

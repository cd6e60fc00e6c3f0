/*
 * error.c — the thread-local last error: one message and one status per thread, set by
 * the function that failed and read with kn_last_error() by whoever sees the NULL.
 */
#include "kn_internal.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char error_message[1024];
static _Thread_local kn_status error_status;

const char *kn_last_error(void)
{
    return error_message;
}
kn_status kn_last_status(void)
{
    return error_status;
}

void kn_clear_error(void)
{
    error_message[0] = '\0';
    error_status = KN_OK;
}

static void set_error(kn_status status, const char *fmt, va_list args)
{
    vsnprintf(error_message, sizeof error_message, fmt, args);
    error_status = status;
}

kn_status kn__error(kn_status status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    set_error(status, fmt, args);
    va_end(args);
    return status;
}

void *kn__error_null(kn_status status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    set_error(status, fmt, args);
    va_end(args);
    return NULL;
}

char *kn_shape_str(const int64_t *shape, int ndim, char *buf, size_t size)
{
    size_t used = 0;
    if (size == 0) return buf;
    used += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used +=
            (size_t)snprintf(buf + used, size - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

/* Error messages often name two or three shapes at once: a small ring of buffers lets
 * each kn__shape() call in one printf keep its own text. */
const char *kn__shape_of(const int64_t *shape, int ndim)
{
    static _Thread_local char ring[8][128];
    static _Thread_local int next;
    char *buf = ring[next];
    next = (next + 1) % 8;
    return kn_shape_str(shape, ndim, buf, sizeof ring[0]);
}

const char *kn__shape(const kn_tensor *t)
{
    if (!t) return "(null)";
    return kn__shape_of(t->shape, t->ndim);
}

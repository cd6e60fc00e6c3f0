/*
 * print.c — kn_to_string / kn_fprint / kn_print: tensors as PyTorch prints them with its
 * default options (torch/_tensor_str.py: precision 4, threshold 1000, edgeitems 3,
 * linewidth 80). One formatter per tensor decides fixed, integer ("1.") or scientific
 * notation and a common width from the (summarised) values; rows wrap at 80 columns;
 * tensors over 1000 elements show 3 items at each edge around "...". Suffixes follow
 * torch (device, grad_fn=<name>, requires_grad=True), except that int64 tensors say
 * "dtype=int64" where torch says nothing.
 */
#include "kn_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION 4
#define THRESHOLD 1000
#define EDGEITEMS 3
#define LINEWIDTH 80

/* ---- a growable string ------------------------------------------------------------- */

typedef struct text {
    char *data;
    size_t length, capacity;
    bool failed;
} text;

static void text_reserve(text *s, size_t extra)
{
    if (s->failed || s->length + extra + 1 <= s->capacity) return;
    size_t capacity = s->capacity ? s->capacity : 64;
    while (capacity < s->length + extra + 1) capacity *= 2;
    char *grown = realloc(s->data, capacity);
    if (!grown) {
        s->failed = true;
        return;
    }
    s->data = grown;
    s->capacity = capacity;
}

static void text_add(text *s, const char *str, size_t n)
{
    text_reserve(s, n);
    if (s->failed) return;
    memcpy(s->data + s->length, str, n);
    s->length += n;
    s->data[s->length] = '\0';
}

static void text_puts(text *s, const char *str)
{
    text_add(s, str, strlen(str));
}

static void text_spaces(text *s, int n)
{
    for (int i = 0; i < n; i++) text_add(s, " ", 1);
}

/* ---- element access ------------------------------------------------------------------ */

static double value_at(const kn_tensor *t, int64_t offset)
{
    if (t->dtype == KN_INT64) return (double)((const int64_t *)t->storage->data)[offset];
    return ((const float *)t->storage->data)[offset];
}

/* int64 exactly: a double would round values above 2^53 */
static long long int_at(const kn_tensor *t, int64_t offset)
{
    return (long long)((const int64_t *)t->storage->data)[offset];
}

/* Visits the elements shown: all of them, or with summarize only the first and last
 * EDGEITEMS along each dim longer than 2 * EDGEITEMS. */
typedef void (*visit_fn)(void *context, const kn_tensor *t, int64_t offset);

static void visit(const kn_tensor *t, int dim, int64_t offset, bool summarize, visit_fn fn,
                  void *context)
{
    if (dim == t->ndim) {
        fn(context, t, offset);
        return;
    }
    int64_t n = t->shape[dim];
    bool elide = summarize && n > 2 * EDGEITEMS;
    for (int64_t i = 0; i < n; i++) {
        if (elide && i == EDGEITEMS) i = n - EDGEITEMS;
        visit(t, dim + 1, offset + i * t->strides[dim], summarize, fn, context);
    }
}

/* ---- the formatter (torch's _Formatter) --------------------------------------------- */

typedef struct formatter {
    bool floating, int_mode, sci_mode;
    int width;
    /* first pass: statistics of the non-zero finite values */
    bool any;
    double min_abs, max_abs;
} formatter;

static int format_number(const formatter *f, const kn_tensor *t, int64_t offset, char *buf,
                         size_t size)
{
    if (!f->floating) return snprintf(buf, size, "%lld", int_at(t, offset));
    double v = value_at(t, offset);
    if (isnan(v)) return snprintf(buf, size, "nan");
    if (isinf(v)) return snprintf(buf, size, v > 0 ? "inf" : "-inf");
    if (f->sci_mode) return snprintf(buf, size, "%.*e", PRECISION, v);
    if (f->int_mode) return snprintf(buf, size, "%.0f.", v);
    return snprintf(buf, size, "%.*f", PRECISION, v);
}

static void scan_value(void *context, const kn_tensor *t, int64_t offset)
{
    formatter *f = context;
    if (!f->floating) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%lld", int_at(t, offset));
        if (n > f->width) f->width = n;
        return;
    }
    double v = value_at(t, offset);
    if (!isfinite(v) || v == 0) return;
    double a = fabs(v);
    if (!f->any || a < f->min_abs) f->min_abs = a;
    if (!f->any || a > f->max_abs) f->max_abs = a;
    f->any = true;
    if ((float)v != ceilf((float)v)) f->int_mode = false;
}

static void width_value(void *context, const kn_tensor *t, int64_t offset)
{
    formatter *f = context;
    double v = value_at(t, offset);
    if (!isfinite(v) || v == 0) return;
    char buf[64];
    int n;
    if (f->sci_mode)
        n = snprintf(buf, sizeof buf, "%.*e", PRECISION, v);
    else if (f->int_mode)
        n = snprintf(buf, sizeof buf, "%.0f", v) + 1; /* the "." */
    else
        n = snprintf(buf, sizeof buf, "%.*f", PRECISION, v);
    if (n > f->width) f->width = n;
}

static formatter make_formatter(const kn_tensor *t, bool summarize)
{
    formatter f = {.floating = t->dtype == KN_FLOAT32, .int_mode = true, .width = 1};
    visit(t, 0, t->offset, summarize, scan_value, &f);
    if (!f.floating || !f.any) return f;
    bool wide = f.max_abs / f.min_abs > 1000.0 || f.max_abs > 1.0e8;
    f.sci_mode = f.int_mode ? wide : (wide || f.min_abs < 1.0e-4);
    visit(t, 0, t->offset, summarize, width_value, &f);
    return f;
}

static void add_value(text *s, const formatter *f, const kn_tensor *t, int64_t offset)
{
    char buf[64];
    int n = format_number(f, t, offset, buf, sizeof buf);
    text_spaces(s, f->width - n);
    text_add(s, buf, (size_t)n);
}

/* ---- layout (torch's _tensor_str_with_formatter / _vector_str) ---------------------- */

static void add_vector(text *s, const kn_tensor *t, int64_t offset, int indent, bool summarize,
                       const formatter *f)
{
    int per_line = (LINEWIDTH - indent) / (f->width + 2);
    if (per_line < 1) per_line = 1;
    int64_t n = t->shape[t->ndim - 1], stride = t->strides[t->ndim - 1];
    bool elide = summarize && n > 2 * EDGEITEMS;
    int64_t items = elide ? 2 * EDGEITEMS + 1 : n;
    text_add(s, "[", 1);
    for (int64_t k = 0; k < items; k++) {
        if (k > 0) {
            if (k % per_line == 0) {
                text_add(s, ",\n", 2);
                text_spaces(s, indent + 1);
            } else {
                text_add(s, ", ", 2);
            }
        }
        if (elide && k == EDGEITEMS) {
            text_puts(s, " ...");
            continue;
        }
        int64_t i = elide && k > EDGEITEMS ? n - (items - k) : k;
        add_value(s, f, t, offset + i * stride);
    }
    text_add(s, "]", 1);
}

static void add_tensor(text *s, const kn_tensor *t, int dim, int64_t offset, int indent,
                       bool summarize, const formatter *f)
{
    int rest = t->ndim - dim;
    if (rest == 0) {
        add_value(s, f, t, offset);
        return;
    }
    if (rest == 1) {
        /* a row: the vector printer works on the last dim at this offset */
        add_vector(s, t, offset, indent, summarize, f);
        return;
    }
    int64_t n = t->shape[dim];
    bool elide = summarize && n > 2 * EDGEITEMS;
    text_add(s, "[", 1);
    for (int64_t i = 0; i < n; i++) {
        if (i > 0) {
            text_add(s, ",", 1);
            for (int k = 0; k < rest - 1; k++) text_add(s, "\n", 1);
            text_spaces(s, indent + 1);
        }
        if (elide && i == EDGEITEMS) {
            text_puts(s, "...");
            text_add(s, ",", 1);
            for (int k = 0; k < rest - 1; k++) text_add(s, "\n", 1);
            text_spaces(s, indent + 1);
            i = n - EDGEITEMS;
        }
        add_tensor(s, t, dim + 1, offset + i * t->strides[dim], indent + 1, summarize, f);
    }
    text_add(s, "]", 1);
}

/* torch's _add_suffixes, including its idea of the last line's length. */
static void add_suffixes(text *s, char suffixes[][96], int count, int indent)
{
    const char *last_newline = s->failed ? NULL : strrchr(s->data, '\n');
    int64_t last_line =
        (int64_t)s->length - (last_newline ? (int64_t)(last_newline - s->data) : -1) + 1;
    for (int i = 0; i < count; i++) {
        int64_t len = (int64_t)strlen(suffixes[i]);
        if (last_line + len + 2 > LINEWIDTH) {
            text_add(s, ",\n", 2);
            text_spaces(s, indent);
            last_line = indent + len;
        } else {
            text_add(s, ", ", 2);
            last_line += len + 2;
        }
        text_puts(s, suffixes[i]);
    }
    text_add(s, ")", 1);
}

static char *format_tensor(const kn_tensor *t)
{
    const char *prefix = "tensor(";
    int indent = (int)strlen(prefix);
    text s = {0};
    char suffixes[4][96];
    int count = 0;
    char buf[32];
    if (t->device.type != KN_DEVICE_CPU)
        snprintf(suffixes[count++], 96, "device='%s'", kn_device_str(t->device, buf, sizeof buf));
    text_puts(&s, prefix);
    int64_t n = kn_numel(t);
    if (n == 0) {
        text_puts(&s, "[]");
        if (t->ndim != 1) {
            int used = snprintf(suffixes[count], 96, "size=(");
            for (int d = 0; d < t->ndim && used < 90; d++)
                used += snprintf(suffixes[count] + used, (size_t)(96 - used),
                                 t->ndim == 1 ? "%lld," : (d ? ", %lld" : "%lld"),
                                 (long long)t->shape[d]);
            snprintf(suffixes[count] + used, (size_t)(96 - used), ")");
            count++;
        }
    } else {
        bool summarize = n > THRESHOLD;
        formatter f = make_formatter(t, summarize);
        add_tensor(&s, t, 0, t->offset, indent, summarize, &f);
    }
    if (t->dtype != KN_FLOAT32)
        snprintf(suffixes[count++], 96, "dtype=%s", kn_dtype_name(t->dtype));
    if (t->grad_fn)
        snprintf(suffixes[count++], 96, "grad_fn=<%s>",
                 t->grad_fn->name ? t->grad_fn->name : "unknown");
    else if (t->requires_grad)
        snprintf(suffixes[count++], 96, "requires_grad=True");
    add_suffixes(&s, suffixes, count, indent);
    if (s.failed) {
        free(s.data);
        return kn__error_null(KN_ERR_MEMORY,
                              "to_string: out of memory printing a tensor of "
                              "shape %s",
                              kn__shape(t));
    }
    return s.data;
}

char *kn_to_string(const kn_tensor *t)
{
    if (!t) {
        if (kn_last_status() == KN_OK) kn__error(KN_ERR_NULL, "to_string: tensor is NULL");
        return NULL;
    }
    if (t->device.type == KN_DEVICE_CPU) return format_tensor(t);
    /* Elements live elsewhere: print a host copy, keeping the original's suffixes. */
    kn_scope_begin();
    kn_tensor *host = kn_to((kn_tensor *)t, kn_cpu());
    char *out = NULL;
    if (host) {
        kn_tensor shown = *host;
        shown.device = t->device;
        shown.requires_grad = t->requires_grad;
        shown.grad_fn = t->grad_fn;
        out = format_tensor(&shown);
    }
    kn_scope_end();
    return out;
}

void kn_fprint(FILE *stream, const kn_tensor *t)
{
    char *str = kn_to_string(t);
    if (!str) {
        fprintf(stream, "tensor(<error: %s>)\n", kn_last_error());
        return;
    }
    fputs(str, stream);
    fputc('\n', stream);
    free(str);
}

void kn_print(const kn_tensor *t)
{
    kn_fprint(stdout, t);
}

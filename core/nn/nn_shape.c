/*
 * nn_shape.c — what can be said about a module without running it: the output shape for
 * an input shape (without the batch dim), with errors that name the layer and both
 * shapes for spec validation, and PyTorch's repr of the module for logs.
 */
#include "kn_internal.h"
#include "kn_nn.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- output shapes ---------------------------------------------------------------- */

/* Floor division, as PyTorch's div_rtn. */
static int64_t div_floor(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* PyTorch's pooling_output_shape. */
static int64_t pool_size(int64_t in, int k, int pad, int stride, int dilation, bool ceil_mode)
{
    int64_t out =
        div_floor(in + 2 * pad - (int64_t)dilation * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0),
                  stride) +
        1;
    if (ceil_mode && (out - 1) * stride >= in + pad) out--;
    return out;
}

static kn_status spatial(const kn_module *m, const int64_t *in, int n, int64_t *out)
{
    if (n != 3)
        return kn__error(KN_ERR_SHAPE, "expects a 3-D input [channels, height, width], got %s",
                         kn__shape_of(in, n));
    out[0] = in[0];
    for (int i = 0; i < 2; i++) {
        int64_t size;
        if (m->kind == KN_MODULE_CONV2D) {
            size = pool_size(in[1 + i], m->kernel_size[i], m->conv.padding[i], m->conv.stride[i],
                             m->conv.dilation[i], false);
        } else if (m->kind == KN_MODULE_ADAPTIVE_AVG_POOL2D) {
            if (in[1 + i] == 0)
                return kn__error(KN_ERR_SHAPE, "expects non-zero height and width, got %s",
                                 kn__shape_of(in, n));
            size = m->output_size[i];
        } else {
            size = pool_size(in[1 + i], m->pool.kernel_size[i], m->pool.padding[i],
                             m->pool.stride[i], m->pool.dilation[i], m->pool.ceil_mode);
        }
        if (size <= 0) {
            const int *k = m->kind == KN_MODULE_CONV2D ? m->kernel_size : m->pool.kernel_size;
            return kn__error(KN_ERR_SHAPE,
                             "the input %s is too small for a %dx%d kernel (the output would "
                             "be empty)",
                             kn__shape_of(in, n), k[0], k[1]);
        }
        out[1 + i] = size;
    }
    return KN_OK;
}

/* dim counted with the batch dim, for a tensor of rank ndim; false if out of range. */
static bool wrap(int *dim, int ndim)
{
    if (*dim < -ndim || *dim >= ndim) return false;
    if (*dim < 0) *dim += ndim;
    return true;
}

static kn_status flatten_shape(const kn_module *m, const int64_t *in, int n, int64_t *out,
                               int *out_n)
{
    int start = m->start_dim, end = m->end_dim, full = n + 1;
    if (!wrap(&start, full) || !wrap(&end, full))
        return kn__error(KN_ERR_DIM,
                         "start_dim %d or end_dim %d is out of range for an input %s (%d dims "
                         "with the batch dim)",
                         m->start_dim, m->end_dim, kn__shape_of(in, n), full);
    if (start > end)
        return kn__error(KN_ERR_DIM, "start_dim %d comes after end_dim %d for an input %s",
                         m->start_dim, m->end_dim, kn__shape_of(in, n));
    if (start == 0)
        return kn__error(KN_ERR_DIM, "start_dim 0 would merge the batch dim into the features; use "
                                     "start_dim >= 1");
    int k = 0;
    for (int d = 1; d < start; d++) out[k++] = in[d - 1];
    int64_t product = 1;
    for (int d = start; d <= end; d++) product *= in[d - 1];
    out[k++] = product;
    for (int d = end + 1; d < full; d++) out[k++] = in[d - 1];
    *out_n = k;
    return KN_OK;
}

static kn_status layer_shape(const kn_module *m, const int64_t *in, int n, int64_t *out,
                             int *out_n);

static kn_status sequential_shape(const kn_module *m, const int64_t *in, int n, int64_t *out,
                                  int *out_n)
{
    int64_t current[KN_MAX_DIMS];
    int current_n = n;
    memcpy(current, in, sizeof(int64_t) * (size_t)n);
    for (int i = 0; i < m->n_children; i++) {
        int64_t next[KN_MAX_DIMS];
        int next_n = 0;
        if (layer_shape(m->children[i], current, current_n, next, &next_n) != KN_OK) {
            char message[512];
            snprintf(message, sizeof message, "%s", kn_last_error());
            return kn__error(kn_last_status(), "layer %d (%s): %s", i,
                             kn_module_kind_name(m->children[i]->kind), message);
        }
        memcpy(current, next, sizeof(int64_t) * (size_t)next_n);
        current_n = next_n;
    }
    memcpy(out, current, sizeof(int64_t) * (size_t)current_n);
    *out_n = current_n;
    return KN_OK;
}

/* The message says what the layer expects and what it got, without the layer's name. */
static kn_status layer_shape(const kn_module *m, const int64_t *in, int n, int64_t *out, int *out_n)
{
    const char *got = kn__shape_of(in, n);
    long long c = (long long)m->in_features;
    *out_n = n;
    switch (m->kind) {
    case KN_MODULE_SEQUENTIAL:
        return sequential_shape(m, in, n, out, out_n);
    case KN_MODULE_LINEAR:
        if (n == 0 || in[n - 1] != m->in_features)
            return kn__error(KN_ERR_SHAPE, "expects a 1-D input of %lld features, got %s%s", c, got,
                             n > 1 ? " — add a flatten" : "");
        memcpy(out, in, sizeof(int64_t) * (size_t)n);
        out[n - 1] = m->out_features;
        return KN_OK;
    case KN_MODULE_CONV2D:
        if (n == 3 && in[0] != m->in_features)
            return kn__error(KN_ERR_SHAPE, "expects %lld input channels, got %s", c, got);
        if (spatial(m, in, n, out) != KN_OK) return kn_last_status();
        out[0] = m->out_features;
        return KN_OK;
    case KN_MODULE_MAX_POOL2D:
    case KN_MODULE_AVG_POOL2D:
    case KN_MODULE_ADAPTIVE_AVG_POOL2D:
        return spatial(m, in, n, out);
    case KN_MODULE_FLATTEN:
        return flatten_shape(m, in, n, out, out_n);
    case KN_MODULE_SOFTMAX: {
        int dim = m->dim;
        if (!wrap(&dim, n + 1))
            return kn__error(KN_ERR_DIM,
                             "dim %d is out of range for an input %s (%d dims with the batch dim)",
                             m->dim, got, n + 1);
        break;
    }
    case KN_MODULE_BATCH_NORM1D:
        if ((n != 1 && n != 2) || in[0] != m->in_features)
            return kn__error(KN_ERR_SHAPE, "expects an input [%lld] or [%lld, length], got %s", c,
                             c, got);
        break;
    case KN_MODULE_BATCH_NORM2D:
        if (n != 3 || in[0] != m->in_features)
            return kn__error(KN_ERR_SHAPE, "expects a 3-D input [%lld, height, width], got %s", c,
                             got);
        break;
    case KN_MODULE_LAYER_NORM: {
        int k = m->normalized_ndim;
        bool fits = n >= k;
        for (int i = 0; fits && i < k; i++) fits = in[n - k + i] == m->normalized_shape[i];
        if (!fits)
            return kn__error(KN_ERR_SHAPE, "expects an input ending in %s, got %s",
                             kn__shape_of(m->normalized_shape, k), got);
        break;
    }
    case KN_MODULE_EMBEDDING:
        if (n + 2 > KN_MAX_DIMS)
            return kn__error(KN_ERR_SHAPE, "an input %s has too many dims for an embedding", got);
        memcpy(out, in, sizeof(int64_t) * (size_t)n);
        out[n] = m->out_features;
        *out_n = n + 1;
        return KN_OK;
    default:
        break; /* elementwise: the shape is unchanged */
    }
    memcpy(out, in, sizeof(int64_t) * (size_t)n);
    return KN_OK;
}

kn_status kn_module_output_shape(const kn_module *m, const int64_t *in_shape, int in_ndim,
                                 int64_t *out_shape, int *out_ndim)
{
    if (!m || !out_shape || !out_ndim || (in_ndim > 0 && !in_shape))
        return kn__error(KN_ERR_NULL, "output_shape: a NULL argument");
    if (in_ndim < 0 || in_ndim >= KN_MAX_DIMS)
        return kn__error(KN_ERR_SHAPE,
                         "output_shape: an input has 0 to %d dims besides the "
                         "batch dim, got %d",
                         KN_MAX_DIMS - 1, in_ndim);
    for (int i = 0; i < in_ndim; i++)
        if (in_shape[i] < 0)
            return kn__error(KN_ERR_SHAPE, "output_shape: negative size in input shape %s",
                             kn__shape_of(in_shape, in_ndim));
    if (m->kind == KN_MODULE_SEQUENTIAL)
        return sequential_shape(m, in_shape, in_ndim, out_shape, out_ndim);
    if (layer_shape(m, in_shape, in_ndim, out_shape, out_ndim) == KN_OK) return KN_OK;
    char message[512];
    snprintf(message, sizeof message, "%s", kn_last_error());
    return kn__error(kn_last_status(), "%s: %s", kn_module_kind_name(m->kind), message);
}

/* ---- repr ------------------------------------------------------------------------- */

typedef struct {
    char *text;
    size_t length, capacity;
    bool failed;
} text_buffer;

static void append(text_buffer *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void append(text_buffer *b, const char *fmt, ...)
{
    if (b->failed) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->length + (size_t)n + 1 > b->capacity) {
        size_t capacity = (b->capacity + (size_t)n + 1) * 2;
        char *grown = realloc(b->text, capacity);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->text = grown;
        b->capacity = capacity;
    }
    va_start(ap, fmt);
    vsnprintf(b->text + b->length, b->capacity - b->length, fmt, ap);
    va_end(ap);
    b->length += (size_t)n;
}

/* torch prints an int for a square pair, a tuple otherwise (for pools, as given). */
static void pair(text_buffer *b, const char *name, const int v[2], bool as_tuple)
{
    if (!as_tuple && v[0] == v[1])
        append(b, "%s=%d", name, v[0]);
    else
        append(b, "%s=(%d, %d)", name, v[0], v[1]);
}

static const char *py_bool(bool v)
{
    return v ? "True" : "False";
}

static void describe(const kn_module *m, text_buffer *b, int indent)
{
    append(b, "%s(", m->type_name);
    const kn_pool2d_args *p = &m->pool;
    const kn_conv2d_args *cv = &m->conv;
    switch (m->kind) {
    case KN_MODULE_SEQUENTIAL:
        for (int i = 0; i < m->n_children; i++) {
            append(b, "\n%*s(%d): ", indent + 2, "", i);
            describe(m->children[i], b, indent + 2);
        }
        if (m->n_children) append(b, "\n%*s", indent, "");
        break;
    case KN_MODULE_LINEAR:
        append(b, "in_features=%lld, out_features=%lld, bias=%s", (long long)m->in_features,
               (long long)m->out_features, py_bool(m->has_bias));
        break;
    case KN_MODULE_CONV2D:
        append(b, "%lld, %lld, ", (long long)m->in_features, (long long)m->out_features);
        pair(b, "kernel_size", m->kernel_size, true);
        append(b, ", ");
        pair(b, "stride", cv->stride, true);
        if (cv->padding[0] || cv->padding[1]) {
            append(b, ", ");
            pair(b, "padding", cv->padding, true);
        }
        if (cv->dilation[0] != 1 || cv->dilation[1] != 1) {
            append(b, ", ");
            pair(b, "dilation", cv->dilation, true);
        }
        if (cv->groups != 1) append(b, ", groups=%d", cv->groups);
        if (!m->has_bias) append(b, ", bias=False");
        break;
    case KN_MODULE_MAX_POOL2D:
    case KN_MODULE_AVG_POOL2D:
        pair(b, "kernel_size", p->kernel_size, false);
        append(b, ", ");
        pair(b, "stride", p->stride, false);
        append(b, ", ");
        pair(b, "padding", p->padding, false);
        if (m->kind == KN_MODULE_MAX_POOL2D) {
            append(b, ", ");
            pair(b, "dilation", p->dilation, false);
            append(b, ", ceil_mode=%s", py_bool(p->ceil_mode));
        }
        break;
    case KN_MODULE_ADAPTIVE_AVG_POOL2D:
        pair(b, "output_size", m->output_size, false);
        break;
    case KN_MODULE_FLATTEN:
        append(b, "start_dim=%d, end_dim=%d", m->start_dim, m->end_dim);
        break;
    case KN_MODULE_LEAKY_RELU:
        append(b, "negative_slope=%g", m->negative_slope);
        break;
    case KN_MODULE_GELU:
        append(b, "approximate='%s'", m->approximate == KN_GELU_TANH ? "tanh" : "none");
        break;
    case KN_MODULE_SOFTMAX:
        append(b, "dim=%d", m->dim);
        break;
    case KN_MODULE_DROPOUT:
        append(b, "p=%g, inplace=False", m->p);
        break;
    case KN_MODULE_BATCH_NORM1D:
    case KN_MODULE_BATCH_NORM2D:
        append(b, "%lld, eps=%g, ", (long long)m->in_features, m->eps);
        if (m->momentum < 0)
            append(b, "momentum=None");
        else
            append(b, "momentum=%g", m->momentum);
        append(b, ", affine=%s, track_running_stats=%s", py_bool(m->affine),
               py_bool(m->track_running_stats));
        break;
    case KN_MODULE_LAYER_NORM:
        append(b, "(");
        for (int i = 0; i < m->normalized_ndim; i++)
            append(b, "%s%lld", i ? ", " : "", (long long)m->normalized_shape[i]);
        append(b, "%s), eps=%g, elementwise_affine=%s", m->normalized_ndim == 1 ? "," : "", m->eps,
               py_bool(m->affine));
        break;
    case KN_MODULE_EMBEDDING:
        append(b, "%lld, %lld", (long long)m->in_features, (long long)m->out_features);
        break;
    default:
        break;
    }
    append(b, ")");
}

char *kn_module_describe(const kn_module *m)
{
    if (!m) return kn__error_null(KN_ERR_NULL, "describe: module is NULL");
    text_buffer b = {0};
    describe(m, &b, 0);
    if (b.failed) {
        free(b.text);
        return kn__error_null(KN_ERR_MEMORY, "describe: out of memory");
    }
    return b.text;
}

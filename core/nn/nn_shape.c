/*
 * nn_shape.c — what can be said about a module without running it: kn_layer_infer
 * (each row's shape rule behind the checks every layer shares), the pieces of shape
 * rules several rows use, kn_module_output_shape over a module's layers, and PyTorch's
 * repr of a module for logs (torch's Module.__repr__ around each row's extra_repr).
 */
#include "nn_internal.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- pieces of shape rules ---------------------------------------------------------- */

bool kn__shape_fail(kn_layer_shape *s, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->message, sizeof s->message, fmt, ap);
    va_end(ap);
    s->field = field;
    return false;
}

bool kn__shape_infer(kn_layer_shape *s, const char *field, int64_t *value, int64_t inferred)
{
    if (*value == 0) *value = inferred;
    if (*value == inferred) return true;
    const kn_layer_io *in = &s->inputs[0];
    return kn__shape_fail(s, field, "expected %lld (inferred from the input %s), got %lld",
                          (long long)inferred, kn__shape_of(in->shape, in->ndim),
                          (long long)*value);
}

bool kn__shape_image(kn_layer_shape *s)
{
    const kn_layer_io *in = &s->inputs[0];
    if (in->ndim == 3) return true;
    return kn__shape_fail(s, NULL, "expects a [channels, height, width] input, got %s%s",
                          kn__shape_of(in->shape, in->ndim),
                          in->ndim == 2 ? " — give input_shape a channel dim, e.g. [1, H, W]" : "");
}

const char *kn__shape_batched(const kn_layer_io *in, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[N");
    for (int i = 0; i < in->ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, ", %lld", (long long)in->shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

bool kn__shape_batched_dim(kn_layer_shape *s, const char *field, int64_t dim, int *out)
{
    const kn_layer_io *in = &s->inputs[0];
    int rank = in->ndim + 1;
    char shape[128];
    if (dim < -rank || dim >= rank)
        return kn__shape_fail(s, field,
                              "expected an integer from %d to %d (the batched input %s has %d "
                              "dims), got %lld",
                              -rank, rank - 1, kn__shape_batched(in, shape, sizeof shape), rank,
                              (long long)dim);
    *out = (int)(dim < 0 ? dim + rank : dim);
    if (*out == 0)
        return kn__shape_fail(s, field,
                              "dim %lld is the batch dim of the batched input %s: expected a dim "
                              "from 1 to %d (or from %d to -1)",
                              (long long)dim, kn__shape_batched(in, shape, sizeof shape), rank - 1,
                              -(rank - 1));
    return true;
}

/* Floor division, as PyTorch's div_rtn. */
static int64_t div_floor(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* PyTorch's pooling_output_shape. */
static int64_t window_size(int64_t in, int k, int s, int p, int d, bool ceil_mode)
{
    int64_t out = div_floor(in + 2 * p - (int64_t)d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0), s) + 1;
    if (ceil_mode && (out - 1) * s >= in + p) out--;
    return out;
}

bool kn__shape_window(kn_layer_shape *s, const int k[2], const int stride[2], const int padding[2],
                      const int dilation[2], bool ceil_mode)
{
    const int64_t *in = s->inputs[0].shape;
    int64_t *out = s->output.shape;
    out[0] = in[0];
    for (int i = 0; i < 2; i++)
        out[1 + i] = window_size(in[1 + i], k[i], stride[i], padding[i], dilation[i], ceil_mode);
    if (out[1] > 0 && out[2] > 0) return true;
    char from[96];
    kn_shape_str(in, 3, from, sizeof from);
    return kn__shape_fail(s, NULL,
                          "would output %s from the input %s: the input is too small for "
                          "kernel_size [%d, %d] (stride [%d, %d], padding [%d, %d], dilation "
                          "[%d, %d])",
                          kn__shape_of(out, 3), from, k[0], k[1], stride[0], stride[1], padding[0],
                          padding[1], dilation[0], dilation[1]);
}

/* ---- kn_layer_infer ------------------------------------------------------------------ */

bool kn_layer_infer(kn_layer_shape *s)
{
    const kn_layer_type *row = s->type;
    int least = row->min_inputs ? row->min_inputs : 1;
    int most = row->max_inputs ? row->max_inputs : 1;
    s->field = NULL;
    s->message[0] = '\0';
    s->parameter_count = 0;
    s->buffer_bytes = 0;
    s->saved_elements = 0;
    if (s->n_inputs < least || s->n_inputs > most)
        return kn__shape_fail(s, NULL, "takes %d to %d inputs, got %d", least, most, s->n_inputs);
    for (int i = 0; i < s->n_inputs && !(row->flags & KN_LAYER_OWN_DTYPES); i++)
        if (s->inputs[i].dtype != row->input_dtype)
            return kn__shape_fail(s, NULL, "expects %s inputs, got a %s input",
                                  kn_dtype_name(row->input_dtype),
                                  kn_dtype_name(s->inputs[i].dtype));
    s->output = s->inputs[0];
    s->output.dtype = KN_FLOAT32;
    return row->shape ? row->shape(s) : true;
}

/* ---- kn_module_output_shape ---------------------------------------------------------- */

/* out for in at m. A failure names where it happened: where (the layer, "layer 6
 * (linear)" in a Sequential, NULL for the module asked about), then the argument. */
static kn_status module_shape(const kn_module *m, const kn_layer_io *in, kn_layer_io *out,
                              const char *where)
{
    if (m->kind == KN_MODULE_SEQUENTIAL) {
        kn_layer_io current = *in;
        for (int i = 0; i < m->n_children; i++) {
            const kn_module *child = m->children[i];
            char at[96];
            snprintf(at, sizeof at, "layer %d (%s)", i, child->layer->name);
            kn_layer_io next;
            if (module_shape(child, &current, &next, at) != KN_OK) {
                if (!where) return kn_last_status();
                char message[512];
                snprintf(message, sizeof message, "%s", kn_last_error());
                return kn__error(kn_last_status(), "%s: %s", where, message);
            }
            current = next;
        }
        *out = current;
        return KN_OK;
    }
    kn_layer_options options = m->options; /* inference must not change the module */
    kn_layer_shape s = {.type = m->layer, .options = &options, .inputs = in, .n_inputs = 1};
    if (kn_layer_infer(&s)) {
        *out = s.output;
        return KN_OK;
    }
    return kn__error(KN_ERR_SHAPE, "%s: %s%s%s", where ? where : m->layer->name,
                     s.field ? s.field : "", s.field ? ": " : "", s.message);
}

/* The dtype a module's input is: the first layer's. */
static kn_dtype input_dtype(const kn_module *m)
{
    while (m->kind == KN_MODULE_SEQUENTIAL && m->n_children > 0) m = m->children[0];
    return m->layer->input_dtype;
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
    kn_layer_io in = {.ndim = in_ndim, .dtype = input_dtype(m)}, out;
    memcpy(in.shape, in_shape, sizeof(int64_t) * (size_t)in_ndim);
    if (module_shape(m, &in, &out, NULL) != KN_OK) return kn_last_status();
    memcpy(out_shape, out.shape, sizeof(int64_t) * (size_t)out.ndim);
    *out_ndim = out.ndim;
    return KN_OK;
}

/* ---- repr ------------------------------------------------------------------------- */

void kn__repr_add(char *buf, size_t size, const char *fmt, ...)
{
    size_t used = strlen(buf);
    if (used + 1 >= size) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, size - used, fmt, ap);
    va_end(ap);
}

void kn__repr_pair(char *buf, size_t size, const char *name, const int v[2], bool as_tuple)
{
    if (!as_tuple && v[0] == v[1])
        kn__repr_add(buf, size, "%s=%d", name, v[0]);
    else
        kn__repr_add(buf, size, "%s=(%d, %d)", name, v[0], v[1]);
}

const char *kn__py_bool(bool v)
{
    return v ? "True" : "False";
}

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

/* torch's Module.__repr__: the class, then its extra_repr on one line when it has no
 * children, else the extra_repr and "(name): child" lines indented. */
static void describe(const kn_module *m, text_buffer *b, int indent)
{
    char extra[512] = "";
    if (m->layer->describe) m->layer->describe(m, extra, sizeof extra);
    append(b, "%s(", m->type_name);
    if (m->n_children == 0) {
        append(b, "%s)", extra);
        return;
    }
    if (extra[0]) append(b, "\n%*s%s", indent + 2, "", extra);
    for (int i = 0; i < m->n_children; i++) {
        append(b, "\n%*s(%s): ", indent + 2, "", m->child_names[i]);
        describe(m->children[i], b, indent + 2);
    }
    append(b, "\n%*s)", indent, "");
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

/*
 * ops_softmax.c — softmax and log_softmax over any dim, with backward. The input is
 * seen as [outer, dim, inner] (a contiguous copy first if it is not contiguous); the
 * kernels in kernels/cpu/reduce.c are numerically stable (the row max is subtracted).
 */
#include "kn_internal.h"
#include "kn_cpu_reduce.h"

#include <string.h>

/* t itself when contiguous, else a contiguous copy; *owned says which. */
static kn_tensor *dense(kn_tensor *t, bool *owned)
{
    *owned = false;
    if (kn_is_contiguous(t)) return t;
    kn_tensor *out = kn__empty_raw(t->shape, t->ndim, t->dtype, t->device);
    if (!out) return NULL;
    kn_cpu_operand dst = {kn__data_ptr(out), {0}}, src = {kn__data_ptr(t), {0}};
    memcpy(dst.strides, out->strides, sizeof(int64_t) * (size_t)t->ndim);
    memcpy(src.strides, t->strides, sizeof(int64_t) * (size_t)t->ndim);
    kn_cpu_copy(t->shape, t->ndim, kn_dtype_size(t->dtype), dst, src);
    *owned = true;
    return out;
}

static void split_at(const kn_tensor *t, int dim, int64_t *outer, int64_t *size, int64_t *inner)
{
    *outer = *inner = *size = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (d < dim) *outer *= t->shape[d];
        else if (d == dim) *size = t->shape[d];
        else *inner *= t->shape[d];
    }
}

static kn_status softmax_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *y = node->saved[0];
    bool owned;
    kn_tensor *g = dense(grad, &owned);
    if (!g) return kn_last_status();
    if (owned) kn__result(g);
    kn_tensor *gx = kn__empty_raw(y->shape, y->ndim, KN_FLOAT32, y->device);
    if (!gx) return kn_last_status();
    int64_t outer, size, inner;
    split_at(y, (int)node->iargs[0], &outer, &size, &inner);
    kn_cpu_softmax_backward(kn_data_f32(g), kn_data_f32(y), kn_data_f32(gx), outer, size, inner,
                            node->iargs[1]);
    grads[0] = kn__result(gx);
    return KN_OK;
}

static kn_tensor *softmax_op(const char *op, kn_tensor *a, int dim, bool log)
{
    if (!kn__check_inputs(op, &a, 1) || !kn__check_float(op, a)) return NULL;
    if (!kn__wrap_dim(&dim, a->ndim, op)) return NULL;
    bool owned;
    kn_tensor *x = dense(a, &owned);
    if (!x) return NULL;
    kn_tensor *out = kn__empty_raw(a->shape, a->ndim, KN_FLOAT32, a->device);
    if (!out) {
        if (owned) kn_release(x);
        return NULL;
    }
    int64_t outer, size, inner;
    split_at(a, dim, &outer, &size, &inner);
    kn_cpu_softmax(kn_data_f32(x), kn_data_f32(out), outer, size, inner, log);
    if (owned) kn_release(x);
    if (kn__needs_grad(&a, 1)) {
        kn_node *node = kn__node_new(op, softmax_backward, &a, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        node->iargs[0] = dim;
        node->iargs[1] = log;
        kn__node_save(node, out);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

kn_tensor *kn_softmax(kn_tensor *a, int dim) { return softmax_op("softmax", a, dim, false); }
kn_tensor *kn_log_softmax(kn_tensor *a, int dim) { return softmax_op("log_softmax", a, dim, true); }

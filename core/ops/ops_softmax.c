/*
 * ops_softmax.c — softmax and log_softmax over any dim, with backward. The input is
 * seen as [outer, dim, inner] (a contiguous copy first if it is not contiguous); the
 * kernels in kernels/cpu/reduce.c are numerically stable (the row max is subtracted).
 * CUDA tensors run the same decomposition on the CUDA module's fused kernels
 * (kernels/cuda/reduce.cu).
 */
#include "kn_internal.h"
#include "kn_cpu_reduce.h"
#include "kn_cuda.h"

static void split_at(const kn_tensor *t, int dim, int64_t *outer, int64_t *size, int64_t *inner)
{
    *outer = *inner = *size = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (d < dim)
            *outer *= t->shape[d];
        else if (d == dim)
            *size = t->shape[d];
        else
            *inner *= t->shape[d];
    }
}

static kn_status softmax_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *y = node->saved[0];
    kn_tensor *g = kn__result(kn__contiguous_raw(grad)); /* backward runs in a scope */
    if (!g) return kn_last_status();
    kn_tensor *gx = kn__empty_raw(y->shape, y->ndim, KN_FLOAT32, y->device);
    if (!gx) return kn_last_status();
    int64_t outer, size, inner;
    split_at(y, (int)node->iargs[0], &outer, &size, &inner);
    grads[0] = kn__result(gx);
    if (y->device.type == KN_DEVICE_CUDA) {
        const kn_cuda_reduce *r = kn__cuda_reduce(y->device, node->name);
        if (!r) return kn_last_status();
        return kn__cuda_error(r->softmax_backward(y->device.index, kn__data_ptr(g), kn__data_ptr(y),
                                                  kn__data_ptr(gx), outer, size, inner,
                                                  node->iargs[1]));
    }
    kn_cpu_softmax_backward(kn_data_f32(g), kn_data_f32(y), kn_data_f32(gx), outer, size, inner,
                            node->iargs[1]);
    return KN_OK;
}

static kn_tensor *softmax_op(const char *op, kn_tensor *a, int dim, bool log)
{
    if (!kn__check_inputs(op, &a, 1) || !kn__check_float(op, a)) return NULL;
    if (!kn__wrap_dim(&dim, a->ndim, op)) return NULL;
    if (a->device.type == KN_DEVICE_CUDA && !kn__cuda_reduce(a->device, op)) return NULL;
    kn_tensor *x = kn__contiguous_raw(a);
    if (!x) return NULL;
    kn_tensor *out = kn__empty_raw(a->shape, a->ndim, KN_FLOAT32, a->device);
    if (!out) {
        kn_release(x);
        return NULL;
    }
    int64_t outer, size, inner;
    split_at(a, dim, &outer, &size, &inner);
    if (a->device.type == KN_DEVICE_CUDA) {
        const kn_cuda_reduce *r = kn__cuda_reduce(a->device, op);
        kn_status status =
            r ? kn__cuda_error(r->softmax(a->device.index, kn__data_ptr(x), kn__data_ptr(out),
                                          outer, size, inner, log))
              : kn_last_status();
        if (status != KN_OK) {
            kn_release(x);
            kn_release(out);
            return NULL;
        }
    } else {
        kn_cpu_softmax(kn_data_f32(x), kn_data_f32(out), outer, size, inner, log);
    }
    kn_release(x);
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

kn_tensor *kn_softmax(kn_tensor *a, int dim)
{
    return softmax_op("softmax", a, dim, false);
}
kn_tensor *kn_log_softmax(kn_tensor *a, int dim)
{
    return softmax_op("log_softmax", a, dim, true);
}

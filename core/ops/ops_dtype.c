/*
 * ops_dtype.c — int64 tensors in the ops: kn_to_dtype (torch's Tensor.to(dtype) between
 * float32 and int64) and the int64 side of the binary elementwise ops, with torch's type
 * promotion (ops_elementwise.c hands them here when an operand is int64). Kernels are
 * kernels/cpu/int64.c and kernels/cuda/int64.cu, over contiguous buffers: operands are
 * broadcast and made contiguous here first. These move indices and masks, so nothing of
 * this records a gradient (an int64 tensor never has one).
 */
#include "kn_internal.h"
#include "kn_cuda.h"
#include "../kernels/cpu/kn_cpu_int64.h"

/* A new contiguous tensor of dtype with t's values (unregistered), t contiguous. */
static kn_tensor *convert(kn_tensor *t, kn_dtype dtype)
{
    kn_tensor *out = kn__empty_raw(t->shape, t->ndim, dtype, t->device);
    if (!out) return NULL;
    int64_t n = kn_numel(t);
    bool to_int64 = dtype == KN_INT64;
    if (t->device.type != KN_DEVICE_CPU) {
        const kn_cuda_int64 *be = kn__cuda_int64(t->device, "to_dtype");
        if (!be || kn__cuda_error(be->cast(t->device.index, to_int64, n, kn__data_ptr(out),
                                           kn__data_ptr(t))) != KN_OK) {
            kn_release(out);
            return NULL;
        }
    } else if (to_int64) {
        kn_cpu_f32_to_i64(n, kn__data_ptr(out), kn__data_ptr(t));
    } else {
        kn_cpu_i64_to_f32(n, kn__data_ptr(out), kn__data_ptr(t));
    }
    return out;
}

kn_tensor *kn_to_dtype(kn_tensor *t, kn_dtype dtype)
{
    if (!kn__check_inputs("to_dtype", &t, 1)) return NULL;
    if (dtype != KN_FLOAT32 && dtype != KN_INT64)
        return kn__error_null(KN_ERR_DTYPE,
                              "to_dtype: unknown dtype %d (expected float32 or int64)", (int)dtype);
    if (t->dtype == dtype) return kn__result(kn_retain(t));
    kn_tensor *src = kn__contiguous_raw(t);
    if (!src) return NULL;
    kn_tensor *out = convert(src, dtype);
    kn_release(src);
    return kn__result(out);
}

/* t broadcast to shape as a contiguous int64 tensor (one reference, unregistered). */
static kn_tensor *expanded(kn_tensor *t, const int64_t *shape, int ndim)
{
    kn_scope_begin();
    kn_tensor *view = kn_expand(t, shape, ndim);
    kn_tensor *out = view ? kn__copy_raw(view) : NULL;
    kn_scope_end();
    return out;
}

/* The float32 op of the same name, for operands promoted to float32. */
static kn_tensor *float_op(kn_binary_op op, kn_tensor *a, kn_tensor *b)
{
    switch (op) {
    case KN_BINARY_ADD:
        return kn_add(a, b);
    case KN_BINARY_SUB:
        return kn_sub(a, b);
    case KN_BINARY_MUL:
        return kn_mul(a, b);
    case KN_BINARY_DIV:
        return kn_div(a, b);
    case KN_BINARY_EQ:
        return kn_eq(a, b);
    case KN_BINARY_GT:
        return kn_gt(a, b);
    case KN_BINARY_LT:
        return kn_lt(a, b);
    default:
        return kn__error_null(KN_ERR_DTYPE, "binary op %d has no int64 form", (int)op);
    }
}

kn_tensor *kn__int64_binary(const char *name, kn_binary_op op, kn_tensor *a, kn_tensor *b)
{
    kn_tensor *inputs[2] = {a, b};
    if (!kn__check_inputs(name, inputs, 2)) return NULL;
    /* torch's promotion: int64 with float32 computes in float32, and so does true
     * division of two int64 tensors */
    if (a->dtype != b->dtype || op == KN_BINARY_DIV)
        return float_op(op, kn_to_dtype(a, KN_FLOAT32), kn_to_dtype(b, KN_FLOAT32));
    int64_t shape[KN_MAX_DIMS];
    int ndim;
    if (!kn__broadcast_shapes(name, a->shape, a->ndim, b->shape, b->ndim, shape, &ndim))
        return NULL;
    bool compare = op == KN_BINARY_EQ || op == KN_BINARY_GT || op == KN_BINARY_LT;
    kn_tensor *x = expanded(a, shape, ndim);
    kn_tensor *y = x ? expanded(b, shape, ndim) : NULL;
    kn_tensor *out =
        y ? kn__empty_raw(shape, ndim, compare ? KN_FLOAT32 : KN_INT64, a->device) : NULL;
    if (out && a->device.type != KN_DEVICE_CPU) {
        const kn_cuda_int64 *be = kn__cuda_int64(a->device, name);
        if (!be || kn__cuda_error(be->binary(a->device.index, op, kn_numel(out), kn__data_ptr(out),
                                             kn__data_ptr(x), kn__data_ptr(y))) != KN_OK) {
            kn_release(out);
            out = NULL;
        }
    } else if (out) {
        kn_cpu_binary_i64(op, kn_numel(out), kn__data_ptr(out), kn__data_ptr(x), kn__data_ptr(y));
    }
    kn_release(x);
    kn_release(y);
    return kn__result(out);
}

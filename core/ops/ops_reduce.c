/*
 * ops_reduce.c — the reductions: sum, mean, var over any set of dims, their _all forms,
 * max/min along a dim (values + indices), max_all/min_all and argmax, with backward.
 *
 * Each reduction is planned as a contiguous [outer, reduce, inner] block for the
 * kernels in kernels/cpu/reduce.c. When the input's memory already has that form —
 * contiguous, or a permutation of contiguous (a transposed view) whose reduced dims
 * are adjacent in memory — the kernel reads it in place; otherwise the reduced dims
 * are moved last in one copy. CUDA tensors take the same plan, and the kernels of the
 * CUDA module's kn_cuda_reduce table (kernels/cuda/reduce.cu) in place of the CPU's.
 */
#include "kn_internal.h"
#include "kn_cpu_reduce.h"
#include "kn_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool on_cuda(const kn_tensor *t)
{
    return t->device.type == KN_DEVICE_CUDA;
}

/* The CUDA table for t's device, or NULL with the error set naming op. */
static const kn_cuda_reduce *cuda_table(const kn_tensor *t, const char *op)
{
    return kn__cuda_reduce(t->device, op);
}

/* ---- planning ------------------------------------------------------------------------ */

typedef struct reduce_plan {
    int64_t outer, reduce, inner;
    const float *data;
    kn_tensor *copy; /* a temporary we own, or NULL */
} reduce_plan;

/* reduced[] from a dims list: ndims == 0 means all; negative dims wrap; duplicates and
 * out-of-range dims are errors naming the op, the dim and the rank. */
static bool parse_dims(const char *op, const kn_tensor *a, const int *dims, int ndims,
                       bool *reduced)
{
    memset(reduced, 0, sizeof(bool) * KN_MAX_DIMS);
    if (ndims < 0 || ndims > KN_MAX_DIMS || (ndims > 0 && !dims)) {
        kn__error(KN_ERR_VALUE, "%s: invalid list of %d dims for a tensor of shape %s", op, ndims,
                  kn__shape(a));
        return false;
    }
    if (ndims == 0) {
        for (int d = 0; d < a->ndim; d++) reduced[d] = true;
        return true;
    }
    bool seen[KN_MAX_DIMS] = {false};
    for (int k = 0; k < ndims; k++) {
        int d = dims[k];
        if (!kn__wrap_dim(&d, a->ndim, op)) return false;
        if (seen[d]) {
            kn__error(KN_ERR_DIM, "%s: dim %d appears multiple times in the list of dims %s", op, d,
                      kn__shape(a));
            return false;
        }
        seen[d] = true;
        if (a->ndim > 0) reduced[d] = true;
    }
    return true;
}

static void output_shape(const kn_tensor *a, const bool *reduced, bool keepdim, int64_t *shape,
                         int *ndim)
{
    *ndim = 0;
    for (int d = 0; d < a->ndim; d++) {
        if (!reduced[d])
            shape[(*ndim)++] = a->shape[d];
        else if (keepdim)
            shape[(*ndim)++] = 1;
    }
}

/* Reads a in place when its memory, ordered by stride, is dense, the reduced dims are
 * one block in that order and the kept dims keep their logical order (so the output
 * comes out row-major). Size-1 dims do not matter either way. */
static bool plan_in_place(kn_tensor *a, const bool *reduced, reduce_plan *p)
{
    int order[KN_MAX_DIMS], n = 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != 1) order[n++] = d;
    for (int i = 1; i < n; i++) /* by stride, largest first; stable */
        for (int k = i; k > 0 && a->strides[order[k]] > a->strides[order[k - 1]]; k--) {
            int tmp = order[k];
            order[k] = order[k - 1];
            order[k - 1] = tmp;
        }
    int64_t expected = 1;
    for (int k = n - 1; k >= 0; k--) {
        if (a->strides[order[k]] != expected) return false;
        expected *= a->shape[order[k]];
    }
    int phase = 0; /* 0: kept before the block, 1: in the block, 2: kept after it */
    int last_kept = -1;
    p->outer = p->reduce = p->inner = 1;
    for (int k = 0; k < n; k++) {
        int d = order[k];
        if (reduced[d]) {
            if (phase == 2) return false;
            phase = 1;
            p->reduce *= a->shape[d];
        } else {
            if (d < last_kept) return false;
            last_kept = d;
            if (phase == 1) phase = 2;
            if (phase == 2)
                p->inner *= a->shape[d];
            else
                p->outer *= a->shape[d];
        }
    }
    p->data = kn__data_ptr(a);
    p->copy = NULL;
    return true;
}

static bool plan_reduce(kn_tensor *a, const bool *reduced, reduce_plan *p)
{
    if (kn_numel(a) == 0 || plan_in_place(a, reduced, p)) {
        if (kn_numel(a) == 0) { /* sizes only; nothing is read */
            p->outer = p->reduce = 1, p->inner = 1;
            for (int d = 0; d < a->ndim; d++) *(reduced[d] ? &p->reduce : &p->outer) *= a->shape[d];
            p->data = NULL;
            p->copy = NULL;
        }
        return true;
    }
    /* kept dims first, reduced dims last, copied into a contiguous temporary */
    int64_t shape[KN_MAX_DIMS];
    kn_cpu_operand src = {kn__data_ptr(a), {0}};
    int n = 0;
    p->outer = p->reduce = p->inner = 1;
    for (int pass = 0; pass < 2; pass++)
        for (int d = 0; d < a->ndim; d++) {
            if (reduced[d] != (pass == 1)) continue;
            shape[n] = a->shape[d];
            src.strides[n++] = a->strides[d];
            *(pass ? &p->reduce : &p->outer) *= a->shape[d];
        }
    kn_tensor *copy = kn__empty_raw(shape, n, KN_FLOAT32, a->device);
    if (!copy) return false;
    if (kn__kernel_copy(a->device, shape, n, sizeof(float), kn__operand(copy), src) != KN_OK) {
        kn_release(copy);
        return false;
    }
    p->copy = copy;
    p->data = kn__data_ptr(copy);
    return true;
}

/* ---- backward helpers ---------------------------------------------------------------- */

/* grad (the output's shape, keepdim or not) broadcast over the reduced dims of the
 * input's shape and scaled: a new contiguous tensor, handed to the scope. */
static kn_tensor *spread_grad(kn_tensor *grad, const kn_node_input *in, int64_t mask, bool keepdim,
                              double scale)
{
    kn_cpu_operand src = {kn__data_ptr(grad), {0}};
    int g = 0;
    for (int d = 0; d < in->ndim; d++) {
        bool r = (mask >> d) & 1;
        src.strides[d] = r ? 0 : grad->strides[g];
        if (!r || keepdim) g++;
    }
    if (g != grad->ndim)
        return kn__error_null(KN_ERR_SHAPE, "backward: gradient of shape %s does not fit input %s",
                              kn__shape(grad), kn__shape_of(in->shape, in->ndim));
    kn_tensor *out = kn__empty_raw(in->shape, in->ndim, KN_FLOAT32, grad->device);
    if (!out) return NULL;
    if (kn__kernel_unary(grad->device, scale == 1.0 ? KN_UNARY_COPY : KN_UNARY_MUL_SCALAR,
                         in->shape, in->ndim, kn__operand(out), src, (float)scale, 0.f) != KN_OK) {
        kn_release(out);
        return NULL;
    }
    return kn__result(out);
}

/* ---- sum / mean / var ---------------------------------------------------------------- */

typedef enum { SUM, MEAN, VAR } moment;

static kn_status moment_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    const kn_node_input *in = &node->inputs[0];
    int64_t mask = node->iargs[0];
    bool keepdim = node->iargs[1];
    kn_tensor *g = spread_grad(grad, in, mask, keepdim, node->fargs[0]);
    if (!g) return kn_last_status();
    if (node->iargs[2] == VAR) { /* d var = g * 2 (x - mean) / (n - correction) */
        kn_tensor *x = node->saved[0];
        int dims[KN_MAX_DIMS], n = 0;
        for (int d = 0; d < x->ndim; d++)
            if ((mask >> d) & 1) dims[n++] = d;
        g = kn_mul(g, kn_sub(x, kn_mean(x, dims, n, true)));
    }
    grads[0] = g;
    return g ? KN_OK : kn_last_status();
}

static kn_tensor *moment_op(const char *op, moment kind, kn_tensor *a, const int *dims, int ndims,
                            int correction, bool keepdim)
{
    if (!kn__check_inputs(op, &a, 1) || !kn__check_float(op, a)) return NULL;
    if (on_cuda(a) && !cuda_table(a, op)) return NULL;
    bool reduced[KN_MAX_DIMS];
    if (!parse_dims(op, a, dims, ndims, reduced)) return NULL;
    int64_t shape[KN_MAX_DIMS];
    int ndim;
    output_shape(a, reduced, keepdim, shape, &ndim);
    reduce_plan p;
    if (!plan_reduce(a, reduced, &p)) return NULL;
    kn_tensor *out = kn__empty_raw(shape, ndim, KN_FLOAT32, a->device);
    if (!out) {
        kn_release(p.copy);
        return NULL;
    }
    double n = (double)p.reduce;
    double divisor = kind == SUM ? 1.0 : kind == MEAN ? n : fmax(0.0, n - correction);
    if (on_cuda(a)) {
        const kn_cuda_reduce *r = cuda_table(a, op);
        kn_status status =
            r ? kn__cuda_error(r->sum(a->device.index, p.data, kn__data_ptr(out), p.outer, p.reduce,
                                      p.inner, divisor, kind == VAR))
              : kn_last_status();
        if (status != KN_OK) {
            kn_release(p.copy);
            kn_release(out);
            return NULL;
        }
    } else if (kind == VAR) {
        kn_cpu_var(p.data, kn_data_f32(out), p.outer, p.reduce, p.inner, divisor);
    } else {
        kn_cpu_sum(p.data, kn_data_f32(out), p.outer, p.reduce, p.inner, divisor);
    }
    kn_release(p.copy);
    if (kn__needs_grad(&a, 1)) {
        kn_node *node = kn__node_new(op, moment_backward, &a, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        int64_t mask = 0;
        for (int d = 0; d < a->ndim; d++) mask |= (int64_t)reduced[d] << d;
        node->iargs[0] = mask;
        node->iargs[1] = keepdim;
        node->iargs[2] = kind;
        node->fargs[0] = kind == SUM ? 1.0 : kind == MEAN ? 1.0 / n : 2.0 / divisor;
        if (kind == VAR) kn__node_save(node, a);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

kn_tensor *kn_sum(kn_tensor *a, const int *dims, int ndims, bool keepdim)
{
    return moment_op("sum", SUM, a, dims, ndims, 0, keepdim);
}

kn_tensor *kn_mean(kn_tensor *a, const int *dims, int ndims, bool keepdim)
{
    return moment_op("mean", MEAN, a, dims, ndims, 0, keepdim);
}

kn_tensor *kn_var(kn_tensor *a, const int *dims, int ndims, int correction, bool keepdim)
{
    return moment_op("var", VAR, a, dims, ndims, correction, keepdim);
}

kn_tensor *kn_sum_all(kn_tensor *a)
{
    return moment_op("sum", SUM, a, NULL, 0, 0, false);
}
kn_tensor *kn_mean_all(kn_tensor *a)
{
    return moment_op("mean", MEAN, a, NULL, 0, 0, false);
}

/* ---- max / min along a dim ----------------------------------------------------------- */

/* The gradient goes to the selected element: gx[o, index[o, i], i] = g[o, i]. */
static kn_status select_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    const kn_node_input *in = &node->inputs[0];
    int dim = (int)node->iargs[0];
    kn_tensor *g = kn__result(kn__contiguous_raw(grad)); /* backward runs in a scope */
    kn_tensor *index = node->saved[0];
    kn_tensor *gx = kn__result(kn__empty_raw(in->shape, in->ndim, KN_FLOAT32, grad->device));
    if (!g || !gx) return kn_last_status();
    int64_t outer = 1, reduce = in->ndim > 0 ? in->shape[dim] : 1, inner = 1;
    for (int d = 0; d < in->ndim; d++) {
        if (d < dim) outer *= in->shape[d];
        if (d > dim) inner *= in->shape[d];
    }
    if (on_cuda(grad)) {
        const kn_cuda_reduce *r = cuda_table(grad, node->name);
        if (!r) return kn_last_status();
        grads[0] = gx;
        return kn__cuda_error(r->select_backward(grad->device.index, kn__data_ptr(g),
                                                 kn__data_ptr(index), kn__data_ptr(gx), outer,
                                                 reduce, inner));
    }
    float *out = kn_data_f32(gx);
    const float *gd = kn_data_f32(g);
    const int64_t *id = kn_data_i64(index);
    memset(out, 0, sizeof(float) * (size_t)(outer * reduce * inner));
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++)
            out[(o * reduce + id[o * inner + i]) * inner + i] = gd[o * inner + i];
    grads[0] = gx;
    return KN_OK;
}

/* values (unless want_values is false) and indices of the max/min along dim. */
static kn_tensor *select_op(const char *op, kn_tensor *a, int dim, bool keepdim,
                            kn_tensor **indices, bool is_min, bool want_values)
{
    if (indices) *indices = NULL;
    if (!kn__check_inputs(op, &a, 1) || !kn__check_float(op, a)) return NULL;
    if (on_cuda(a) && !cuda_table(a, op)) return NULL;
    if (!kn__wrap_dim(&dim, a->ndim, op)) return NULL;
    if (a->ndim > 0 && a->shape[dim] == 0)
        return kn__error_null(KN_ERR_SHAPE,
                              "%s: cannot reduce over dim %d of size 0 (input shape %s)", op, dim,
                              kn__shape(a));
    bool reduced[KN_MAX_DIMS] = {false};
    if (a->ndim > 0) reduced[dim] = true;
    int64_t shape[KN_MAX_DIMS];
    int ndim;
    output_shape(a, reduced, keepdim, shape, &ndim);
    reduce_plan p;
    if (!plan_reduce(a, reduced, &p)) return NULL;
    bool grad = want_values && kn__needs_grad(&a, 1);
    kn_tensor *values = want_values ? kn__empty_raw(shape, ndim, KN_FLOAT32, a->device) : NULL;
    kn_tensor *index =
        (indices || grad || !want_values) ? kn__empty_raw(shape, ndim, KN_INT64, a->device) : NULL;
    if ((want_values && !values) || ((indices || grad || !want_values) && !index)) {
        kn_release(values);
        kn_release(index);
        kn_release(p.copy);
        return NULL;
    }
    if (on_cuda(a)) {
        const kn_cuda_reduce *r = cuda_table(a, op);
        kn_status status = r ? kn__cuda_error(r->max(a->device.index, p.data,
                                                     values ? (float *)kn__data_ptr(values) : NULL,
                                                     index ? (int64_t *)kn__data_ptr(index) : NULL,
                                                     p.outer, p.reduce, p.inner, is_min))
                             : kn_last_status();
        if (status != KN_OK) {
            kn_release(values);
            kn_release(index);
            kn_release(p.copy);
            return NULL;
        }
    } else {
        kn_cpu_max(p.data, values ? kn_data_f32(values) : NULL, index ? kn_data_i64(index) : NULL,
                   p.outer, p.reduce, p.inner, is_min);
    }
    kn_release(p.copy);
    if (!want_values) return kn__result(index);
    if (grad) {
        kn_node *node = kn__node_new(op, select_backward, &a, 1);
        if (!node) {
            kn_release(values);
            kn_release(index);
            return NULL;
        }
        node->iargs[0] = dim;
        node->iargs[1] = keepdim;
        kn__node_save(node, index);
        kn__node_attach(values, node);
    }
    if (indices)
        *indices = kn__result(index);
    else
        kn_release(index);
    return kn__result(values);
}

kn_tensor *kn_max(kn_tensor *a, int dim, bool keepdim, kn_tensor **indices)
{
    return select_op("max", a, dim, keepdim, indices, false, true);
}

kn_tensor *kn_min(kn_tensor *a, int dim, bool keepdim, kn_tensor **indices)
{
    return select_op("min", a, dim, keepdim, indices, true, true);
}

kn_tensor *kn_argmax(kn_tensor *a, int dim, bool keepdim)
{
    return select_op("argmax", a, dim, keepdim, NULL, false, false);
}

/* ---- max_all / min_all --------------------------------------------------------------- */

/* As torch.max(): the gradient is shared evenly by every element equal to the result
 * (every NaN when the result is NaN). */
static kn_status extreme_all_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *x = kn__result(kn__contiguous_raw(node->saved[0]));
    if (!x) return kn_last_status();
    kn_tensor *gx = kn__result(kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, grad->device));
    if (!gx) return kn_last_status();
    if (on_cuda(x)) {
        const kn_cuda_reduce *r = cuda_table(x, node->name);
        int64_t one[1] = {1};
        kn_tensor *scratch = kn__result(kn__empty_raw(one, 1, KN_INT64, x->device));
        if (!r || !scratch) return kn_last_status();
        grads[0] = gx;
        return kn__cuda_error(r->extreme_all_backward(
            x->device.index, kn__data_ptr(x), kn_numel(x), kn__data_ptr(node->saved[1]),
            kn__data_ptr(grad), kn__data_ptr(gx), kn__data_ptr(scratch)));
    }
    float v = kn_item(node->saved[1]), g = kn_item(grad);
    const float *xd = kn_data_f32(x);
    float *out = kn_data_f32(gx);
    int64_t n = kn_numel(x), count = 0;
    bool nan = isnan(v);
    for (int64_t i = 0; i < n; i++) count += nan ? isnan(xd[i]) : xd[i] == v;
    float share = g / (float)count;
    for (int64_t i = 0; i < n; i++) out[i] = (nan ? isnan(xd[i]) : xd[i] == v) ? share : 0.f;
    grads[0] = gx;
    return KN_OK;
}

static kn_tensor *extreme_all(const char *op, kn_tensor *a, bool is_min)
{
    if (!kn__check_inputs(op, &a, 1) || !kn__check_float(op, a)) return NULL;
    if (on_cuda(a) && !cuda_table(a, op)) return NULL;
    if (kn_numel(a) == 0)
        return kn__error_null(KN_ERR_SHAPE,
                              "%s: cannot reduce a tensor with no elements (shape %s); "
                              "give a dim to reduce instead",
                              op, kn__shape(a));
    bool reduced[KN_MAX_DIMS];
    for (int d = 0; d < KN_MAX_DIMS; d++) reduced[d] = d < a->ndim;
    reduce_plan p;
    if (!plan_reduce(a, reduced, &p)) return NULL;
    int64_t scalar_shape[1] = {1};
    kn_tensor *out = kn__empty_raw(scalar_shape, 0, KN_FLOAT32, a->device);
    if (!out) {
        kn_release(p.copy);
        return NULL;
    }
    if (on_cuda(a)) {
        const kn_cuda_reduce *r = cuda_table(a, op);
        kn_status status =
            r ? kn__cuda_error(r->max(a->device.index, p.data, kn__data_ptr(out), NULL, 1,
                                      p.outer * p.reduce * p.inner, 1, is_min))
              : kn_last_status();
        if (status != KN_OK) {
            kn_release(p.copy);
            kn_release(out);
            return NULL;
        }
    } else {
        kn_cpu_max(p.data, kn_data_f32(out), NULL, 1, p.outer * p.reduce * p.inner, 1, is_min);
    }
    kn_release(p.copy);
    if (kn__needs_grad(&a, 1)) {
        kn_node *node = kn__node_new(op, extreme_all_backward, &a, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        kn__node_save(node, a);
        kn__node_save(node, out);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

kn_tensor *kn_max_all(kn_tensor *a)
{
    return extreme_all("max", a, false);
}
kn_tensor *kn_min_all(kn_tensor *a)
{
    return extreme_all("min", a, true);
}

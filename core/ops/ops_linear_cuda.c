/*
 * ops_linear_cuda.c — kn_linear on a CUDA device, forward and backward (kn_linear in
 * ops_matmul.c checks the inputs and sends CUDA tensors here).
 *
 * Forward: y = x·Wᵀ + b as one cublasLt product with the bias added in its epilogue
 * (kernels/cuda/blaslt.cu). Backward: grad_x = g·W and grad_W = gᵀ·x through cuBLAS,
 * with the bias gradient (the column sums of g) reduced in grad_W's product by a
 * cublasLt epilogue when W needs a gradient. Where cublasLt has no algorithm for a
 * shape, the same results come from cuBLAS's sgemm: the bias copied into every row of y
 * first and the product added to it, the bias gradient summed on its own. Every product
 * uses TF32 exactly when the calling thread allows it (kn_set_allow_tf32).
 *
 * Operands: x (and g) are used as [rows, features] matrices when contiguous, else
 * copied; W as it is when row- or column-major, else copied.
 */
#include "kn_internal.h"
#include "kn_cuda.h"

#include <string.h>

/* W [out, in] as a BLAS operand: row_major (element (o, i) at o * ld + i) or column-
 * major (at i * ld + o). False when neither (the caller copies W). */
static bool weight_layout(const kn_tensor *w, bool *row_major, int64_t *ld)
{
    int64_t out_f = w->shape[0], in_f = w->shape[1], s0 = w->strides[0], s1 = w->strides[1];
    int64_t o = out_f > 1 ? out_f : 1, i = in_f > 1 ? in_f : 1;
    if ((s1 == 1 || in_f <= 1) && (out_f <= 1 || s0 >= i)) {
        *row_major = true;
        *ld = out_f <= 1 ? i : s0;
        return true;
    }
    if ((s0 == 1 || out_f <= 1) && (in_f <= 1 || s1 >= o)) {
        *row_major = false;
        *ld = in_f <= 1 ? o : s1;
        return true;
    }
    return false;
}

/* W itself (retained) when weight_layout takes it, else a contiguous copy; one
 * reference, unregistered, NULL with the error set. */
static kn_tensor *weight_operand(kn_tensor *w, bool *row_major, int64_t *ld)
{
    if (weight_layout(w, row_major, ld)) return kn_retain(w);
    kn_tensor *copy = kn__copy_raw(w);
    if (copy) weight_layout(copy, row_major, ld);
    return copy;
}

/* The product of t's leading dims: the rows of t seen as [rows, last]. */
static int64_t leading_rows(const kn_tensor *t)
{
    int64_t rows = 1;
    for (int d = 0; d < t->ndim - 1; d++) rows *= t->shape[d];
    return rows;
}

/* ---- forward ------------------------------------------------------------------------ */

/* y[rows, out] = x[rows, in] · Wᵀ (+ bias): x row-major with ld in, W as weight_layout
 * says, bias contiguous. */
static kn_status forward_product(kn_device dev, int64_t rows, int64_t in_f, int64_t out_f,
                                 const float *x, const float *w, bool w_row_major, int64_t ldw,
                                 const float *bias, float *y)
{
    if (rows == 0 || out_f == 0) return KN_OK;
    /* Wᵀ as the [in, out] operand B: stored transposed exactly when W is row-major */
    bool wt_trans = w_row_major;
    int64_t ldx = in_f > 0 ? in_f : 1;
    if (bias) {
        const kn_cuda_blaslt *lt = kn__cuda_blaslt(dev, "linear");
        if (lt) {
            bool done = false;
            kn_status st =
                kn__cuda_error(lt->gemm_bias(dev.index, kn_get_allow_tf32(), false, wt_trans, rows,
                                             out_f, in_f, x, ldx, w, ldw, bias, y, out_f, &done));
            if (st != KN_OK || done) return st;
        }
        /* no algorithm: every row of y = bias, then y = x·Wᵀ + y */
        int64_t shape[2] = {rows, out_f};
        kn_cpu_operand out = {y, {out_f, 1}}, in = {(void *)bias, {0, 1}};
        kn_status st = kn__kernel_copy(dev, shape, 2, sizeof(float), out, in);
        if (st != KN_OK) return st;
    }
    return kn__kernel_sgemm(dev, false, wt_trans, rows, out_f, in_f, 1.f, x, ldx, 0, w, ldw, 0,
                            bias ? 1.f : 0.f, y, out_f, 0, 1);
}

/* ---- backward ----------------------------------------------------------------------- */

/* A zero-filled float32 tensor on dev (unregistered), for gradients of empty sums. */
static kn_tensor *zeros_on(kn_device dev, const int64_t *shape, int ndim)
{
    kn_tensor *t = kn__empty_raw(shape, ndim, KN_FLOAT32, dev);
    float zero = 0.f;
    if (t && kn_numel(t) > 0 &&
        kn__kernel_fill(dev, t->shape, t->ndim, sizeof(float), kn__operand(t), &zero) != KN_OK) {
        kn_release(t);
        return NULL;
    }
    return t;
}

/* grad_x = g·W, grad_W = gᵀ·x, grad_b = column sums of g (g seen as [rows, out]). */
static kn_status linear_cuda_backward(kn_node *node, kn_tensor *g, kn_tensor **grads)
{
    kn_tensor *x = node->saved[0], *w = node->saved[1];
    kn_device dev = g->device;
    int64_t out_f = w->shape[0], in_f = w->shape[1], rows = leading_rows(x);
    bool need_x = node->inputs[0].needs_grad, need_w = node->inputs[1].needs_grad;
    bool need_b = node->n_inputs > 2 && node->inputs[2].needs_grad;
    kn_tensor *gc = kn__result(kn__contiguous_raw(g)); /* freed with the backward's scope */
    if (!gc) return kn_last_status();
    const float *gp = kn__data_ptr(gc);
    int64_t ldg = out_f > 0 ? out_f : 1;
    kn_status st = KN_OK;

    if (need_x) { /* [rows, in] = g[rows, out] · W[out, in] */
        bool w_row_major = true;
        int64_t ldw = 0;
        kn_tensor *wc = kn__result(weight_operand(w, &w_row_major, &ldw));
        kn_tensor *gx = kn__result(kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, dev));
        if (!wc || !gx) return kn_last_status();
        st = kn__kernel_sgemm(dev, false, !w_row_major, rows, in_f, out_f, 1.f, gp, ldg, 0,
                              kn__data_ptr(wc), ldw, 0, 0.f, kn__data_ptr(gx), in_f, 0, 1);
        if (st != KN_OK) return st;
        grads[0] = gx;
    }
    bool bias_done = false;
    if (need_w) { /* [out, in] = gᵀ[out, rows] · x[rows, in], maybe with the bias sums */
        kn_tensor *xc = kn__result(kn__contiguous_raw(x));
        kn_tensor *gw = kn__result(kn__empty_raw(w->shape, 2, KN_FLOAT32, dev));
        const kn_cuda_blaslt *lt = need_b ? kn__cuda_blaslt(dev, "linear backward") : NULL;
        kn_tensor *gb = lt ? kn__result(kn__empty_raw(&out_f, 1, KN_FLOAT32, dev)) : NULL;
        if (!xc || !gw || (lt && !gb)) return kn_last_status();
        const float *xp = kn__data_ptr(xc);
        int64_t ldx = in_f > 0 ? in_f : 1;
        if (lt) {
            st = kn__cuda_error(lt->gemm_bgrad(dev.index, kn_get_allow_tf32(), true, false, out_f,
                                               in_f, rows, gp, ldg, xp, ldx, kn__data_ptr(gw), in_f,
                                               kn__data_ptr(gb), &bias_done));
            if (st != KN_OK) return st;
        }
        if (!bias_done) {
            st = kn__kernel_sgemm(dev, true, false, out_f, in_f, rows, 1.f, gp, ldg, 0, xp, ldx, 0,
                                  0.f, kn__data_ptr(gw), in_f, 0, 1);
            if (st != KN_OK) return st;
        }
        grads[1] = gw;
        if (bias_done) grads[2] = gb;
    }
    if (need_b && !bias_done) { /* the sums of g over its leading dims */
        kn_tensor *gb = rows == 0 ? kn__result(zeros_on(dev, &out_f, 1))
                                  : kn__device_sum_to_shape(gc, &out_f, 1);
        if (!gb) return kn_last_status();
        grads[2] = gb;
    }
    return KN_OK;
}

/* ---- kn_linear's CUDA path ---------------------------------------------------------- */

kn_tensor *kn__linear_cuda(kn_tensor *x, kn_tensor *weight, kn_tensor *bias)
{
    kn_tensor *inputs[3] = {x, weight, bias};
    int n_inputs = bias ? 3 : 2;
    int64_t out_f = weight->shape[0], in_f = weight->shape[1], rows = leading_rows(x);
    bool w_row_major = true;
    int64_t ldw = 0;
    kn_tensor *xc = kn__contiguous_raw(x);
    kn_tensor *wc = xc ? weight_operand(weight, &w_row_major, &ldw) : NULL;
    /* the epilogue reads the bias as a contiguous vector */
    kn_tensor *bc = NULL;
    if (wc && bias) bc = bias->strides[0] == 1 || out_f <= 1 ? kn_retain(bias) : kn__copy_raw(bias);
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[x->ndim - 1] = out_f;
    kn_tensor *out =
        wc && (bc || !bias) ? kn__empty_raw(shape, x->ndim, KN_FLOAT32, x->device) : NULL;
    kn_status st =
        out ? forward_product(x->device, rows, in_f, out_f, kn__data_ptr(xc), kn__data_ptr(wc),
                              w_row_major, ldw, bc ? kn__data_ptr(bc) : NULL, kn__data_ptr(out))
            : KN_OK;
    /* back to the cache at once: stream order keeps them intact for the product */
    kn_release(xc);
    kn_release(wc);
    kn_release(bc);
    if (!out || st != KN_OK) {
        kn_release(out);
        return NULL;
    }
    if (kn__needs_grad(inputs, n_inputs)) {
        kn_node *node = kn__node_new("linear", linear_cuda_backward, inputs, n_inputs);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        kn__node_save(node, x);
        kn__node_save(node, weight);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/*
 * ops_matmul.c — kn_matmul (torch.matmul: dot, matrix-vector, matrix-matrix and
 * batched products with broadcast batch dims) and kn_linear (x·Wᵀ + b as one fused
 * GEMM; on CUDA it is ops_linear_cuda.c's), forward and backward. Operands go to BLAS
 * as they are whenever their strides allow it (row-major or transposed); only other
 * layouts are copied.
 */
#include "kn_internal.h"
#include "../kernels/cpu/kn_cpu_linalg.h"

#include <string.h>

/* A matrix as BLAS takes it: base pointer, whether it is stored transposed, row stride. */
typedef struct blas_mat {
    const float *data;
    bool trans;
    int64_t ld;
} blas_mat;

/* Whether a rows x cols matrix with element strides (rs, cs) is a BLAS operand as it
 * stands: (s, 1) is row-major with ld s, (1, s) is a transposed one. */
static bool blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, bool *trans,
                        int64_t *ld)
{
    int64_t r = rows > 1 ? rows : 1, c = cols > 1 ? cols : 1;
    if (cs == 1 || cols == 1) {
        int64_t l = rows == 1 ? c : rs;
        if (l >= c) {
            *trans = false;
            *ld = l;
            return true;
        }
    }
    if (rs == 1 || rows == 1) {
        int64_t l = cols == 1 ? r : cs;
        if (l >= r) {
            *trans = true;
            *ld = l;
            return true;
        }
    }
    return false;
}

/* t viewed as a [rows, last] matrix, its leading dims folded into rows, when the
 * strides allow that and BLAS takes the result. */
static bool fold_matrix(const kn_tensor *t, int64_t *rows, int64_t *cols, blas_mat *m)
{
    int nd = t->ndim;
    *cols = nd ? t->shape[nd - 1] : 1;
    *rows = 1;
    for (int i = 0; i < nd - 1; i++) *rows *= t->shape[i];
    int64_t cs = nd ? t->strides[nd - 1] : 1, rs = 0;
    if (nd >= 2) { /* leading dims must nest: each stride is the next one's span */
        int last = -1;
        for (int i = nd - 2; i >= 0; i--) {
            if (t->shape[i] == 1) continue;
            if (last < 0)
                rs = t->strides[i];
            else if (t->strides[i] != t->strides[last] * t->shape[last])
                return false;
            last = i;
        }
    }
    m->data = kn__data_ptr(t);
    return blas_layout(*rows, *cols, rs, cs, &m->trans, &m->ld);
}

/* fold_matrix, or a contiguous copy of t folded (held in *copy, which the caller releases). */
static bool fold_or_copy(kn_tensor *t, int64_t *rows, int64_t *cols, blas_mat *m, kn_tensor **copy)
{
    *copy = NULL;
    if (fold_matrix(t, rows, cols, m)) return true;
    *copy = kn__copy_raw(t);
    return *copy && fold_matrix(*copy, rows, cols, m);
}

/* ---- matmul ---------------------------------------------------------------------- */

/* An operand promoted to >= 2-D (1-D a becomes [1, k], 1-D b becomes [k, 1]). */
typedef struct promoted {
    int ndim;
    int64_t shape[KN_MAX_DIMS + 1], strides[KN_MAX_DIMS + 1];
} promoted;

static promoted promote(const kn_tensor *t, bool is_left)
{
    promoted p = {.ndim = t->ndim};
    memcpy(p.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    memcpy(p.strides, t->strides, sizeof(int64_t) * (size_t)t->ndim);
    if (t->ndim == 1) {
        p.ndim = 2;
        int at = is_left ? 0 : 1;
        p.shape[1 - at] = t->shape[0];
        p.strides[1 - at] = t->strides[0];
        p.shape[at] = 1;
        p.strides[at] = 0;
    }
    return p;
}

typedef struct matmul_plan {
    int batch_ndim;
    int64_t batch_shape[KN_MAX_DIMS];
    int64_t a_bstrides[KN_MAX_DIMS], b_bstrides[KN_MAX_DIMS]; /* 0 on broadcast dims */
    int64_t m, n, k;
    const float *a, *b;
    float *c;
    bool a_trans, b_trans;
    int64_t lda, ldb;
} matmul_plan;

static void batch_offsets(const matmul_plan *p, int64_t index, int64_t *a_off, int64_t *b_off)
{
    *a_off = *b_off = 0;
    for (int d = p->batch_ndim - 1; d >= 0; d--) {
        int64_t i = index % p->batch_shape[d];
        index /= p->batch_shape[d];
        *a_off += i * p->a_bstrides[d];
        *b_off += i * p->b_bstrides[d];
    }
}

static void matmul_range(void *context, int64_t begin, int64_t end)
{
    const matmul_plan *p = context;
    for (int64_t i = begin; i < end; i++) {
        int64_t a_off, b_off;
        batch_offsets(p, i, &a_off, &b_off);
        kn_cpu_gemm(p->a_trans, p->b_trans, p->m, p->n, p->k, 1.f, p->a + a_off, p->lda,
                    p->b + b_off, p->ldb, 0.f, p->c + i * p->m * p->n, p->n);
    }
}

/* Below this many multiply-adds OpenBLAS runs a GEMM on the calling thread, so small
 * batched products can be spread over the pool without nesting two thread pools. */
#define BLAS_SINGLE_THREAD_WORK 262144

static bool batch_folds(const promoted *a, const matmul_plan *p)
{
    int64_t expected = p->lda * p->m;
    for (int d = a->ndim - 3; d >= 0; d--) {
        if (a->shape[d] == 1) continue;
        if (a->strides[d] != expected) return false;
        expected *= a->shape[d];
    }
    return true;
}

static void run_matmul(matmul_plan *p, const promoted *a, int64_t batches, bool b_single)
{
    if (batches == 1 || (b_single && !p->a_trans && batch_folds(a, p))) {
        /* one GEMM: a's batch dims fold into its rows */
        kn_cpu_gemm(p->a_trans, p->b_trans, p->m * batches, p->n, p->k, 1.f, p->a, p->lda, p->b,
                    p->ldb, 0.f, p->c, p->n);
        return;
    }
    int64_t work = p->m * p->n * p->k;
    if (work < BLAS_SINGLE_THREAD_WORK) {
        int64_t grain = 65536 / (work > 0 ? work : 1);
        kn_cpu_parallel_for(batches, grain > 0 ? grain : 1, matmul_range, p);
    } else {
        matmul_range(p, 0, batches);
    }
}

/* ---- matmul on a CUDA device (cuBLAS) --------------------------------------------- */

/* The one stride that steps through the flattened batch, when the batch strides allow
 * it (nested, or all 0 for a broadcast operand). */
static bool single_stride(const matmul_plan *p, const int64_t *bstrides, int64_t *stride)
{
    int64_t expected = -1;
    *stride = 0;
    for (int d = p->batch_ndim - 1; d >= 0; d--) {
        if (p->batch_shape[d] == 1) continue;
        if (expected >= 0 && bstrides[d] != expected) return false;
        if (expected < 0) *stride = bstrides[d];
        expected = bstrides[d] * p->batch_shape[d];
    }
    return true;
}

/* src's [rows, cols] matrices over the whole broadcast batch as one contiguous copy
 * (for batch strides cuBLAS cannot step through). Unregistered, NULL on error. */
static kn_tensor *expand_copy(kn_tensor *src, const promoted *pp, const matmul_plan *p,
                              const int64_t *bstrides, int64_t rows, int64_t cols)
{
    int ndim = p->batch_ndim + 2;
    if (ndim > KN_MAX_DIMS)
        return kn__error_null(KN_ERR_SHAPE, "matmul: %d batch dims are more than cuda takes here",
                              p->batch_ndim);
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    memcpy(shape, p->batch_shape, sizeof(int64_t) * (size_t)p->batch_ndim);
    memcpy(strides, bstrides, sizeof(int64_t) * (size_t)p->batch_ndim);
    shape[ndim - 2] = rows;
    shape[ndim - 1] = cols;
    strides[ndim - 2] = pp->strides[pp->ndim - 2];
    strides[ndim - 1] = pp->strides[pp->ndim - 1];
    kn_tensor *view = kn__view_raw(src, shape, strides, ndim, src->offset);
    if (!view) return NULL;
    kn_tensor *copy = kn__copy_raw(view);
    kn_release(view);
    return copy;
}

/* Runs the plan on out's CUDA device: one GEMM when a's batch folds into its rows,
 * else one strided-batched GEMM (copying an operand whose batch does not stride). */
static kn_status run_matmul_cuda(matmul_plan *p, const promoted *pa, const promoted *pb,
                                 kn_tensor *a, kn_tensor *b, int64_t batches, bool b_single,
                                 kn_tensor *out)
{
    if (batches == 1 || (b_single && !p->a_trans && batch_folds(pa, p)))
        return kn__kernel_sgemm(out->device, p->a_trans, p->b_trans, p->m * batches, p->n, p->k,
                                1.f, p->a, p->lda, 0, p->b, p->ldb, 0, 0.f, p->c, p->n, 0, 1);
    int64_t stride_a, stride_b;
    kn_tensor *a_copy = NULL, *b_copy = NULL;
    if (!single_stride(p, p->a_bstrides, &stride_a)) {
        a_copy = expand_copy(a, pa, p, p->a_bstrides, p->m, p->k);
        if (!a_copy) return kn_last_status();
        p->a = kn__data_ptr(a_copy);
        p->a_trans = false;
        p->lda = p->k;
        stride_a = p->m * p->k;
    }
    if (!single_stride(p, p->b_bstrides, &stride_b)) {
        b_copy = expand_copy(b, pb, p, p->b_bstrides, p->k, p->n);
        if (!b_copy) {
            kn_release(a_copy);
            return kn_last_status();
        }
        p->b = kn__data_ptr(b_copy);
        p->b_trans = false;
        p->ldb = p->n;
        stride_b = p->k * p->n;
    }
    kn_status status =
        kn__kernel_sgemm(out->device, p->a_trans, p->b_trans, p->m, p->n, p->k, 1.f, p->a, p->lda,
                         stride_a, p->b, p->ldb, stride_b, 0.f, p->c, p->n, p->m * p->n, batches);
    /* the copies go back to the cache now; stream order keeps them intact for the GEMM */
    kn_release(a_copy);
    kn_release(b_copy);
    return status;
}

static kn_tensor *insert_unit_dim(kn_tensor *t, int at)
{
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    for (int i = 0, j = 0; i <= t->ndim; i++) {
        if (i == at) {
            shape[i] = 1;
            strides[i] = 1;
            continue;
        }
        shape[i] = t->shape[j];
        strides[i] = t->strides[j++];
    }
    return kn__result(kn__view_raw(t, shape, strides, t->ndim + 1, t->offset));
}

static kn_tensor *drop_unit_dim(kn_tensor *t, int at)
{
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    for (int i = 0, j = 0; i < t->ndim; i++) {
        if (i == at) continue;
        shape[j] = t->shape[i];
        strides[j++] = t->strides[i];
    }
    return kn__result(kn__view_raw(t, shape, strides, t->ndim - 1, t->offset));
}

static kn_tensor *swap_last(kn_tensor *t)
{
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    memcpy(strides, t->strides, sizeof(int64_t) * (size_t)t->ndim);
    int n = t->ndim;
    shape[n - 2] = t->shape[n - 1];
    shape[n - 1] = t->shape[n - 2];
    strides[n - 2] = t->strides[n - 1];
    strides[n - 1] = t->strides[n - 2];
    return kn__result(kn__view_raw(t, shape, strides, n, t->offset));
}

/* [B..., n, k] as [B*n, k] (a view when the strides allow it). */
static kn_tensor *fold_rows(kn_tensor *t)
{
    int64_t rows, cols;
    blas_mat m;
    kn_tensor *src = t, *copy = NULL;
    if (!fold_matrix(t, &rows, &cols, &m) || m.trans) {
        copy = kn__copy_raw(t);
        if (!copy) return NULL;
        kn__result(copy);
        src = copy;
        fold_matrix(src, &rows, &cols, &m);
    }
    int64_t shape[2] = {rows, cols}, strides[2] = {m.ld, 1};
    return kn__result(kn__view_raw(src, shape, strides, 2, src->offset));
}

/* grad_a = g·bᵀ and grad_b = aᵀ·g on the promoted shapes; the engine sums broadcast
 * batch dims away. */
static kn_status matmul_backward(kn_node *node, kn_tensor *g, kn_tensor **grads)
{
    kn_tensor *a = node->saved[0], *b = node->saved[1];
    bool need_a = node->inputs[0].needs_grad, need_b = node->inputs[1].needs_grad;
    if (a->ndim == 1 && b->ndim == 1) {
        if (need_a) grads[0] = kn_mul(g, b);
        if (need_b) grads[1] = kn_mul(g, a);
        return KN_OK;
    }
    kn_tensor *g2 = g, *a2 = a, *b2 = b;
    if (b->ndim == 1) {
        g2 = insert_unit_dim(g2, g2->ndim);
        b2 = insert_unit_dim(b, 1);
    }
    if (a->ndim == 1) {
        g2 = insert_unit_dim(g2, g2->ndim - 1);
        a2 = insert_unit_dim(a, 0);
    }
    if (need_a) {
        kn_tensor *ga = kn_matmul(g2, swap_last(b2));
        if (ga && a->ndim == 1) ga = drop_unit_dim(ga, ga->ndim - 2);
        if (!ga) return kn_last_status();
        grads[0] = ga;
    }
    if (need_b) {
        kn_tensor *gb;
        if (b2->ndim == 2 && a2->ndim > 2) /* sum over the batch inside one GEMM */
            gb = kn_matmul(swap_last(fold_rows(a2)), fold_rows(g2));
        else
            gb = kn_matmul(swap_last(a2), g2);
        if (gb && b->ndim == 1) gb = drop_unit_dim(gb, gb->ndim - 1);
        if (!gb) return kn_last_status();
        grads[1] = gb;
    }
    return KN_OK;
}

static kn_tensor *matmul_forward(kn_tensor *a, kn_tensor *b)
{
    if (a->ndim == 1 && b->ndim == 1 && a->device.type == KN_DEVICE_CPU) {
        if (a->shape[0] != b->shape[0])
            return kn__error_null(KN_ERR_SHAPE,
                                  "matmul: 1-D tensors of shapes %s and %s have different sizes "
                                  "(%lld != %lld)",
                                  kn__shape(a), kn__shape(b), (long long)a->shape[0],
                                  (long long)b->shape[0]);
        kn_tensor *out = kn__empty_raw(NULL, 0, KN_FLOAT32, a->device);
        if (out)
            *(float *)kn__data_ptr(out) = kn_cpu_dot(a->shape[0], kn__data_ptr(a), a->strides[0],
                                                     kn__data_ptr(b), b->strides[0]);
        return out;
    }
    promoted pa = promote(a, true), pb = promote(b, false);
    matmul_plan p = {0};
    p.m = pa.shape[pa.ndim - 2];
    p.k = pa.shape[pa.ndim - 1];
    p.n = pb.shape[pb.ndim - 1];
    if (pb.shape[pb.ndim - 2] != p.k)
        return kn__error_null(
            KN_ERR_SHAPE, "matmul: shapes %s and %s cannot be multiplied (%lld != %lld)",
            kn__shape(a), kn__shape(b), (long long)p.k, (long long)pb.shape[pb.ndim - 2]);
    int a_bd = pa.ndim - 2, b_bd = pb.ndim - 2;
    p.batch_ndim = a_bd > b_bd ? a_bd : b_bd;
    int64_t batches = 1, b_batches = 1;
    for (int d = 0; d < p.batch_ndim; d++) {
        int ai = d - (p.batch_ndim - a_bd), bi = d - (p.batch_ndim - b_bd);
        int64_t da = ai >= 0 ? pa.shape[ai] : 1, db = bi >= 0 ? pb.shape[bi] : 1;
        if (da != db && da != 1 && db != 1)
            return kn__error_null(KN_ERR_SHAPE,
                                  "matmul: batch dimensions of %s and %s cannot be broadcast "
                                  "(%lld vs %lld at batch dim %d)",
                                  kn__shape(a), kn__shape(b), (long long)da, (long long)db, d);
        p.batch_shape[d] = da == 1 ? db : da;
        batches *= p.batch_shape[d];
        b_batches *= db;
    }
    int64_t shape[KN_MAX_DIMS + 2];
    int ndim = p.batch_ndim;
    memcpy(shape, p.batch_shape, sizeof(int64_t) * (size_t)ndim);
    if (a->ndim > 1) shape[ndim++] = p.m;
    if (b->ndim > 1) shape[ndim++] = p.n;
    if (ndim > KN_MAX_DIMS)
        return kn__error_null(KN_ERR_SHAPE,
                              "matmul: result of %s and %s would have more than %d dims",
                              kn__shape(a), kn__shape(b), KN_MAX_DIMS);
    kn_tensor *out = kn__empty_raw(shape, ndim, KN_FLOAT32, a->device);
    if (!out) return NULL;
    kn_tensor *a_copy = NULL, *b_copy = NULL;
    if (!blas_layout(p.m, p.k, pa.strides[pa.ndim - 2], pa.strides[pa.ndim - 1], &p.a_trans,
                     &p.lda)) {
        a_copy = kn__copy_raw(a);
        if (!a_copy) goto fail;
        pa = promote(a_copy, true);
        blas_layout(p.m, p.k, pa.strides[pa.ndim - 2], pa.strides[pa.ndim - 1], &p.a_trans, &p.lda);
    }
    if (!blas_layout(p.k, p.n, pb.strides[pb.ndim - 2], pb.strides[pb.ndim - 1], &p.b_trans,
                     &p.ldb)) {
        b_copy = kn__copy_raw(b);
        if (!b_copy) goto fail;
        pb = promote(b_copy, false);
        blas_layout(p.k, p.n, pb.strides[pb.ndim - 2], pb.strides[pb.ndim - 1], &p.b_trans, &p.ldb);
    }
    for (int d = 0; d < p.batch_ndim; d++) {
        int ai = d - (p.batch_ndim - a_bd), bi = d - (p.batch_ndim - b_bd);
        p.a_bstrides[d] = ai >= 0 && pa.shape[ai] != 1 ? pa.strides[ai] : 0;
        p.b_bstrides[d] = bi >= 0 && pb.shape[bi] != 1 ? pb.strides[bi] : 0;
    }
    p.a = kn__data_ptr(a_copy ? a_copy : a);
    p.b = kn__data_ptr(b_copy ? b_copy : b);
    p.c = kn__data_ptr(out);
    if (out->device.type != KN_DEVICE_CPU) {
        kn_status status = batches > 0
                               ? run_matmul_cuda(&p, &pa, &pb, a_copy ? a_copy : a,
                                                 b_copy ? b_copy : b, batches, b_batches == 1, out)
                               : KN_OK;
        if (status != KN_OK) goto fail;
        kn_release(a_copy);
        kn_release(b_copy);
        return out;
    }
    if (batches > 0) run_matmul(&p, &pa, batches, b_batches == 1);
    kn_release(a_copy);
    kn_release(b_copy);
    return out;
fail:
    kn_release(a_copy);
    kn_release(b_copy);
    kn_release(out);
    return NULL;
}

kn_tensor *kn_matmul(kn_tensor *a, kn_tensor *b)
{
    kn_tensor *inputs[2] = {a, b};
    if (!kn__check_inputs("matmul", inputs, 2)) return NULL;
    if (!kn__check_float("matmul", a) || !kn__check_float("matmul", b)) return NULL;
    if (a->ndim == 0 || b->ndim == 0)
        return kn__error_null(KN_ERR_SHAPE,
                              "matmul: both arguments need at least 1 dimension, got shapes %s "
                              "and %s",
                              kn__shape(a), kn__shape(b));
    kn_tensor *out = matmul_forward(a, b);
    if (!out) return NULL;
    if (kn__needs_grad(inputs, 2)) {
        kn_node *node = kn__node_new("matmul", matmul_backward, inputs, 2);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        kn__node_save(node, a);
        kn__node_save(node, b);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/* ---- linear ---------------------------------------------------------------------- */

/* grad_x = g·W, grad_W = gᵀ·x, grad_b = column sums of g, each one GEMM (or pass). */
static kn_status linear_backward(kn_node *node, kn_tensor *g, kn_tensor **grads)
{
    kn_tensor *x = node->saved[0], *w = node->saved[1];
    int64_t rows, out_f, x_rows, in_f;
    blas_mat gm, xm;
    kn_tensor *g_copy = NULL, *x_copy = NULL;
    if (!fold_matrix(g, &rows, &out_f, &gm) || gm.trans) { /* row sums need g row-major */
        g_copy = kn__copy_raw(g);
        if (!g_copy) return kn_last_status();
        kn__result(g_copy);
        fold_matrix(g_copy, &rows, &out_f, &gm);
    }
    if (node->inputs[0].needs_grad) {
        kn_tensor *gx = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device);
        if (!gx) return kn_last_status();
        int64_t w_rows, w_cols;
        blas_mat wm;
        kn_tensor *w_copy;
        if (!fold_or_copy(w, &w_rows, &w_cols, &wm, &w_copy)) {
            kn_release(gx);
            return kn_last_status();
        }
        kn__result(w_copy);
        kn_cpu_gemm(false, wm.trans, rows, w_cols, out_f, 1.f, gm.data, gm.ld, wm.data, wm.ld, 0.f,
                    kn__data_ptr(gx), w_cols);
        grads[0] = kn__result(gx);
    }
    if (node->inputs[1].needs_grad) {
        if (!fold_or_copy(x, &x_rows, &in_f, &xm, &x_copy)) return kn_last_status();
        kn__result(x_copy);
        kn_tensor *gw = kn__empty_raw(w->shape, 2, KN_FLOAT32, w->device);
        if (!gw) return kn_last_status();
        kn_cpu_gemm(true, xm.trans, out_f, in_f, rows, 1.f, gm.data, gm.ld, xm.data, xm.ld, 0.f,
                    kn__data_ptr(gw), in_f);
        grads[1] = kn__result(gw);
    }
    if (node->n_inputs > 2 && node->inputs[2].needs_grad) {
        kn_tensor *gb = kn__empty_raw(&out_f, 1, KN_FLOAT32, g->device);
        if (!gb) return kn_last_status();
        kn_cpu_sum_rows(gm.data, rows, out_f, gm.ld, kn__data_ptr(gb), false);
        grads[2] = kn__result(gb);
    }
    return KN_OK;
}

kn_tensor *kn_linear(kn_tensor *x, kn_tensor *weight, kn_tensor *bias)
{
    kn_tensor *inputs[3] = {x, weight, bias};
    int n_inputs = bias ? 3 : 2;
    if (!kn__check_inputs("linear", inputs, n_inputs)) return NULL;
    if (!kn__check_float("linear", x) || !kn__check_float("linear", weight) ||
        (bias && !kn__check_float("linear", bias)))
        return NULL;
    if (weight->ndim != 2)
        return kn__error_null(KN_ERR_SHAPE, "linear: weight must be 2-D [out, in], got %s",
                              kn__shape(weight));
    int64_t out_f = weight->shape[0], in_f = weight->shape[1];
    if (x->ndim < 1 || x->shape[x->ndim - 1] != in_f)
        return kn__error_null(KN_ERR_SHAPE,
                              "linear: input %s has %lld features but weight %s expects %lld",
                              kn__shape(x), (long long)(x->ndim ? x->shape[x->ndim - 1] : 0),
                              kn__shape(weight), (long long)in_f);
    if (bias && (bias->ndim != 1 || bias->shape[0] != out_f))
        return kn__error_null(KN_ERR_SHAPE,
                              "linear: bias %s does not match weight %s (expected [%lld])",
                              kn__shape(bias), kn__shape(weight), (long long)out_f);
    /* one cublasLt product with the bias in its epilogue (ops_linear_cuda.c) */
    if (x->device.type != KN_DEVICE_CPU) return kn__linear_cuda(x, weight, bias);
    bool w_trans = false;
    int64_t ldw = 1, rows, cols;
    blas_mat xm;
    kn_tensor *x_copy = NULL, *w_copy = NULL;
    /* B = Wᵀ, an [in, out] matrix with strides (W.s1, W.s0). */
    if (!blas_layout(in_f, out_f, weight->strides[1], weight->strides[0], &w_trans, &ldw)) {
        w_copy = kn__copy_raw(weight);
        if (!w_copy) return NULL;
        blas_layout(in_f, out_f, w_copy->strides[1], w_copy->strides[0], &w_trans, &ldw);
    }
    if (!fold_or_copy(x, &rows, &cols, &xm, &x_copy)) {
        kn_release(w_copy);
        return NULL;
    }
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[x->ndim - 1] = out_f;
    kn_tensor *out = kn__empty_raw(shape, x->ndim, KN_FLOAT32, x->device);
    if (out) {
        float *c = kn__data_ptr(out);
        if (bias) {
            if (bias->strides[0] == 1 || out_f == 1) {
                kn_cpu_fill_rows(c, rows, out_f, out_f, kn__data_ptr(bias));
            } else {
                const float *bp = kn__data_ptr(bias);
                for (int64_t j = 0; j < out_f; j++) c[j] = bp[j * bias->strides[0]];
                if (rows > 0) kn_cpu_fill_rows(c + out_f, rows - 1, out_f, out_f, c);
            }
        }
        kn_cpu_gemm(xm.trans, w_trans, rows, out_f, in_f, 1.f, xm.data, xm.ld,
                    kn__data_ptr(w_copy ? w_copy : weight), ldw, bias ? 1.f : 0.f, c, out_f);
    }
    kn_release(x_copy);
    kn_release(w_copy);
    if (!out) return NULL;
    if (kn__needs_grad(inputs, n_inputs)) {
        kn_node *node = kn__node_new("linear", linear_backward, inputs, n_inputs);
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

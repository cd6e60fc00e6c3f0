/*
 * ops_attention.c — scaled-dot-product attention: kn_scaled_dot_product_attention on
 * separate q, k, v and kn_attention_qkv on nn.MultiheadAttention's packed projection.
 * Both check their inputs, describe the problem once (kernels/kn_attention.h: each
 * operand's strides, so heads are read where they lie) and run the fused kernel of the
 * tensors' device (kernels/cpu/attention.c or the CUDA module's attention table); the
 * node saves q, k, v, the output and the per-row log-sum-exp, and the backward
 * recomputes the weights block by block from them.
 *
 * Dropout draws one 64-bit seed from the generator per call; the kernels hash it with
 * each weight's position, so the backward drops the same weights without a stored mask.
 */
#include "kn_internal.h"
#include "kn_cuda.h"
#include "../kernels/cpu/kn_cpu_attention.h"

#include <math.h>
#include <string.h>

/* ---- shared by both ops ----------------------------------------------------------------- */

/* An operand over t seen as [batch, heads, rows, dim] (dims 0..3 of a 4-D tensor, or a
 * 3-D one with one head); t's last dim has stride 1. */
static kn_attention_operand operand(kn_tensor *t)
{
    kn_attention_operand o = {.data = kn__data_ptr(t)};
    if (t->ndim == 4) {
        o.batch_stride = t->strides[0];
        o.head_stride = t->strides[1];
        o.row_stride = t->strides[2];
    } else {
        o.batch_stride = t->strides[0];
        o.row_stride = t->strides[1];
    }
    return o;
}

/* t itself (retained) when its last dim is contiguous, as the kernels read it, else a
 * contiguous copy. Not registered with a scope. */
static kn_tensor *rows_contiguous(kn_tensor *t)
{
    if (t->ndim == 0 || t->strides[t->ndim - 1] == 1 || t->shape[t->ndim - 1] <= 1)
        return kn_retain(t);
    return kn__contiguous_raw(t);
}

/* The options every call shares, checked: the mask (int64 [batch, kv_len], returned as
 * a tensor whose last dim is contiguous, one reference), dropout, the scale. */
static bool read_args(const char *op, const kn_attention_args *args, const kn_tensor *q,
                      int64_t batch, int64_t kv_len, int64_t head_dim, kn_attention_problem *p,
                      kn_tensor **mask)
{
    static const kn_attention_args none = {0};
    if (!args) args = &none;
    *mask = NULL;
    double scale = args->scale != 0 ? args->scale : 1.0 / sqrt((double)(head_dim ? head_dim : 1));
    if (!isfinite(scale)) {
        kn__error(KN_ERR_VALUE, "%s: scale must be finite, got %g", op, args->scale);
        return false;
    }
    double dp = args->dropout_p;
    if (!(dp >= 0.0 && dp <= 1.0)) {
        kn__error(KN_ERR_VALUE, "%s: dropout_p has to be between 0 and 1, but got %g", op, dp);
        return false;
    }
    p->scale = (float)scale;
    p->causal = args->is_causal;
    p->causal_offset = args->is_causal ? args->causal_offset : 0;
    if (dp > 0) {
        p->dropout_threshold = (uint32_t)llround(dp * 16777216.0);
        if (p->dropout_threshold == 0) p->dropout_threshold = 1; /* a p this small still drops */
        p->dropout_scale = dp < 1.0 ? (float)(1.0 / (1.0 - dp)) : 0.f;
        uint64_t hi = kn_generator_next_u32(args->generator);
        p->dropout_seed = hi << 32 | kn_generator_next_u32(args->generator);
    }
    kn_tensor *m = args->key_padding_mask;
    if (!m) return true;
    if (m->dtype != KN_INT64) {
        kn__error(KN_ERR_DTYPE, "%s: key_padding_mask must be int64 (nonzero = padding), got %s",
                  op, kn_dtype_name(m->dtype));
        return false;
    }
    if (!kn_device_equal(m->device, q->device)) {
        char a[32], b[32];
        kn__error(KN_ERR_DEVICE, "%s: key_padding_mask is on %s, the query on %s", op,
                  kn_device_str(m->device, a, sizeof a), kn_device_str(q->device, b, sizeof b));
        return false;
    }
    if (m->ndim != 2 || m->shape[0] != batch || m->shape[1] != kv_len) {
        kn__error(KN_ERR_SHAPE, "%s: key_padding_mask must be [%lld, %lld] ([batch, keys]), got %s",
                  op, (long long)batch, (long long)kv_len, kn__shape(m));
        return false;
    }
    *mask = rows_contiguous(m);
    if (!*mask) return false;
    p->key_padding = kn__data_ptr(*mask);
    p->key_padding_stride = (*mask)->strides[0];
    return true;
}

static bool is_cuda(const kn_tensor *t)
{
    return t->device.type == KN_DEVICE_CUDA;
}

static kn_status run_forward(kn_device device, const kn_attention_problem *p)
{
    if (device.type == KN_DEVICE_CUDA) {
        const kn_cuda_attention *a = kn__cuda_attention(device, "scaled_dot_product_attention");
        return a ? kn__cuda_error(a->forward(device.index, p)) : kn_last_status();
    }
    return kn_cpu_attention_forward(p)
               ? KN_OK
               : kn__error(KN_ERR_MEMORY, "scaled_dot_product_attention: out of memory");
}

static kn_status run_backward(kn_device device, const kn_attention_problem *p)
{
    if (device.type == KN_DEVICE_CUDA) {
        const kn_cuda_attention *a =
            kn__cuda_attention(device, "scaled_dot_product_attention backward");
        return a ? kn__cuda_error(a->backward(device.index, p)) : kn_last_status();
    }
    return kn_cpu_attention_backward(p)
               ? KN_OK
               : kn__error(KN_ERR_MEMORY, "scaled_dot_product_attention backward: out of memory");
}

/* The node keeps the problem (pointers refreshed from the saved tensors at backward). */
static void save_problem(kn_node *node, const kn_attention_problem *p)
{
    node->iargs[0] = p->batch;
    node->iargs[1] = p->heads;
    node->iargs[2] = p->q_len;
    node->iargs[3] = p->kv_len;
    node->iargs[4] = p->head_dim;
    node->iargs[5] = p->value_dim;
    node->iargs[6] = p->causal;
    node->iargs[7] = p->causal_offset;
    node->iargs[8] = p->dropout_threshold;
    node->iargs[9] = (int64_t)p->dropout_seed;
    node->fargs[0] = p->scale;
    node->fargs[1] = p->dropout_scale;
}

static kn_attention_problem saved_problem(const kn_node *node)
{
    kn_attention_problem p = {
        .batch = node->iargs[0],
        .heads = node->iargs[1],
        .q_len = node->iargs[2],
        .kv_len = node->iargs[3],
        .head_dim = node->iargs[4],
        .value_dim = node->iargs[5],
        .causal = (int)node->iargs[6],
        .causal_offset = node->iargs[7],
        .dropout_threshold = (uint32_t)node->iargs[8],
        .dropout_seed = (uint64_t)node->iargs[9],
        .scale = (float)node->fargs[0],
        .dropout_scale = (float)node->fargs[1],
    };
    return p;
}

static void release_all(kn_tensor **ts, int n)
{
    for (int i = 0; i < n; i++) kn_release(ts[i]);
}

/* Runs the forward of p on device; when inputs need grad, records the node (backward,
 * saving held[0..n_held) and p). held holds one reference each (NULL allowed), out among
 * them at out_at: all are released but out, which is the result (the open scope's). */
static kn_tensor *forward_and_record(const char *op, const kn_attention_problem *p,
                                     kn_device device, kn_tensor *const *inputs, int n_inputs,
                                     kn_backward_fn backward, kn_tensor **held, int n_held,
                                     int out_at)
{
    kn_tensor *out = held[out_at];
    if (run_forward(device, p) != KN_OK) {
        release_all(held, n_held);
        return NULL;
    }
    if (kn__needs_grad(inputs, n_inputs)) {
        kn_node *node = kn__node_new(op, backward, inputs, n_inputs);
        if (!node) {
            release_all(held, n_held);
            return NULL;
        }
        for (int i = 0; i < n_held; i++) kn__node_save(node, held[i]);
        save_problem(node, p);
        kn__node_attach(out, node);
    }
    held[out_at] = NULL;
    release_all(held, n_held);
    return kn__result(out);
}

/* ---- scaled_dot_product_attention ---------------------------------------------------------- */

/* saved: q, k, v, out, lse, mask (each with its last dim contiguous) */
static kn_status sdpa_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *q = node->saved[0], *k = node->saved[1], *v = node->saved[2];
    kn_tensor *out = node->saved[3], *lse = node->saved[4], *mask = node->saved[5];
    kn_attention_problem p = saved_problem(node);
    kn_tensor *g = rows_contiguous(grad);
    kn_tensor *made[3] = {NULL, NULL, NULL};
    kn_tensor *from[3] = {q, k, v};
    bool failed = !g;
    for (int i = 0; i < 3 && !failed; i++)
        if (node->inputs[i].needs_grad)
            failed =
                !(made[i] = kn__empty_raw(from[i]->shape, from[i]->ndim, KN_FLOAT32, q->device));
    if (failed) {
        kn_release(g);
        release_all(made, 3);
        return kn_last_status();
    }
    p.q = operand(q);
    p.k = operand(k);
    p.v = operand(v);
    p.out = operand(out);
    p.lse = kn__data_ptr(lse);
    p.grad_out = operand(g);
    if (mask) {
        p.key_padding = kn__data_ptr(mask);
        p.key_padding_stride = mask->strides[0];
    }
    if (made[0]) p.grad_q = operand(made[0]);
    if (made[1]) p.grad_k = operand(made[1]);
    if (made[2]) p.grad_v = operand(made[2]);
    kn_status status = run_backward(q->device, &p);
    kn_release(g);
    if (status != KN_OK) {
        release_all(made, 3);
        return status;
    }
    for (int i = 0; i < 3; i++) grads[i] = kn__result(made[i]);
    return KN_OK;
}

/* q, k, v: 3-D or 4-D alike, float32, one device, batch (and head) dims equal, the
 * query and key dims equal, the key and value lengths equal. */
static bool check_qkv(const char *op, kn_tensor *q, kn_tensor *k, kn_tensor *v)
{
    kn_tensor *all[3] = {q, k, v};
    if (!kn__check_inputs(op, all, 3)) return false;
    for (int i = 0; i < 3; i++)
        if (!kn__check_float(op, all[i])) return false;
    int n = q->ndim;
    if ((n != 3 && n != 4) || k->ndim != n || v->ndim != n) {
        kn__error(KN_ERR_SHAPE,
                  "%s: expected q, k, v all [N, H, L, E] (4-D) or all [N, L, E] (3-D), got "
                  "q %s, k %s, v %s",
                  op, kn__shape(q), kn__shape(k), kn__shape(v));
        return false;
    }
    bool fits = k->shape[n - 1] == q->shape[n - 1] && v->shape[n - 2] == k->shape[n - 2];
    for (int d = 0; d < n - 2; d++)
        fits = fits && k->shape[d] == q->shape[d] && v->shape[d] == q->shape[d];
    if (!fits) {
        kn__error(KN_ERR_SHAPE,
                  "%s: q %s, k %s, v %s do not fit: expected the same batch%s dims, q and k "
                  "ending in the same E, k and v of the same length S",
                  op, kn__shape(q), kn__shape(k), kn__shape(v), n == 4 ? " and head" : "");
        return false;
    }
    return true;
}

kn_tensor *kn_scaled_dot_product_attention(kn_tensor *q, kn_tensor *k, kn_tensor *v,
                                           const kn_attention_args *args)
{
    const char *op = "scaled_dot_product_attention";
    if (!check_qkv(op, q, k, v)) return NULL;
    if (is_cuda(q) && !kn__cuda_attention(q->device, op)) return NULL;
    int n = q->ndim;
    kn_attention_problem p = {
        .batch = q->shape[0],
        .heads = n == 4 ? q->shape[1] : 1,
        .q_len = q->shape[n - 2],
        .kv_len = k->shape[n - 2],
        .head_dim = q->shape[n - 1],
        .value_dim = v->shape[n - 1],
    };
    kn_tensor *mask = NULL;
    if (!read_args(op, args, q, p.batch, p.kv_len, p.head_dim, &p, &mask)) return NULL;
    int64_t out_shape[4], lse_shape[3] = {p.batch, p.heads, p.q_len};
    memcpy(out_shape, q->shape, sizeof(int64_t) * (size_t)n);
    out_shape[n - 1] = p.value_dim;
    kn_tensor *qc = rows_contiguous(q), *kc = rows_contiguous(k), *vc = rows_contiguous(v);
    kn_tensor *out = kn__empty_raw(out_shape, n, KN_FLOAT32, q->device);
    kn_tensor *lse = kn__empty_raw(lse_shape, 3, KN_FLOAT32, q->device);
    kn_tensor *all[6] = {qc, kc, vc, out, lse, mask};
    if (!qc || !kc || !vc || !out || !lse) {
        release_all(all, 6);
        return NULL;
    }
    p.q = operand(qc);
    p.k = operand(kc);
    p.v = operand(vc);
    p.out = operand(out);
    p.lse = kn__data_ptr(lse);
    kn_tensor *inputs[3] = {q, k, v};
    return forward_and_record(op, &p, q->device, inputs, 3, sdpa_backward, all, 6, 3);
}

/* ---- the packed projection of self-attention ------------------------------------------------ */

/* q, k and v of qkv [N, T, 3E] as operands of num_heads heads of E / num_heads. */
static void split_qkv(kn_attention_problem *p, kn_tensor *qkv)
{
    float *base = kn__data_ptr(qkv);
    int64_t e = p->heads * p->head_dim;
    kn_attention_operand o = {base, qkv->strides[0], p->head_dim, qkv->strides[1]};
    p->q = p->k = p->v = o;
    p->k.data = base + e;
    p->v.data = base + 2 * e;
}

/* One [N, T, E] tensor (out, or grad_out) as an operand of the heads side by side. */
static kn_attention_operand heads_operand(kn_tensor *t, int64_t head_dim)
{
    kn_attention_operand o = {kn__data_ptr(t), t->strides[0], head_dim, t->strides[1]};
    return o;
}

/* saved: qkv, out, lse, mask */
static kn_status qkv_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *qkv = node->saved[0], *out = node->saved[1], *lse = node->saved[2];
    kn_tensor *mask = node->saved[3];
    kn_attention_problem p = saved_problem(node);
    kn_tensor *g = rows_contiguous(grad);
    kn_tensor *dqkv = kn__empty_raw(qkv->shape, qkv->ndim, KN_FLOAT32, qkv->device);
    if (!g || !dqkv) {
        kn_release(g);
        kn_release(dqkv);
        return kn_last_status();
    }
    split_qkv(&p, qkv);
    p.out = heads_operand(out, p.head_dim);
    p.lse = kn__data_ptr(lse);
    p.grad_out = heads_operand(g, p.head_dim);
    if (mask) {
        p.key_padding = kn__data_ptr(mask);
        p.key_padding_stride = mask->strides[0];
    }
    kn_attention_problem d = p;
    split_qkv(&d, dqkv);
    p.grad_q = d.q;
    p.grad_k = d.k;
    p.grad_v = d.v;
    kn_status status = run_backward(qkv->device, &p);
    kn_release(g);
    if (status != KN_OK) {
        kn_release(dqkv);
        return status;
    }
    grads[0] = kn__result(dqkv);
    return KN_OK;
}

kn_tensor *kn_attention_qkv(kn_tensor *qkv, int64_t num_heads, const kn_attention_args *args)
{
    const char *op = "attention_qkv";
    if (!kn__check_inputs(op, &qkv, 1) || !kn__check_float(op, qkv)) return NULL;
    if (qkv->ndim != 3 || qkv->shape[2] % 3 != 0)
        return kn__error_null(KN_ERR_SHAPE,
                              "%s: expected qkv [N, T, 3 * embed_dim] (q, k, v side by side), got "
                              "%s",
                              op, kn__shape(qkv));
    int64_t e = qkv->shape[2] / 3;
    if (num_heads < 1 || e % num_heads != 0)
        return kn__error_null(KN_ERR_VALUE,
                              "%s: embed_dim (%lld) must be divisible by num_heads, got %lld", op,
                              (long long)e, (long long)num_heads);
    if (is_cuda(qkv) && !kn__cuda_attention(qkv->device, op)) return NULL;
    kn_attention_problem p = {
        .batch = qkv->shape[0],
        .heads = num_heads,
        .q_len = qkv->shape[1],
        .kv_len = qkv->shape[1],
        .head_dim = e / num_heads,
        .value_dim = e / num_heads,
    };
    kn_tensor *mask = NULL;
    if (!read_args(op, args, qkv, p.batch, p.kv_len, p.head_dim, &p, &mask)) return NULL;
    int64_t out_shape[3] = {p.batch, p.q_len, e}, lse_shape[3] = {p.batch, p.heads, p.q_len};
    kn_tensor *x = rows_contiguous(qkv);
    kn_tensor *out = kn__empty_raw(out_shape, 3, KN_FLOAT32, qkv->device);
    kn_tensor *lse = kn__empty_raw(lse_shape, 3, KN_FLOAT32, qkv->device);
    kn_tensor *all[4] = {x, out, lse, mask};
    if (!x || !out || !lse) {
        release_all(all, 4);
        return NULL;
    }
    split_qkv(&p, x);
    p.out = heads_operand(out, p.head_dim);
    p.lse = kn__data_ptr(lse);
    return forward_and_record(op, &p, qkv->device, &qkv, 1, qkv_backward, all, 4, 1);
}

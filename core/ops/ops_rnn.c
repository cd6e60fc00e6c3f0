/*
 * ops_rnn.c — kn_lstm and kn_gru: one layer, one direction of torch's nn.LSTM / nn.GRU
 * over a batch-first sequence, forward and backward through time (BPTT) as one graph
 * node each. nn.LSTM's and nn.GRU's layers (core/nn/layer_rnn.c) stack them.
 *
 * Forward, for x [N, T, I], hidden H, gate width G (4H LSTM, 3H GRU):
 *   gx [N*T, G] = x W_ih^T                       one GEMM over every step
 *   for each step t (T-1 down to 0 when reverse):
 *     gh [N, G] = h_prev W_hh^T                  one GEMM per step
 *     gates, state update, h_t                   one fused kernel (kernels/cpu/rnn.c)
 * h_t is written straight into the output [N, T, H]; the step before is read back from
 * it (row stride T*H), so no state is copied. Saved for backward: the gate activations
 * [N, T, 4H] and, for an LSTM, the cell states [N, T, H].
 *
 * Backward, steps in the opposite order:
 *   fused kernel: the step's gate gradients dG_t from dh_t = dy_t + dh_rec (and dc_rec)
 *   dh_rec = dG_t W_hh                           one GEMM per step
 * then dx = dG W_ih, dW_ih = dG^T x, dW_hh = dG^T H_prev (H_prev: the output shifted by
 * one step, h0 first) as three GEMMs over every step, and the bias gradients as column
 * sums. A GRU's hidden-side gradient differs from its input side in the candidate gate
 * (r * dn), so it keeps both [N, T, G].
 *
 * On a CUDA device the same sequence runs with cuBLAS GEMMs and the kernels of
 * kernels/cuda/rnn.cu on the device's stream: nothing waits for the host.
 */
#include "kn_internal.h"
#include "kn_cuda.h"
#include "../kernels/cpu/kn_cpu_linalg.h"
#include "../kernels/cpu/kn_cpu_rnn.h"

#include <string.h>

typedef struct rnn_dims {
    kn_rnn_mode mode;
    bool reverse;
    int64_t n, t, in, hidden, gates; /* gates: G */
} rnn_dims;

static const char *op_name(kn_rnn_mode mode)
{
    return mode == KN_RNN_LSTM ? "lstm" : "gru";
}

static float *f32(kn_tensor *t)
{
    return t ? (float *)kn__data_ptr(t) : NULL;
}

static void release_all(kn_tensor **ts, int n)
{
    for (int i = 0; i < n; i++) kn_release(ts[i]);
}

/* ---- device dispatch ------------------------------------------------------------------- */

/* C [m, n] = op(A) op(B) + beta C, row-major (kn_cpu_gemm's contract) on dev. */
static kn_status gemm(kn_device dev, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                      const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                      float *c, int64_t ldc)
{
    if (m <= 0 || n <= 0) return KN_OK;
    if (dev.type == KN_DEVICE_CPU) {
        kn_cpu_gemm(trans_a, trans_b, m, n, k, 1.f, a, lda, b, ldb, beta, c, ldc);
        return KN_OK;
    }
    if (k <= 0) { /* an empty sum: cuBLAS is not asked about it */
        if (beta != 0.f) return KN_OK;
        float zero = 0.f;
        kn_cpu_operand out = {c, {ldc, 1}};
        return kn__kernel_fill(dev, (int64_t[]){m, n}, 2, sizeof zero, out, &zero);
    }
    return kn__kernel_sgemm(dev, trans_a, trans_b, m, n, k, 1.f, a, lda, 0, b, ldb, 0, beta, c, ldc,
                            0, 1);
}

static kn_status step_forward(kn_device dev, kn_rnn_mode mode, const kn_cpu_rnn_step *s)
{
    if (dev.type == KN_DEVICE_CPU) {
        kn_cpu_rnn_step_forward(mode, s);
        return KN_OK;
    }
    const kn_cuda_rnn *cuda = kn__cuda_rnn(dev, op_name(mode));
    return cuda ? kn__cuda_error(cuda->step_forward(dev.index, mode, s)) : kn_last_status();
}

static kn_status step_backward(kn_device dev, kn_rnn_mode mode, const kn_cpu_rnn_grad_step *s)
{
    if (dev.type == KN_DEVICE_CPU) {
        kn_cpu_rnn_step_backward(mode, s);
        return KN_OK;
    }
    const kn_cuda_rnn *cuda = kn__cuda_rnn(dev, op_name(mode));
    return cuda ? kn__cuda_error(cuda->step_backward(dev.index, mode, s)) : kn_last_status();
}

/* out [cols] = the column sums of x [rows, cols] (row stride ld). */
static kn_status sum_rows(kn_device dev, const float *x, int64_t rows, int64_t cols, int64_t ld,
                          float *out)
{
    if (dev.type == KN_DEVICE_CPU) {
        kn_cpu_sum_rows(x, rows, cols, ld, out, false);
        return KN_OK;
    }
    const kn_cuda_rnn *cuda = kn__cuda_rnn(dev, "rnn backward");
    return cuda ? kn__cuda_error(cuda->sum_rows(dev.index, x, rows, cols, ld, out))
                : kn_last_status();
}

/* A new contiguous float32 tensor of zeros on dev (unregistered), or NULL. */
static kn_tensor *zeros(const int64_t *shape, int ndim, kn_device dev)
{
    kn_tensor *t = kn__empty_raw(shape, ndim, KN_FLOAT32, dev);
    if (!t || kn_numel(t) == 0) return t;
    float zero = 0.f;
    kn_cpu_operand o = {kn__data_ptr(t), {0}};
    kn__contiguous_strides(t->shape, t->ndim, o.strides);
    if (kn__kernel_fill(dev, t->shape, t->ndim, sizeof zero, o, &zero) != KN_OK) {
        kn_release(t);
        return NULL;
    }
    return t;
}

/* The step that forward runs s-th, and the one before it (-1: the initial state). */
static int64_t step_at(const rnn_dims *d, int64_t s)
{
    return d->reverse ? d->t - 1 - s : s;
}

/* ---- backward -------------------------------------------------------------------------- */

/* H_prev [N, T, H]: at each step the state it started from (the output one step earlier
 * in the direction of travel; h0 or zeros at the first). */
static kn_tensor *previous_states(const rnn_dims *d, kn_tensor *out, kn_tensor *h0)
{
    int64_t N = d->n, T = d->t, H = d->hidden;
    kn_device dev = out->device;
    kn_tensor *prev = kn__empty_raw(out->shape, 3, KN_FLOAT32, dev);
    if (!prev) return NULL;
    kn_status st = KN_OK;
    if (T > 1 && N > 0) {
        int64_t shape[3] = {N, T - 1, H};
        kn_cpu_operand dst = {f32(prev) + (d->reverse ? 0 : H), {T * H, H, 1}};
        kn_cpu_operand src = {f32(out) + (d->reverse ? H : 0), {T * H, H, 1}};
        st = kn__kernel_copy(dev, shape, 3, sizeof(float), dst, src);
    }
    if (st == KN_OK && N > 0) {
        int64_t shape[2] = {N, H};
        kn_cpu_operand first = {f32(prev) + step_at(d, 0) * H, {T * H, 1}};
        if (h0) {
            st = kn__kernel_copy(dev, shape, 2, sizeof(float), first,
                                 (kn_cpu_operand){f32(h0), {H, 1}});
        } else {
            float zero = 0.f;
            st = kn__kernel_fill(dev, shape, 2, sizeof zero, first, &zero);
        }
    }
    if (st != KN_OK) {
        kn_release(prev);
        return NULL;
    }
    return prev;
}

/* saved: x (contiguous), w_ih, w_hh (contiguous), h0, c0, out, act, cell (LSTM);
 * iargs: mode, reverse, N, T, I, H */
static kn_status rnn_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    rnn_dims d = {.mode = (kn_rnn_mode)node->iargs[0],
                  .reverse = node->iargs[1] != 0,
                  .n = node->iargs[2],
                  .t = node->iargs[3],
                  .in = node->iargs[4],
                  .hidden = node->iargs[5]};
    d.gates = (d.mode == KN_RNN_LSTM ? 4 : 3) * d.hidden;
    int64_t N = d.n, T = d.t, I = d.in, H = d.hidden, G = d.gates;
    bool lstm = d.mode == KN_RNN_LSTM;
    kn_tensor *x = node->saved[0], *wih = node->saved[1], *whh = node->saved[2];
    kn_tensor *h0 = node->saved[3], *c0 = node->saved[4], *out = node->saved[5];
    kn_tensor *act = node->saved[6], *cell = node->saved[7];
    kn_device dev = x->device;
    bool need[7];
    for (int i = 0; i < 7; i++) need[i] = node->inputs[i].needs_grad;

    /* scratch: 0 dy, 1 dgx, 2 dgh (GRU), 3 dh, 4 dc (LSTM), 5 H_prev, 13 zeros [N, H]
     * (the initial state when none was given); results: 6 dx, 7 dh0, 8 dc0, 9 dw_ih,
     * 10 dw_hh, 11 db_ih, 12 db_hh */
    kn_tensor *t[14] = {0};
    int64_t ng[3] = {N, T, G}, nh[2] = {N, H};
    t[0] = kn__contiguous_raw(grad);
    t[1] = kn__empty_raw(ng, 3, KN_FLOAT32, dev);
    t[2] = lstm ? kn_retain(t[1]) : kn__empty_raw(ng, 3, KN_FLOAT32, dev);
    t[3] = zeros(nh, 2, dev);
    t[4] = lstm ? zeros(nh, 2, dev) : NULL;
    kn_tensor *first = lstm ? c0 : h0; /* what the first step's kernel reads */
    t[13] = first ? NULL : zeros(nh, 2, dev);
    kn_status st = t[0] && t[1] && t[2] && t[3] && (t[4] || !lstm) && (t[13] || first)
                       ? KN_OK
                       : kn_last_status();
    float *dy = f32(t[0]), *dgx = f32(t[1]), *dgh = f32(t[2]), *dh = f32(t[3]), *dc = f32(t[4]);
    const float *state0 = first ? f32(first) : f32(t[13]);

    for (int64_t s = T - 1; st == KN_OK && s >= 0; s--) {
        int64_t at = step_at(&d, s), before = s > 0 ? step_at(&d, s - 1) : -1;
        kn_cpu_rnn_grad_step b = {
            .batch = N,
            .hidden = H,
            .act = f32(act) + at * 4 * H,
            .act_ld = T * 4 * H,
            .dh_out = dy + at * H,
            .dh_out_ld = T * H,
            .dh_rec = dh,
            .dc_rec = dc,
            .dgx = dgx + at * G,
            .dgx_ld = T * G,
            .dgh = dgh + at * G,
            .dgh_ld = T * G,
        };
        if (lstm) {
            b.c = f32(cell) + at * H;
            b.c_ld = T * H;
            b.c_prev = before >= 0 ? f32(cell) + before * H : state0;
            b.c_prev_ld = before >= 0 ? T * H : H;
        } else {
            b.h_prev = before >= 0 ? f32(out) + before * H : state0;
            b.h_prev_ld = before >= 0 ? T * H : H;
        }
        st = step_backward(dev, d.mode, &b);
        /* the gradient of the state this step started from, through W_hh */
        if (st == KN_OK && (s > 0 || (need[1] && h0)))
            st = gemm(dev, false, false, N, H, G, dgh + at * G, T * G, f32(whh), H,
                      lstm ? 0.f : 1.f, dh, H);
    }

    if (st == KN_OK && need[0] && (t[6] = kn__empty_raw((int64_t[]){N, T, I}, 3, KN_FLOAT32, dev)))
        st = gemm(dev, false, false, N * T, I, G, dgx, G, f32(wih), I, 0.f, f32(t[6]), I);
    if (st == KN_OK && need[3] && (t[9] = kn__empty_raw((int64_t[]){G, I}, 2, KN_FLOAT32, dev)))
        st = gemm(dev, true, false, G, I, N * T, dgx, G, f32(x), I, 0.f, f32(t[9]), I);
    if (st == KN_OK && need[4] && (t[5] = previous_states(&d, out, h0)) &&
        (t[10] = kn__empty_raw((int64_t[]){G, H}, 2, KN_FLOAT32, dev)))
        st = gemm(dev, true, false, G, H, N * T, dgh, G, f32(t[5]), H, 0.f, f32(t[10]), H);
    if (st == KN_OK && need[5] && (t[11] = kn__empty_raw(&G, 1, KN_FLOAT32, dev)))
        st = sum_rows(dev, dgx, N * T, G, G, f32(t[11]));
    if (st == KN_OK && need[6] && (t[12] = kn__empty_raw(&G, 1, KN_FLOAT32, dev)))
        st = sum_rows(dev, dgh, N * T, G, G, f32(t[12]));
    if (st == KN_OK && need[1]) t[7] = kn_retain(t[3]);
    if (st == KN_OK && need[2] && lstm) t[8] = kn_retain(t[4]);
    bool missing = (need[0] && !t[6]) || (need[3] && !t[9]) || (need[4] && !t[10]) ||
                   (need[5] && !t[11]) || (need[6] && !t[12]);
    if (st == KN_OK && missing) st = kn_last_status();
    if (st != KN_OK) {
        release_all(t, 14);
        return st;
    }
    static const int result_of_input[7] = {6, 7, 8, 9, 10, 11, 12};
    for (int i = 0; i < 7; i++) {
        grads[i] = kn__result(t[result_of_input[i]]);
        t[result_of_input[i]] = NULL;
    }
    release_all(t, 14);
    return KN_OK;
}

/* ---- forward --------------------------------------------------------------------------- */

static bool check_matrix(const char *op, const char *what, const kn_tensor *p, int64_t rows,
                         int64_t cols, const char *expected, const kn_tensor *x)
{
    if (!p || (p->ndim == 2 && p->shape[0] == rows && p->shape[1] == cols)) return true;
    kn__error(KN_ERR_SHAPE, "%s: %s of shape %s does not match %s = %s (input %s)", op, what,
              kn__shape(p), expected, kn__shape_of((int64_t[]){rows, cols}, 2), kn__shape(x));
    return false;
}

static bool check_shapes(const char *op, kn_tensor *x, kn_tensor *h0, kn_tensor *c0,
                         kn_rnn_weights w, rnn_dims *d)
{
    int k = d->mode == KN_RNN_LSTM ? 4 : 3;
    if (x->ndim != 3) {
        kn__error(KN_ERR_SHAPE, "%s: expected a 3-D input [batch, sequence, features], got %s", op,
                  kn__shape(x));
        return false;
    }
    if (x->shape[1] == 0 || x->shape[2] == 0) {
        kn__error(KN_ERR_SHAPE,
                  "%s: expected at least one step of at least one feature, got input %s", op,
                  kn__shape(x));
        return false;
    }
    const kn_tensor *whh = w.w_hh;
    if (whh->ndim != 2 || whh->shape[1] == 0 || whh->shape[0] != k * whh->shape[1]) {
        kn__error(KN_ERR_SHAPE, "%s: weight_hh of shape %s is not [%d * hidden, hidden]", op,
                  kn__shape(whh), k);
        return false;
    }
    d->n = x->shape[0];
    d->t = x->shape[1];
    d->in = x->shape[2];
    d->hidden = whh->shape[1];
    d->gates = k * d->hidden;
    const char *gate_rows = k == 4 ? "[4 * hidden, input]" : "[3 * hidden, input]";
    if (!check_matrix(op, "weight_ih", w.w_ih, d->gates, d->in, gate_rows, x) ||
        !check_matrix(op, "h0", h0, d->n, d->hidden, "[batch, hidden]", x) ||
        !check_matrix(op, "c0", c0, d->n, d->hidden, "[batch, hidden]", x))
        return false;
    const kn_tensor *biases[2] = {w.b_ih, w.b_hh};
    const char *names[2] = {"bias_ih", "bias_hh"};
    for (int i = 0; i < 2; i++) {
        if (!biases[i] || (biases[i]->ndim == 1 && biases[i]->shape[0] == d->gates)) continue;
        kn__error(KN_ERR_SHAPE, "%s: %s of shape %s is not [%d * hidden] = [%lld]", op, names[i],
                  kn__shape(biases[i]), k, (long long)d->gates);
        return false;
    }
    return true;
}

static kn_tensor *rnn(kn_rnn_mode mode, kn_tensor *x, kn_tensor *h0, kn_tensor *c0,
                      kn_rnn_weights w, bool reverse)
{
    const char *op = op_name(mode);
    kn_tensor *required[3] = {x, w.w_ih, w.w_hh};
    if (!kn__check_inputs(op, required, 3)) return NULL;
    kn_tensor *args[7] = {x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh};
    kn_tensor *present[7];
    int count = 0;
    for (int i = 0; i < 7; i++)
        if (args[i]) present[count++] = args[i];
    if (!kn__check_inputs(op, present, count)) return NULL;
    for (int i = 0; i < count; i++)
        if (!kn__check_float(op, present[i])) return NULL;
    rnn_dims d = {.mode = mode, .reverse = reverse};
    if (!check_shapes(op, x, h0, c0, w, &d)) return NULL;
    kn_device dev = x->device;
    if (dev.type == KN_DEVICE_CUDA && !kn__cuda_rnn(dev, op)) return NULL;
    int64_t N = d.n, T = d.t, I = d.in, H = d.hidden, G = d.gates;
    bool lstm = mode == KN_RNN_LSTM;

    /* 0 x, 1 w_ih, 2 w_hh, 3 b_ih, 4 b_hh, 5 h0, 6 c0 (contiguous); 7 out, 8 act,
     * 9 cell (LSTM); scratch 10 gx, 11 gh, 12 zeros [N, H] (no h0 or c0), 13 zeros [G]
     * (no bias): the kernels read every operand */
    kn_tensor *t[14] = {0};
    kn_tensor *given[7] = {x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, h0, c0};
    for (int i = 0; i < 7; i++) {
        if (given[i] && !(t[i] = kn__contiguous_raw(given[i]))) {
            release_all(t, 14);
            return NULL;
        }
    }
    t[7] = kn__empty_raw((int64_t[]){N, T, H}, 3, KN_FLOAT32, dev);
    t[8] = kn__empty_raw((int64_t[]){N, T, 4 * H}, 3, KN_FLOAT32, dev);
    t[9] = lstm ? kn__empty_raw((int64_t[]){N, T, H}, 3, KN_FLOAT32, dev) : NULL;
    t[10] = kn__empty_raw((int64_t[]){N, T, G}, 3, KN_FLOAT32, dev);
    t[11] = kn__empty_raw((int64_t[]){N, G}, 2, KN_FLOAT32, dev);
    bool zero_state = !h0 || (lstm && !c0), zero_bias = !w.b_ih || !w.b_hh;
    if (zero_state) t[12] = zeros((int64_t[]){N, H}, 2, dev);
    if (zero_bias) t[13] = zeros(&G, 1, dev);
    kn_status st = t[7] && t[8] && (t[9] || !lstm) && t[10] && t[11] && (t[12] || !zero_state) &&
                           (t[13] || !zero_bias)
                       ? KN_OK
                       : kn_last_status();
    float *out = f32(t[7]), *act = f32(t[8]), *cell = f32(t[9]), *gx = f32(t[10]), *gh = f32(t[11]);
    const float *h_first = t[5] ? f32(t[5]) : f32(t[12]), *c_first = t[6] ? f32(t[6]) : f32(t[12]);

    if (st == KN_OK)
        st = gemm(dev, false, true, N * T, G, I, f32(t[0]), I, f32(t[1]), I, 0.f, gx, G);
    for (int64_t s = 0; st == KN_OK && s < T; s++) {
        int64_t at = step_at(&d, s), before = s > 0 ? step_at(&d, s - 1) : -1;
        const float *h_prev = before >= 0 ? out + before * H : h_first;
        int64_t h_prev_ld = before >= 0 ? T * H : H;
        st = gemm(dev, false, true, N, G, H, h_prev, h_prev_ld, f32(t[2]), H, 0.f, gh, G);
        kn_cpu_rnn_step step = {
            .batch = N,
            .hidden = H,
            .gx = gx + at * G,
            .gx_ld = T * G,
            .gh = gh,
            .gh_ld = G,
            .b_ih = t[3] ? f32(t[3]) : f32(t[13]),
            .b_hh = t[4] ? f32(t[4]) : f32(t[13]),
            .h_prev = h_prev,
            .h_prev_ld = h_prev_ld,
            .h = out + at * H,
            .h_ld = T * H,
            .act = act + at * 4 * H,
            .act_ld = T * 4 * H,
        };
        if (lstm) {
            step.c_prev = before >= 0 ? cell + before * H : c_first;
            step.c_prev_ld = before >= 0 ? T * H : H;
            step.c = cell + at * H;
            step.c_ld = T * H;
        }
        if (st == KN_OK) st = step_forward(dev, mode, &step);
    }
    if (st == KN_OK && kn__needs_grad(args, 7)) {
        kn_node *node = kn__node_new(op, rnn_backward, args, 7);
        if (node) {
            /* saved: x, w_ih, w_hh, h0, c0, out, act, cell */
            kn_tensor *saved[8] = {t[0], t[1], t[2], t[5], t[6], t[7], t[8], t[9]};
            for (int i = 0; i < 8; i++) kn__node_save(node, saved[i]);
            int64_t iargs[6] = {mode, reverse, N, T, I, H};
            memcpy(node->iargs, iargs, sizeof iargs);
            kn__node_attach(t[7], node);
        } else {
            st = kn_last_status();
        }
    }
    kn_tensor *result = st == KN_OK ? t[7] : NULL;
    if (result) t[7] = NULL;
    release_all(t, 14);
    return kn__result(result);
}

kn_tensor *kn_lstm(kn_tensor *x, kn_tensor *h0, kn_tensor *c0, kn_rnn_weights w, bool reverse)
{
    return rnn(KN_RNN_LSTM, x, h0, c0, w, reverse);
}

kn_tensor *kn_gru(kn_tensor *x, kn_tensor *h0, kn_rnn_weights w, bool reverse)
{
    return rnn(KN_RNN_GRU, x, h0, NULL, w, reverse);
}

/*
 * kn_cpu_rnn.h — the fused gate math of one time step of an LSTM or GRU layer, forward
 * and backward, over a batch of rows: raw loops over float32 buffers, no tensors, no
 * autograd. The matrix products around a step (the input projection over all steps,
 * the recurrent one per step) are GEMMs that core/ops/ops_rnn.c issues; these kernels
 * do what lies between them. The CUDA module's rnn.cu takes the same structs
 * (kernels/cuda/kn_cuda_rnn.h).
 *
 * Every operand is a [batch, width] matrix given by its first element and its row
 * stride (ld, in elements): row n starts at ptr + n * ld. An [N, T, width] tensor at
 * step t is then ptr + t * width with ld T * width. G is the gate width: 4 * hidden
 * (LSTM: i, f, g, o) or 3 * hidden (GRU: r, z, n), torch's gate order. Every operand is
 * given (a zero state or a layer without bias is a buffer of zeros), except those of the
 * other mode, so the loops have no branch.
 */
#ifndef KN_CPU_RNN_H
#define KN_CPU_RNN_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { KN_RNN_LSTM = 0, KN_RNN_GRU = 1 } kn_rnn_mode;

/* One step forward.
 *   LSTM: a = gx + b_ih + gh + b_hh; i, f, o = sigmoid, g = tanh of their quarters;
 *         c = f * c_prev + i * g; h = o * tanh(c).  act <- [i, f, g, o].
 *   GRU:  r = sigmoid(gx_r + b_ir + gh_r + b_hr), z likewise,
 *         hn = gh_n + b_hn, n = tanh(gx_n + b_in + r * hn), h = (1 - z) * n + z * h_prev.
 *         act <- [r, z, n, hn].
 * act is 4 * hidden wide in both modes (what backward needs). */
typedef struct kn_cpu_rnn_step {
    int64_t batch, hidden;
    const float *gx; /* x_t W_ih^T [batch, G], no bias */
    int64_t gx_ld;
    const float *gh; /* h_prev W_hh^T [batch, G], no bias */
    int64_t gh_ld;
    const float *b_ih, *b_hh; /* [G] each (zeros for bias=False) */
    const float *h_prev;      /* GRU: [batch, hidden] */
    int64_t h_prev_ld;
    const float *c_prev; /* LSTM: [batch, hidden] */
    int64_t c_prev_ld;
    float *h; /* out: [batch, hidden] */
    int64_t h_ld;
    float *c; /* out, LSTM: [batch, hidden] */
    int64_t c_ld;
    float *act; /* out: [batch, 4 * hidden] */
    int64_t act_ld;
} kn_cpu_rnn_step;

/* One step backward, from the step's output gradient plus the recurrent one.
 *   LSTM: dh = dh_out + dh_rec; dc = dc_rec + dh * o * (1 - tanh(c)^2);
 *         dgx <- d(pre-activations) [di, df, dg, do]; dc_rec <- dc * f (for the step
 *         before). dh_rec is left for the caller to overwrite with dgx W_hh.
 *   GRU:  dh = dh_out + dh_rec; dgx <- [dr, dz, dn] pre-activations of the input side,
 *         dgh <- [dr, dz, dn * r] of the hidden side; dh_rec <- dh * z (the direct part
 *         of the gradient of h_prev; the caller adds dgh W_hh).
 * dh_rec and dc_rec are contiguous [batch, hidden], read and written in place. */
typedef struct kn_cpu_rnn_grad_step {
    int64_t batch, hidden;
    const float *act; /* [batch, 4 * hidden], as the forward saved it */
    int64_t act_ld;
    const float *c; /* LSTM: the step's cell state */
    int64_t c_ld;
    const float *c_prev; /* LSTM */
    int64_t c_prev_ld;
    const float *h_prev; /* GRU */
    int64_t h_prev_ld;
    const float *dh_out; /* the gradient of the step's output */
    int64_t dh_out_ld;
    float *dh_rec;
    float *dc_rec; /* LSTM */
    float *dgx;    /* out: [batch, G] */
    int64_t dgx_ld;
    float *dgh; /* out, GRU: [batch, G] */
    int64_t dgh_ld;
} kn_cpu_rnn_grad_step;

void kn_cpu_rnn_step_forward(kn_rnn_mode mode, const kn_cpu_rnn_step *s);
void kn_cpu_rnn_step_backward(kn_rnn_mode mode, const kn_cpu_rnn_grad_step *s);

#endif

/*
 * rnn.c — the gate math of one LSTM or GRU time step on the CPU (kn_cpu_rnn.h): bias
 * adds, the gate nonlinearities and the state update fused in one pass over the batch,
 * and the matching backward: loops over each row's units around the unit math of
 * ../kn_rnn_cell.h (shared with the CUDA module). Parallel over the batch rows when a
 * step is large enough to pay for the pool.
 */
/* Floating-point exceptions are never looked at: without this GCC keeps the float-to-int
 * conversion and the selects of the exp polynomial as branches, and the unit loops stay
 * scalar (about 4x slower here). */
#pragma GCC optimize("no-trapping-math")

#include "kn_cpu.h"
#include "kn_cpu_rnn.h"
#include "../kn_rnn_cell.h"

/* Rows per task: a step costs a few transcendental functions per hidden unit. */
#define GRAIN_UNITS 4096

/* One row of a step each; the loop over the row's units vectorises (restrict on the
 * parameters: the outputs never overlap the inputs). */

/* A gate's pre-activation at column k: torch adds the hidden side (with its bias) to the
 * input side (with its bias). */
#define PRE(k) ((gh[k] + bh[k]) + (gx[k] + bi[k]))

/* Inlined into each clone below, so each gets its own vector width. */
#define ROW_INLINE static inline __attribute__((always_inline))

ROW_INLINE void lstm_row(int64_t H, const float *restrict gx, const float *restrict gh,
                         const float *restrict bi, const float *restrict bh,
                         const float *restrict cp, float *restrict h, float *restrict c,
                         float *restrict a)
{
    for (int64_t j = 0; j < H; j++) {
        kn_rnn_lstm_values v =
            kn_rnn_lstm_cell(PRE(j), PRE(H + j), PRE(2 * H + j), PRE(3 * H + j), cp[j]);
        c[j] = v.c;
        h[j] = v.h;
        a[j] = v.i;
        a[H + j] = v.f;
        a[2 * H + j] = v.g;
        a[3 * H + j] = v.o;
    }
}

ROW_INLINE void gru_row(int64_t H, const float *restrict gx, const float *restrict gh,
                        const float *restrict bi, const float *restrict bh,
                        const float *restrict hp, float *restrict h, float *restrict a)
{
    for (int64_t j = 0; j < H; j++) {
        float hn = gh[2 * H + j] + bh[2 * H + j];
        kn_rnn_gru_values v =
            kn_rnn_gru_cell(PRE(j), PRE(H + j), gx[2 * H + j] + bi[2 * H + j], hn, hp[j]);
        h[j] = v.h;
        a[j] = v.r;
        a[H + j] = v.z;
        a[2 * H + j] = v.n;
        a[3 * H + j] = hn;
    }
}

ROW_INLINE void lstm_grad_row(int64_t H, const float *restrict a, const float *restrict c,
                              const float *restrict cp, const float *restrict dy,
                              float *restrict dh, float *restrict dc, float *restrict d)
{
    for (int64_t j = 0; j < H; j++) {
        kn_rnn_lstm_grads g = kn_rnn_lstm_cell_backward(a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                                                        c[j], cp[j], dh[j] + dy[j], dc[j]);
        d[j] = g.di;
        d[H + j] = g.df;
        d[2 * H + j] = g.dg;
        d[3 * H + j] = g.d_o;
        dc[j] = g.dc_prev;
    }
}

ROW_INLINE void gru_grad_row(int64_t H, const float *restrict a, const float *restrict hp,
                             const float *restrict dy, float *restrict dh, float *restrict dx,
                             float *restrict dhh)
{
    for (int64_t j = 0; j < H; j++) {
        kn_rnn_gru_grads g = kn_rnn_gru_cell_backward(a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                                                      hp[j], dh[j] + dy[j]);
        dx[j] = g.dr;
        dx[H + j] = g.dz;
        dx[2 * H + j] = g.dn;
        dhh[j] = g.dr;
        dhh[H + j] = g.dz;
        dhh[2 * H + j] = g.dhn;
        dh[j] = g.dh_prev;
    }
}

/* Rows [begin, end) of a step, for the pool; cloned for the vector widths. */
#define KN_RNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

KN_RNN_CLONES static void lstm_forward_rows(void *context, int64_t begin, int64_t end)
{
    const kn_cpu_rnn_step *s = context;
    for (int64_t n = begin; n < end; n++)
        lstm_row(s->hidden, s->gx + n * s->gx_ld, s->gh + n * s->gh_ld, s->b_ih, s->b_hh,
                 s->c_prev + n * s->c_prev_ld, s->h + n * s->h_ld, s->c + n * s->c_ld,
                 s->act + n * s->act_ld);
}

KN_RNN_CLONES static void gru_forward_rows(void *context, int64_t begin, int64_t end)
{
    const kn_cpu_rnn_step *s = context;
    for (int64_t n = begin; n < end; n++)
        gru_row(s->hidden, s->gx + n * s->gx_ld, s->gh + n * s->gh_ld, s->b_ih, s->b_hh,
                s->h_prev + n * s->h_prev_ld, s->h + n * s->h_ld, s->act + n * s->act_ld);
}

KN_RNN_CLONES static void lstm_backward_rows(void *context, int64_t begin, int64_t end)
{
    const kn_cpu_rnn_grad_step *s = context;
    int64_t H = s->hidden;
    for (int64_t n = begin; n < end; n++)
        lstm_grad_row(H, s->act + n * s->act_ld, s->c + n * s->c_ld, s->c_prev + n * s->c_prev_ld,
                      s->dh_out + n * s->dh_out_ld, s->dh_rec + n * H, s->dc_rec + n * H,
                      s->dgx + n * s->dgx_ld);
}

KN_RNN_CLONES static void gru_backward_rows(void *context, int64_t begin, int64_t end)
{
    const kn_cpu_rnn_grad_step *s = context;
    int64_t H = s->hidden;
    for (int64_t n = begin; n < end; n++)
        gru_grad_row(H, s->act + n * s->act_ld, s->h_prev + n * s->h_prev_ld,
                     s->dh_out + n * s->dh_out_ld, s->dh_rec + n * H, s->dgx + n * s->dgx_ld,
                     s->dgh + n * s->dgh_ld);
}

static int64_t grain_rows(int64_t hidden)
{
    return hidden >= GRAIN_UNITS ? 1 : GRAIN_UNITS / hidden;
}

void kn_cpu_rnn_step_forward(kn_rnn_mode mode, const kn_cpu_rnn_step *s)
{
    if (s->batch <= 0 || s->hidden <= 0) return;
    kn_cpu_parallel_for(s->batch, grain_rows(s->hidden),
                        mode == KN_RNN_LSTM ? lstm_forward_rows : gru_forward_rows, (void *)s);
}

void kn_cpu_rnn_step_backward(kn_rnn_mode mode, const kn_cpu_rnn_grad_step *s)
{
    if (s->batch <= 0 || s->hidden <= 0) return;
    kn_cpu_parallel_for(s->batch, grain_rows(s->hidden),
                        mode == KN_RNN_LSTM ? lstm_backward_rows : gru_backward_rows, (void *)s);
}

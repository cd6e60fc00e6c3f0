/*
 * rnn.c — the gate math of one LSTM or GRU time step on the CPU (kn_cpu_rnn.h): bias
 * adds, the gate nonlinearities and the state update fused in one pass over the batch,
 * and the matching backward. The formulas and their order are torch 1.13's CPU cells
 * (aten/src/ATen/native/RNN.cpp: LSTMCell, GRUCell with pre-computed input gates).
 * Parallel over the batch rows when a step is large enough to pay for the pool.
 */
#include "kn_cpu_rnn.h"
#include "kn_cpu.h"

#include <math.h>

/* Rows per task: a step costs a few transcendental functions per hidden unit. */
#define GRAIN_UNITS 4096

static inline float sigmoid(float x)
{
    return 1.f / (1.f + expf(-x));
}

static inline const float *row(const float *p, int64_t ld, int64_t n)
{
    return p ? p + n * ld : NULL;
}

/* The gate pre-activation q (0-based) of unit j: torch adds the hidden side (with its
 * bias) to the input side (with its bias). */
static inline float pre(const kn_cpu_rnn_step *s, const float *gx, const float *gh, int64_t k)
{
    float hidden = gh ? gh[k] : 0.f;
    if (s->b_hh) hidden += s->b_hh[k];
    float input = gx[k];
    if (s->b_ih) input += s->b_ih[k];
    return hidden + input;
}

static void lstm_forward_rows(void *context, int64_t begin, int64_t end)
{
    const kn_cpu_rnn_step *s = context;
    int64_t H = s->hidden;
    for (int64_t n = begin; n < end; n++) {
        const float *gx = row(s->gx, s->gx_ld, n), *gh = row(s->gh, s->gh_ld, n);
        const float *cp = row(s->c_prev, s->c_prev_ld, n);
        float *h = s->h + n * s->h_ld, *c = s->c + n * s->c_ld, *a = s->act + n * s->act_ld;
        for (int64_t j = 0; j < H; j++) {
            float i = sigmoid(pre(s, gx, gh, j));
            float f = sigmoid(pre(s, gx, gh, H + j));
            float g = tanhf(pre(s, gx, gh, 2 * H + j));
            float o = sigmoid(pre(s, gx, gh, 3 * H + j));
            float cy = f * (cp ? cp[j] : 0.f) + i * g;
            c[j] = cy;
            h[j] = o * tanhf(cy);
            a[j] = i;
            a[H + j] = f;
            a[2 * H + j] = g;
            a[3 * H + j] = o;
        }
    }
}

static void gru_forward_rows(void *context, int64_t begin, int64_t end)
{
    const kn_cpu_rnn_step *s = context;
    int64_t H = s->hidden;
    for (int64_t n = begin; n < end; n++) {
        const float *gx = row(s->gx, s->gx_ld, n), *gh = row(s->gh, s->gh_ld, n);
        const float *hp = row(s->h_prev, s->h_prev_ld, n);
        float *h = s->h + n * s->h_ld, *a = s->act + n * s->act_ld;
        for (int64_t j = 0; j < H; j++) {
            float r = sigmoid(pre(s, gx, gh, j));
            float z = sigmoid(pre(s, gx, gh, H + j));
            float hn = gh ? gh[2 * H + j] : 0.f;
            if (s->b_hh) hn += s->b_hh[2 * H + j];
            float in = gx[2 * H + j];
            if (s->b_ih) in += s->b_ih[2 * H + j];
            float nv = tanhf(in + hn * r);
            float prev = hp ? hp[j] : 0.f;
            h[j] = (prev - nv) * z + nv;
            a[j] = r;
            a[H + j] = z;
            a[2 * H + j] = nv;
            a[3 * H + j] = hn;
        }
    }
}

static void lstm_backward_rows(void *context, int64_t begin, int64_t end)
{
    const kn_cpu_rnn_grad_step *s = context;
    int64_t H = s->hidden;
    for (int64_t n = begin; n < end; n++) {
        const float *a = s->act + n * s->act_ld, *c = s->c + n * s->c_ld;
        const float *cp = row(s->c_prev, s->c_prev_ld, n), *dy = row(s->dh_out, s->dh_out_ld, n);
        float *dh_rec = s->dh_rec + n * H, *dc_rec = s->dc_rec + n * H;
        float *d = s->dgx + n * s->dgx_ld;
        for (int64_t j = 0; j < H; j++) {
            float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
            float tc = tanhf(c[j]);
            float dh = dh_rec[j] + (dy ? dy[j] : 0.f);
            float dc = dc_rec[j] + dh * o * (1.f - tc * tc);
            float cprev = cp ? cp[j] : 0.f;
            d[j] = dc * g * i * (1.f - i);
            d[H + j] = dc * cprev * f * (1.f - f);
            d[2 * H + j] = dc * i * (1.f - g * g);
            d[3 * H + j] = dh * tc * o * (1.f - o);
            dc_rec[j] = dc * f;
        }
    }
}

static void gru_backward_rows(void *context, int64_t begin, int64_t end)
{
    const kn_cpu_rnn_grad_step *s = context;
    int64_t H = s->hidden;
    for (int64_t n = begin; n < end; n++) {
        const float *a = s->act + n * s->act_ld;
        const float *hp = row(s->h_prev, s->h_prev_ld, n), *dy = row(s->dh_out, s->dh_out_ld, n);
        float *dh_rec = s->dh_rec + n * H;
        float *dx = s->dgx + n * s->dgx_ld, *dhh = s->dgh + n * s->dgh_ld;
        for (int64_t j = 0; j < H; j++) {
            float r = a[j], z = a[H + j], nv = a[2 * H + j], hn = a[3 * H + j];
            float dh = dh_rec[j] + (dy ? dy[j] : 0.f);
            float prev = hp ? hp[j] : 0.f;
            /* h = (prev - n) * z + n */
            float dn = dh * (1.f - z) * (1.f - nv * nv);
            float dz = dh * (prev - nv) * z * (1.f - z);
            float dr = dn * hn * r * (1.f - r);
            dx[j] = dr;
            dx[H + j] = dz;
            dx[2 * H + j] = dn;
            dhh[j] = dr;
            dhh[H + j] = dz;
            dhh[2 * H + j] = dn * r;
            dh_rec[j] = dh * z;
        }
    }
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

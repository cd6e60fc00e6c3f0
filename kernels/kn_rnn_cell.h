/*
 * kn_rnn_cell.h — the math of one hidden unit of one LSTM or GRU time step, forward and
 * backward, written once for both back ends: kernels/cpu/rnn.c runs it over the units of
 * a row in loops the compiler vectorises, kernels/cuda/rnn.cu gives each unit a thread.
 * Loading the gate pre-activations and storing the results is each back end's business.
 * The formulas and their order are torch 1.13's CPU cells (aten/src/ATen/native/RNN.cpp:
 * LSTMCell, and GRUCell with the input gates computed beforehand).
 *
 * exp and tanh: the CUDA libm's on the device; on the CPU branch-free versions that
 * vectorise (kn_cpu_expf_inline, ~2 ulp, and kn_rnn_tanhf below, a few ulp), as torch's
 * CPU kernels use vectorised ones (Sleef).
 */
#ifndef KN_RNN_CELL_H
#define KN_RNN_CELL_H

#include <math.h>

#ifdef __CUDACC__
#define KN_RNN_CELL static __host__ __device__ __forceinline__
#define KN_RNN_EXP expf
#define KN_RNN_TANH tanhf
#else
#include "cpu/kn_cpu.h"
#define KN_RNN_CELL static inline
#define KN_RNN_EXP kn_cpu_expf_inline
#define KN_RNN_TANH kn_rnn_tanhf

/* tanh without branches: the odd Taylor series to x^11 below |x| = 0.3 (the next term is
 * under 2e-9 of the value there), 1 - 2 / (exp(2|x|) + 1) with x's sign above (at most
 * a few ulp lost to the subtraction: the result is > 0.29). Saturates to +-1, keeps NaN. */
KN_RNN_CELL float kn_rnn_tanhf(float x)
{
    float a = fabsf(x), x2 = x * x;
    float series =
        x * (1.f + x2 * (-1.f / 3 +
                         x2 * (2.f / 15 +
                               x2 * (-17.f / 315 + x2 * (62.f / 2835 + x2 * (-1382.f / 155925))))));
    float e = kn_cpu_expf_inline(2.f * (a < 44.f ? a : 44.f));
    float big = copysignf(1.f - 2.f / (e + 1.f), x);
    return a < 0.3f ? series : (a == a ? big : x);
}
#endif

KN_RNN_CELL float kn_rnn_sigmoid(float x)
{
    return 1.f / (1.f + KN_RNN_EXP(-x));
}

/* LSTM forward from the gates' pre-activations and the previous cell state:
 * i, f, o = sigmoid, g = tanh; c = f * c_prev + i * g; h = o * tanh(c). */
typedef struct kn_rnn_lstm_values {
    float i, f, g, o, c, h;
} kn_rnn_lstm_values;

KN_RNN_CELL kn_rnn_lstm_values kn_rnn_lstm_cell(float pi, float pf, float pg, float po,
                                                float c_prev)
{
    kn_rnn_lstm_values v;
    v.i = kn_rnn_sigmoid(pi);
    v.f = kn_rnn_sigmoid(pf);
    v.g = KN_RNN_TANH(pg);
    v.o = kn_rnn_sigmoid(po);
    v.c = v.f * c_prev + v.i * v.g;
    v.h = v.o * KN_RNN_TANH(v.c);
    return v;
}

/* LSTM backward from the saved gates, the cell states and the gradients of h and c:
 * the pre-activations' gradients and the gradient of c_prev. */
typedef struct kn_rnn_lstm_grads {
    float di, df, dg, d_o, dc_prev;
} kn_rnn_lstm_grads;

KN_RNN_CELL kn_rnn_lstm_grads kn_rnn_lstm_cell_backward(float i, float f, float g, float o, float c,
                                                        float c_prev, float dh, float dc_next)
{
    kn_rnn_lstm_grads d;
    float tc = KN_RNN_TANH(c);
    float dc = dc_next + dh * o * (1.f - tc * tc);
    d.di = dc * g * i * (1.f - i);
    d.df = dc * c_prev * f * (1.f - f);
    d.dg = dc * i * (1.f - g * g);
    d.d_o = dh * tc * o * (1.f - o);
    d.dc_prev = dc * f;
    return d;
}

/* GRU forward from the r and z pre-activations (both sides and biases added), the input
 * side of the candidate (with b_in) and its hidden side hn (with b_hn):
 * n = tanh(in + r * hn), h = (h_prev - n) * z + n. */
typedef struct kn_rnn_gru_values {
    float r, z, n, h;
} kn_rnn_gru_values;

KN_RNN_CELL kn_rnn_gru_values kn_rnn_gru_cell(float pr, float pz, float in, float hn, float h_prev)
{
    kn_rnn_gru_values v;
    v.r = kn_rnn_sigmoid(pr);
    v.z = kn_rnn_sigmoid(pz);
    v.n = KN_RNN_TANH(in + hn * v.r);
    v.h = (h_prev - v.n) * v.z + v.n;
    return v;
}

/* GRU backward: the pre-activations' gradients (dr, dz, dn on the input side; the hidden
 * side's candidate gets dn * r = dhn) and the direct part of h_prev's gradient. */
typedef struct kn_rnn_gru_grads {
    float dr, dz, dn, dhn, dh_prev;
} kn_rnn_gru_grads;

KN_RNN_CELL kn_rnn_gru_grads kn_rnn_gru_cell_backward(float r, float z, float n, float hn,
                                                      float h_prev, float dh)
{
    kn_rnn_gru_grads d;
    d.dn = dh * (1.f - z) * (1.f - n * n);
    d.dz = dh * (h_prev - n) * z * (1.f - z);
    d.dr = d.dn * hn * r * (1.f - r);
    d.dhn = d.dn * r;
    d.dh_prev = dh * z;
    return d;
}

#endif

/*
 * rnn.cu — the CUDA module's recurrent-layer kernels (kn_cuda_rnn.h): one LSTM or GRU
 * time step forward and backward with the formulas and the order of operations of
 * kernels/cpu/rnn.c (torch 1.13's cells), one thread per (row, hidden unit), and the
 * column sums of the bias gradients. The GEMMs around each step are cuBLAS calls that
 * core/ops/ops_rnn.c issues on the same stream, so a step never waits for the host.
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_rnn.h"

#include <math.h>

#define THREADS 256
#define MAX_BLOCKS 65535

static unsigned blocks_for(int64_t items)
{
    int64_t b = (items + THREADS - 1) / THREADS;
    if (b < 1) b = 1;
    return (unsigned)(b < MAX_BLOCKS ? b : MAX_BLOCKS);
}

static const char *launched(const char *op)
{
    return kn_cuda_check(cudaGetLastError(), op);
}

__device__ __forceinline__ float sigmoid(float x)
{
    return 1.f / (1.f + expf(-x));
}

/* The pre-activation at gate column k: hidden side (with its bias) plus input side. */
__device__ __forceinline__ float pre(const kn_cpu_rnn_step &s, const float *gx, const float *gh,
                                     int64_t k)
{
    float hidden = gh ? gh[k] : 0.f;
    if (s.b_hh) hidden += s.b_hh[k];
    float input = gx[k];
    if (s.b_ih) input += s.b_ih[k];
    return hidden + input;
}

__global__ void lstm_forward_kernel(kn_cpu_rnn_step s)
{
    int64_t H = s.hidden;
    GRID_STRIDE(e, s.batch * H)
    {
        int64_t n = e / H, j = e % H;
        const float *gx = s.gx + n * s.gx_ld, *gh = s.gh ? s.gh + n * s.gh_ld : NULL;
        float i = sigmoid(pre(s, gx, gh, j));
        float f = sigmoid(pre(s, gx, gh, H + j));
        float g = tanhf(pre(s, gx, gh, 2 * H + j));
        float o = sigmoid(pre(s, gx, gh, 3 * H + j));
        float cp = s.c_prev ? s.c_prev[n * s.c_prev_ld + j] : 0.f;
        float cy = f * cp + i * g;
        s.c[n * s.c_ld + j] = cy;
        s.h[n * s.h_ld + j] = o * tanhf(cy);
        float *a = s.act + n * s.act_ld;
        a[j] = i;
        a[H + j] = f;
        a[2 * H + j] = g;
        a[3 * H + j] = o;
    }
}

__global__ void gru_forward_kernel(kn_cpu_rnn_step s)
{
    int64_t H = s.hidden;
    GRID_STRIDE(e, s.batch * H)
    {
        int64_t n = e / H, j = e % H;
        const float *gx = s.gx + n * s.gx_ld, *gh = s.gh ? s.gh + n * s.gh_ld : NULL;
        float r = sigmoid(pre(s, gx, gh, j));
        float z = sigmoid(pre(s, gx, gh, H + j));
        float hn = gh ? gh[2 * H + j] : 0.f;
        if (s.b_hh) hn += s.b_hh[2 * H + j];
        float in = gx[2 * H + j];
        if (s.b_ih) in += s.b_ih[2 * H + j];
        float nv = tanhf(in + hn * r);
        float prev = s.h_prev ? s.h_prev[n * s.h_prev_ld + j] : 0.f;
        s.h[n * s.h_ld + j] = (prev - nv) * z + nv;
        float *a = s.act + n * s.act_ld;
        a[j] = r;
        a[H + j] = z;
        a[2 * H + j] = nv;
        a[3 * H + j] = hn;
    }
}

__global__ void lstm_backward_kernel(kn_cpu_rnn_grad_step s)
{
    int64_t H = s.hidden;
    GRID_STRIDE(e, s.batch * H)
    {
        int64_t n = e / H, j = e % H;
        const float *a = s.act + n * s.act_ld;
        float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
        float tc = tanhf(s.c[n * s.c_ld + j]);
        float dh = s.dh_rec[e] + (s.dh_out ? s.dh_out[n * s.dh_out_ld + j] : 0.f);
        float dc = s.dc_rec[e] + dh * o * (1.f - tc * tc);
        float cprev = s.c_prev ? s.c_prev[n * s.c_prev_ld + j] : 0.f;
        float *d = s.dgx + n * s.dgx_ld;
        d[j] = dc * g * i * (1.f - i);
        d[H + j] = dc * cprev * f * (1.f - f);
        d[2 * H + j] = dc * i * (1.f - g * g);
        d[3 * H + j] = dh * tc * o * (1.f - o);
        s.dc_rec[e] = dc * f;
    }
}

__global__ void gru_backward_kernel(kn_cpu_rnn_grad_step s)
{
    int64_t H = s.hidden;
    GRID_STRIDE(e, s.batch * H)
    {
        int64_t n = e / H, j = e % H;
        const float *a = s.act + n * s.act_ld;
        float r = a[j], z = a[H + j], nv = a[2 * H + j], hn = a[3 * H + j];
        float dh = s.dh_rec[e] + (s.dh_out ? s.dh_out[n * s.dh_out_ld + j] : 0.f);
        float prev = s.h_prev ? s.h_prev[n * s.h_prev_ld + j] : 0.f;
        float dn = dh * (1.f - z) * (1.f - nv * nv);
        float dz = dh * (prev - nv) * z * (1.f - z);
        float dr = dn * hn * r * (1.f - r);
        float *dx = s.dgx + n * s.dgx_ld, *dhh = s.dgh + n * s.dgh_ld;
        dx[j] = dr;
        dx[H + j] = dz;
        dx[2 * H + j] = dn;
        dhh[j] = dr;
        dhh[H + j] = dz;
        dhh[2 * H + j] = dn * r;
        s.dh_rec[e] = dh * z;
    }
}

static const char *step_forward(int device, kn_rnn_mode mode, const kn_cpu_rnn_step *s)
{
    const char *op = mode == KN_RNN_LSTM ? "lstm" : "gru";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (s->batch <= 0 || s->hidden <= 0) return NULL;
    unsigned blocks = blocks_for(s->batch * s->hidden);
    if (mode == KN_RNN_LSTM)
        lstm_forward_kernel<<<blocks, THREADS, 0, stream>>>(*s);
    else
        gru_forward_kernel<<<blocks, THREADS, 0, stream>>>(*s);
    return launched(op);
}

static const char *step_backward(int device, kn_rnn_mode mode, const kn_cpu_rnn_grad_step *s)
{
    const char *op = mode == KN_RNN_LSTM ? "lstm backward" : "gru backward";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (s->batch <= 0 || s->hidden <= 0) return NULL;
    unsigned blocks = blocks_for(s->batch * s->hidden);
    if (mode == KN_RNN_LSTM)
        lstm_backward_kernel<<<blocks, THREADS, 0, stream>>>(*s);
    else
        gru_backward_kernel<<<blocks, THREADS, 0, stream>>>(*s);
    return launched(op);
}

/* ---- column sums ------------------------------------------------------------------------- */

#define SUM_COLS 32
#define SUM_LANES 8

/* A block of SUM_COLS x SUM_LANES threads per SUM_COLS columns: each lane sums every
 * SUM_LANES-th row, then the lanes are added in a fixed order (deterministic). */
__global__ void sum_rows_kernel(const float *x, int64_t rows, int64_t cols, int64_t ld, float *out)
{
    __shared__ float partial[SUM_LANES][SUM_COLS];
    int64_t j = (int64_t)blockIdx.x * SUM_COLS + threadIdx.x;
    float sum = 0.f;
    if (j < cols)
        for (int64_t i = threadIdx.y; i < rows; i += SUM_LANES) sum += x[i * ld + j];
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
        float total = 0.f;
        for (int l = 0; l < SUM_LANES; l++) total += partial[l][threadIdx.x];
        out[j] = total;
    }
}

static const char *sum_rows(int device, const float *x, int64_t rows, int64_t cols, int64_t ld,
                            float *out)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "rnn bias gradient", &stream, NULL);
    if (error) return error;
    if (cols <= 0) return NULL;
    unsigned blocks = (unsigned)((cols + SUM_COLS - 1) / SUM_COLS);
    sum_rows_kernel<<<blocks, dim3(SUM_COLS, SUM_LANES), 0, stream>>>(x, rows, cols, ld, out);
    return launched("rnn bias gradient");
}

static const kn_cuda_rnn rnn_table = {
    KN_CUDA_RNN_ABI, sizeof(kn_cuda_rnn), step_forward, step_backward, sum_rows,
};

extern "C" __attribute__((visibility("default"))) const kn_cuda_rnn *kn_cuda_rnn_v1(void)
{
    return &rnn_table;
}

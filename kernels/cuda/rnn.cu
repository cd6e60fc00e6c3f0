/*
 * rnn.cu — the CUDA module's recurrent-layer kernels (kn_cuda_rnn.h): one LSTM or GRU
 * time step forward and backward, one thread per (row, hidden unit) around the unit
 * math that kernels/cpu/rnn.c runs too (../kn_rnn_cell.h: torch 1.13's cells), and the
 * column sums of the bias gradients. The GEMMs around each step are cuBLAS calls that
 * core/ops/ops_rnn.c issues on the same stream, so a step never waits for the host.
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_rnn.h"
#include "../kn_rnn_cell.h"

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

/* One thread per unit of every row, around the unit math of kn_rnn_cell.h. */

__global__ void lstm_forward_kernel(kn_cpu_rnn_step s)
{
    int64_t H = s.hidden;
    GRID_STRIDE(e, s.batch * H)
    {
        int64_t n = e / H, j = e % H;
        const float *gx = s.gx + n * s.gx_ld, *gh = s.gh + n * s.gh_ld;
        float pre[4];
        for (int q = 0; q < 4; q++) {
            int64_t k = q * H + j;
            pre[q] = (gh[k] + s.b_hh[k]) + (gx[k] + s.b_ih[k]);
        }
        kn_rnn_lstm_values v =
            kn_rnn_lstm_cell(pre[0], pre[1], pre[2], pre[3], s.c_prev[n * s.c_prev_ld + j]);
        s.c[n * s.c_ld + j] = v.c;
        s.h[n * s.h_ld + j] = v.h;
        float *a = s.act + n * s.act_ld;
        a[j] = v.i;
        a[H + j] = v.f;
        a[2 * H + j] = v.g;
        a[3 * H + j] = v.o;
    }
}

__global__ void gru_forward_kernel(kn_cpu_rnn_step s)
{
    int64_t H = s.hidden;
    GRID_STRIDE(e, s.batch * H)
    {
        int64_t n = e / H, j = e % H;
        const float *gx = s.gx + n * s.gx_ld, *gh = s.gh + n * s.gh_ld;
        const float *bi = s.b_ih, *bh = s.b_hh;
        float pr = (gh[j] + bh[j]) + (gx[j] + bi[j]);
        float pz = (gh[H + j] + bh[H + j]) + (gx[H + j] + bi[H + j]);
        float hn = gh[2 * H + j] + bh[2 * H + j];
        kn_rnn_gru_values v = kn_rnn_gru_cell(pr, pz, gx[2 * H + j] + bi[2 * H + j], hn,
                                              s.h_prev[n * s.h_prev_ld + j]);
        s.h[n * s.h_ld + j] = v.h;
        float *a = s.act + n * s.act_ld;
        a[j] = v.r;
        a[H + j] = v.z;
        a[2 * H + j] = v.n;
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
        kn_rnn_lstm_grads g =
            kn_rnn_lstm_cell_backward(a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                                      s.c[n * s.c_ld + j], s.c_prev[n * s.c_prev_ld + j],
                                      s.dh_rec[e] + s.dh_out[n * s.dh_out_ld + j], s.dc_rec[e]);
        float *d = s.dgx + n * s.dgx_ld;
        d[j] = g.di;
        d[H + j] = g.df;
        d[2 * H + j] = g.dg;
        d[3 * H + j] = g.d_o;
        s.dc_rec[e] = g.dc_prev;
    }
}

__global__ void gru_backward_kernel(kn_cpu_rnn_grad_step s)
{
    int64_t H = s.hidden;
    GRID_STRIDE(e, s.batch * H)
    {
        int64_t n = e / H, j = e % H;
        const float *a = s.act + n * s.act_ld;
        kn_rnn_gru_grads g = kn_rnn_gru_cell_backward(a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                                                      s.h_prev[n * s.h_prev_ld + j],
                                                      s.dh_rec[e] + s.dh_out[n * s.dh_out_ld + j]);
        float *dx = s.dgx + n * s.dgx_ld, *dhh = s.dgh + n * s.dgh_ld;
        dx[j] = g.dr;
        dx[H + j] = g.dz;
        dx[2 * H + j] = g.dn;
        dhh[j] = g.dr;
        dhh[H + j] = g.dz;
        dhh[2 * H + j] = g.dhn;
        s.dh_rec[e] = g.dh_prev;
    }
}

/* One step's kernel (S: the forward or the backward struct) over its batch x hidden units. */
template <typename S>
static const char *launch(int device, const char *op, void (*kernel)(S), const S *s)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (s->batch <= 0 || s->hidden <= 0) return NULL;
    kernel<<<blocks_for(s->batch * s->hidden), THREADS, 0, stream>>>(*s);
    return launched(op);
}

static const char *step_forward(int device, kn_rnn_mode mode, const kn_cpu_rnn_step *s)
{
    if (mode == KN_RNN_LSTM) return launch(device, "lstm", lstm_forward_kernel, s);
    return launch(device, "gru", gru_forward_kernel, s);
}

static const char *step_backward(int device, kn_rnn_mode mode, const kn_cpu_rnn_grad_step *s)
{
    if (mode == KN_RNN_LSTM) return launch(device, "lstm backward", lstm_backward_kernel, s);
    return launch(device, "gru backward", gru_backward_kernel, s);
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

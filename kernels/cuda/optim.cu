/*
 * optim.cu — the optimizers' steps on a CUDA device, one fused kernel per parameter, and
 * the reductions of gradient clipping; exports the module's training table,
 * kn_cuda_train_v1 (with the norm kernels of norm.cu).
 *
 * The update kernels repeat kernels/cpu/optim.c element by element: the scalars are
 * rounded to float on the host exactly as there, fmaf stands where the CPU loop has
 * FMA, and every other product, quotient and sum uses the _rn intrinsics so nvcc does
 * not contract them (sqrtf and division are IEEE-rounded in nvcc's default mode), so a
 * step gives the CPU's results bit for bit.
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_train.h"

#include <math.h>

#define THREADS 256
#define MAX_BLOCKS (1 << 20)
#define REDUCE_BLOCKS 1024

static unsigned blocks_for(int64_t items)
{
    int64_t b = (items + THREADS - 1) / THREADS;
    if (b < 1) b = 1;
    return (unsigned)(b < MAX_BLOCKS ? b : MAX_BLOCKS);
}

#define GRID_LOOP(i, n)                                                                            \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

/* The scalars of kernels/cpu/optim.c's ctx, rounded the same way. */
typedef struct scalars {
    float neg_lr, wd, momentum, one_minus_dampening;
    float beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, neg_step_size, decay;
    float alpha, one_minus_alpha, eps;
    bool has_wd, first, nesterov, has_momentum, amsgrad, decoupled, centered;
} scalars;

typedef struct buffers {
    float *p;
    const float *g;
    float *buf, *m, *v, *vmax, *gavg;
} buffers;

/* ---- SGD ------------------------------------------------------------------------------ */

__global__ void sgd_kernel(buffers b, scalars c, int64_t n)
{
    GRID_LOOP(i, n)
    {
        float d = b.g[i];
        if (c.has_wd) d = fmaf(c.wd, b.p[i], d); /* d_p = d_p.add(param, alpha=wd) */
        if (c.has_momentum) {
            float bv = c.first ? d : fmaf(c.one_minus_dampening, d, __fmul_rn(b.buf[i], c.momentum));
            b.buf[i] = bv;
            d = c.nesterov ? fmaf(c.momentum, bv, d) : bv;
        }
        b.p[i] = fmaf(c.neg_lr, d, b.p[i]); /* param.add_(d_p, alpha=-lr) */
    }
}

/* ---- Adam / AdamW --------------------------------------------------------------------- */

__global__ void adam_kernel(buffers b, scalars c, int64_t n)
{
    GRID_LOOP(i, n)
    {
        float gi = b.g[i];
        if (c.has_wd && !c.decoupled) gi = fmaf(c.wd, b.p[i], gi);
        float mi = fmaf(c.one_minus_beta1, gi, __fmul_rn(b.m[i], c.beta1));
        float vi = fmaf(__fmul_rn(c.one_minus_beta2, gi), gi, __fmul_rn(b.v[i], c.beta2));
        b.m[i] = mi;
        b.v[i] = vi;
        if (c.amsgrad) {
            float x = b.vmax[i];
            x = (x > vi || x != x) ? x : vi; /* torch.maximum propagates NaN */
            b.vmax[i] = x;
            vi = x;
        }
        float root = sqrtf(vi);
        float pi = b.p[i];
        if (c.decoupled) pi = __fmul_rn(pi, c.decay);
        float denom = __fadd_rn(__fdiv_rn(root, c.bc2_sqrt), c.eps);
        b.p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(c.neg_step_size, mi), denom));
    }
}

/* ---- RMSprop -------------------------------------------------------------------------- */

__global__ void rmsprop_kernel(buffers b, scalars c, int64_t n)
{
    GRID_LOOP(i, n)
    {
        float pi = b.p[i], gi = b.g[i];
        if (c.has_wd) gi = fmaf(c.wd, pi, gi);
        float s = fmaf(__fmul_rn(c.one_minus_alpha, gi), gi, __fmul_rn(b.v[i], c.alpha));
        b.v[i] = s;
        if (c.centered) {
            float a = fmaf(c.one_minus_alpha, gi, __fmul_rn(b.gavg[i], c.alpha));
            b.gavg[i] = a;
            s = fmaf(-a, a, s); /* square_avg.addcmul(ga, ga, value=-1) */
        }
        float avg = __fadd_rn(sqrtf(s), c.eps);
        if (c.has_momentum) {
            float bv = __fadd_rn(__fmul_rn(b.buf[i], c.momentum), __fdiv_rn(gi, avg));
            b.buf[i] = bv;
            b.p[i] = fmaf(c.neg_lr, bv, pi);
        } else {
            b.p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(c.neg_lr, gi), avg));
        }
    }
}

static buffers buffers_of(const kn_cpu_optim_args *a)
{
    buffers b = {a->param,   a->grad,       a->buf,     a->exp_avg,
                 a->exp_avg_sq, a->max_exp_avg_sq, a->grad_avg};
    if (a->square_avg) b.v = a->square_avg;
    return b;
}

static const char *optim_sgd(int device, const kn_cpu_optim_args *a, int64_t n)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "sgd step", &stream, NULL);
    if (error || n <= 0) return error;
    scalars c = {};
    c.neg_lr = (float)-a->lr;
    c.wd = (float)a->weight_decay;
    c.momentum = (float)a->momentum;
    c.one_minus_dampening = (float)(1 - a->dampening);
    c.has_wd = a->weight_decay != 0;
    c.first = a->first;
    c.nesterov = a->nesterov;
    c.has_momentum = a->momentum != 0;
    sgd_kernel<<<blocks_for(n), THREADS, 0, stream>>>(buffers_of(a), c, n);
    return kn_cuda_check(cudaGetLastError(), "sgd step");
}

static const char *optim_adam(int device, const kn_cpu_optim_args *a, int64_t n)
{
    const char *op = a->decoupled ? "adamw step" : "adam step";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error || n <= 0) return error;
    double step = (double)a->step;
    double bias_correction1 = 1 - pow(a->beta1, step);
    double bias_correction2 = 1 - pow(a->beta2, step);
    scalars c = {};
    c.wd = (float)a->weight_decay;
    c.beta1 = (float)a->beta1;
    c.one_minus_beta1 = (float)(1 - a->beta1);
    c.beta2 = (float)a->beta2;
    c.one_minus_beta2 = (float)(1 - a->beta2);
    c.bc2_sqrt = (float)sqrt(bias_correction2);
    c.neg_step_size = (float)-(a->lr / bias_correction1);
    c.decay = (float)(1 - a->lr * a->weight_decay);
    c.eps = (float)a->eps;
    c.has_wd = a->weight_decay != 0;
    c.amsgrad = a->max_exp_avg_sq != NULL;
    c.decoupled = a->decoupled;
    adam_kernel<<<blocks_for(n), THREADS, 0, stream>>>(buffers_of(a), c, n);
    return kn_cuda_check(cudaGetLastError(), op);
}

static const char *optim_rmsprop(int device, const kn_cpu_optim_args *a, int64_t n)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "rmsprop step", &stream, NULL);
    if (error || n <= 0) return error;
    scalars c = {};
    c.neg_lr = (float)-a->lr;
    c.wd = (float)a->weight_decay;
    c.momentum = (float)a->momentum;
    c.alpha = (float)a->alpha;
    c.one_minus_alpha = (float)(1 - a->alpha);
    c.eps = (float)a->eps;
    c.has_wd = a->weight_decay != 0;
    c.centered = a->grad_avg != NULL;
    c.has_momentum = a->momentum > 0;
    rmsprop_kernel<<<blocks_for(n), THREADS, 0, stream>>>(buffers_of(a), c, n);
    return kn_cuda_check(cudaGetLastError(), "rmsprop step");
}

/* ---- clipping reductions --------------------------------------------------------------- */

__device__ double block_sum_double(double v)
{
    __shared__ double partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    }
    return v; /* valid in thread 0 */
}

__global__ void sum_squares_kernel(const float *x, int64_t n, double *partials)
{
    double acc = 0;
    GRID_LOOP(i, n)
    {
        double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(double *partials, int count)
{
    double acc = 0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) partials[0] = acc;
}

__global__ void finite_kernel(const float *x, int64_t n, int *bad)
{
    GRID_LOOP(i, n)
    {
        if (!isfinite(x[i])) *bad = 1;
    }
}

static const char *sum_squares(int device, const float *x, int64_t n, double *host_out)
{
    const char *op = "clip_grad_norm";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    *host_out = 0;
    if (error || n <= 0) return error;
    int64_t want = (n + THREADS - 1) / THREADS;
    int blocks = (int)(want < REDUCE_BLOCKS ? want : REDUCE_BLOCKS);
    size_t nbytes = sizeof(double) * REDUCE_BLOCKS;
    void *buf = NULL;
    const kn_cuda_backend *be = kn_cuda_backend_v1();
    if ((error = be->alloc(device, nbytes, &buf))) return error;
    double *partials = (double *)buf;
    sum_squares_kernel<<<blocks, THREADS, 0, stream>>>(x, n, partials);
    error = kn_cuda_check(cudaGetLastError(), op);
    if (!error) {
        sum_partials_kernel<<<1, THREADS, 0, stream>>>(partials, blocks);
        error = kn_cuda_check(cudaGetLastError(), op);
    }
    if (!error) error = be->copy_d2h(device, host_out, partials, sizeof(double));
    be->free(device, buf, nbytes);
    return error;
}

static const char *all_finite(int device, const float *x, int64_t n, bool *host_out)
{
    const char *op = "grads_finite";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    *host_out = true;
    if (error || n <= 0) return error;
    void *buf = NULL;
    const kn_cuda_backend *be = kn_cuda_backend_v1();
    if ((error = be->alloc(device, sizeof(int), &buf))) return error;
    int bad = 0;
    error = kn_cuda_check(cudaMemsetAsync(buf, 0, sizeof(int), stream), op);
    if (!error) {
        finite_kernel<<<blocks_for(n), THREADS, 0, stream>>>(x, n, (int *)buf);
        error = kn_cuda_check(cudaGetLastError(), op);
    }
    if (!error) error = be->copy_d2h(device, &bad, buf, sizeof(int));
    be->free(device, buf, sizeof(int));
    if (!error) *host_out = bad == 0;
    return error;
}

/* ---- the table ---------------------------------------------------------------------- */

extern "C" const char *kn_cuda_layer_norm_forward(int, const float *, const float *, const float *,
                                                  float *, float *, float *, int64_t, int64_t,
                                                  float);
extern "C" const char *kn_cuda_layer_norm_backward(int, const float *, const float *,
                                                   const float *, const float *, const float *,
                                                   float *, float *, float *, int64_t, int64_t);
extern "C" const char *kn_cuda_batch_norm_forward(int, const float *, int64_t, int64_t, int64_t,
                                                  bool, double, double, kn_cuda_fvec,
                                                  kn_cuda_fvec, kn_cuda_fvec, kn_cuda_fvec,
                                                  float *, float *, float *);
extern "C" const char *kn_cuda_batch_norm_backward(int, const float *, const float *,
                                                   const float *, const float *, kn_cuda_fvec,
                                                   int64_t, int64_t, int64_t, bool, float *,
                                                   float *, float *);

static const kn_cuda_train train_table = {
    KN_CUDA_TRAIN_ABI,
    sizeof(kn_cuda_train),
    kn_cuda_layer_norm_forward,
    kn_cuda_layer_norm_backward,
    kn_cuda_batch_norm_forward,
    kn_cuda_batch_norm_backward,
    optim_sgd,
    optim_adam,
    optim_rmsprop,
    sum_squares,
    all_finite,
};

extern "C" __attribute__((visibility("default"))) const kn_cuda_train *kn_cuda_train_v1(void)
{
    return &train_table;
}

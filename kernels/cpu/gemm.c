/*
 * gemm.c — matrix products on the CPU: kn_cpu_gemm over the engine's own GEMM (sgemm.c,
 * run on the engine's scheduler), the dot product through OpenBLAS's cblas_sdot (kept
 * to one thread: the engine's scheduler owns the cores), plus the row fill / row sum
 * loops that linear layers use for bias.
 */
#include "kn_cpu_linalg.h"

#include <cblas.h>
#include <pthread.h>
#include <string.h>

void kn_cpu_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                 int64_t ldc)
{
    if (m <= 0 || n <= 0) return;
    if (beta != 0.f && beta != 1.f) /* C = beta C first; the product then adds to it */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) c[i * ldc + j] *= beta;
    if (k <= 0) { /* no steps: C is beta C (0 ignores NaN in C) */
        if (beta == 0.f)
            for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, sizeof(float) * (size_t)n);
        return;
    }
    kn_cpu_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta != 0.f, c, ldc);
}

static void blas_single_thread(void)
{
    openblas_set_num_threads(1);
}

float kn_cpu_dot(int64_t n, const float *x, int64_t incx, const float *y, int64_t incy)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (n <= 0) return 0.f;
    pthread_once(&once, blas_single_thread);
    if (incx > 0 && incy > 0) return cblas_sdot((blasint)n, x, (blasint)incx, y, (blasint)incy);
    float sum = 0.f; /* broadcast (stride-0) vectors, which BLAS does not promise to take */
    for (int64_t i = 0; i < n; i++) sum += x[i * incx] * y[i * incy];
    return sum;
}

void kn_cpu_fill_rows(float *c, int64_t m, int64_t n, int64_t ldc, const float *row)
{
    for (int64_t i = 0; i < m; i++) memcpy(c + i * ldc, row, sizeof(float) * (size_t)n);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void
kn_cpu_sum_rows(const float *x, int64_t m, int64_t n, int64_t ldx, float *out, bool accumulate)
{
    if (!accumulate) memset(out, 0, sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < m; i++) {
        const float *restrict row = x + i * ldx;
        float *restrict o = out;
        for (int64_t j = 0; j < n; j++) o[j] += row[j];
    }
}

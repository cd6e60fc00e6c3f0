/*
 * gemm.c — matrix products on the CPU: a thin wrapper over OpenBLAS's cblas_sgemm and
 * cblas_sdot, plus the row fill / row sum loops that linear layers use for bias, and
 * the switch that keeps OpenBLAS to one thread while the engine's pool runs many
 * independent GEMMs at once (two thread pools nested would oversubscribe the cores).
 */
#include "kn_cpu_linalg.h"

#include <cblas.h>
#include <string.h>

void kn_cpu_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                 int64_t ldc)
{
    if (m <= 0 || n <= 0) return;
    if (k <= 0) { /* BLAS leaves C alone here only for beta == 1; make beta explicit */
        for (int64_t i = 0; i < m; i++) {
            float *row = c + i * ldc;
            if (beta == 0.f)
                memset(row, 0, sizeof(float) * (size_t)n);
            else
                for (int64_t j = 0; j < n; j++) row[j] *= beta;
        }
        return;
    }
    /* BLAS wants ld >= 1 even for degenerate shapes. */
    if (lda < 1) lda = 1;
    if (ldb < 1) ldb = 1;
    if (ldc < 1) ldc = 1;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, alpha, a,
                (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

float kn_cpu_dot(int64_t n, const float *x, int64_t incx, const float *y, int64_t incy)
{
    if (n <= 0) return 0.f;
    if (incx > 0 && incy > 0) return cblas_sdot((blasint)n, x, (blasint)incx, y, (blasint)incy);
    float sum = 0.f; /* broadcast (stride-0) vectors, which BLAS does not promise to take */
    for (int64_t i = 0; i < n; i++) sum += x[i * incx] * y[i * incy];
    return sum;
}

int kn_cpu_blas_single_threaded(void)
{
    int previous = openblas_get_num_threads();
    if (previous > 1) openblas_set_num_threads(1);
    return previous;
}

void kn_cpu_blas_restore(int previous)
{
    if (previous > 1) openblas_set_num_threads(previous);
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

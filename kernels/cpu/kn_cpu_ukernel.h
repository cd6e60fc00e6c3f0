/*
 * kn_cpu_ukernel.h — the engine's GEMM micro-kernel, shared by the packed GEMM (sgemm.c)
 * and the direct convolution (conv_direct.c). Internal to kernels/cpu.
 *
 * A micro-kernel computes one MR x NR tile of C from kc steps:
 *   acc[i][j] = sum over k < kc, in order, of a[k*MR + i] * b[boff[k] + j]
 * with A packed (MR values per step) and each step's NR values of B found at b + boff[k]
 * (a packed panel has boff[k] = k*NR; a convolution points each step at a shifted row
 * of its padded input). Every element of C is one chain of fused multiply-adds in k
 * order, whatever the tiling, so results do not depend on how the work is cut (nor on
 * the thread count).
 *
 * Then c[i*ldc + j] = acc (or += acc when accumulate) for i < m, j < n; a partial tile
 * (m < MR or n < NR) still reads MR rows of a and NR values of every B row.
 */
#ifndef KN_CPU_UKERNEL_H
#define KN_CPU_UKERNEL_H

#include <stdbool.h>
#include <stdint.h>

typedef void (*kn_cpu_ukernel_fn)(int64_t kc, const float *a, const float *b, const int32_t *boff,
                                  float *c, int64_t ldc, int m, int n, bool accumulate);

/* The same tile with A's rows given by offsets, read in segs segments of len steps
 * each stride apart, and B packed:
 *   acc[i][j] = sum over s < segs, k < len, in order, of
 *               a[aoff[i] + s*stride + k] * b[(s*len + k)*NR + j]
 * (rows i >= m are not read). A convolution's weight gradient: A the shifted rows of
 * its padded input (a segment per output row, so the padded plane's extra columns are
 * skipped), B its output gradient transposed. */
typedef void (*kn_cpu_ukernel_rows_fn)(int64_t segs, int64_t len, int64_t stride, const float *a,
                                       const int32_t *aoff, const float *b, float *c, int64_t ldc,
                                       int m, int n, bool accumulate);

/* The pixel-row form of a convolution's forward: a tile of PR consecutive output
 * positions x NC output channels,
 *   acc[i][j] = sum over k < kc, in order, of x[xoff[k] + i] * w[k*NC + j]
 * (w packed [kc][NC]), stored c[i*ldc + j] for i < m (all PR positions are read).
 * Each element is the same FMA chain as the MR x NR tile's, so it changes no bits; it
 * wastes no "virtual" columns and its weight loads are aligned. */
typedef void (*kn_cpu_pixels_fn)(int64_t kc, const float *w, const float *x, const int32_t *xoff,
                                 float *c, int64_t ldc, int m);

typedef struct kn_cpu_ukernel {
    int mr, nr;
    kn_cpu_ukernel_fn fn;
    kn_cpu_ukernel_rows_fn rows_fn;
    /* A rows kernel of narrow_mr x narrow_nr (one vector wide) for products with at most
     * narrow_nr columns, where the MR x NR tile would compute half of its columns for
     * nothing (a 16-channel convolution's weight gradient on the 8 x 32 tile). Each
     * element is the same FMA chain as in rows_fn, so the choice changes no bits. */
    int narrow_mr, narrow_nr;
    kn_cpu_ukernel_rows_fn narrow_rows_fn;
    /* the pixel-row kernel (NULL: none for this ISA) and its tile */
    int pixels_pr, pixels_nc;
    kn_cpu_pixels_fn pixels_fn;
    const char *name; /* the instruction set: "avx512", "avx2" or "generic" */
} kn_cpu_ukernel;

/* The best micro-kernel this CPU runs (chosen once; KN_GEMM_ISA=avx2|generic forces a
 * narrower one, for tests and comparisons). */
const kn_cpu_ukernel *kn_cpu_ukernel_get(void);

/* A 4 x 4 block of dot products along k, for operands both contiguous along k:
 *   c[i*ldc + j] (+)= alpha * sum over k of ar[i][k] * br[j][k]   for i < m, j < n
 * (ar[i >= m] and br[j >= n] must still point at kc readable floats). Each sum runs in
 * vector lanes and then a fixed tree across them: one order per element. */
#define KN_CPU_DOT_MR 4
#define KN_CPU_DOT_NR 4
typedef void (*kn_cpu_dot_fn)(int64_t k, const float *const *ar, const float *const *br,
                              float alpha, float *c, int64_t ldc, int m, int n, bool accumulate);
kn_cpu_dot_fn kn_cpu_dot_kernel(void);

/* Packs rows [0, m) (m <= MR, zero rows up to MR) and steps [0, kc) of A, where
 * A(i, k) = a[i*rs + k*cs], into dst[k*MR + i], each value times alpha. */
void kn_cpu_pack_a(const kn_cpu_ukernel *uk, const float *a, int64_t rs, int64_t cs, int m,
                   int64_t kc, float alpha, float *dst);

/* Per-thread scratch of at least floats floats, 64-byte aligned, kept between calls;
 * NULL when out of memory. Each slot is a separate buffer, one per use, so a kernel that
 * calls the GEMM inside a region keeps its own buffers apart from the GEMM's. */
enum {
    KN_CPU_SCRATCH_GEMM_B,      /* a tile's packed panel of B */
    KN_CPU_SCRATCH_GEMM_A,      /* a tile's packed block of A */
    KN_CPU_SCRATCH_GEMM_SHARED, /* the caller's packs shared by every tile */
    KN_CPU_SCRATCH_CONV_IN,     /* a convolution's padded image or columns */
    KN_CPU_SCRATCH_CONV_OUT,    /* its virtual output, transposed gradient or dcol */
    KN_CPU_SCRATCH_CONV_ACT,    /* one image's activations before a fused pool */
    KN_CPU_SCRATCH_CONV_PLANE,  /* a gradient plane spread from a fused pool's */
    KN_CPU_SCRATCH_NORM,        /* layer norm backward's per-block dweight/dbias sums */
    KN_CPU_SCRATCH_SLOTS
};
float *kn_cpu_scratch(int slot, int64_t floats);

#endif

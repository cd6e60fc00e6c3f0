/*
 * kn_cpu_linalg.h — raw CPU kernels for the linear-algebra and spatial ops: the GEMM
 * (the engine's own, sgemm.c), im2col/col2im for convolution, and 2-D max/avg pooling.
 * Buffers only: no tensors, no autograd. All matrices are row-major float32.
 */
#ifndef KN_CPU_LINALG_H
#define KN_CPU_LINALG_H

#include <stdbool.h>
#include <stdint.h>

/* ---- gemm.c, sgemm.c ---------------------------------------------------------------- */
/* C[m, n] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T as trans_x says; A is
 * [m, k] (or [k, m] when trans_a) with row stride lda, likewise B. beta == 0 ignores C's
 * old contents (NaNs included). k == 0 gives beta * C. Runs on the engine's scheduler;
 * every element is one FMA chain in k order, so results do not depend on the thread
 * count (sgemm.c). */
void kn_cpu_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                 int64_t ldc);
/* The engine's GEMM itself (k > 0): C = alpha op(A) op(B), or C += it when accumulate. */
void kn_cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, bool accumulate,
                  float *c, int64_t ldc);
/* Dot product of two strided vectors. */
float kn_cpu_dot(int64_t n, const float *x, int64_t incx, const float *y, int64_t incy);
/* Fills each of the m rows of c (row stride ldc) with the n values of row. */
void kn_cpu_fill_rows(float *c, int64_t m, int64_t n, int64_t ldc, const float *row);
/* out[j] (+)= sum_i x[i, j] over m rows of x (row stride ldx); accumulate adds to out. */
void kn_cpu_sum_rows(const float *x, int64_t m, int64_t n, int64_t ldx, float *out,
                     bool accumulate);

/* ---- conv.c ---------------------------------------------------------------------- */
typedef struct kn_cpu_conv_geometry {
    int64_t channels, height, width; /* one image's input */
    int64_t kernel_h, kernel_w;
    int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t out_h, out_w;
} kn_cpu_conv_geometry;

/* y [n, o, out_h, out_w] = conv2d(x [n, C, H, W], w [o, C/groups, kH, kW]) + bias (or
 * NULL), every buffer contiguous; the method is chosen per layer (conv.c). padded (or
 * NULL), only where kn_cpu_conv_direct_ok: [n * kn_cpu_conv_direct_padded_floats(g)],
 * gets each image as the direct kernels pad it, for the backward's weight gradient.
 * false: out of memory (y is then undefined). */
bool kn_cpu_conv2d_forward(const kn_cpu_conv_geometry *g, int64_t n, int64_t o, int64_t groups,
                           const float *x, const float *w, const float *bias, float *y,
                           float *padded);
/* The gradients each of gx [n, C, H, W], gw (as w) and gb [o] that is not NULL, from
 * gout [n, o, out_h, out_w]; all overwritten. padded: what the forward kept of x, or
 * NULL. false: out of memory. */
bool kn_cpu_conv2d_backward(const kn_cpu_conv_geometry *g, int64_t n, int64_t o, int64_t groups,
                            const float *x, const float *padded, const float *w, const float *gout,
                            float *gx, float *gw, float *gb);

/* ---- conv_direct.c: stride 1, dilation 1, one group, no unfolding ------------------ */
bool kn_cpu_conv_direct_ok(const kn_cpu_conv_geometry *g, int64_t groups);
/* Floats of one image of x padded as the direct kernels read it (borders and slack). */
int64_t kn_cpu_conv_direct_padded_floats(const kn_cpu_conv_geometry *g);
/* What a forward does to each image's sums before they leave the cache: relu (kn_relu's
 * values), then, with pool (a 2x2 geometry, kn_cpu_max_pool2d_is_2x2; its planes are set
 * per image), the 2x2 max pool into pooled and which ([count, O, out_h/2, out_w/2]) in
 * place of writing y. Bit for bit what kn_relu and kn_max_pool2d give. */
typedef struct kn_cpu_conv_epilogue {
    bool relu;
    const struct kn_cpu_pool_geometry *pool;
    float *pooled;
    uint8_t *which;
} kn_cpu_conv_epilogue;
/* y [count, O, out_h, out_w] = conv(x, w) + bias (NULL: none), then the epilogue (NULL:
 * none; y unused when it pools). padded (or NULL): [count *
 * kn_cpu_conv_direct_padded_floats(g)], gets each padded image, so that the weight
 * gradient need not pad x again. false: out of memory. */
bool kn_cpu_conv_direct_forward(const kn_cpu_conv_geometry *g, int64_t count, int64_t out_channels,
                                const float *x, const float *w, const float *bias,
                                const kn_cpu_conv_epilogue *epilogue, float *y, float *padded);
/* A convolution's output gradient [count, O, out_h, out_w]: dense, or (after a fused 2x2
 * pool) the pooled gradient [count, O, pooled_h, pooled_w] with each window's max place
 * (dh*2 + dw), standing for the dense gradient the pool's backward would write. */
typedef struct kn_cpu_conv_planes {
    const float *dense;
    const float *pooled;
    const uint8_t *which;
    int64_t pooled_h, pooled_w;
} kn_cpu_conv_planes;
/* gx [count, C, H, W] overwritten. */
bool kn_cpu_conv_direct_backward_input(const kn_cpu_conv_geometry *g, int64_t count,
                                       int64_t out_channels, const kn_cpu_conv_planes *gout,
                                       const float *w, float *gx);
/* gw [o, C, kH, kW] and gb [o] (or NULL) overwritten; x read from padded (what the
 * forward kept) when not NULL. */
bool kn_cpu_conv_direct_backward_weight(const kn_cpu_conv_geometry *g, int64_t count,
                                        int64_t out_channels, const float *x, const float *padded,
                                        const kn_cpu_conv_planes *gout, float *gw, float *gb);

/* Unfolds images [count, C, H, W] (contiguous) into col rows (c, ki, kj) and columns
 * (image, oh, ow): col[(c*kH + ki)*kW + kj][i*L + l] with L = out_h*out_w and row
 * stride ld (>= count*L). Parallel over (image, channel). */
void kn_cpu_im2col(const kn_cpu_conv_geometry *g, const float *images, int64_t count, float *col,
                   int64_t ld);
/* The adjoint: adds col (layout as above) back into images [count, C, H, W]
 * (overwritten, not accumulated). Parallel over (image, channel). */
void kn_cpu_col2im(const kn_cpu_conv_geometry *g, const float *col, int64_t ld, int64_t count,
                   float *images);

/* Bias gradient of a convolution: gb[o] = sum over n and l of grad[n, o, l] for grad
 * [n, channels, l] contiguous. Sums in 16 lanes (not one serial chain: that is ~4 cycles
 * an element), so the rounding differs from a plain loop by float rounding only. */
void kn_cpu_conv_bias_grad(const float *grad, int64_t n, int64_t channels, int64_t l, float *gb);

/* ---- pool.c ---------------------------------------------------------------------- */
typedef struct kn_cpu_pool_geometry {
    int64_t planes; /* N * C */
    int64_t height, width, out_h, out_w;
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    bool exclude_padding; /* avg: divide by the in-image count */
} kn_cpu_pool_geometry;

/* out and indices [planes, out_h, out_w]; indices hold h*W + w of each max (first max
 * on ties; NaN propagates). */
void kn_cpu_max_pool2d(const kn_cpu_pool_geometry *g, const float *in, float *out,
                       int64_t *indices);
/* grad_in [planes, H, W] is overwritten. */
void kn_cpu_max_pool2d_backward(const kn_cpu_pool_geometry *g, const float *grad_out,
                                const int64_t *indices, float *grad_in);
/* The common 2x2, stride 2, unpadded, undilated case with no clipped window
 * (2*out_h <= H, 2*out_w <= W): which[i] is the max's place in its window, dh*2 + dw,
 * one byte instead of an int64 index; ties, NaN and values match kn_cpu_max_pool2d. */
bool kn_cpu_max_pool2d_is_2x2(const kn_cpu_pool_geometry *g);
void kn_cpu_max_pool2d_2x2(const kn_cpu_pool_geometry *g, const float *in, float *out,
                           uint8_t *which);
/* grad_in [planes, H, W] is overwritten (no separate zero fill). */
void kn_cpu_max_pool2d_2x2_backward(const kn_cpu_pool_geometry *g, const float *grad_out,
                                    const uint8_t *which, float *grad_in);
/* One plane of that backward, on the calling thread: grad_out [out_h][out_w] placed where
 * which says into plane [height][width], every other element zero (the fused conv's
 * pooled output gradient, unpacked for its backward). */
void kn_cpu_max_unpool_2x2_plane(const float *grad_out, const uint8_t *which, int64_t out_h,
                                 int64_t out_w, int64_t height, int64_t width, float *plane);
void kn_cpu_avg_pool2d(const kn_cpu_pool_geometry *g, const float *in, float *out);
void kn_cpu_avg_pool2d_backward(const kn_cpu_pool_geometry *g, const float *grad_out,
                                float *grad_in);

#endif

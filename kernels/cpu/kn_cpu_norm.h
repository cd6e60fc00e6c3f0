/*
 * kn_cpu_norm.h — raw CPU kernels for layer norm and batch norm, forward and backward,
 * over contiguous float32 buffers. No tensors, no autograd.
 */
#ifndef KN_CPU_NORM_H
#define KN_CPU_NORM_H

#include <stdbool.h>
#include <stdint.h>

/* x, y [rows, cols]; weight/bias [cols] or NULL; writes mean[rows] and rstd[rows]. */
void kn_cpu_layer_norm_forward(const float *x, const float *weight, const float *bias, float *y,
                               float *mean, float *rstd, int64_t rows, int64_t cols, float eps);
/* dx, dweight, dbias may each be NULL (not wanted); weight may be NULL (ones). The same
 * bits for any thread count. false: out of memory for the per-block sums (nothing
 * useful written). */
bool kn_cpu_layer_norm_backward(const float *dy, const float *x, const float *mean,
                                const float *rstd, const float *weight, float *dx, float *dweight,
                                float *dbias, int64_t rows, int64_t cols);

/* Batch norm views x as [n, c, s]. Per channel: mean and biased variance, in double. */
void kn_cpu_batch_norm_stats(const float *x, int64_t n, int64_t c, int64_t s, double *mean,
                             double *var);
/* Per channel: sum_dy = sum(dy), sum_dyx = sum(dy * (x - mean)), in double. */
void kn_cpu_batch_norm_grad_sums(const float *dy, const float *x, const float *mean, int64_t n,
                                 int64_t c, int64_t s, double *sum_dy, double *sum_dyx);
/* out = p[ch] * u + q[ch] * (v - center[ch]) + r[ch] per element of channel ch; either u
 * (with p) or v (with q, center) may be NULL. Centering before scaling keeps data far
 * from zero exact. */
void kn_cpu_batch_norm_affine(const float *u, const float *v, const float *p, const float *q,
                              const float *center, const float *r, float *out, int64_t n, int64_t c,
                              int64_t s);

#endif

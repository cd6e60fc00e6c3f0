/*
 * kn_cpu_reduce.h — reduction and softmax kernels over raw float32 buffers.
 *
 * Every kernel sees its input as a contiguous [outer, reduce, inner] block: element
 * (o, r, i) is at x[(o * reduce + r) * inner + i], and results for (o, i) go to
 * out[o * inner + i]. The op layer (core/ops/ops_reduce.c, core/ops/ops_softmax.c) arranges
 * tensors into that form. All kernels split large work over the thread pool and give
 * the same bits whatever the thread count.
 */
#ifndef KN_CPU_REDUCE_H
#define KN_CPU_REDUCE_H

#include <stdbool.h>
#include <stdint.h>

/* out = sum over r / divisor (divisor 1 for a sum, n for a mean). Blocks of float
 * lanes feed a double total, so 1e6-element sums keep ~1e-7 relative accuracy. */
void kn_cpu_sum(const float *x, float *out, int64_t outer, int64_t reduce, int64_t inner,
                double divisor);
/* out = sum over r of (x - mean)^2 / divisor (two passes, double totals). */
void kn_cpu_var(const float *x, float *out, int64_t outer, int64_t reduce, int64_t inner,
                double divisor);
/* Max (or min) over r, NaN winning, first occurrence on ties; values and/or indices
 * may be NULL. reduce must be > 0. */
void kn_cpu_max(const float *x, float *values, int64_t *indices, int64_t outer, int64_t reduce,
                int64_t inner, bool is_min);
/* y = softmax (or log_softmax) of x over the reduce axis; y has x's layout. */
void kn_cpu_softmax(const float *x, float *y, int64_t outer, int64_t dim, int64_t inner, bool log);
/* gx from grad g and the forward output y:
 *   softmax:     gx = y * (g - sum(g * y))
 *   log_softmax: gx = g - exp(y) * sum(g)          */
void kn_cpu_softmax_backward(const float *g, const float *y, float *gx, int64_t outer, int64_t dim,
                             int64_t inner, bool log);

#endif

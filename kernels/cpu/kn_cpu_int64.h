/*
 * kn_cpu_int64.h — raw CPU kernels over int64 elements: dtype conversion between
 * float32 and int64, and the binary ops torch does in int64 (add, sub, mul, and the
 * comparisons). Buffers are contiguous; the engine makes strided or broadcast operands
 * contiguous first (these ops move indices and masks, never the hot path).
 */
#ifndef KN_CPU_INT64_H
#define KN_CPU_INT64_H

#include <stdint.h>

#include "../kn_ops.h"

/* out[i] = (int64) in[i], truncated toward zero; NaN gives INT64_MIN and values beyond
 * int64's range saturate (what x86 gives torch, without C's undefined behaviour). */
void kn_cpu_f32_to_i64(int64_t n, int64_t *out, const float *in);
/* out[i] = (float) in[i], rounded to nearest. */
void kn_cpu_i64_to_f32(int64_t n, float *out, const int64_t *in);
/* op over n elements of int64 a and b: KN_BINARY_ADD, SUB and MUL write int64 (wrapping
 * on overflow, as torch's); EQ, GT and LT write float32 1 or 0. Other ops: nothing. */
void kn_cpu_binary_i64(kn_binary_op op, int64_t n, void *out, const int64_t *a, const int64_t *b);

#endif

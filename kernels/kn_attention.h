/*
 * kn_attention.h — one scaled-dot-product attention problem as both kernel back ends take
 * it (kernels/cpu/attention.c, kernels/cuda/attention.cu), so the engine describes the op
 * once (core/ops/ops_attention.c) and hands it to either. Plain C, no inline code, so
 * nvcc includes it as it is.
 *
 * For each batch b and head h, with Q [Tq, D], K [Tk, D], V [Tk, Dv] of that (b, h):
 *     out = dropout(softmax(scale * Q K^T + mask)) V          (out [Tq, Dv])
 * computed flash-attention style: a query row block at a time against key blocks, with
 * an online softmax, so no more than one row block of the attention matrix exists at a
 * time. The forward saves the log-sum-exp of each row (lse); the backward recomputes each
 * block's probabilities from it.
 *
 * The mask: key j is hidden from query i when causal and j > i + causal_offset (offset 0
 * is torch's is_causal, the triangle from the top left; a block of queries appended to a
 * key/value cache of n positions has offset n), or when key_padding[b][j] is nonzero. A
 * row that sees no key at all gets a zero output and zero gradients (torch 1.13 gives
 * NaN there), and its lse is +infinity.
 *
 * Dropout on the attention weights draws from a counter-based hash of (seed, b, h, i, j),
 * so the backward regenerates the forward's mask instead of storing it, and both back
 * ends draw the same mask for a seed.
 */
#ifndef KN_ATTENTION_H
#define KN_ATTENTION_H

#include <stdint.h>

/* One of q, k, v, out or their gradients: element (b, h, t, d) is at
 * data[b * batch_stride + h * head_stride + t * row_stride + d] (the last dim has stride
 * 1; the others any, so q, k and v may be views of one packed in_proj output). */
typedef struct kn_attention_operand {
    float *data;
    int64_t batch_stride, head_stride, row_stride;
} kn_attention_operand;

typedef struct kn_attention_problem {
    int64_t batch, heads, q_len, kv_len, head_dim, value_dim;
    float scale;                /* of Q K^T: 1/sqrt(head_dim) unless given */
    int causal;                 /* nonzero: the triangle described above */
    int64_t causal_offset;      /* query i sees keys j <= i + causal_offset */
    const int64_t *key_padding; /* [batch, kv_len]: nonzero = hidden; NULL: none */
    int64_t key_padding_stride; /* between batches (row stride), in elements */
    /* dropout of the weights: a weight is kept when the top 24 bits of
     * KN_ATTENTION_HASH(dropout_seed, ((b * heads + h) * q_len + i) * kv_len + j) are at
     * least dropout_threshold (p * 2^24), and then scaled by dropout_scale (1 / (1 - p));
     * threshold 0: no dropout */
    uint32_t dropout_threshold;
    float dropout_scale;
    uint64_t dropout_seed;
    kn_attention_operand q, k, v, out;
    /* [batch, heads, q_len] contiguous: written by the forward, read by the backward */
    float *lse;
    /* backward only: the gradient of out (in), of q, k, v (written, never accumulated;
     * NULL data: not wanted) */
    kn_attention_operand grad_out, grad_q, grad_k, grad_v;
} kn_attention_problem;

/* splitmix64's finaliser of seed + index * 0x9E3779B97F4A7C15: the dropout hash both
 * back ends use (an expression, so nvcc and the C compiler see the same code). */
#define KN__ATTENTION_MIX0(s, i) ((uint64_t)(s) + (uint64_t)(i)*0x9E3779B97F4A7C15ULL)
#define KN__ATTENTION_MIX1(z) (((z) ^ ((z) >> 30)) * 0xBF58476D1CE4E5B9ULL)
#define KN__ATTENTION_MIX2(z) (((z) ^ ((z) >> 27)) * 0x94D049BB133111EBULL)
#define KN__ATTENTION_MIX3(z) ((z) ^ ((z) >> 31))
#define KN_ATTENTION_HASH(seed, index)                                                             \
    KN__ATTENTION_MIX3(KN__ATTENTION_MIX2(KN__ATTENTION_MIX1(KN__ATTENTION_MIX0(seed, index))))

#endif

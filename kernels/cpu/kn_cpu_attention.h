/*
 * kn_cpu_attention.h — the fused scaled-dot-product attention on the CPU (attention.c):
 * forward and backward of one kn_attention_problem (../kn_attention.h), blocked
 * flash-attention style, parallel over the engine's pool.
 */
#ifndef KN_CPU_ATTENTION_H
#define KN_CPU_ATTENTION_H

#include "../kn_attention.h"

#include <stdbool.h>

/* Writes p->out and p->lse. Parallel over (batch, head, query block). false when scratch
 * memory could not be had (the outputs are then not written). */
bool kn_cpu_attention_forward(const kn_attention_problem *p);
/* Writes p->grad_q, grad_k, grad_v (those whose data is not NULL) from p->grad_out, the
 * inputs, p->out and p->lse of the forward. Parallel over (batch, head) or, when there
 * are few of those and long sequences, over key blocks then query blocks; the results
 * are the same bits either way and for any number of threads. false when scratch memory
 * could not be had. */
bool kn_cpu_attention_backward(const kn_attention_problem *p);

#endif

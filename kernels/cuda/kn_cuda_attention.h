/*
 * kn_cuda_attention.h — the CUDA module's attention table, kn_cuda_attention_v1: the fused
 * scaled-dot-product attention forward and backward of ../kn_attention.h, with the CPU
 * kernel's semantics (kernels/cpu/attention.c): the same mask rules, the same dropout
 * hash (so a seed drops the same weights on either device), the lse saved by the forward
 * and read by the backward. core/tensor/device.c resolves it next to kn_cuda_backend_v1;
 * core/kn_cuda.h hands it to core/ops/ops_attention.c.
 *
 * As in kn_cuda_backend.h: the problem struct is on the host, the pointers in it are
 * device pointers, work runs on the device's stream, and every function returns NULL or a
 * message naming the op (one starting with "out of memory" when scratch memory could not
 * be had).
 */
#ifndef KN_CUDA_ATTENTION_H
#define KN_CUDA_ATTENTION_H

#include <stddef.h>

#include "../kn_attention.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_ATTENTION_ABI 1
#define KN_CUDA_ATTENTION_SYMBOL "kn_cuda_attention_v1"
/* The largest head_dim and value_dim the CUDA kernels take (a row lives in registers). */
#define KN_CUDA_ATTENTION_MAX_DIM 256

typedef struct kn_cuda_attention {
    int abi;     /* KN_CUDA_ATTENTION_ABI */
    size_t size; /* sizeof(kn_cuda_attention) as the module was built */

    /* kn_cpu_attention_forward: writes p->out and p->lse. */
    const char *(*forward)(int device, const kn_attention_problem *p);
    /* kn_cpu_attention_backward: writes p->grad_q, grad_k, grad_v (those not NULL). */
    const char *(*backward)(int device, const kn_attention_problem *p);
} kn_cuda_attention;

typedef const kn_cuda_attention *(*kn_cuda_attention_fn)(void);

const kn_cuda_attention *kn_cuda_attention_v1(void);

#ifdef __cplusplus
}
#endif
#endif

/*
 * optim_kernels.h — the fused per-parameter update loops behind kn_optimizer_step
 * (engine-internal; optim.c fills the arguments, optim_kernels.c runs them).
 */
#ifndef KN_OPTIM_KERNELS_H
#define KN_OPTIM_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

/* One parameter's contiguous float32 buffers (state pointers the optimizer does not use
 * are NULL) and the optimizer's scalars as torch holds them (Python floats). */
typedef struct kn__optim_args {
    float *param;
    const float *grad;
    float *buf; /* momentum_buffer (SGD, RMSprop) */
    float *exp_avg, *exp_avg_sq, *max_exp_avg_sq;
    float *square_avg, *grad_avg;
    double lr, weight_decay, momentum, dampening, beta1, beta2, eps, alpha;
    int64_t step;   /* this parameter's step count, including the current one (Adam) */
    bool first;     /* SGD: the momentum buffer is created by this step */
    bool nesterov;  /* SGD */
    bool decoupled; /* AdamW */
} kn__optim_args;

void kn__optim_sgd(const kn__optim_args *a, int64_t n);
void kn__optim_adam(const kn__optim_args *a, int64_t n); /* Adam and AdamW */
void kn__optim_rmsprop(const kn__optim_args *a, int64_t n);

#endif

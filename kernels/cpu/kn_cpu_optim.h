/*
 * kn_cpu_optim.h — the fused per-parameter update loops behind kn_optimizer_step:
 * core/optim/optim.c fills the arguments, kernels/cpu/optim.c runs them on the CPU and
 * the CUDA module's optim.cu on the GPU (kn_cuda_train.h takes the same struct).
 */
#ifndef KN_CPU_OPTIM_H
#define KN_CPU_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

/* One parameter's contiguous float32 buffers (state pointers the optimizer does not use
 * are NULL) and the optimizer's scalars as torch holds them (Python floats). */
typedef struct kn_cpu_optim_args {
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
} kn_cpu_optim_args;

void kn_cpu_optim_sgd(const kn_cpu_optim_args *a, int64_t n);
void kn_cpu_optim_adam(const kn_cpu_optim_args *a, int64_t n); /* Adam and AdamW */
void kn_cpu_optim_rmsprop(const kn_cpu_optim_args *a, int64_t n);

#endif

/*
 * kn_cuda_rnn.h — the CUDA module's table of recurrent-layer kernels, kn_cuda_rnn_v1:
 * one LSTM or GRU time step forward and backward (the fused gate math of
 * kernels/cpu/kn_cpu_rnn.h, taking the same structs with device pointers), and the
 * column sums that give the bias gradients. core/tensor/device.c resolves it with the
 * other tables; core/kn_cuda.h hands it to core/ops/ops_rnn.c, which issues the GEMMs
 * around each step through the backend's sgemm.
 *
 * As in kn_cuda_backend.h, work runs on the device's stream and nothing here waits for
 * it; every function returns NULL or a message naming the op.
 */
#ifndef KN_CUDA_RNN_H
#define KN_CUDA_RNN_H

#include <stddef.h>
#include <stdint.h>

#include "../cpu/kn_cpu_rnn.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_RNN_ABI 1
#define KN_CUDA_RNN_SYMBOL "kn_cuda_rnn_v1"

typedef struct kn_cuda_rnn {
    int abi;     /* KN_CUDA_RNN_ABI */
    size_t size; /* sizeof(kn_cuda_rnn) as the module was built */

    /* kn_cpu_rnn_step_forward / _backward on the device (the struct on the host, its
     * pointers on the device). */
    const char *(*step_forward)(int device, kn_rnn_mode mode, const kn_cpu_rnn_step *s);
    const char *(*step_backward)(int device, kn_rnn_mode mode, const kn_cpu_rnn_grad_step *s);
    /* out[j] = sum over i < rows of x[i * ld + j], j < cols (overwritten). */
    const char *(*sum_rows)(int device, const float *x, int64_t rows, int64_t cols, int64_t ld,
                            float *out);
} kn_cuda_rnn;

typedef const kn_cuda_rnn *(*kn_cuda_rnn_fn)(void);

const kn_cuda_rnn *kn_cuda_rnn_v1(void);

#ifdef __cplusplus
}
#endif
#endif

/*
 * kn_cuda_conv.h — the CUDA module's second table, kn_cuda_conv_v1: the kernels of
 * convolution (im2col / col2im; the GEMMs go through kn_cuda_backend's sgemm), 2-D max,
 * average and adaptive average pooling, where, and the indexed copies (index_select,
 * index_add, gather, scatter_add). Same contract as kn_cuda_backend.h: device pointers,
 * work in order on the device's stream, NULL on success or a message naming the op.
 * The semantics are those of the CPU kernels of the same name (kernels/cpu); indices
 * must already be checked to be in range.
 */
#ifndef KN_CUDA_CONV_H
#define KN_CUDA_CONV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../cpu/kn_cpu_linalg.h"
#include "../kn_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_CONV_ABI 1
#define KN_CUDA_CONV_SYMBOL "kn_cuda_conv_v1"

typedef struct kn_cuda_conv_backend {
    int abi;     /* KN_CUDA_CONV_ABI */
    size_t size; /* sizeof(kn_cuda_conv_backend) as the module was built */

    /* kn_cpu_im2col / kn_cpu_col2im (col2im overwrites images). */
    const char *(*im2col)(int device, const kn_cpu_conv_geometry *g, const float *images,
                          int64_t count, float *col, int64_t ld);
    const char *(*col2im)(int device, const kn_cpu_conv_geometry *g, const float *col, int64_t ld,
                          int64_t count, float *images);

    /* kn_cpu_max_pool2d (int64 indices h*W + w, first max on ties, NaN propagates) and
     * the pooling backwards (grad_in overwritten). */
    const char *(*max_pool2d)(int device, const kn_cpu_pool_geometry *g, const float *in,
                              float *out, int64_t *indices);
    const char *(*max_pool2d_backward)(int device, const kn_cpu_pool_geometry *g,
                                       const float *grad_out, const int64_t *indices,
                                       float *grad_in);
    const char *(*avg_pool2d)(int device, const kn_cpu_pool_geometry *g, const float *in,
                              float *out);
    const char *(*avg_pool2d_backward)(int device, const kn_cpu_pool_geometry *g,
                                       const float *grad_out, float *grad_in);
    /* [planes, h, w] -> [planes, oh, ow] with PyTorch's start/end rule. */
    const char *(*adaptive_avg_pool2d)(int device, int64_t planes, int64_t h, int64_t w, int64_t oh,
                                       int64_t ow, const float *in, float *out);
    const char *(*adaptive_avg_pool2d_backward)(int device, int64_t planes, int64_t h, int64_t w,
                                                int64_t oh, int64_t ow, const float *grad_out,
                                                float *grad_in);

    /* kn_cpu_where: cond is float32 or int64 (nonzero takes a). */
    const char *(*where)(int device, const int64_t *shape, int ndim, kn_cpu_operand out,
                         kn_cpu_operand cond, bool cond_is_int64, kn_cpu_operand a,
                         kn_cpu_operand b);

    /* kn_cpu_index_select / kn_cpu_index_add / kn_cpu_gather / kn_cpu_scatter_add;
     * shape, in_strides and grad_strides are host arrays. */
    const char *(*index_select)(int device, size_t elem_size, void *out, const void *in,
                                const int64_t *index, int64_t n, int64_t outer, int64_t in_size,
                                int64_t inner);
    const char *(*index_add)(int device, float *grad_in, const float *grad_out,
                             const int64_t *index, int64_t n, int64_t outer, int64_t in_size,
                             int64_t inner);
    const char *(*gather)(int device, size_t elem_size, const int64_t *shape, int ndim, int dim,
                          void *out, const void *in, const int64_t *in_strides,
                          const int64_t *index);
    const char *(*scatter_add)(int device, const int64_t *shape, int ndim, int dim, float *grad_in,
                               const int64_t *in_strides, const float *grad_out,
                               const int64_t *grad_strides, const int64_t *index);
} kn_cuda_conv_backend;

typedef const kn_cuda_conv_backend *(*kn_cuda_conv_backend_fn)(void);

const kn_cuda_conv_backend *kn_cuda_conv_v1(void);

#ifdef __cplusplus
}
#endif
#endif

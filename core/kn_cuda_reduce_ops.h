/*
 * kn_cuda_reduce_ops.h — how the reduction, softmax and loss ops reach the CUDA
 * module's kn_cuda_reduce table (kernels/cuda/kn_cuda_reduce.h), resolved in device.c.
 */
#ifndef KN_CUDA_REDUCE_OPS_H
#define KN_CUDA_REDUCE_OPS_H

#include "kn_internal.h"
#include "kn_cuda_reduce.h"

/* The table for device (a CUDA device), or NULL with the error set naming op. */
const kn_cuda_reduce *kn__cuda_reduce(kn_device device, const char *op);
/* A module message as the engine's error (KN_ERR_MEMORY for out of memory); KN_OK for NULL. */
kn_status kn__cuda_error(const char *message);

#endif

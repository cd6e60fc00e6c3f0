/*
 * kn_cuda_train_core.h — engine-internal access to the CUDA module's training table
 * (kernels/cuda/kn_cuda_train.h): norms, optimizer steps, clipping reductions.
 * Implemented in ops_norm.c; the table is resolved by core/device.c.
 */
#ifndef KN_CUDA_TRAIN_CORE_H
#define KN_CUDA_TRAIN_CORE_H

#include "kn_internal.h"
#include "kn_cuda_train.h"

/* The training kernels for device (a CUDA device), or NULL with the error set naming op
 * (device not available, or a module without the table). */
const kn_cuda_train *kn__cuda_train(kn_device device, const char *op);
/* A module message as the engine's error (set): KN_OK for NULL, KN_ERR_MEMORY for a
 * message starting with "out of memory", else KN_ERR_DEVICE. */
kn_status kn__cuda_status(const char *message);
/* A float32 vector for the module: data pointer and stride of dim 0 (NULL-safe). */
kn_cuda_fvec kn__cuda_fvec(kn_tensor *t);

#endif

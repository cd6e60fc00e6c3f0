/*
 * kn_cuda_conv_ops.h — how the convolution, pooling, where and indexing ops reach the
 * CUDA module's kn_cuda_conv_v1 table (kernels/cuda/kn_cuda_conv.h): device.c resolves
 * it when it loads the module; these helpers hand it out for a CUDA device (or set the
 * error naming the op) and turn a module message into the engine's error.
 */
#ifndef KN_CUDA_CONV_OPS_H
#define KN_CUDA_CONV_OPS_H

#include "kn_internal.h"
#include "kn_cuda_conv.h"

#include <string.h>

extern const void *kn__cuda_conv_table; /* device.c */

/* The table for device (a CUDA device the op's inputs were checked to be on), or NULL
 * with the error set. */
static inline const kn_cuda_conv_backend *kn__conv_backend(kn_device device, const char *op)
{
    if (!kn_device_available(device)) {
        char name[32];
        kn__error(KN_ERR_DEVICE, "%s: device %s is not available (%s)", op,
                  kn_device_str(device, name, sizeof name), kn_cuda_status());
        return NULL;
    }
    const kn_cuda_conv_backend *b = kn__cuda_conv_table;
    if (!b || b->abi != KN_CUDA_CONV_ABI || b->size != sizeof(kn_cuda_conv_backend)) {
        kn__error(KN_ERR_DEVICE, "%s: the CUDA module is from another build (%s)", op,
                  b ? "its kn_cuda_conv_v1 table has another version"
                    : "it has no kn_cuda_conv_v1 table");
        return NULL;
    }
    return b;
}

/* A module message as the engine's error: out of memory as KN_ERR_MEMORY. */
static inline kn_status kn__conv_status(const char *message)
{
    if (!message) return KN_OK;
    kn_status status = strncmp(message, "out of memory", 13) == 0 ? KN_ERR_MEMORY : KN_ERR_DEVICE;
    return kn__error(status, "%s", message);
}

#endif

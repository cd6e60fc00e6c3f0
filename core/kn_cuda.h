/*
 * kn_cuda.h — the engine's one door to the CUDA module (engine-internal). The module
 * (kernels/cuda, libkiln_cuda.so, loaded by tensor/device.c with dlopen) exports a table
 * of typed function pointers per area; device.c resolves every table when it loads the
 * module and checks each against this build's version, so a module from another build
 * means "cuda is not available" (with the reason) instead of a crash in some op later.
 *
 * An op on a CUDA tensor asks kn__cuda(device, op) for the tables, or one of the
 * shorthands below for the table it needs; NULL comes with the error set and naming the
 * op ("conv2d: device cuda:0 is not available (...)"). Every module function returns
 * NULL or a message: kn__cuda_error turns that message into the engine's error.
 */
#ifndef KN_CUDA_H
#define KN_CUDA_H

#include "kn_internal.h"

#include "../kernels/cuda/kn_cuda_backend.h"
#include "../kernels/cuda/kn_cuda_blaslt.h"
#include "../kernels/cuda/kn_cuda_conv.h"
#include "../kernels/cuda/kn_cuda_host.h"
#include "../kernels/cuda/kn_cuda_reduce.h"
#include "../kernels/cuda/kn_cuda_train.h"
/* ---- attention (issue 12) ---- */
#include "../kernels/cuda/kn_cuda_attention.h"
/* ---- sequence layers (issue 12) ---- */
#include "../kernels/cuda/kn_cuda_int64.h"

/* The loaded module: every table present and of this build's version. */
typedef struct kn__cuda_module {
    const kn_cuda_backend *backend;   /* devices, memory, copies, elementwise, sgemm */
    const kn_cuda_reduce *reduce;     /* reductions, softmax, losses */
    const kn_cuda_conv_backend *conv; /* im2col, pooling, where, indexed copies */
    const kn_cuda_train *train;       /* norms, optimizer steps, clipping */
    const kn_cuda_blaslt *blaslt;     /* cublasLt products with a fused bias */
    const kn_cuda_host *host;         /* pinned memory, events, graphs */
    /* ---- attention (issue 12) ---- */
    const kn_cuda_attention *attention; /* fused scaled-dot-product attention */
    /* ---- sequence layers (issue 12) ---- */
    const kn_cuda_int64 *int64; /* dtype conversion, int64 arithmetic and comparisons */
} kn__cuda_module;

/* The module for device (an available CUDA device), or NULL with the error set naming
 * op. The module stays loaded for the life of the process. */
const kn__cuda_module *kn__cuda(kn_device device, const char *op);

/* One table of kn__cuda(device, op), NULL-safe. */
static inline const kn_cuda_reduce *kn__cuda_reduce(kn_device device, const char *op)
{
    const kn__cuda_module *m = kn__cuda(device, op);
    return m ? m->reduce : NULL;
}
static inline const kn_cuda_conv_backend *kn__cuda_conv(kn_device device, const char *op)
{
    const kn__cuda_module *m = kn__cuda(device, op);
    return m ? m->conv : NULL;
}
static inline const kn_cuda_train *kn__cuda_train(kn_device device, const char *op)
{
    const kn__cuda_module *m = kn__cuda(device, op);
    return m ? m->train : NULL;
}
static inline const kn_cuda_blaslt *kn__cuda_blaslt(kn_device device, const char *op)
{
    const kn__cuda_module *m = kn__cuda(device, op);
    return m ? m->blaslt : NULL;
}
static inline const kn_cuda_host *kn__cuda_host(kn_device device, const char *op)
{
    const kn__cuda_module *m = kn__cuda(device, op);
    return m ? m->host : NULL;
}

/* ---- attention (issue 12) ---- */
static inline const kn_cuda_attention *kn__cuda_attention(kn_device device, const char *op)
{
    const kn__cuda_module *m = kn__cuda(device, op);
    return m ? m->attention : NULL;
}

/* ---- sequence layers (issue 12) ---- */
static inline const kn_cuda_int64 *kn__cuda_int64(kn_device device, const char *op)
{
    const kn__cuda_module *m = kn__cuda(device, op);
    return m ? m->int64 : NULL;
}

/* A module message as the engine's error (set): KN_OK for NULL, KN_ERR_MEMORY for a
 * message starting with "out of memory", else KN_ERR_DEVICE. */
kn_status kn__cuda_error(const char *message);

/* Set by the trainer (train/train_cuda.c) around a capture on this thread. While it is
 * set, whatever would wait for the device or read device memory on the host refuses with
 * an error naming the op (kn_to between the cpu and cuda, reading a CUDA tensor on the
 * host, synchronize), so the capture fails cleanly instead of recording a host address
 * or a wait; and class-index losses trust their targets (the trainer checked them on the
 * host, see ops/ops_loss.c). */
void kn__cuda_capture_mark(bool capturing);
bool kn__cuda_capturing(void);

#endif

/*
 * kn_cuda_host_core.h — engine-internal access to the CUDA module's host table
 * (kernels/cuda/kn_cuda_host.h: pinned memory, events, async copies, graphs), and the
 * per-thread mark that a CUDA graph is being captured. Implemented in device.c.
 */
#ifndef KN_CUDA_HOST_CORE_H
#define KN_CUDA_HOST_CORE_H

#include "../kernels/cuda/kn_cuda_host.h"
#include "kn_internal.h"

/* The host table for device (a CUDA device), or NULL with the error set naming op
 * (device not available, or a module without the table). */
const kn_cuda_host *kn__cuda_host(kn_device device, const char *op);

/* Set by the trainer (train_cuda.c) around a capture on this thread. While it is set,
 * whatever would wait for the device or read device memory on the host refuses with an
 * error naming the op (kn_to between the cpu and cuda, reading a CUDA tensor on the
 * host, synchronize), so the capture fails cleanly instead of recording a host address
 * or a wait; and class-index losses trust their targets (the trainer checked them on the
 * host, see ops_loss.c). */
void kn__cuda_capture_mark(bool capturing);
bool kn__cuda_capturing(void);

#endif

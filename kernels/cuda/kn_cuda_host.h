/*
 * kn_cuda_host.h — the CUDA module's host-side table, kn_cuda_host_v1: page-locked
 * ("pinned") host memory, events on a device's stream, copies that do not wait, and CUDA
 * graphs (capture of the device's stream into a graph with its own memory pool, replay).
 * core/tensor/device.c resolves it next to kn_cuda_backend_v1; core/train/train_cuda.c
 * uses it for the trainer's staging buffers and captured training steps.
 *
 * As in kn_cuda_backend.h: pointers are device pointers unless named host, work runs in
 * order on the device's one stream, and every function that can fail returns NULL or a
 * message naming the operation and the CUDA error (thread-local, valid until the next
 * call on the same thread). Events, graphs and pools are opaque handles.
 *
 * Graph memory. While a thread captures into a pool, every allocation of that thread on
 * that device (the engine's tensors and the module's own scratch) comes from the pool,
 * and every block freed during the capture joins it. A pool's blocks go back to the
 * caching allocator only when the pool is freed: between replays nobody else can be
 * handed memory the graph writes (graph.cu says why in full).
 */
#ifndef KN_CUDA_HOST_H
#define KN_CUDA_HOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_HOST_ABI 1
#define KN_CUDA_HOST_SYMBOL "kn_cuda_host_v1"

typedef struct kn_cuda_host {
    int abi;     /* KN_CUDA_HOST_ABI */
    size_t size; /* sizeof(kn_cuda_host) as the module was built */

    /* ---- page-locked host memory (cudaHostAlloc); host_free is NULL-safe ---- */
    const char *(*host_alloc)(size_t nbytes, void **host_out);
    void (*host_free)(void *host_ptr);

    /* ---- events (timing disabled) on the device's stream ---- */
    const char *(*event_new)(int device, void **out);
    void (*event_free)(void *event); /* NULL-safe */
    /* Marks the point of the device's stream that all work queued so far reaches. */
    const char *(*event_record)(int device, void *event);
    /* The host waits until the work before the event's last record has run (at once for
     * an event never recorded). */
    const char *(*event_wait)(void *event);

    /* ---- copies that return at once, on the device's stream. The host memory must be
     * page-locked and left alone until an event recorded after the copy has passed. ---- */
    const char *(*copy_h2d_async)(int device, void *dst, const void *host_src, size_t nbytes);
    const char *(*copy_d2h_async)(int device, void *host_dst, const void *src, size_t nbytes);

    /* ---- graph memory pools ---- */
    const char *(*pool_new)(int device, void **out);
    /* Free blocks back to the caching allocator; blocks still held by tensors become
     * ordinary blocks (their free returns them to the cache). Call after graph_free and
     * after the stream has finished every replay (the caller synchronizes). NULL-safe. */
    void (*pool_free)(void *pool);
    /* How many blocks and bytes the pool holds (in use and free). */
    void (*pool_stats)(void *pool, size_t *blocks, size_t *bytes);

    /* ---- capture and replay ---- */
    /* Starts capturing the device's stream (cudaStreamCaptureModeThreadLocal) with pool
     * serving this thread's allocations on that device. Other threads that use the device
     * meanwhile wait until the capture ends, so their work is not recorded. */
    const char *(*capture_begin)(int device, void *pool);
    /* Ends the capture (always, also after a failure on the way) and instantiates the
     * graph into *exec; on failure *exec is NULL and the message says why. */
    const char *(*capture_end)(int device, void **exec);
    /* Queues one replay on the device's stream. */
    const char *(*graph_launch)(int device, void *exec);
    void (*graph_free)(void *exec); /* NULL-safe */
} kn_cuda_host;

typedef const kn_cuda_host *(*kn_cuda_host_fn)(void);

const kn_cuda_host *kn_cuda_host_v1(void);

#ifdef __cplusplus
}
#endif
#endif

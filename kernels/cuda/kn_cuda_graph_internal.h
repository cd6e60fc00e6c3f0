/*
 * kn_cuda_graph_internal.h — how runtime.cu's stream hand-out and caching allocator
 * defer to graph capture (graph.cu): a thread that captures gets its graph's own stream
 * and cuBLAS handle, and allocates from its graph's memory pool.
 */
#ifndef KN_CUDA_GRAPH_INTERNAL_H
#define KN_CUDA_GRAPH_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdbool.h>
#include <stddef.h>

/* ---- runtime.cu: the caching allocator itself ---- */
/* nbytes rounded up to its size class (what a block of that class holds). */
size_t kn_cuda_round_size(size_t nbytes);
const char *kn_cuda_cache_alloc(int device, size_t nbytes, void **out);
void kn_cuda_cache_free(int device, void *ptr, size_t nbytes);

/* ---- graph.cu ---- */
/* When this thread is capturing on device: *stream and *blas (either may be NULL)
 * become the capture's own. */
void kn_cuda_capture_redirect(int device, cudaStream_t *stream, cublasHandle_t *blas);
/* Whether this thread is capturing on device (its allocations come from the pool). */
bool kn_cuda_pool_capturing(int device);
const char *kn_cuda_pool_alloc(int device, size_t nbytes, void **out);
/* true when ptr now belongs to a pool (it was one's, or it is freed during a capture
 * on this thread): the cache must not take it. */
bool kn_cuda_pool_give(int device, void *ptr, size_t nbytes);

/* graph.cu's entries of the host table (kn_cuda_host.h documents them). */
const char *kn_cuda_pool_new(int device, void **out);
void kn_cuda_pool_free(void *pool);
void kn_cuda_pool_stats(void *pool, size_t *blocks, size_t *bytes);
const char *kn_cuda_capture_begin(int device, void *pool);
const char *kn_cuda_capture_end(int device, void **exec);
const char *kn_cuda_graph_launch(int device, void *exec);
void kn_cuda_graph_free(void *exec);

#endif

/*
 * graph.cu — CUDA graphs for the host table (kn_cuda_host.h): memory pools that own a
 * graph's device memory, capture of one thread's work on a device into a graph, and
 * replay on the device's stream.
 *
 * Capture runs on the pool's own stream and cuBLAS handle, not the device's: while a
 * thread captures, kn_cuda_enter hands that thread the pool's stream and handle, so other
 * threads that use the same device (two kilnd workers may share a GPU) keep queueing on
 * the device's stream and none of their work is recorded into this graph. The mode is
 * cudaStreamCaptureModeThreadLocal: a call of the capturing thread that could wait for
 * the device (a synchronize, a copy to pageable memory, cudaMalloc, cudaFree) fails the
 * capture, which the caller reports and answers by running eagerly; other threads' calls
 * are not refused (the global mode would make another worker's cudaMalloc fail).
 * Replays are launched on the device's stream, so they run in order with the eager work
 * around them.
 *
 * Why a graph's memory stays its own. A replay writes exactly the addresses that the
 * captured kernels were given, at every replay, for as long as the graph exists. So:
 *  - every allocation the capturing thread makes on the device during the capture (the
 *    engine's tensors and the module's scratch, both through backend_alloc) is served by
 *    the pool: a free block of the pool of the same size class, else a block taken from
 *    the caching allocator that from then on belongs to the pool;
 *  - every block that is freed while it belongs to a pool goes back to the pool, during
 *    the capture or after it (the intermediates of the captured step are freed after
 *    the capture ends, by the scope that made them), and the pool hands blocks out only
 *    to a capture into it. The cache never sees them again until pool_free;
 *  - a block allocated before the capture and freed during it is adopted by the pool:
 *    the graph may have read it, and once the cache handed it to someone else a replay
 *    would read (or write) their data.
 * Reuse inside the pool during the capture is what the eager step does, in the same
 * order: a capture on one stream records a chain in stream order, so a block freed by
 * one captured kernel and handed to a later one is used in the same order at replay.
 * Blocks still held by tensors after the capture (the gradients, the loss) stay the
 * pool's while those tensors live; the graph rewrites them at every replay before it
 * reads them. pool_free gives the free blocks back to the cache and forgets the held
 * ones, whose owners free them to the cache later.
 *
 * A cache miss during the capture calls cudaMalloc, which the thread-local mode refuses:
 * the pool switches this thread to relaxed mode around that one call (the block is the
 * pool's, and its address is fixed before the graph exists).
 */
#include "kn_cuda_graph_internal.h"
#include "kn_cuda_host.h"
#include "kn_cuda_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cuBLAS's recommended workspace on Hopper; set explicitly so that cuBLAS never
 * allocates one while the stream is being captured. */
#define WORKSPACE_BYTES ((size_t)32 << 20)

typedef struct pool_block {
    void *ptr;
    size_t rounded; /* the size class's bytes, as the cache counts them */
    bool in_use;
} pool_block;

typedef struct graph_pool {
    int device;
    cudaStream_t stream; /* captures record on it; never runs work itself */
    cublasHandle_t blas; /* bound to stream, with its own workspace */
    void *workspace;
    pool_block *blocks; /* sorted by ptr */
    size_t count, capacity, bytes;
    bool lost_block; /* a block could not be recorded (out of host memory) */
    struct graph_pool *next;
} graph_pool;

/* The live pools; the lock also guards every pool's block array, which frees on any
 * thread may touch. live_pools lets a free skip the lock when there is no pool. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static graph_pool *registry;
static int live_pools;
static __thread graph_pool *capturing; /* the pool this thread captures into */

/* ---- a pool's blocks (registry_lock held) ------------------------------------------- */

/* The index of ptr, or of where it would go, in p->blocks. */
static size_t block_search(const graph_pool *p, const void *ptr, bool *found)
{
    size_t lo = 0, hi = p->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((const char *)p->blocks[mid].ptr < (const char *)ptr)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < p->count && p->blocks[lo].ptr == ptr;
    return lo;
}

static bool block_insert(graph_pool *p, void *ptr, size_t rounded, bool in_use)
{
    bool found;
    size_t at = block_search(p, ptr, &found);
    if (found) { /* cannot happen: a block is in one place at a time */
        p->blocks[at].in_use = in_use;
        return true;
    }
    if (p->count == p->capacity) {
        size_t capacity = p->capacity ? 2 * p->capacity : 64;
        pool_block *grown = (pool_block *)realloc(p->blocks, capacity * sizeof *grown);
        if (!grown) return false;
        p->blocks = grown;
        p->capacity = capacity;
    }
    memmove(p->blocks + at + 1, p->blocks + at, (p->count - at) * sizeof *p->blocks);
    p->blocks[at] = (pool_block){ptr, rounded, in_use};
    p->count++;
    p->bytes += rounded;
    return true;
}

/* ---- hooks of runtime.cu ---------------------------------------------------------------- */

void kn_cuda_capture_redirect(int device, cudaStream_t *stream, cublasHandle_t *blas)
{
    graph_pool *p = capturing;
    if (!p || p->device != device) return;
    if (stream) *stream = p->stream;
    if (blas) *blas = p->blas;
}

bool kn_cuda_pool_capturing(int device)
{
    return capturing && capturing->device == device;
}

const char *kn_cuda_pool_alloc(int device, size_t nbytes, void **out)
{
    *out = NULL;
    graph_pool *p = capturing;
    size_t rounded = kn_cuda_round_size(nbytes);
    if (rounded < nbytes)
        return kn_cuda_fail("out of memory: %zu bytes is more than a CUDA allocation can hold",
                            nbytes);
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < p->count; i++) {
        if (!p->blocks[i].in_use && p->blocks[i].rounded == rounded) {
            p->blocks[i].in_use = true;
            *out = p->blocks[i].ptr;
            pthread_mutex_unlock(&registry_lock);
            return NULL;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    /* From the cache; on a miss cudaMalloc, which only the relaxed mode allows now. */
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    const char *error = kn_cuda_check(cudaThreadExchangeStreamCaptureMode(&mode), "alloc");
    if (error) return error;
    error = kn_cuda_cache_alloc(device, rounded, out);
    cudaStreamCaptureMode back = mode;
    const char *restore = kn_cuda_check(cudaThreadExchangeStreamCaptureMode(&back), "alloc");
    if (!error && restore) error = restore;
    if (error) {
        if (*out) kn_cuda_cache_free(device, *out, rounded);
        *out = NULL;
        return error;
    }
    pthread_mutex_lock(&registry_lock);
    bool recorded = block_insert(p, *out, rounded, true);
    pthread_mutex_unlock(&registry_lock);
    if (!recorded) {
        kn_cuda_cache_free(device, *out, rounded);
        *out = NULL;
        return kn_cuda_fail("out of memory: alloc: no host memory to record a graph's block");
    }
    return NULL;
}

bool kn_cuda_pool_give(int device, void *ptr, size_t nbytes)
{
    if (__atomic_load_n(&live_pools, __ATOMIC_ACQUIRE) == 0) return false;
    bool taken = false;
    pthread_mutex_lock(&registry_lock);
    for (graph_pool *p = registry; p && !taken; p = p->next) {
        if (p->device != device) continue;
        bool found;
        size_t at = block_search(p, ptr, &found);
        if (found) {
            p->blocks[at].in_use = false;
            taken = true;
        }
    }
    graph_pool *c = capturing;
    if (!taken && c && c->device == device) {
        taken = block_insert(c, ptr, kn_cuda_round_size(nbytes), false);
        if (!taken) c->lost_block = true; /* capture_end fails the graph */
    }
    pthread_mutex_unlock(&registry_lock);
    return taken;
}

/* ---- pools ------------------------------------------------------------------------------ */

void kn_cuda_pool_free(void *handle)
{
    graph_pool *p = (graph_pool *)handle;
    if (!p) return;
    pthread_mutex_lock(&registry_lock);
    for (graph_pool **link = &registry; *link; link = &(*link)->next) {
        if (*link == p) {
            *link = p->next;
            __atomic_sub_fetch(&live_pools, 1, __ATOMIC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (capturing == p) capturing = NULL;
    for (size_t i = 0; i < p->count; i++)
        if (!p->blocks[i].in_use)
            kn_cuda_cache_free(p->device, p->blocks[i].ptr, p->blocks[i].rounded);
    cudaSetDevice(p->device);
    if (p->blas) cublasDestroy(p->blas);
    if (p->stream) cudaStreamDestroy(p->stream);
    if (p->workspace) cudaFree(p->workspace);
    cudaGetLastError(); /* a failure to release is not the next caller's error */
    free(p->blocks);
    free(p);
}

const char *kn_cuda_pool_new(int device, void **out)
{
    *out = NULL;
    const char *op = "graph pool";
    const char *error = kn_cuda_enter(device, op, NULL, NULL);
    if (error) return error;
    if (capturing) return kn_cuda_fail("%s: this thread is capturing a graph", op);
    graph_pool *p = (graph_pool *)calloc(1, sizeof *p);
    if (!p) return kn_cuda_fail("out of memory: %s: no host memory", op);
    p->device = device;
    error = kn_cuda_check(cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking), op);
    if (!error) error = kn_cuda_check(cudaMalloc(&p->workspace, WORKSPACE_BYTES), op);
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    if (!error && (status = cublasCreate(&p->blas)) == CUBLAS_STATUS_SUCCESS &&
        (status = cublasSetStream(p->blas, p->stream)) == CUBLAS_STATUS_SUCCESS &&
        (status = cublasSetMathMode(p->blas, CUBLAS_DEFAULT_MATH)) == CUBLAS_STATUS_SUCCESS)
        status = cublasSetWorkspace(p->blas, p->workspace, WORKSPACE_BYTES);
    if (!error && status != CUBLAS_STATUS_SUCCESS)
        error =
            kn_cuda_fail("%s: cuBLAS error %s (%d)", op, cublasGetStatusName(status), (int)status);
    if (error) {
        char message[1024];
        snprintf(message, sizeof message, "%s", error); /* pool_free may overwrite it */
        kn_cuda_pool_free(p);
        return kn_cuda_fail("%s", message);
    }
    pthread_mutex_lock(&registry_lock);
    p->next = registry;
    registry = p;
    __atomic_add_fetch(&live_pools, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&registry_lock);
    *out = p;
    return NULL;
}

void kn_cuda_pool_stats(void *handle, size_t *blocks, size_t *bytes)
{
    graph_pool *p = (graph_pool *)handle;
    pthread_mutex_lock(&registry_lock);
    if (blocks) *blocks = p ? p->count : 0;
    if (bytes) *bytes = p ? p->bytes : 0;
    pthread_mutex_unlock(&registry_lock);
}

/* ---- capture and replay ------------------------------------------------------------------- */

const char *kn_cuda_capture_begin(int device, void *handle)
{
    const char *op = "graph capture";
    graph_pool *p = (graph_pool *)handle;
    if (!p || p->device != device) return kn_cuda_fail("%s: the pool is not cuda:%d's", op, device);
    if (capturing) return kn_cuda_fail("%s: this thread is capturing already", op);
    const char *error = kn_cuda_enter(device, op, NULL, NULL);
    if (error) return error;
    p->lost_block = false;
    capturing = p;
    error = kn_cuda_check(cudaStreamBeginCapture(p->stream, cudaStreamCaptureModeThreadLocal), op);
    if (error) capturing = NULL;
    return error;
}

const char *kn_cuda_capture_end(int device, void **exec)
{
    const char *op = "graph capture";
    *exec = NULL;
    graph_pool *p = capturing;
    if (!p || p->device != device)
        return kn_cuda_fail("%s: this thread is not capturing on cuda:%d", op, device);
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamEndCapture(p->stream, &graph);
    capturing = NULL; /* from here the thread's work goes to the device's stream again */
    const char *error = kn_cuda_check(err, op);
    if (!error && !graph) error = kn_cuda_fail("%s: no graph came back", op);
    if (!error && p->lost_block)
        error = kn_cuda_fail("%s: out of host memory recording the graph's blocks", op);
    cudaGraphExec_t instance = NULL;
    if (!error)
        error = kn_cuda_check(cudaGraphInstantiate(&instance, graph, 0), "graph instantiate");
    if (graph) cudaGraphDestroy(graph); /* the instance keeps what it needs */
    if (error) return error;
    *exec = (void *)instance;
    return NULL;
}

const char *kn_cuda_graph_launch(int device, void *exec)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "graph launch", &stream, NULL);
    if (error) return error;
    if (!exec) return kn_cuda_fail("graph launch: no graph");
    return kn_cuda_check(cudaGraphLaunch((cudaGraphExec_t)exec, stream), "graph launch");
}

void kn_cuda_graph_free(void *exec)
{
    if (!exec) return;
    cudaGraphExecDestroy((cudaGraphExec_t)exec);
    cudaGetLastError();
}

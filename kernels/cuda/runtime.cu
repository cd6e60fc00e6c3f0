/*
 * runtime.cu — the CUDA module's runtime: device discovery, per-device streams and
 * cuBLAS handles, the caching device allocator, host/device copies, row-major SGEMM
 * through cuBLAS (fp32, or TF32 when the caller allows it), and the one exported
 * symbol, kn_cuda_backend_v1.
 *
 * The allocator keeps freed blocks in per-device, per-size-class free lists (the
 * classes of core/tensor/alloc.c: 512-byte steps up to 4 KiB, then four classes per power of
 * two), so a training loop that asks for the same sizes every step stops calling
 * cudaMalloc after its first step. When cudaMalloc fails, the cache is returned to
 * CUDA and the allocation tried once more before "out of memory" is reported.
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_graph_internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KN_CUDA_MAX_DEVICES 64

/* ---- errors ------------------------------------------------------------------------- */

static __thread char error_buf[1024];

const char *kn_cuda_fail(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(error_buf, sizeof error_buf, fmt, args);
    va_end(args);
    return error_buf;
}

const char *kn_cuda_check(cudaError_t err, const char *op)
{
    if (err == cudaSuccess) return NULL;
    cudaGetLastError(); /* clear a non-sticky error so later calls are not blamed */
    return kn_cuda_fail("%s: %s: %s", op, cudaGetErrorName(err), cudaGetErrorString(err));
}

static const char *blas_check(cublasStatus_t status, const char *op)
{
    if (status == CUBLAS_STATUS_SUCCESS) return NULL;
    return kn_cuda_fail("%s: cuBLAS error %s (%d)", op, cublasGetStatusName(status), (int)status);
}

/* ---- devices ------------------------------------------------------------------------ */

typedef struct free_block {
    void *ptr;
    struct free_block *next;
} free_block;

#define SMALL_LIMIT 4096
#define SMALL_STEP 512
#define NUM_CLASSES (SMALL_LIMIT / SMALL_STEP + 4 * 52 + 1)

typedef struct device_state {
    pthread_mutex_t lock;
    bool ready;
    cudaStream_t stream;
    cublasHandle_t blas;
    free_block *free_lists[NUM_CLASSES];
    free_block *spare; /* list nodes for reuse */
    kn_cuda_alloc_stats stats;
} device_state;

static device_state devices[KN_CUDA_MAX_DEVICES];
static pthread_once_t devices_once = PTHREAD_ONCE_INIT;
static int device_total = -1;
static char device_count_error[512];

static void init_devices(void)
{
    for (int i = 0; i < KN_CUDA_MAX_DEVICES; i++) pthread_mutex_init(&devices[i].lock, NULL);
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        snprintf(device_count_error, sizeof device_count_error, "cudaGetDeviceCount says %s: %s",
                 cudaGetErrorName(err), cudaGetErrorString(err));
        cudaGetLastError();
        device_total = 0;
        return;
    }
    device_total = count < KN_CUDA_MAX_DEVICES ? count : KN_CUDA_MAX_DEVICES;
}

static const char *backend_device_count(int *count)
{
    pthread_once(&devices_once, init_devices);
    *count = device_total;
    if (device_count_error[0]) return kn_cuda_fail("%s", device_count_error);
    return NULL;
}

static const char *check_device(int device, const char *op)
{
    pthread_once(&devices_once, init_devices);
    if (device < 0 || device >= device_total)
        return kn_cuda_fail("%s: cuda:%d does not exist (%d CUDA device%s)", op, device,
                            device_total, device_total == 1 ? "" : "s");
    return NULL;
}

const char *kn_cuda_enter(int device, const char *op, cudaStream_t *stream, cublasHandle_t *blas)
{
    const char *error = check_device(device, op);
    if (error) return error;
    if ((error = kn_cuda_check(cudaSetDevice(device), op))) return error;
    device_state *d = &devices[device];
    pthread_mutex_lock(&d->lock);
    if (!d->ready) {
        error = kn_cuda_check(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking), op);
        if (!error) {
            error = blas_check(cublasCreate(&d->blas), op);
            if (!error) error = blas_check(cublasSetStream(d->blas, d->stream), op);
            /* fp32 products stay fp32: TF32 is asked for per call (backend_sgemm) */
            if (!error) error = blas_check(cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH), op);
            if (error) {
                if (d->blas) cublasDestroy(d->blas);
                d->blas = NULL;
                cudaStreamDestroy(d->stream);
            }
        }
        d->ready = error == NULL;
    }
    pthread_mutex_unlock(&d->lock);
    if (error) return error;
    if (stream) *stream = d->stream;
    if (blas) *blas = d->blas;
    kn_cuda_capture_redirect(device, stream, blas); /* a capturing thread's own (graph.cu) */
    return NULL;
}

static const char *backend_device_name(int device, char *buf, size_t size)
{
    const char *error = check_device(device, "device_name");
    if (error) return error;
    cudaDeviceProp prop;
    if ((error = kn_cuda_check(cudaGetDeviceProperties(&prop, device), "device_name")))
        return error;
    snprintf(buf, size, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return NULL;
}

static const char *backend_synchronize(int device)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "synchronize", &stream, NULL);
    if (error) return error;
    return kn_cuda_check(cudaStreamSynchronize(stream), "synchronize");
}

/* ---- caching allocator -------------------------------------------------------------- */

static int size_class(size_t nbytes, size_t *rounded)
{
    if (nbytes == 0) nbytes = 1;
    if (nbytes <= SMALL_LIMIT) {
        size_t r = (nbytes + SMALL_STEP - 1) / SMALL_STEP;
        *rounded = r * SMALL_STEP;
        return (int)r - 1;
    }
    int log2 = 63 - __builtin_clzll((unsigned long long)nbytes);
    size_t step = ((size_t)1 << log2) / 4;
    size_t r = (nbytes + step - 1) / step * step;
    *rounded = r;
    if (r == ((size_t)1 << (log2 + 1))) return SMALL_LIMIT / SMALL_STEP + (log2 + 1 - 12) * 4;
    size_t sub = (r - ((size_t)1 << log2)) / step;
    return SMALL_LIMIT / SMALL_STEP + (log2 - 12) * 4 + (int)sub;
}

/* Returns every cached block of d to CUDA; the caller holds d->lock. */
static const char *release_cache(device_state *d, const char *op)
{
    const char *error = NULL;
    if (d->ready) error = kn_cuda_check(cudaStreamSynchronize(d->stream), op);
    for (int i = 0; i < NUM_CLASSES; i++) {
        while (d->free_lists[i]) {
            free_block *b = d->free_lists[i];
            d->free_lists[i] = b->next;
            cudaError_t err = cudaFree(b->ptr);
            if (err != cudaSuccess && !error) error = kn_cuda_check(err, op);
            b->next = d->spare;
            d->spare = b;
        }
    }
    d->stats.bytes_cached = 0;
    return error;
}

size_t kn_cuda_round_size(size_t nbytes)
{
    size_t rounded;
    size_class(nbytes, &rounded);
    return rounded;
}

const char *kn_cuda_cache_alloc(int device, size_t nbytes, void **out)
{
    *out = NULL;
    const char *error = kn_cuda_enter(device, "alloc", NULL, NULL);
    if (error) return error;
    size_t rounded;
    int cls = size_class(nbytes, &rounded);
    if (cls >= NUM_CLASSES || rounded < nbytes)
        return kn_cuda_fail("out of memory: %zu bytes is more than a CUDA allocation can hold",
                            nbytes);
    device_state *d = &devices[device];
    pthread_mutex_lock(&d->lock);
    free_block *b = d->free_lists[cls];
    if (b) {
        d->free_lists[cls] = b->next;
        *out = b->ptr;
        b->next = d->spare;
        d->spare = b;
        d->stats.cache_hits++;
        d->stats.bytes_cached -= rounded;
        d->stats.bytes_in_use += rounded;
        pthread_mutex_unlock(&d->lock);
        return NULL;
    }
    void *ptr = NULL;
    cudaError_t err = cudaMalloc(&ptr, rounded);
    if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        release_cache(d, "alloc");
        err = cudaMalloc(&ptr, rounded);
    }
    if (err != cudaSuccess) {
        cudaGetLastError();
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        cudaGetLastError();
        error = kn_cuda_fail("out of memory allocating %zu bytes on cuda:%d (%llu bytes in use "
                             "by Kiln, %zu of %zu free on the device): cudaMalloc says %s",
                             rounded, device, (unsigned long long)d->stats.bytes_in_use, free_bytes,
                             total_bytes, cudaGetErrorString(err));
        pthread_mutex_unlock(&d->lock);
        return error;
    }
    d->stats.device_allocs++;
    d->stats.bytes_in_use += rounded;
    pthread_mutex_unlock(&d->lock);
    *out = ptr;
    return NULL;
}

void kn_cuda_cache_free(int device, void *ptr, size_t nbytes)
{
    if (!ptr || device < 0 || device >= KN_CUDA_MAX_DEVICES) return;
    size_t rounded;
    int cls = size_class(nbytes, &rounded);
    device_state *d = &devices[device];
    pthread_mutex_lock(&d->lock);
    d->stats.bytes_in_use -= rounded;
    free_block *b = d->spare;
    if (b)
        d->spare = b->next;
    else
        b = (free_block *)malloc(sizeof *b);
    if (!b) { /* cannot cache it: give it back (after the stream's pending work) */
        if (d->ready) cudaStreamSynchronize(d->stream);
        cudaSetDevice(device);
        cudaFree(ptr);
        cudaGetLastError();
        pthread_mutex_unlock(&d->lock);
        return;
    }
    b->ptr = ptr;
    b->next = d->free_lists[cls];
    d->free_lists[cls] = b;
    d->stats.bytes_cached += rounded;
    pthread_mutex_unlock(&d->lock);
}

/* While a thread captures a graph, its allocations come from the graph's pool, and a
 * block that belongs to a pool goes back to it, never to the cache (graph.cu). */
static const char *backend_alloc(int device, size_t nbytes, void **out)
{
    if (kn_cuda_pool_capturing(device)) return kn_cuda_pool_alloc(device, nbytes, out);
    return kn_cuda_cache_alloc(device, nbytes, out);
}

static void backend_free(int device, void *ptr, size_t nbytes)
{
    if (!ptr || kn_cuda_pool_give(device, ptr, nbytes)) return;
    kn_cuda_cache_free(device, ptr, nbytes);
}

static const char *backend_empty_cache(int device)
{
    const char *error = kn_cuda_enter(device, "empty_cache", NULL, NULL);
    if (error) return error;
    device_state *d = &devices[device];
    pthread_mutex_lock(&d->lock);
    error = release_cache(d, "empty_cache");
    pthread_mutex_unlock(&d->lock);
    return error;
}

static void backend_alloc_stats(int device, kn_cuda_alloc_stats *out)
{
    memset(out, 0, sizeof *out);
    if (device < 0 || device >= KN_CUDA_MAX_DEVICES) return;
    device_state *d = &devices[device];
    pthread_mutex_lock(&d->lock);
    *out = d->stats;
    pthread_mutex_unlock(&d->lock);
}

/* ---- copies ------------------------------------------------------------------------- */

static const char *backend_copy_h2d(int device, void *dst, const void *src, size_t nbytes)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "copy to cuda", &stream, NULL);
    if (error || nbytes == 0) return error;
    /* From pageable memory the call returns once src is staged: src may be freed after. */
    return kn_cuda_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream),
                         "copy to cuda");
}

static const char *backend_copy_d2h(int device, void *dst, const void *src, size_t nbytes)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "copy to cpu", &stream, NULL);
    if (error || nbytes == 0) return error;
    error = kn_cuda_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream),
                          "copy to cpu");
    if (error) return error;
    return kn_cuda_check(cudaStreamSynchronize(stream), "copy to cpu");
}

static const char *backend_copy_d2d(int dst_device, void *dst, int src_device, const void *src,
                                    size_t nbytes)
{
    cudaStream_t dst_stream, src_stream;
    const char *error = kn_cuda_enter(src_device, "copy between devices", &src_stream, NULL);
    if (!error) error = kn_cuda_enter(dst_device, "copy between devices", &dst_stream, NULL);
    if (error || nbytes == 0) return error;
    if (dst_device == src_device)
        return kn_cuda_check(
            cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, dst_stream),
            "copy between devices");
    /* Both streams drained, then a peer copy (staged through the host by CUDA when the
     * devices have no peer access), ordered before later work on the destination. */
    if ((error = kn_cuda_check(cudaStreamSynchronize(src_stream), "copy between devices")))
        return error;
    if ((error = kn_cuda_check(cudaStreamSynchronize(dst_stream), "copy between devices")))
        return error;
    error = kn_cuda_check(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, nbytes, dst_stream),
                          "copy between devices");
    if (error) return error;
    /* ...and waited for: nothing orders it with src_device's stream, where src (often a
     * temporary that kn_to frees at once) may go back to the cache and be overwritten by
     * the next kernel there while the copy still reads it. */
    return kn_cuda_check(cudaStreamSynchronize(dst_stream), "copy between devices");
}

/* ---- SGEMM -------------------------------------------------------------------------- */

static const char *backend_sgemm(int device, bool allow_tf32, bool trans_a, bool trans_b, int64_t m,
                                 int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                                 int64_t stride_a, const float *b, int64_t ldb, int64_t stride_b,
                                 float beta, float *c, int64_t ldc, int64_t stride_c, int64_t batch)
{
    cudaStream_t stream;
    cublasHandle_t blas;
    const char *error = kn_cuda_enter(device, "matmul", &stream, &blas);
    if (error) return error;
    if (m <= 0 || n <= 0 || batch <= 0) return NULL;
    const int64_t limit = 2147483647;
    if (m > limit || n > limit || k > limit || lda > limit || ldb > limit || ldc > limit ||
        batch > limit)
        return kn_cuda_fail("matmul: sizes m=%lld n=%lld k=%lld batch=%lld exceed cuBLAS's "
                            "32-bit limits",
                            (long long)m, (long long)n, (long long)k, (long long)batch);
    if (k <= 0) { /* cuBLAS would leave C alone only for beta == 1: make beta explicit */
        int64_t shape[3] = {batch, m, n};
        kn_cpu_operand out = {c, {stride_c, ldc, 1}};
        if (beta == 0.f) {
            float zero = 0.f;
            return kn_cuda_fill(device, shape, 3, 4, out, &zero);
        }
        return kn_cuda_unary(device, KN_UNARY_MUL_SCALAR, shape, 3, out, out, beta, 0.f);
    }
    /* Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands. */
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    int64_t min_lda = trans_a ? m : k, min_ldb = trans_b ? k : n;
    if (lda < min_lda) lda = min_lda; /* only when that dim is 1: the value is unused */
    if (ldb < min_ldb) ldb = min_ldb;
    if (ldc < n) ldc = n;
    /* The handle is shared by every thread on the device, so TF32 is chosen per call by
     * the compute type rather than by the handle's math mode (which stays
     * CUBLAS_DEFAULT_MATH: CUBLAS_COMPUTE_32F is then plain fp32). */
    cublasComputeType_t compute = allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasStatus_t status;
    if (batch == 1)
        status = cublasGemmEx(blas, op_b, op_a, (int)n, (int)m, (int)k, &alpha, b, CUDA_R_32F,
                              (int)ldb, a, CUDA_R_32F, (int)lda, &beta, c, CUDA_R_32F, (int)ldc,
                              compute, CUBLAS_GEMM_DEFAULT);
    else
        status = cublasGemmStridedBatchedEx(blas, op_b, op_a, (int)n, (int)m, (int)k, &alpha, b,
                                            CUDA_R_32F, (int)ldb, stride_b, a, CUDA_R_32F, (int)lda,
                                            stride_a, &beta, c, CUDA_R_32F, (int)ldc, stride_c,
                                            (int)batch, compute, CUBLAS_GEMM_DEFAULT);
    if ((error = blas_check(status, "matmul"))) return error;
    return kn_cuda_check(cudaGetLastError(), "matmul");
}

/* ---- the table ---------------------------------------------------------------------- */

static const kn_cuda_backend backend = {
    KN_CUDA_BACKEND_ABI, sizeof(kn_cuda_backend), backend_device_count, backend_device_name,
    backend_synchronize, backend_alloc,           backend_free,         backend_empty_cache,
    backend_alloc_stats, backend_copy_h2d,        backend_copy_d2h,     backend_copy_d2d,
    kn_cuda_binary,      kn_cuda_unary,           kn_cuda_copy,         kn_cuda_fill,
    kn_cuda_sum_to,      backend_sgemm,
};

extern "C" __attribute__((visibility("default"))) const kn_cuda_backend *kn_cuda_backend_v1(void)
{
    return &backend;
}

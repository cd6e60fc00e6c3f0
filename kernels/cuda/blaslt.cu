/*
 * blaslt.cu — the CUDA module's cublasLt products with fused epilogues (the table
 * kn_cuda_blaslt_v1 of kn_cuda_blaslt.h): linear's forward with its bias added in the
 * GEMM, and the weight gradient's GEMM that also reduces the bias gradient. Per device:
 * a cublasLt handle and a workspace for the device's stream, made on first use. The algorithm
 * cublasLt's heuristic picks is cached per problem (a heuristic query costs far more than the
 * host-side descriptors, which are made per call so that no descriptor is shared
 * between threads).
 *
 * Row-major to cuBLAS's column-major. A row-major r x c matrix with leading dimension
 * ld is, read column-major, its transpose: a c x r matrix with the same ld. So the
 * row-major product C[m,n] = op(A)[m,k] op(B)[k,n] is, column-major,
 *     Cᵀ[n,m] = op(B)ᵀ[n,k] op(A)ᵀ[k,m],
 * i.e. one cublasLt product D' = op'(A') op'(B') with
 *     m' = n, n' = m, k' = k,
 *     A' = b's buffer, op' = N when B is stored k x n (trans_b false): its layout is
 *          then n x k (rows x cols) with ld ldb, else k x n with op' = T,
 *     B' = a's buffer, op' = N when A is stored m x k: layout k x m, ld lda; else
 *          m x k with op' = T,
 *     D' = c's buffer, layout n x m, ld ldc.
 * The epilogues in those terms:
 *   - CUBLASLT_EPILOGUE_BIAS adds a vector of length rows(D') = m' = n to every column
 *     of D', D'[j, i] += bias[j]: in row-major terms C[i, j] += bias[j], the bias of
 *     a linear layer y = x Wᵀ + b with C = y (m = rows of x, n = out features).
 *   - CUBLASLT_EPILOGUE_BGRADB writes a vector of length cols(D') = n' = m, the sum of
 *     op'(B') (k' x n') over k': bias_grad[i] = sum_p op'(B')[p, i] = sum_p op(A)[i, p].
 *     Linear's weight gradient is gW[out,in] = gᵀ[out,rows] x[rows,in]: A = g stored
 *     rows x out (trans_a), so bias_grad[j] = sum over rows of g[r, j] = the bias
 *     gradient, from the same pass over g.
 */
#include "kn_cuda_blaslt.h"
#include "kn_cuda_internal.h"

#include <cublasLt.h>
#include <pthread.h>
#include <string.h>

#define LT_MAX_DEVICES 64
#define LT_WORKSPACE_BYTES ((size_t)8 << 20)
#define LT_CACHE_SIZE 256

static const char *lt_check(cublasStatus_t status, const char *op)
{
    if (status == CUBLAS_STATUS_SUCCESS) return NULL;
    return kn_cuda_fail("%s: cuBLASLt error %s (%d)", op, cublasLtGetStatusName(status),
                        (int)status);
}

/* ---- per-device handle and workspace ------------------------------------------------ */

typedef struct lt_device {
    bool ready, workspace_tried;
    /* Held around the handle's calls: cublasLt does not promise that one handle may be
     * used by several threads at once (and the calls only queue work, so this costs
     * little next to the device's one stream). */
    pthread_mutex_t call_lock;
    cublasLtHandle_t handle;
    void *workspace; /* NULL when it could not be allocated: cublasLt then runs without */
    size_t workspace_bytes;
} lt_device;

static lt_device lt_devices[LT_MAX_DEVICES];
static pthread_once_t lt_once = PTHREAD_ONCE_INIT;

static void lt_init(void)
{
    for (int i = 0; i < LT_MAX_DEVICES; i++) pthread_mutex_init(&lt_devices[i].call_lock, NULL);
}
static pthread_mutex_t lt_lock = PTHREAD_MUTEX_INITIALIZER; /* the devices and the cache */

/* The device's handle and workspace, made on first use (device is current). The
 * workspace is not allocated while the stream captures a graph (no cudaMalloc then). */
static const char *lt_device_state(int device, const char *op, bool capturing, lt_device **out)
{
    if (device < 0 || device >= LT_MAX_DEVICES)
        return kn_cuda_fail("%s: cuda:%d is beyond the %d devices cublasLt is set up for", op,
                            device, LT_MAX_DEVICES);
    pthread_once(&lt_once, lt_init);
    lt_device *d = &lt_devices[device];
    const char *error = NULL;
    pthread_mutex_lock(&lt_lock);
    if (!d->ready) {
        error = lt_check(cublasLtCreate(&d->handle), op);
        d->ready = error == NULL;
    }
    if (d->ready && !capturing && !d->workspace_tried) {
        /* Used only by products on the device's own stream, which run in order, so one
         * workspace serves every thread. Never freed (it lives as long as the handle). */
        d->workspace_tried = true;
        if (cudaMalloc(&d->workspace, LT_WORKSPACE_BYTES) == cudaSuccess) {
            d->workspace_bytes = LT_WORKSPACE_BYTES;
        } else {
            cudaGetLastError();
            d->workspace = NULL;
            d->workspace_bytes = 0;
        }
    }
    pthread_mutex_unlock(&lt_lock);
    *out = d;
    return error;
}

/* ---- the algorithm cache ------------------------------------------------------------ */

/* Everything the heuristic's answer depends on. Zeroed before filling (padding too):
 * keys are compared with memcmp. */
typedef struct lt_key {
    int device, epilogue, tf32;
    int op_a, op_b;                            /* cuBLAS's (column-major) operands */
    int align_a, align_b, align_c, align_bias; /* 4, 8 or 16 bytes */
    int64_t m, n, k, lda, ldb, ldc;            /* cuBLAS's */
    uint64_t workspace_bytes;                  /* an algorithm chosen for a workspace needs it */
} lt_key;

typedef struct lt_entry {
    bool used, supported;
    lt_key key;
    cublasLtMatmulAlgo_t algo;
} lt_entry;

static lt_entry lt_cache[LT_CACHE_SIZE];
static int lt_cache_next; /* the slot replaced next once the cache is full (round robin) */

/* Alignment of a pointer as the heuristic is told it: 16, 8 or 4 bytes. */
static int alignment(const void *p)
{
    uintptr_t v = (uintptr_t)p;
    return v % 16 == 0 ? 16 : v % 8 == 0 ? 8 : 4;
}

static bool lt_cache_find(const lt_key *key, lt_entry *out)
{
    bool found = false;
    pthread_mutex_lock(&lt_lock);
    for (int i = 0; i < LT_CACHE_SIZE && lt_cache[i].used; i++) {
        if (memcmp(&lt_cache[i].key, key, sizeof *key) == 0) {
            *out = lt_cache[i];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&lt_lock);
    return found;
}

/* Records the heuristic's answer (algo NULL: no algorithm for the key). */
static void lt_cache_put(const lt_key *key, const cublasLtMatmulAlgo_t *algo)
{
    pthread_mutex_lock(&lt_lock);
    int slot = -1;
    for (int i = 0; i < LT_CACHE_SIZE; i++) {
        if (!lt_cache[i].used || memcmp(&lt_cache[i].key, key, sizeof *key) == 0) {
            slot = i;
            break;
        }
    }
    if (slot < 0) { /* full: replace in turn (the slots stay packed from the front) */
        slot = lt_cache_next;
        lt_cache_next = (lt_cache_next + 1) % LT_CACHE_SIZE;
    }
    lt_entry *e = &lt_cache[slot];
    memset(e, 0, sizeof *e);
    e->used = true;
    e->supported = algo != NULL;
    memcpy(&e->key, key, sizeof *key); /* padding too (assignment may skip it) */
    if (algo) e->algo = *algo;
    pthread_mutex_unlock(&lt_lock);
}

/* ---- one product -------------------------------------------------------------------- */

/* The descriptors of one product (made per call: descriptors are not shared between
 * threads, and making them costs little next to the heuristic). */
typedef struct lt_descs {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c; /* cuBLAS's A', B' and C' = D' */
} lt_descs;

static void lt_descs_free(lt_descs *s)
{
    if (s->c) cublasLtMatrixLayoutDestroy(s->c);
    if (s->b) cublasLtMatrixLayoutDestroy(s->b);
    if (s->a) cublasLtMatrixLayoutDestroy(s->a);
    if (s->desc) cublasLtMatmulDescDestroy(s->desc);
}

static cublasStatus_t lt_descs_make(const lt_key *key, const void *vector, lt_descs *s)
{
    cublasComputeType_t compute = key->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasOperation_t op_a = (cublasOperation_t)key->op_a, op_b = (cublasOperation_t)key->op_b;
    uint32_t epilogue = (uint32_t)key->epilogue;
    /* stored shapes (rows x cols, column-major): op(A') is m x k, op(B') is k x n */
    uint64_t m = (uint64_t)key->m, n = (uint64_t)key->n, k = (uint64_t)key->k;
    bool ta = op_a == CUBLAS_OP_T, tb = op_b == CUBLAS_OP_T;
    cublasStatus_t st = cublasLtMatmulDescCreate(&s->desc, compute, CUDA_R_32F);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a,
                                            sizeof op_a);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b,
                                            sizeof op_b);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                            sizeof epilogue);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vector,
                                            sizeof vector);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatrixLayoutCreate(&s->a, CUDA_R_32F, ta ? k : m, ta ? m : k, key->lda);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatrixLayoutCreate(&s->b, CUDA_R_32F, tb ? n : k, tb ? k : n, key->ldb);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatrixLayoutCreate(&s->c, CUDA_R_32F, m, n, key->ldc);
    return st;
}

/* The heuristic's best algorithm for the key; CUBLAS_STATUS_NOT_SUPPORTED when none. */
static cublasStatus_t lt_heuristic(cublasLtHandle_t handle, const lt_key *key, const lt_descs *s,
                                   cublasLtMatmulAlgo_t *algo)
{
    cublasLtMatmulPreference_t pref = NULL;
    uint64_t workspace = key->workspace_bytes;
    uint32_t align_a = (uint32_t)key->align_a, align_b = (uint32_t)key->align_b;
    uint32_t align_c = (uint32_t)key->align_c;
    cublasStatus_t st = cublasLtMatmulPreferenceCreate(&pref);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &workspace, sizeof workspace);
    /* the default assumption is 256-byte aligned buffers; views are often less */
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                  &align_a, sizeof align_a);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                  &align_b, sizeof align_b);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                  &align_c, sizeof align_c);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                  &align_c, sizeof align_c);
    if (st == CUBLAS_STATUS_SUCCESS) {
        cublasLtMatmulHeuristicResult_t result;
        memset(&result, 0, sizeof result);
        int returned = 0;
        st = cublasLtMatmulAlgoGetHeuristic(handle, s->desc, s->a, s->b, s->c, s->c, pref, 1,
                                            &result, &returned);
        if (st == CUBLAS_STATUS_SUCCESS && (returned < 1 || result.state != CUBLAS_STATUS_SUCCESS))
            st = CUBLAS_STATUS_NOT_SUPPORTED;
        if (st == CUBLAS_STATUS_SUCCESS) *algo = result.algo;
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return st;
}

/* The row-major product of the header through one cublasLtMatmul with the epilogue;
 * vector is the bias (BIAS) or the bias gradient (BGRADB). The mapping to cuBLAS's
 * column-major operands is derived at the top of the file. */
static const char *lt_matmul(const char *op, int device, bool allow_tf32,
                             cublasLtEpilogue_t epilogue, bool trans_a, bool trans_b, int64_t m,
                             int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                             int64_t ldb, float *c, int64_t ldc, const void *vector, bool *done)
{
    *done = false;
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    /* empty products and empty sums: the caller's other path handles them */
    if (m <= 0 || n <= 0 || k <= 0) return NULL;
    /* A thread that captures a CUDA graph gets its capture's stream from kn_cuda_enter.
     * Its products use no workspace: the graph may be replayed beside the device's
     * stream, whose products use the device's workspace. */
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if ((error = kn_cuda_check(cudaStreamIsCapturing(stream, &capture), op))) return error;
    bool capturing = capture != cudaStreamCaptureStatusNone;
    lt_device *d = NULL;
    if ((error = lt_device_state(device, op, capturing, &d))) return error;
    void *workspace = capturing ? NULL : d->workspace;
    size_t workspace_bytes = capturing ? 0 : d->workspace_bytes;

    int64_t min_lda = trans_a ? m : k, min_ldb = trans_b ? k : n;
    if (lda < min_lda) lda = min_lda; /* only when that dim is 1: the value is unused */
    if (ldb < min_ldb) ldb = min_ldb;
    if (ldc < n) ldc = n;
    /* cuBLAS's operands: A' = b, B' = a, D' = C' = c, m' = n, n' = m */
    lt_key key;
    memset(&key, 0, sizeof key);
    key.device = device;
    key.epilogue = (int)epilogue;
    key.tf32 = allow_tf32;
    key.op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    key.op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    key.align_a = alignment(b);
    key.align_b = alignment(a);
    key.align_c = alignment(c);
    key.align_bias = alignment(vector);
    key.m = n;
    key.n = m;
    key.k = k;
    key.lda = ldb;
    key.ldb = lda;
    key.ldc = ldc;
    key.workspace_bytes = workspace_bytes;
    lt_entry cached;
    bool have = lt_cache_find(&key, &cached);
    if (have && !cached.supported) return NULL;

    lt_descs s;
    memset(&s, 0, sizeof s);
    cublasStatus_t st = lt_descs_make(&key, vector, &s);
    pthread_mutex_lock(&d->call_lock);
    if (st == CUBLAS_STATUS_SUCCESS && !have) {
        st = lt_heuristic(d->handle, &key, &s, &cached.algo);
        if (st == CUBLAS_STATUS_SUCCESS || st == CUBLAS_STATUS_NOT_SUPPORTED)
            lt_cache_put(&key, st == CUBLAS_STATUS_SUCCESS ? &cached.algo : NULL);
    }
    if (st == CUBLAS_STATUS_SUCCESS) {
        float alpha = 1.f, beta = 0.f;
        st = cublasLtMatmul(d->handle, s.desc, &alpha, b, s.a, a, s.b, &beta, c, s.c, c, s.c,
                            &cached.algo, workspace, workspace_bytes, stream);
        /* the algorithm does not take this call after all: nothing was queued */
        if (st == CUBLAS_STATUS_NOT_SUPPORTED) lt_cache_put(&key, NULL);
    }
    pthread_mutex_unlock(&d->call_lock);
    lt_descs_free(&s);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED) return NULL; /* not done, no error */
    if ((error = lt_check(st, op))) return error;
    if ((error = kn_cuda_check(cudaGetLastError(), op))) return error;
    *done = true;
    return NULL;
}

static const char *blaslt_gemm_bias(int device, bool allow_tf32, bool trans_a, bool trans_b,
                                    int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                                    const float *b, int64_t ldb, const float *bias, float *c,
                                    int64_t ldc, bool *done)
{
    return lt_matmul("linear", device, allow_tf32, CUBLASLT_EPILOGUE_BIAS, trans_a, trans_b, m, n,
                     k, a, lda, b, ldb, c, ldc, bias, done);
}

static const char *blaslt_gemm_bgrad(int device, bool allow_tf32, bool trans_a, bool trans_b,
                                     int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                                     const float *b, int64_t ldb, float *c, int64_t ldc,
                                     float *bias_grad, bool *done)
{
    return lt_matmul("linear backward", device, allow_tf32, CUBLASLT_EPILOGUE_BGRADB, trans_a,
                     trans_b, m, n, k, a, lda, b, ldb, c, ldc, bias_grad, done);
}

static const kn_cuda_blaslt blaslt = {KN_CUDA_BLASLT_ABI, sizeof(kn_cuda_blaslt), blaslt_gemm_bias,
                                      blaslt_gemm_bgrad};

extern "C" __attribute__((visibility("default"))) const kn_cuda_blaslt *kn_cuda_blaslt_v1(void)
{
    return &blaslt;
}

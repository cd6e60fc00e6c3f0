/*
 * device.c — devices: which are available, the CUDA module loaded at run time, moving
 * tensors between devices (kn_to), and the dispatch that sends an elementwise kernel,
 * a copy or an allocation to the CPU kernels or to the CUDA module.
 *
 * The CUDA backend is libkiln_cuda.so (kernels/cuda), opened with dlopen on first use:
 * from $KILN_CUDA_MODULE, else next to the running executable, else from the build
 * folder it was built in. A missing module, a missing CUDA driver or no device all
 * mean "cuda is not available"; the reason is kept for the error messages, and the
 * CPU device works as before. Without the driver (libcuda.so.1) the module is not even
 * loaded: that answer takes a millisecond instead of seconds.
 */
#include "kn_internal.h"
#include "kn_cuda.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef KN_CUDA_MODULE_DIR
#define KN_CUDA_MODULE_DIR "."
#endif
#ifndef KN_CUDA_MODULE_BUILT
#define KN_CUDA_MODULE_BUILT 0
#endif
#define MODULE_NAME "libkiln_cuda.so"

/* ---- loading the module ------------------------------------------------------------ */

static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static kn__cuda_module module;      /* every table, once loaded with at least one device */
static const kn_cuda_backend *cuda; /* module.backend then, else NULL */
static int cuda_devices;
static char cuda_reason[1024]; /* why cuda is not available, or what is there */

static void *open_module(char *error, size_t size)
{
    const char *env = getenv("KILN_CUDA_MODULE");
    if (env && env[0]) {
        void *handle = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (!handle) snprintf(error, size, "$KILN_CUDA_MODULE=%s: %s", env, dlerror());
        return handle;
    }
    char path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", path, PATH_MAX);
    if (n > 0) {
        path[n] = '\0';
        char *slash = strrchr(path, '/');
        if (slash) {
            strcpy(slash + 1, MODULE_NAME);
            void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (handle) return handle;
            if (access(path, F_OK) == 0) { /* there but broken: that is the reason */
                snprintf(error, size, "%s", dlerror());
                return NULL;
            }
        }
    }
    void *handle = dlopen(KN_CUDA_MODULE_DIR "/" MODULE_NAME, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        if (!KN_CUDA_MODULE_BUILT)
            snprintf(error, size,
                     "this build has no CUDA module (nvcc was not found when it "
                     "was configured, or KILN_CUDA was OFF)");
        else
            snprintf(error, size, "%s", dlerror());
    }
    return handle;
}

/* The table the module exports as symbol (NULL when it has none). */
static const void *table(void *handle, const char *symbol)
{
    const void *(*entry)(void);
    *(void **)&entry = dlsym(handle, symbol);
    return entry ? entry() : NULL;
}

/* t when the module built it with this build's version and layout of its type. */
#define CHECKED(t, ABI) ((t) && (t)->abi == (ABI) && (t)->size == sizeof *(t) ? (t) : NULL)

static void load_cuda(void)
{
    /* No driver library, no device: the CUDA runtime opens this same soname by the same
     * search, so say so at once instead of loading the module, the runtime and cuBLAS
     * (seconds) to hear it from cudaGetDeviceCount. The handle stays open, as the
     * runtime's would. */
    if (!dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL)) {
        snprintf(cuda_reason, sizeof cuda_reason,
                 "no CUDA device: the CUDA driver library cannot be loaded (%s)", dlerror());
        return;
    }
    char error[768] = "";
    void *handle = open_module(error, sizeof error);
    if (!handle) {
        snprintf(cuda_reason, sizeof cuda_reason,
                 "the CUDA module " MODULE_NAME " could not be loaded: %s", error);
        return;
    }
    const kn_cuda_backend *backend = table(handle, KN_CUDA_BACKEND_SYMBOL);
    const kn_cuda_reduce *reduce = table(handle, KN_CUDA_REDUCE_SYMBOL);
    const kn_cuda_conv_backend *conv = table(handle, KN_CUDA_CONV_SYMBOL);
    const kn_cuda_train *train = table(handle, KN_CUDA_TRAIN_SYMBOL);
    const kn_cuda_blaslt *blaslt = table(handle, KN_CUDA_BLASLT_SYMBOL);
    const kn_cuda_host *host = table(handle, KN_CUDA_HOST_SYMBOL);
    /* ---- attention (issue 12) ---- */
    const kn_cuda_attention *attention = table(handle, KN_CUDA_ATTENTION_SYMBOL);
    const kn_cuda_int64 *int64 = table(handle, KN_CUDA_INT64_SYMBOL); /* issue 12 */
    kn__cuda_module m = {
        .backend = CHECKED(backend, KN_CUDA_BACKEND_ABI),
        .reduce = CHECKED(reduce, KN_CUDA_REDUCE_ABI),
        .conv = CHECKED(conv, KN_CUDA_CONV_ABI),
        .train = CHECKED(train, KN_CUDA_TRAIN_ABI),
        .blaslt = CHECKED(blaslt, KN_CUDA_BLASLT_ABI),
        .host = CHECKED(host, KN_CUDA_HOST_ABI),
        /* ---- attention (issue 12) ---- */
        .attention = CHECKED(attention, KN_CUDA_ATTENTION_ABI),
        .int64 = CHECKED(int64, KN_CUDA_INT64_ABI), /* issue 12 */
    };
    const char *missing = !m.backend  ? KN_CUDA_BACKEND_SYMBOL
                          : !m.reduce ? KN_CUDA_REDUCE_SYMBOL
                          : !m.conv   ? KN_CUDA_CONV_SYMBOL
                          : !m.train  ? KN_CUDA_TRAIN_SYMBOL
                          : !m.blaslt ? KN_CUDA_BLASLT_SYMBOL
                          : !m.host   ? KN_CUDA_HOST_SYMBOL
                          : !m.int64  ? KN_CUDA_INT64_SYMBOL /* issue 12 */
                                      : NULL;
    /* ---- attention (issue 12) ---- */
    if (!missing && !m.attention) missing = KN_CUDA_ATTENTION_SYMBOL;
    if (missing) {
        snprintf(cuda_reason, sizeof cuda_reason,
                 "the CUDA module " MODULE_NAME " does not match this build (no %s of this "
                 "build's version)",
                 missing);
        dlclose(handle);
        return;
    }
    int count = 0;
    const char *message = m.backend->device_count(&count);
    if (message || count <= 0) {
        snprintf(cuda_reason, sizeof cuda_reason, "no CUDA device: %s",
                 message ? message : "cudaGetDeviceCount says 0");
        return; /* the module stays loaded: unloading the CUDA runtime is not safe */
    }
    module = m;
    cuda = m.backend;
    cuda_devices = count;
    snprintf(cuda_reason, sizeof cuda_reason, "%d CUDA device%s", count, count == 1 ? "" : "s");
}

static const kn_cuda_backend *cuda_backend(void)
{
    pthread_once(&cuda_once, load_cuda);
    return cuda;
}

int kn_cuda_device_count(void)
{
    return cuda_backend() ? cuda_devices : 0;
}

const char *kn_cuda_status(void)
{
    cuda_backend();
    return cuda_reason;
}

bool kn_device_available(kn_device device)
{
    if (device.type == KN_DEVICE_CPU) return true;
    return device.type == KN_DEVICE_CUDA && device.index >= 0 &&
           device.index < kn_cuda_device_count();
}

/* The backend for device (a CUDA device), or NULL with the error set naming op. */
static const kn_cuda_backend *backend_for(kn_device device, const char *op)
{
    if (device.type != KN_DEVICE_CUDA) {
        kn__error(KN_ERR_DEVICE, "%s: not a CUDA device", op);
        return NULL;
    }
    if (kn_device_available(device)) return cuda;
    char name[32];
    kn_device_str(device, name, sizeof name);
    if (cuda)
        kn__error(KN_ERR_DEVICE, "%s: device %s is not available (%d CUDA device%s)", op, name,
                  cuda_devices, cuda_devices == 1 ? "" : "s");
    else
        kn__error(KN_ERR_DEVICE, "%s: device %s is not available (%s)", op, name, cuda_reason);
    return NULL;
}

/* A module message as the engine's error: its own text, out of memory as KN_ERR_MEMORY. */
static kn_status module_error(const char *message)
{
    if (!message) return KN_OK;
    kn_status status = strncmp(message, "out of memory", 13) == 0 ? KN_ERR_MEMORY : KN_ERR_DEVICE;
    return kn__error(status, "%s", message);
}

const kn__cuda_module *kn__cuda(kn_device device, const char *op)
{
    return backend_for(device, op) ? &module : NULL;
}

static __thread bool capturing;

void kn__cuda_capture_mark(bool on)
{
    capturing = on;
}

bool kn__cuda_capturing(void)
{
    return capturing;
}

/* The refusal of kn__cuda_capture_mark's comment: set and returned by the callers. */
static kn_status refuse_in_capture(const char *op, const char *why)
{
    return kn__error(KN_ERR_DEVICE, "%s: not allowed while a CUDA graph is captured (%s)", op, why);
}

kn_status kn__cuda_error(const char *message)
{
    return module_error(message);
}

kn_status kn_cuda_synchronize(int device)
{
    if (capturing) return refuse_in_capture("synchronize", "it would wait for the device");
    const kn_cuda_backend *b = backend_for((kn_device){KN_DEVICE_CUDA, device}, "synchronize");
    if (!b) return kn_last_status();
    return module_error(b->synchronize(device));
}

kn_status kn_cuda_get_alloc_stats(int device, kn_alloc_stats *out)
{
    if (!out) return kn__error(KN_ERR_NULL, "cuda_alloc_stats: out is NULL");
    memset(out, 0, sizeof *out);
    const kn_cuda_backend *b = backend_for((kn_device){KN_DEVICE_CUDA, device}, "alloc_stats");
    if (!b) return kn_last_status();
    kn_cuda_alloc_stats s;
    b->alloc_stats(device, &s);
    *out = (kn_alloc_stats){s.device_allocs, s.cache_hits, s.bytes_in_use, s.bytes_cached};
    return KN_OK;
}

kn_status kn_cuda_empty_cache(void)
{
    for (int i = 0; i < kn_cuda_device_count(); i++) {
        kn_status status = module_error(cuda->empty_cache(i));
        if (status != KN_OK) return status;
    }
    return KN_OK;
}

/* ---- device memory ---------------------------------------------------------------- */

void *kn__device_alloc(kn_device device, size_t nbytes)
{
    const kn_cuda_backend *b = backend_for(device, "empty");
    if (!b) return NULL;
    void *ptr = NULL;
    if (module_error(b->alloc(device.index, nbytes, &ptr)) != KN_OK) return NULL;
    return ptr;
}

void kn__device_free(kn_device device, void *ptr, size_t nbytes)
{
    if (ptr && cuda) cuda->free(device.index, ptr, nbytes);
}

/* ---- kernels: CPU or CUDA by device ------------------------------------------------- */

kn_status kn__kernel_binary(kn_device device, kn_binary_op op, const int64_t *shape, int ndim,
                            kn_cpu_operand out, kn_cpu_operand a, kn_cpu_operand b, float alpha,
                            float beta)
{
    if (device.type == KN_DEVICE_CPU) {
        kn_cpu_binary(op, shape, ndim, out, a, b, alpha, beta);
        return KN_OK;
    }
    const kn_cuda_backend *be = backend_for(device, "binary");
    if (!be) return kn_last_status();
    return module_error(be->binary(device.index, op, shape, ndim, out, a, b, alpha, beta));
}

kn_status kn__kernel_unary(kn_device device, kn_unary_op op, const int64_t *shape, int ndim,
                           kn_cpu_operand out, kn_cpu_operand a, float alpha, float beta)
{
    if (device.type == KN_DEVICE_CPU) {
        kn_cpu_unary(op, shape, ndim, out, a, alpha, beta);
        return KN_OK;
    }
    const kn_cuda_backend *be = backend_for(device, "unary");
    if (!be) return kn_last_status();
    return module_error(be->unary(device.index, op, shape, ndim, out, a, alpha, beta));
}

kn_status kn__kernel_copy(kn_device device, const int64_t *shape, int ndim, size_t elem_size,
                          kn_cpu_operand out, kn_cpu_operand in)
{
    if (device.type == KN_DEVICE_CPU) {
        kn_cpu_copy(shape, ndim, elem_size, out, in);
        return KN_OK;
    }
    const kn_cuda_backend *be = backend_for(device, "copy");
    if (!be) return kn_last_status();
    return module_error(be->copy(device.index, shape, ndim, elem_size, out, in));
}

kn_status kn__kernel_fill(kn_device device, const int64_t *shape, int ndim, size_t elem_size,
                          kn_cpu_operand out, const void *value)
{
    if (device.type == KN_DEVICE_CPU) {
        kn_cpu_operand source = {(void *)value, {0}}; /* all-zero strides: one value */
        kn_cpu_copy(shape, ndim, elem_size, out, source);
        return KN_OK;
    }
    const kn_cuda_backend *be = backend_for(device, "fill");
    if (!be) return kn_last_status();
    return module_error(be->fill(device.index, shape, ndim, elem_size, out, value));
}

kn_status kn__kernel_sgemm(kn_device device, bool trans_a, bool trans_b, int64_t m, int64_t n,
                           int64_t k, float alpha, const float *a, int64_t lda, int64_t stride_a,
                           const float *b, int64_t ldb, int64_t stride_b, float beta, float *c,
                           int64_t ldc, int64_t stride_c, int64_t batch)
{
    const kn_cuda_backend *be = backend_for(device, "matmul");
    if (!be) return kn_last_status();
    /* TF32 as the calling thread allows it (kn_set_allow_tf32) */
    return module_error(be->sgemm(device.index, kn_get_allow_tf32(), trans_a, trans_b, m, n, k,
                                  alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c,
                                  batch));
}

kn_status kn__copy_to_host(const kn_tensor *t, int64_t element, void *dst, size_t nbytes)
{
    if (capturing)
        return refuse_in_capture("copy to cpu", "reading a CUDA tensor on the host waits for "
                                                "the device");
    const kn_cuda_backend *be = backend_for(t->device, "copy to cpu");
    if (!be) return kn_last_status();
    const char *src = (const char *)kn__data_ptr(t) + element * (int64_t)kn_dtype_size(t->dtype);
    return module_error(be->copy_d2h(t->device.index, dst, src, nbytes));
}

/* grad summed over the dims where shape has size 1 (or is missing), on grad's device. */
kn_tensor *kn__device_sum_to_shape(kn_tensor *grad, const int64_t *shape, int ndim)
{
    int lead = grad->ndim - ndim;
    kn_tensor *out = kn__empty_raw(shape, ndim, KN_FLOAT32, grad->device);
    if (!out) return NULL;
    kn_cpu_operand o = {kn__data_ptr(out), {0}};
    for (int d = 0; d < ndim; d++)
        o.strides[lead + d] = shape[d] == 1 && grad->shape[lead + d] != 1 ? 0 : out->strides[d];
    const kn_cuda_backend *be = backend_for(grad->device, "backward");
    kn_status status = be ? module_error(be->sum_to(grad->device.index, grad->shape, grad->ndim, o,
                                                    kn__operand(grad)))
                          : kn_last_status();
    if (status != KN_OK) {
        kn_release(out);
        return NULL;
    }
    return kn__result(out);
}

/* ---- kn_to -------------------------------------------------------------------------- */

static kn_status to_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_device source = {(kn_device_type)node->iargs[0], (int)node->iargs[1]};
    grads[0] = kn_to(grad, source);
    return grads[0] ? KN_OK : kn_last_status();
}

/* A contiguous copy of t on device (no history, unregistered). */
static kn_tensor *move(kn_tensor *t, kn_device device)
{
    char name[32];
    kn_device_str(device, name, sizeof name);
    if (capturing && t->device.type != device.type) {
        refuse_in_capture("to", "a copy between the cpu and cuda would wait for the device or "
                                "record a host address that is gone at replay");
        return NULL;
    }
    if (!kn_device_available(device)) {
        if (device.type == KN_DEVICE_CUDA && !cuda)
            return kn__error_null(KN_ERR_DEVICE, "to: device %s is not available (%s)", name,
                                  kn_cuda_status());
        return kn__error_null(KN_ERR_DEVICE, "to: device %s is not available (%d CUDA device%s)",
                              name, cuda_devices, cuda_devices == 1 ? "" : "s");
    }
    if (t->device.type == KN_DEVICE_CUDA && !kn_device_available(t->device)) {
        char from[32];
        return kn__error_null(KN_ERR_DEVICE, "to: the tensor's device %s is not available (%s)",
                              kn_device_str(t->device, from, sizeof from), kn_cuda_status());
    }
    kn_tensor *src = kn__contiguous_raw(t); /* on t's device */
    if (!src) return NULL;
    kn_tensor *out = kn__empty_raw(t->shape, t->ndim, t->dtype, device);
    if (!out) {
        kn_release(src);
        return NULL;
    }
    size_t nbytes = (size_t)kn_numel(t) * kn_dtype_size(t->dtype);
    const char *message = NULL;
    if (nbytes == 0) {
        /* nothing to move */
    } else if (t->device.type == KN_DEVICE_CPU) {
        message = cuda->copy_h2d(device.index, kn__data_ptr(out), kn__data_ptr(src), nbytes);
    } else if (device.type == KN_DEVICE_CPU) {
        message = cuda->copy_d2h(t->device.index, kn__data_ptr(out), kn__data_ptr(src), nbytes);
    } else {
        message = cuda->copy_d2d(device.index, kn__data_ptr(out), t->device.index,
                                 kn__data_ptr(src), nbytes);
    }
    kn_release(src);
    if (module_error(message) != KN_OK) {
        kn_release(out);
        return NULL;
    }
    return out;
}

kn_tensor *kn_to(kn_tensor *t, kn_device device)
{
    if (!t) return NULL;
    if (kn_device_equal(t->device, device)) return kn__result(kn_retain(t));
    kn_tensor *out = move(t, device);
    if (!out) return NULL;
    if (kn__needs_grad(&t, 1)) {
        kn_node *node = kn__node_new("to", to_backward, &t, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        node->iargs[0] = t->device.type;
        node->iargs[1] = t->device.index;
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/*
 * tensor.c — tensor handles: creation, reference counting, scopes (the autorelease
 * pools that make chained expressions leak-free), element access and devices.
 */
#include "kn_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ---- shapes and dtypes ---------------------------------------------------------------- */

size_t kn_dtype_size(kn_dtype dtype)
{
    return dtype == KN_INT64 ? 8 : 4;
}
const char *kn_dtype_name(kn_dtype dtype)
{
    return dtype == KN_INT64 ? "int64" : "float32";
}

int64_t kn_numel(const kn_tensor *t)
{
    if (!t) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void kn__contiguous_strides(const int64_t *shape, int ndim, int64_t *strides)
{
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = stride;
        stride *= shape[i] > 1 ? shape[i] : 1;
    }
}

bool kn_is_contiguous(const kn_tensor *t)
{
    int64_t expected = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] == 1) continue;
        if (t->strides[i] != expected) return false;
        expected *= t->shape[i];
    }
    return true;
}

bool kn__same_shape(const kn_tensor *a, const kn_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

bool kn__wrap_dim(int *dim, int ndim, const char *op)
{
    int rank = ndim > 0 ? ndim : 1; /* a 0-d tensor accepts dim 0 and -1, as in PyTorch */
    if (*dim < -rank || *dim >= rank) {
        kn__error(KN_ERR_DIM,
                  "%s: dim %d is out of range for a tensor of rank %d (expected %d..%d)", op, *dim,
                  ndim, -rank, rank - 1);
        return false;
    }
    if (*dim < 0) *dim += rank;
    return true;
}

bool kn__broadcast_shapes(const char *op, const int64_t *a, int a_ndim, const int64_t *b,
                          int b_ndim, int64_t *out, int *out_ndim)
{
    int ndim = a_ndim > b_ndim ? a_ndim : b_ndim;
    for (int i = 0; i < ndim; i++) {
        int ai = a_ndim - ndim + i, bi = b_ndim - ndim + i;
        int64_t da = ai >= 0 ? a[ai] : 1, db = bi >= 0 ? b[bi] : 1;
        if (da != db && da != 1 && db != 1) {
            kn__error(KN_ERR_SHAPE,
                      "%s: shapes %s and %s cannot be broadcast (size %lld vs %lld at dim %d)", op,
                      kn__shape_of(a, a_ndim), kn__shape_of(b, b_ndim), (long long)da,
                      (long long)db, i);
            return false;
        }
        out[i] = da == 1 ? db : da;
    }
    *out_ndim = ndim;
    return true;
}

/* ---- devices ----------------------------------------------------------------------- */

kn_device kn_cpu(void)
{
    return (kn_device){KN_DEVICE_CPU, 0};
}

bool kn_device_equal(kn_device a, kn_device b)
{
    return a.type == b.type && a.index == b.index;
}

const char *kn_device_str(kn_device device, char *buf, size_t size)
{
    if (device.type == KN_DEVICE_CPU)
        snprintf(buf, size, "cpu");
    else
        snprintf(buf, size, "cuda:%d", device.index);
    return buf;
}

kn_status kn_device_parse(const char *text, kn_device *out)
{
    if (!text)
        return kn__error(KN_ERR_VALUE,
                         "device: expected \"cpu\", \"cuda\" or \"cuda:N\", got null");
    if (strcmp(text, "cpu") == 0) {
        *out = kn_cpu();
        return KN_OK;
    }
    if (strcmp(text, "cuda") == 0) {
        *out = (kn_device){KN_DEVICE_CUDA, 0};
        return KN_OK;
    }
    if (strncmp(text, "cuda:", 5) == 0 && text[5] >= '0' && text[5] <= '9') {
        char *end;
        long index = strtol(text + 5, &end, 10);
        if (*end == '\0' && index >= 0 && index < 1024) {
            *out = (kn_device){KN_DEVICE_CUDA, (int)index};
            return KN_OK;
        }
    }
    return kn__error(KN_ERR_VALUE, "device: expected \"cpu\", \"cuda\" or \"cuda:N\", got \"%s\"",
                     text);
}

/* ---- handles ------------------------------------------------------------------------ */

static kn_tensor *handle_new(void)
{
    kn_tensor *t = kn__alloc(sizeof *t);
    if (!t) return kn__error_null(KN_ERR_MEMORY, "out of memory allocating a tensor handle");
    memset(t, 0, sizeof *t);
    t->refcount = 1;
    return t;
}

static bool valid_shape(const char *op, const int64_t *shape, int ndim, int64_t *numel)
{
    if (ndim < 0 || ndim > KN_MAX_DIMS) {
        kn__error(KN_ERR_SHAPE, "%s: rank %d is out of range (expected 0..%d)", op, ndim,
                  KN_MAX_DIMS);
        return false;
    }
    /* span, the product of the sizes other than 0, is what the strides reach: with a 0
     * in the shape numel is 0, but [0, 2^32, 2^32, 2^32] would still overflow them */
    int64_t n = 1, span = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            kn__error(KN_ERR_SHAPE, "%s: size %lld at dim %d of shape %s is negative", op,
                      (long long)shape[i], i, kn__shape_of(shape, ndim));
            return false;
        }
        int64_t size = shape[i] > 1 ? shape[i] : 1;
        if (span > INT64_MAX / 8 / size) {
            kn__error(KN_ERR_MEMORY, "%s: shape %s is too large", op, kn__shape_of(shape, ndim));
            return false;
        }
        span *= size;
        n *= shape[i];
    }
    *numel = n;
    return true;
}

kn_tensor *kn__empty_raw(const int64_t *shape, int ndim, kn_dtype dtype, kn_device device)
{
    int64_t numel;
    if (!valid_shape("empty", shape, ndim, &numel)) return NULL;
    size_t nbytes = (size_t)numel * kn_dtype_size(dtype);
    kn_storage *storage = kn__storage_new(nbytes, device);
    if (!storage) {
        if (kn_last_status() == KN_ERR_MEMORY && device.type != KN_DEVICE_CPU) {
            char reason[512], name[32];
            snprintf(reason, sizeof reason, "%s", kn_last_error());
            kn__error(KN_ERR_MEMORY, "%s tensor of shape %s on %s: %s", kn_dtype_name(dtype),
                      kn__shape_of(shape, ndim), kn_device_str(device, name, sizeof name), reason);
        } else if (kn_last_status() == KN_ERR_MEMORY)
            kn__error(KN_ERR_MEMORY,
                      "out of memory allocating %zu bytes for a %s tensor of shape %s", nbytes,
                      kn_dtype_name(dtype), kn__shape_of(shape, ndim));
        return NULL;
    }
    kn_tensor *t = handle_new();
    if (!t) {
        kn__storage_release(storage);
        return NULL;
    }
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    kn__contiguous_strides(shape, ndim, t->strides);
    t->dtype = dtype;
    t->device = device;
    t->storage = storage;
    return t;
}

kn_tensor *kn__view_raw(kn_tensor *t, const int64_t *shape, const int64_t *strides, int ndim,
                        int64_t offset)
{
    kn_tensor *v = handle_new();
    if (!v) return NULL;
    v->ndim = ndim;
    if (ndim) {
        memcpy(v->shape, shape, sizeof(int64_t) * (size_t)ndim);
        memcpy(v->strides, strides, sizeof(int64_t) * (size_t)ndim);
    }
    v->offset = offset;
    v->dtype = t->dtype;
    v->device = t->device;
    v->storage = t->storage;
    __atomic_add_fetch(&t->storage->refcount, 1, __ATOMIC_RELAXED);
    return v;
}

void *kn__data_ptr(const kn_tensor *t)
{
    return (char *)t->storage->data + t->offset * (int64_t)kn_dtype_size(t->dtype);
}

kn_cpu_operand kn__operand(const kn_tensor *t)
{
    kn_cpu_operand o = {kn__data_ptr(t), {0}};
    if (t->ndim) memcpy(o.strides, t->strides, sizeof(int64_t) * (size_t)t->ndim);
    return o;
}

kn_tensor *kn__copy_raw(kn_tensor *t)
{
    if (!t) {
        /* Keep the message of the error that produced the NULL, if any. */
        if (kn_last_status() == KN_OK) kn__error(KN_ERR_NULL, "copy: tensor is NULL");
        return NULL;
    }
    kn_tensor *copy = kn__empty_raw(t->shape, t->ndim, t->dtype, t->device);
    if (!copy) return NULL;
    if (kn__kernel_copy(t->device, t->shape, t->ndim, kn_dtype_size(t->dtype), kn__operand(copy),
                        kn__operand(t)) != KN_OK) {
        kn_release(copy);
        return NULL;
    }
    return copy;
}

kn_tensor *kn__contiguous_raw(kn_tensor *t)
{
    if (t && kn_is_contiguous(t)) return kn_retain(t);
    return kn__copy_raw(t);
}

kn_tensor *kn_retain(kn_tensor *t)
{
    if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
    return t;
}

void kn_release(kn_tensor *t)
{
    if (!t) return;
    if (__atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
    if (t->grad_fn) {
        if (t->grad_fn->retain_target == t) t->grad_fn->retain_target = NULL;
        kn__node_release(t->grad_fn);
    }
    kn_release(t->grad);
    kn__storage_release(t->storage);
    kn__free(t, sizeof *t);
}

/* ---- scopes ------------------------------------------------------------------------- */

typedef struct scope {
    kn_tensor **items;
    size_t count, capacity;
} scope;

/* Scope slots and their item buffers are kept for reuse (per thread), so a training
 * loop that opens and closes a scope each step does not call malloc for it. */
static _Thread_local scope *scopes;
static _Thread_local int scope_count, scope_capacity;

/* The per-thread buffers are freed when a thread that used them exits (server workers,
 * HTTP threads): a key whose destructor runs while the thread's TLS is still valid. */
static pthread_key_t thread_buffers_key;
static pthread_once_t thread_buffers_once = PTHREAD_ONCE_INIT;

static void free_thread_buffers(void *unused)
{
    (void)unused;
    for (int i = 0; i < scope_capacity; i++) free(scopes[i].items);
    free(scopes);
    scopes = NULL;
    scope_count = scope_capacity = 0;
    kn__autograd_free_thread_buffers();
}

static void make_thread_buffers_key(void)
{
    pthread_key_create(&thread_buffers_key, free_thread_buffers);
}

void kn__register_thread_buffers(void)
{
    pthread_once(&thread_buffers_once, make_thread_buffers_key);
    if (!pthread_getspecific(thread_buffers_key))
        pthread_setspecific(thread_buffers_key, (void *)1);
}

void kn_scope_begin(void)
{
    if (scope_count == scope_capacity) {
        int capacity = scope_capacity ? scope_capacity * 2 : 8;
        if (!scopes) kn__register_thread_buffers();
        scope *grown = realloc(scopes, sizeof(scope) * (size_t)capacity);
        if (!grown) abort(); /* cannot record the scope: nothing sensible to return */
        for (int i = scope_capacity; i < capacity; i++) grown[i] = (scope){0};
        scopes = grown;
        scope_capacity = capacity;
    }
    scopes[scope_count++].count = 0;
}

void kn_scope_end(void)
{
    if (scope_count == 0) return;
    scope *s = &scopes[scope_count - 1];
    /* Release newest first: outputs before the inputs they were made from. A release
     * may autorelease nothing (ops never run here), so s stays valid. */
    for (size_t i = s->count; i-- > 0;) kn_release(s->items[i]);
    s->count = 0;
    scope_count--;
}

int kn_scope_depth(void)
{
    return scope_count;
}

kn_tensor *kn_autorelease(kn_tensor *t)
{
    if (!t || scope_count == 0) return t;
    scope *s = &scopes[scope_count - 1];
    if (s->count == s->capacity) {
        size_t capacity = s->capacity ? s->capacity * 2 : 16;
        kn_tensor **grown = realloc(s->items, sizeof(kn_tensor *) * capacity);
        if (!grown) abort();
        s->items = grown;
        s->capacity = capacity;
    }
    s->items[s->count++] = t;
    return t;
}

kn_tensor *kn__result(kn_tensor *out)
{
    return kn_autorelease(out);
}

bool kn__scope_owns_alone(const kn_tensor *t)
{
    if (!t || scope_count == 0) return false;
    if (__atomic_load_n(&t->refcount, __ATOMIC_ACQUIRE) != 1 ||
        __atomic_load_n(&t->storage->refcount, __ATOMIC_ACQUIRE) != 1)
        return false;
    /* newest first: the tensor asked about is usually among the last results */
    const scope *s = &scopes[scope_count - 1];
    for (size_t i = s->count; i-- > 0;)
        if (s->items[i] == t) return true;
    return false;
}

kn_tensor *kn_scope_escape(kn_tensor *t)
{
    kn_retain(t);
    kn_scope_end();
    return kn_autorelease(t);
}

/* ---- creation ----------------------------------------------------------------------- */

kn_tensor *kn_empty(const int64_t *shape, int ndim, kn_dtype dtype)
{
    return kn__result(kn__empty_raw(shape, ndim, dtype, kn_cpu()));
}

kn_tensor *kn_full(const int64_t *shape, int ndim, double value, kn_dtype dtype)
{
    kn_tensor *t = kn__empty_raw(shape, ndim, dtype, kn_cpu());
    if (!t) return NULL;
    int64_t n = kn_numel(t);
    if (dtype == KN_INT64) {
        int64_t *p = t->storage->data;
        for (int64_t i = 0; i < n; i++) p[i] = (int64_t)value;
    } else if (value == 0.0) {
        memset(t->storage->data, 0, (size_t)n * sizeof(float));
    } else {
        float *p = t->storage->data;
        for (int64_t i = 0; i < n; i++) p[i] = (float)value;
    }
    return kn__result(t);
}

kn_tensor *kn_zeros(const int64_t *shape, int ndim, kn_dtype dtype)
{
    return kn_full(shape, ndim, 0.0, dtype);
}

kn_tensor *kn_ones(const int64_t *shape, int ndim, kn_dtype dtype)
{
    return kn_full(shape, ndim, 1.0, dtype);
}

kn_tensor *kn_scalar(float value)
{
    return kn_full(NULL, 0, value, KN_FLOAT32);
}

kn_tensor *kn_arange(int64_t n)
{
    if (n < 0)
        return kn__error_null(KN_ERR_VALUE, "arange: n must be >= 0, got %lld", (long long)n);
    kn_tensor *t = kn__empty_raw(&n, 1, KN_INT64, kn_cpu());
    if (!t) return NULL;
    int64_t *p = t->storage->data;
    for (int64_t i = 0; i < n; i++) p[i] = i;
    return kn__result(t);
}

kn_tensor *kn_from_floats(const float *data, const int64_t *shape, int ndim)
{
    kn_tensor *t = kn__empty_raw(shape, ndim, KN_FLOAT32, kn_cpu());
    if (!t) return NULL;
    if (kn_numel(t)) memcpy(t->storage->data, data, (size_t)kn_numel(t) * sizeof(float));
    return kn__result(t);
}

kn_tensor *kn_from_int64s(const int64_t *data, const int64_t *shape, int ndim)
{
    kn_tensor *t = kn__empty_raw(shape, ndim, KN_INT64, kn_cpu());
    if (!t) return NULL;
    if (kn_numel(t)) memcpy(t->storage->data, data, (size_t)kn_numel(t) * sizeof(int64_t));
    return kn__result(t);
}

kn_tensor *kn_empty_like(const kn_tensor *t)
{
    if (!t) return NULL;
    return kn__result(kn__empty_raw(t->shape, t->ndim, t->dtype, t->device));
}

/* A tensor like t (shape, dtype, device) filled with value. */
static kn_tensor *full_like(const kn_tensor *t, double value)
{
    if (!t) return NULL;
    if (t->device.type == KN_DEVICE_CPU) return kn_full(t->shape, t->ndim, value, t->dtype);
    kn_tensor *out = kn__empty_raw(t->shape, t->ndim, t->dtype, t->device);
    if (!out) return NULL;
    float f = (float)value;
    int64_t i = (int64_t)value;
    if (kn__kernel_fill(out->device, out->shape, out->ndim, kn_dtype_size(out->dtype),
                        kn__operand(out),
                        t->dtype == KN_INT64 ? (void *)&i : (void *)&f) != KN_OK) {
        kn_release(out);
        return NULL;
    }
    return kn__result(out);
}

kn_tensor *kn_zeros_like(const kn_tensor *t)
{
    return full_like(t, 0.0);
}

kn_tensor *kn_ones_like(const kn_tensor *t)
{
    return full_like(t, 1.0);
}

/* ---- element access --------------------------------------------------------------- */

static bool check_cpu_data(const char *op, const kn_tensor *t)
{
    if (t->device.type == KN_DEVICE_CPU) return true;
    char name[32];
    kn__error(KN_ERR_DEVICE,
              "%s: tensor of shape %s is on %s; its data is not addressable from the cpu "
              "(copy it with kn_to(t, kn_cpu()) first)",
              op, kn__shape(t), kn_device_str(t->device, name, sizeof name));
    return false;
}

float *kn_data_f32(kn_tensor *t)
{
    if (!t) return NULL;
    if (t->dtype != KN_FLOAT32)
        return kn__error_null(KN_ERR_DTYPE, "data_f32: tensor is %s, expected float32",
                              kn_dtype_name(t->dtype));
    if (!check_cpu_data("data_f32", t)) return NULL;
    return kn__data_ptr(t);
}

int64_t *kn_data_i64(kn_tensor *t)
{
    if (!t) return NULL;
    if (t->dtype != KN_INT64)
        return kn__error_null(KN_ERR_DTYPE, "data_i64: tensor is %s, expected int64",
                              kn_dtype_name(t->dtype));
    if (!check_cpu_data("data_i64", t)) return NULL;
    return kn__data_ptr(t);
}

double kn_get(const kn_tensor *t, const int64_t *index)
{
    if (!t) return NAN;
    int64_t offset = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (index[i] < 0 || index[i] >= t->shape[i]) {
            kn__error(KN_ERR_VALUE, "get: index %lld is out of range for dim %d of shape %s",
                      (long long)index[i], i, kn__shape(t));
            return NAN;
        }
        offset += index[i] * t->strides[i];
    }
    if (t->device.type != KN_DEVICE_CPU) { /* one element through the host */
        union {
            float f;
            int64_t i;
        } value;
        if (kn__copy_to_host(t, offset, &value, kn_dtype_size(t->dtype)) != KN_OK) return NAN;
        return t->dtype == KN_INT64 ? (double)value.i : value.f;
    }
    if (t->dtype == KN_INT64) return (double)((const int64_t *)kn__data_ptr(t))[offset];
    return ((const float *)kn__data_ptr(t))[offset];
}

float kn_item(const kn_tensor *t)
{
    if (!t) return NAN;
    if (kn_numel(t) != 1) {
        kn__error(KN_ERR_SHAPE,
                  "item: a tensor with %lld elements (shape %s) cannot be converted to a scalar",
                  (long long)kn_numel(t), kn__shape(t));
        return NAN;
    }
    int64_t zeros[KN_MAX_DIMS] = {0};
    return (float)kn_get(t, zeros);
}

int64_t kn_item_i64(const kn_tensor *t)
{
    if (!t || kn_numel(t) != 1) {
        kn_item(t);
        return 0;
    }
    int64_t zeros[KN_MAX_DIMS] = {0};
    if (t->dtype == KN_INT64 && t->device.type != KN_DEVICE_CPU) {
        int64_t value = 0;
        kn__copy_to_host(t, 0, &value, sizeof value);
        return value;
    }
    if (t->dtype == KN_INT64) return ((const int64_t *)kn__data_ptr(t))[0];
    return (int64_t)kn_get(t, zeros);
}

static kn_status copy_out(const kn_tensor *t, void *dst, kn_dtype want, const char *op)
{
    if (!t) return kn__error(KN_ERR_NULL, "%s: tensor is NULL", op);
    if (t->dtype != want)
        return kn__error(KN_ERR_DTYPE, "%s: tensor is %s, expected %s", op, kn_dtype_name(t->dtype),
                         kn_dtype_name(want));
    if (t->device.type != KN_DEVICE_CPU) { /* contiguous on the device, then one copy */
        kn_tensor *c = kn__contiguous_raw((kn_tensor *)t);
        if (!c) return kn_last_status();
        kn_status status =
            kn__copy_to_host(c, 0, dst, (size_t)kn_numel(t) * kn_dtype_size(t->dtype));
        kn_release(c);
        return status;
    }
    kn_cpu_operand out = {dst, {0}};
    kn__contiguous_strides(t->shape, t->ndim, out.strides);
    kn_cpu_copy(t->shape, t->ndim, kn_dtype_size(want), out, kn__operand(t));
    return KN_OK;
}

kn_status kn_copy_to_floats(const kn_tensor *t, float *dst)
{
    return copy_out(t, dst, KN_FLOAT32, "copy_to_floats");
}

kn_status kn_copy_to_int64s(const kn_tensor *t, int64_t *dst)
{
    return copy_out(t, dst, KN_INT64, "copy_to_int64s");
}

/* ---- checks ------------------------------------------------------------------------ */

bool kn__check_inputs(const char *op, kn_tensor *const *inputs, int n)
{
    const kn_tensor *first = NULL;
    int first_index = 0;
    for (int i = 0; i < n; i++) {
        if (!inputs[i]) {
            /* Keep the message of the error that produced the NULL, if any. */
            if (kn_last_status() == KN_OK) kn__error(KN_ERR_NULL, "%s: input %d is NULL", op, i);
            return false;
        }
        if (!first) {
            first = inputs[i];
            first_index = i;
        } else if (!kn_device_equal(first->device, inputs[i]->device)) {
            char a[32], b[32];
            kn__error(
                KN_ERR_DEVICE,
                "%s: expected all tensors on one device, got input %d on %s and input %d on %s", op,
                first_index, kn_device_str(first->device, a, sizeof a), i,
                kn_device_str(inputs[i]->device, b, sizeof b));
            return false;
        }
    }
    return true;
}

bool kn__check_float(const char *op, const kn_tensor *t)
{
    if (t->dtype == KN_FLOAT32) return true;
    kn__error(KN_ERR_DTYPE, "%s: expected a float32 tensor, got %s of shape %s", op,
              kn_dtype_name(t->dtype), kn__shape(t));
    return false;
}

bool kn__check_int64(const char *op, const kn_tensor *t, const char *what)
{
    if (t->dtype == KN_INT64) return true;
    kn__error(KN_ERR_DTYPE, "%s: expected %s to be an int64 tensor, got %s of shape %s", op, what,
              kn_dtype_name(t->dtype), kn__shape(t));
    return false;
}

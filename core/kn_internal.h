/*
 * kn_internal.h — what the engine's own files share and users never see: storage,
 * graph nodes, the helpers every op uses to check its inputs, make its output and
 * record itself for backward.
 *
 * How an op is written (see ops_unary.c for the pattern):
 *   1. check inputs with the kn__check_* helpers (they set the error message),
 *   2. make the output with kn__empty_raw (not registered with any scope yet),
 *   3. compute it with a kernel from kernels/cpu,
 *   4. if kn__needs_grad(inputs), make a node (kn__node_new), save what backward needs
 *      (kn__node_save) and attach it (kn__node_attach),
 *   5. return kn__result(out), which hands the reference to the innermost scope.
 * A backward function receives grad_output and writes grad_inputs[i] for each input i
 * with node->inputs[i].needs_grad. It runs inside a scope and with grad mode off, so it
 * may use the public ops freely; the engine reduces broadcast gradients to each input's
 * shape itself.
 */
#ifndef KN_INTERNAL_H
#define KN_INTERNAL_H

#include "kn.h"
#include "../kernels/cpu/kn_cpu.h"

#include <stdarg.h>

struct kn_storage {
    void *data;
    size_t nbytes;
    int refcount;
    kn_device device;
};

typedef struct kn_node_input {
    kn_node *node;   /* the input's grad_fn (one reference), or NULL */
    kn_tensor *leaf; /* the input itself when it is a leaf requiring grad (one reference) */
    bool needs_grad;
    kn_dtype dtype;
    int ndim;
    int64_t shape[KN_MAX_DIMS];
} kn_node_input;

typedef kn_status (*kn_backward_fn)(kn_node *node, kn_tensor *grad_output, kn_tensor **grad_inputs);

#define KN_NODE_MAX_SAVED 8
#define KN_NODE_MAX_ARGS 16

struct kn_node {
    int refcount;
    const char *name; /* the op, for error messages: "mul", "conv2d", ... */
    kn_backward_fn backward;
    int n_inputs;
    kn_node_input *inputs;
    int n_saved;
    kn_tensor *saved[KN_NODE_MAX_SAVED]; /* detached handles, released after backward */
    bool saved_freed;                    /* backward ran without retain_graph */
    int64_t iargs[KN_NODE_MAX_ARGS];     /* op parameters: dims, strides, ... */
    double fargs[KN_NODE_MAX_ARGS];      /* op parameters: scalars */
    void *extra;                         /* op-owned data freed with extra_free */
    void (*extra_free)(void *extra);
    kn_tensor *retain_target; /* weak: the output when it retains its grad */
    /* backward bookkeeping */
    int64_t out_shape[KN_MAX_DIMS];
    int out_ndim;
    kn_dtype out_dtype;
    kn_tensor *pending_grad;
    int dependencies;
    uint64_t visit_mark;
};

/* ---- errors ---------------------------------------------------------------------- */
/* Sets the thread-local error (printf-style) and returns status. */
kn_status kn__error(kn_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, returning NULL for use in `return kn__error_null(...)`. */
void *kn__error_null(kn_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Formats a tensor's shape into a per-thread rotating buffer (valid for a few calls). */
const char *kn__shape(const kn_tensor *t);
const char *kn__shape_of(const int64_t *shape, int ndim);

/* ---- memory ---------------------------------------------------------------------- */
void *kn__alloc(size_t nbytes); /* caching; 64-byte aligned; NULL on failure */
void kn__free(void *ptr, size_t nbytes);
kn_storage *kn__storage_new(size_t nbytes, kn_device device); /* refcount 1 */
void kn__storage_release(kn_storage *s);

/* ---- tensors --------------------------------------------------------------------- */
/* A new contiguous tensor that is not registered with a scope (refcount 1). */
kn_tensor *kn__empty_raw(const int64_t *shape, int ndim, kn_dtype dtype, kn_device device);
/* One reference, not registered with a scope, to a contiguous tensor with t's values:
 * t itself (retained) when it is already contiguous, else a copy (any dtype). NULL
 * (error set) on failure or when t is NULL. */
kn_tensor *kn__contiguous_raw(kn_tensor *t);
/* Same, but always a new copy, even of a contiguous t: its strides are then exactly
 * kn__contiguous_strides, which kn_is_contiguous does not promise (size-1 and empty
 * dims may have any stride), for callers that check the layout itself (BLAS). */
kn_tensor *kn__copy_raw(kn_tensor *t);
/* t as a kernel operand: its first element and its own strides. */
kn_cpu_operand kn__operand(const kn_tensor *t);
/* A new handle on t's storage with the given geometry, no history, unregistered. */
kn_tensor *kn__view_raw(kn_tensor *t, const int64_t *shape, const int64_t *strides, int ndim,
                        int64_t offset);
/* Hands out's reference to the innermost scope, if any. Returns out. NULL-safe. */
kn_tensor *kn__result(kn_tensor *out);
/* Whether t's one reference is the innermost scope's and no other handle shares its
 * storage: nothing but that scope can see t or its memory, so a caller may keep t
 * (retain it) instead of copying it before the scope ends. */
bool kn__scope_owns_alone(const kn_tensor *t);
void kn__contiguous_strides(const int64_t *shape, int ndim, int64_t *strides);
void *kn__data_ptr(const kn_tensor *t); /* address of the first element */
/* Normalises a possibly negative dim for a tensor of rank ndim; error names op. */
bool kn__wrap_dim(int *dim, int ndim, const char *op);
bool kn__same_shape(const kn_tensor *a, const kn_tensor *b);

/* ---- checks (set the error and return false) ------------------------------------- */
/* Non-NULL and all on one device (errors name both devices). Every op has a CPU and a
 * CUDA path; an unavailable device is reported by the dispatch (kn__kernel_* below). */
bool kn__check_inputs(const char *op, kn_tensor *const *inputs, int n);
bool kn__check_float(const char *op, const kn_tensor *t);
bool kn__check_int64(const char *op, const kn_tensor *t, const char *what);
/* Broadcast shape of a and b into out/out_ndim; error names both shapes. */
bool kn__broadcast_shapes(const char *op, const int64_t *a, int a_ndim, const int64_t *b,
                          int b_ndim, int64_t *out, int *out_ndim);

/* ---- modules (nn.c) ---------------------------------------------------------------- */
/* The checks kn_module_load_state_dict makes, loading nothing: KN_OK, or the error the
 * load would give. checkpoint.c checks a checkpoint's model entries with it before it
 * changes anything. */
struct kn_module;
struct kn_named_tensor;
kn_status kn__module_check_state_dict(const struct kn_module *m,
                                      const struct kn_named_tensor *entries, int count,
                                      bool strict);

/* ---- devices (device.c) ------------------------------------------------------------ */
/* Device memory from the CUDA module's caching allocator; NULL with the error set. */
void *kn__device_alloc(kn_device device, size_t nbytes);
void kn__device_free(kn_device device, void *ptr, size_t nbytes);
/* The elementwise kernels on the CPU or on a CUDA device; an error (set) when the device
 * is not available or the kernel fails. Operands point into memory on that device. */
kn_status kn__kernel_binary(kn_device device, kn_binary_op op, const int64_t *shape, int ndim,
                            kn_cpu_operand out, kn_cpu_operand a, kn_cpu_operand b, float alpha,
                            float beta);
kn_status kn__kernel_unary(kn_device device, kn_unary_op op, const int64_t *shape, int ndim,
                           kn_cpu_operand out, kn_cpu_operand a, float alpha, float beta);
kn_status kn__kernel_copy(kn_device device, const int64_t *shape, int ndim, size_t elem_size,
                          kn_cpu_operand out, kn_cpu_operand in);
/* out = *value (elem_size bytes read from host memory) everywhere. */
kn_status kn__kernel_fill(kn_device device, const int64_t *shape, int ndim, size_t elem_size,
                          kn_cpu_operand out, const void *value);
/* Row-major batched SGEMM on a CUDA device (cuBLAS), TF32 when the thread allows it. */
kn_status kn__kernel_sgemm(kn_device device, bool trans_a, bool trans_b, int64_t m, int64_t n,
                           int64_t k, float alpha, const float *a, int64_t lda, int64_t stride_a,
                           const float *b, int64_t ldb, int64_t stride_b, float beta, float *c,
                           int64_t ldc, int64_t stride_c, int64_t batch);
/* kn_linear on a CUDA device (ops_linear_cuda.c), inputs already checked; the result
 * belongs to the open scope, NULL with the error set. */
kn_tensor *kn__linear_cuda(kn_tensor *x, kn_tensor *weight, kn_tensor *bias);
/* relu(conv2d(x, w, b)), then max_pool2d(., *pool) unless pool is NULL, as one op where
 * the convolution takes the CPU's direct kernels and the pool is 2x2 (ops_conv.c), else
 * the ops one by one; the same values and gradients either way. _fusable: whether it
 * fuses (no error set). For Sequential, which sees the layers that follow each other. */
kn_tensor *kn__conv2d_relu_pool(kn_tensor *x, kn_tensor *weight, kn_tensor *bias,
                                kn_conv2d_args args, const kn_pool2d_args *pool);
bool kn__conv2d_relu_pool_fusable(kn_tensor *x, kn_tensor *weight, kn_tensor *bias,
                                  kn_conv2d_args args, const kn_pool2d_args *pool);
/* nbytes from a CUDA tensor's storage, starting at its element `element`, to host dst. */
kn_status kn__copy_to_host(const kn_tensor *t, int64_t element, void *dst, size_t nbytes);
/* kn__sum_to_shape for a gradient on a CUDA device. */
kn_tensor *kn__device_sum_to_shape(kn_tensor *grad, const int64_t *shape, int ndim);

/* ---- autograd -------------------------------------------------------------------- */
bool kn__needs_grad(kn_tensor *const *inputs, int n);
/* A node for an op over inputs (refcount 1). Records which inputs need grad. */
kn_node *kn__node_new(const char *name, kn_backward_fn backward, kn_tensor *const *inputs,
                      int n_inputs);
/* Saves a detached handle of t (NULL allowed: saves NULL). */
void kn__node_save(kn_node *node, kn_tensor *t);
/* out->grad_fn = node (takes the node's reference), out->requires_grad = true. */
void kn__node_attach(kn_tensor *out, kn_node *node);
void kn__node_release(kn_node *node);
/* Sums grad over broadcast dims so it has the given shape (used by the engine). */
kn_tensor *kn__sum_to_shape(kn_tensor *grad, const int64_t *shape, int ndim);

/* ---- int64 operands (ops/ops_dtype.c; sequence layers, issue 12) -------------------- */
/* The binary op op (ADD, SUB, MUL, DIV, EQ, GT, LT) on operands of which one or both are
 * int64, with torch's promotion (see kn_to_dtype in kn.h); name is the public op's. */
kn_tensor *kn__int64_binary(const char *name, kn_binary_op op, kn_tensor *a, kn_tensor *b);
/* An observer of the backward passes of this thread (dist_ddp.c: the all-reduce of
 * gradients in buckets as they become ready). leaf_ready is called once per leaf of the
 * graph, as soon as every node that feeds its .grad has run (the leaf may have no .grad
 * when no gradient reached it); after_node after each node. A non-OK return stops the
 * backward with that status. NULL: no observer (the default; nothing is counted). */
typedef struct kn__backward_hooks {
    void *context;
    kn_status (*leaf_ready)(void *context, kn_tensor *leaf);
    kn_status (*after_node)(void *context);
} kn__backward_hooks;
void kn__set_backward_hooks(const kn__backward_hooks *hooks); /* borrowed until unset */

/* Synchronised batch norm (dist_ddp.c, "sync_batch_norm"): while set on a thread, batch
 * norm in training mode there combines its per-channel statistics with every rank's
 * (count, mean and biased variance in, the global ones out), and its backward the sums
 * of the gradient (sum of dy and of dy * (x - mean), this rank's in, everyone's out). */
typedef struct kn__bn_sync {
    void *context;
    kn_status (*stats)(void *context, int64_t channels, double *count, double *mean, double *var);
    kn_status (*grad_sums)(void *context, int64_t channels, double *sum_dy, double *sum_dyx);
} kn__bn_sync;
void kn__set_bn_sync(const kn__bn_sync *sync); /* borrowed until unset; NULL: off */

/* ---- thread-local grad mode ------------------------------------------------------ */
extern _Thread_local int kn__no_grad_depth;

/* Per-thread engine buffers (scopes, the autograd release stack) are freed at thread
 * exit once registered (tensor.c). */
void kn__register_thread_buffers(void);
void kn__autograd_free_thread_buffers(void);

#endif

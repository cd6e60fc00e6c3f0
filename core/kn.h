/*
 * kn.h — the public C API of Kiln's engine: tensors, define-by-run autograd and ops.
 *
 * PyTorch users should feel at home: a kn_tensor has a shape, strides, a dtype and a
 * device; ops record a graph when an input requires grad; kn_backward() fills .grad.
 *
 * Ownership (the one rule to remember):
 *   Every function that returns a kn_tensor * hands out ONE reference.
 *   - While a scope is open (kn_scope_begin), that reference belongs to the innermost
 *     scope and is dropped by kn_scope_end(); chained expressions such as
 *     kn_sum_all(kn_mul(kn_add(a, b), c)) therefore leak nothing.
 *   - With no scope open, the caller owns it and calls kn_release().
 *   - kn_retain() keeps a tensor alive past its scope (you then own that reference);
 *     kn_scope_escape(t) ends the innermost scope and hands t to the enclosing one.
 *   Inputs are borrowed: ops never take ownership of their arguments.
 *
 * Errors are values: on failure a function returns NULL (or a non-zero kn_status) and
 * kn_last_error() gives a thread-local message naming the shapes or values involved.
 * Every op returns NULL without touching the message when one of its inputs is NULL,
 * so the first error of a chained expression is the one reported.
 */
#ifndef KN_H
#define KN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KN_MAX_DIMS 8
#define KN_VERSION "0.1.0"

typedef enum { KN_FLOAT32 = 0, KN_INT64 = 1 } kn_dtype;

typedef enum { KN_DEVICE_CPU = 0, KN_DEVICE_CUDA = 1 } kn_device_type;

typedef struct kn_device {
    kn_device_type type;
    int index; /* CUDA ordinal; 0 for the CPU */
} kn_device;

typedef enum {
    KN_OK = 0,
    KN_ERR_NULL,     /* a NULL argument (usually an earlier error in a chain) */
    KN_ERR_SHAPE,    /* shapes that do not fit the op */
    KN_ERR_DIM,      /* a dimension index out of range */
    KN_ERR_DTYPE,    /* an unsupported or mismatched dtype */
    KN_ERR_DEVICE,   /* tensors on different devices, or an unavailable device */
    KN_ERR_VALUE,    /* an argument value out of range */
    KN_ERR_MEMORY,   /* an allocation failed */
    KN_ERR_AUTOGRAD, /* misuse of autograd (freed graph, no grad_fn, ...) */
} kn_status;

typedef struct kn_storage kn_storage;
typedef struct kn_node kn_node;

/*
 * A tensor handle. Fields are readable; change them only through the API.
 * Views (reshape, permute, narrow, expand, ...) are new handles on the same storage.
 */
typedef struct kn_tensor {
    int64_t shape[KN_MAX_DIMS];
    int64_t strides[KN_MAX_DIMS]; /* in elements */
    int ndim;
    kn_dtype dtype;
    kn_device device;
    int64_t offset; /* first element, in elements from the start of storage */
    kn_storage *storage;
    bool requires_grad;
    bool retains_grad;      /* non-leaf that keeps its .grad (kn_retain_grad) */
    struct kn_tensor *grad; /* accumulated gradient, or NULL; owned by the tensor */
    kn_node *grad_fn;       /* the op that made this tensor, NULL for leaves */
    int refcount;
} kn_tensor;

/* ---- errors ---------------------------------------------------------------------- */
const char *kn_last_error(void); /* thread-local; "" when none */
kn_status kn_last_status(void);
void kn_clear_error(void);

/* ---- shapes ---------------------------------------------------------------------- */
/* KN_SHAPE(2, 3) expands to the two arguments `shape, ndim` of a 2x3 shape. */
#define KN_SHAPE(...)                                                                              \
    (const int64_t[]){__VA_ARGS__}, (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t))
/* KN_DIMS(0, 2) expands to `dims, ndims` for the reduction ops. */
#define KN_DIMS(...)                                                                               \
    (const int[]){__VA_ARGS__}, (int)(sizeof((const int[]){__VA_ARGS__}) / sizeof(int))

int64_t kn_numel(const kn_tensor *t);
bool kn_is_contiguous(const kn_tensor *t);
size_t kn_dtype_size(kn_dtype dtype);
const char *kn_dtype_name(kn_dtype dtype); /* "float32", "int64" */
/* Writes "[2, 3]" into buf (always NUL-terminated); returns buf. */
char *kn_shape_str(const int64_t *shape, int ndim, char *buf, size_t size);

typedef struct kn_alloc_stats {
    uint64_t system_allocs; /* calls that reached the system allocator */
    uint64_t cache_hits;    /* allocations served from the cache */
    uint64_t bytes_in_use;
    uint64_t bytes_cached;
} kn_alloc_stats;

/* ---- devices --------------------------------------------------------------------- */
kn_device kn_cpu(void);
/* Parses "cpu", "cuda", "cuda:N". Returns KN_ERR_VALUE on anything else. */
kn_status kn_device_parse(const char *text, kn_device *out);
const char *kn_device_str(kn_device device, char *buf, size_t size);
bool kn_device_available(kn_device device);
bool kn_device_equal(kn_device a, kn_device b);
/* A tensor on `device`: t itself (a new reference) when already there, else a copy
 * (differentiable: the gradient goes back to t's device). */
kn_tensor *kn_to(kn_tensor *t, kn_device device);
/* CUDA devices usable now (0 without the CUDA module, a driver or a GPU). The module,
 * libkiln_cuda.so, is loaded on first use: $KILN_CUDA_MODULE, else next to the
 * executable, else the build folder. */
int kn_cuda_device_count(void);
/* Why CUDA is not available ("no CUDA device: ..."), or how many devices there are. */
const char *kn_cuda_status(void);
/* Waits for the work queued on a CUDA device (ops run asynchronously there). */
kn_status kn_cuda_synchronize(int device);
/* The device allocator's counters (system_allocs counts cudaMalloc calls). */
kn_status kn_cuda_get_alloc_stats(int device, kn_alloc_stats *out);
kn_status kn_cuda_empty_cache(void); /* cached device blocks back to CUDA */

/* ---- creation (all return one reference, see the ownership rule) ---------------- */
kn_tensor *kn_empty(const int64_t *shape, int ndim, kn_dtype dtype);
kn_tensor *kn_zeros(const int64_t *shape, int ndim, kn_dtype dtype);
kn_tensor *kn_ones(const int64_t *shape, int ndim, kn_dtype dtype);
kn_tensor *kn_full(const int64_t *shape, int ndim, double value, kn_dtype dtype);
kn_tensor *kn_scalar(float value);                                              /* 0-d float32 */
kn_tensor *kn_arange(int64_t n);                                                /* int64 0..n-1 */
kn_tensor *kn_from_floats(const float *data, const int64_t *shape, int ndim);   /* copies */
kn_tensor *kn_from_int64s(const int64_t *data, const int64_t *shape, int ndim); /* copies */
kn_tensor *kn_empty_like(const kn_tensor *t);
kn_tensor *kn_zeros_like(const kn_tensor *t);
kn_tensor *kn_ones_like(const kn_tensor *t);
kn_tensor *kn_clone(kn_tensor *t); /* contiguous copy, differentiable */

/* ---- lifetime -------------------------------------------------------------------- */
kn_tensor *kn_retain(kn_tensor *t); /* returns t; NULL-safe */
void kn_release(kn_tensor *t);      /* NULL-safe */
void kn_scope_begin(void);
void kn_scope_end(void);
/* Ends the innermost scope keeping t: t moves to the enclosing scope, or to the
 * caller when there is none. Returns t. */
kn_tensor *kn_scope_escape(kn_tensor *t);
/* Hands one reference the caller owns to the innermost scope (no-op without scope). */
kn_tensor *kn_autorelease(kn_tensor *t);
int kn_scope_depth(void);

/* ---- element access -------------------------------------------------------------- */
/* Pointers to the first element of a CPU tensor; NULL (error set) for other devices:
 * kn_to(t, kn_cpu()) first. The accessors below work on any device. */
float *kn_data_f32(kn_tensor *t);   /* pointer to the first element (CPU, float32) */
int64_t *kn_data_i64(kn_tensor *t); /* pointer to the first element (CPU, int64) */
float kn_item(const kn_tensor *t);  /* one-element tensor as float (int64 converted) */
int64_t kn_item_i64(const kn_tensor *t);
/* Value at a multi-index (honours strides); NAN / 0 on a bad index with an error set. */
double kn_get(const kn_tensor *t, const int64_t *index);
/* Copies the elements in logical (row-major) order into dst (numel floats). */
kn_status kn_copy_to_floats(const kn_tensor *t, float *dst);
kn_status kn_copy_to_int64s(const kn_tensor *t, int64_t *dst);

/* ---- printing (PyTorch's style) -------------------------------------------------- */
/* malloc'd string the caller frees with free(); NULL on failure. */
char *kn_to_string(const kn_tensor *t);
void kn_fprint(FILE *stream, const kn_tensor *t);
void kn_print(const kn_tensor *t);

/* ---- random ---------------------------------------------------------------------- */
typedef struct kn_generator kn_generator;
kn_generator *kn_generator_new(uint64_t seed); /* caller frees with kn_generator_free */
void kn_generator_free(kn_generator *gen);
kn_generator *kn_default_generator(void); /* process-wide, not thread-safe */
void kn_manual_seed(uint64_t seed);       /* seeds the default generator */
void kn_generator_seed(kn_generator *gen, uint64_t seed);
uint64_t kn_generator_initial_seed(const kn_generator *gen);
/* The state as bytes, for checkpoints: size first, then copy out / in. */
size_t kn_generator_state_size(void);
void kn_generator_get_state(const kn_generator *gen, void *buffer);
kn_status kn_generator_set_state(kn_generator *gen, const void *buffer, size_t size);
uint32_t kn_generator_next_u32(kn_generator *gen);
/* In-place fills (not recorded by autograd); gen NULL means the default generator. */
kn_status kn_uniform_(kn_tensor *t, double low, double high, kn_generator *gen);
kn_status kn_normal_(kn_tensor *t, double mean, double std, kn_generator *gen);
kn_status kn_bernoulli_(kn_tensor *t, double p, kn_generator *gen);
kn_tensor *kn_rand(const int64_t *shape, int ndim, kn_generator *gen);
kn_tensor *kn_randn(const int64_t *shape, int ndim, kn_generator *gen);
kn_tensor *kn_randperm(int64_t n, kn_generator *gen); /* int64 */

/* ---- autograd -------------------------------------------------------------------- */
/* Only leaves may change requires_grad (as in PyTorch). Returns t or NULL. */
kn_tensor *kn_set_requires_grad(kn_tensor *t, bool requires_grad);
bool kn_is_leaf(const kn_tensor *t);
kn_status kn_retain_grad(kn_tensor *t);
/* Backpropagates from t. grad may be NULL only for one-element t. Unless retain_graph,
 * the graph's saved tensors are freed and a second backward through it is an error. */
kn_status kn_backward(kn_tensor *t, kn_tensor *grad, bool retain_graph);
/* t->grad: a borrowed pointer (owned by t), NULL before any backward. */
kn_tensor *kn_grad(const kn_tensor *t);
void kn_zero_grad(kn_tensor *t);    /* drops .grad (PyTorch's set_to_none) */
kn_tensor *kn_detach(kn_tensor *t); /* shares storage, no history */
void kn_no_grad_begin(void);        /* nestable, thread-local */
void kn_no_grad_end(void);
bool kn_is_grad_enabled(void);

/* ---- views (share storage; differentiable) --------------------------------------- */
kn_tensor *kn_view(kn_tensor *t, const int64_t *shape, int ndim);    /* needs view-able strides */
kn_tensor *kn_reshape(kn_tensor *t, const int64_t *shape, int ndim); /* view or copy; -1 infers */
kn_tensor *kn_flatten(kn_tensor *t, int start_dim, int end_dim);
kn_tensor *kn_permute(kn_tensor *t, const int *dims, int ndims);
kn_tensor *kn_transpose(kn_tensor *t, int dim0, int dim1);
kn_tensor *kn_narrow(kn_tensor *t, int dim, int64_t start, int64_t length);
kn_tensor *kn_slice(kn_tensor *t, int dim, int64_t start, int64_t end, int64_t step);
kn_tensor *kn_select(kn_tensor *t, int dim, int64_t index);
kn_tensor *kn_expand(kn_tensor *t, const int64_t *shape, int ndim); /* -1 keeps a size */
kn_tensor *kn_squeeze(kn_tensor *t, int dim);
kn_tensor *kn_squeeze_all(kn_tensor *t);
kn_tensor *kn_unsqueeze(kn_tensor *t, int dim);
kn_tensor *kn_contiguous(kn_tensor *t); /* t itself (new reference) when contiguous */
kn_tensor *kn_cat(kn_tensor *const *tensors, int count, int dim);
kn_tensor *kn_stack(kn_tensor *const *tensors, int count, int dim);
kn_tensor *kn_index_select(kn_tensor *t, int dim, kn_tensor *index); /* index: 1-D int64 */
kn_tensor *kn_gather(kn_tensor *t, int dim, kn_tensor *index);       /* index: int64 */

/* ---- elementwise (broadcasting, differentiable) ---------------------------------- */
kn_tensor *kn_add(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_sub(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_mul(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_div(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_add_scalar(kn_tensor *a, double value);
kn_tensor *kn_mul_scalar(kn_tensor *a, double value);
kn_tensor *kn_neg(kn_tensor *a);
kn_tensor *kn_pow(kn_tensor *a, double exponent);
kn_tensor *kn_exp(kn_tensor *a);
kn_tensor *kn_log(kn_tensor *a);
kn_tensor *kn_sqrt(kn_tensor *a);
kn_tensor *kn_abs(kn_tensor *a);
kn_tensor *kn_clamp(kn_tensor *a, double min, double max); /* +-INFINITY for no bound */
/* cond: float32 or int64, non-zero selects a. Broadcasts all three. */
kn_tensor *kn_where(kn_tensor *cond, kn_tensor *a, kn_tensor *b);
/* Comparisons (no gradient): float32 0/1 results, broadcasting. */
kn_tensor *kn_eq(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_gt(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_lt(kn_tensor *a, kn_tensor *b);
/* In place, never recorded by autograd (for optimizers and accumulation):
 * dst += alpha * src, dst *= value, dst = value, dst = src (src broadcasts to dst). */
kn_status kn_add_(kn_tensor *dst, kn_tensor *src, double alpha);
kn_status kn_mul_scalar_(kn_tensor *dst, double value);
kn_status kn_fill_(kn_tensor *dst, double value);
kn_status kn_copy_(kn_tensor *dst, kn_tensor *src);

/* ---- activations ----------------------------------------------------------------- */
typedef enum { KN_GELU_EXACT = 0, KN_GELU_TANH = 1 } kn_gelu_approximation;
kn_tensor *kn_relu(kn_tensor *a);
kn_tensor *kn_leaky_relu(kn_tensor *a, double negative_slope);
kn_tensor *kn_gelu(kn_tensor *a, kn_gelu_approximation approximate);
kn_tensor *kn_tanh(kn_tensor *a);
kn_tensor *kn_sigmoid(kn_tensor *a);
kn_tensor *kn_silu(kn_tensor *a); /* x * sigmoid(x), torch.nn.functional.silu */
kn_tensor *kn_softmax(kn_tensor *a, int dim);
kn_tensor *kn_log_softmax(kn_tensor *a, int dim);

/* ---- reductions ------------------------------------------------------------------ */
/* ndims == 0 reduces over every dim (torch.sum(t)). Negative dims count from the end. */
kn_tensor *kn_sum(kn_tensor *a, const int *dims, int ndims, bool keepdim);
kn_tensor *kn_mean(kn_tensor *a, const int *dims, int ndims, bool keepdim);
/* correction 1 is the unbiased estimate (PyTorch's default), 0 the population one. */
kn_tensor *kn_var(kn_tensor *a, const int *dims, int ndims, int correction, bool keepdim);
kn_tensor *kn_sum_all(kn_tensor *a);
kn_tensor *kn_mean_all(kn_tensor *a);
/* Values along dim; *indices (may be NULL) receives an int64 tensor, one reference. */
kn_tensor *kn_max(kn_tensor *a, int dim, bool keepdim, kn_tensor **indices);
kn_tensor *kn_min(kn_tensor *a, int dim, bool keepdim, kn_tensor **indices);
kn_tensor *kn_max_all(kn_tensor *a);
kn_tensor *kn_min_all(kn_tensor *a);
kn_tensor *kn_argmax(kn_tensor *a, int dim, bool keepdim); /* int64 */

/* ---- linear algebra and layers --------------------------------------------------- */
kn_tensor *kn_matmul(kn_tensor *a, kn_tensor *b); /* torch.matmul: 1-D to batched N-D */
/* x [..., in] , weight [out, in], bias [out] or NULL -> [..., out] */
kn_tensor *kn_linear(kn_tensor *x, kn_tensor *weight, kn_tensor *bias);

/* Zero fields take PyTorch's defaults (stride 1, padding 0, dilation 1, groups 1). */
typedef struct kn_conv2d_args {
    int stride[2];
    int padding[2];
    int dilation[2];
    int groups;
} kn_conv2d_args;
/* x [N, C, H, W], weight [O, C/groups, kH, kW], bias [O] or NULL -> [N, O, H', W'] */
kn_tensor *kn_conv2d(kn_tensor *x, kn_tensor *weight, kn_tensor *bias, kn_conv2d_args args);

/* Zero stride means the kernel size; zero dilation means 1. */
typedef struct kn_pool2d_args {
    int kernel_size[2];
    int stride[2];
    int padding[2];
    int dilation[2]; /* max_pool2d only */
    bool ceil_mode;
    bool exclude_padding_from_count; /* avg_pool2d: count_include_pad=False */
} kn_pool2d_args;
kn_tensor *kn_max_pool2d(kn_tensor *x, kn_pool2d_args args);
kn_tensor *kn_avg_pool2d(kn_tensor *x, kn_pool2d_args args);

/* Zeroes elements with probability p and scales the rest by 1/(1-p) when training. */
kn_tensor *kn_dropout(kn_tensor *x, double p, bool training, kn_generator *gen);
/* weight [num, dim], indices int64 of any shape -> [..., dim] */
kn_tensor *kn_embedding(kn_tensor *weight, kn_tensor *indices);
/* Normalises over the last normalized_ndim dims; weight/bias may be NULL. */
kn_tensor *kn_layer_norm(kn_tensor *x, int normalized_ndim, kn_tensor *weight, kn_tensor *bias,
                         double eps);
/* x [N, C, ...]. In training, batch statistics are used and running_mean/var (if not
 * NULL) are updated in place with momentum, the variance unbiased, as PyTorch does. */
kn_tensor *kn_batch_norm(kn_tensor *x, kn_tensor *running_mean, kn_tensor *running_var,
                         kn_tensor *weight, kn_tensor *bias, bool training, double momentum,
                         double eps);

/* ---- losses ---------------------------------------------------------------------- */
typedef enum { KN_REDUCTION_MEAN = 0, KN_REDUCTION_SUM = 1, KN_REDUCTION_NONE = 2 } kn_reduction;
#define KN_DEFAULT_IGNORE_INDEX (-100)
kn_tensor *kn_mse_loss(kn_tensor *input, kn_tensor *target, kn_reduction reduction);
/* logits [N, C] or [N, C, d...], target int64 [N] or [N, d...] of class indices. */
kn_tensor *kn_cross_entropy(kn_tensor *logits, kn_tensor *target, kn_reduction reduction,
                            int64_t ignore_index, double label_smoothing);
kn_tensor *kn_nll_loss(kn_tensor *log_probs, kn_tensor *target, kn_reduction reduction,
                       int64_t ignore_index);
kn_tensor *kn_binary_cross_entropy_with_logits(kn_tensor *logits, kn_tensor *target,
                                               kn_reduction reduction);

/* ---- runtime --------------------------------------------------------------------- */
void kn_set_num_threads(int n); /* the engine's pool and OpenBLAS; <= 0 means all cores */
int kn_get_num_threads(void);
/* torch.backends.cuda.matmul.allow_tf32: whether the CUDA matrix products this thread
 * issues (matmul, linear, the convolution GEMMs) may round their fp32 inputs to TF32
 * on tensor cores (about 10 mantissa bits, much faster). Off by default. Per calling
 * thread, so each of kilnd's workers follows its own job; the CPU ignores it. */
void kn_set_allow_tf32(bool allow);
bool kn_get_allow_tf32(void);

kn_alloc_stats kn_get_alloc_stats(void);
void kn_empty_cache(void); /* returns cached blocks to the system */

/* ---- attention (issue 12: the attention family) ----------------------------------- */
/* What scaled_dot_product_attention may take besides q, k and v; {0} is torch's default
 * (no mask, no dropout, scale 1/sqrt(E)). */
typedef struct kn_attention_args {
    bool is_causal; /* query i sees keys j <= i + causal_offset */
    /* 0 is torch's is_causal (the triangle from the top left); S - L makes the queries
     * the last L positions of the keys' sequence, as when decoding against a key/value
     * cache of S - L positions */
    int64_t causal_offset;
    /* int64 [N, S] (N the batch dim of q): nonzero keys are ignored (torch's boolean
     * key_padding_mask, True = padding); NULL: none */
    kn_tensor *key_padding_mask;
    double dropout_p;        /* on the attention weights (applied whenever > 0) */
    kn_generator *generator; /* the dropout's; NULL: the default generator */
    double scale;            /* of q k^T; 0: 1/sqrt(E) */
} kn_attention_args;
/* torch.nn.functional.scaled_dot_product_attention (torch 2.x; torch 1.13 spells it out
 * as softmax(q k^T * scale + mask) v): q [N, H, L, E], k [N, H, S, E], v [N, H, S, Ev]
 * -> [N, H, L, Ev] (or the same without the head dim H). args may be NULL. Fused: the
 * forward and backward never hold more than a block of rows of the [L, S] weights, so
 * memory grows with L + S, not L * S. A query that sees no key at all (every key padded)
 * gets zeros where torch 1.13 gives NaN. Differentiable in q, k and v. */
kn_tensor *kn_scaled_dot_product_attention(kn_tensor *q, kn_tensor *k, kn_tensor *v,
                                           const kn_attention_args *args);
/* The same on the packed projection nn.MultiheadAttention makes for self-attention:
 * qkv [N, T, 3E] holds q, k and v side by side, each [N, T, num_heads, E / num_heads],
 * and the result is [N, T, E], the heads side by side, ready for out_proj. The kernel
 * reads the heads where they are and the backward writes one [N, T, 3E] gradient: no
 * copies either way. */
kn_tensor *kn_attention_qkv(kn_tensor *qkv, int64_t num_heads, const kn_attention_args *args);
/* ---- sequence layers and int64 data (issue 12) ------------------------------------- */
/* t as dtype (torch's Tensor.to(dtype)), on t's device: t itself (a new reference) when it
 * already has that dtype, else a new contiguous tensor. float32 to int64 truncates toward
 * zero as torch does; NaN and values beyond int64's range become INT64_MIN or INT64_MAX
 * (no error: torch gives the same on x86). Neither direction records a gradient (an
 * int64 tensor never requires one). */
kn_tensor *kn_to_dtype(kn_tensor *t, kn_dtype dtype);
/* int64 operands of kn_add, kn_sub, kn_mul, kn_div, kn_eq, kn_gt and kn_lt follow torch's
 * type promotion: two int64 tensors add, subtract and multiply in int64 (wrapping as
 * torch's do) and compare exactly (float32 0/1, as every comparison here); an int64 and
 * a float32 tensor compute in float32, the int64 one converted first; kn_div divides in
 * float32 (torch's true division). */
/* torch.nn.functional.elu: x where x > 0, alpha * (exp(x) - 1) elsewhere. */
kn_tensor *kn_elu(kn_tensor *a, double alpha);
/* Zero fields take PyTorch's defaults (stride 1, padding 0, dilation 1, groups 1). */
typedef struct kn_conv1d_args {
    int stride, padding, dilation, groups;
} kn_conv1d_args;
/* x [N, C, L] or [C, L], weight [O, C/groups, K], bias [O] or NULL -> [N, O, L'] (or
 * [O, L']), L' = floor((L + 2 padding - dilation (K - 1) - 1) / stride) + 1: torch's
 * F.conv1d, computed as a conv2d of height 1. */
kn_tensor *kn_conv1d(kn_tensor *x, kn_tensor *weight, kn_tensor *bias, kn_conv1d_args args);
/* torch's F.group_norm: x [N, C, *] normalised over each of num_groups groups of C /
 * num_groups channels (and the trailing dims) with the biased variance; then scaled by
 * weight [C] and shifted by bias [C] per channel (either may be NULL). */
kn_tensor *kn_group_norm(kn_tensor *x, int64_t num_groups, kn_tensor *weight, kn_tensor *bias,
                         double eps);
/* Cross-entropy (and NLL of log-probabilities) with the classes on the LAST dim, as a
 * language model's logits [N, T, V] against int64 targets [N, T]: nanoGPT's
 * F.cross_entropy(logits.view(-1, V), targets.view(-1)). logits [..., V], target [...]
 * (the logits' shape without the last dim; any rank, also [N, V] against [N]). Targets
 * equal to ignore_index count for nothing: the mean is over the others, and a batch of
 * nothing but ignored targets has a NaN mean (0 for sum), as in torch 1.13. reduction
 * none gives the target's shape. */
kn_tensor *kn_sequence_cross_entropy(kn_tensor *logits, kn_tensor *target, kn_reduction reduction,
                                     int64_t ignore_index, double label_smoothing);
kn_tensor *kn_sequence_nll_loss(kn_tensor *log_probs, kn_tensor *target, kn_reduction reduction,
                                int64_t ignore_index);

#ifdef __cplusplus
}
#endif
#endif

/* pending.c — TEMPORARY weak placeholders while the engine is being written; removed before landing. */
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include "kn_internal.h"
#include <math.h>
__attribute__((weak)) const char * kn_last_error(void) { kn__error(KN_ERR_VALUE, "kn_last_error: not implemented yet"); return NULL; }
__attribute__((weak)) kn_status kn_last_status(void) { return kn__error(KN_ERR_VALUE, "kn_last_status: not implemented yet"); }
__attribute__((weak)) void kn_clear_error(void) {  }
__attribute__((weak)) int64_t kn_numel(const kn_tensor *t) { return 0; }
__attribute__((weak)) bool kn_is_contiguous(const kn_tensor *t) { return 0; }
__attribute__((weak)) size_t kn_dtype_size(kn_dtype dtype) { return 0; }
__attribute__((weak)) const char * kn_dtype_name(kn_dtype dtype) { kn__error(KN_ERR_VALUE, "kn_dtype_name: not implemented yet"); return NULL; }
__attribute__((weak)) char * kn_shape_str(const int64_t *shape, int ndim, char *buf, size_t size) { kn__error(KN_ERR_VALUE, "kn_shape_str: not implemented yet"); return NULL; }
__attribute__((weak)) kn_device kn_cpu(void) { kn_device d={0,0}; return d; }
__attribute__((weak)) kn_status kn_device_parse(const char *text, kn_device *out) { return kn__error(KN_ERR_VALUE, "kn_device_parse: not implemented yet"); }
__attribute__((weak)) const char * kn_device_str(kn_device device, char *buf, size_t size) { kn__error(KN_ERR_VALUE, "kn_device_str: not implemented yet"); return NULL; }
__attribute__((weak)) bool kn_device_available(kn_device device) { return 0; }
__attribute__((weak)) bool kn_device_equal(kn_device a, kn_device b) { return 0; }
__attribute__((weak)) kn_tensor * kn_to(kn_tensor *t, kn_device device) { kn__error(KN_ERR_VALUE, "kn_to: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_empty(const int64_t *shape, int ndim, kn_dtype dtype) { kn__error(KN_ERR_VALUE, "kn_empty: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_zeros(const int64_t *shape, int ndim, kn_dtype dtype) { kn__error(KN_ERR_VALUE, "kn_zeros: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_ones(const int64_t *shape, int ndim, kn_dtype dtype) { kn__error(KN_ERR_VALUE, "kn_ones: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_full(const int64_t *shape, int ndim, double value, kn_dtype dtype) { kn__error(KN_ERR_VALUE, "kn_full: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_scalar(float value) { kn__error(KN_ERR_VALUE, "kn_scalar: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_arange(int64_t n) { kn__error(KN_ERR_VALUE, "kn_arange: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_from_floats(const float *data, const int64_t *shape, int ndim) { kn__error(KN_ERR_VALUE, "kn_from_floats: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_from_int64s(const int64_t *data, const int64_t *shape, int ndim) { kn__error(KN_ERR_VALUE, "kn_from_int64s: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_empty_like(const kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_empty_like: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_zeros_like(const kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_zeros_like: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_ones_like(const kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_ones_like: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_clone(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_clone: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_retain(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_retain: not implemented yet"); return NULL; }
__attribute__((weak)) void kn_release(kn_tensor *t) {  }
__attribute__((weak)) void kn_scope_begin(void) {  }
__attribute__((weak)) void kn_scope_end(void) {  }
__attribute__((weak)) kn_tensor * kn_scope_escape(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_scope_escape: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_autorelease(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_autorelease: not implemented yet"); return NULL; }
__attribute__((weak)) int kn_scope_depth(void) { return 0; }
__attribute__((weak)) float * kn_data_f32(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_data_f32: not implemented yet"); return NULL; }
__attribute__((weak)) int64_t * kn_data_i64(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_data_i64: not implemented yet"); return NULL; }
__attribute__((weak)) float kn_item(const kn_tensor *t) { return 0; }
__attribute__((weak)) int64_t kn_item_i64(const kn_tensor *t) { return 0; }
__attribute__((weak)) double kn_get(const kn_tensor *t, const int64_t *index) { return 0; }
__attribute__((weak)) kn_status kn_copy_to_floats(const kn_tensor *t, float *dst) { return kn__error(KN_ERR_VALUE, "kn_copy_to_floats: not implemented yet"); }
__attribute__((weak)) kn_status kn_copy_to_int64s(const kn_tensor *t, int64_t *dst) { return kn__error(KN_ERR_VALUE, "kn_copy_to_int64s: not implemented yet"); }
__attribute__((weak)) char * kn_to_string(const kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_to_string: not implemented yet"); return NULL; }
__attribute__((weak)) void kn_fprint(FILE *stream, const kn_tensor *t) {  }
__attribute__((weak)) void kn_print(const kn_tensor *t) {  }
__attribute__((weak)) kn_generator * kn_generator_new(uint64_t seed) { kn__error(KN_ERR_VALUE, "kn_generator_new: not implemented yet"); return NULL; }
__attribute__((weak)) void kn_generator_free(kn_generator *gen) {  }
__attribute__((weak)) kn_generator * kn_default_generator(void) { kn__error(KN_ERR_VALUE, "kn_default_generator: not implemented yet"); return NULL; }
__attribute__((weak)) void kn_manual_seed(uint64_t seed) {  }
__attribute__((weak)) void kn_generator_seed(kn_generator *gen, uint64_t seed) {  }
__attribute__((weak)) uint64_t kn_generator_initial_seed(const kn_generator *gen) { return 0; }
__attribute__((weak)) size_t kn_generator_state_size(void) { return 0; }
__attribute__((weak)) void kn_generator_get_state(const kn_generator *gen, void *buffer) {  }
__attribute__((weak)) kn_status kn_generator_set_state(kn_generator *gen, const void *buffer, size_t size) { return kn__error(KN_ERR_VALUE, "kn_generator_set_state: not implemented yet"); }
__attribute__((weak)) uint32_t kn_generator_next_u32(kn_generator *gen) { return 0; }
__attribute__((weak)) kn_status kn_uniform_(kn_tensor *t, double low, double high, kn_generator *gen) { return kn__error(KN_ERR_VALUE, "kn_uniform_: not implemented yet"); }
__attribute__((weak)) kn_status kn_normal_(kn_tensor *t, double mean, double std, kn_generator *gen) { return kn__error(KN_ERR_VALUE, "kn_normal_: not implemented yet"); }
__attribute__((weak)) kn_status kn_bernoulli_(kn_tensor *t, double p, kn_generator *gen) { return kn__error(KN_ERR_VALUE, "kn_bernoulli_: not implemented yet"); }
__attribute__((weak)) kn_tensor * kn_rand(const int64_t *shape, int ndim, kn_generator *gen) { kn__error(KN_ERR_VALUE, "kn_rand: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_randn(const int64_t *shape, int ndim, kn_generator *gen) { kn__error(KN_ERR_VALUE, "kn_randn: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_randperm(int64_t n, kn_generator *gen) { kn__error(KN_ERR_VALUE, "kn_randperm: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_set_requires_grad(kn_tensor *t, bool requires_grad) { kn__error(KN_ERR_VALUE, "kn_set_requires_grad: not implemented yet"); return NULL; }
__attribute__((weak)) bool kn_is_leaf(const kn_tensor *t) { return 0; }
__attribute__((weak)) kn_status kn_retain_grad(kn_tensor *t) { return kn__error(KN_ERR_VALUE, "kn_retain_grad: not implemented yet"); }
__attribute__((weak)) kn_status kn_backward(kn_tensor *t, kn_tensor *grad, bool retain_graph) { return kn__error(KN_ERR_VALUE, "kn_backward: not implemented yet"); }
__attribute__((weak)) kn_tensor * kn_grad(const kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_grad: not implemented yet"); return NULL; }
__attribute__((weak)) void kn_zero_grad(kn_tensor *t) {  }
__attribute__((weak)) kn_tensor * kn_detach(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_detach: not implemented yet"); return NULL; }
__attribute__((weak)) void kn_no_grad_begin(void) {  }
__attribute__((weak)) void kn_no_grad_end(void) {  }
__attribute__((weak)) bool kn_is_grad_enabled(void) { return 0; }
__attribute__((weak)) kn_tensor * kn_view(kn_tensor *t, const int64_t *shape, int ndim) { kn__error(KN_ERR_VALUE, "kn_view: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_reshape(kn_tensor *t, const int64_t *shape, int ndim) { kn__error(KN_ERR_VALUE, "kn_reshape: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_flatten(kn_tensor *t, int start_dim, int end_dim) { kn__error(KN_ERR_VALUE, "kn_flatten: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_permute(kn_tensor *t, const int *dims, int ndims) { kn__error(KN_ERR_VALUE, "kn_permute: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_transpose(kn_tensor *t, int dim0, int dim1) { kn__error(KN_ERR_VALUE, "kn_transpose: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_narrow(kn_tensor *t, int dim, int64_t start, int64_t length) { kn__error(KN_ERR_VALUE, "kn_narrow: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_slice(kn_tensor *t, int dim, int64_t start, int64_t end, int64_t step) { kn__error(KN_ERR_VALUE, "kn_slice: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_select(kn_tensor *t, int dim, int64_t index) { kn__error(KN_ERR_VALUE, "kn_select: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_expand(kn_tensor *t, const int64_t *shape, int ndim) { kn__error(KN_ERR_VALUE, "kn_expand: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_squeeze(kn_tensor *t, int dim) { kn__error(KN_ERR_VALUE, "kn_squeeze: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_squeeze_all(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_squeeze_all: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_unsqueeze(kn_tensor *t, int dim) { kn__error(KN_ERR_VALUE, "kn_unsqueeze: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_contiguous(kn_tensor *t) { kn__error(KN_ERR_VALUE, "kn_contiguous: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_cat(kn_tensor *const *tensors, int count, int dim) { kn__error(KN_ERR_VALUE, "kn_cat: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_stack(kn_tensor *const *tensors, int count, int dim) { kn__error(KN_ERR_VALUE, "kn_stack: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_index_select(kn_tensor *t, int dim, kn_tensor *index) { kn__error(KN_ERR_VALUE, "kn_index_select: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_gather(kn_tensor *t, int dim, kn_tensor *index) { kn__error(KN_ERR_VALUE, "kn_gather: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_add(kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_add: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_sub(kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_sub: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_mul(kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_mul: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_div(kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_div: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_add_scalar(kn_tensor *a, double value) { kn__error(KN_ERR_VALUE, "kn_add_scalar: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_mul_scalar(kn_tensor *a, double value) { kn__error(KN_ERR_VALUE, "kn_mul_scalar: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_neg(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_neg: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_pow(kn_tensor *a, double exponent) { kn__error(KN_ERR_VALUE, "kn_pow: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_exp(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_exp: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_log(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_log: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_sqrt(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_sqrt: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_abs(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_abs: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_clamp(kn_tensor *a, double min, double max) { kn__error(KN_ERR_VALUE, "kn_clamp: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_where(kn_tensor *cond, kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_where: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_eq(kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_eq: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_gt(kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_gt: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_lt(kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_lt: not implemented yet"); return NULL; }
__attribute__((weak)) kn_status kn_add_(kn_tensor *dst, kn_tensor *src, double alpha) { return kn__error(KN_ERR_VALUE, "kn_add_: not implemented yet"); }
__attribute__((weak)) kn_status kn_mul_scalar_(kn_tensor *dst, double value) { return kn__error(KN_ERR_VALUE, "kn_mul_scalar_: not implemented yet"); }
__attribute__((weak)) kn_status kn_fill_(kn_tensor *dst, double value) { return kn__error(KN_ERR_VALUE, "kn_fill_: not implemented yet"); }
__attribute__((weak)) kn_status kn_copy_(kn_tensor *dst, kn_tensor *src) { return kn__error(KN_ERR_VALUE, "kn_copy_: not implemented yet"); }
__attribute__((weak)) kn_tensor * kn_relu(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_relu: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_leaky_relu(kn_tensor *a, double negative_slope) { kn__error(KN_ERR_VALUE, "kn_leaky_relu: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_gelu(kn_tensor *a, kn_gelu_approximation approximate) { kn__error(KN_ERR_VALUE, "kn_gelu: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_tanh(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_tanh: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_sigmoid(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_sigmoid: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_softmax(kn_tensor *a, int dim) { kn__error(KN_ERR_VALUE, "kn_softmax: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_log_softmax(kn_tensor *a, int dim) { kn__error(KN_ERR_VALUE, "kn_log_softmax: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_sum(kn_tensor *a, const int *dims, int ndims, bool keepdim) { kn__error(KN_ERR_VALUE, "kn_sum: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_mean(kn_tensor *a, const int *dims, int ndims, bool keepdim) { kn__error(KN_ERR_VALUE, "kn_mean: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_var(kn_tensor *a, const int *dims, int ndims, int correction, bool keepdim) { kn__error(KN_ERR_VALUE, "kn_var: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_sum_all(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_sum_all: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_mean_all(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_mean_all: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_max(kn_tensor *a, int dim, bool keepdim, kn_tensor **indices) { kn__error(KN_ERR_VALUE, "kn_max: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_min(kn_tensor *a, int dim, bool keepdim, kn_tensor **indices) { kn__error(KN_ERR_VALUE, "kn_min: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_max_all(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_max_all: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_min_all(kn_tensor *a) { kn__error(KN_ERR_VALUE, "kn_min_all: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_argmax(kn_tensor *a, int dim, bool keepdim) { kn__error(KN_ERR_VALUE, "kn_argmax: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_matmul(kn_tensor *a, kn_tensor *b) { kn__error(KN_ERR_VALUE, "kn_matmul: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_linear(kn_tensor *x, kn_tensor *weight, kn_tensor *bias) { kn__error(KN_ERR_VALUE, "kn_linear: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_conv2d(kn_tensor *x, kn_tensor *weight, kn_tensor *bias, kn_conv2d_args args) { kn__error(KN_ERR_VALUE, "kn_conv2d: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_max_pool2d(kn_tensor *x, kn_pool2d_args args) { kn__error(KN_ERR_VALUE, "kn_max_pool2d: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_avg_pool2d(kn_tensor *x, kn_pool2d_args args) { kn__error(KN_ERR_VALUE, "kn_avg_pool2d: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_dropout(kn_tensor *x, double p, bool training, kn_generator *gen) { kn__error(KN_ERR_VALUE, "kn_dropout: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_embedding(kn_tensor *weight, kn_tensor *indices) { kn__error(KN_ERR_VALUE, "kn_embedding: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_layer_norm(kn_tensor *x, int normalized_ndim, kn_tensor *weight, kn_tensor *bias, double eps) { kn__error(KN_ERR_VALUE, "kn_layer_norm: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_batch_norm(kn_tensor *x, kn_tensor *running_mean, kn_tensor *running_var, kn_tensor *weight, kn_tensor *bias, bool training, double momentum, double eps) { kn__error(KN_ERR_VALUE, "kn_batch_norm: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_mse_loss(kn_tensor *input, kn_tensor *target, kn_reduction reduction) { kn__error(KN_ERR_VALUE, "kn_mse_loss: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_cross_entropy(kn_tensor *logits, kn_tensor *target, kn_reduction reduction, int64_t ignore_index, double label_smoothing) { kn__error(KN_ERR_VALUE, "kn_cross_entropy: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_nll_loss(kn_tensor *log_probs, kn_tensor *target, kn_reduction reduction, int64_t ignore_index) { kn__error(KN_ERR_VALUE, "kn_nll_loss: not implemented yet"); return NULL; }
__attribute__((weak)) kn_tensor * kn_binary_cross_entropy_with_logits(kn_tensor *logits, kn_tensor *target, kn_reduction reduction) { kn__error(KN_ERR_VALUE, "kn_binary_cross_entropy_with_logits: not implemented yet"); return NULL; }
__attribute__((weak)) void kn_set_num_threads(int n) {  }
__attribute__((weak)) int kn_get_num_threads(void) { return 0; }
__attribute__((weak)) kn_alloc_stats kn_get_alloc_stats(void) { kn_alloc_stats s={0}; return s; }
__attribute__((weak)) void kn_empty_cache(void) {  }

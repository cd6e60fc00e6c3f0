/*
 * kn_nn.h — modules in torch.nn's terms: layers that own their parameters and buffers,
 * register them under PyTorch's state_dict names ("0.weight", "3.running_mean"), are
 * initialised exactly as PyTorch initialises them, and switch between train and eval.
 *
 * Ownership: kn_*_new returns a module the caller owns and frees with kn_module_free
 * (NULL with kn_last_error() on bad arguments). A module owns one reference to each of
 * its parameters and buffers; kn_sequential_append takes ownership of the child.
 * kn_module_forward follows the engine's rule: its result belongs to the open scope.
 */
#ifndef KN_NN_H
#define KN_NN_H

#include "kn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KN_MODULE_SEQUENTIAL,
    KN_MODULE_LINEAR,
    KN_MODULE_CONV2D,
    KN_MODULE_MAX_POOL2D,
    KN_MODULE_AVG_POOL2D,
    KN_MODULE_ADAPTIVE_AVG_POOL2D,
    KN_MODULE_FLATTEN,
    KN_MODULE_RELU,
    KN_MODULE_LEAKY_RELU,
    KN_MODULE_GELU,
    KN_MODULE_TANH,
    KN_MODULE_SIGMOID,
    KN_MODULE_SOFTMAX,
    KN_MODULE_DROPOUT,
    KN_MODULE_BATCH_NORM1D,
    KN_MODULE_BATCH_NORM2D,
    KN_MODULE_LAYER_NORM,
    KN_MODULE_EMBEDDING,
} kn_module_kind;

/* parameters + buffers of one layer: BatchNorm has weight, bias, running_mean,
 * running_var and num_batches_tracked (an int64 scalar, as in PyTorch's state_dict) */
#define KN_MODULE_MAX_TENSORS 5

typedef struct kn_module kn_module;

/* A named tensor: a parameter or buffer seen from the root ("3.running_mean").
 * tensor is borrowed from the module. */
typedef struct kn_named_tensor {
    char name[96];
    kn_tensor *tensor;
    bool is_buffer; /* running stats: saved and loaded, never optimized */
} kn_named_tensor;

struct kn_module {
    kn_module_kind kind;
    const char *type_name; /* torch.nn's class name: "Linear", "Conv2d", ... */
    bool training;
    /* own tensors, in PyTorch's registration order (weight before bias) */
    int n_tensors;
    const char *tensor_names[KN_MODULE_MAX_TENSORS];
    kn_tensor *tensors[KN_MODULE_MAX_TENSORS];
    bool tensor_is_buffer[KN_MODULE_MAX_TENSORS];
    /* children (Sequential) */
    int n_children, children_capacity;
    kn_module **children;
    /* layer configuration */
    int64_t in_features, out_features; /* linear, conv channels, embedding sizes */
    kn_conv2d_args conv;
    int kernel_size[2];
    kn_pool2d_args pool;
    int output_size[2];          /* adaptive pool */
    int start_dim, end_dim, dim; /* flatten; softmax dim */
    double negative_slope, p, eps, momentum;
    kn_gelu_approximation approximate;
    int normalized_ndim;
    int64_t normalized_shape[KN_MAX_DIMS];
    bool has_bias, affine, track_running_stats;
    kn_generator *dropout_generator; /* borrowed; NULL = default generator */
};

/* ---- constructors (gen NULL means the default generator) ------------------------- */
kn_module *kn_sequential_new(void);
/* Appends child (the sequential takes ownership, also on failure). */
kn_status kn_sequential_append(kn_module *sequential, kn_module *child);
kn_module *kn_linear_new(int64_t in_features, int64_t out_features, bool bias, kn_generator *gen);
kn_module *kn_conv2d_new(int64_t in_channels, int64_t out_channels, const int kernel_size[2],
                         kn_conv2d_args args, bool bias, kn_generator *gen);
kn_module *kn_max_pool2d_new(kn_pool2d_args args);
kn_module *kn_avg_pool2d_new(kn_pool2d_args args);
kn_module *kn_adaptive_avg_pool2d_new(int output_height, int output_width);
kn_module *kn_flatten_new(int start_dim, int end_dim); /* torch default: 1, -1 */
kn_module *kn_relu_new(void);
kn_module *kn_leaky_relu_new(double negative_slope);
kn_module *kn_gelu_new(kn_gelu_approximation approximate);
kn_module *kn_tanh_new(void);
kn_module *kn_sigmoid_new(void);
kn_module *kn_softmax_new(int dim);
kn_module *kn_dropout_new(double p);
/* momentum < 0 stands for PyTorch's momentum=None (a cumulative average over the
 * batches seen). track_running_stats false registers no buffers, as in PyTorch, and
 * batch statistics are then used in eval mode too. BatchNorm1d takes [N, C] or
 * [N, C, L], BatchNorm2d [N, C, H, W]. */
kn_module *kn_batch_norm1d_new(int64_t num_features, double eps, double momentum, bool affine,
                               bool track_running_stats);
kn_module *kn_batch_norm2d_new(int64_t num_features, double eps, double momentum, bool affine,
                               bool track_running_stats);
kn_module *kn_layer_norm_new(const int64_t *normalized_shape, int ndim, double eps,
                             bool elementwise_affine);
kn_module *kn_embedding_new(int64_t num_embeddings, int64_t embedding_dim, kn_generator *gen);

void kn_module_free(kn_module *m); /* NULL-safe; frees children */
/* The spec's name of a kind: "linear", "conv2d", "max_pool2d", "batch_norm1d", ... */
const char *kn_module_kind_name(kn_module_kind kind);

/* ---- use ------------------------------------------------------------------------- */
kn_tensor *kn_module_forward(kn_module *m, kn_tensor *x);
void kn_module_train(kn_module *m, bool training); /* recursive, like module.train() */
/* The output shape for an input of in_shape (no batch dim), computed without running
 * the layers; an error names the layer index and the shapes (used by spec validation):
 * "layer 7 (linear): expects a 1-D input of 1568 features, got [32, 7, 7] — add a
 * flatten". Flatten/Softmax dims count the batch dim, as in torch. */
kn_status kn_module_output_shape(const kn_module *m, const int64_t *in_shape, int in_ndim,
                                 int64_t *out_shape, int *out_ndim);

/* ---- parameters and state -------------------------------------------------------- */
/* Every parameter (not buffers) in registration order; *count gets the number.
 * Returns a malloc'd array the caller frees with free(); tensors are borrowed. */
kn_named_tensor *kn_module_parameters(const kn_module *m, int *count);
/* Parameters and buffers, as PyTorch's state_dict(). Same ownership. */
kn_named_tensor *kn_module_state_dict(const kn_module *m, int *count);
int64_t kn_module_parameter_count(const kn_module *m);
void kn_module_zero_grad(kn_module *m);
/* Copies values in by name. strict: every state entry must be given and nothing else;
 * shapes must match; errors name the entry and both shapes. */
kn_status kn_module_load_state_dict(kn_module *m, const kn_named_tensor *entries, int count,
                                    bool strict);
/* Moves every parameter and buffer to device (in place, like module.to()). */
kn_status kn_module_to(kn_module *m, kn_device device);

/* PyTorch's repr, one line per layer ("  (0): Conv2d(1, 16, kernel_size=(3, 3), ..."),
 * malloc'd; caller frees. */
char *kn_module_describe(const kn_module *m);

/* ---- init, as torch.nn.init (in place, no grad) ---------------------------------- */
kn_status kn_init_kaiming_uniform_(kn_tensor *t, double a, kn_generator *gen);
kn_status kn_init_uniform_(kn_tensor *t, double low, double high, kn_generator *gen);
/* fan_in of a weight as PyTorch computes it (dim 1 times the receptive field). */
int64_t kn_init_fan_in(const kn_tensor *weight);

/* ---- an op needed by AdaptiveAvgPool2d ------------------------------------------- */
/* x [N, C, H, W] or [C, H, W]; output cell i averages rows floor(i*H/out) up to
 * ceil((i+1)*H/out) (and likewise for columns), as PyTorch does. Differentiable. */
kn_tensor *kn_adaptive_avg_pool2d(kn_tensor *x, int output_height, int output_width);

#ifdef __cplusplus
}
#endif
#endif

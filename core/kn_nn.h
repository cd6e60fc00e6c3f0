/*
 * kn_nn.h — modules in torch.nn's terms: layers that own their parameters and buffers,
 * register them under PyTorch's state_dict names ("0.weight", "3.running_mean"), are
 * initialised exactly as PyTorch initialises them, and switch between train and eval.
 *
 * Every kind of layer is one row of the layer table (kn_layer.h): its options, shape
 * rule, initialisation, forward and repr; the functions here dispatch through it.
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

/* The layer kinds, one line each: X(ID, name) gives KN_MODULE_<ID> and the row
 * kn__layer_<name> that defines the kind (core/nn/layer_*.c; see kn_layer.h). The
 * order is the spec's list of layer types. A new layer is a line here, its options
 * below when it takes arguments, and its row (docs/adding-a-layer.md). */
#define KN_LAYER_KINDS(X)                                                                          \
    X(SEQUENTIAL, sequential)                                                                      \
    X(LINEAR, linear)                                                                              \
    X(CONV2D, conv2d)                                                                              \
    X(MAX_POOL2D, max_pool2d)                                                                      \
    X(AVG_POOL2D, avg_pool2d)                                                                      \
    X(ADAPTIVE_AVG_POOL2D, adaptive_avg_pool2d)                                                    \
    X(FLATTEN, flatten)                                                                            \
    X(RELU, relu)                                                                                  \
    X(LEAKY_RELU, leaky_relu)                                                                      \
    X(GELU, gelu)                                                                                  \
    X(SILU, silu)                                                                                  \
    X(TANH, tanh)                                                                                  \
    X(SIGMOID, sigmoid)                                                                            \
    X(SOFTMAX, softmax)                                                                            \
    X(DROPOUT, dropout)                                                                            \
    X(BATCH_NORM1D, batch_norm1d)                                                                  \
    X(BATCH_NORM2D, batch_norm2d)                                                                  \
    X(LAYER_NORM, layer_norm)                                                                      \
    X(EMBEDDING, embedding)                                                                        \
    /* ---- rnn (issue 12) */                                                                      \
    X(LSTM, lstm)                                                                                  \
    X(GRU, gru)                                                                                    \
    /* ---- graph (issue 12): containers, then the structure nodes of graph specs */               \
    X(GRAPH, graph)                                                                                \
    X(MODULE, module)                                                                              \
    X(ADD, add)                                                                                    \
    X(MUL, mul)                                                                                    \
    X(CONCAT, concat)                                                                              \
    X(SPLIT, split)                                                                                \
    X(CHUNK, chunk)                                                                                \
    X(RESHAPE, reshape)                                                                            \
    X(PERMUTE, permute)                                                                            \
    X(TRANSPOSE, transpose)                                                                        \
    X(MATMUL, matmul)                                                                              \
    X(IDENTITY, identity)                                                                          \
    X(MEAN, mean)                                                                                  \
    X(SLICE, slice)                                                                                \
    X(SELECT, select)                                                                              \
    /* ---- attention (issue 12) ---- */                                                           \
    X(MULTI_HEAD_ATTENTION, multi_head_attention)                                                  \
    X(TRANSFORMER_ENCODER_LAYER, transformer_encoder_layer)                                        \
    /* ---- sequence layers (issue 12) ---- */                                                     \
    X(CONV1D, conv1d)                                                                              \
    X(ELU, elu)                                                                                    \
    X(LOG_SOFTMAX, log_softmax)                                                                    \
    X(GROUP_NORM, group_norm)                                                                      \
    X(POSITIONAL_EMBEDDING, positional_embedding)

#define KN__MODULE_KIND(id, name) KN_MODULE_##id,
typedef enum { KN_LAYER_KINDS(KN__MODULE_KIND) KN_MODULE_KIND_COUNT } kn_module_kind;
#undef KN__MODULE_KIND

/* ---- layer options: the constructor arguments of each torch.nn class, under torch's
 * names (as torch's C++ frontend has LinearOptions, Conv2dOptions). The layer table
 * describes each field (type, default, range) for the spec parser. ------------------ */

/* A short list of integers (normalized_shape): size[0..n). */
typedef struct kn_int_list {
    int64_t size[KN_MAX_DIMS];
    int n;
} kn_int_list;

typedef struct kn_linear_options {
    int64_t in_features, out_features;
    bool bias;
} kn_linear_options;

typedef struct kn_conv2d_options {
    int64_t in_channels, out_channels;
    int kernel_size[2], stride[2], padding[2], dilation[2];
    int64_t groups;
    bool bias;
} kn_conv2d_options;

typedef struct kn_max_pool2d_options {
    int kernel_size[2], stride[2], padding[2], dilation[2];
    bool ceil_mode;
} kn_max_pool2d_options;

typedef struct kn_avg_pool2d_options {
    int kernel_size[2], stride[2], padding[2];
    bool ceil_mode, count_include_pad;
} kn_avg_pool2d_options;

typedef struct kn_adaptive_avg_pool2d_options {
    int output_size[2];
} kn_adaptive_avg_pool2d_options;

typedef struct kn_flatten_options {
    int64_t start_dim, end_dim; /* counted with the batch dim, as torch counts them */
} kn_flatten_options;

typedef struct kn_activation_options {
    bool inplace; /* accepted for torch's sake; Kiln never computes in place */
} kn_activation_options;

typedef struct kn_leaky_relu_options {
    double negative_slope;
    bool inplace;
} kn_leaky_relu_options;

typedef struct kn_gelu_options {
    int approximate; /* a kn_gelu_approximation */
} kn_gelu_options;

typedef struct kn_softmax_options {
    int64_t dim; /* counted with the batch dim */
} kn_softmax_options;

typedef struct kn_dropout_options {
    double p;
    bool inplace;
} kn_dropout_options;

typedef struct kn_batch_norm_options {
    int64_t num_features;
    double eps, momentum; /* momentum < 0: PyTorch's None (a cumulative average) */
    bool affine, track_running_stats;
} kn_batch_norm_options;

typedef struct kn_layer_norm_options {
    kn_int_list normalized_shape;
    double eps;
    bool elementwise_affine;
} kn_layer_norm_options;

typedef struct kn_embedding_options {
    int64_t num_embeddings, embedding_dim;
} kn_embedding_options;

/* ---- rnn (issue 12) */
/* What a recurrent layer hands on: torch's output (every step's hidden state) or, for
 * sequence classification, the final hidden state of each direction. */
typedef enum { KN_RNN_OUTPUT_SEQUENCE = 0, KN_RNN_OUTPUT_LAST = 1 } kn_rnn_output;

typedef struct kn_rnn_options { /* nn.LSTM, nn.GRU */
    int64_t input_size, hidden_size, num_layers;
    bool bias;
    bool batch_first; /* Kiln's default is true: its data is [N, T, features] */
    double dropout;   /* between layers, in training */
    bool bidirectional;
    int output; /* a kn_rnn_output (Kiln's; torch has no such argument) */
} kn_rnn_options;
/* ---- graph (issue 12) ---- */
/* A container's class as its repr names it: "ModuleList", a block's name ("Block");
 * empty: "Module". */
typedef struct kn_container_options {
    char class_name[48];
} kn_container_options;

/* Dims here count the batch dim, as torch's do (dim 1 is a sequence's time dim in
 * [N, T, C]); the batch dim itself is never split, joined, moved or reduced. */
typedef struct kn_concat_options {
    int64_t dim;
} kn_concat_options;

typedef struct kn_split_options {
    kn_int_list split_size_or_sections; /* one size (the last part may be smaller) or sizes */
    int64_t dim;
} kn_split_options;

typedef struct kn_chunk_options {
    int64_t chunks, dim;
} kn_chunk_options;

typedef struct kn_reshape_options {
    kn_int_list shape; /* one sample's shape (no batch dim); one size may be -1 */
} kn_reshape_options;

typedef struct kn_permute_options {
    kn_int_list dims; /* of the batched input; dims[0] is 0 (the batch dim stays first) */
} kn_permute_options;

typedef struct kn_transpose_options {
    int64_t dim0, dim1;
} kn_transpose_options;

typedef struct kn_mean_options {
    kn_int_list dim;
    bool keepdim;
} kn_mean_options;

typedef struct kn_slice_options {
    int64_t dim, start, end, step; /* x[:, start:end:step] along dim, Python's bounds */
} kn_slice_options;

typedef struct kn_select_options {
    int64_t dim, index; /* x[:, index] along dim (the dim goes away) */
} kn_select_options;
/* ---- attention (issue 12) ---- */
typedef struct kn_multi_head_attention_options {
    int64_t embed_dim, num_heads;
    double dropout; /* on the attention weights, when training */
    bool bias;
    bool batch_first; /* must be true: Kiln's inputs are [N, L, E] (torch's batch_first) */
    bool is_causal;   /* Kiln's: query i sees keys j <= i (torch passes a mask per call) */
} kn_multi_head_attention_options;

typedef enum { KN_TRANSFORMER_RELU = 0, KN_TRANSFORMER_GELU = 1 } kn_transformer_activation;

typedef struct kn_transformer_encoder_layer_options {
    int64_t d_model, nhead, dim_feedforward;
    double dropout;
    int activation; /* a kn_transformer_activation */
    double layer_norm_eps;
    bool batch_first, norm_first;
    bool is_causal; /* Kiln's: torch passes src_mask / is_causal per call */
} kn_transformer_encoder_layer_options;

/* ---- sequence layers (issue 12) ---- */
typedef struct kn_conv1d_options {
    int64_t in_channels, out_channels, kernel_size, stride, padding, dilation, groups;
    bool bias;
} kn_conv1d_options;

typedef struct kn_elu_options {
    double alpha;
    bool inplace;
} kn_elu_options;

typedef struct kn_group_norm_options {
    int64_t num_groups, num_channels;
    double eps;
    bool affine;
} kn_group_norm_options;

/* A learned table of positions (nanoGPT's wpe = nn.Embedding(block_size, n_embd)) whose
 * rows 0..T-1 are added to an input [N, T, embedding_dim]. */
typedef struct kn_positional_embedding_options {
    int64_t num_embeddings, embedding_dim;
} kn_positional_embedding_options;

/* One layer's options: the member its kind reads (relu: activation; batch_norm1d and
 * batch_norm2d: batch_norm). Kinds without arguments (tanh, sigmoid) read none. */
typedef union kn_layer_options {
    kn_linear_options linear;
    kn_conv2d_options conv2d;
    kn_max_pool2d_options max_pool2d;
    kn_avg_pool2d_options avg_pool2d;
    kn_adaptive_avg_pool2d_options adaptive_avg_pool2d;
    kn_flatten_options flatten;
    kn_activation_options activation;
    kn_leaky_relu_options leaky_relu;
    kn_gelu_options gelu;
    kn_softmax_options softmax;
    kn_dropout_options dropout;
    kn_batch_norm_options batch_norm;
    kn_layer_norm_options layer_norm;
    kn_embedding_options embedding;
    /* ---- rnn (issue 12) */
    kn_rnn_options rnn; /* lstm, gru */
    /* ---- graph (issue 12) ---- */
    kn_container_options container; /* graph, module */
    kn_concat_options concat;
    kn_split_options split;
    kn_chunk_options chunk;
    kn_reshape_options reshape;
    kn_permute_options permute;
    kn_transpose_options transpose;
    kn_mean_options mean;
    kn_slice_options slice;
    kn_select_options select;
    /* ---- attention (issue 12) ---- */
    kn_multi_head_attention_options multi_head_attention;
    kn_transformer_encoder_layer_options transformer_encoder_layer;
    /* ---- sequence layers (issue 12); log_softmax reads softmax ---- */
    kn_conv1d_options conv1d;
    kn_elu_options elu;
    kn_group_norm_options group_norm;
    kn_positional_embedding_options positional_embedding;
} kn_layer_options;

typedef struct kn_module kn_module;
struct kn_layer_type;

/* A named tensor: a parameter or buffer seen from the root ("3.running_mean").
 * tensor is borrowed from the module. */
typedef struct kn_named_tensor {
    char name[96];
    kn_tensor *tensor;
    bool is_buffer; /* running stats: saved and loaded, never optimized */
} kn_named_tensor;

/* A tensor a module owns, under its own name ("weight", "weight_ih_l0"). */
typedef struct kn_module_tensor {
    char name[48];
    kn_tensor *tensor;
    bool is_buffer; /* in the state dict, never optimized */
    bool host;      /* stays on the cpu when the module moves (num_batches_tracked) */
    bool shared;    /* tied: another slot holds the same tensor (kn_module_tie) */
} kn_module_tensor;

#define KN_MODULE_NAME_MAX 32 /* a child's name: "0", "self_attn" */

struct kn_module {
    kn_module_kind kind;
    const struct kn_layer_type *layer; /* the kind's row in the layer table */
    const char *type_name;             /* torch.nn's class name: "Linear", "Conv2d", ... */
    bool training;
    kn_layer_options options; /* as given, PyTorch's defaults filled in */
    /* own tensors, in PyTorch's registration order (weight before bias) */
    int n_tensors, tensors_capacity;
    kn_module_tensor *tensors;
    /* children, named as in PyTorch's state_dict: "0", "1" in a Sequential */
    int n_children, children_capacity;
    kn_module **children;
    char (*child_names)[KN_MODULE_NAME_MAX];
    kn_generator *dropout_generator; /* borrowed; NULL = default generator */
    struct kn_graph *graph;          /* a graph's plan (kn_graph_new), owned; else NULL */
};

/* ---- constructors (gen NULL means the default generator) ------------------------- */
/* Any kind from its options (NULL: every argument at its default, kn_layer_defaults),
 * checked and initialised as PyTorch does; the kind-specific constructors below are
 * shorthands for it. */
kn_module *kn_module_new(kn_module_kind kind, const kn_layer_options *options, kn_generator *gen);
/* PyTorch's defaults for kind's options; arguments without one (in_features) are 0. */
void kn_layer_defaults(kn_module_kind kind, kn_layer_options *options);
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
kn_module *kn_silu_new(void);
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
/* ---- rnn (issue 12) */
/* nn.LSTM(input_size, hidden_size, num_layers, bidirectional=...) with Kiln's other
 * defaults (bias, batch_first, no dropout, output "sequence"); kn_module_new with a
 * kn_rnn_options for the rest. */
kn_module *kn_lstm_new(int64_t input_size, int64_t hidden_size, int64_t num_layers,
                       bool bidirectional, kn_generator *gen);
kn_module *kn_gru_new(int64_t input_size, int64_t hidden_size, int64_t num_layers,
                      bool bidirectional, kn_generator *gen);
/* ---- sequence layers (issue 12) ---- */
kn_module *kn_conv1d_new(int64_t in_channels, int64_t out_channels, int64_t kernel_size,
                         kn_conv1d_args args, bool bias, kn_generator *gen);
kn_module *kn_elu_new(double alpha);
kn_module *kn_log_softmax_new(int dim);
kn_module *kn_group_norm_new(int64_t num_groups, int64_t num_channels, double eps, bool affine);
/* weight [num_embeddings, embedding_dim] drawn from N(0, 1) as nn.Embedding's. */
kn_module *kn_positional_embedding_new(int64_t num_embeddings, int64_t embedding_dim,
                                       kn_generator *gen);

void kn_module_free(kn_module *m); /* NULL-safe; frees children */
/* The spec's name of a kind: "linear", "conv2d", "max_pool2d", "batch_norm1d", ... */
const char *kn_module_kind_name(kn_module_kind kind);

/* ---- use ------------------------------------------------------------------------- */
kn_tensor *kn_module_forward(kn_module *m, kn_tensor *x);
/* The same for a layer of several inputs (n of them, as its row allows). */
kn_tensor *kn_module_forward_n(kn_module *m, kn_tensor *const *inputs, int n);
void kn_module_train(kn_module *m, bool training); /* recursive, like module.train() */
/* The output shape for an input of in_shape (no batch dim), computed without running
 * the layers by the same shape rules as spec validation; an error names the layer, the
 * argument when one is at fault, and the shapes: "layer 6 (linear): expects a 1-D
 * input, got [32, 7, 7] — add a flatten", "layer 0 (conv2d): in_channels: expected 3
 * (inferred from the input [3, 28, 28]), got 1". Flatten/Softmax dims count the batch
 * dim, as in torch. */
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

/* ---- graphs (issue 12): models beyond a chain --------------------------------------
 * A graph is a container that runs its nodes in order: each node calls a module of the
 * graph's module tree on values (the graph's inputs and earlier nodes' outputs), as a
 * torch module's forward() calls the modules its __init__ registered. The module tree
 * gives the state-dict names: a module registered at "blocks.0.attn" has the parameter
 * "blocks.0.attn.in_proj_weight"; containers on the way ("blocks", "blocks.0") are made
 * as needed (kn_module_container_new gives them a class name: "ModuleList", "Block").
 * Intermediate values are released after their last reader ran. */

/* The most inputs and outputs of one module call (a graph's, add's inputs, split's
 * outputs). */
#define KN_GRAPH_MAX_INPUTS 16
#define KN_LAYER_MAX_OUTPUTS 64

/* An empty graph (no inputs, nodes or outputs yet); the caller owns it. */
kn_module *kn_graph_new(void);
/* A container of modules that is not called itself (torch's nn.Module / nn.ModuleList
 * used as a namespace); class_name is what its repr says (NULL: "Module"). */
kn_module *kn_module_container_new(const char *class_name);
/* Registers child at a dotted path under root ("mlp.fc": the child "fc" of root's child
 * "mlp", which is made as a container when missing). root takes ownership of child,
 * also on failure. Errors: an empty or too long segment, a path taken, a path through a
 * module that is not a container. */
kn_status kn_module_add(kn_module *root, const char *path, kn_module *child);
/* The module at a dotted path under root ("" is root), borrowed; NULL when none. */
kn_module *kn_module_find(const kn_module *root, const char *path);

/* Declares the graph's next input; returns its value id (inputs are 0, 1, ...) or -1. */
int kn_graph_add_input(kn_module *graph, const char *name, kn_dtype dtype);
/* Adds a node that calls the module at path (registered under the graph) on the values
 * inputs[0..n_inputs) and gives n_outputs values; returns the id of its first output
 * (the others follow it) or -1. A module may be called by several nodes (its weights are
 * then shared, as a torch module called twice). */
int kn_graph_add_node(kn_module *graph, const char *path, const int *inputs, int n_inputs,
                      int n_outputs);
/* The graph's outputs, in order: value ids. Ends the graph's construction: each value's
 * last reader is computed here, and a value no node reads that is not an output is an
 * error naming it. */
kn_status kn_graph_set_outputs(kn_module *graph, const int *values, int n_values);
/* Counts of a graph's inputs and outputs; 0 for any other module. */
int kn_graph_input_count(const kn_module *graph);
int kn_graph_output_count(const kn_module *graph);
/* The dtype a graph's input i was declared with; KN_FLOAT32 for any other module or i. */
kn_dtype kn_graph_input_dtype(const kn_module *graph, int i);

/* Runs m on n inputs and stores its outputs (one reference each, in the open scope)
 * in outputs[0..*n_outputs), at most capacity of them: a graph gives its outputs, split
 * and chunk their parts, every other layer one output. */
kn_status kn_module_forward_outputs(kn_module *m, kn_tensor *const *inputs, int n,
                                    kn_tensor **outputs, int capacity, int *n_outputs);

/* Weight tying: makes the tensor at state-dict name `name` (a parameter of a module under
 * root: "lm_head.weight") the very tensor at `to` ("wte.weight"), as torch's
 * `model.lm_head.weight = model.wte.weight`: one parameter, listed under both names by
 * kn_module_state_dict (as torch's state_dict does) and once by kn_module_parameters
 * (under its first name), so an optimizer updates it once with the gradients of both
 * uses summed. Shapes must agree. */
kn_status kn_module_tie(kn_module *root, const char *name, const char *to);
/* ---- attention (issue 12) -------------------------------------------------------- */
/* nn.MultiheadAttention(embed_dim, num_heads, dropout, bias, batch_first=True) with
 * Kiln's is_causal: in_proj_weight [3E, E], in_proj_bias [3E], out_proj (a Linear,
 * "NonDynamicallyQuantizableLinear" as torch names it), initialised as torch does. Its
 * forward takes x (self-attention), x and a key-padding mask (int64 [N, L], nonzero =
 * padding), query/key/value, or those and a mask; [N, L, E] (or unbatched [L, E]) in and
 * out. It returns the output only (torch's need_weights=False). */
kn_module *kn_multi_head_attention_new(int64_t embed_dim, int64_t num_heads, double dropout,
                                       bool bias, bool is_causal, kn_generator *gen);
/* nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
 * layer_norm_eps, batch_first=True, norm_first) with Kiln's is_causal; children self_attn,
 * linear1, dropout, linear2, norm1, norm2, dropout1, dropout2 as torch's. Takes x, or x
 * and a key-padding mask. */
kn_module *kn_transformer_encoder_layer_new(const kn_transformer_encoder_layer_options *options,
                                            kn_generator *gen);
/* torch.nn.init.xavier_uniform_ (in place, no grad). */
kn_status kn_init_xavier_uniform_(kn_tensor *t, double gain, kn_generator *gen);

/* Incremental decoding (generation): a key/value cache holds one slot per
 * MultiheadAttention module of a model (those inside TransformerEncoderLayers too), each
 * the keys and values of up to max_len positions. kn_module_forward_incremental feeds
 * the next positions of a sequence: every self-attention module attends over its cached
 * positions plus the new ones (causally when it is causal) and appends the new ones, so
 * each step costs its new positions, not the window. For a causal model the outputs
 * equal the full forward's outputs at those positions. The cache is found through the
 * thread running the forward, so one model serves any number of caches (one per
 * generation) on any threads, one forward per cache at a time. */
typedef struct kn_kv_cache kn_kv_cache;
/* A cache for model (borrowed: it must outlive the cache, and keep its structure);
 * memory is taken at the first forward, for its batch size and device. NULL with the
 * error set when max_len < 1 or model has no MultiheadAttention. Free with
 * kn_kv_cache_free. */
kn_kv_cache *kn_kv_cache_new(const kn_module *model, int64_t max_len);
void kn_kv_cache_free(kn_kv_cache *cache);             /* NULL-safe */
int64_t kn_kv_cache_length(const kn_kv_cache *cache);  /* positions cached */
int64_t kn_kv_cache_max_len(const kn_kv_cache *cache); /* as made */
/* Forgets every position (the memory stays for the next sequence, of any batch size). */
void kn_kv_cache_reset(kn_kv_cache *cache);
/* Runs model on the next positions of the sequence, inputs [N, T_new, ...] (the sequence
 * dim after the batch dim: token ids [N, T_new] or features [N, T_new, E]), without
 * recording gradients; the result ([N, T_new, ...], the open scope's) is the model's
 * output at those positions. Errors (nothing is appended then): more positions than
 * max_len in all, another batch size than the cached positions', an incremental forward
 * already running on this thread. */
kn_tensor *kn_module_forward_incremental(kn_module *model, kn_kv_cache *cache, kn_tensor *x);
kn_tensor *kn_module_forward_incremental_n(kn_module *model, kn_kv_cache *cache,
                                           kn_tensor *const *inputs, int n);
/* The position in the sequence of the first input position of the incremental forward
 * running on this thread (the positions cached before it), 0 outside one: what a
 * positional layer adds to its input's positions. */
int64_t kn_incremental_position(void);

/* ---- generation (issue 12) ------------------------------------------------------------ */
/* nanoGPT's generate for a language model (token ids [1, T] in, logits [1, T, V] out, in
 * eval mode): each new token is drawn from the logits at the last position divided by
 * temperature, cut to the top_k largest (ties at the cut kept), softmaxed and sampled
 * with a generator seeded by seed (the same seed, model and prompt give the same
 * tokens), or their argmax without do_sample. The context is at most block_size tokens:
 * a longer prompt keeps its last block_size; past the window the oldest half is dropped
 * and the rest fed again. A model with MultiheadAttention decodes with a key/value cache
 * (each token one position); no_cache recomputes the same context whole each token (the
 * same tokens, for reference and benchmarks). */
typedef struct kn_generate_options {
    int64_t max_new_tokens; /* >= 0 */
    bool do_sample;         /* false: greedy (argmax); temperature and top_k unused */
    double temperature;     /* > 0 when sampling */
    int64_t top_k;          /* 0: every token */
    uint64_t seed;
    int64_t block_size; /* the model's window (its positional table) */
    bool no_cache;
} kn_generate_options;
typedef struct kn_generate_callbacks {
    void *context;
    /* each token as it is drawn (index 0-based among the new ones); non-KN_OK stops */
    kn_status (*on_token)(void *context, int64_t token, int64_t index);
} kn_generate_callbacks;
/* Generates into out (room for max_new_tokens) and sets *count to the tokens made, also
 * when a callback or an error stopped it early (its status is returned). callbacks may
 * be NULL. */
kn_status kn_generate(kn_module *model, const int64_t *prompt, int64_t n_prompt,
                      const kn_generate_options *options, const kn_generate_callbacks *callbacks,
                      int64_t *out, int64_t *count);
/* The same one token at a time (a stream): kn_generation_new checks the options and runs
 * the prompt (NULL with the error set: bad options, a prompt the model refuses); each
 * kn_generation_next draws the next token into *token and runs the model on it, ready
 * for the one after (an error there still gives the token, and ends the generation).
 * The model is borrowed: it must outlive the generation, which any thread may step, one
 * at a time. Free with kn_generation_free (NULL-safe). */
typedef struct kn_generation kn_generation;
kn_generation *kn_generation_new(kn_module *model, const int64_t *prompt, int64_t n_prompt,
                                 const kn_generate_options *options);
kn_status kn_generation_next(kn_generation *generation, int64_t *token);
int64_t kn_generation_remaining(const kn_generation *generation); /* tokens still to make */
void kn_generation_free(kn_generation *generation);

#ifdef __cplusplus
}
#endif
#endif

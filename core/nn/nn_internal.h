/*
 * nn_internal.h — what the layer rows (core/nn/layer_*.c) share: registering a module's
 * parameters, buffers and children (nn_init.c), finding them again (nn.c), and the
 * pieces of shape rules that several layers have in common (nn_shape.c).
 */
#ifndef KN_NN_INTERNAL_H
#define KN_NN_INTERNAL_H

#include "kn_internal.h"
#include "kn_layer.h"

/* The rows, one per kind (defined in core/nn/layer_*.c). */
#define KN__LAYER_ROW(id, name) extern const kn_layer_type kn__layer_##name;
KN_LAYER_KINDS(KN__LAYER_ROW)
#undef KN__LAYER_ROW

/* ---- registration (nn_init.c) ------------------------------------------------------- */

/* A new float32 parameter (requires grad) filled with fill, registered as name; the
 * module owns it. NULL with the error set. Random inits come after (not recorded). */
kn_tensor *kn__module_parameter(kn_module *m, const char *name, const int64_t *shape, int ndim,
                                double fill);
/* A new buffer (in the state dict, never optimized) of dtype filled with fill. host:
 * it stays on the cpu when the module moves (a counter the host updates). */
kn_tensor *kn__module_buffer(kn_module *m, const char *name, const int64_t *shape, int ndim,
                             kn_dtype dtype, double fill, bool host);
/* Appends child under name (NULL: its index, as in a Sequential); m takes ownership,
 * also on failure. */
kn_status kn__module_child(kn_module *m, const char *name, kn_module *child);

/* torch's reset_parameters of nn.Linear and nn.ConvNd: "weight" of shape [out, ...] drawn
 * kaiming_uniform(a=sqrt(5)), then (with bias) "bias" [out] uniform in +-1/sqrt(fan_in). */
kn_status kn__module_weight_bias(kn_module *m, const int64_t *shape, int ndim, bool bias,
                                 kn_generator *gen);
/* nn.Embedding's table: "weight" [rows, dim] drawn N(0, 1), after checking both sizes are
 * positive under nn.Embedding's names (num_embeddings, embedding_dim). */
kn_status kn__module_table(kn_module *m, int64_t rows, int64_t dim, kn_generator *gen);

/* The module's own tensor registered as name, or NULL (bias=False). */
kn_tensor *kn__module_tensor(const kn_module *m, const char *name);

/* The op arguments of a conv2d module and of a max/avg pool module (layer_conv.c). */
kn_conv2d_args kn__conv2d_args(const kn_module *m);
kn_pool2d_args kn__pool2d_args(const kn_module *m);

/* For init functions: KN_ERR_VALUE naming the class when value is not positive. */
#define KN__CHECK_POSITIVE(m, name, value)                                                         \
    do {                                                                                           \
        if ((value) <= 0)                                                                          \
            return kn__error(KN_ERR_VALUE, "%s: %s must be positive, got %lld", (m)->type_name,    \
                             name, (long long)(value));                                            \
    } while (0)

/* ---- torch's repr pieces (nn_shape.c) ------------------------------------------------- */

/* Appends printf-style text to buf (of size bytes) after what it holds. */
void kn__repr_add(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* name=v or name=(v0, v1): torch prints a square pair as an int unless as_tuple. */
void kn__repr_pair(char *buf, size_t size, const char *name, const int v[2], bool as_tuple);
const char *kn__py_bool(bool v); /* "True", "False" */

/* ---- shape rules (nn_shape.c) --------------------------------------------------------- */

/* Sets s->field and s->message (printf-style) and returns false. */
bool kn__shape_fail(kn_layer_shape *s, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* An argument inferred from the input (in_features, in_channels, num_features): 0 takes
 * inferred; any other value must equal it ("expected 784 (inferred from the input
 * [784]), got 100"). */
bool kn__shape_infer(kn_layer_shape *s, const char *field, int64_t *value, int64_t inferred);
/* The input must be [channels, height, width] (conv2d, the 2-D pools, batch_norm2d). */
bool kn__shape_image(kn_layer_shape *s);
/* "[N, 32, 7, 7]": the batched shape that the dims of flatten and softmax count in. */
const char *kn__shape_batched(const kn_layer_io *in, char *buf, size_t size);
/* dim of an argument counted over the batched input (flatten, softmax): *out is it
 * normalised; not the batch dim. */
bool kn__shape_batched_dim(kn_layer_shape *s, const char *field, int64_t dim, int *out);
/* A window's output over an image input ([C, H, W] -> [C, H', W'], torch's
 * pooling_output_shape); an empty output is an error naming the window. */
bool kn__shape_window(kn_layer_shape *s, const int k[2], const int stride[2], const int padding[2],
                      const int dilation[2], bool ceil_mode);

/* ---- graph (issue 12) ------------------------------------------------------------------ */

struct kn_graph;
/* Frees a graph's plan (layer_graph.c); NULL-safe. */
void kn__graph_free(struct kn_graph *g);
/* The output shapes of a graph for inputs in[0..n_in) (layer_graph.c): out[0..*n_out),
 * room for KN_GRAPH_MAX_INPUTS. Errors name the node. */
kn_status kn__graph_shape(const kn_module *m, const kn_layer_io *in, int n_in, kn_layer_io *out,
                          int *n_out);
/* One module's output for one input (nn_shape.c): a Sequential's through its children, a
 * layer's through its row; where names the module in errors (NULL: its kind). */
kn_status kn__module_shape(const kn_module *m, const kn_layer_io *in, kn_layer_io *out,
                           const char *where);
/* "1 input", "2 to 16 inputs": how many inputs a row takes, for errors. */
const char *kn__inputs_text(int least, int most, char *buf, size_t size);
/* Rows' parameter_shape for weight ties in specs (layer_graph.c): Linear's weight
 * [out, in] and bias [out], Embedding's weight [num, dim]. */
bool kn__linear_parameter_shape(const kn_layer_options *o, const char *name, kn_layer_io *out);
bool kn__embedding_parameter_shape(const kn_layer_options *o, const char *name, kn_layer_io *out);
/* The dtype a graph's first input has (KN_FLOAT32 for none). */
kn_dtype kn__graph_input_dtype(const kn_module *m);
/* ---- attention (issue 12): incremental decoding (kv_cache.c) -------------------------- */

typedef struct kn__kv_slot kn__kv_slot;
/* m's slot in the key/value cache of the incremental forward running on this thread,
 * or NULL (no such forward, or m not in its model). */
kn__kv_slot *kn__kv_slot_of(const kn_module *m);
/* Self-attention during an incremental forward: appends the new positions' keys and
 * values (from qkv [N, T_new, 3E], the in_proj output) and their padding (int64
 * [N, T_new], or NULL for none) to slot, and attends the new queries over every cached
 * position. Returns [N, T_new, E] (the open scope's), or NULL with the error set. */
kn_tensor *kn__kv_attend(kn__kv_slot *slot, kn_tensor *qkv, kn_tensor *padding, int64_t num_heads,
                         const kn_attention_args *args);

/* ---- generation (issue 12) ---- */
/* Whether model holds a MultiheadAttention module anywhere (a key/value cache serves it). */
bool kn__module_has_attention(const kn_module *model);

#endif

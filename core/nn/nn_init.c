/*
 * nn_init.c — module constructors and torch.nn.init's fills. Each constructor checks its
 * arguments, registers parameters and buffers in PyTorch's order and draws from the
 * generator exactly as the module's reset_parameters does in torch 1.13, so that
 * kn_manual_seed(s) plus the same layers in the same order gives torch's weights.
 */
#include "kn_internal.h"
#include "kn_nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- torch.nn.init ---------------------------------------------------------------- */

int64_t kn_init_fan_in(const kn_tensor *weight)
{
    if (!weight) return -1;
    if (weight->ndim < 2) {
        kn__error(KN_ERR_SHAPE,
                  "fan_in: can not be computed for a tensor with fewer than 2 dims, got %s",
                  kn__shape(weight));
        return -1;
    }
    int64_t fan_in = weight->shape[1];
    for (int d = 2; d < weight->ndim; d++) fan_in *= weight->shape[d];
    return fan_in;
}

/* torch's CPU uniform_ for float32 computes x * (to - from) + from with one rounding
 * (the multiply-add is fused in its AVX2 build), x = 24 random bits / 2^24 and from/to
 * cast to float. kn_uniform_ rounds twice, which differs in the last bit for about half
 * the values when the bounds are not exact in float (all of kaiming's), so the init
 * draws here for contiguous float32 CPU tensors. */
kn_status kn_init_uniform_(kn_tensor *t, double low, double high, kn_generator *gen)
{
    return kn_uniform_(t, low, high, gen); /* bit-identical to torch's uniform_ */
}

/* kaiming_uniform_(mode='fan_in', nonlinearity='leaky_relu'), computed with the same
 * double operations as torch/nn/init.py so the bound is the same double. */
kn_status kn_init_kaiming_uniform_(kn_tensor *t, double a, kn_generator *gen)
{
    if (!t) return kn__error(KN_ERR_NULL, "kaiming_uniform_: tensor is NULL");
    if (kn_numel(t) == 0) return KN_OK; /* torch: a no-op with a warning */
    int64_t fan = kn_init_fan_in(t);
    if (fan < 0) return kn_last_status();
    double gain = sqrt(2.0 / (1 + pow(a, 2)));
    double std = gain / sqrt((double)fan);
    double bound = sqrt(3.0) * std;
    return kn_init_uniform_(t, -bound, bound, gen);
}

/* ---- registration ------------------------------------------------------------------ */

static kn_module *module_new(kn_module_kind kind, const char *type_name)
{
    kn_module *m = calloc(1, sizeof *m);
    if (!m) return kn__error_null(KN_ERR_MEMORY, "out of memory allocating a %s", type_name);
    m->kind = kind;
    m->type_name = type_name;
    m->training = true;
    return m;
}

/* A new tensor filled with fill, registered under name (a parameter requires grad);
 * the module owns its one reference. Random inits come after: they are not recorded. */
static kn_tensor *add_tensor(kn_module *m, const char *name, const int64_t *shape, int ndim,
                             kn_dtype dtype, bool is_buffer, double fill)
{
    kn_tensor *t = kn__empty_raw(shape, ndim, dtype, kn_cpu());
    if (!t) return NULL;
    kn_fill_(t, fill);
    if (!is_buffer) kn_set_requires_grad(t, true);
    m->tensor_names[m->n_tensors] = name;
    m->tensors[m->n_tensors] = t;
    m->tensor_is_buffer[m->n_tensors] = is_buffer;
    m->n_tensors++;
    return t;
}

static kn_module *fail(kn_module *m)
{
    kn_module_free(m);
    return NULL;
}

#define CHECK_POSITIVE(op, name, value)                                                            \
    do {                                                                                           \
        if ((value) <= 0)                                                                          \
            return kn__error_null(KN_ERR_VALUE, "%s: %s must be positive, got %lld", op, name,     \
                                  (long long)(value));                                             \
    } while (0)

/* ---- constructors ------------------------------------------------------------------ */

kn_module *kn_sequential_new(void)
{
    return module_new(KN_MODULE_SEQUENTIAL, "Sequential");
}

kn_status kn_sequential_append(kn_module *sequential, kn_module *child)
{
    if (!sequential || !child) {
        kn_module_free(child);
        return kn__error(KN_ERR_NULL, "sequential_append: %s is NULL",
                         sequential ? "child" : "sequential");
    }
    if (sequential->kind != KN_MODULE_SEQUENTIAL) {
        kn_module_free(child);
        return kn__error(KN_ERR_VALUE, "sequential_append: expected a Sequential, got a %s",
                         sequential->type_name);
    }
    if (sequential->n_children == sequential->children_capacity) {
        int capacity = sequential->children_capacity ? 2 * sequential->children_capacity : 8;
        kn_module **grown = realloc(sequential->children, sizeof *grown * (size_t)capacity);
        if (!grown) {
            kn_module_free(child);
            return kn__error(KN_ERR_MEMORY, "sequential_append: out of memory");
        }
        sequential->children = grown;
        sequential->children_capacity = capacity;
    }
    sequential->children[sequential->n_children++] = child;
    return KN_OK;
}

kn_module *kn_linear_new(int64_t in_features, int64_t out_features, bool bias, kn_generator *gen)
{
    CHECK_POSITIVE("Linear", "in_features", in_features);
    CHECK_POSITIVE("Linear", "out_features", out_features);
    kn_module *m = module_new(KN_MODULE_LINEAR, "Linear");
    if (!m) return NULL;
    m->in_features = in_features;
    m->out_features = out_features;
    m->has_bias = bias;
    kn_tensor *w =
        add_tensor(m, "weight", (int64_t[]){out_features, in_features}, 2, KN_FLOAT32, false, 0.0);
    if (!w || kn_init_kaiming_uniform_(w, sqrt(5.0), gen) != KN_OK) return fail(m);
    if (bias) {
        kn_tensor *b = add_tensor(m, "bias", (int64_t[]){out_features}, 1, KN_FLOAT32, false, 0.0);
        double bound = 1 / sqrt((double)in_features);
        if (!b || kn_init_uniform_(b, -bound, bound, gen) != KN_OK) return fail(m);
    }
    return m;
}

kn_module *kn_conv2d_new(int64_t in_channels, int64_t out_channels, const int kernel_size[2],
                         kn_conv2d_args args, bool bias, kn_generator *gen)
{
    const char *op = "Conv2d";
    CHECK_POSITIVE(op, "in_channels", in_channels);
    CHECK_POSITIVE(op, "out_channels", out_channels);
    if (!kernel_size) return kn__error_null(KN_ERR_NULL, "Conv2d: kernel_size is NULL");
    CHECK_POSITIVE(op, "kernel_size", kernel_size[0]);
    CHECK_POSITIVE(op, "kernel_size", kernel_size[1]);
    /* zero fields take PyTorch's defaults */
    for (int i = 0; i < 2; i++) {
        if (args.stride[i] == 0) args.stride[i] = 1;
        if (args.dilation[i] == 0) args.dilation[i] = 1;
        CHECK_POSITIVE(op, "stride", args.stride[i]);
        CHECK_POSITIVE(op, "dilation", args.dilation[i]);
        if (args.padding[i] < 0)
            return kn__error_null(KN_ERR_VALUE, "Conv2d: padding must be non-negative, got %d",
                                  args.padding[i]);
    }
    if (args.groups == 0) args.groups = 1;
    CHECK_POSITIVE(op, "groups", args.groups);
    if (in_channels % args.groups || out_channels % args.groups)
        return kn__error_null(KN_ERR_VALUE,
                              "Conv2d: in_channels (%lld) and out_channels (%lld) must be "
                              "divisible by groups (%d)",
                              (long long)in_channels, (long long)out_channels, args.groups);
    kn_module *m = module_new(KN_MODULE_CONV2D, "Conv2d");
    if (!m) return NULL;
    m->in_features = in_channels;
    m->out_features = out_channels;
    m->kernel_size[0] = kernel_size[0];
    m->kernel_size[1] = kernel_size[1];
    m->conv = args;
    m->has_bias = bias;
    int64_t shape[4] = {out_channels, in_channels / args.groups, kernel_size[0], kernel_size[1]};
    kn_tensor *w = add_tensor(m, "weight", shape, 4, KN_FLOAT32, false, 0.0);
    if (!w || kn_init_kaiming_uniform_(w, sqrt(5.0), gen) != KN_OK) return fail(m);
    if (bias) {
        kn_tensor *b = add_tensor(m, "bias", (int64_t[]){out_channels}, 1, KN_FLOAT32, false, 0.0);
        double bound = 1 / sqrt((double)kn_init_fan_in(w));
        if (!b || kn_init_uniform_(b, -bound, bound, gen) != KN_OK) return fail(m);
    }
    return m;
}

/* Normalises pool arguments (stride 0 = kernel, dilation 0 = 1) and checks them as
 * PyTorch does: padding at most half the (effective) kernel. */
static kn_module *pool_new(kn_module_kind kind, const char *op, kn_pool2d_args args)
{
    for (int i = 0; i < 2; i++) {
        CHECK_POSITIVE(op, "kernel_size", args.kernel_size[i]);
        if (args.stride[i] == 0) args.stride[i] = args.kernel_size[i];
        if (args.dilation[i] == 0) args.dilation[i] = 1;
        CHECK_POSITIVE(op, "stride", args.stride[i]);
        CHECK_POSITIVE(op, "dilation", args.dilation[i]);
        int effective = kind == KN_MODULE_MAX_POOL2D
                            ? (args.kernel_size[i] - 1) * args.dilation[i] + 1
                            : args.kernel_size[i];
        if (args.padding[i] < 0 || args.padding[i] > effective / 2)
            return kn__error_null(KN_ERR_VALUE,
                                  "%s: padding should be between 0 and half the kernel size "
                                  "(%d), got %d",
                                  op, effective / 2, args.padding[i]);
    }
    if (kind == KN_MODULE_AVG_POOL2D && (args.dilation[0] != 1 || args.dilation[1] != 1))
        return kn__error_null(KN_ERR_VALUE, "AvgPool2d: has no dilation, got (%d, %d)",
                              args.dilation[0], args.dilation[1]);
    kn_module *m = module_new(kind, op);
    if (!m) return NULL;
    m->pool = args;
    m->kernel_size[0] = args.kernel_size[0];
    m->kernel_size[1] = args.kernel_size[1];
    return m;
}

kn_module *kn_max_pool2d_new(kn_pool2d_args args)
{
    return pool_new(KN_MODULE_MAX_POOL2D, "MaxPool2d", args);
}

kn_module *kn_avg_pool2d_new(kn_pool2d_args args)
{
    return pool_new(KN_MODULE_AVG_POOL2D, "AvgPool2d", args);
}

kn_module *kn_adaptive_avg_pool2d_new(int output_height, int output_width)
{
    CHECK_POSITIVE("AdaptiveAvgPool2d", "output height", output_height);
    CHECK_POSITIVE("AdaptiveAvgPool2d", "output width", output_width);
    kn_module *m = module_new(KN_MODULE_ADAPTIVE_AVG_POOL2D, "AdaptiveAvgPool2d");
    if (!m) return NULL;
    m->output_size[0] = output_height;
    m->output_size[1] = output_width;
    return m;
}

kn_module *kn_flatten_new(int start_dim, int end_dim)
{
    kn_module *m = module_new(KN_MODULE_FLATTEN, "Flatten");
    if (!m) return NULL;
    m->start_dim = start_dim;
    m->end_dim = end_dim;
    return m;
}

kn_module *kn_relu_new(void)
{
    return module_new(KN_MODULE_RELU, "ReLU");
}

kn_module *kn_leaky_relu_new(double negative_slope)
{
    if (!isfinite(negative_slope))
        return kn__error_null(KN_ERR_VALUE, "LeakyReLU: negative_slope must be finite, got %g",
                              negative_slope);
    kn_module *m = module_new(KN_MODULE_LEAKY_RELU, "LeakyReLU");
    if (m) m->negative_slope = negative_slope;
    return m;
}

kn_module *kn_gelu_new(kn_gelu_approximation approximate)
{
    if (approximate != KN_GELU_EXACT && approximate != KN_GELU_TANH)
        return kn__error_null(KN_ERR_VALUE, "GELU: approximate must be exact or tanh, got %d",
                              (int)approximate);
    kn_module *m = module_new(KN_MODULE_GELU, "GELU");
    if (m) m->approximate = approximate;
    return m;
}

kn_module *kn_tanh_new(void)
{
    return module_new(KN_MODULE_TANH, "Tanh");
}

kn_module *kn_sigmoid_new(void)
{
    return module_new(KN_MODULE_SIGMOID, "Sigmoid");
}

kn_module *kn_softmax_new(int dim)
{
    kn_module *m = module_new(KN_MODULE_SOFTMAX, "Softmax");
    if (m) m->dim = dim;
    return m;
}

kn_module *kn_dropout_new(double p)
{
    if (!(p >= 0.0 && p <= 1.0))
        return kn__error_null(KN_ERR_VALUE,
                              "Dropout: probability p has to be between 0 and 1, but got %g", p);
    kn_module *m = module_new(KN_MODULE_DROPOUT, "Dropout");
    if (m) m->p = p;
    return m;
}

static kn_module *batch_norm_new(kn_module_kind kind, const char *op, int64_t num_features,
                                 double eps, double momentum, bool affine, bool track_running_stats)
{
    CHECK_POSITIVE(op, "num_features", num_features);
    if (!(isfinite(eps) && eps >= 0) || !isfinite(momentum))
        return kn__error_null(KN_ERR_VALUE,
                              "%s: expected a finite eps >= 0 and a finite momentum, got eps %g "
                              "and momentum %g",
                              op, eps, momentum);
    kn_module *m = module_new(kind, op);
    if (!m) return NULL;
    m->in_features = m->out_features = num_features;
    m->eps = eps;
    m->momentum = momentum;
    m->affine = affine;
    m->track_running_stats = track_running_stats;
    int64_t c[1] = {num_features};
    if (affine) {
        if (!add_tensor(m, "weight", c, 1, KN_FLOAT32, false, 1.0) ||
            !add_tensor(m, "bias", c, 1, KN_FLOAT32, false, 0.0))
            return fail(m);
    }
    if (track_running_stats) {
        int64_t scalar[1] = {0};
        if (!add_tensor(m, "running_mean", c, 1, KN_FLOAT32, true, 0.0) ||
            !add_tensor(m, "running_var", c, 1, KN_FLOAT32, true, 1.0) ||
            !add_tensor(m, "num_batches_tracked", scalar, 0, KN_INT64, true, 0.0))
            return fail(m);
    }
    return m;
}

kn_module *kn_batch_norm1d_new(int64_t num_features, double eps, double momentum, bool affine,
                               bool track_running_stats)
{
    return batch_norm_new(KN_MODULE_BATCH_NORM1D, "BatchNorm1d", num_features, eps, momentum,
                          affine, track_running_stats);
}

kn_module *kn_batch_norm2d_new(int64_t num_features, double eps, double momentum, bool affine,
                               bool track_running_stats)
{
    return batch_norm_new(KN_MODULE_BATCH_NORM2D, "BatchNorm2d", num_features, eps, momentum,
                          affine, track_running_stats);
}

kn_module *kn_layer_norm_new(const int64_t *normalized_shape, int ndim, double eps,
                             bool elementwise_affine)
{
    if (!normalized_shape || ndim < 1 || ndim >= KN_MAX_DIMS)
        return kn__error_null(KN_ERR_VALUE,
                              "LayerNorm: normalized_shape must have 1 to %d dims, got %d",
                              KN_MAX_DIMS - 1, normalized_shape ? ndim : 0);
    for (int i = 0; i < ndim; i++)
        if (normalized_shape[i] <= 0)
            return kn__error_null(KN_ERR_VALUE,
                                  "LayerNorm: normalized_shape must be positive, got %s",
                                  kn__shape_of(normalized_shape, ndim));
    if (!(isfinite(eps) && eps >= 0))
        return kn__error_null(KN_ERR_VALUE, "LayerNorm: expected a finite eps >= 0, got %g", eps);
    kn_module *m = module_new(KN_MODULE_LAYER_NORM, "LayerNorm");
    if (!m) return NULL;
    m->normalized_ndim = ndim;
    memcpy(m->normalized_shape, normalized_shape, sizeof(int64_t) * (size_t)ndim);
    m->eps = eps;
    m->affine = elementwise_affine;
    if (elementwise_affine) {
        if (!add_tensor(m, "weight", normalized_shape, ndim, KN_FLOAT32, false, 1.0) ||
            !add_tensor(m, "bias", normalized_shape, ndim, KN_FLOAT32, false, 0.0))
            return fail(m);
    }
    return m;
}

kn_module *kn_embedding_new(int64_t num_embeddings, int64_t embedding_dim, kn_generator *gen)
{
    CHECK_POSITIVE("Embedding", "num_embeddings", num_embeddings);
    CHECK_POSITIVE("Embedding", "embedding_dim", embedding_dim);
    kn_module *m = module_new(KN_MODULE_EMBEDDING, "Embedding");
    if (!m) return NULL;
    m->in_features = num_embeddings;
    m->out_features = embedding_dim;
    kn_tensor *w = add_tensor(m, "weight", (int64_t[]){num_embeddings, embedding_dim}, 2,
                              KN_FLOAT32, false, 0.0);
    if (!w || kn_normal_(w, 0.0, 1.0, gen) != KN_OK) return fail(m);
    return m;
}

/*
 * layer_sequence.c — the layers issue 12 adds for sequence models: Conv1d (a window
 * over [C, L]), ELU, LogSoftmax, GroupNorm, and the learned positional embedding that
 * adds a row per position to token embeddings [T, C]. Their ops are in core/ops
 * (ops_conv1d.c, ops_elementwise.c, ops_softmax.c, ops_group_norm.c).
 */
#include "nn_internal.h"

#include <math.h>

/* ---- conv1d: nn.Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0,
 * dilation=1, groups=1, bias=True) ------------------------------------------------------
 * x [N, C, L] -> [N, out, L'], L' = floor((L + 2p - d(k - 1) - 1) / s) + 1;
 * weight [out, C / groups, k], bias [out]. */

static const kn_layer_arg CONV1D_ARGS[] = {
    KN_ARG_SIZE_OF(conv1d, in_channels, KN_ARG_INFERRED),
    KN_ARG_SIZE_OF(conv1d, out_channels, KN_ARG_REQUIRED),
    KN_ARG_INT_OF(conv1d, kernel_size, .flags = KN_ARG_REQUIRED, .min = 1,
                  .max = KN_ARG_MAX_WINDOW),
    KN_ARG_INT_OF(conv1d, stride, .def = 1, .min = 1, .max = KN_ARG_MAX_WINDOW),
    KN_ARG_INT_OF(conv1d, padding, .def = 0, .min = 0, .max = KN_ARG_MAX_WINDOW),
    KN_ARG_INT_OF(conv1d, dilation, .def = 1, .min = 1, .max = KN_ARG_MAX_WINDOW),
    KN_ARG_INT_OF(conv1d, groups, .def = 1, .min = 1, .max = KN_ARG_MAX_SIZE),
    KN_ARG_BOOL_OF(conv1d, bias, true),
    {0},
};

static kn_status conv1d_init(kn_module *m, kn_generator *gen)
{
    kn_conv1d_options *o = &m->options.conv1d;
    KN__CHECK_POSITIVE(m, "in_channels", o->in_channels);
    KN__CHECK_POSITIVE(m, "out_channels", o->out_channels);
    KN__CHECK_POSITIVE(m, "kernel_size", o->kernel_size);
    /* 0 stands for torch's defaults, as kn_conv1d_args' zero fields */
    if (o->stride == 0) o->stride = 1;
    if (o->dilation == 0) o->dilation = 1;
    if (o->groups == 0) o->groups = 1;
    KN__CHECK_POSITIVE(m, "stride", o->stride);
    KN__CHECK_POSITIVE(m, "dilation", o->dilation);
    KN__CHECK_POSITIVE(m, "groups", o->groups);
    if (o->padding < 0)
        return kn__error(KN_ERR_VALUE, "Conv1d: padding must be non-negative, got %lld",
                         (long long)o->padding);
    if (o->kernel_size > KN_ARG_MAX_WINDOW || o->stride > KN_ARG_MAX_WINDOW ||
        o->padding > KN_ARG_MAX_WINDOW || o->dilation > KN_ARG_MAX_WINDOW)
        return kn__error(KN_ERR_VALUE,
                         "Conv1d: kernel_size, stride, padding and dilation must be at most %d",
                         KN_ARG_MAX_WINDOW);
    if (o->in_channels % o->groups || o->out_channels % o->groups)
        return kn__error(KN_ERR_VALUE,
                         "Conv1d: in_channels (%lld) and out_channels (%lld) must be divisible "
                         "by groups (%lld)",
                         (long long)o->in_channels, (long long)o->out_channels,
                         (long long)o->groups);
    int64_t shape[3] = {o->out_channels, o->in_channels / o->groups, o->kernel_size};
    return kn__module_weight_bias(m, shape, 3, o->bias, gen);
}

static bool conv1d_shape(kn_layer_shape *s)
{
    kn_conv1d_options *o = &s->options->conv1d;
    const kn_layer_io *in = &s->inputs[0];
    if (in->ndim != 2)
        return kn__shape_fail(s, NULL, "expects a [channels, length] input, got %s%s",
                              kn__shape_of(in->shape, in->ndim),
                              in->ndim == 1 ? " — give input_shape a channel dim, e.g. [1, L]"
                                            : "");
    int64_t channels = in->shape[0], length = in->shape[1];
    if (!kn__shape_infer(s, "in_channels", &o->in_channels, channels)) return false;
    if (channels % o->groups || o->out_channels % o->groups)
        return kn__shape_fail(s, "groups",
                              "in_channels (%lld) and out_channels (%lld) must both be divisible "
                              "by groups, got %lld",
                              (long long)channels, (long long)o->out_channels,
                              (long long)o->groups);
    int64_t span = o->dilation * (o->kernel_size - 1) + 1;
    int64_t out = (length + 2 * o->padding - span) / o->stride + 1;
    if (length + 2 * o->padding < span)
        return kn__shape_fail(
            s, NULL,
            "would output no positions from the input %s: the length %lld (%lld with "
            "padding) is shorter than the kernel's span %lld (kernel_size "
            "%lld, dilation %lld)",
            kn__shape_of(in->shape, in->ndim), (long long)length,
            (long long)(length + 2 * o->padding), (long long)span, (long long)o->kernel_size,
            (long long)o->dilation);
    s->output.shape[0] = o->out_channels;
    s->output.shape[1] = out;
    s->parameter_count =
        o->out_channels * (channels / o->groups) * o->kernel_size + (o->bias ? o->out_channels : 0);
    return true;
}

static kn_conv1d_args conv1d_args(const kn_conv1d_options *o)
{
    return (kn_conv1d_args){.stride = (int)o->stride,
                            .padding = (int)o->padding,
                            .dilation = (int)o->dilation,
                            .groups = (int)o->groups};
}

static kn_tensor *conv1d_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_conv1d(x[0], kn__module_tensor(m, "weight"), kn__module_tensor(m, "bias"),
                     conv1d_args(&m->options.conv1d));
}

/* torch's _ConvNd.extra_repr with 1-tuples: "2, 4, kernel_size=(3,), stride=(2,)" */
static void conv1d_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_conv1d_options *o = &m->options.conv1d;
    kn__repr_add(buf, size, "%lld, %lld, kernel_size=(%lld,), stride=(%lld,)",
                 (long long)o->in_channels, (long long)o->out_channels, (long long)o->kernel_size,
                 (long long)o->stride);
    if (o->padding) kn__repr_add(buf, size, ", padding=(%lld,)", (long long)o->padding);
    if (o->dilation != 1) kn__repr_add(buf, size, ", dilation=(%lld,)", (long long)o->dilation);
    if (o->groups != 1) kn__repr_add(buf, size, ", groups=%lld", (long long)o->groups);
    if (!o->bias) kn__repr_add(buf, size, ", bias=False");
}

const kn_layer_type kn__layer_conv1d = {
    .kind = KN_MODULE_CONV1D,
    .name = "conv1d",
    .torch_name = "Conv1d",
    .args = CONV1D_ARGS,
    .capturable = true,
    .init = conv1d_init,
    .shape = conv1d_shape,
    .forward = conv1d_forward,
    .describe = conv1d_describe,
};

kn_module *kn_conv1d_new(int64_t in_channels, int64_t out_channels, int64_t kernel_size,
                         kn_conv1d_args args, bool bias, kn_generator *gen)
{
    kn_layer_options o = {.conv1d = {.in_channels = in_channels,
                                     .out_channels = out_channels,
                                     .kernel_size = kernel_size,
                                     .stride = args.stride,
                                     .padding = args.padding,
                                     .dilation = args.dilation,
                                     .groups = args.groups,
                                     .bias = bias}};
    return kn_module_new(KN_MODULE_CONV1D, &o, gen);
}

/* ---- elu: nn.ELU(alpha=1.0, inplace=False) ----------------------------------------------
 * x where x > 0, alpha (exp(x) - 1) elsewhere; any shape. */

static const kn_layer_arg ELU_ARGS[] = {
    KN_ARG_NUMBER_OF(elu, alpha, .def = 1.0, .min = -INFINITY, .max = INFINITY),
    KN_ARG_INPLACE_OF(elu),
    {0},
};

static kn_status elu_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    double alpha = m->options.elu.alpha;
    if (!isfinite(alpha))
        return kn__error(KN_ERR_VALUE, "ELU: alpha must be finite, got %g", alpha);
    return KN_OK;
}

static kn_tensor *elu_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_elu(x[0], m->options.elu.alpha);
}

static void elu_describe(const kn_module *m, char *buf, size_t size)
{
    /* torch prints the float as Python does: 1.0, 0.3 */
    double alpha = m->options.elu.alpha;
    if (alpha == floor(alpha) && fabs(alpha) < 1e15)
        kn__repr_add(buf, size, "alpha=%.1f", alpha);
    else
        kn__repr_add(buf, size, "alpha=%g", alpha);
}

const kn_layer_type kn__layer_elu = {
    .kind = KN_MODULE_ELU,
    .name = "elu",
    .torch_name = "ELU",
    .args = ELU_ARGS,
    .capturable = true,
    .init = elu_init,
    .forward = elu_forward,
    .describe = elu_describe,
};

kn_module *kn_elu_new(double alpha)
{
    kn_layer_options o = {.elu = {.alpha = alpha}};
    return kn_module_new(KN_MODULE_ELU, &o, NULL);
}

/* ---- log_softmax: nn.LogSoftmax(dim) ------------------------------------------------------
 * x - log(sum(exp(x))) over dim, counted with the batch dim; as softmax, the spec asks
 * for the dim (torch's implicit one is deprecated). Its options are softmax's. */

static const kn_layer_arg LOG_SOFTMAX_ARGS[] = {
    KN_ARG_INT_OF(softmax, dim, .flags = KN_ARG_REQUIRED, .min = -KN_MAX_DIMS,
                  .max = KN_MAX_DIMS - 1, .expected = "the dim to normalise over, e.g. 1 or -1"),
    {0},
};

static bool log_softmax_shape(kn_layer_shape *s)
{
    int dim;
    return kn__shape_batched_dim(s, "dim", s->options->softmax.dim, &dim);
}

static kn_tensor *log_softmax_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_log_softmax(x[0], (int)m->options.softmax.dim);
}

static void log_softmax_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "dim=%lld", (long long)m->options.softmax.dim);
}

const kn_layer_type kn__layer_log_softmax = {
    .kind = KN_MODULE_LOG_SOFTMAX,
    .name = "log_softmax",
    .torch_name = "LogSoftmax",
    .args = LOG_SOFTMAX_ARGS,
    .capturable = true,
    .shape = log_softmax_shape,
    .forward = log_softmax_forward,
    .describe = log_softmax_describe,
};

kn_module *kn_log_softmax_new(int dim)
{
    kn_layer_options o = {.softmax = {dim}};
    return kn_module_new(KN_MODULE_LOG_SOFTMAX, &o, NULL);
}

/* ---- group_norm: nn.GroupNorm(num_groups, num_channels, eps=1e-05, affine=True) ----------
 * x [N, C, *] -> same shape, normalised per sample over each group of C / num_groups
 * channels; weight, bias [C] (affine). */

static const kn_layer_arg GROUP_NORM_ARGS[] = {
    KN_ARG_SIZE_OF(group_norm, num_groups, KN_ARG_REQUIRED),
    KN_ARG_SIZE_OF(group_norm, num_channels, KN_ARG_INFERRED),
    KN_ARG_NUMBER_OF(group_norm, eps, .def = 1e-5, .min = 0, .max = INFINITY,
                     .flags = KN_ARG_MIN_OPEN | KN_ARG_MAX_OPEN),
    KN_ARG_BOOL_OF(group_norm, affine, true),
    {0},
};

static kn_status group_norm_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    const kn_group_norm_options *o = &m->options.group_norm;
    KN__CHECK_POSITIVE(m, "num_groups", o->num_groups);
    KN__CHECK_POSITIVE(m, "num_channels", o->num_channels);
    if (o->num_channels % o->num_groups)
        return kn__error(KN_ERR_VALUE,
                         "GroupNorm: num_channels (%lld) must be divisible by "
                         "num_groups (%lld)",
                         (long long)o->num_channels, (long long)o->num_groups);
    if (!(isfinite(o->eps) && o->eps >= 0))
        return kn__error(KN_ERR_VALUE, "GroupNorm: expected a finite eps >= 0, got %g", o->eps);
    int64_t c[1] = {o->num_channels};
    if (o->affine && (!kn__module_parameter(m, "weight", c, 1, 1.0) ||
                      !kn__module_parameter(m, "bias", c, 1, 0.0)))
        return kn_last_status();
    return KN_OK;
}

static bool group_norm_shape(kn_layer_shape *s)
{
    kn_group_norm_options *o = &s->options->group_norm;
    const kn_layer_io *in = &s->inputs[0];
    if (in->ndim < 1)
        return kn__shape_fail(s, NULL, "expects a [channels, ...] input, got %s",
                              kn__shape_of(in->shape, in->ndim));
    int64_t channels = in->shape[0];
    if (!kn__shape_infer(s, "num_channels", &o->num_channels, channels)) return false;
    if (channels % o->num_groups)
        return kn__shape_fail(s, "num_groups",
                              "expected a divisor of the input's %lld channels (input %s), got "
                              "%lld",
                              (long long)channels, kn__shape_of(in->shape, in->ndim),
                              (long long)o->num_groups);
    s->parameter_count = o->affine ? 2 * channels : 0;
    /* with affine, the normalised values are kept for the weight's gradient */
    if (o->affine) {
        s->saved_elements = 1;
        for (int d = 0; d < in->ndim; d++) s->saved_elements *= in->shape[d];
    }
    return true;
}

static kn_tensor *group_norm_forward(kn_module *m, kn_tensor *const *in, int n)
{
    (void)n;
    kn_tensor *x = in[0];
    const kn_group_norm_options *o = &m->options.group_norm;
    if (x->ndim < 2 || x->shape[1] != o->num_channels)
        return kn__error_null(KN_ERR_SHAPE,
                              "GroupNorm: expected an input [N, %lld, *] (num_channels %lld in "
                              "dim 1), got %s",
                              (long long)o->num_channels, (long long)o->num_channels, kn__shape(x));
    return kn_group_norm(x, o->num_groups, kn__module_tensor(m, "weight"),
                         kn__module_tensor(m, "bias"), o->eps);
}

static void group_norm_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_group_norm_options *o = &m->options.group_norm;
    kn__repr_add(buf, size, "%lld, %lld, eps=%g, affine=%s", (long long)o->num_groups,
                 (long long)o->num_channels, o->eps, kn__py_bool(o->affine));
}

const kn_layer_type kn__layer_group_norm = {
    .kind = KN_MODULE_GROUP_NORM,
    .name = "group_norm",
    .torch_name = "GroupNorm",
    .args = GROUP_NORM_ARGS,
    .capturable = true,
    .init = group_norm_init,
    .shape = group_norm_shape,
    .forward = group_norm_forward,
    .describe = group_norm_describe,
};

kn_module *kn_group_norm_new(int64_t num_groups, int64_t num_channels, double eps, bool affine)
{
    kn_layer_options o = {.group_norm = {num_groups, num_channels, eps, affine}};
    return kn_module_new(KN_MODULE_GROUP_NORM, &o, NULL);
}

/* ---- positional_embedding: nanoGPT's x + wpe(arange(T)), wpe = nn.Embedding(
 * num_embeddings, embedding_dim) -----------------------------------------------------------
 * x [N, T, C] -> x + weight[0:T] (broadcast over the batch); weight [num_embeddings, C]
 * under torch's name "weight", drawn N(0, 1) as nn.Embedding's. A sequence longer than
 * the table is an error (the spec's at validation, the forward's at run time). */

static const kn_layer_arg POSITIONAL_EMBEDDING_ARGS[] = {
    KN_ARG_SIZE_OF(positional_embedding, num_embeddings, KN_ARG_REQUIRED),
    KN_ARG_SIZE_OF(positional_embedding, embedding_dim, KN_ARG_INFERRED),
    {0},
};

static kn_status positional_embedding_init(kn_module *m, kn_generator *gen)
{
    const kn_positional_embedding_options *o = &m->options.positional_embedding;
    return kn__module_table(m, o->num_embeddings, o->embedding_dim, gen);
}

static bool positional_embedding_shape(kn_layer_shape *s)
{
    kn_positional_embedding_options *o = &s->options->positional_embedding;
    const kn_layer_io *in = &s->inputs[0];
    if (in->ndim != 2)
        return kn__shape_fail(s, NULL,
                              "expects a [sequence, embedding_dim] input (token embeddings), got "
                              "%s",
                              kn__shape_of(in->shape, in->ndim));
    if (!kn__shape_infer(s, "embedding_dim", &o->embedding_dim, in->shape[1])) return false;
    if (in->shape[0] > o->num_embeddings)
        return kn__shape_fail(s, "num_embeddings",
                              "expected at least the input's %lld positions (input %s), got %lld",
                              (long long)in->shape[0], kn__shape_of(in->shape, in->ndim),
                              (long long)o->num_embeddings);
    s->parameter_count = o->num_embeddings * o->embedding_dim;
    return true;
}

static kn_tensor *positional_embedding_forward(kn_module *m, kn_tensor *const *in, int n)
{
    (void)n;
    kn_tensor *x = in[0];
    const kn_positional_embedding_options *o = &m->options.positional_embedding;
    if (x->ndim != 2 && x->ndim != 3)
        return kn__error_null(KN_ERR_SHAPE,
                              "PositionalEmbedding: expected an input [N, T, %lld] or [T, %lld], "
                              "got %s",
                              (long long)o->embedding_dim, (long long)o->embedding_dim,
                              kn__shape(x));
    int64_t positions = x->shape[x->ndim - 2];
    if (x->shape[x->ndim - 1] != o->embedding_dim)
        return kn__error_null(KN_ERR_SHAPE,
                              "PositionalEmbedding: expected embeddings of %lld values in the "
                              "last dim, got input %s",
                              (long long)o->embedding_dim, kn__shape(x));
    /* In an incremental forward (generation with a key/value cache) the input holds the
     * positions after the cached ones. */
    int64_t first = kn_incremental_position();
    if (first + positions > o->num_embeddings) {
        if (first > 0)
            return kn__error_null(KN_ERR_SHAPE,
                                  "PositionalEmbedding: positions %lld..%lld of the sequence "
                                  "(%lld cached, input %s) go past num_embeddings (%lld)",
                                  (long long)first, (long long)(first + positions - 1),
                                  (long long)first, kn__shape(x), (long long)o->num_embeddings);
        return kn__error_null(KN_ERR_SHAPE,
                              "PositionalEmbedding: the input %s has %lld positions, more than "
                              "num_embeddings (%lld)",
                              kn__shape(x), (long long)positions, (long long)o->num_embeddings);
    }
    kn_tensor *weight = kn__module_tensor(m, "weight");
    return kn_add(x, kn_narrow(weight, 0, first, positions));
}

static void positional_embedding_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_positional_embedding_options *o = &m->options.positional_embedding;
    kn__repr_add(buf, size, "%lld, %lld", (long long)o->num_embeddings,
                 (long long)o->embedding_dim);
}

const kn_layer_type kn__layer_positional_embedding = {
    .kind = KN_MODULE_POSITIONAL_EMBEDDING,
    .name = "positional_embedding",
    .torch_name = "PositionalEmbedding",
    .args = POSITIONAL_EMBEDDING_ARGS,
    .capturable = true,
    .init = positional_embedding_init,
    .shape = positional_embedding_shape,
    .forward = positional_embedding_forward,
    .describe = positional_embedding_describe,
};

kn_module *kn_positional_embedding_new(int64_t num_embeddings, int64_t embedding_dim,
                                       kn_generator *gen)
{
    kn_layer_options o = {.positional_embedding = {num_embeddings, embedding_dim}};
    return kn_module_new(KN_MODULE_POSITIONAL_EMBEDDING, &o, gen);
}

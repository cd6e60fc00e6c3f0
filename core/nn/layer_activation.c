/*
 * layer_activation.c — the layers that map each element (or each row, softmax) on its
 * own, so the output has the input's shape: ReLU, SiLU, Tanh, Sigmoid, LeakyReLU, GELU,
 * Softmax, and Dropout. Their ops (forward and backward) are in core/ops.
 */
#include "nn_internal.h"

#include <math.h>

/* ---- the pointwise activations: y = f(x), elementwise, any shape ---------------------- */

static const kn_layer_arg INPLACE_ARGS[] = {KN_ARG_INPLACE_OF(activation), {0}};

static kn_tensor *relu_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)m, (void)n;
    return kn_relu(x[0]);
}

const kn_layer_type kn__layer_relu = {
    .kind = KN_MODULE_RELU,
    .name = "relu",
    .torch_name = "ReLU",
    .args = INPLACE_ARGS,
    .capturable = true,
    .forward = relu_forward,
};

kn_module *kn_relu_new(void)
{
    return kn_module_new(KN_MODULE_RELU, NULL, NULL);
}

static kn_tensor *tanh_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)m, (void)n;
    return kn_tanh(x[0]);
}

const kn_layer_type kn__layer_tanh = {
    .kind = KN_MODULE_TANH,
    .name = "tanh",
    .torch_name = "Tanh",
    .capturable = true,
    .forward = tanh_forward,
};

kn_module *kn_tanh_new(void)
{
    return kn_module_new(KN_MODULE_TANH, NULL, NULL);
}

static kn_tensor *sigmoid_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)m, (void)n;
    return kn_sigmoid(x[0]);
}

const kn_layer_type kn__layer_sigmoid = {
    .kind = KN_MODULE_SIGMOID,
    .name = "sigmoid",
    .torch_name = "Sigmoid",
    .capturable = true,
    .forward = sigmoid_forward,
};

kn_module *kn_sigmoid_new(void)
{
    return kn_module_new(KN_MODULE_SIGMOID, NULL, NULL);
}

static kn_tensor *silu_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)m, (void)n;
    return kn_silu(x[0]);
}

const kn_layer_type kn__layer_silu = {
    .kind = KN_MODULE_SILU,
    .name = "silu",
    .torch_name = "SiLU",
    .args = INPLACE_ARGS,
    .capturable = true,
    .forward = silu_forward,
};

kn_module *kn_silu_new(void)
{
    return kn_module_new(KN_MODULE_SILU, NULL, NULL);
}

/* ---- leaky_relu: nn.LeakyReLU(negative_slope=0.01, inplace=False) --------------------- */

static const kn_layer_arg LEAKY_RELU_ARGS[] = {
    KN_ARG_NUMBER_OF(leaky_relu, negative_slope, .def = 0.01, .min = -INFINITY, .max = INFINITY),
    KN_ARG_INPLACE_OF(leaky_relu),
    {0},
};

static kn_status leaky_relu_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    double slope = m->options.leaky_relu.negative_slope;
    if (!isfinite(slope))
        return kn__error(KN_ERR_VALUE, "LeakyReLU: negative_slope must be finite, got %g", slope);
    return KN_OK;
}

static kn_tensor *leaky_relu_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_leaky_relu(x[0], m->options.leaky_relu.negative_slope);
}

static void leaky_relu_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "negative_slope=%g", m->options.leaky_relu.negative_slope);
}

const kn_layer_type kn__layer_leaky_relu = {
    .kind = KN_MODULE_LEAKY_RELU,
    .name = "leaky_relu",
    .torch_name = "LeakyReLU",
    .args = LEAKY_RELU_ARGS,
    .capturable = true,
    .init = leaky_relu_init,
    .forward = leaky_relu_forward,
    .describe = leaky_relu_describe,
};

kn_module *kn_leaky_relu_new(double negative_slope)
{
    kn_layer_options o = {.leaky_relu = {.negative_slope = negative_slope}};
    return kn_module_new(KN_MODULE_LEAKY_RELU, &o, NULL);
}

/* ---- gelu: nn.GELU(approximate='none') ----------------------------------------------- */

/* In kn_gelu_approximation's order. */
static const char *const GELU_APPROXIMATIONS[] = {"none", "tanh", NULL};

static const kn_layer_arg GELU_ARGS[] = {
    KN_ARG_CHOICE_OF(gelu, approximate, GELU_APPROXIMATIONS, .def = KN_GELU_EXACT),
    {0},
};

static kn_status gelu_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    int approximate = m->options.gelu.approximate;
    if (approximate != KN_GELU_EXACT && approximate != KN_GELU_TANH)
        return kn__error(KN_ERR_VALUE, "GELU: approximate must be exact or tanh, got %d",
                         approximate);
    return KN_OK;
}

static kn_tensor *gelu_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_gelu(x[0], (kn_gelu_approximation)m->options.gelu.approximate);
}

static void gelu_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "approximate='%s'", GELU_APPROXIMATIONS[m->options.gelu.approximate]);
}

const kn_layer_type kn__layer_gelu = {
    .kind = KN_MODULE_GELU,
    .name = "gelu",
    .torch_name = "GELU",
    .args = GELU_ARGS,
    .capturable = true,
    .init = gelu_init,
    .forward = gelu_forward,
    .describe = gelu_describe,
};

kn_module *kn_gelu_new(kn_gelu_approximation approximate)
{
    kn_layer_options o = {.gelu = {(int)approximate}};
    return kn_module_new(KN_MODULE_GELU, &o, NULL);
}

/* ---- softmax: nn.Softmax(dim) -------------------------------------------------------
 * exp(x) / sum(exp(x)) over dim (counted with the batch dim). torch's implicit dim is
 * deprecated and depends on the rank, so the spec asks for it. */

static const kn_layer_arg SOFTMAX_ARGS[] = {
    KN_ARG_INT_OF(softmax, dim, .flags = KN_ARG_REQUIRED, .min = -KN_MAX_DIMS,
                  .max = KN_MAX_DIMS - 1, .expected = "the dim to normalise over, e.g. 1 or -1"),
    {0},
};

static bool softmax_shape(kn_layer_shape *s)
{
    int dim;
    return kn__shape_batched_dim(s, "dim", s->options->softmax.dim, &dim);
}

static kn_tensor *softmax_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_softmax(x[0], (int)m->options.softmax.dim);
}

static void softmax_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "dim=%lld", (long long)m->options.softmax.dim);
}

const kn_layer_type kn__layer_softmax = {
    .kind = KN_MODULE_SOFTMAX,
    .name = "softmax",
    .torch_name = "Softmax",
    .args = SOFTMAX_ARGS,
    .capturable = true,
    .shape = softmax_shape,
    .forward = softmax_forward,
    .describe = softmax_describe,
};

kn_module *kn_softmax_new(int dim)
{
    kn_layer_options o = {.softmax = {dim}};
    return kn_module_new(KN_MODULE_SOFTMAX, &o, NULL);
}

/* ---- dropout: nn.Dropout(p=0.5, inplace=False) ----------------------------------------
 * training: each element zeroed with probability p, the rest scaled by 1 / (1 - p);
 * evaluation: the identity. */

static const kn_layer_arg DROPOUT_ARGS[] = {
    KN_ARG_NUMBER_OF(dropout, p, .def = 0.5, .min = 0, .max = 1),
    KN_ARG_INPLACE_OF(dropout),
    {0},
};

static kn_status dropout_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    double p = m->options.dropout.p;
    if (!(p >= 0.0 && p <= 1.0))
        return kn__error(KN_ERR_VALUE,
                         "Dropout: probability p has to be between 0 and 1, but got %g", p);
    return KN_OK;
}

static kn_tensor *dropout_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_dropout(x[0], m->options.dropout.p, m->training, m->dropout_generator);
}

static void dropout_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "p=%g, inplace=False", m->options.dropout.p);
}

static const char *dropout_host_bound(const kn_module *m)
{
    return m->options.dropout.p > 0 ? "Dropout draws its mask on the cpu at every step" : NULL;
}

const kn_layer_type kn__layer_dropout = {
    .kind = KN_MODULE_DROPOUT,
    .name = "dropout",
    .torch_name = "Dropout",
    .flags = KN_LAYER_RANDOM,
    .args = DROPOUT_ARGS,
    .host_bound_if = dropout_host_bound,
    .init = dropout_init,
    .forward = dropout_forward,
    .describe = dropout_describe,
};

kn_module *kn_dropout_new(double p)
{
    kn_layer_options o = {.dropout = {.p = p}};
    return kn_module_new(KN_MODULE_DROPOUT, &o, NULL);
}

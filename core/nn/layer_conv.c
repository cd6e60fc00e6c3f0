/*
 * layer_conv.c — the layers that slide a window over an image [C, H, W]: Conv2d,
 * MaxPool2d, AvgPool2d, and AdaptiveAvgPool2d (whose windows follow from the sizes).
 */
#include "nn_internal.h"

#include <math.h>

/* A window's arguments must be positive (stride and dilation 0 take 1, torch's
 * defaults); padding non-negative. */
static kn_status check_window(kn_module *m, int stride[2], int padding[2], int dilation[2])
{
    for (int i = 0; i < 2; i++) {
        if (stride[i] == 0) stride[i] = 1;
        if (dilation && dilation[i] == 0) dilation[i] = 1;
        KN__CHECK_POSITIVE(m, "stride", stride[i]);
        if (dilation) KN__CHECK_POSITIVE(m, "dilation", dilation[i]);
        if (padding[i] < 0)
            return kn__error(KN_ERR_VALUE, "%s: padding must be non-negative, got %d", m->type_name,
                             padding[i]);
    }
    return KN_OK;
}

/* ---- conv2d: nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
 * dilation=1, groups=1, bias=True) ------------------------------------------------------
 * x [N, C, H, W] -> [N, out, H', W'], H' = floor((H + 2p - d(k - 1) - 1) / s) + 1;
 * weight [out, C / groups, kh, kw], bias [out]. */

static const kn_layer_arg CONV2D_ARGS[] = {
    KN_ARG_SIZE_OF(conv2d, in_channels, KN_ARG_INFERRED),
    KN_ARG_SIZE_OF(conv2d, out_channels, KN_ARG_REQUIRED),
    KN_ARG_PAIR_OF(conv2d, kernel_size, .flags = KN_ARG_REQUIRED, .min = 1),
    KN_ARG_PAIR_OF(conv2d, stride, .def = 1, .min = 1),
    KN_ARG_PAIR_OF(conv2d, padding, .def = 0, .min = 0),
    KN_ARG_PAIR_OF(conv2d, dilation, .def = 1, .min = 1),
    KN_ARG_INT_OF(conv2d, groups, .def = 1, .min = 1, .max = KN_ARG_MAX_SIZE),
    KN_ARG_BOOL_OF(conv2d, bias, true),
    {0},
};

static kn_status conv2d_init(kn_module *m, kn_generator *gen)
{
    kn_conv2d_options *o = &m->options.conv2d;
    KN__CHECK_POSITIVE(m, "in_channels", o->in_channels);
    KN__CHECK_POSITIVE(m, "out_channels", o->out_channels);
    KN__CHECK_POSITIVE(m, "kernel_size", o->kernel_size[0]);
    KN__CHECK_POSITIVE(m, "kernel_size", o->kernel_size[1]);
    if (check_window(m, o->stride, o->padding, o->dilation) != KN_OK) return kn_last_status();
    if (o->groups == 0) o->groups = 1;
    KN__CHECK_POSITIVE(m, "groups", o->groups);
    if (o->in_channels % o->groups || o->out_channels % o->groups)
        return kn__error(KN_ERR_VALUE,
                         "Conv2d: in_channels (%lld) and out_channels (%lld) must be divisible "
                         "by groups (%lld)",
                         (long long)o->in_channels, (long long)o->out_channels,
                         (long long)o->groups);
    int64_t shape[4] = {o->out_channels, o->in_channels / o->groups, o->kernel_size[0],
                        o->kernel_size[1]};
    return kn__module_weight_bias(m, shape, 4, o->bias, gen);
}

static bool conv2d_shape(kn_layer_shape *s)
{
    kn_conv2d_options *o = &s->options->conv2d;
    if (!kn__shape_image(s)) return false;
    int64_t channels = s->inputs[0].shape[0];
    if (!kn__shape_infer(s, "in_channels", &o->in_channels, channels)) return false;
    if (channels % o->groups || o->out_channels % o->groups)
        return kn__shape_fail(s, "groups",
                              "in_channels (%lld) and out_channels (%lld) must both be divisible "
                              "by groups, got %lld",
                              (long long)channels, (long long)o->out_channels,
                              (long long)o->groups);
    if (!kn__shape_window(s, o->kernel_size, o->stride, o->padding, o->dilation, false))
        return false;
    s->output.shape[0] = o->out_channels;
    s->parameter_count =
        o->out_channels * (channels / o->groups) * o->kernel_size[0] * o->kernel_size[1] +
        (o->bias ? o->out_channels : 0);
    return true;
}

static kn_tensor *conv2d_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    const kn_conv2d_options *o = &m->options.conv2d;
    kn_conv2d_args args = {.groups = (int)o->groups};
    for (int i = 0; i < 2; i++) {
        args.stride[i] = o->stride[i];
        args.padding[i] = o->padding[i];
        args.dilation[i] = o->dilation[i];
    }
    return kn_conv2d(x[0], kn__module_tensor(m, "weight"), kn__module_tensor(m, "bias"), args);
}

static void conv2d_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_conv2d_options *o = &m->options.conv2d;
    kn__repr_add(buf, size, "%lld, %lld, ", (long long)o->in_channels, (long long)o->out_channels);
    kn__repr_pair(buf, size, "kernel_size", o->kernel_size, true);
    kn__repr_add(buf, size, ", ");
    kn__repr_pair(buf, size, "stride", o->stride, true);
    if (o->padding[0] || o->padding[1]) {
        kn__repr_add(buf, size, ", ");
        kn__repr_pair(buf, size, "padding", o->padding, true);
    }
    if (o->dilation[0] != 1 || o->dilation[1] != 1) {
        kn__repr_add(buf, size, ", ");
        kn__repr_pair(buf, size, "dilation", o->dilation, true);
    }
    if (o->groups != 1) kn__repr_add(buf, size, ", groups=%lld", (long long)o->groups);
    if (!o->bias) kn__repr_add(buf, size, ", bias=False");
}

const kn_layer_type kn__layer_conv2d = {
    .kind = KN_MODULE_CONV2D,
    .name = "conv2d",
    .torch_name = "Conv2d",
    .args = CONV2D_ARGS,
    .capturable = true,
    .init = conv2d_init,
    .shape = conv2d_shape,
    .forward = conv2d_forward,
    .describe = conv2d_describe,
};

kn_module *kn_conv2d_new(int64_t in_channels, int64_t out_channels, const int kernel_size[2],
                         kn_conv2d_args args, bool bias, kn_generator *gen)
{
    if (!kernel_size) return kn__error_null(KN_ERR_NULL, "Conv2d: kernel_size is NULL");
    kn_layer_options o = {.conv2d = {.in_channels = in_channels,
                                     .out_channels = out_channels,
                                     .kernel_size = {kernel_size[0], kernel_size[1]},
                                     .groups = args.groups,
                                     .bias = bias}};
    for (int i = 0; i < 2; i++) {
        o.conv2d.stride[i] = args.stride[i];
        o.conv2d.padding[i] = args.padding[i];
        o.conv2d.dilation[i] = args.dilation[i];
    }
    return kn_module_new(KN_MODULE_CONV2D, &o, gen);
}

/* ---- pools: nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1,
 * ceil_mode=False) and nn.AvgPool2d(kernel_size, stride=None, padding=0,
 * ceil_mode=False, count_include_pad=True) -------------------------------------------
 * [N, C, H, W] -> [N, C, H', W'] as conv2d's H'; stride None (0) is the kernel size. */

static const kn_layer_arg MAX_POOL2D_ARGS[] = {
    KN_ARG_PAIR_OF(max_pool2d, kernel_size, .flags = KN_ARG_REQUIRED, .min = 1),
    KN_ARG_PAIR_OF(max_pool2d, stride, .min = 1, .default_from = "kernel_size"),
    KN_ARG_PAIR_OF(max_pool2d, padding, .def = 0, .min = 0),
    KN_ARG_PAIR_OF(max_pool2d, dilation, .def = 1, .min = 1),
    KN_ARG_BOOL_OF(max_pool2d, ceil_mode, false),
    {0},
};

static const kn_layer_arg AVG_POOL2D_ARGS[] = {
    KN_ARG_PAIR_OF(avg_pool2d, kernel_size, .flags = KN_ARG_REQUIRED, .min = 1),
    KN_ARG_PAIR_OF(avg_pool2d, stride, .min = 1, .default_from = "kernel_size"),
    KN_ARG_PAIR_OF(avg_pool2d, padding, .def = 0, .min = 0),
    KN_ARG_BOOL_OF(avg_pool2d, ceil_mode, false),
    KN_ARG_BOOL_OF(avg_pool2d, count_include_pad, true),
    {0},
};

/* The arguments of both pools: the kernel op's form of them. */
static kn_pool2d_args pool_args(const kn_module *m)
{
    kn_pool2d_args a = {.dilation = {1, 1}};
    const int *k, *s, *p;
    if (m->kind == KN_MODULE_MAX_POOL2D) {
        const kn_max_pool2d_options *o = &m->options.max_pool2d;
        k = o->kernel_size, s = o->stride, p = o->padding;
        a.dilation[0] = o->dilation[0];
        a.dilation[1] = o->dilation[1];
        a.ceil_mode = o->ceil_mode;
    } else {
        const kn_avg_pool2d_options *o = &m->options.avg_pool2d;
        k = o->kernel_size, s = o->stride, p = o->padding;
        a.ceil_mode = o->ceil_mode;
        a.exclude_padding_from_count = !o->count_include_pad;
    }
    for (int i = 0; i < 2; i++) {
        a.kernel_size[i] = k[i];
        a.stride[i] = s[i];
        a.padding[i] = p[i];
    }
    return a;
}

/* Checks as PyTorch does: padding at most half the (effective) kernel. */
static kn_status pool_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    bool max = m->kind == KN_MODULE_MAX_POOL2D;
    int *k = max ? m->options.max_pool2d.kernel_size : m->options.avg_pool2d.kernel_size;
    int *stride = max ? m->options.max_pool2d.stride : m->options.avg_pool2d.stride;
    int *padding = max ? m->options.max_pool2d.padding : m->options.avg_pool2d.padding;
    int *dilation = max ? m->options.max_pool2d.dilation : NULL;
    for (int i = 0; i < 2; i++) {
        KN__CHECK_POSITIVE(m, "kernel_size", k[i]);
        if (stride[i] == 0) stride[i] = k[i];
    }
    if (check_window(m, stride, padding, dilation) != KN_OK) return kn_last_status();
    for (int i = 0; i < 2; i++) {
        int effective = dilation ? (k[i] - 1) * dilation[i] + 1 : k[i];
        if (padding[i] > effective / 2)
            return kn__error(KN_ERR_VALUE,
                             "%s: padding should be between 0 and half the kernel size (%d), got "
                             "%d",
                             m->type_name, effective / 2, padding[i]);
    }
    return KN_OK;
}

static bool pool_shape(kn_layer_shape *s)
{
    if (!kn__shape_image(s)) return false;
    bool max = s->type->kind == KN_MODULE_MAX_POOL2D;
    const kn_layer_options *o = s->options;
    const int *k = max ? o->max_pool2d.kernel_size : o->avg_pool2d.kernel_size;
    const int *padding = max ? o->max_pool2d.padding : o->avg_pool2d.padding;
    if (padding[0] > k[0] / 2 || padding[1] > k[1] / 2)
        return kn__shape_fail(s, "padding",
                              "expected at most half of kernel_size [%d, %d], got [%d, %d]", k[0],
                              k[1], padding[0], padding[1]);
    static const int one[2] = {1, 1};
    if (max)
        return kn__shape_window(s, k, o->max_pool2d.stride, padding, o->max_pool2d.dilation,
                                o->max_pool2d.ceil_mode);
    return kn__shape_window(s, k, o->avg_pool2d.stride, padding, one, o->avg_pool2d.ceil_mode);
}

static kn_tensor *max_pool2d_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_max_pool2d(x[0], pool_args(m));
}

static kn_tensor *avg_pool2d_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_avg_pool2d(x[0], pool_args(m));
}

static void pool_describe(const kn_module *m, char *buf, size_t size)
{
    kn_pool2d_args p = pool_args(m);
    kn__repr_pair(buf, size, "kernel_size", p.kernel_size, false);
    kn__repr_add(buf, size, ", ");
    kn__repr_pair(buf, size, "stride", p.stride, false);
    kn__repr_add(buf, size, ", ");
    kn__repr_pair(buf, size, "padding", p.padding, false);
    if (m->kind == KN_MODULE_MAX_POOL2D) {
        kn__repr_add(buf, size, ", ");
        kn__repr_pair(buf, size, "dilation", p.dilation, false);
        kn__repr_add(buf, size, ", ceil_mode=%s", kn__py_bool(p.ceil_mode));
    }
}

const kn_layer_type kn__layer_max_pool2d = {
    .kind = KN_MODULE_MAX_POOL2D,
    .name = "max_pool2d",
    .torch_name = "MaxPool2d",
    .args = MAX_POOL2D_ARGS,
    .capturable = true,
    .init = pool_init,
    .shape = pool_shape,
    .forward = max_pool2d_forward,
    .describe = pool_describe,
};

const kn_layer_type kn__layer_avg_pool2d = {
    .kind = KN_MODULE_AVG_POOL2D,
    .name = "avg_pool2d",
    .torch_name = "AvgPool2d",
    .args = AVG_POOL2D_ARGS,
    .capturable = true,
    .init = pool_init,
    .shape = pool_shape,
    .forward = avg_pool2d_forward,
    .describe = pool_describe,
};

kn_module *kn_max_pool2d_new(kn_pool2d_args args)
{
    kn_layer_options o = {.max_pool2d = {.ceil_mode = args.ceil_mode}};
    for (int i = 0; i < 2; i++) {
        o.max_pool2d.kernel_size[i] = args.kernel_size[i];
        o.max_pool2d.stride[i] = args.stride[i];
        o.max_pool2d.padding[i] = args.padding[i];
        o.max_pool2d.dilation[i] = args.dilation[i];
    }
    return kn_module_new(KN_MODULE_MAX_POOL2D, &o, NULL);
}

kn_module *kn_avg_pool2d_new(kn_pool2d_args args)
{
    if ((args.dilation[0] && args.dilation[0] != 1) || (args.dilation[1] && args.dilation[1] != 1))
        return kn__error_null(KN_ERR_VALUE, "AvgPool2d: has no dilation, got (%d, %d)",
                              args.dilation[0], args.dilation[1]);
    kn_layer_options o = {.avg_pool2d = {.ceil_mode = args.ceil_mode,
                                         .count_include_pad = !args.exclude_padding_from_count}};
    for (int i = 0; i < 2; i++) {
        o.avg_pool2d.kernel_size[i] = args.kernel_size[i];
        o.avg_pool2d.stride[i] = args.stride[i];
        o.avg_pool2d.padding[i] = args.padding[i];
    }
    return kn_module_new(KN_MODULE_AVG_POOL2D, &o, NULL);
}

/* ---- adaptive_avg_pool2d: nn.AdaptiveAvgPool2d(output_size) ----------------------------
 * [N, C, H, W] -> [N, C, oh, ow]; cell i averages rows floor(i H / oh) to
 * ceil((i + 1) H / oh), as PyTorch. */

static const kn_layer_arg ADAPTIVE_AVG_POOL2D_ARGS[] = {
    KN_ARG_PAIR_OF(adaptive_avg_pool2d, output_size, .flags = KN_ARG_REQUIRED, .min = 1),
    {0},
};

static kn_status adaptive_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    const int *size = m->options.adaptive_avg_pool2d.output_size;
    KN__CHECK_POSITIVE(m, "output height", size[0]);
    KN__CHECK_POSITIVE(m, "output width", size[1]);
    return KN_OK;
}

static bool adaptive_shape(kn_layer_shape *s)
{
    if (!kn__shape_image(s)) return false;
    const kn_layer_io *in = &s->inputs[0];
    if (in->shape[1] == 0 || in->shape[2] == 0)
        return kn__shape_fail(s, NULL, "expects non-zero height and width, got %s",
                              kn__shape_of(in->shape, in->ndim));
    s->output.shape[1] = s->options->adaptive_avg_pool2d.output_size[0];
    s->output.shape[2] = s->options->adaptive_avg_pool2d.output_size[1];
    return true;
}

static kn_tensor *adaptive_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    const int *size = m->options.adaptive_avg_pool2d.output_size;
    return kn_adaptive_avg_pool2d(x[0], size[0], size[1]);
}

static void adaptive_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_pair(buf, size, "output_size", m->options.adaptive_avg_pool2d.output_size, false);
}

const kn_layer_type kn__layer_adaptive_avg_pool2d = {
    .kind = KN_MODULE_ADAPTIVE_AVG_POOL2D,
    .name = "adaptive_avg_pool2d",
    .torch_name = "AdaptiveAvgPool2d",
    .args = ADAPTIVE_AVG_POOL2D_ARGS,
    .capturable = true,
    .init = adaptive_init,
    .shape = adaptive_shape,
    .forward = adaptive_forward,
    .describe = adaptive_describe,
};

kn_module *kn_adaptive_avg_pool2d_new(int output_height, int output_width)
{
    kn_layer_options o = {.adaptive_avg_pool2d = {{output_height, output_width}}};
    return kn_module_new(KN_MODULE_ADAPTIVE_AVG_POOL2D, &o, NULL);
}

/*
 * layer_norm.c — the normalisation layers: BatchNorm1d and BatchNorm2d (statistics per
 * channel over the batch, with running statistics for evaluation) and LayerNorm
 * (statistics per sample over its trailing dims). Their ops are in core/ops/ops_norm.c.
 */
#include "nn_internal.h"

#include <math.h>
#include <string.h>

/* ---- batch_norm1d, batch_norm2d: nn.BatchNorm1d / nn.BatchNorm2d(num_features,
 * eps=1e-05, momentum=0.1, affine=True, track_running_stats=True) ------------------------
 * x [N, C] or [N, C, L] (1d), [N, C, H, W] (2d) -> same shape, normalised per channel;
 * weight, bias [C] (affine); buffers running_mean, running_var [C] and
 * num_batches_tracked (an int64 scalar, as in PyTorch's state_dict). */

static const kn_layer_arg BATCH_NORM_ARGS[] = {
    KN_ARG_SIZE_OF(batch_norm, num_features, KN_ARG_INFERRED),
    KN_ARG_NUMBER_OF(batch_norm, eps, .def = 1e-5, .min = 0, .max = INFINITY,
                     .flags = KN_ARG_MIN_OPEN | KN_ARG_MAX_OPEN),
    KN_ARG_NUMBER_OF(batch_norm, momentum, .def = 0.1, .min = 0, .max = 1),
    KN_ARG_BOOL_OF(batch_norm, affine, true),
    KN_ARG_BOOL_OF(batch_norm, track_running_stats, true),
    {0},
};

static kn_status batch_norm_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    const kn_batch_norm_options *o = &m->options.batch_norm;
    KN__CHECK_POSITIVE(m, "num_features", o->num_features);
    if (!(isfinite(o->eps) && o->eps >= 0) || !isfinite(o->momentum))
        return kn__error(KN_ERR_VALUE,
                         "%s: expected a finite eps >= 0 and a finite momentum, got eps %g and "
                         "momentum %g",
                         m->type_name, o->eps, o->momentum);
    int64_t c[1] = {o->num_features};
    if (o->affine) {
        if (!kn__module_parameter(m, "weight", c, 1, 1.0) ||
            !kn__module_parameter(m, "bias", c, 1, 0.0))
            return kn_last_status();
    }
    if (o->track_running_stats) {
        /* num_batches_tracked stays on the cpu: the forward reads and counts it there */
        if (!kn__module_buffer(m, "running_mean", c, 1, KN_FLOAT32, 0.0, false) ||
            !kn__module_buffer(m, "running_var", c, 1, KN_FLOAT32, 1.0, false) ||
            !kn__module_buffer(m, "num_batches_tracked", (int64_t[]){0}, 0, KN_INT64, 0.0, true))
            return kn_last_status();
    }
    return KN_OK;
}

static bool batch_norm_shape(kn_layer_shape *s)
{
    kn_batch_norm_options *o = &s->options->batch_norm;
    const kn_layer_io *in = &s->inputs[0];
    if (s->type->kind == KN_MODULE_BATCH_NORM1D) {
        if (in->ndim != 1 && in->ndim != 2)
            return kn__shape_fail(s, NULL,
                                  "expects a [features] or [channels, length] input, got %s",
                                  kn__shape_of(in->shape, in->ndim));
    } else if (!kn__shape_image(s)) {
        return false;
    }
    int64_t channels = in->shape[0];
    if (!kn__shape_infer(s, "num_features", &o->num_features, channels)) return false;
    s->parameter_count = o->affine ? 2 * channels : 0;
    s->buffer_bytes = o->track_running_stats ? 2 * 4 * channels + 8 : 0;
    return true;
}

static kn_tensor *batch_norm_forward(kn_module *m, kn_tensor *const *in, int n)
{
    (void)n;
    kn_tensor *x = in[0];
    const kn_batch_norm_options *o = &m->options.batch_norm;
    if (m->kind == KN_MODULE_BATCH_NORM1D && x->ndim != 2 && x->ndim != 3)
        return kn__error_null(KN_ERR_SHAPE,
                              "BatchNorm1d: expected a 2-D [N, C] or 3-D [N, C, L] input, got %s",
                              kn__shape(x));
    if (m->kind == KN_MODULE_BATCH_NORM2D && x->ndim != 4)
        return kn__error_null(
            KN_ERR_SHAPE, "BatchNorm2d: expected a 4-D [N, C, H, W] input, got %s", kn__shape(x));
    if (x->shape[1] != o->num_features)
        return kn__error_null(KN_ERR_SHAPE, "%s: expected %lld channels in dim 1, got input %s",
                              m->type_name, (long long)o->num_features, kn__shape(x));
    kn_tensor *count = kn__module_tensor(m, "num_batches_tracked");
    if (count && count->device.type != KN_DEVICE_CPU)
        return kn__error_null(KN_ERR_DEVICE,
                              "%s: num_batches_tracked must stay on the cpu (kn_module_to keeps "
                              "it there), got it on another device",
                              m->type_name);
    bool update = m->training && o->track_running_stats;
    double factor = o->momentum;
    if (update && o->momentum < 0) /* momentum=None: cumulative moving average */
        factor = 1.0 / (double)(kn_data_i64(count)[0] + 1);
    /* Batch statistics in training and whenever no running statistics are kept. */
    kn_tensor *y =
        kn_batch_norm(x, kn__module_tensor(m, "running_mean"), kn__module_tensor(m, "running_var"),
                      kn__module_tensor(m, "weight"), kn__module_tensor(m, "bias"),
                      m->training || !o->track_running_stats, factor, o->eps);
    if (y && update) kn_data_i64(count)[0] += 1;
    return y;
}

static void batch_norm_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_batch_norm_options *o = &m->options.batch_norm;
    kn__repr_add(buf, size, "%lld, eps=%g, ", (long long)o->num_features, o->eps);
    if (o->momentum < 0)
        kn__repr_add(buf, size, "momentum=None");
    else
        kn__repr_add(buf, size, "momentum=%g", o->momentum);
    kn__repr_add(buf, size, ", affine=%s, track_running_stats=%s", kn__py_bool(o->affine),
                 kn__py_bool(o->track_running_stats));
}

const kn_layer_type kn__layer_batch_norm1d = {
    .kind = KN_MODULE_BATCH_NORM1D,
    .name = "batch_norm1d",
    .torch_name = "BatchNorm1d",
    .args = BATCH_NORM_ARGS,
    .host_bound = "BatchNorm counts batches on the cpu",
    .init = batch_norm_init,
    .shape = batch_norm_shape,
    .forward = batch_norm_forward,
    .describe = batch_norm_describe,
};

const kn_layer_type kn__layer_batch_norm2d = {
    .kind = KN_MODULE_BATCH_NORM2D,
    .name = "batch_norm2d",
    .torch_name = "BatchNorm2d",
    .args = BATCH_NORM_ARGS,
    .host_bound = "BatchNorm counts batches on the cpu",
    .init = batch_norm_init,
    .shape = batch_norm_shape,
    .forward = batch_norm_forward,
    .describe = batch_norm_describe,
};

static kn_module *batch_norm_new(kn_module_kind kind, int64_t num_features, double eps,
                                 double momentum, bool affine, bool track_running_stats)
{
    kn_layer_options o = {.batch_norm = {num_features, eps, momentum, affine, track_running_stats}};
    return kn_module_new(kind, &o, NULL);
}

kn_module *kn_batch_norm1d_new(int64_t num_features, double eps, double momentum, bool affine,
                               bool track_running_stats)
{
    return batch_norm_new(KN_MODULE_BATCH_NORM1D, num_features, eps, momentum, affine,
                          track_running_stats);
}

kn_module *kn_batch_norm2d_new(int64_t num_features, double eps, double momentum, bool affine,
                               bool track_running_stats)
{
    return batch_norm_new(KN_MODULE_BATCH_NORM2D, num_features, eps, momentum, affine,
                          track_running_stats);
}

/* ---- layer_norm: nn.LayerNorm(normalized_shape, eps=1e-05, elementwise_affine=True) ----
 * x [N, ..., *normalized_shape] -> same shape, normalised over the trailing dims;
 * weight, bias of normalized_shape (elementwise_affine). */

static const kn_layer_arg LAYER_NORM_ARGS[] = {
    KN_ARG_INTS_OF(layer_norm, normalized_shape, .flags = KN_ARG_INFERRED, .min = 1,
                   .max = KN_ARG_MAX_SIZE),
    KN_ARG_NUMBER_OF(layer_norm, eps, .def = 1e-5, .min = 0, .max = INFINITY,
                     .flags = KN_ARG_MIN_OPEN | KN_ARG_MAX_OPEN),
    KN_ARG_BOOL_OF(layer_norm, elementwise_affine, true),
    {0},
};

static kn_status layer_norm_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    const kn_layer_norm_options *o = &m->options.layer_norm;
    const kn_int_list *shape = &o->normalized_shape;
    if (shape->n < 1 || shape->n >= KN_MAX_DIMS)
        return kn__error(KN_ERR_VALUE, "LayerNorm: normalized_shape must have 1 to %d dims, got %d",
                         KN_MAX_DIMS - 1, shape->n);
    for (int i = 0; i < shape->n; i++)
        if (shape->size[i] <= 0)
            return kn__error(KN_ERR_VALUE, "LayerNorm: normalized_shape must be positive, got %s",
                             kn__shape_of(shape->size, shape->n));
    if (!(isfinite(o->eps) && o->eps >= 0))
        return kn__error(KN_ERR_VALUE, "LayerNorm: expected a finite eps >= 0, got %g", o->eps);
    if (o->elementwise_affine) {
        if (!kn__module_parameter(m, "weight", shape->size, shape->n, 1.0) ||
            !kn__module_parameter(m, "bias", shape->size, shape->n, 0.0))
            return kn_last_status();
    }
    return KN_OK;
}

/* Unless given, normalized_shape is the input's last dim. */
static bool layer_norm_shape(kn_layer_shape *s)
{
    kn_layer_norm_options *o = &s->options->layer_norm;
    kn_int_list *shape = &o->normalized_shape;
    const kn_layer_io *in = &s->inputs[0];
    if (shape->n == 0 && in->ndim > 0) {
        shape->n = 1;
        shape->size[0] = in->shape[in->ndim - 1];
    }
    int k = shape->n;
    bool match = k >= 1 && k <= in->ndim;
    for (int i = 0; match && i < k; i++) match = shape->size[i] == in->shape[in->ndim - k + i];
    if (!match) {
        char given[96];
        kn_shape_str(shape->size, k, given, sizeof given);
        return kn__shape_fail(s, "normalized_shape",
                              "expected the trailing dims of the input %s, got %s",
                              kn__shape_of(in->shape, in->ndim), given);
    }
    int64_t numel = 1;
    for (int i = 0; i < k; i++) numel *= shape->size[i];
    s->parameter_count = o->elementwise_affine ? 2 * numel : 0;
    return true;
}

static kn_tensor *layer_norm_forward(kn_module *m, kn_tensor *const *in, int n)
{
    (void)n;
    kn_tensor *x = in[0];
    const kn_int_list *shape = &m->options.layer_norm.normalized_shape;
    int k = shape->n;
    bool fits = x->ndim >= k;
    for (int i = 0; fits && i < k; i++) fits = x->shape[x->ndim - k + i] == shape->size[i];
    if (!fits)
        return kn__error_null(KN_ERR_SHAPE,
                              "LayerNorm: normalized_shape is %s, so the input must end in those "
                              "dims, got %s",
                              kn__shape_of(shape->size, k), kn__shape(x));
    return kn_layer_norm(x, k, kn__module_tensor(m, "weight"), kn__module_tensor(m, "bias"),
                         m->options.layer_norm.eps);
}

static void layer_norm_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_layer_norm_options *o = &m->options.layer_norm;
    kn__repr_add(buf, size, "(");
    for (int i = 0; i < o->normalized_shape.n; i++)
        kn__repr_add(buf, size, "%s%lld", i ? ", " : "", (long long)o->normalized_shape.size[i]);
    kn__repr_add(buf, size, "%s), eps=%g, elementwise_affine=%s",
                 o->normalized_shape.n == 1 ? "," : "", o->eps, kn__py_bool(o->elementwise_affine));
}

const kn_layer_type kn__layer_layer_norm = {
    .kind = KN_MODULE_LAYER_NORM,
    .name = "layer_norm",
    .torch_name = "LayerNorm",
    .args = LAYER_NORM_ARGS,
    .capturable = true,
    .init = layer_norm_init,
    .shape = layer_norm_shape,
    .forward = layer_norm_forward,
    .describe = layer_norm_describe,
};

kn_module *kn_layer_norm_new(const int64_t *normalized_shape, int ndim, double eps,
                             bool elementwise_affine)
{
    if (!normalized_shape || ndim < 1 || ndim >= KN_MAX_DIMS)
        return kn__error_null(KN_ERR_VALUE,
                              "LayerNorm: normalized_shape must have 1 to %d dims, got %d",
                              KN_MAX_DIMS - 1, normalized_shape ? ndim : 0);
    kn_layer_options o = {.layer_norm = {.normalized_shape.n = ndim,
                                         .eps = eps,
                                         .elementwise_affine = elementwise_affine}};
    memcpy(o.layer_norm.normalized_shape.size, normalized_shape, sizeof(int64_t) * (size_t)ndim);
    return kn_module_new(KN_MODULE_LAYER_NORM, &o, NULL);
}

/*
 * layer_linear.c — the layers that are a matrix: Linear (a product with a weight) and
 * Embedding (rows of a weight picked by int64 indices).
 */
#include "nn_internal.h"

#include <math.h>

/* ---- linear: nn.Linear(in_features, out_features, bias=True) -------------------------
 * x [N, ..., in] -> y [N, ..., out] = x W^T + b; weight [out, in], bias [out]. */

static const kn_layer_arg LINEAR_ARGS[] = {
    KN_ARG_SIZE_OF(linear, in_features, KN_ARG_INFERRED),
    KN_ARG_SIZE_OF(linear, out_features, KN_ARG_REQUIRED),
    KN_ARG_BOOL_OF(linear, bias, true),
    {0},
};

static kn_status linear_init(kn_module *m, kn_generator *gen)
{
    const kn_linear_options *o = &m->options.linear;
    KN__CHECK_POSITIVE(m, "in_features", o->in_features);
    KN__CHECK_POSITIVE(m, "out_features", o->out_features);
    return kn__module_weight_bias(m, (int64_t[]){o->out_features, o->in_features}, 2, o->bias, gen);
}

/* Linear applies to the last dim; in a chain, a multi-dim input is almost always a
 * missing flatten, so it is allowed only when in_features says it is meant (a graph's
 * sequences [T, C] need no such word). */
static bool linear_shape(kn_layer_shape *s)
{
    kn_linear_options *o = &s->options->linear;
    const kn_layer_io *in = &s->inputs[0];
    int n = in->ndim;
    if (n == 0 || (n != 1 && !s->in_graph && o->in_features != in->shape[n - 1])) {
        char hint[128] = "";
        if (n > 1)
            snprintf(hint, sizeof hint,
                     " — add a flatten, or set in_features: %lld to apply it to the last dim "
                     "as nn.Linear does",
                     (long long)in->shape[n - 1]);
        return kn__shape_fail(s, NULL, "expects a 1-D input, got %s%s", kn__shape_of(in->shape, n),
                              hint);
    }
    int64_t last = in->shape[n - 1];
    if (!kn__shape_infer(s, "in_features", &o->in_features, last)) return false;
    s->output.shape[n - 1] = o->out_features;
    s->parameter_count = last * o->out_features + (o->bias ? o->out_features : 0);
    return true;
}

static kn_tensor *linear_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_linear(x[0], kn__module_tensor(m, "weight"), kn__module_tensor(m, "bias"));
}

static void linear_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_linear_options *o = &m->options.linear;
    kn__repr_add(buf, size, "in_features=%lld, out_features=%lld, bias=%s",
                 (long long)o->in_features, (long long)o->out_features, kn__py_bool(o->bias));
}

const kn_layer_type kn__layer_linear = {
    .kind = KN_MODULE_LINEAR,
    .name = "linear",
    .torch_name = "Linear",
    .args = LINEAR_ARGS,
    .capturable = true,
    .init = linear_init,
    .shape = linear_shape,
    .forward = linear_forward,
    .describe = linear_describe,
    .parameter_shape = kn__linear_parameter_shape,
};

kn_module *kn_linear_new(int64_t in_features, int64_t out_features, bool bias, kn_generator *gen)
{
    kn_layer_options o = {.linear = {in_features, out_features, bias}};
    return kn_module_new(KN_MODULE_LINEAR, &o, gen);
}

/* ---- embedding: nn.Embedding(num_embeddings, embedding_dim) ---------------------------
 * indices int64 [N, ...] -> [N, ..., embedding_dim] = weight[indices]; weight
 * [num_embeddings, embedding_dim] ~ N(0, 1). */

static const kn_layer_arg EMBEDDING_ARGS[] = {
    KN_ARG_SIZE_OF(embedding, num_embeddings, KN_ARG_REQUIRED),
    KN_ARG_SIZE_OF(embedding, embedding_dim, KN_ARG_REQUIRED),
    {0},
};

static kn_status embedding_init(kn_module *m, kn_generator *gen)
{
    const kn_embedding_options *o = &m->options.embedding;
    return kn__module_table(m, o->num_embeddings, o->embedding_dim, gen);
}

static bool embedding_shape(kn_layer_shape *s)
{
    const kn_embedding_options *o = &s->options->embedding;
    const kn_layer_io *in = &s->inputs[0];
    if (in->ndim + 1 > KN_MAX_DIMS - 1)
        return kn__shape_fail(s, NULL, "would output more than %d dims", KN_MAX_DIMS - 1);
    s->output.shape[in->ndim] = o->embedding_dim;
    s->output.ndim = in->ndim + 1;
    s->parameter_count = o->num_embeddings * o->embedding_dim;
    return true;
}

static kn_tensor *embedding_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_embedding(kn__module_tensor(m, "weight"), x[0]);
}

static void embedding_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_embedding_options *o = &m->options.embedding;
    kn__repr_add(buf, size, "%lld, %lld", (long long)o->num_embeddings,
                 (long long)o->embedding_dim);
}

const kn_layer_type kn__layer_embedding = {
    .kind = KN_MODULE_EMBEDDING,
    .name = "embedding",
    .torch_name = "Embedding",
    .args = EMBEDDING_ARGS,
    .input_dtype = KN_INT64,
    .host_bound = "Embedding checks its indices on the host",
    .init = embedding_init,
    .shape = embedding_shape,
    .forward = embedding_forward,
    .describe = embedding_describe,
    .parameter_shape = kn__embedding_parameter_shape,
};

kn_module *kn_embedding_new(int64_t num_embeddings, int64_t embedding_dim, kn_generator *gen)
{
    kn_layer_options o = {.embedding = {num_embeddings, embedding_dim}};
    return kn_module_new(KN_MODULE_EMBEDDING, &o, gen);
}

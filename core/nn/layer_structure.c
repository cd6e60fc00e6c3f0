/*
 * layer_structure.c — the layers that arrange rather than compute: Sequential (a chain
 * of modules) and Flatten.
 */
#include "nn_internal.h"

#include <stdio.h>

/* ---- sequential: nn.Sequential ------------------------------------------------------
 * x -> children[0] -> ... -> children[n-1]; no arguments, no parameters of its own. */

/* Children i.. that run as one op: conv2d -> relu (-> 2x2 max_pool2d) where ops_conv.c
 * fuses them (the same values and gradients as one by one, without writing the conv's
 * and the relu's outputs); returns how many children *y is the output of, 0 when they
 * do not fuse here. */
static int fused_children(kn_module *m, int i, kn_tensor *x, kn_tensor **y)
{
    kn_module **c = m->children;
    if (i + 1 >= m->n_children || c[i]->kind != KN_MODULE_CONV2D ||
        c[i + 1]->kind != KN_MODULE_RELU)
        return 0;
    kn_tensor *w = kn__module_tensor(c[i], "weight"), *b = kn__module_tensor(c[i], "bias");
    kn_conv2d_args conv = kn__conv2d_args(c[i]);
    kn_pool2d_args pool_args;
    const kn_pool2d_args *pool = NULL;
    if (i + 2 < m->n_children && c[i + 2]->kind == KN_MODULE_MAX_POOL2D) {
        pool_args = kn__pool2d_args(c[i + 2]);
        pool = &pool_args;
        if (!kn__conv2d_relu_pool_fusable(x, w, b, conv, pool)) pool = NULL;
    }
    if (!kn__conv2d_relu_pool_fusable(x, w, b, conv, pool)) return 0;
    *y = kn__conv2d_relu_pool(x, w, b, conv, pool);
    return pool ? 3 : 2;
}

/* Runs the children in order; each intermediate result is dropped as soon as the next
 * layer has used it (the graph keeps what backward needs). */
static kn_tensor *sequential_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    kn_tensor *current = kn_retain(x[0]); /* our own reference */
    for (int i = 0; i < m->n_children; i++) {
        kn_scope_begin();
        kn_tensor *fused = NULL;
        int ran = fused_children(m, i, current, &fused);
        kn_tensor *y = kn_retain(ran ? fused : kn_module_forward(m->children[i], current));
        kn_scope_end();
        kn_release(current);
        current = y;
        if (!y) {
            char message[512];
            snprintf(message, sizeof message, "%s", kn_last_error());
            return kn__error_null(kn_last_status(), "layer %d (%s): %s", i,
                                  m->children[i]->layer->name, message);
        }
        if (ran) i += ran - 1;
    }
    return kn_autorelease(current);
}

const kn_layer_type kn__layer_sequential = {
    .kind = KN_MODULE_SEQUENTIAL,
    .name = "sequential",
    .torch_name = "Sequential",
    .flags = KN_LAYER_CONTAINER,
    .capturable = true, /* as capturable as its children (kn_layer_host_bound) */
    .forward = sequential_forward,
};

/* ---- flatten: nn.Flatten(start_dim=1, end_dim=-1) ------------------------------------
 * [N, d1, ..., dk] -> [N, d1, ..., d(start-1), d(start) * ... * d(end), ...]; the dims
 * count the batch dim, as torch's do. */

static const kn_layer_arg FLATTEN_ARGS[] = {
    KN_ARG_INT_OF(flatten, start_dim, .def = 1, .min = -KN_MAX_DIMS, .max = KN_MAX_DIMS - 1),
    KN_ARG_INT_OF(flatten, end_dim, .def = -1, .min = -KN_MAX_DIMS, .max = KN_MAX_DIMS - 1),
    {0},
};

static bool flatten_shape(kn_layer_shape *s)
{
    const kn_flatten_options *o = &s->options->flatten;
    const kn_layer_io *in = &s->inputs[0];
    int start, end;
    bool ok = kn__shape_batched_dim(s, "start_dim", o->start_dim, &start);
    if (!ok || !kn__shape_batched_dim(s, "end_dim", o->end_dim, &end)) return false;
    char batched[128];
    if (end < start)
        return kn__shape_fail(s, "end_dim",
                              "expected start_dim (%lld) or a later dim of the batched input %s, "
                              "got %lld",
                              (long long)o->start_dim,
                              kn__shape_batched(in, batched, sizeof batched),
                              (long long)o->end_dim);
    int k = 0;
    for (int d = 1; d < start; d++) s->output.shape[k++] = in->shape[d - 1];
    int64_t product = 1;
    for (int d = start; d <= end; d++) product *= in->shape[d - 1];
    s->output.shape[k++] = product;
    for (int d = end + 1; d <= in->ndim; d++) s->output.shape[k++] = in->shape[d - 1];
    s->output.ndim = k;
    return true;
}

static kn_tensor *flatten_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    const kn_flatten_options *o = &m->options.flatten;
    return kn_flatten(x[0], (int)o->start_dim, (int)o->end_dim);
}

static void flatten_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_flatten_options *o = &m->options.flatten;
    kn__repr_add(buf, size, "start_dim=%lld, end_dim=%lld", (long long)o->start_dim,
                 (long long)o->end_dim);
}

const kn_layer_type kn__layer_flatten = {
    .kind = KN_MODULE_FLATTEN,
    .name = "flatten",
    .torch_name = "Flatten",
    .args = FLATTEN_ARGS,
    .capturable = true,
    .shape = flatten_shape,
    .forward = flatten_forward,
    .describe = flatten_describe,
};

kn_module *kn_flatten_new(int start_dim, int end_dim)
{
    kn_layer_options o = {.flatten = {start_dim, end_dim}};
    return kn_module_new(KN_MODULE_FLATTEN, &o, NULL);
}

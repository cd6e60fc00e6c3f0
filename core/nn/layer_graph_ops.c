/*
 * layer_graph_ops.c — the structure nodes of graph specs, one row each: add, mul
 * (broadcasting, any number of inputs), concat, split and chunk (several outputs),
 * reshape, permute, transpose, matmul, identity, mean over dims, slice and select along
 * a dim. Each is torch's function on the batched tensors (torch.add, torch.cat,
 * torch.split, Tensor.reshape, ...) through the engine's ops, which have CPU and CUDA
 * kernels and backward passes of their own; none has parameters.
 *
 * Shapes are per sample (no batch dim); dims count the batch dim, as torch's do, and
 * the batch dim itself is never joined, split, moved or reduced. The views and joins
 * (KN_LAYER_ANY_DTYPE) take int64 values too: slicing token indices keeps them int64.
 */
#include "nn_internal.h"

#include <string.h>

/* A dim argument of the batched input: any dim but the batch dim. */
#define DIM_ARG(member, field, ...)                                                                \
    KN_ARG_INT_OF(member, field, .min = -KN_MAX_DIMS, .max = KN_MAX_DIMS - 1, __VA_ARGS__)

/* dim counted over a batched tensor of ndim dims, made non-negative. */
static int batched_dim(int64_t dim, int ndim)
{
    return (int)(dim < 0 ? dim + ndim : dim);
}

static const char *batched(const kn_layer_io *in, char *buf, size_t size)
{
    return kn__shape_batched(in, buf, size);
}

/* ---- add, mul: torch.add / torch.mul of 2 or more inputs, broadcasting ----------------- */

/* Inputs broadcast as torch broadcasts the batched tensors: equal ranks (each keeps its
 * batch dim first) and each dim equal or 1. */
static bool broadcast_shape(kn_layer_shape *s)
{
    char a[128], b[128];
    for (int i = 1; i < s->n_inputs; i++) {
        const kn_layer_io *in = &s->inputs[i];
        if (in->ndim != s->output.ndim)
            return kn__shape_fail(s, NULL,
                                  "expects inputs that broadcast, got %s and %s: each keeps its "
                                  "batch dim first, so their ranks must agree (reshape one)",
                                  batched(&s->output, a, sizeof a), batched(in, b, sizeof b));
        for (int d = 0; d < in->ndim; d++) {
            int64_t x = s->output.shape[d], y = in->shape[d];
            if (x != y && x != 1 && y != 1)
                return kn__shape_fail(s, NULL,
                                      "expects inputs that broadcast, got %s and %s (dim %d: %lld "
                                      "and %lld)",
                                      batched(&s->output, a, sizeof a), batched(in, b, sizeof b),
                                      d + 1, (long long)x, (long long)y);
        }
        for (int d = 0; d < in->ndim; d++)
            if (s->output.shape[d] == 1) s->output.shape[d] = in->shape[d];
    }
    return true;
}

static kn_tensor *add_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)m;
    kn_tensor *y = x[0];
    for (int i = 1; i < n; i++) y = kn_add(y, x[i]);
    return y;
}

static kn_tensor *mul_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)m;
    kn_tensor *y = x[0];
    for (int i = 1; i < n; i++) y = kn_mul(y, x[i]);
    return y;
}

const kn_layer_type kn__layer_add = {
    .kind = KN_MODULE_ADD,
    .name = "add",
    .torch_name = "Add",
    .min_inputs = 2,
    .max_inputs = KN_GRAPH_MAX_INPUTS,
    .capturable = true,
    .shape = broadcast_shape,
    .forward = add_forward,
};

const kn_layer_type kn__layer_mul = {
    .kind = KN_MODULE_MUL,
    .name = "mul",
    .torch_name = "Mul",
    .min_inputs = 2,
    .max_inputs = KN_GRAPH_MAX_INPUTS,
    .capturable = true,
    .shape = broadcast_shape,
    .forward = mul_forward,
};

/* ---- concat: torch.cat(inputs, dim) ------------------------------------------------------ */

static const kn_layer_arg CONCAT_ARGS[] = {
    DIM_ARG(concat, dim, .flags = KN_ARG_REQUIRED),
    {0},
};

static bool concat_shape(kn_layer_shape *s)
{
    int dim;
    if (!kn__shape_batched_dim(s, "dim", s->options->concat.dim, &dim)) return false;
    char a[128], b[128];
    for (int i = 1; i < s->n_inputs; i++) {
        const kn_layer_io *in = &s->inputs[i];
        bool fits = in->ndim == s->inputs[0].ndim;
        for (int d = 0; fits && d < in->ndim; d++)
            fits = d == dim - 1 || in->shape[d] == s->inputs[0].shape[d];
        if (!fits)
            return kn__shape_fail(s, NULL,
                                  "expects inputs of one shape but in dim %d, got %s and %s", dim,
                                  batched(&s->inputs[0], a, sizeof a), batched(in, b, sizeof b));
        s->output.shape[dim - 1] += in->shape[dim - 1];
    }
    return true;
}

static kn_tensor *concat_forward(kn_module *m, kn_tensor *const *x, int n)
{
    return kn_cat(x, n, batched_dim(m->options.concat.dim, x[0]->ndim));
}

static void dim_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "dim=%lld", (long long)m->options.concat.dim);
}

const kn_layer_type kn__layer_concat = {
    .kind = KN_MODULE_CONCAT,
    .name = "concat",
    .torch_name = "Cat",
    .args = CONCAT_ARGS,
    .flags = KN_LAYER_ANY_DTYPE,
    .min_inputs = 2,
    .max_inputs = KN_GRAPH_MAX_INPUTS,
    .capturable = true,
    .shape = concat_shape,
    .forward = concat_forward,
    .describe = dim_describe,
};

/* ---- split, chunk: torch.split / torch.chunk, one output per part ----------------------- */

/* The parts' sizes along a dim of `length`: sizes[0..*n). */
typedef struct parts {
    int64_t sizes[KN_LAYER_MAX_OUTPUTS];
    int n;
} parts;

/* torch.split: one size (parts of it, the last smaller) or the sizes of the parts. */
static bool split_parts(const kn_split_options *o, int64_t length, parts *p, char *why, size_t size)
{
    const kn_int_list *given = &o->split_size_or_sections;
    p->n = 0;
    if (given->n == 1) {
        int64_t part = given->size[0];
        int64_t count = (length + part - 1) / part;
        if (count > KN_LAYER_MAX_OUTPUTS) {
            snprintf(why, size, "would make %lld parts of %lld from %lld (at most %d)",
                     (long long)count, (long long)part, (long long)length, KN_LAYER_MAX_OUTPUTS);
            return false;
        }
        for (int64_t at = 0; at < length; at += part)
            p->sizes[p->n++] = length - at < part ? length - at : part;
        return true;
    }
    int64_t total = 0;
    for (int i = 0; i < given->n; i++) total += given->size[i];
    if (total != length) {
        snprintf(why, size, "sizes %s add up to %lld, but the dim has %lld",
                 kn__shape_of(given->size, given->n), (long long)total, (long long)length);
        return false;
    }
    p->n = given->n;
    memcpy(p->sizes, given->size, sizeof(int64_t) * (size_t)given->n);
    return true;
}

/* torch.chunk: parts of ceil(length / chunks), so there may be fewer than chunks. */
static bool chunk_parts(const kn_chunk_options *o, int64_t length, parts *p)
{
    int64_t part = (length + o->chunks - 1) / o->chunks;
    p->n = 0;
    for (int64_t at = 0; part > 0 && at < length; at += part)
        p->sizes[p->n++] = length - at < part ? length - at : part;
    return true;
}

static bool parts_shape(kn_layer_shape *s, int dim, const parts *p)
{
    for (int i = 0; i < p->n; i++) {
        s->outputs[i] = s->inputs[0];
        s->outputs[i].shape[dim - 1] = p->sizes[i];
    }
    s->n_outputs = p->n;
    s->output = s->outputs[0];
    return true;
}

static const kn_layer_arg SPLIT_ARGS[] = {
    KN_ARG_INTS_OF(split, split_size_or_sections, .flags = KN_ARG_REQUIRED, .min = 1,
                   .max = KN_ARG_MAX_SIZE),
    DIM_ARG(split, dim, .flags = KN_ARG_REQUIRED),
    {0},
};

static bool split_shape(kn_layer_shape *s)
{
    int dim;
    if (!kn__shape_batched_dim(s, "dim", s->options->split.dim, &dim)) return false;
    parts p;
    char why[200], shape[128];
    if (!split_parts(&s->options->split, s->inputs[0].shape[dim - 1], &p, why, sizeof why))
        return kn__shape_fail(s, "split_size_or_sections", "%s (dim %d of %s)", why, dim,
                              batched(&s->inputs[0], shape, sizeof shape));
    return parts_shape(s, dim, &p);
}

static const kn_layer_arg CHUNK_ARGS[] = {
    KN_ARG_INT_OF(chunk, chunks, .flags = KN_ARG_REQUIRED, .min = 1, .max = KN_LAYER_MAX_OUTPUTS),
    DIM_ARG(chunk, dim, .flags = KN_ARG_REQUIRED),
    {0},
};

static bool chunk_shape(kn_layer_shape *s)
{
    int dim;
    if (!kn__shape_batched_dim(s, "dim", s->options->chunk.dim, &dim)) return false;
    parts p;
    chunk_parts(&s->options->chunk, s->inputs[0].shape[dim - 1], &p);
    return parts_shape(s, dim, &p);
}

/* The parts of x along dim as narrow views (their gradients add up in x's). */
static kn_status narrow_parts(kn_tensor *x, int dim, const parts *p, kn_tensor **outputs,
                              int *n_outputs)
{
    int64_t at = 0;
    for (int i = 0; i < p->n; i++) {
        outputs[i] = kn_narrow(x, dim, at, p->sizes[i]);
        if (!outputs[i]) return kn_last_status();
        at += p->sizes[i];
    }
    *n_outputs = p->n;
    return KN_OK;
}

static kn_status split_outputs(kn_module *m, kn_tensor *const *x, int n, kn_tensor **outputs,
                               int *n_outputs)
{
    (void)n;
    int dim = batched_dim(m->options.split.dim, x[0]->ndim);
    if (dim <= 0 || dim >= x[0]->ndim)
        return kn__error(KN_ERR_DIM, "Split: dim %lld is not a dim of %s besides the batch dim",
                         (long long)m->options.split.dim, kn__shape(x[0]));
    parts p;
    char why[200];
    if (!split_parts(&m->options.split, x[0]->shape[dim], &p, why, sizeof why))
        return kn__error(KN_ERR_SHAPE, "Split: %s (dim %d of %s)", why, dim, kn__shape(x[0]));
    return narrow_parts(x[0], dim, &p, outputs, n_outputs);
}

static kn_status chunk_outputs(kn_module *m, kn_tensor *const *x, int n, kn_tensor **outputs,
                               int *n_outputs)
{
    (void)n;
    int dim = batched_dim(m->options.chunk.dim, x[0]->ndim);
    if (dim <= 0 || dim >= x[0]->ndim)
        return kn__error(KN_ERR_DIM, "Chunk: dim %lld is not a dim of %s besides the batch dim",
                         (long long)m->options.chunk.dim, kn__shape(x[0]));
    parts p;
    chunk_parts(&m->options.chunk, x[0]->shape[dim], &p);
    return narrow_parts(x[0], dim, &p, outputs, n_outputs);
}

/* forward gives the first part (kn_module_forward_outputs gives them all). */
static kn_tensor *first_part(kn_module *m, kn_tensor *const *x, int n)
{
    kn_tensor *outputs[KN_LAYER_MAX_OUTPUTS];
    int count = 0;
    if (m->layer->forward_outputs(m, x, n, outputs, &count) != KN_OK) return NULL;
    return outputs[0]; /* the others belong to the scope too */
}

static void split_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_int_list *l = &m->options.split.split_size_or_sections;
    if (l->n == 1)
        kn__repr_add(buf, size, "split_size=%lld", (long long)l->size[0]);
    else
        kn__repr_add(buf, size, "split_sizes=%s", kn__shape_of(l->size, l->n));
    kn__repr_add(buf, size, ", dim=%lld", (long long)m->options.split.dim);
}

static void chunk_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "chunks=%lld, dim=%lld", (long long)m->options.chunk.chunks,
                 (long long)m->options.chunk.dim);
}

const kn_layer_type kn__layer_split = {
    .kind = KN_MODULE_SPLIT,
    .name = "split",
    .torch_name = "Split",
    .args = SPLIT_ARGS,
    .flags = KN_LAYER_ANY_DTYPE,
    .capturable = true,
    .shape = split_shape,
    .forward = first_part,
    .describe = split_describe,
    .forward_outputs = split_outputs,
};

const kn_layer_type kn__layer_chunk = {
    .kind = KN_MODULE_CHUNK,
    .name = "chunk",
    .torch_name = "Chunk",
    .args = CHUNK_ARGS,
    .flags = KN_LAYER_ANY_DTYPE,
    .capturable = true,
    .shape = chunk_shape,
    .forward = first_part,
    .describe = chunk_describe,
    .forward_outputs = chunk_outputs,
};

/* ---- reshape: x.reshape(N, *shape) ------------------------------------------------------- */

static const kn_layer_arg RESHAPE_ARGS[] = {
    KN_ARG_INTS_OF(reshape, shape, .flags = KN_ARG_REQUIRED, .min = -1, .max = KN_ARG_MAX_SIZE,
                   .expected = "one sample's new shape without the batch dim, e.g. [16, 4, 32] "
                               "(one size may be -1)"),
    {0},
};

static bool reshape_shape(kn_layer_shape *s)
{
    const kn_int_list *shape = &s->options->reshape.shape;
    const kn_layer_io *in = &s->inputs[0];
    int64_t numel = 1, known = 1;
    int infer = -1;
    for (int d = 0; d < in->ndim; d++) numel *= in->shape[d];
    for (int i = 0; i < shape->n; i++) {
        if (shape->size[i] == -1 && infer >= 0)
            return kn__shape_fail(s, "shape", "expected at most one -1, got %s",
                                  kn__shape_of(shape->size, shape->n));
        if (shape->size[i] == 0)
            return kn__shape_fail(s, "shape", "expected positive sizes (or one -1), got %s",
                                  kn__shape_of(shape->size, shape->n));
        if (shape->size[i] == -1)
            infer = i;
        else
            known *= shape->size[i];
    }
    if (infer >= 0 && numel % known == 0) {
        s->output.ndim = shape->n;
        memcpy(s->output.shape, shape->size, sizeof(int64_t) * (size_t)shape->n);
        s->output.shape[infer] = numel / known;
        return true;
    }
    if (infer < 0 && known == numel) {
        s->output.ndim = shape->n;
        memcpy(s->output.shape, shape->size, sizeof(int64_t) * (size_t)shape->n);
        return true;
    }
    return kn__shape_fail(s, "shape", "%s cannot hold the %lld values of one sample %s",
                          kn__shape_of(shape->size, shape->n), (long long)numel,
                          kn__shape_of(in->shape, in->ndim));
}

static kn_tensor *reshape_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    const kn_int_list *shape = &m->options.reshape.shape;
    int64_t batched_shape[KN_MAX_DIMS];
    batched_shape[0] = x[0]->ndim > 0 ? x[0]->shape[0] : 1;
    memcpy(batched_shape + 1, shape->size, sizeof(int64_t) * (size_t)shape->n);
    return kn_reshape(x[0], batched_shape, shape->n + 1);
}

static void reshape_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_int_list *l = &m->options.reshape.shape;
    kn__repr_add(buf, size, "shape=%s", kn__shape_of(l->size, l->n));
}

const kn_layer_type kn__layer_reshape = {
    .kind = KN_MODULE_RESHAPE,
    .name = "reshape",
    .torch_name = "Reshape",
    .args = RESHAPE_ARGS,
    .flags = KN_LAYER_ANY_DTYPE,
    .capturable = true,
    .shape = reshape_shape,
    .forward = reshape_forward,
    .describe = reshape_describe,
};

/* ---- permute, transpose: Tensor.permute(dims) / Tensor.transpose(dim0, dim1) ------------- */

static const kn_layer_arg PERMUTE_ARGS[] = {
    KN_ARG_INTS_OF(permute, dims, .flags = KN_ARG_REQUIRED, .min = -KN_MAX_DIMS,
                   .max = KN_MAX_DIMS - 1,
                   .expected = "the batched input's dims in their new order, starting with 0 "
                               "(the batch dim), e.g. [0, 2, 1, 3]"),
    {0},
};

static bool permute_shape(kn_layer_shape *s)
{
    const kn_int_list *dims = &s->options->permute.dims;
    const kn_layer_io *in = &s->inputs[0];
    int rank = in->ndim + 1;
    char shape[128];
    if (dims->n != rank)
        return kn__shape_fail(s, "dims", "expected %d dims (the batched input %s has %d), got %s",
                              rank, batched(in, shape, sizeof shape), rank,
                              kn__shape_of(dims->size, dims->n));
    bool seen[KN_MAX_DIMS] = {false};
    for (int i = 0; i < rank; i++) {
        int64_t d = dims->size[i];
        int wrapped = batched_dim(d, rank);
        if (d < -rank || d >= rank || seen[wrapped])
            return kn__shape_fail(s, "dims", "expected a permutation of 0 to %d, got %s", rank - 1,
                                  kn__shape_of(dims->size, dims->n));
        seen[wrapped] = true;
        if ((i == 0) != (wrapped == 0))
            return kn__shape_fail(s, "dims", "the batch dim must stay first (dims[0] = 0), got %s",
                                  kn__shape_of(dims->size, dims->n));
        if (i > 0) s->output.shape[i - 1] = in->shape[wrapped - 1];
    }
    return true;
}

static kn_tensor *permute_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    const kn_int_list *dims = &m->options.permute.dims;
    int order[KN_MAX_DIMS];
    for (int i = 0; i < dims->n; i++) order[i] = batched_dim(dims->size[i], x[0]->ndim);
    return kn_permute(x[0], order, dims->n);
}

static void permute_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_int_list *l = &m->options.permute.dims;
    kn__repr_add(buf, size, "dims=%s", kn__shape_of(l->size, l->n));
}

const kn_layer_type kn__layer_permute = {
    .kind = KN_MODULE_PERMUTE,
    .name = "permute",
    .torch_name = "Permute",
    .args = PERMUTE_ARGS,
    .flags = KN_LAYER_ANY_DTYPE,
    .capturable = true,
    .shape = permute_shape,
    .forward = permute_forward,
    .describe = permute_describe,
};

static const kn_layer_arg TRANSPOSE_ARGS[] = {
    DIM_ARG(transpose, dim0, .flags = KN_ARG_REQUIRED),
    DIM_ARG(transpose, dim1, .flags = KN_ARG_REQUIRED),
    {0},
};

static bool transpose_shape(kn_layer_shape *s)
{
    int d0, d1;
    if (!kn__shape_batched_dim(s, "dim0", s->options->transpose.dim0, &d0) ||
        !kn__shape_batched_dim(s, "dim1", s->options->transpose.dim1, &d1))
        return false;
    s->output.shape[d0 - 1] = s->inputs[0].shape[d1 - 1];
    s->output.shape[d1 - 1] = s->inputs[0].shape[d0 - 1];
    return true;
}

static kn_tensor *transpose_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_transpose(x[0], (int)m->options.transpose.dim0, (int)m->options.transpose.dim1);
}

static void transpose_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "dim0=%lld, dim1=%lld", (long long)m->options.transpose.dim0,
                 (long long)m->options.transpose.dim1);
}

const kn_layer_type kn__layer_transpose = {
    .kind = KN_MODULE_TRANSPOSE,
    .name = "transpose",
    .torch_name = "Transpose",
    .args = TRANSPOSE_ARGS,
    .flags = KN_LAYER_ANY_DTYPE,
    .capturable = true,
    .shape = transpose_shape,
    .forward = transpose_forward,
    .describe = transpose_describe,
};

/* ---- matmul: torch.matmul(a, b) of [.., n, k] and [.., k, m] ----------------------------- */

static bool matmul_shape(kn_layer_shape *s)
{
    const kn_layer_io *a = &s->inputs[0], *b = &s->inputs[1];
    char x[128], y[128];
    if (a->ndim < 2 || b->ndim != a->ndim)
        return kn__shape_fail(s, NULL,
                              "expects two inputs of one rank with at least two dims per sample "
                              "([.., n, k] and [.., k, m]), got %s and %s",
                              batched(a, x, sizeof x), batched(b, y, sizeof y));
    int r = a->ndim;
    if (a->shape[r - 1] != b->shape[r - 2])
        return kn__shape_fail(s, NULL,
                              "cannot multiply %s and %s: the first's last dim (%lld) is not the "
                              "second's next to last (%lld)",
                              batched(a, x, sizeof x), batched(b, y, sizeof y),
                              (long long)a->shape[r - 1], (long long)b->shape[r - 2]);
    for (int d = 0; d < r - 2; d++) {
        int64_t p = a->shape[d], q = b->shape[d];
        if (p != q && p != 1 && q != 1)
            return kn__shape_fail(s, NULL,
                                  "expects batch dims that broadcast, got %s and %s (dim %d: %lld "
                                  "and %lld)",
                                  batched(a, x, sizeof x), batched(b, y, sizeof y), d + 1,
                                  (long long)p, (long long)q);
        s->output.shape[d] = p == 1 ? q : p;
    }
    s->output.shape[r - 2] = a->shape[r - 2];
    s->output.shape[r - 1] = b->shape[r - 1];
    return true;
}

static kn_tensor *matmul_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)m, (void)n;
    return kn_matmul(x[0], x[1]);
}

const kn_layer_type kn__layer_matmul = {
    .kind = KN_MODULE_MATMUL,
    .name = "matmul",
    .torch_name = "MatMul",
    .min_inputs = 2,
    .max_inputs = 2,
    .capturable = true,
    .shape = matmul_shape,
    .forward = matmul_forward,
};

/* ---- identity: nn.Identity ---------------------------------------------------------------- */

static kn_tensor *identity_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)m, (void)n;
    return kn_autorelease(kn_retain(x[0]));
}

const kn_layer_type kn__layer_identity = {
    .kind = KN_MODULE_IDENTITY,
    .name = "identity",
    .torch_name = "Identity",
    .flags = KN_LAYER_ANY_DTYPE,
    .capturable = true,
    .forward = identity_forward,
};

/* ---- mean: x.mean(dim, keepdim) ------------------------------------------------------------ */

static const kn_layer_arg MEAN_ARGS[] = {
    KN_ARG_INTS_OF(mean, dim, .flags = KN_ARG_REQUIRED, .min = -KN_MAX_DIMS,
                   .max = KN_MAX_DIMS - 1),
    KN_ARG_BOOL_OF(mean, keepdim, false),
    {0},
};

static bool mean_shape(kn_layer_shape *s)
{
    const kn_mean_options *o = &s->options->mean;
    const kn_layer_io *in = &s->inputs[0];
    bool reduced[KN_MAX_DIMS] = {false};
    for (int i = 0; i < o->dim.n; i++) {
        int d;
        if (!kn__shape_batched_dim(s, "dim", o->dim.size[i], &d)) return false;
        if (reduced[d])
            return kn__shape_fail(s, "dim", "dim %d appears twice in %s", d,
                                  kn__shape_of(o->dim.size, o->dim.n));
        reduced[d] = true;
    }
    int k = 0;
    for (int d = 1; d <= in->ndim; d++) {
        if (!reduced[d])
            s->output.shape[k++] = in->shape[d - 1];
        else if (o->keepdim)
            s->output.shape[k++] = 1;
    }
    s->output.ndim = k;
    return true;
}

static kn_tensor *mean_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    const kn_mean_options *o = &m->options.mean;
    int dims[KN_MAX_DIMS];
    for (int i = 0; i < o->dim.n; i++) dims[i] = batched_dim(o->dim.size[i], x[0]->ndim);
    return kn_mean(x[0], dims, o->dim.n, o->keepdim);
}

static void mean_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_mean_options *o = &m->options.mean;
    kn__repr_add(buf, size, "dim=%s, keepdim=%s", kn__shape_of(o->dim.size, o->dim.n),
                 kn__py_bool(o->keepdim));
}

const kn_layer_type kn__layer_mean = {
    .kind = KN_MODULE_MEAN,
    .name = "mean",
    .torch_name = "Mean",
    .args = MEAN_ARGS,
    .capturable = true,
    .shape = mean_shape,
    .forward = mean_forward,
    .describe = mean_describe,
};

/* ---- slice, select: x[:, start:end:step] and x[:, index] along a dim ------------------------ */

static const kn_layer_arg SLICE_ARGS[] = {
    DIM_ARG(slice, dim, .flags = KN_ARG_REQUIRED),
    KN_ARG_INT_OF(slice, start, .def = 0, .min = -KN_ARG_MAX_SIZE, .max = KN_ARG_MAX_SIZE),
    KN_ARG_INT_OF(slice, end, .def = KN_ARG_MAX_SIZE, .min = -KN_ARG_MAX_SIZE,
                  .max = KN_ARG_MAX_SIZE),
    KN_ARG_INT_OF(slice, step, .def = 1, .min = 1, .max = KN_ARG_MAX_SIZE),
    {0},
};

/* Python's slice bound: negative counts from the end, then clamped to [0, size]. */
static int64_t clamp_bound(int64_t bound, int64_t size)
{
    if (bound < 0) bound = bound < -size ? 0 : bound + size;
    return bound > size ? size : bound;
}

static bool slice_shape(kn_layer_shape *s)
{
    const kn_slice_options *o = &s->options->slice;
    int dim;
    if (!kn__shape_batched_dim(s, "dim", o->dim, &dim)) return false;
    int64_t size = s->inputs[0].shape[dim - 1];
    int64_t start = clamp_bound(o->start, size), end = clamp_bound(o->end, size);
    int64_t length = end > start ? (end - start + o->step - 1) / o->step : 0;
    char shape[128], written_end[32] = "None";
    if (o->end < KN_ARG_MAX_SIZE)
        snprintf(written_end, sizeof written_end, "%lld", (long long)o->end);
    if (length == 0)
        return kn__shape_fail(s, NULL,
                              "takes nothing from dim %d of %s: [%lld:%s:%lld] of its %lld "
                              "elements is empty",
                              dim, batched(&s->inputs[0], shape, sizeof shape), (long long)o->start,
                              written_end, (long long)o->step, (long long)size);
    s->output.shape[dim - 1] = length;
    return true;
}

static kn_tensor *slice_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    const kn_slice_options *o = &m->options.slice;
    return kn_slice(x[0], (int)o->dim, o->start, o->end, o->step);
}

static void slice_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_slice_options *o = &m->options.slice;
    kn__repr_add(buf, size, "dim=%lld, start=%lld, end=", (long long)o->dim, (long long)o->start);
    if (o->end >= KN_ARG_MAX_SIZE)
        kn__repr_add(buf, size, "None");
    else
        kn__repr_add(buf, size, "%lld", (long long)o->end);
    kn__repr_add(buf, size, ", step=%lld", (long long)o->step);
}

const kn_layer_type kn__layer_slice = {
    .kind = KN_MODULE_SLICE,
    .name = "slice",
    .torch_name = "Slice",
    .args = SLICE_ARGS,
    .flags = KN_LAYER_ANY_DTYPE,
    .capturable = true,
    .shape = slice_shape,
    .forward = slice_forward,
    .describe = slice_describe,
};

static const kn_layer_arg SELECT_ARGS[] = {
    DIM_ARG(select, dim, .flags = KN_ARG_REQUIRED),
    KN_ARG_INT_OF(select, index, .flags = KN_ARG_REQUIRED, .min = -KN_ARG_MAX_SIZE,
                  .max = KN_ARG_MAX_SIZE),
    {0},
};

static bool select_shape(kn_layer_shape *s)
{
    const kn_select_options *o = &s->options->select;
    int dim;
    if (!kn__shape_batched_dim(s, "dim", o->dim, &dim)) return false;
    const kn_layer_io *in = &s->inputs[0];
    int64_t size = in->shape[dim - 1];
    char shape[128];
    if (o->index < -size || o->index >= size)
        return kn__shape_fail(s, "index",
                              "expected an index from %lld to %lld (dim %d of %s), got %lld",
                              (long long)-size, (long long)size - 1, dim,
                              batched(in, shape, sizeof shape), (long long)o->index);
    int k = 0;
    for (int d = 0; d < in->ndim; d++)
        if (d != dim - 1) s->output.shape[k++] = in->shape[d];
    s->output.ndim = k;
    return true;
}

static kn_tensor *select_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)n;
    return kn_select(x[0], (int)m->options.select.dim, m->options.select.index);
}

static void select_describe(const kn_module *m, char *buf, size_t size)
{
    kn__repr_add(buf, size, "dim=%lld, index=%lld", (long long)m->options.select.dim,
                 (long long)m->options.select.index);
}

const kn_layer_type kn__layer_select = {
    .kind = KN_MODULE_SELECT,
    .name = "select",
    .torch_name = "Select",
    .args = SELECT_ARGS,
    .flags = KN_LAYER_ANY_DTYPE,
    .capturable = true,
    .shape = select_shape,
    .forward = select_forward,
    .describe = select_describe,
};

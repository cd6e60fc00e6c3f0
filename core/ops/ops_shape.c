/*
 * ops_shape.c — the view ops: view / reshape / flatten, permute / transpose, narrow /
 * slice / select, expand, squeeze / unsqueeze, and contiguous. A view is a new handle
 * on its input's storage (kn__view_raw); its backward maps the gradient back onto the
 * input's shape. reshape and contiguous copy only when the strides leave no choice.
 */
#include "kn_internal.h"
#include "../kernels/cpu/kn_cpu_gather.h"

#include <string.h>

/* Hands out back, with a node that calls backward when t needs grad. */
static kn_tensor *record(kn_tensor *out, kn_tensor *t, const char *name, kn_backward_fn backward,
                         const int64_t *iargs, int n_iargs)
{
    if (!out) return NULL;
    if (kn__needs_grad(&t, 1)) {
        kn_node *node = kn__node_new(name, backward, &t, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        for (int i = 0; i < n_iargs; i++) node->iargs[i] = iargs[i];
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/* A contiguous copy of t with the given shape (same numel), no history. */
static kn_tensor *copy_raw(kn_tensor *t, const int64_t *shape, int ndim)
{
    kn_tensor *out = kn__empty_raw(shape, ndim, t->dtype, t->device);
    if (!out) return NULL;
    if (t->device.type == KN_DEVICE_CPU) {
        kn_cpu_copy_to_contiguous(t->shape, t->ndim, kn_dtype_size(t->dtype), kn__data_ptr(out),
                                  kn__data_ptr(t), t->strides);
        return out;
    }
    kn_cpu_operand dst = {kn__data_ptr(out), {0}};
    kn__contiguous_strides(t->shape, t->ndim, dst.strides);
    if (kn__kernel_copy(t->device, t->shape, t->ndim, kn_dtype_size(t->dtype), dst,
                        kn__operand(t)) != KN_OK) {
        kn_release(out);
        return NULL;
    }
    return out;
}

/* view, reshape, flatten, squeeze, unsqueeze: the gradient takes the input's shape. */
static kn_status reshape_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    grads[0] = kn_reshape(grad, node->inputs[0].shape, node->inputs[0].ndim);
    return grads[0] ? KN_OK : kn_last_status();
}

static kn_status identity_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    (void)node;
    grads[0] = grad;
    return KN_OK;
}

/* ---- view / reshape -------------------------------------------------------------- */

/* shape with its -1 resolved into out, checked against t's element count. */
static bool infer_shape(const char *op, const kn_tensor *t, const int64_t *shape, int ndim,
                        int64_t *out)
{
    if (ndim < 0 || ndim > KN_MAX_DIMS || (ndim > 0 && !shape)) {
        kn__error(KN_ERR_SHAPE, "%s: rank %d is out of range (expected 0..%d)", op, ndim,
                  KN_MAX_DIMS);
        return false;
    }
    int infer = -1;
    int64_t known = 1, numel = kn_numel(t);
    for (int i = 0; i < ndim; i++) {
        out[i] = shape[i];
        if (shape[i] == -1 && infer < 0) {
            infer = i;
        } else if (shape[i] == -1) {
            kn__error(KN_ERR_SHAPE,
                      "%s: only one dimension can be inferred, got -1 at dims %d and %d of %s", op,
                      infer, i, kn__shape_of(shape, ndim));
            return false;
        } else if (shape[i] < 0) {
            kn__error(KN_ERR_SHAPE, "%s: invalid size %lld at dim %d of shape %s", op,
                      (long long)shape[i], i, kn__shape_of(shape, ndim));
            return false;
        } else {
            known *= shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0) {
            kn__error(KN_ERR_SHAPE,
                      "%s: cannot reshape input of shape %s (%lld elements) into shape %s: the "
                      "-1 could be any value",
                      op, kn__shape(t), (long long)numel, kn__shape_of(shape, ndim));
            return false;
        }
        out[infer] = numel / known;
        known *= out[infer];
    }
    if (known != numel) {
        kn__error(KN_ERR_SHAPE, "%s: shape %s is invalid for input of shape %s (%lld elements)", op,
                  kn__shape_of(shape, ndim), kn__shape(t), (long long)numel);
        return false;
    }
    return true;
}

/* Strides that view t's elements with shape, when there are any (ATen's computeStride):
 * each run of t's dims that is contiguous in memory may be re-split freely. */
static bool view_strides(const kn_tensor *t, const int64_t *shape, int ndim, int64_t *strides)
{
    if (kn_numel(t) == 0 || kn_is_contiguous(t)) {
        kn__contiguous_strides(shape, ndim, strides);
        return true;
    }
    int view_d = ndim - 1;
    int64_t chunk_base = t->strides[t->ndim - 1];
    int64_t tensor_numel = 1, view_numel = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        tensor_numel *= t->shape[d];
        if (d == 0 || (t->shape[d - 1] != 1 && t->strides[d - 1] != tensor_numel * chunk_base)) {
            while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                strides[view_d] = view_numel * chunk_base;
                view_numel *= shape[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel) return false;
            if (d > 0) {
                chunk_base = t->strides[d - 1];
                tensor_numel = view_numel = 1;
            }
        }
    }
    return view_d == -1;
}

kn_tensor *kn_view(kn_tensor *t, const int64_t *shape, int ndim)
{
    if (!kn__check_inputs("view", &t, 1)) return NULL;
    int64_t resolved[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    if (!infer_shape("view", t, shape, ndim, resolved)) return NULL;
    if (!view_strides(t, resolved, ndim, strides))
        return kn__error_null(KN_ERR_SHAPE,
                              "view: shape %s is not compatible with the input's shape %s and "
                              "strides %s (at least one dimension spans across two contiguous "
                              "subspaces); use kn_reshape instead",
                              kn__shape_of(resolved, ndim), kn__shape(t),
                              kn__shape_of(t->strides, t->ndim));
    return record(kn__view_raw(t, resolved, strides, ndim, t->offset), t, "view", reshape_backward,
                  NULL, 0);
}

kn_tensor *kn_reshape(kn_tensor *t, const int64_t *shape, int ndim)
{
    if (!kn__check_inputs("reshape", &t, 1)) return NULL;
    int64_t resolved[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    if (!infer_shape("reshape", t, shape, ndim, resolved)) return NULL;
    kn_tensor *out = view_strides(t, resolved, ndim, strides)
                         ? kn__view_raw(t, resolved, strides, ndim, t->offset)
                         : copy_raw(t, resolved, ndim);
    return record(out, t, "reshape", reshape_backward, NULL, 0);
}

kn_tensor *kn_flatten(kn_tensor *t, int start_dim, int end_dim)
{
    if (!kn__check_inputs("flatten", &t, 1)) return NULL;
    if (!kn__wrap_dim(&start_dim, t->ndim, "flatten") ||
        !kn__wrap_dim(&end_dim, t->ndim, "flatten"))
        return NULL;
    if (start_dim > end_dim)
        return kn__error_null(KN_ERR_DIM, "flatten: start_dim %d cannot come after end_dim %d",
                              start_dim, end_dim);
    if (t->ndim == 0) return kn_reshape(t, KN_SHAPE(1));
    int64_t shape[KN_MAX_DIMS];
    int ndim = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (d <= start_dim || d > end_dim)
            shape[ndim++] = t->shape[d];
        else
            shape[ndim - 1] *= t->shape[d];
    }
    return kn_reshape(t, shape, ndim);
}

/* ---- permute / transpose ---------------------------------------------------------- */

static kn_status permute_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    int inverse[KN_MAX_DIMS];
    for (int d = 0; d < grad->ndim; d++) inverse[node->iargs[d]] = d;
    grads[0] = kn_permute(grad, inverse, grad->ndim);
    return grads[0] ? KN_OK : kn_last_status();
}

kn_tensor *kn_permute(kn_tensor *t, const int *dims, int ndims)
{
    if (!kn__check_inputs("permute", &t, 1)) return NULL;
    int64_t wrapped[KN_MAX_DIMS], shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    bool seen[KN_MAX_DIMS] = {false};
    if (ndims != t->ndim || (ndims > 0 && !dims))
        return kn__error_null(KN_ERR_DIM, "permute: got %d dims for an input of shape %s (rank %d)",
                              ndims, kn__shape(t), t->ndim);
    for (int i = 0; i < ndims; i++) {
        int d = dims[i];
        if (!kn__wrap_dim(&d, t->ndim, "permute")) return NULL;
        if (seen[d]) {
            int64_t given[KN_MAX_DIMS];
            for (int k = 0; k < ndims; k++) given[k] = dims[k];
            return kn__error_null(KN_ERR_DIM, "permute: dim %d is repeated in dims %s", d,
                                  kn__shape_of(given, ndims));
        }
        seen[d] = true;
        wrapped[i] = d;
        shape[i] = t->shape[d];
        strides[i] = t->strides[d];
    }
    return record(kn__view_raw(t, shape, strides, ndims, t->offset), t, "permute", permute_backward,
                  wrapped, ndims);
}

kn_tensor *kn_transpose(kn_tensor *t, int dim0, int dim1)
{
    if (!kn__check_inputs("transpose", &t, 1)) return NULL;
    if (!kn__wrap_dim(&dim0, t->ndim, "transpose") || !kn__wrap_dim(&dim1, t->ndim, "transpose"))
        return NULL;
    int dims[KN_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) dims[d] = d;
    if (t->ndim > 0) {
        dims[dim0] = dim1;
        dims[dim1] = dim0;
    }
    return kn_permute(t, dims, t->ndim);
}

/* ---- narrow / slice / select --------------------------------------------------------- */

/* The geometry of elements start, start+step, ... (length of them) along dim of a
 * tensor, dropping dim when drop (select). Returns the new rank. */
static int take_geometry(const int64_t *shape, const int64_t *strides, int ndim, int dim,
                         int64_t start, int64_t length, int64_t step, bool drop, int64_t *out_shape,
                         int64_t *out_strides, int64_t *offset)
{
    *offset += start * strides[dim];
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (d == dim && drop) continue;
        out_shape[n] = d == dim ? length : shape[d];
        out_strides[n] = d == dim ? strides[d] * step : strides[d];
        n++;
    }
    return n;
}

/* Zeros of the input's shape with the gradient copied into the part that was taken. */
static kn_status take_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    const kn_node_input *in = &node->inputs[0];
    kn_tensor *zeros = kn__empty_raw(in->shape, in->ndim, KN_FLOAT32, grad->device);
    if (!zeros) return kn_last_status();
    kn__result(zeros);
    const float zero = 0.f;
    kn_status status = kn__kernel_fill(zeros->device, zeros->shape, zeros->ndim, sizeof(float),
                                       kn__operand(zeros), &zero);
    if (status != KN_OK) return status;
    int64_t shape[KN_MAX_DIMS];
    kn_cpu_operand dst = {NULL, {0}}, src = {kn__data_ptr(grad), {0}};
    int64_t offset = 0;
    int ndim = take_geometry(zeros->shape, zeros->strides, zeros->ndim, (int)node->iargs[0],
                             node->iargs[1], node->iargs[2], node->iargs[3], node->iargs[4] != 0,
                             shape, dst.strides, &offset);
    dst.data = (float *)zeros->storage->data + offset;
    memcpy(src.strides, grad->strides, sizeof(int64_t) * (size_t)grad->ndim);
    status = kn__kernel_copy(zeros->device, shape, ndim, sizeof(float), dst, src);
    if (status != KN_OK) return status;
    grads[0] = zeros;
    return KN_OK;
}

static kn_tensor *take(kn_tensor *t, const char *name, int dim, int64_t start, int64_t length,
                       int64_t step, bool drop)
{
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS], offset = t->offset;
    int ndim = take_geometry(t->shape, t->strides, t->ndim, dim, start, length, step, drop, shape,
                             strides, &offset);
    const int64_t iargs[5] = {dim, start, length, step, drop};
    return record(kn__view_raw(t, shape, strides, ndim, offset), t, name, take_backward, iargs, 5);
}

static bool check_not_scalar(const char *op, const kn_tensor *t)
{
    if (t->ndim > 0) return true;
    kn__error(KN_ERR_DIM, "%s: cannot be applied to a 0-dim tensor", op);
    return false;
}

kn_tensor *kn_narrow(kn_tensor *t, int dim, int64_t start, int64_t length)
{
    if (!kn__check_inputs("narrow", &t, 1) || !check_not_scalar("narrow", t) ||
        !kn__wrap_dim(&dim, t->ndim, "narrow"))
        return NULL;
    int64_t size = t->shape[dim];
    if (start < -size || start > size)
        return kn__error_null(KN_ERR_VALUE,
                              "narrow: start %lld is out of range for dim %d of shape %s "
                              "(expected %lld..%lld)",
                              (long long)start, dim, kn__shape(t), (long long)-size,
                              (long long)size);
    if (start < 0) start += size;
    if (length < 0 || start + length > size)
        return kn__error_null(KN_ERR_VALUE,
                              "narrow: start (%lld) + length (%lld) exceeds size %lld of dim %d "
                              "of shape %s",
                              (long long)start, (long long)length, (long long)size, dim,
                              kn__shape(t));
    return take(t, "narrow", dim, start, length, 1, false);
}

/* Python's slice bounds: negative counts from the end, then clamped to [0, size]. */
static int64_t clamp_bound(int64_t bound, int64_t size)
{
    if (bound < 0) bound = bound < -size ? 0 : bound + size;
    return bound > size ? size : bound;
}

kn_tensor *kn_slice(kn_tensor *t, int dim, int64_t start, int64_t end, int64_t step)
{
    if (!kn__check_inputs("slice", &t, 1) || !check_not_scalar("slice", t) ||
        !kn__wrap_dim(&dim, t->ndim, "slice"))
        return NULL;
    if (step <= 0)
        return kn__error_null(KN_ERR_VALUE, "slice: step must be positive, got %lld",
                              (long long)step);
    int64_t size = t->shape[dim];
    start = clamp_bound(start, size);
    end = clamp_bound(end, size);
    int64_t length = end > start ? (end - start + step - 1) / step : 0;
    return take(t, "slice", dim, start, length, step, false);
}

kn_tensor *kn_select(kn_tensor *t, int dim, int64_t index)
{
    if (!kn__check_inputs("select", &t, 1) || !check_not_scalar("select", t) ||
        !kn__wrap_dim(&dim, t->ndim, "select"))
        return NULL;
    int64_t size = t->shape[dim];
    if (index < -size || index >= size)
        return kn__error_null(KN_ERR_VALUE,
                              "select: index %lld is out of range for dim %d of shape %s "
                              "(expected %lld..%lld)",
                              (long long)index, dim, kn__shape(t), (long long)-size,
                              (long long)size - 1);
    if (index < 0) index += size;
    return take(t, "select", dim, index, 1, 1, true);
}

/* ---- expand ------------------------------------------------------------------------ */

kn_tensor *kn_expand(kn_tensor *t, const int64_t *shape, int ndim)
{
    if (!kn__check_inputs("expand", &t, 1)) return NULL;
    if (ndim < t->ndim || ndim > KN_MAX_DIMS || (ndim > 0 && !shape))
        return kn__error_null(KN_ERR_SHAPE,
                              "expand: the number of sizes (%d) must be at least the input's "
                              "rank %d (shape %s) and at most %d",
                              ndim, t->ndim, kn__shape(t), KN_MAX_DIMS);
    int64_t out_shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    int lead = ndim - t->ndim;
    for (int d = 0; d < ndim; d++) {
        int64_t want = shape[d];
        if (d < lead) {
            if (want < 0)
                return kn__error_null(KN_ERR_SHAPE,
                                      "expand: size %lld is not allowed in a new leading dim %d "
                                      "(target %s, input %s)",
                                      (long long)want, d, kn__shape_of(shape, ndim), kn__shape(t));
            out_shape[d] = want;
            strides[d] = 0;
            continue;
        }
        int64_t have = t->shape[d - lead];
        if (want == -1) want = have;
        if (want == have) {
            out_shape[d] = have;
            strides[d] = t->strides[d - lead];
        } else if (have == 1 && want >= 0) {
            out_shape[d] = want;
            strides[d] = 0;
        } else {
            return kn__error_null(KN_ERR_SHAPE,
                                  "expand: the expanded size (%lld) must match the existing size "
                                  "(%lld) at non-singleton dim %d; target %s, input %s",
                                  (long long)want, (long long)have, d, kn__shape_of(shape, ndim),
                                  kn__shape(t));
        }
    }
    /* The engine sums the gradient back over the expanded dims. */
    return record(kn__view_raw(t, out_shape, strides, ndim, t->offset), t, "expand",
                  identity_backward, NULL, 0);
}

/* ---- squeeze / unsqueeze ----------------------------------------------------------- */

static kn_tensor *drop_ones(kn_tensor *t, const char *name, int only_dim)
{
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    int ndim = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 1 && (only_dim < 0 || d == only_dim)) continue;
        shape[ndim] = t->shape[d];
        strides[ndim++] = t->strides[d];
    }
    return record(kn__view_raw(t, shape, strides, ndim, t->offset), t, name, reshape_backward, NULL,
                  0);
}

kn_tensor *kn_squeeze(kn_tensor *t, int dim)
{
    if (!kn__check_inputs("squeeze", &t, 1) || !kn__wrap_dim(&dim, t->ndim, "squeeze"))
        return NULL;
    return drop_ones(t, "squeeze", t->ndim == 0 ? 0 : dim);
}

kn_tensor *kn_squeeze_all(kn_tensor *t)
{
    if (!kn__check_inputs("squeeze_all", &t, 1)) return NULL;
    return drop_ones(t, "squeeze_all", -1);
}

kn_tensor *kn_unsqueeze(kn_tensor *t, int dim)
{
    if (!kn__check_inputs("unsqueeze", &t, 1) ||
        !kn__wrap_dim(&dim, t->ndim + 1, "unsqueeze"))
        return NULL;
    if (t->ndim >= KN_MAX_DIMS)
        return kn__error_null(KN_ERR_SHAPE,
                              "unsqueeze: input of shape %s already has the maximum rank %d",
                              kn__shape(t), KN_MAX_DIMS);
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    for (int d = 0, s = 0; d <= t->ndim; d++) {
        if (d == dim) {
            shape[d] = 1;
            strides[d] = dim < t->ndim ? t->shape[dim] * t->strides[dim] : 1;
        } else {
            shape[d] = t->shape[s];
            strides[d] = t->strides[s++];
        }
    }
    return record(kn__view_raw(t, shape, strides, t->ndim + 1, t->offset), t, "unsqueeze",
                  reshape_backward, NULL, 0);
}

/* ---- contiguous ------------------------------------------------------------------- */

kn_tensor *kn_contiguous(kn_tensor *t)
{
    if (!kn__check_inputs("contiguous", &t, 1)) return NULL;
    if (kn_is_contiguous(t)) return kn__result(kn_retain(t));
    return record(copy_raw(t, t->shape, t->ndim), t, "contiguous", identity_backward, NULL, 0);
}

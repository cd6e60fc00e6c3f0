/*
 * ops_index.c — the ops that assemble or pick elements into a new tensor: cat, stack,
 * index_select, gather and embedding. Forward copies through kernels/cpu (gather.c
 * for the indexed ones); backward narrows / selects the gradient (cat, stack) or
 * scatter-adds it (index_select, gather, embedding).
 *
 * On a CUDA device the copies go through the device's strided copy and the indexed
 * kernels of kernels/cuda/index.cu; the index is checked on the host first (copied
 * back), so an out-of-range index fails with the same message as on the CPU.
 */
#include "kn_internal.h"
#include "kn_cuda.h"
#include "../kernels/cpu/kn_cpu_gather.h"

#include <string.h>

/* One reference to t itself when contiguous, else to a contiguous copy (no history). */
static kn_tensor *contiguous_raw(kn_tensor *t)
{
    if (kn_is_contiguous(t)) return kn_retain(t);
    if (t->device.type != KN_DEVICE_CPU) return kn__contiguous_raw(t);
    kn_tensor *out = kn__empty_raw(t->shape, t->ndim, t->dtype, t->device);
    if (!out) return NULL;
    kn_cpu_copy_to_contiguous(t->shape, t->ndim, kn_dtype_size(t->dtype), kn__data_ptr(out),
                              kn__data_ptr(t), t->strides);
    return out;
}

/* Zeros of a node input's shape, registered with the open scope. */
static kn_tensor *zeros_for(const kn_node_input *in, kn_device device)
{
    kn_tensor *z = kn__empty_raw(in->shape, in->ndim, KN_FLOAT32, device);
    if (!z) return NULL;
    if (device.type != KN_DEVICE_CPU) {
        float zero = 0.f;
        if (kn__kernel_fill(device, z->shape, z->ndim, sizeof(float), kn__operand(z), &zero) !=
            KN_OK) {
            kn_release(z);
            return NULL;
        }
    } else if (z->storage->nbytes) {
        memset(z->storage->data, 0, z->storage->nbytes);
    }
    return kn__result(z);
}

/* Copies src into the part of out that starts at `start` along dim; with drop, src
 * lacks dim (stack), else src's size along dim is the part's length (cat). */
static kn_status copy_into(kn_tensor *out, int dim, int64_t start, bool drop, kn_tensor *src)
{
    size_t es = kn_dtype_size(out->dtype);
    kn_cpu_operand o = {(char *)kn__data_ptr(out) + (size_t)(start * out->strides[dim]) * es, {0}};
    kn_cpu_operand in = {kn__data_ptr(src), {0}};
    for (int d = 0, k = 0; d < out->ndim; d++)
        if (!(drop && d == dim)) o.strides[k++] = out->strides[d];
    memcpy(in.strides, src->strides, sizeof(int64_t) * (size_t)src->ndim);
    return kn__kernel_copy(out->device, src->shape, src->ndim, es, o, in);
}

static bool check_list(const char *op, kn_tensor *const *tensors, int count)
{
    if (count <= 0 || !tensors) {
        kn__error(KN_ERR_VALUE, "%s: expected a non-empty list of tensors, got %d", op, count);
        return false;
    }
    if (!kn__check_inputs(op, tensors, count)) return false;
    for (int i = 1; i < count; i++)
        if (tensors[i]->dtype != tensors[0]->dtype) {
            kn__error(KN_ERR_DTYPE,
                      "%s: expected tensors of one dtype, got %s (tensor 0) and %s (tensor %d)", op,
                      kn_dtype_name(tensors[0]->dtype), kn_dtype_name(tensors[i]->dtype), i);
            return false;
        }
    return true;
}

/* A node over all the listed tensors, or true when none needs grad. */
static bool record_list(kn_tensor *out, kn_tensor *const *tensors, int count, const char *name,
                        kn_backward_fn backward, int dim)
{
    if (!kn__needs_grad(tensors, count)) return true;
    kn_node *node = kn__node_new(name, backward, tensors, count);
    if (!node) return false;
    node->iargs[0] = dim;
    kn__node_attach(out, node);
    return true;
}

/* ---- cat / stack -------------------------------------------------------------------- */

static kn_status cat_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    int dim = (int)node->iargs[0];
    int64_t start = 0;
    for (int i = 0; i < node->n_inputs; i++) {
        int64_t length = node->inputs[i].shape[dim];
        if (node->inputs[i].needs_grad && !(grads[i] = kn_narrow(grad, dim, start, length)))
            return kn_last_status();
        start += length;
    }
    return KN_OK;
}

kn_tensor *kn_cat(kn_tensor *const *tensors, int count, int dim)
{
    if (!check_list("cat", tensors, count)) return NULL;
    const kn_tensor *first = tensors[0];
    if (first->ndim == 0)
        return kn__error_null(KN_ERR_SHAPE,
                              "cat: zero-dimensional tensor (tensor 0) cannot be concatenated");
    if (!kn__wrap_dim(&dim, first->ndim, "cat")) return NULL;
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, first->shape, sizeof(int64_t) * (size_t)first->ndim);
    shape[dim] = 0;
    for (int i = 0; i < count; i++) {
        const kn_tensor *t = tensors[i];
        bool fits = t->ndim == first->ndim;
        for (int d = 0; fits && d < t->ndim; d++)
            if (d != dim && t->shape[d] != first->shape[d]) fits = false;
        if (!fits)
            return kn__error_null(KN_ERR_SHAPE,
                                  "cat: tensors must have the same shape except in dim %d, got %s "
                                  "(tensor 0) and %s (tensor %d)",
                                  dim, kn__shape(first), kn__shape(t), i);
        shape[dim] += t->shape[dim];
    }
    kn_tensor *out = kn__empty_raw(shape, first->ndim, first->dtype, first->device);
    if (!out) return NULL;
    int64_t start = 0;
    for (int i = 0; i < count; i++) {
        if (copy_into(out, dim, start, false, tensors[i]) != KN_OK) {
            kn_release(out);
            return NULL;
        }
        start += tensors[i]->shape[dim];
    }
    if (!record_list(out, tensors, count, "cat", cat_backward, dim)) {
        kn_release(out);
        return NULL;
    }
    return kn__result(out);
}

static kn_status stack_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    int dim = (int)node->iargs[0];
    for (int i = 0; i < node->n_inputs; i++)
        if (node->inputs[i].needs_grad && !(grads[i] = kn_select(grad, dim, i)))
            return kn_last_status();
    return KN_OK;
}

kn_tensor *kn_stack(kn_tensor *const *tensors, int count, int dim)
{
    if (!check_list("stack", tensors, count)) return NULL;
    const kn_tensor *first = tensors[0];
    if (first->ndim >= KN_MAX_DIMS)
        return kn__error_null(KN_ERR_SHAPE,
                              "stack: tensors of shape %s already have the maximum rank %d",
                              kn__shape(first), KN_MAX_DIMS);
    if (!kn__wrap_dim(&dim, first->ndim + 1, "stack")) return NULL;
    for (int i = 1; i < count; i++)
        if (!kn__same_shape(tensors[i], first))
            return kn__error_null(KN_ERR_SHAPE,
                                  "stack: expected tensors of one shape, got %s (tensor 0) and %s "
                                  "(tensor %d)",
                                  kn__shape(first), kn__shape(tensors[i]), i);
    int64_t shape[KN_MAX_DIMS];
    for (int d = 0, s = 0; d <= first->ndim; d++) shape[d] = d == dim ? count : first->shape[s++];
    kn_tensor *out = kn__empty_raw(shape, first->ndim + 1, first->dtype, first->device);
    if (!out) return NULL;
    for (int i = 0; i < count; i++)
        if (copy_into(out, dim, i, true, tensors[i]) != KN_OK) {
            kn_release(out);
            return NULL;
        }
    if (!record_list(out, tensors, count, "stack", stack_backward, dim)) {
        kn_release(out);
        return NULL;
    }
    return kn__result(out);
}

/* ---- index_select / embedding -------------------------------------------------------- */

/* The contiguous int64 index (one reference) after checking every value is in [0, size). */
static kn_tensor *checked_index(const char *op, kn_tensor *index, int64_t size, const char *what,
                                const kn_tensor *t)
{
    if (!kn__check_int64(op, index, "index")) return NULL;
    kn_tensor *idx = contiguous_raw(index);
    if (!idx) return NULL;
    int64_t n = kn_numel(idx);
    const int64_t *p = kn__data_ptr(idx);
    int64_t *host = NULL;
    size_t host_bytes = sizeof(int64_t) * (size_t)n;
    if (idx->device.type != KN_DEVICE_CPU && n > 0) { /* checked here, on a copy */
        host = kn__alloc(host_bytes);
        if (!host) {
            kn__error(KN_ERR_MEMORY, "%s: out of memory for %zu bytes of indices", op, host_bytes);
            kn_release(idx);
            return NULL;
        }
        if (kn__copy_to_host(idx, 0, host, host_bytes) != KN_OK) {
            kn__free(host, host_bytes);
            kn_release(idx);
            return NULL;
        }
        p = host;
    }
    for (int64_t i = 0; i < n; i++)
        if (p[i] < 0 || p[i] >= size) {
            kn__error(KN_ERR_VALUE,
                      "%s: index %lld (at position %lld) is out of range for %s "
                      "of size %lld (input shape %s)",
                      op, (long long)p[i], (long long)i, what, (long long)size, kn__shape(t));
            if (host) kn__free(host, host_bytes);
            kn_release(idx);
            return NULL;
        }
    if (host) kn__free(host, host_bytes);
    return idx;
}

/* grad_in[o, index[j], :] += grad[o, j, :] for an input of shape in viewed as
 * [outer, in_size, inner]. */
static kn_tensor *index_add_backward(const kn_node_input *in, kn_tensor *grad, kn_tensor *index,
                                     int64_t outer, int64_t in_size, int64_t inner)
{
    kn_tensor *grad_in = zeros_for(in, grad->device);
    kn_tensor *g = grad_in ? contiguous_raw(grad) : NULL;
    if (!g) return NULL;
    if (grad->device.type != KN_DEVICE_CPU) {
        const kn_cuda_conv_backend *be = kn__cuda_conv(grad->device, "index_select backward");
        kn_status status = be ? kn__cuda_error(be->index_add(
                                    grad->device.index, kn__data_ptr(grad_in), kn__data_ptr(g),
                                    kn__data_ptr(index), kn_numel(index), outer, in_size, inner))
                              : kn_last_status();
        kn_release(g);
        return status == KN_OK ? grad_in : NULL;
    }
    kn_cpu_index_add(kn__data_ptr(grad_in), kn__data_ptr(g), kn__data_ptr(index), kn_numel(index),
                     outer, in_size, inner);
    kn_release(g);
    return grad_in;
}

static void split_at(const int64_t *shape, int ndim, int dim, int64_t *outer, int64_t *inner)
{
    *outer = *inner = 1;
    for (int d = 0; d < ndim; d++) {
        if (d < dim) *outer *= shape[d];
        if (d > dim) *inner *= shape[d];
    }
}

static kn_status index_select_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    const kn_node_input *in = &node->inputs[0];
    int dim = (int)node->iargs[0];
    int64_t outer, inner, size = in->ndim ? in->shape[dim] : 1;
    split_at(in->shape, in->ndim, dim, &outer, &inner);
    grads[0] = index_add_backward(in, grad, node->saved[0], outer, size, inner);
    return grads[0] ? KN_OK : kn_last_status();
}

/* out = rows of t picked by index along dim; shape builds out's shape from t's. */
static kn_tensor *select_rows(const char *name, kn_tensor *t, int dim, kn_tensor *idx,
                              const int64_t *shape, int ndim, kn_backward_fn backward,
                              kn_tensor *index_input)
{
    kn_tensor *src = contiguous_raw(t);
    kn_tensor *out = src ? kn__empty_raw(shape, ndim, t->dtype, t->device) : NULL;
    if (!out) {
        kn_release(src);
        return NULL;
    }
    int64_t outer, inner, size = t->ndim ? t->shape[dim] : 1;
    split_at(t->shape, t->ndim, dim, &outer, &inner);
    if (t->device.type != KN_DEVICE_CPU) {
        const kn_cuda_conv_backend *be = kn__cuda_conv(t->device, name);
        kn_status status =
            be ? kn__cuda_error(be->index_select(
                     t->device.index, kn_dtype_size(t->dtype), kn__data_ptr(out), kn__data_ptr(src),
                     kn__data_ptr(idx), kn_numel(idx), outer, size, inner))
               : kn_last_status();
        if (status != KN_OK) {
            kn_release(src);
            kn_release(out);
            return NULL;
        }
    } else {
        kn_cpu_index_select(kn_dtype_size(t->dtype), kn__data_ptr(out), kn__data_ptr(src),
                            kn__data_ptr(idx), kn_numel(idx), outer, size, inner);
    }
    kn_release(src);
    kn_tensor *inputs[2] = {t, index_input};
    if (kn__needs_grad(inputs, 2)) {
        kn_node *node = kn__node_new(name, backward, inputs, 2);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        node->iargs[0] = dim;
        kn__node_save(node, idx);
        kn__node_attach(out, node);
    }
    return out;
}

kn_tensor *kn_index_select(kn_tensor *t, int dim, kn_tensor *index)
{
    kn_tensor *inputs[2] = {t, index};
    if (!kn__check_inputs("index_select", inputs, 2) ||
        !kn__wrap_dim(&dim, t->ndim, "index_select"))
        return NULL;
    if (index->ndim > 1)
        return kn__error_null(KN_ERR_SHAPE, "index_select: index must be 1-D, got shape %s",
                              kn__shape(index));
    int64_t size = t->ndim ? t->shape[dim] : 1, n = kn_numel(index);
    if (t->ndim == 0 && n != 1)
        return kn__error_null(KN_ERR_SHAPE,
                              "index_select: a 0-dim input takes one index, got shape %s",
                              kn__shape(index));
    char what[32];
    snprintf(what, sizeof what, "dim %d", dim);
    kn_tensor *idx = checked_index("index_select", index, size, what, t);
    if (!idx) return NULL;
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    if (t->ndim) shape[dim] = n;
    kn_tensor *out =
        select_rows("index_select", t, dim, idx, shape, t->ndim, index_select_backward, index);
    kn_release(idx);
    return kn__result(out);
}

static kn_status embedding_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    const kn_node_input *in = &node->inputs[0];
    grads[0] = index_add_backward(in, grad, node->saved[0], 1, in->shape[0], in->shape[1]);
    return grads[0] ? KN_OK : kn_last_status();
}

kn_tensor *kn_embedding(kn_tensor *weight, kn_tensor *indices)
{
    kn_tensor *inputs[2] = {weight, indices};
    if (!kn__check_inputs("embedding", inputs, 2) ||
        !kn__check_float("embedding", weight) || !kn__check_int64("embedding", indices, "indices"))
        return NULL;
    if (weight->ndim != 2)
        return kn__error_null(KN_ERR_SHAPE,
                              "embedding: weight must be 2-D [num, dim], got shape %s",
                              kn__shape(weight));
    if (indices->ndim >= KN_MAX_DIMS)
        return kn__error_null(KN_ERR_SHAPE, "embedding: indices of shape %s have too many dims",
                              kn__shape(indices));
    kn_tensor *idx =
        checked_index("embedding", indices, weight->shape[0], "the weight's rows", weight);
    if (!idx) return NULL;
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, indices->shape, sizeof(int64_t) * (size_t)indices->ndim);
    shape[indices->ndim] = weight->shape[1];
    kn_tensor *out = select_rows("embedding", weight, 0, idx, shape, indices->ndim + 1,
                                 embedding_backward, indices);
    kn_release(idx);
    return kn__result(out);
}

/* ---- gather ----------------------------------------------------------------------- */

/* A rank >= 1 description of t for the gather kernels (a 0-dim t is [1]). */
static int as_rank1(const kn_tensor *t, int64_t *shape, int64_t *strides)
{
    if (t->ndim == 0) {
        shape[0] = 1;
        strides[0] = 0;
        return 1;
    }
    memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    memcpy(strides, t->strides, sizeof(int64_t) * (size_t)t->ndim);
    return t->ndim;
}

static kn_status gather_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *index = node->saved[0];
    kn_tensor *grad_in = zeros_for(&node->inputs[0], grad->device);
    if (!grad_in) return kn_last_status();
    int64_t shape[KN_MAX_DIMS], grad_strides[KN_MAX_DIMS];
    int64_t in_shape[KN_MAX_DIMS], in_strides[KN_MAX_DIMS];
    int ndim = as_rank1(grad, shape, grad_strides); /* grad has the index's shape */
    as_rank1(grad_in, in_shape, in_strides);
    if (grad->device.type != KN_DEVICE_CPU) {
        const kn_cuda_conv_backend *be = kn__cuda_conv(grad->device, "gather backward");
        if (!be) return kn_last_status();
        kn_status status = kn__cuda_error(be->scatter_add(
            grad->device.index, shape, ndim, (int)node->iargs[0], kn__data_ptr(grad_in), in_strides,
            kn__data_ptr(grad), grad_strides, kn__data_ptr(index)));
        if (status != KN_OK) return status;
        grads[0] = grad_in;
        return KN_OK;
    }
    kn_cpu_scatter_add(shape, ndim, (int)node->iargs[0], kn__data_ptr(grad_in), in_strides,
                       kn__data_ptr(grad), grad_strides, kn__data_ptr(index));
    grads[0] = grad_in;
    return KN_OK;
}

kn_tensor *kn_gather(kn_tensor *t, int dim, kn_tensor *index)
{
    kn_tensor *inputs[2] = {t, index};
    if (!kn__check_inputs("gather", inputs, 2) || !kn__wrap_dim(&dim, t->ndim, "gather") ||
        !kn__check_int64("gather", index, "index"))
        return NULL;
    if (index->ndim != t->ndim)
        return kn__error_null(KN_ERR_SHAPE,
                              "gather: index (shape %s) must have the same rank as the input "
                              "(shape %s)",
                              kn__shape(index), kn__shape(t));
    for (int d = 0; d < t->ndim; d++)
        if (d != dim && index->shape[d] > t->shape[d])
            return kn__error_null(KN_ERR_SHAPE,
                                  "gather: index shape %s exceeds input shape %s at dim %d "
                                  "(only dim %d may be larger)",
                                  kn__shape(index), kn__shape(t), d, dim);
    char what[32];
    snprintf(what, sizeof what, "dim %d", dim);
    kn_tensor *idx = checked_index("gather", index, t->ndim ? t->shape[dim] : 1, what, t);
    if (!idx) return NULL;
    kn_tensor *out = kn__empty_raw(index->shape, index->ndim, t->dtype, t->device);
    if (!out) {
        kn_release(idx);
        return NULL;
    }
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS], in_shape[KN_MAX_DIMS];
    int ndim = as_rank1(index, shape, strides);
    as_rank1(t, in_shape, strides);
    if (t->device.type != KN_DEVICE_CPU) {
        const kn_cuda_conv_backend *be = kn__cuda_conv(t->device, "gather");
        if (!be || kn__cuda_error(be->gather(t->device.index, kn_dtype_size(t->dtype), shape, ndim,
                                             dim, kn__data_ptr(out), kn__data_ptr(t), strides,
                                             kn__data_ptr(idx))) != KN_OK) {
            kn_release(idx);
            kn_release(out);
            return NULL;
        }
    } else {
        kn_cpu_gather(kn_dtype_size(t->dtype), shape, ndim, dim, kn__data_ptr(out), kn__data_ptr(t),
                      strides, kn__data_ptr(idx));
    }
    if (kn__needs_grad(inputs, 2)) {
        kn_node *node = kn__node_new("gather", gather_backward, inputs, 2);
        if (!node) {
            kn_release(idx);
            kn_release(out);
            return NULL;
        }
        node->iargs[0] = dim;
        kn__node_save(node, idx);
        kn__node_attach(out, node);
    }
    kn_release(idx);
    return kn__result(out);
}

/*
 * ops_elementwise.c — the pointwise ops: add/sub/mul/div with broadcasting, the unary
 * math ops and activations, where, comparisons, and the in-place helpers optimizers
 * use. Each op: shape rule, forward through kernels/cpu/elementwise.c, backward.
 */
#include "kn_internal.h"
#include "kn_cuda.h"

#include <math.h>
#include <string.h>

/* An operand for the iterator: t's element strides broadcast to shape (0 where t has
 * size 1 or is missing). */
static kn_cpu_operand operand(const kn_tensor *t, const int64_t *shape, int ndim)
{
    kn_cpu_operand o = {kn__data_ptr(t), {0}};
    int lead = ndim - t->ndim;
    for (int d = 0; d < t->ndim; d++)
        o.strides[lead + d] = (t->shape[d] == 1 && shape[lead + d] != 1) ? 0 : t->strides[d];
    return o;
}

/* ---- binary ---------------------------------------------------------------------- */

static kn_tensor *binary_forward(const char *name, kn_binary_op op, kn_tensor *a, kn_tensor *b,
                                 float alpha)
{
    kn_tensor *inputs[2] = {a, b};
    if (!kn__check_inputs(name, inputs, 2)) return NULL;
    if (!kn__check_float(name, a) || !kn__check_float(name, b)) return NULL;
    int64_t shape[KN_MAX_DIMS];
    int ndim;
    if (!kn__broadcast_shapes(name, a->shape, a->ndim, b->shape, b->ndim, shape, &ndim))
        return NULL;
    kn_tensor *out = kn__empty_raw(shape, ndim, KN_FLOAT32, a->device);
    if (!out) return NULL;
    if (kn__kernel_binary(a->device, op, shape, ndim, operand(out, shape, ndim),
                          operand(a, shape, ndim), operand(b, shape, ndim), alpha, 0.f) != KN_OK) {
        kn_release(out);
        return NULL;
    }
    return out;
}

/* d(a+b) = (g, g); d(a-b) = (g, -g): the engine sums each to its input's shape. */
static kn_status add_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    grads[0] = grad;
    grads[1] = node->fargs[0] == 1.0 ? grad : kn_mul_scalar(grad, node->fargs[0]);
    return grads[1] ? KN_OK : kn_last_status();
}

static kn_status mul_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    if (node->inputs[0].needs_grad) grads[0] = kn_mul(grad, node->saved[1]);
    if (node->inputs[1].needs_grad) grads[1] = kn_mul(grad, node->saved[0]);
    return KN_OK;
}

/* d(a/b) = (g / b, -g * a / b^2) */
static kn_status div_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *a = node->saved[0], *b = node->saved[1];
    if (node->inputs[0].needs_grad) grads[0] = kn_div(grad, b);
    if (node->inputs[1].needs_grad) grads[1] = kn_neg(kn_div(kn_mul(grad, a), kn_mul(b, b)));
    return KN_OK;
}

/* Whether an operand is int64: ops_dtype.c computes those (issue 12). */
static bool any_int64(const kn_tensor *a, const kn_tensor *b)
{
    return a && b && (a->dtype == KN_INT64 || b->dtype == KN_INT64);
}

static kn_tensor *add_like(const char *name, kn_tensor *a, kn_tensor *b, double sign)
{
    if (any_int64(a, b))
        return kn__int64_binary(name, sign > 0 ? KN_BINARY_ADD : KN_BINARY_SUB, a, b);
    kn_tensor *out = binary_forward(name, KN_BINARY_ADD_SCALED, a, b, (float)sign);
    if (!out) return NULL;
    kn_tensor *inputs[2] = {a, b};
    if (kn__needs_grad(inputs, 2)) {
        kn_node *node = kn__node_new(name, add_backward, inputs, 2);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        node->fargs[0] = sign;
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

kn_tensor *kn_add(kn_tensor *a, kn_tensor *b)
{
    return add_like("add", a, b, 1.0);
}
kn_tensor *kn_sub(kn_tensor *a, kn_tensor *b)
{
    return add_like("sub", a, b, -1.0);
}

static kn_tensor *mul_like(const char *name, kn_binary_op op, kn_backward_fn backward, kn_tensor *a,
                           kn_tensor *b)
{
    if (any_int64(a, b)) return kn__int64_binary(name, op, a, b);
    kn_tensor *out = binary_forward(name, op, a, b, 0.f);
    if (!out) return NULL;
    kn_tensor *inputs[2] = {a, b};
    if (kn__needs_grad(inputs, 2)) {
        kn_node *node = kn__node_new(name, backward, inputs, 2);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        kn__node_save(node, a);
        kn__node_save(node, b);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

kn_tensor *kn_mul(kn_tensor *a, kn_tensor *b)
{
    return mul_like("mul", KN_BINARY_MUL, mul_backward, a, b);
}
kn_tensor *kn_div(kn_tensor *a, kn_tensor *b)
{
    return mul_like("div", KN_BINARY_DIV, div_backward, a, b);
}

static kn_tensor *compare(const char *name, kn_binary_op op, kn_tensor *a, kn_tensor *b)
{
    if (any_int64(a, b)) return kn__int64_binary(name, op, a, b);
    return kn__result(binary_forward(name, op, a, b, 0.f));
}

kn_tensor *kn_eq(kn_tensor *a, kn_tensor *b)
{
    return compare("eq", KN_BINARY_EQ, a, b);
}
kn_tensor *kn_gt(kn_tensor *a, kn_tensor *b)
{
    return compare("gt", KN_BINARY_GT, a, b);
}
kn_tensor *kn_lt(kn_tensor *a, kn_tensor *b)
{
    return compare("lt", KN_BINARY_LT, a, b);
}

/* ---- unary ----------------------------------------------------------------------- */

/* What backward needs of a unary op: its input (x), its output (y), or neither. */
typedef enum { SAVE_NOTHING, SAVE_INPUT, SAVE_OUTPUT } unary_save;

static kn_tensor *unary_op(const char *name, kn_unary_op op, kn_tensor *a, float alpha, float beta,
                           kn_backward_fn backward, unary_save save)
{
    if (!kn__check_inputs(name, &a, 1) || !kn__check_float(name, a)) return NULL;
    kn_tensor *out = kn__empty_raw(a->shape, a->ndim, KN_FLOAT32, a->device);
    if (!out) return NULL;
    if (kn__kernel_unary(a->device, op, a->shape, a->ndim, operand(out, a->shape, a->ndim),
                         operand(a, a->shape, a->ndim), alpha, beta) != KN_OK) {
        kn_release(out);
        return NULL;
    }
    if (backward && kn__needs_grad(&a, 1)) {
        kn_node *node = kn__node_new(name, backward, &a, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        node->fargs[0] = alpha;
        node->fargs[1] = beta;
        if (save == SAVE_INPUT) kn__node_save(node, a);
        if (save == SAVE_OUTPUT) kn__node_save(node, out);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/* grad_input = op(grad, saved) with one of the fused backward kernels. */
static kn_tensor *fused_backward(kn_binary_op op, kn_tensor *grad, kn_tensor *saved, float alpha,
                                 float beta)
{
    int64_t shape[KN_MAX_DIMS];
    int ndim;
    if (!kn__broadcast_shapes("backward", grad->shape, grad->ndim, saved->shape, saved->ndim, shape,
                              &ndim))
        return NULL;
    kn_tensor *out = kn__empty_raw(shape, ndim, KN_FLOAT32, grad->device);
    if (!out) return NULL;
    if (kn__kernel_binary(grad->device, op, shape, ndim, operand(out, shape, ndim),
                          operand(grad, shape, ndim), operand(saved, shape, ndim), alpha,
                          beta) != KN_OK) {
        kn_release(out);
        return NULL;
    }
    return kn__result(out);
}

#define FUSED_BACKWARD(fn_name, kernel)                                                            \
    static kn_status fn_name(kn_node *node, kn_tensor *grad, kn_tensor **grads)                    \
    {                                                                                              \
        grads[0] = fused_backward(kernel, grad, node->saved[0], (float)node->fargs[0],             \
                                  (float)node->fargs[1]);                                          \
        return grads[0] ? KN_OK : kn_last_status();                                                \
    }

FUSED_BACKWARD(relu_backward, KN_BINARY_RELU_BACKWARD)
FUSED_BACKWARD(leaky_relu_backward, KN_BINARY_LEAKY_RELU_BACKWARD)
FUSED_BACKWARD(tanh_backward, KN_BINARY_TANH_BACKWARD)
FUSED_BACKWARD(sigmoid_backward, KN_BINARY_SIGMOID_BACKWARD)
FUSED_BACKWARD(gelu_backward, KN_BINARY_GELU_BACKWARD)
FUSED_BACKWARD(gelu_tanh_backward, KN_BINARY_GELU_TANH_BACKWARD)
FUSED_BACKWARD(silu_backward, KN_BINARY_SILU_BACKWARD)
FUSED_BACKWARD(pow_backward, KN_BINARY_POW_BACKWARD)
FUSED_BACKWARD(clamp_backward, KN_BINARY_CLAMP_BACKWARD)

static kn_status neg_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    (void)node;
    grads[0] = kn_neg(grad);
    return KN_OK;
}

static kn_status scale_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    grads[0] = kn_mul_scalar(grad, node->fargs[0]);
    return KN_OK;
}

static kn_status identity_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    (void)node;
    grads[0] = grad;
    return KN_OK;
}

static kn_status exp_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    grads[0] = kn_mul(grad, node->saved[0]);
    return KN_OK;
}

static kn_status log_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    grads[0] = kn_div(grad, node->saved[0]);
    return KN_OK;
}

/* d sqrt(x) = g / (2 sqrt(x)) */
static kn_status sqrt_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    grads[0] = kn_div(grad, kn_mul_scalar(node->saved[0], 2.0));
    return KN_OK;
}

static kn_status abs_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *x = node->saved[0];
    kn_tensor *sign = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device);
    if (!sign) return kn_last_status();
    kn__result(sign);
    kn_status status =
        kn__kernel_unary(x->device, KN_UNARY_SIGN, x->shape, x->ndim,
                         operand(sign, x->shape, x->ndim), operand(x, x->shape, x->ndim), 0.f, 0.f);
    if (status != KN_OK) return status;
    grads[0] = kn_mul(grad, sign);
    return KN_OK;
}

kn_tensor *kn_neg(kn_tensor *a)
{
    return unary_op("neg", KN_UNARY_NEG, a, 0, 0, neg_backward, SAVE_NOTHING);
}
kn_tensor *kn_exp(kn_tensor *a)
{
    return unary_op("exp", KN_UNARY_EXP, a, 0, 0, exp_backward, SAVE_OUTPUT);
}
kn_tensor *kn_log(kn_tensor *a)
{
    return unary_op("log", KN_UNARY_LOG, a, 0, 0, log_backward, SAVE_INPUT);
}
kn_tensor *kn_sqrt(kn_tensor *a)
{
    return unary_op("sqrt", KN_UNARY_SQRT, a, 0, 0, sqrt_backward, SAVE_OUTPUT);
}
kn_tensor *kn_abs(kn_tensor *a)
{
    return unary_op("abs", KN_UNARY_ABS, a, 0, 0, abs_backward, SAVE_INPUT);
}
kn_tensor *kn_relu(kn_tensor *a)
{
    return unary_op("relu", KN_UNARY_RELU, a, 0, 0, relu_backward, SAVE_OUTPUT);
}
kn_tensor *kn_tanh(kn_tensor *a)
{
    return unary_op("tanh", KN_UNARY_TANH, a, 0, 0, tanh_backward, SAVE_OUTPUT);
}
kn_tensor *kn_sigmoid(kn_tensor *a)
{
    return unary_op("sigmoid", KN_UNARY_SIGMOID, a, 0, 0, sigmoid_backward, SAVE_OUTPUT);
}
kn_tensor *kn_silu(kn_tensor *a)
{
    return unary_op("silu", KN_UNARY_SILU, a, 0, 0, silu_backward, SAVE_INPUT);
}

kn_tensor *kn_leaky_relu(kn_tensor *a, double negative_slope)
{
    return unary_op("leaky_relu", KN_UNARY_LEAKY_RELU, a, (float)negative_slope, 0,
                    leaky_relu_backward, SAVE_INPUT);
}

kn_tensor *kn_gelu(kn_tensor *a, kn_gelu_approximation approximate)
{
    if (approximate == KN_GELU_TANH)
        return unary_op("gelu", KN_UNARY_GELU_TANH, a, 0, 0, gelu_tanh_backward, SAVE_INPUT);
    return unary_op("gelu", KN_UNARY_GELU, a, 0, 0, gelu_backward, SAVE_INPUT);
}

kn_tensor *kn_pow(kn_tensor *a, double exponent)
{
    return unary_op("pow", KN_UNARY_POW, a, (float)exponent, 0, pow_backward, SAVE_INPUT);
}

kn_tensor *kn_clamp(kn_tensor *a, double min, double max)
{
    if (!isnan(min) && !isnan(max) && min > max)
        return kn__error_null(KN_ERR_VALUE, "clamp: min %g is greater than max %g", min, max);
    return unary_op("clamp", KN_UNARY_CLAMP, a, (float)min, (float)max, clamp_backward, SAVE_INPUT);
}

kn_tensor *kn_add_scalar(kn_tensor *a, double value)
{
    return unary_op("add_scalar", KN_UNARY_ADD_SCALAR, a, (float)value, 0, identity_backward,
                    SAVE_NOTHING);
}

kn_tensor *kn_mul_scalar(kn_tensor *a, double value)
{
    return unary_op("mul_scalar", KN_UNARY_MUL_SCALAR, a, (float)value, 0, scale_backward,
                    SAVE_NOTHING);
}

static kn_status clone_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    (void)node;
    grads[0] = grad;
    return KN_OK;
}

kn_tensor *kn_clone(kn_tensor *t)
{
    if (!kn__check_inputs("clone", &t, 1)) return NULL;
    kn_tensor *out = kn__empty_raw(t->shape, t->ndim, t->dtype, t->device);
    if (!out) return NULL;
    if (kn__kernel_copy(t->device, t->shape, t->ndim, kn_dtype_size(t->dtype),
                        operand(out, t->shape, t->ndim), operand(t, t->shape, t->ndim)) != KN_OK) {
        kn_release(out);
        return NULL;
    }
    if (kn__needs_grad(&t, 1)) {
        kn_node *node = kn__node_new("clone", clone_backward, &t, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/* ---- where ---------------------------------------------------------------------- */

static kn_status where_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *cond = node->saved[0];
    kn_tensor *zero = kn_zeros(NULL, 0, KN_FLOAT32);
    if (zero && grad->device.type != KN_DEVICE_CPU) zero = kn_to(zero, grad->device);
    if (node->inputs[1].needs_grad) grads[1] = kn_where(cond, grad, zero);
    if (node->inputs[2].needs_grad) grads[2] = kn_where(cond, zero, grad);
    return KN_OK;
}

kn_tensor *kn_where(kn_tensor *cond, kn_tensor *a, kn_tensor *b)
{
    kn_tensor *inputs[3] = {cond, a, b};
    if (!kn__check_inputs("where", inputs, 3)) return NULL;
    if (!kn__check_float("where", a) || !kn__check_float("where", b)) return NULL;
    int64_t shape[KN_MAX_DIMS], ab[KN_MAX_DIMS];
    int ndim, ab_ndim;
    if (!kn__broadcast_shapes("where", a->shape, a->ndim, b->shape, b->ndim, ab, &ab_ndim) ||
        !kn__broadcast_shapes("where", cond->shape, cond->ndim, ab, ab_ndim, shape, &ndim))
        return NULL;
    const kn_cuda_conv_backend *be = NULL;
    if (a->device.type != KN_DEVICE_CPU && !(be = kn__cuda_conv(a->device, "where"))) return NULL;
    kn_tensor *out = kn__empty_raw(shape, ndim, KN_FLOAT32, a->device);
    if (!out) return NULL;
    if (be) {
        if (kn__cuda_error(be->where(a->device.index, shape, ndim, operand(out, shape, ndim),
                                     operand(cond, shape, ndim), cond->dtype == KN_INT64,
                                     operand(a, shape, ndim), operand(b, shape, ndim))) != KN_OK) {
            kn_release(out);
            return NULL;
        }
    } else {
        kn_cpu_where(shape, ndim, operand(out, shape, ndim), operand(cond, shape, ndim),
                     cond->dtype == KN_INT64, operand(a, shape, ndim), operand(b, shape, ndim));
    }
    if (kn__needs_grad(inputs, 3)) {
        kn_node *node = kn__node_new("where", where_backward, inputs, 3);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        node->inputs[0].needs_grad = false; /* the condition has no gradient */
        kn__node_save(node, cond);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/* ---- in place (never recorded) ------------------------------------------------------ */

static kn_status check_in_place(const char *name, kn_tensor *dst, kn_tensor *src)
{
    kn_tensor *inputs[2] = {dst, src};
    if (!kn__check_inputs(name, inputs, src ? 2 : 1)) return kn_last_status();
    if (dst->requires_grad && !dst->grad_fn && kn_is_grad_enabled())
        return kn__error(KN_ERR_AUTOGRAD,
                         "%s: a leaf tensor that requires grad (shape %s) is used in an in-place "
                         "operation; wrap it in kn_no_grad_begin()/kn_no_grad_end()",
                         name, kn__shape(dst));
    if (src) {
        int64_t shape[KN_MAX_DIMS];
        int ndim;
        if (!kn__broadcast_shapes(name, dst->shape, dst->ndim, src->shape, src->ndim, shape, &ndim))
            return kn_last_status();
        if (ndim != dst->ndim || memcmp(shape, dst->shape, sizeof(int64_t) * (size_t)ndim))
            return kn__error(KN_ERR_SHAPE,
                             "%s: source of shape %s does not broadcast to destination %s", name,
                             kn__shape(src), kn__shape(dst));
    }
    return KN_OK;
}

kn_status kn_add_(kn_tensor *dst, kn_tensor *src, double alpha)
{
    kn_status status = check_in_place("add_", dst, src);
    if (status != KN_OK) return status;
    if (!kn__check_float("add_", dst) || !kn__check_float("add_", src)) return kn_last_status();
    kn_cpu_operand d = operand(dst, dst->shape, dst->ndim);
    return kn__kernel_binary(dst->device, KN_BINARY_ADD_SCALED, dst->shape, dst->ndim, d, d,
                             operand(src, dst->shape, dst->ndim), (float)alpha, 0.f);
}

kn_status kn_mul_scalar_(kn_tensor *dst, double value)
{
    kn_status status = check_in_place("mul_scalar_", dst, NULL);
    if (status != KN_OK) return status;
    if (!kn__check_float("mul_scalar_", dst)) return kn_last_status();
    kn_cpu_operand d = operand(dst, dst->shape, dst->ndim);
    return kn__kernel_unary(dst->device, KN_UNARY_MUL_SCALAR, dst->shape, dst->ndim, d, d,
                            (float)value, 0.f);
}

kn_status kn_fill_(kn_tensor *dst, double value)
{
    kn_status status = check_in_place("fill_", dst, NULL);
    if (status != KN_OK) return status;
    if (dst->dtype == KN_INT64) {
        int64_t fill = (int64_t)value;
        return kn__kernel_fill(dst->device, dst->shape, dst->ndim, 8,
                               operand(dst, dst->shape, dst->ndim), &fill);
    }
    kn_cpu_operand d = operand(dst, dst->shape, dst->ndim);
    return kn__kernel_unary(dst->device, KN_UNARY_FILL, dst->shape, dst->ndim, d, d, (float)value,
                            0.f);
}

kn_status kn_copy_(kn_tensor *dst, kn_tensor *src)
{
    if (dst && src && !kn_device_equal(dst->device, src->device)) {
        /* across devices: src moved to dst's device first, as torch's copy_ does */
        kn_scope_begin();
        kn_no_grad_begin();
        kn_tensor *moved = kn_to(src, dst->device);
        kn_no_grad_end();
        kn_status status = moved ? kn_copy_(dst, moved) : kn_last_status();
        kn_scope_end();
        return status;
    }
    kn_status status = check_in_place("copy_", dst, src);
    if (status != KN_OK) return status;
    if (dst->dtype != src->dtype)
        return kn__error(KN_ERR_DTYPE, "copy_: source is %s but destination is %s",
                         kn_dtype_name(src->dtype), kn_dtype_name(dst->dtype));
    return kn__kernel_copy(dst->device, dst->shape, dst->ndim, kn_dtype_size(dst->dtype),
                           operand(dst, dst->shape, dst->ndim),
                           operand(src, dst->shape, dst->ndim));
}

/* ---- sequence layers (issue 12) ---------------------------------------------------- */

FUSED_BACKWARD(elu_backward, KN_BINARY_ELU_BACKWARD)

kn_tensor *kn_elu(kn_tensor *a, double alpha)
{
    return unary_op("elu", KN_UNARY_ELU, a, (float)alpha, 0, elu_backward, SAVE_INPUT);
}

/*
 * ops_dropout.c — kn_dropout: a Bernoulli(1 - p) mask from the random generator, scaled
 * by 1/(1 - p) and saved, so backward is one multiply by the same scaled mask.
 *
 * On a CUDA device the mask is drawn on the CPU with the same generator and the same
 * calls as for a CPU tensor, then copied to the device: for a seed, the masks (and the
 * generator's state afterwards) are identical across devices.
 */
#include "kn_internal.h"

/* An operand for the iterator over t's own shape. */
static kn_cpu_operand operand(const kn_tensor *t)
{
    kn_cpu_operand o = {kn__data_ptr(t), {0}};
    for (int d = 0; d < t->ndim; d++) o.strides[d] = t->strides[d];
    return o;
}

/* saved: the scaled mask */
static kn_status dropout_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    grads[0] = kn_mul(grad, node->saved[0]);
    return grads[0] ? KN_OK : kn_last_status();
}

kn_tensor *kn_dropout(kn_tensor *x, double p, bool training, kn_generator *gen)
{
    if (!kn__check_inputs("dropout", &x, 1) || !kn__check_float("dropout", x)) return NULL;
    if (!(p >= 0.0 && p <= 1.0))
        return kn__error_null(KN_ERR_VALUE,
                              "dropout: probability p has to be between 0 and 1, but got %g", p);
    /* The identity: the same tensor, so gradients flow to x unchanged. */
    if (!training || p == 0.0) return kn__result(kn_retain(x));

    bool on_cpu = x->device.type == KN_DEVICE_CPU;
    if (!on_cpu && !kn_device_available(x->device)) {
        char name[32];
        return kn__error_null(KN_ERR_DEVICE, "dropout: device %s is not available (%s)",
                              kn_device_str(x->device, name, sizeof name), kn_cuda_status());
    }
    kn_tensor *mask = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, kn_cpu());
    kn_tensor *out = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device);
    if (!mask || !out) {
        kn_release(mask);
        kn_release(out);
        return NULL;
    }
    kn_cpu_operand m = operand(mask);
    if (p == 1.0) {
        kn_cpu_unary(KN_UNARY_FILL, mask->shape, mask->ndim, m, m, 0.f, 0.f);
    } else {
        if (kn_bernoulli_(mask, 1.0 - p, gen) != KN_OK) {
            kn_release(mask);
            kn_release(out);
            return NULL;
        }
        kn_cpu_unary(KN_UNARY_MUL_SCALAR, mask->shape, mask->ndim, m, m, (float)(1.0 / (1.0 - p)),
                     0.f);
    }
    if (!on_cpu) { /* the mask to x's device (kn_to of a fresh tensor: no history) */
        kn_scope_begin();
        kn_tensor *moved = kn_retain(kn_to(mask, x->device));
        kn_scope_end();
        kn_release(mask);
        mask = moved;
        if (!mask) {
            kn_release(out);
            return NULL;
        }
        m = operand(mask);
    }
    if (kn__kernel_binary(x->device, KN_BINARY_MUL, x->shape, x->ndim, operand(out), operand(x), m,
                          0.f, 0.f) != KN_OK) {
        kn_release(mask);
        kn_release(out);
        return NULL;
    }
    if (kn__needs_grad(&x, 1)) {
        kn_node *node = kn__node_new("dropout", dropout_backward, &x, 1);
        if (!node) {
            kn_release(mask);
            kn_release(out);
            return NULL;
        }
        kn__node_save(node, mask);
        kn__node_attach(out, node);
    }
    kn_release(mask);
    return kn__result(out);
}

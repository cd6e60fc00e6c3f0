/*
 * ops_group_norm.c — kn_group_norm, torch's F.group_norm: x [N, C, *] viewed as
 * [N, G, C/G * prod(*)] is normalised over its last dim by kn_layer_norm (the same
 * statistics: per sample and group, biased variance, eps inside the square root), viewed
 * back, then scaled and shifted per channel. layer_norm's fused kernels (CPU and CUDA)
 * do the normalisation and its backward; the per-channel affine is a broadcast multiply
 * and add, whose gradients reduce to [C].
 */
#include "kn_internal.h"

#include <math.h>
#include <string.h>

/* A per-channel vector [C] viewed as [C, 1, ...] to broadcast over x [N, C, *]. */
static kn_tensor *per_channel(kn_tensor *v, const kn_tensor *x)
{
    int64_t shape[KN_MAX_DIMS];
    shape[0] = v->shape[0];
    for (int d = 2; d < x->ndim; d++) shape[d - 1] = 1;
    return kn_reshape(v, shape, x->ndim - 1);
}

static bool check_affine(const char *what, const kn_tensor *v, const kn_tensor *x)
{
    if (!v || (v->ndim == 1 && v->shape[0] == x->shape[1])) return true;
    kn__error(KN_ERR_SHAPE,
              "group_norm: %s must be [%lld] (the input %s has %lld channels), got %s", what,
              (long long)x->shape[1], kn__shape(x), (long long)x->shape[1], kn__shape(v));
    return false;
}

kn_tensor *kn_group_norm(kn_tensor *x, int64_t num_groups, kn_tensor *weight, kn_tensor *bias,
                         double eps)
{
    kn_tensor *inputs[3] = {x, weight, bias};
    int n = 1;
    if (weight) inputs[n++] = weight;
    if (bias) inputs[n++] = bias;
    if (!kn__check_inputs("group_norm", inputs, n)) return NULL;
    for (int i = 0; i < n; i++)
        if (!kn__check_float("group_norm", inputs[i])) return NULL;
    if (x->ndim < 2)
        return kn__error_null(KN_ERR_SHAPE,
                              "group_norm: expected an input [N, C, *] of at least 2 dims, got %s",
                              kn__shape(x));
    int64_t channels = x->shape[1];
    if (num_groups <= 0 || channels % num_groups)
        return kn__error_null(KN_ERR_SHAPE,
                              "group_norm: expected the number of channels of the input %s (%lld) "
                              "to be divisible by num_groups, got num_groups %lld",
                              kn__shape(x), (long long)channels, (long long)num_groups);
    if (!(eps >= 0) || !isfinite(eps))
        return kn__error_null(KN_ERR_VALUE, "group_norm: expected a finite eps >= 0, got %g", eps);
    if (!check_affine("weight", weight, x) || !check_affine("bias", bias, x)) return NULL;
    kn_scope_begin();
    int64_t grouped[3] = {x->shape[0], num_groups, channels / num_groups};
    for (int d = 2; d < x->ndim; d++) grouped[2] *= x->shape[d];
    kn_tensor *y =
        kn_reshape(kn_layer_norm(kn_reshape(x, grouped, 3), 1, NULL, NULL, eps), x->shape, x->ndim);
    if (weight) y = kn_mul(y, per_channel(weight, x));
    if (bias) y = kn_add(y, per_channel(bias, x));
    if (!y) {
        kn_scope_end(); /* the error stays set */
        return NULL;
    }
    return kn_scope_escape(y);
}

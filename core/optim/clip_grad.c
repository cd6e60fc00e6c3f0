/*
 * clip_grad.c — torch.nn.utils.clip_grad_norm_ (L2, error_if_nonfinite=False) and the
 * finiteness check of gradients that the trainer uses to stop or skip a step.
 *
 * Gradients on a CUDA device are reduced there (sum of squares in double, a finiteness
 * flag; kernels/cuda/optim.cu), each wait returning one number, and scaled there.
 */
#include "kn_optim.h"
#include "kn_cuda.h"
#include "kn_internal.h"

#include <math.h>

#define LANES 16
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* Sum of squares in double, in independent lanes so it vectorises without -ffast-math. */
CLONES static double sum_squares(const float *x, int64_t n)
{
    double acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
    double total = 0;
    for (; i < n; i++) total += (double)x[i] * (double)x[i];
    for (int j = 0; j < LANES; j++) total += acc[j];
    return total;
}

/* NaN when some element is NaN or infinite (x * 0 is 0 only for finite x). */
CLONES static bool all_finite(const float *x, int64_t n)
{
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += x[i + j] * 0.0f;
    float total = 0;
    for (; i < n; i++) total += x[i] * 0.0f;
    for (int j = 0; j < LANES; j++) total += acc[j];
    return total == 0;
}

CLONES static void scale(float *x, int64_t n, float s)
{
    for (int64_t i = 0; i < n; i++) x[i] = x[i] * s;
}

static bool check_grad(const char *op, kn_tensor *p, int i)
{
    if (!p) {
        kn__error(KN_ERR_NULL, "%s: parameter %d is NULL", op, i);
        return false;
    }
    kn_tensor *g = p->grad;
    if (g && (g->dtype != KN_FLOAT32 || !kn_device_available(g->device))) {
        char dev[32];
        kn__error(KN_ERR_DTYPE,
                  "%s: the gradient of parameter %d must be float32 on an available device, "
                  "got %s on %s",
                  op, i, kn_dtype_name(g->dtype), kn_device_str(g->device, dev, sizeof dev));
        return false;
    }
    if (g && g->device.type == KN_DEVICE_CUDA && !kn__cuda_train(g->device, op)) return false;
    return true;
}

kn_status kn_clip_grad_norm(kn_tensor *const *params, int count, double max_norm,
                            double *total_norm)
{
    if (total_norm) *total_norm = NAN;
    if (count < 0 || (count > 0 && !params))
        return kn__error(KN_ERR_NULL, "clip_grad_norm: no parameter array");
    if (!(max_norm >= 0))
        return kn__error(KN_ERR_VALUE, "clip_grad_norm: max_norm must be >= 0, got %g", max_norm);
    for (int i = 0; i < count; i++)
        if (!check_grad("clip_grad_norm", params[i], i)) return kn_last_status();
    /* torch: norm(stack([norm(g) for g in grads])) in float32; each norm here is exact
     * in double, then rounded to float as torch's per-tensor norm is. */
    double sum = 0;
    for (int i = 0; i < count; i++) {
        kn_tensor *g = params[i]->grad;
        if (!g) continue;
        kn_tensor *c = kn__contiguous_raw(g);
        if (!c) return kn_last_status();
        double squares = 0;
        if (c->device.type == KN_DEVICE_CUDA) {
            const kn_cuda_train *t = kn__cuda_train(c->device, "clip_grad_norm");
            kn_status s = t ? kn__cuda_error(t->sum_squares(c->device.index, kn__data_ptr(c),
                                                            kn_numel(c), &squares))
                            : kn_last_status();
            if (s != KN_OK) {
                kn_release(c);
                return s;
            }
        } else {
            squares = sum_squares(kn__data_ptr(c), kn_numel(c));
        }
        float norm = (float)sqrt(squares);
        kn_release(c);
        sum += (double)norm * (double)norm;
    }
    float total = (float)sqrt(sum);
    if (total_norm) *total_norm = total;
    /* clip_coef = max_norm / (total_norm + 1e-6), clamped to 1, in float32; torch's
     * float / tensor is tensor.reciprocal() * float. A non-finite norm makes it 0 or NaN
     * and, as in torch, the gradients are scaled anyway. */
    float coef = (1.0f / (total + 1e-6f)) * (float)max_norm;
    if (coef >= 1.0f) return KN_OK;
    for (int i = 0; i < count; i++) {
        kn_tensor *g = params[i]->grad;
        if (!g) continue;
        if (kn_is_contiguous(g) && g->device.type == KN_DEVICE_CPU) {
            scale(kn__data_ptr(g), kn_numel(g), coef);
        } else {
            kn_status s = kn_mul_scalar_(g, coef);
            if (s != KN_OK) return s;
        }
    }
    return KN_OK;
}

bool kn_grads_finite(kn_tensor *const *params, int count)
{
    for (int i = 0; i < count; i++) {
        if (!params || !params[i] || !params[i]->grad) continue;
        kn_tensor *g = params[i]->grad;
        if (g->dtype != KN_FLOAT32 || !kn_device_available(g->device)) continue;
        kn_tensor *c = kn__contiguous_raw(g);
        if (!c) return false;
        bool ok = true;
        if (c->device.type == KN_DEVICE_CUDA) {
            const kn_cuda_train *t = kn__cuda_train(c->device, "grads_finite");
            /* a device that cannot answer counts as not finite: the step is skipped */
            if (!t || kn__cuda_error(t->all_finite(c->device.index, kn__data_ptr(c), kn_numel(c),
                                                   &ok)) != KN_OK)
                ok = false;
        } else {
            ok = all_finite(kn__data_ptr(c), kn_numel(c));
        }
        kn_release(c);
        if (!ok) return false;
    }
    return true;
}

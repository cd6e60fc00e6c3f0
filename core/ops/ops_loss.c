/*
 * ops_loss.c — the losses: the elementwise ones (mse, l1, smooth_l1, huber, binary cross
 * entropy with logits and its pos_weight), cross entropy (fused log_softmax + nll with label
 * smoothing, ignore_index and class weights) and nll on log-probabilities. Each has a
 * fused forward and a fused backward; reduction mean/sum/none, with torch's semantics
 * (a weighted mean divides by the sum of the targets' weights).
 * CUDA tensors run the same formulas on the CUDA module's kernels (kernels/cuda/loss.cu);
 * their class targets are checked on the device, and only the count and the first bad
 * position come back to the host.
 */
#include "kn_internal.h"
#include "kn_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define LANES 16

/* The shared vectorisable exp (kernels/cpu/kn_cpu.h): inlined so the loops below vectorise. */
#define exp_fast kn_cpu_expf_inline

/* log(1 + y) for y in [0, 1] as 2 atanh(y / (2 + y)): the series in s = y / (2 + y)
 * <= 1/3 converges to float precision in 8 terms, stays exact for tiny y, and
 * vectorises (log1pf is a libm call). */
static inline float log1p_unit(float y)
{
    float s = y / (2.f + y), s2 = s * s;
    float p = 1.f / 15.f;
    p = p * s2 + 1.f / 13.f;
    p = p * s2 + 1.f / 11.f;
    p = p * s2 + 1.f / 9.f;
    p = p * s2 + 1.f / 7.f;
    p = p * s2 + 1.f / 5.f;
    p = p * s2 + 1.f / 3.f;
    p = p * s2 + 1.f;
    return 2.f * s * p;
}

static float *f32(kn_tensor *t)
{
    return t ? (float *)kn__data_ptr(t) : NULL;
}
static int64_t *i64(kn_tensor *t)
{
    return (int64_t *)kn__data_ptr(t);
}

static bool on_cuda(const kn_tensor *t)
{
    return t->device.type == KN_DEVICE_CUDA;
}

static bool check_reduction(const char *op, kn_reduction reduction)
{
    if (reduction == KN_REDUCTION_MEAN || reduction == KN_REDUCTION_SUM ||
        reduction == KN_REDUCTION_NONE)
        return true;
    kn__error(KN_ERR_VALUE, "%s: reduction %d is not one of mean (0), sum (1), none (2)", op,
              (int)reduction);
    return false;
}

/* Sums n floats in double, lanes kept apart so the loop vectorises. */
CLONES static double sum_f64(const float *x, int64_t n)
{
    double acc[8] = {0}, total = 0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += x[i + k];
    for (; i < n; i++) total += x[i];
    for (int k = 0; k < 8; k++) total += acc[k];
    return total;
}

/* The result of a loss from per-element values (an unregistered tensor of the input's
 * shape, consumed): itself for none, else a 0-d sum or mean over `count`. */
static kn_tensor *reduce_losses(kn_tensor *losses, kn_reduction reduction, double count)
{
    if (reduction == KN_REDUCTION_NONE) return losses;
    int64_t no_dims[1] = {0}; /* a 0-d shape, but never a NULL pointer */
    kn_tensor *out = kn__empty_raw(no_dims, 0, KN_FLOAT32, losses->device);
    if (!out) {
        kn_release(losses);
        return NULL;
    }
    if (on_cuda(losses)) {
        const kn_cuda_reduce *r = kn__cuda_reduce(losses->device, "loss");
        double divisor = reduction == KN_REDUCTION_MEAN ? count : 1.0;
        kn_status status = r ? kn__cuda_error(r->sum(losses->device.index, f32(losses), f32(out), 1,
                                                     kn_numel(losses), 1, divisor, false))
                             : kn_last_status();
        kn_release(losses);
        if (status != KN_OK) {
            kn_release(out);
            return NULL;
        }
        return out;
    }
    double total = sum_f64(f32(losses), kn_numel(losses));
    f32(out)[0] = (float)(reduction == KN_REDUCTION_MEAN ? total / count : total);
    kn_release(losses);
    return out;
}

/* The gradient of a reduced loss as (per-element grad pointer or NULL, scalar factor):
 * for none every element has its own upstream gradient, else one scalar. */
typedef struct upstream {
    kn_tensor *dense; /* for none: the contiguous upstream gradient */
    float scalar;
} upstream;

static bool get_upstream(kn_tensor *grad, kn_reduction reduction, double count, upstream *u)
{
    u->dense = NULL;
    u->scalar = 1.f;
    if (reduction == KN_REDUCTION_NONE) {
        u->dense = kn__contiguous_raw(grad);
        return u->dense != NULL;
    }
    if (on_cuda(grad)) return true; /* read on the device: see cuda_upstream */
    double g = *f32(grad);
    u->scalar = (float)(reduction == KN_REDUCTION_MEAN ? g / count : g);
    return true;
}

/* The upstream gradient as the CUDA kernels take it: per element, or the 0-d grad's value
 * over the reduction's divisor, read on the device (no copy back). */
static kn_cuda_upstream cuda_upstream(kn_tensor *grad, kn_reduction reduction, double count,
                                      const upstream *u)
{
    if (u->dense) return (kn_cuda_upstream){f32(u->dense), true, 1.0};
    return (kn_cuda_upstream){kn__data_ptr(grad), false,
                              reduction == KN_REDUCTION_MEAN ? count : 1.0};
}

/* ---- elementwise losses: mse, l1, smooth_l1, huber, bce with logits ---------------------- */

typedef enum { LOSS_MSE, LOSS_BCE, LOSS_L1, LOSS_SMOOTH_L1, LOSS_HUBER } pointwise_kind;

/* The CUDA module numbers its kinds the same way (kn_cuda_reduce.h). */
_Static_assert((int)LOSS_MSE == (int)KN_CUDA_LOSS_MSE && (int)LOSS_BCE == (int)KN_CUDA_LOSS_BCE &&
                   (int)LOSS_L1 == (int)KN_CUDA_LOSS_L1 &&
                   (int)LOSS_SMOOTH_L1 == (int)KN_CUDA_LOSS_SMOOTH_L1 &&
                   (int)LOSS_HUBER == (int)KN_CUDA_LOSS_HUBER,
               "pointwise loss kinds");

typedef struct pointwise_ctx {
    pointwise_kind kind;
    float param;     /* smooth_l1: beta; huber: delta */
    const float *pw; /* bce: pos_weight, or NULL */
    int64_t pw_len;  /* pos_weight broadcasts over the last dim: element i uses pw[i % len] */
    const float *x, *t, *g;
    float *out, *dx, *dt;
    float scale;
} pointwise_ctx;

static inline float bce_pos_weight(const pointwise_ctx *c, int64_t i)
{
    return c->pw ? c->pw[i % c->pw_len] : 1.f;
}

/* log(1 + exp(-x)) = max(-x, 0) + log(1 + exp(-|x|)): never overflows. */
static inline float softplus_neg(float x)
{
    return (x < 0.f ? -x : 0.f) + log1p_unit(exp_fast(-fabsf(x)));
}

CLONES static void pointwise_forward_range(void *arg, int64_t begin, int64_t end)
{
    const pointwise_ctx *c = arg;
    const float *x = c->x, *t = c->t;
    float *out = c->out;
    const float p = c->param;
    switch (c->kind) {
    case LOSS_MSE:
        for (int64_t i = begin; i < end; i++) out[i] = (x[i] - t[i]) * (x[i] - t[i]);
        break;
    case LOSS_L1:
        for (int64_t i = begin; i < end; i++) out[i] = fabsf(x[i] - t[i]);
        break;
    case LOSS_SMOOTH_L1: /* beta 0 is l1 (the branch below is never taken) */
        for (int64_t i = begin; i < end; i++) {
            float z = fabsf(x[i] - t[i]);
            out[i] = z < p ? 0.5f * z * z / p : z - 0.5f * p;
        }
        break;
    case LOSS_HUBER:
        for (int64_t i = begin; i < end; i++) {
            float z = fabsf(x[i] - t[i]);
            out[i] = z < p ? 0.5f * z * z : p * (z - 0.5f * p);
        }
        break;
    case LOSS_BCE:
        if (!c->pw) {
            /* max(x, 0) - x*t + log(1 + exp(-|x|)): never overflows */
            for (int64_t i = begin; i < end; i++)
                out[i] =
                    (x[i] > 0.f ? x[i] : 0.f) - x[i] * t[i] + log1p_unit(exp_fast(-fabsf(x[i])));
        } else {
            /* torch: (1 - t) x + (1 + (pw - 1) t) log(1 + exp(-x)) */
            for (int64_t i = begin; i < end; i++) {
                float w = 1.f + (bce_pos_weight(c, i) - 1.f) * t[i];
                out[i] = (1.f - t[i]) * x[i] + w * softplus_neg(x[i]);
            }
        }
        break;
    }
}

/* Each loop comes in two versions, per-element upstream gradient g or one scalar: left
 * to the compiler, g ? g[i] : 1 becomes masked loads from a NULL g, which are slow. */
#define UPSTREAM_LOOP(expr)                                                                        \
    do {                                                                                           \
        if (g)                                                                                     \
            for (int64_t i = begin; i < end; i++) out[i] = (expr) * (g[i] * scale);                \
        else                                                                                       \
            for (int64_t i = begin; i < end; i++) out[i] = (expr)*scale;                           \
    } while (0)

static inline float sigmoid_fast(float x)
{
    return 1.f / (1.f + exp_fast(-x)); /* exp_fast saturates: never inf/inf */
}

/* torch's gradients: l1 is sign(d) (0 at 0); smooth_l1 and huber take the outer branch
 * from |d| = beta (delta) on, so smooth_l1 with beta 0 gives -1 at d = 0, as torch does. */
static inline float sign_of(float d)
{
    return (float)((d > 0.f) - (d < 0.f));
}
static inline float smooth_l1_grad(float d, float beta)
{
    return d <= -beta ? -1.f : d >= beta ? 1.f : d / beta;
}
static inline float huber_grad(float d, float delta)
{
    return d <= -delta ? -delta : d >= delta ? delta : d;
}

CLONES static void pointwise_backward_range(void *arg, int64_t begin, int64_t end)
{
    const pointwise_ctx *c = arg;
    const float *x = c->x, *t = c->t, *g = c->g;
    const float scale = c->scale, p = c->param;
    for (int side = 0; side < 2; side++) {
        float *out = side == 0 ? c->dx : c->dt;
        if (!out) continue;
        /* d loss / d t is the negation of d loss / d x, except for bce */
        const float s = side == 0 ? 1.f : -1.f;
        switch (c->kind) {
        case LOSS_MSE:
            UPSTREAM_LOOP(s * 2.f * (x[i] - t[i]));
            break;
        case LOSS_L1:
            UPSTREAM_LOOP(s * sign_of(x[i] - t[i]));
            break;
        case LOSS_SMOOTH_L1:
            UPSTREAM_LOOP(s * smooth_l1_grad(x[i] - t[i], p));
            break;
        case LOSS_HUBER:
            UPSTREAM_LOOP(s * huber_grad(x[i] - t[i], p));
            break;
        case LOSS_BCE:
            if (side == 0 && !c->pw) UPSTREAM_LOOP(sigmoid_fast(x[i]) - t[i]);
            if (side == 0 && c->pw)
                UPSTREAM_LOOP((1.f - t[i]) - (1.f + (bce_pos_weight(c, i) - 1.f) * t[i]) *
                                                 (1.f - sigmoid_fast(x[i])));
            if (side == 1 && !c->pw) UPSTREAM_LOOP(-x[i]);
            if (side == 1 && c->pw)
                UPSTREAM_LOOP(-x[i] + (bce_pos_weight(c, i) - 1.f) * softplus_neg(x[i]));
            break;
        }
    }
}

static kn_cuda_pointwise_loss_args cuda_pointwise_args(pointwise_kind kind, float param,
                                                       kn_tensor *pos_weight)
{
    return (kn_cuda_pointwise_loss_args){(kn_cuda_loss_kind)kind, param, f32(pos_weight),
                                         pos_weight ? kn_numel(pos_weight) : 0};
}

/* saved: input, target (contiguous), pos_weight (contiguous, bce only);
 * iargs: kind, reduction; fargs: param */
static kn_status pointwise_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *x = node->saved[0], *t = node->saved[1];
    kn_tensor *pw = node->n_saved > 2 ? node->saved[2] : NULL;
    pointwise_kind kind = (pointwise_kind)node->iargs[0];
    kn_reduction reduction = (kn_reduction)node->iargs[1];
    float param = (float)node->fargs[0];
    int64_t n = kn_numel(x);
    upstream u;
    if (!get_upstream(grad, reduction, (double)n, &u)) return kn_last_status();
    kn_tensor *dx =
        node->inputs[0].needs_grad ? kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device) : NULL;
    kn_tensor *dt =
        node->inputs[1].needs_grad ? kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device) : NULL;
    if ((node->inputs[0].needs_grad && !dx) || (node->inputs[1].needs_grad && !dt)) {
        kn_release(dx);
        kn_release(dt);
        kn_release(u.dense);
        return kn_last_status();
    }
    if (on_cuda(x)) {
        const kn_cuda_reduce *r = kn__cuda_reduce(x->device, node->name);
        kn_status status =
            r ? kn__cuda_error(r->pointwise_loss_backward(
                    x->device.index, cuda_pointwise_args(kind, param, pw), f32(x), f32(t), f32(dx),
                    f32(dt), n, cuda_upstream(grad, reduction, (double)n, &u)))
              : kn_last_status();
        kn_release(u.dense);
        grads[0] = kn__result(dx);
        grads[1] = kn__result(dt);
        return status;
    }
    pointwise_ctx c = {.kind = kind,
                       .param = param,
                       .pw = f32(pw),
                       .pw_len = pw ? kn_numel(pw) : 0,
                       .x = f32(x),
                       .t = f32(t),
                       .g = f32(u.dense),
                       .dx = f32(dx),
                       .dt = f32(dt),
                       .scale = u.scalar};
    kn_cpu_parallel_for(n, KN_CPU_GRAIN_ELEMENTWISE / 4, pointwise_backward_range, &c);
    kn_release(u.dense);
    grads[0] = kn__result(dx);
    grads[1] = kn__result(dt);
    return KN_OK;
}

/* pos_weight of bce: a float tensor of the input's device, 1-D with 1 or input.shape[-1]
 * elements (it broadcasts over the last dim, as torch's [C] does over [N, C]). */
static bool check_pos_weight(const char *name, const kn_tensor *input, const kn_tensor *pw)
{
    if (!kn__check_float(name, pw)) return false;
    int64_t last = input->ndim > 0 ? input->shape[input->ndim - 1] : 1;
    if (pw->ndim != 1 || (pw->shape[0] != 1 && pw->shape[0] != last)) {
        kn__error(KN_ERR_SHAPE,
                  "%s: pos_weight of shape %s does not broadcast over input %s (expected [%lld] "
                  "or [1])",
                  name, kn__shape(pw), kn__shape(input), (long long)last);
        return false;
    }
    if (pw->device.type != input->device.type || pw->device.index != input->device.index) {
        kn__error(KN_ERR_DEVICE, "%s: pos_weight is on another device than the input", name);
        return false;
    }
    return true;
}

static kn_tensor *pointwise_loss(const char *name, pointwise_kind kind, kn_tensor *input,
                                 kn_tensor *target, kn_reduction reduction, double param,
                                 kn_tensor *pos_weight)
{
    kn_tensor *inputs[2] = {input, target};
    if (!kn__check_inputs(name, inputs, 2) || !kn__check_float(name, input) ||
        !kn__check_float(name, target) || !check_reduction(name, reduction))
        return NULL;
    if (on_cuda(input) && !kn__cuda_reduce(input->device, name)) return NULL;
    if (!kn__same_shape(input, target))
        return kn__error_null(KN_ERR_SHAPE,
                              "%s: target of shape %s does not match input of shape %s", name,
                              kn__shape(target), kn__shape(input));
    if (pos_weight && !check_pos_weight(name, input, pos_weight)) return NULL;
    kn_tensor *x = kn__contiguous_raw(input), *t = kn__contiguous_raw(target);
    kn_tensor *pw = pos_weight ? kn__contiguous_raw(pos_weight) : NULL;
    kn_tensor *losses = kn__empty_raw(input->shape, input->ndim, KN_FLOAT32, input->device);
    if (!x || !t || !losses || (pos_weight && !pw)) {
        kn_release(x);
        kn_release(t);
        kn_release(pw);
        kn_release(losses);
        return NULL;
    }
    int64_t n = kn_numel(input);
    if (on_cuda(input)) {
        const kn_cuda_reduce *r = kn__cuda_reduce(input->device, name);
        kn_status status = r ? kn__cuda_error(r->pointwise_loss(
                                   input->device.index, cuda_pointwise_args(kind, (float)param, pw),
                                   f32(x), f32(t), f32(losses), n))
                             : kn_last_status();
        if (status != KN_OK) {
            kn_release(x);
            kn_release(t);
            kn_release(pw);
            kn_release(losses);
            return NULL;
        }
    } else {
        pointwise_ctx c = {.kind = kind,
                           .param = (float)param,
                           .pw = f32(pw),
                           .pw_len = pw ? kn_numel(pw) : 0,
                           .x = f32(x),
                           .t = f32(t),
                           .out = f32(losses)};
        kn_cpu_parallel_for(n, KN_CPU_GRAIN_ELEMENTWISE / 4, pointwise_forward_range, &c);
    }
    kn_tensor *out = reduce_losses(losses, reduction, (double)n);
    if (out && kn__needs_grad(inputs, 2)) {
        kn_node *node = kn__node_new(name, pointwise_backward, inputs, 2);
        if (!node) {
            kn_release(out);
            out = NULL;
        } else {
            kn__node_save(node, x);
            kn__node_save(node, t);
            if (pw) kn__node_save(node, pw);
            node->iargs[0] = kind;
            node->iargs[1] = reduction;
            node->fargs[0] = param;
            kn__node_attach(out, node);
        }
    }
    kn_release(x);
    kn_release(t);
    kn_release(pw);
    return kn__result(out);
}

kn_tensor *kn_mse_loss(kn_tensor *input, kn_tensor *target, kn_reduction reduction)
{
    return pointwise_loss("mse_loss", LOSS_MSE, input, target, reduction, 0, NULL);
}

kn_tensor *kn_l1_loss(kn_tensor *input, kn_tensor *target, kn_reduction reduction)
{
    return pointwise_loss("l1_loss", LOSS_L1, input, target, reduction, 0, NULL);
}

kn_tensor *kn_smooth_l1_loss(kn_tensor *input, kn_tensor *target, kn_reduction reduction,
                             double beta)
{
    if (!(beta >= 0) || !isfinite(beta))
        return kn__error_null(KN_ERR_VALUE,
                              "smooth_l1_loss: beta must be a finite number >= 0, got %g", beta);
    return pointwise_loss("smooth_l1_loss", LOSS_SMOOTH_L1, input, target, reduction, beta, NULL);
}

kn_tensor *kn_huber_loss(kn_tensor *input, kn_tensor *target, kn_reduction reduction, double delta)
{
    if (!(delta > 0) || !isfinite(delta))
        return kn__error_null(KN_ERR_VALUE, "huber_loss: delta must be a finite number > 0, got %g",
                              delta);
    return pointwise_loss("huber_loss", LOSS_HUBER, input, target, reduction, delta, NULL);
}

kn_tensor *kn_binary_cross_entropy_with_logits(kn_tensor *logits, kn_tensor *target,
                                               kn_reduction reduction)
{
    return kn_binary_cross_entropy_with_logits_pos_weight(logits, target, NULL, reduction);
}

kn_tensor *kn_binary_cross_entropy_with_logits_pos_weight(kn_tensor *logits, kn_tensor *target,
                                                          kn_tensor *pos_weight,
                                                          kn_reduction reduction)
{
    return pointwise_loss("binary_cross_entropy_with_logits", LOSS_BCE, logits, target, reduction,
                          0, pos_weight);
}

/* ---- class-index losses: cross entropy, nll ---------------------------------------------- */

/* Input [N, C, d...] (or [C] unbatched) viewed as [N, C, S]; target [N, d...] (or []). */
typedef struct class_dims {
    int64_t n, c, s;
    int64_t count;  /* targets that are not ignore_index */
    double divisor; /* of the mean: count, or with class weights the sum of w[target] */
} class_dims;

static bool bad_target(const char *op, int64_t value, int64_t c, int64_t ignore_index)
{
    kn__error(KN_ERR_VALUE,
              "%s: target %lld is out of bounds for %lld classes (expected 0..%lld or "
              "ignore_index %lld)",
              op, (long long)value, (long long)c, (long long)c - 1, (long long)ignore_index);
    return false;
}

/* The targets of a CUDA tensor checked on the device: the count and the first bad
 * position (and its value) come back. */
static bool check_cuda_targets(const char *op, kn_tensor *target, int64_t ignore_index,
                               class_dims *dims)
{
    /* Inside a CUDA graph capture the verdict cannot be read back (that waits for the
     * device): the capturing trainer checks every replay's labels on the host to be in
     * [0, C) (train_cuda.c), so none is ignore_index and the count is all of them. */
    if (kn__cuda_capturing()) {
        dims->count = kn_numel(target);
        dims->divisor = (double)dims->count;
        return true;
    }
    const kn_cuda_reduce *r = kn__cuda_reduce(target->device, op);
    if (!r) return false;
    int64_t two[1] = {2}, result[2] = {0, 0};
    kn_tensor *t = kn__contiguous_raw(target);
    kn_tensor *scratch = kn__empty_raw(two, 1, KN_INT64, target->device);
    int64_t n = kn_numel(target);
    kn_status status = t && scratch
                           ? kn__cuda_error(r->check_targets(target->device.index, i64(t), n,
                                                             dims->c, ignore_index, i64(scratch)))
                           : kn_last_status();
    if (status == KN_OK) status = kn__copy_to_host(scratch, 0, result, sizeof result);
    int64_t value = 0;
    if (status == KN_OK && result[1] < n)
        status = kn__copy_to_host(t, result[1], &value, sizeof value);
    kn_release(t);
    kn_release(scratch);
    if (status != KN_OK) return false;
    if (result[1] < n) return bad_target(op, value, dims->c, ignore_index);
    dims->count = result[0];
    dims->divisor = (double)dims->count;
    return true;
}

/* Class weights: a float tensor [C] on the input's device, never differentiated (torch
 * does not differentiate them either). */
static bool check_class_weight(const char *op, const kn_tensor *input, const kn_tensor *weight,
                               int64_t c)
{
    if (!kn__check_float(op, weight)) return false;
    if (weight->ndim != 1 || weight->shape[0] != c) {
        kn__error(KN_ERR_SHAPE,
                  "%s: weight of shape %s does not match the %lld classes of input %s (expected "
                  "[%lld])",
                  op, kn__shape(weight), (long long)c, kn__shape(input), (long long)c);
        return false;
    }
    if (weight->device.type != input->device.type || weight->device.index != input->device.index) {
        kn__error(KN_ERR_DEVICE, "%s: weight is on another device than the input", op);
        return false;
    }
    if (on_cuda(weight) && kn__cuda_capturing()) {
        kn__error(KN_ERR_VALUE,
                  "%s: class weights normalise the mean on the host, which a CUDA graph capture "
                  "cannot wait for",
                  op);
        return false;
    }
    return true;
}

/* With class weights, read on the host: the mean's divisor, the sum of weight[target] over
 * the counted targets (torch's weighted mean), and *total the sum of all the weights (the
 * label smoothing term's). w and t contiguous. */
static bool weight_sums(kn_tensor *w, kn_tensor *t, int64_t ignore_index, class_dims *dims,
                        double *total)
{
    int64_t c = kn_numel(w), n = kn_numel(t);
    float *wh = malloc(sizeof(float) * (size_t)(c > 0 ? c : 1));
    int64_t *th = on_cuda(t) ? malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1)) : NULL;
    if (!wh || (on_cuda(t) && !th)) {
        free(wh);
        free(th);
        kn__error(KN_ERR_MEMORY, "loss: out of memory");
        return false;
    }
    kn_status st = KN_OK;
    if (on_cuda(w)) {
        st = kn__copy_to_host(w, 0, wh, sizeof(float) * (size_t)c);
        if (st == KN_OK) st = kn__copy_to_host(t, 0, th, sizeof(int64_t) * (size_t)n);
    } else {
        memcpy(wh, f32(w), sizeof(float) * (size_t)c);
    }
    const int64_t *tv = th ? th : i64(t);
    double divisor = 0;
    for (int64_t i = 0; st == KN_OK && i < n; i++)
        if (tv[i] != ignore_index) divisor += wh[tv[i]]; /* checked in [0, c) already */
    *total = 0;
    for (int64_t j = 0; j < c; j++) *total += wh[j];
    free(wh);
    free(th);
    if (st != KN_OK) return false;
    dims->divisor = divisor;
    return true;
}

static bool check_class_target(const char *op, kn_tensor *input, kn_tensor *target,
                               int64_t ignore_index, class_dims *dims)
{
    if (!kn__check_float(op, input) || !kn__check_int64(op, target, "target")) return false;
    if (input->ndim < 1) {
        kn__error(KN_ERR_SHAPE, "%s: expected input of shape [N, C, ...] or [C], got %s", op,
                  kn__shape(input));
        return false;
    }
    int64_t want[KN_MAX_DIMS];
    int want_ndim = 0;
    if (input->ndim == 1) {
        *dims = (class_dims){1, input->shape[0], 1, 0, 0};
    } else {
        *dims = (class_dims){input->shape[0], input->shape[1], 1, 0, 0};
        want[want_ndim++] = input->shape[0];
        for (int d = 2; d < input->ndim; d++) {
            dims->s *= input->shape[d];
            want[want_ndim++] = input->shape[d];
        }
    }
    bool same = target->ndim == want_ndim;
    for (int d = 0; same && d < want_ndim; d++) same = target->shape[d] == want[d];
    if (!same) {
        kn__error(KN_ERR_SHAPE,
                  "%s: target of shape %s does not match input of shape %s (expected target "
                  "shape %s)",
                  op, kn__shape(target), kn__shape(input), kn__shape_of(want, want_ndim));
        return false;
    }
    if (on_cuda(target)) return check_cuda_targets(op, target, ignore_index, dims);
    const int64_t *t = i64(target);
    int64_t n = kn_numel(target);
    for (int64_t i = 0; i < n; i++) {
        if (t[i] == ignore_index) continue;
        if (t[i] < 0 || t[i] >= dims->c) return bad_target(op, t[i], dims->c, ignore_index);
        dims->count++;
    }
    dims->divisor = (double)dims->count;
    return true;
}

typedef struct ce_ctx {
    const float *x, *g;
    const int64_t *t;
    const float *w; /* class weights [c], or NULL */
    float *loss, *lse, *dx;
    int64_t c, s, ignore;
    float smoothing, scale;
    float w_total; /* the sum of w */
} ce_ctx;

/* With class weights (torch's formula): loss = (1 - eps) w[t] (lse - x[t]) + eps / C (W lse -
 * sum_j w[j] x[j]), W the sum of the weights. A plain loop: weights are the rare case. */
static void ce_forward_weighted(const ce_ctx *k, int64_t i)
{
    int64_t c = k->c, s = k->s, t = k->t[i];
    const float *x = k->x + (i / s) * c * s + i % s;
    float m = -INFINITY, sum = 0.f, sum_x = 0.f, sum_wx = 0.f;
    for (int64_t j = 0; j < c; j++) m = fmaxf(m, x[j * s]);
    for (int64_t j = 0; j < c; j++) {
        sum += exp_fast(x[j * s] - m);
        sum_x += x[j * s];
        sum_wx += k->w[j] * x[j * s];
    }
    float lse = isnan(sum_x) ? NAN : m + logf(sum);
    k->lse[i] = lse;
    if (t == k->ignore) {
        k->loss[i] = 0.f;
        return;
    }
    float nll = lse - x[t * s], smooth = k->w_total * lse - sum_wx;
    k->loss[i] = (1.f - k->smoothing) * k->w[t] * nll + k->smoothing / (float)c * smooth;
}

/* The row of position (n, s) of [N, C, S] starts at n*C*S + s with class stride S. */
CLONES static void ce_forward_range(void *arg, int64_t begin, int64_t end)
{
    const ce_ctx *k = arg;
    int64_t c = k->c, s = k->s;
    if (k->w) {
        for (int64_t i = begin; i < end; i++) ce_forward_weighted(k, i);
        return;
    }
    for (int64_t i = begin; i < end; i++) {
        int64_t t = k->t[i];
        const float *x = k->x + (i / s) * c * s + i % s;
        float m = -INFINITY, sum_x = 0.f;
        float lse;
        if (s == 1) {
            float acc_m[LANES], acc[LANES] = {0}, acc_x[LANES] = {0};
            for (int l = 0; l < LANES; l++) acc_m[l] = -INFINITY;
            int64_t j = 0;
            for (; j + LANES <= c; j += LANES)
                for (int l = 0; l < LANES; l++)
                    acc_m[l] = x[j + l] > acc_m[l] ? x[j + l] : acc_m[l];
            for (; j < c; j++) m = fmaxf(m, x[j]);
            for (int l = 0; l < LANES; l++) m = fmaxf(m, acc_m[l]);
            float sum = 0.f;
            for (j = 0; j + LANES <= c; j += LANES)
                for (int l = 0; l < LANES; l++) {
                    acc[l] += exp_fast(x[j + l] - m);
                    acc_x[l] += x[j + l];
                }
            for (; j < c; j++) {
                sum += exp_fast(x[j] - m);
                sum_x += x[j];
            }
            for (int l = 0; l < LANES; l++) {
                sum += acc[l];
                sum_x += acc_x[l];
            }
            lse = m + logf(sum);
        } else {
            for (int64_t j = 0; j < c; j++) m = fmaxf(m, x[j * s]);
            float sum = 0.f;
            for (int64_t j = 0; j < c; j++) {
                sum += exp_fast(x[j * s] - m);
                sum_x += x[j * s];
            }
            lse = m + logf(sum);
        }
        /* the max skips NaN: put it back so a NaN logit makes the loss NaN, as in PyTorch. */
        if (isnan(sum_x)) lse = NAN;
        k->lse[i] = lse;
        if (t == k->ignore) {
            k->loss[i] = 0.f;
            continue;
        }
        float nll = lse - x[t * s];
        float smooth = (float)c * lse - sum_x; /* sum over classes of -log p */
        k->loss[i] = (1.f - k->smoothing) * nll + k->smoothing / (float)c * smooth;
    }
}

/* With class weights: d loss_i / d x_j = p_j ((1 - eps) w[t] + eps W / C) - (1 - eps) w[t]
 * [j == t] - eps w[j] / C, times the upstream gradient. */
static void ce_backward_weighted(const ce_ctx *k, int64_t i)
{
    int64_t c = k->c, s = k->s, t = k->t[i];
    int64_t base = (i / s) * c * s + i % s;
    const float *x = k->x + base;
    float *dx = k->dx + base;
    if (t == k->ignore) {
        for (int64_t j = 0; j < c; j++) dx[j * s] = 0.f;
        return;
    }
    float off = k->smoothing / (float)c, on = 1.f - k->smoothing;
    float g = k->g ? k->g[i] * k->scale : k->scale, lse = k->lse[i];
    float scale = on * k->w[t] + off * k->w_total;
    for (int64_t j = 0; j < c; j++)
        dx[j * s] = (exp_fast(x[j * s] - lse) * scale - off * k->w[j]) * g;
    dx[t * s] -= on * k->w[t] * g;
}

/* d loss_i / d x_c = p_c - (1 - eps) [c == t] - eps / C, times the upstream gradient. */
CLONES static void ce_backward_range(void *arg, int64_t begin, int64_t end)
{
    const ce_ctx *k = arg;
    int64_t c = k->c, s = k->s;
    float off = k->smoothing / (float)c, on = 1.f - k->smoothing;
    if (k->w) {
        for (int64_t i = begin; i < end; i++) ce_backward_weighted(k, i);
        return;
    }
    for (int64_t i = begin; i < end; i++) {
        int64_t t = k->t[i];
        int64_t base = (i / s) * c * s + i % s;
        const float *x = k->x + base;
        float *dx = k->dx + base;
        if (t == k->ignore) {
            for (int64_t j = 0; j < c; j++) dx[j * s] = 0.f;
            continue;
        }
        float g = k->g ? k->g[i] * k->scale : k->scale, lse = k->lse[i];
        if (s == 1)
            for (int64_t j = 0; j < c; j++) dx[j] = (exp_fast(x[j] - lse) - off) * g;
        else
            for (int64_t j = 0; j < c; j++) dx[j * s] = (exp_fast(x[j * s] - lse) - off) * g;
        dx[t * s] -= on * g;
    }
}

static int64_t row_grain(int64_t c)
{
    int64_t g = KN_CPU_GRAIN_ELEMENTWISE / 8 / (c > 0 ? c : 1);
    return g > 0 ? g : 1;
}

/* saved: logits, target (contiguous), lse, weight (contiguous, when given); iargs: c, s,
 * ignore, reduction; fargs: label_smoothing, the mean's divisor, the weights' total */
static kn_status cross_entropy_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *x = node->saved[0], *target = node->saved[1], *lse = node->saved[2];
    kn_tensor *w = node->n_saved > 3 ? node->saved[3] : NULL;
    kn_reduction reduction = (kn_reduction)node->iargs[3];
    upstream u;
    if (!get_upstream(grad, reduction, node->fargs[1], &u)) return kn_last_status();
    kn_tensor *dx = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device);
    if (!dx) {
        kn_release(u.dense);
        return kn_last_status();
    }
    if (on_cuda(x)) {
        const kn_cuda_reduce *r = kn__cuda_reduce(x->device, node->name);
        kn_status status =
            r ? kn__cuda_error(r->cross_entropy_backward(
                    x->device.index, f32(x), i64(target), f32(w), (float)node->fargs[2], f32(lse),
                    f32(dx), kn_numel(target), node->iargs[0], node->iargs[1], node->iargs[2],
                    (float)node->fargs[0], cuda_upstream(grad, reduction, node->fargs[1], &u)))
              : kn_last_status();
        kn_release(u.dense);
        grads[0] = kn__result(dx);
        return status;
    }
    ce_ctx k = {.x = f32(x),
                .g = f32(u.dense),
                .t = i64(target),
                .w = f32(w),
                .lse = f32(lse),
                .dx = f32(dx),
                .c = node->iargs[0],
                .s = node->iargs[1],
                .ignore = node->iargs[2],
                .smoothing = (float)node->fargs[0],
                .scale = u.scalar,
                .w_total = (float)node->fargs[2]};
    kn_cpu_parallel_for(kn_numel(target), row_grain(k.c), ce_backward_range, &k);
    kn_release(u.dense);
    grads[0] = kn__result(dx);
    return KN_OK;
}

kn_tensor *kn_cross_entropy(kn_tensor *logits, kn_tensor *target, kn_reduction reduction,
                            int64_t ignore_index, double label_smoothing)
{
    return kn_cross_entropy_weighted(logits, target, NULL, reduction, ignore_index,
                                     label_smoothing);
}

kn_tensor *kn_cross_entropy_weighted(kn_tensor *logits, kn_tensor *target, kn_tensor *weight,
                                     kn_reduction reduction, int64_t ignore_index,
                                     double label_smoothing)
{
    kn_tensor *inputs[2] = {logits, target};
    class_dims dims;
    if (!kn__check_inputs("cross_entropy", inputs, 2) ||
        !check_reduction("cross_entropy", reduction) ||
        (on_cuda(logits) && !kn__cuda_reduce(logits->device, "cross_entropy")) ||
        !check_class_target("cross_entropy", logits, target, ignore_index, &dims) ||
        (weight && !check_class_weight("cross_entropy", logits, weight, dims.c)))
        return NULL;
    if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
        return kn__error_null(KN_ERR_VALUE,
                              "cross_entropy: label_smoothing must be between 0.0 and 1.0, got %g",
                              label_smoothing);
    kn_tensor *x = kn__contiguous_raw(logits), *t = kn__contiguous_raw(target);
    kn_tensor *w = weight ? kn__contiguous_raw(weight) : NULL;
    kn_tensor *losses = kn__empty_raw(target->shape, target->ndim, KN_FLOAT32, logits->device);
    kn_tensor *lse = kn__empty_raw(target->shape, target->ndim, KN_FLOAT32, logits->device);
    double w_total = (double)dims.c;
    bool ok = x && t && losses && lse && (!weight || w);
    if (ok && w) ok = weight_sums(w, t, ignore_index, &dims, &w_total);
    if (!ok) {
        kn_release(x);
        kn_release(t);
        kn_release(w);
        kn_release(losses);
        kn_release(lse);
        return NULL;
    }
    ce_ctx k = {.x = f32(x),
                .t = i64(t),
                .w = f32(w),
                .loss = f32(losses),
                .lse = f32(lse),
                .c = dims.c,
                .s = dims.s,
                .ignore = ignore_index,
                .smoothing = (float)label_smoothing,
                .w_total = (float)w_total};
    if (on_cuda(logits)) {
        const kn_cuda_reduce *r = kn__cuda_reduce(logits->device, "cross_entropy");
        kn_status status =
            r ? kn__cuda_error(r->cross_entropy(
                    logits->device.index, f32(x), i64(t), f32(w), (float)w_total, f32(losses),
                    f32(lse), kn_numel(t), dims.c, dims.s, ignore_index, (float)label_smoothing))
              : kn_last_status();
        if (status != KN_OK) {
            kn_release(x);
            kn_release(t);
            kn_release(w);
            kn_release(losses);
            kn_release(lse);
            return NULL;
        }
    } else if (dims.c > 0) {
        kn_cpu_parallel_for(kn_numel(t), row_grain(dims.c), ce_forward_range, &k);
    }
    kn_tensor *out = reduce_losses(losses, reduction, dims.divisor);
    if (out && kn__needs_grad(inputs, 2)) {
        kn_node *node = kn__node_new("cross_entropy", cross_entropy_backward, inputs, 2);
        if (!node) {
            kn_release(out);
            out = NULL;
        } else {
            node->inputs[1].needs_grad = false;
            kn__node_save(node, x);
            kn__node_save(node, t);
            kn__node_save(node, lse);
            if (w) kn__node_save(node, w);
            node->iargs[0] = dims.c;
            node->iargs[1] = dims.s;
            node->iargs[2] = ignore_index;
            node->iargs[3] = reduction;
            node->fargs[0] = label_smoothing;
            node->fargs[1] = dims.divisor;
            node->fargs[2] = w_total;
            kn__node_attach(out, node);
        }
    }
    kn_release(x);
    kn_release(t);
    kn_release(w);
    kn_release(lse);
    return kn__result(out);
}

/* saved: target (contiguous), weight (contiguous, when given); iargs: c, s, ignore,
 * reduction; fargs: the mean's divisor */
static kn_status nll_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *target = node->saved[0];
    kn_tensor *w = node->n_saved > 1 ? node->saved[1] : NULL;
    kn_node_input *in = &node->inputs[0];
    int64_t c = node->iargs[0], s = node->iargs[1], ignore = node->iargs[2];
    kn_reduction reduction = (kn_reduction)node->iargs[3];
    upstream u;
    if (!get_upstream(grad, reduction, node->fargs[0], &u)) return kn_last_status();
    kn_tensor *dx = kn__empty_raw(in->shape, in->ndim, KN_FLOAT32, grad->device);
    if (!dx) {
        kn_release(u.dense);
        return kn_last_status();
    }
    if (on_cuda(dx)) {
        const kn_cuda_reduce *r = kn__cuda_reduce(dx->device, node->name);
        kn_status status =
            r ? kn__cuda_error(r->nll_backward(dx->device.index, i64(target), f32(w), f32(dx),
                                               kn_numel(target), c, s, ignore,
                                               cuda_upstream(grad, reduction, node->fargs[0], &u)))
              : kn_last_status();
        kn_release(u.dense);
        grads[0] = kn__result(dx);
        return status;
    }
    float *d = f32(dx);
    const float *g = f32(u.dense), *wv = f32(w);
    const int64_t *t = i64(target);
    memset(d, 0, sizeof(float) * (size_t)kn_numel(dx));
    int64_t n = kn_numel(target);
    for (int64_t i = 0; i < n; i++) {
        if (t[i] == ignore) continue;
        float wt = wv ? wv[t[i]] : 1.f;
        d[(i / s) * c * s + i % s + t[i] * s] = -wt * (g ? g[i] * u.scalar : u.scalar);
    }
    kn_release(u.dense);
    grads[0] = kn__result(dx);
    return KN_OK;
}

kn_tensor *kn_nll_loss(kn_tensor *log_probs, kn_tensor *target, kn_reduction reduction,
                       int64_t ignore_index)
{
    return kn_nll_loss_weighted(log_probs, target, NULL, reduction, ignore_index);
}

kn_tensor *kn_nll_loss_weighted(kn_tensor *log_probs, kn_tensor *target, kn_tensor *weight,
                                kn_reduction reduction, int64_t ignore_index)
{
    kn_tensor *inputs[2] = {log_probs, target};
    class_dims dims;
    if (!kn__check_inputs("nll_loss", inputs, 2) || !check_reduction("nll_loss", reduction) ||
        (on_cuda(log_probs) && !kn__cuda_reduce(log_probs->device, "nll_loss")) ||
        !check_class_target("nll_loss", log_probs, target, ignore_index, &dims) ||
        (weight && !check_class_weight("nll_loss", log_probs, weight, dims.c)))
        return NULL;
    kn_tensor *t = kn__contiguous_raw(target);
    kn_tensor *w = weight ? kn__contiguous_raw(weight) : NULL;
    kn_tensor *losses = kn__empty_raw(target->shape, target->ndim, KN_FLOAT32, log_probs->device);
    bool ok = t && losses && (!weight || w);
    double w_total = 0;
    if (ok && w) ok = weight_sums(w, t, ignore_index, &dims, &w_total);
    if (!ok) {
        kn_release(t);
        kn_release(w);
        kn_release(losses);
        return NULL;
    }
    if (on_cuda(log_probs)) {
        const kn_cuda_reduce *r = kn__cuda_reduce(log_probs->device, "nll_loss");
        kn_tensor *lp = r ? kn__contiguous_raw(log_probs) : NULL;
        kn_status status =
            lp ? kn__cuda_error(r->nll(log_probs->device.index, f32(lp), i64(t), f32(w),
                                       f32(losses), kn_numel(t), dims.c, dims.s, ignore_index))
               : kn_last_status();
        kn_release(lp);
        if (status != KN_OK) {
            kn_release(t);
            kn_release(w);
            kn_release(losses);
            return NULL;
        }
    } else {
        const int64_t *tv = i64(t);
        const float *wv = f32(w);
        float *loss = f32(losses);
        const float *lp = kn__data_ptr(log_probs);
        int64_t n = kn_numel(t), s = dims.s;
        /* Strided reads: one element per position, no need to copy the whole input. */
        for (int64_t i = 0; i < n; i++) {
            if (tv[i] == ignore_index) {
                loss[i] = 0.f;
                continue;
            }
            int64_t offset;
            if (log_probs->ndim == 1) {
                offset = tv[i] * log_probs->strides[0];
            } else {
                int64_t rest = i % s;
                offset = (i / s) * log_probs->strides[0] + tv[i] * log_probs->strides[1];
                for (int d = log_probs->ndim - 1; d >= 2; d--) {
                    offset += (rest % log_probs->shape[d]) * log_probs->strides[d];
                    rest /= log_probs->shape[d];
                }
            }
            loss[i] = -(wv ? wv[tv[i]] : 1.f) * lp[offset];
        }
    }
    kn_tensor *out = reduce_losses(losses, reduction, dims.divisor);
    if (out && kn__needs_grad(inputs, 2)) {
        kn_node *node = kn__node_new("nll_loss", nll_backward, inputs, 2);
        if (!node) {
            kn_release(out);
            out = NULL;
        } else {
            node->inputs[1].needs_grad = false;
            kn__node_save(node, t);
            if (w) kn__node_save(node, w);
            node->iargs[0] = dims.c;
            node->iargs[1] = dims.s;
            node->iargs[2] = ignore_index;
            node->iargs[3] = reduction;
            node->fargs[0] = dims.divisor;
            kn__node_attach(out, node);
        }
    }
    kn_release(t);
    kn_release(w);
    return kn__result(out);
}

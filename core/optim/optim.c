/*
 * optim.c — the optimizers of kn_optim.h: options and their checks, lazily created
 * per-parameter state, the step (one fused loop per parameter, see kernels/cpu/optim.c) and
 * the state export / import used by checkpoints. Learning-rate schedules and gradient
 * clipping are in lr_schedule.c and clip_grad.c.
 *
 * The arithmetic follows torch.optim 1.13's single-tensor (foreach=False) code paths op
 * for op in float32, with every Python scalar rounded to float as torch's CPU kernels
 * do, so the same recipe gives the same parameters up to FMA contraction (~1 ulp).
 *
 * Parameters on a CUDA device keep their state on that device and step there, one fused
 * kernel per parameter with the same arithmetic (kernels/cuda/optim.cu). The state that
 * kn_optimizer_state hands out lives on the parameters' devices; loading accepts state
 * from any device and copies it to the parameter's.
 */
#include "kn_optim.h"
#include "kn_internal.h"
#include "kn_cuda.h"
#include "kn_cpu_optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-parameter state tensors, under torch's names. */
enum {
    SLOT_MOMENTUM_BUFFER,
    SLOT_EXP_AVG,
    SLOT_EXP_AVG_SQ,
    SLOT_MAX_EXP_AVG_SQ,
    SLOT_SQUARE_AVG,
    SLOT_GRAD_AVG,
    SLOT_COUNT
};
static const char *const slot_names[SLOT_COUNT] = {
    "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "grad_avg",
};

struct kn_optimizer {
    kn_optimizer_options o;
    int count;
    kn_tensor **params;       /* borrowed */
    kn_tensor **state;        /* count * SLOT_COUNT, owned, NULL until created */
    int64_t *steps;           /* per parameter: steps taken (torch's state['step']) */
    kn_tensor **step_tensors; /* count + 1 0-d int64 handed out by kn_optimizer_state */
    int64_t step_count;       /* kn_optimizer_step calls */
};

kn_optimizer_options kn_optimizer_defaults(kn_optimizer_kind kind)
{
    kn_optimizer_options o = {.kind = kind, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
    switch (kind) {
    case KN_OPTIM_SGD:
        o.lr = 0.01;
        break;
    case KN_OPTIM_ADAM:
        o.lr = 1e-3;
        break;
    case KN_OPTIM_ADAMW:
        o.lr = 1e-3, o.weight_decay = 0.01;
        break;
    case KN_OPTIM_RMSPROP:
        o.lr = 0.01, o.alpha = 0.99;
        break;
    }
    return o;
}

const char *kn_optimizer_kind_name(kn_optimizer_kind kind)
{
    switch (kind) {
    case KN_OPTIM_SGD:
        return "sgd";
    case KN_OPTIM_ADAM:
        return "adam";
    case KN_OPTIM_ADAMW:
        return "adamw";
    case KN_OPTIM_RMSPROP:
        return "rmsprop";
    }
    return "unknown";
}

static bool slot_used(const kn_optimizer_options *o, int slot)
{
    switch (o->kind) {
    case KN_OPTIM_SGD:
        return slot == SLOT_MOMENTUM_BUFFER && o->momentum != 0;
    case KN_OPTIM_ADAM:
    case KN_OPTIM_ADAMW:
        return slot == SLOT_EXP_AVG || slot == SLOT_EXP_AVG_SQ ||
               (slot == SLOT_MAX_EXP_AVG_SQ && o->amsgrad);
    case KN_OPTIM_RMSPROP:
        return slot == SLOT_SQUARE_AVG || (slot == SLOT_MOMENTUM_BUFFER && o->momentum > 0) ||
               (slot == SLOT_GRAD_AVG && o->centered);
    }
    return false;
}

/* torch keeps state['step'] per parameter for these (SGD has none). */
static bool has_param_steps(const kn_optimizer_options *o)
{
    return o->kind != KN_OPTIM_SGD;
}

/* ---- options ------------------------------------------------------------------------ */

static bool check_min(const char *opt, const char *field, double value, double min)
{
    if (value >= min && !isinf(value)) return true;
    kn__error(KN_ERR_VALUE, "%s: %s must be a finite number >= %g, got %g", opt, field, min, value);
    return false;
}

static bool check_beta(const char *opt, const char *field, double value)
{
    if (value >= 0 && value < 1) return true;
    kn__error(KN_ERR_VALUE, "%s: %s must be in [0, 1), got %g", opt, field, value);
    return false;
}

static bool check_options(const kn_optimizer_options *o)
{
    const char *name = kn_optimizer_kind_name(o->kind);
    if (!strcmp(name, "unknown")) {
        kn__error(KN_ERR_VALUE, "optimizer: unknown kind %d", (int)o->kind);
        return false;
    }
    if (!check_min(name, "lr", o->lr, 0) || !check_min(name, "weight_decay", o->weight_decay, 0))
        return false;
    if (o->weight_decay_params != KN_DECAY_ALL && o->weight_decay_params != KN_DECAY_MATRICES) {
        kn__error(KN_ERR_VALUE,
                  "%s: weight_decay_params must be KN_DECAY_ALL or KN_DECAY_MATRICES, got %d", name,
                  (int)o->weight_decay_params);
        return false;
    }
    switch (o->kind) {
    case KN_OPTIM_SGD:
        if (!check_min(name, "momentum", o->momentum, 0)) return false;
        if (!isfinite(o->dampening)) {
            kn__error(KN_ERR_VALUE, "sgd: dampening must be a finite number, got %g", o->dampening);
            return false;
        }
        if (o->nesterov && (o->momentum <= 0 || o->dampening != 0)) {
            kn__error(KN_ERR_VALUE,
                      "sgd: nesterov requires momentum > 0 and dampening 0, got momentum %g and "
                      "dampening %g",
                      o->momentum, o->dampening);
            return false;
        }
        return true;
    case KN_OPTIM_ADAM:
    case KN_OPTIM_ADAMW:
        return check_min(name, "eps", o->eps, 0) && check_beta(name, "beta1", o->beta1) &&
               check_beta(name, "beta2", o->beta2);
    case KN_OPTIM_RMSPROP:
        return check_min(name, "eps", o->eps, 0) && check_min(name, "momentum", o->momentum, 0) &&
               check_min(name, "alpha", o->alpha, 0);
    }
    return false;
}

/* ---- lifetime ----------------------------------------------------------------------- */

static bool check_param(kn_tensor *const *params, int i)
{
    kn_tensor *p = params[i];
    if (!p) {
        kn__error(KN_ERR_NULL, "optimizer: parameter %d is NULL", i);
        return false;
    }
    if (p->dtype != KN_FLOAT32 || !kn_device_available(p->device) || !kn_is_contiguous(p) ||
        !kn_is_leaf(p)) {
        char dev[32];
        kn__error(KN_ERR_VALUE,
                  "optimizer: parameter %d must be a contiguous float32 leaf tensor on an "
                  "available device, got a "
                  "%s%s%s %s tensor of shape %s",
                  i, kn_is_contiguous(p) ? "" : "non-contiguous ", kn_is_leaf(p) ? "" : "non-leaf ",
                  kn_dtype_name(p->dtype), kn_device_str(p->device, dev, sizeof dev), kn__shape(p));
        return false;
    }
    for (int j = 0; j < i; j++) {
        if (params[j] == p || (params[j]->storage == p->storage && kn_numel(p) > 0)) {
            kn__error(KN_ERR_VALUE, "optimizer: parameters %d and %d share storage", j, i);
            return false;
        }
    }
    return true;
}

kn_optimizer *kn_optimizer_new(kn_tensor *const *params, int count, kn_optimizer_options options)
{
    if (!check_options(&options)) return NULL;
    if (count <= 0 || !params)
        return kn__error_null(KN_ERR_VALUE, "%s: expected at least one parameter, got %d",
                              kn_optimizer_kind_name(options.kind), params ? count : 0);
    for (int i = 0; i < count; i++)
        if (!check_param(params, i)) return NULL;
    kn_optimizer *opt = calloc(1, sizeof *opt);
    if (opt) {
        opt->params = malloc(sizeof *opt->params * (size_t)count);
        opt->state = calloc((size_t)count * SLOT_COUNT, sizeof *opt->state);
        opt->steps = calloc((size_t)count, sizeof *opt->steps);
        opt->step_tensors = calloc((size_t)count + 1, sizeof *opt->step_tensors);
    }
    if (!opt || !opt->params || !opt->state || !opt->steps || !opt->step_tensors) {
        kn_optimizer_free(opt);
        return kn__error_null(KN_ERR_MEMORY, "optimizer: out of memory for %d parameters", count);
    }
    memcpy(opt->params, params, sizeof *opt->params * (size_t)count);
    opt->count = count;
    opt->o = options;
    return opt;
}

void kn_optimizer_free(kn_optimizer *opt)
{
    if (!opt) return;
    if (opt->state)
        for (int i = 0; i < opt->count * SLOT_COUNT; i++) kn_release(opt->state[i]);
    if (opt->step_tensors)
        for (int i = 0; i <= opt->count; i++) kn_release(opt->step_tensors[i]);
    free(opt->params);
    free(opt->state);
    free(opt->steps);
    free(opt->step_tensors);
    free(opt);
}

void kn_optimizer_zero_grad(kn_optimizer *opt)
{
    if (!opt) return;
    for (int i = 0; i < opt->count; i++) kn_zero_grad(opt->params[i]);
}

double kn_optimizer_get_lr(const kn_optimizer *opt)
{
    return opt ? opt->o.lr : NAN;
}

void kn_optimizer_set_lr(kn_optimizer *opt, double lr)
{
    if (opt) opt->o.lr = lr;
}

int64_t kn_optimizer_step_count(const kn_optimizer *opt)
{
    return opt ? opt->step_count : 0;
}

const kn_optimizer_options *kn_optimizer_options_of(const kn_optimizer *opt)
{
    return opt ? &opt->o : NULL;
}

/* ---- step --------------------------------------------------------------------------- */

/* The weight decay parameter p gets: nanoGPT's groups leave parameters of fewer than two
 * dimensions (biases, norm parameters) undecayed. */
static double decay_of(const kn_optimizer_options *o, const kn_tensor *p)
{
    return o->weight_decay_params == KN_DECAY_MATRICES && p->ndim < 2 ? 0.0 : o->weight_decay;
}

static kn_tensor *state_zeros(const kn_tensor *like)
{
    kn_tensor *t = kn__empty_raw(like->shape, like->ndim, KN_FLOAT32, like->device);
    if (!t) return NULL;
    if (t->device.type == KN_DEVICE_CPU) {
        memset(kn__data_ptr(t), 0, sizeof(float) * (size_t)kn_numel(t));
        return t;
    }
    float zero = 0.f;
    kn_cpu_operand o = {kn__data_ptr(t), {0}};
    for (int d = 0; d < t->ndim; d++) o.strides[d] = t->strides[d];
    if (kn__kernel_fill(t->device, t->shape, t->ndim, sizeof zero, o, &zero) != KN_OK) {
        kn_release(t);
        return NULL;
    }
    return t;
}

static float *slot_data(kn_optimizer *opt, int i, int slot)
{
    kn_tensor *t = opt->state[i * SLOT_COUNT + slot];
    return t ? kn__data_ptr(t) : NULL;
}

static kn_status check_grad(const kn_optimizer *opt, int i)
{
    kn_tensor *p = opt->params[i], *g = p->grad;
    if (!g) return KN_OK;
    if (g->dtype != KN_FLOAT32 || !kn_device_equal(g->device, p->device) || !kn__same_shape(p, g)) {
        char dev[32], gdev[32];
        return kn__error(KN_ERR_SHAPE,
                         "%s: the gradient of parameter %d must be a float32 tensor on %s of "
                         "shape %s, got %s on %s of shape %s",
                         kn_optimizer_kind_name(opt->o.kind), i,
                         kn_device_str(p->device, dev, sizeof dev), kn__shape(p),
                         kn_dtype_name(g->dtype), kn_device_str(g->device, gdev, sizeof gdev),
                         kn__shape(g));
    }
    if (p->device.type == KN_DEVICE_CUDA && !kn__cuda_train(p->device, "optimizer_step"))
        return kn_last_status();
    return KN_OK;
}

kn_status kn_optimizer_step(kn_optimizer *opt)
{
    if (!opt) return kn__error(KN_ERR_NULL, "optimizer_step: optimizer is NULL");
    const kn_optimizer_options *o = &opt->o;
    /* Check every gradient and create every missing state tensor before changing anything,
     * so a failure leaves parameters and state as they were. */
    for (int i = 0; i < opt->count; i++) {
        kn_status s = check_grad(opt, i);
        if (s != KN_OK) return s;
        if (!opt->params[i]->grad) continue;
        for (int slot = 0; slot < SLOT_COUNT; slot++) {
            kn_tensor **t = &opt->state[i * SLOT_COUNT + slot];
            if (!slot_used(o, slot) || *t) continue;
            /* SGD's buffer is a copy of the first update, made by the kernel */
            if (!(*t = state_zeros(opt->params[i]))) return kn_last_status();
        }
    }
    opt->step_count++;
    for (int i = 0; i < opt->count; i++) {
        kn_tensor *p = opt->params[i];
        if (!p->grad) continue;
        kn_tensor *g = kn__contiguous_raw(p->grad);
        if (!g) return kn_last_status();
        const kn_cuda_train *cuda = NULL;
        kn_status status = KN_OK;
        if (p->device.type == KN_DEVICE_CUDA && !(cuda = kn__cuda_train(p->device, "step"))) {
            kn_release(g);
            return kn_last_status();
        }
        int64_t step = ++opt->steps[i];
        kn_cpu_optim_args a = {
            .param = kn__data_ptr(p),
            .grad = kn__data_ptr(g),
            .lr = o->lr,
            .weight_decay = decay_of(o, p),
            .momentum = o->momentum,
        };
        switch (o->kind) {
        case KN_OPTIM_SGD:
            a.buf = slot_data(opt, i, SLOT_MOMENTUM_BUFFER);
            a.first = step == 1;
            a.dampening = o->dampening;
            a.nesterov = o->nesterov;
            if (cuda)
                status = kn__cuda_error(cuda->optim_sgd(p->device.index, &a, kn_numel(p)));
            else
                kn_cpu_optim_sgd(&a, kn_numel(p));
            break;
        case KN_OPTIM_ADAM:
        case KN_OPTIM_ADAMW:
            a.exp_avg = slot_data(opt, i, SLOT_EXP_AVG);
            a.exp_avg_sq = slot_data(opt, i, SLOT_EXP_AVG_SQ);
            a.max_exp_avg_sq = slot_data(opt, i, SLOT_MAX_EXP_AVG_SQ);
            a.beta1 = o->beta1;
            a.beta2 = o->beta2;
            a.eps = o->eps;
            a.step = step;
            a.decoupled = o->kind == KN_OPTIM_ADAMW;
            if (cuda)
                status = kn__cuda_error(cuda->optim_adam(p->device.index, &a, kn_numel(p)));
            else
                kn_cpu_optim_adam(&a, kn_numel(p));
            break;
        case KN_OPTIM_RMSPROP:
            a.square_avg = slot_data(opt, i, SLOT_SQUARE_AVG);
            a.grad_avg = slot_data(opt, i, SLOT_GRAD_AVG);
            a.buf = slot_data(opt, i, SLOT_MOMENTUM_BUFFER);
            a.alpha = o->alpha;
            a.eps = o->eps;
            if (cuda)
                status = kn__cuda_error(cuda->optim_rmsprop(p->device.index, &a, kn_numel(p)));
            else
                kn_cpu_optim_rmsprop(&a, kn_numel(p));
            break;
        }
        kn_release(g);
        if (status != KN_OK) return status; /* a CUDA launch failed: the device is in trouble */
    }
    return KN_OK;
}

/* ---- state for checkpoints ------------------------------------------------------------ */

/* The 0-d int64 tensor slot k of step_tensors, holding value. */
static kn_tensor *step_tensor(kn_optimizer *opt, int k, int64_t value)
{
    kn_tensor **t = &opt->step_tensors[k];
    if (!*t && !(*t = kn__empty_raw((const int64_t[]){1}, 0, KN_INT64, kn_cpu()))) return NULL;
    *(int64_t *)kn__data_ptr(*t) = value;
    return *t;
}

kn_optimizer_state_entry *kn_optimizer_state(kn_optimizer *opt, int *count)
{
    if (count) *count = 0;
    if (!opt || !count) return kn__error_null(KN_ERR_NULL, "optimizer_state: NULL argument");
    int max = 1 + opt->count * (SLOT_COUNT + 1);
    kn_optimizer_state_entry *e = calloc((size_t)max, sizeof *e);
    if (!e) return kn__error_null(KN_ERR_MEMORY, "optimizer_state: out of memory");
    int n = 0;
    snprintf(e[n].name, sizeof e[n].name, "step");
    if (!(e[n++].tensor = step_tensor(opt, opt->count, opt->step_count))) goto fail;
    for (int i = 0; i < opt->count; i++) {
        if (has_param_steps(&opt->o) && opt->steps[i] > 0) {
            snprintf(e[n].name, sizeof e[n].name, "step.%d", i);
            if (!(e[n++].tensor = step_tensor(opt, i, opt->steps[i]))) goto fail;
        }
        for (int slot = 0; slot < SLOT_COUNT; slot++) {
            kn_tensor *t = opt->state[i * SLOT_COUNT + slot];
            if (!t) continue;
            snprintf(e[n].name, sizeof e[n].name, "%s.%d", slot_names[slot], i);
            e[n++].tensor = t;
        }
    }
    *count = n;
    return e;
fail:
    free(e);
    return NULL;
}

/* A non-negative integral step count from a one-element int64 or float32 tensor. */
static bool read_step(const kn_optimizer_state_entry *e, int64_t *out)
{
    const kn_tensor *t = e->tensor;
    if (t && kn_numel(t) == 1 && t->device.type == KN_DEVICE_CPU) {
        double v = t->dtype == KN_INT64 ? (double)kn_item_i64(t) : (double)kn_item(t);
        if (v >= 0 && v == floor(v) && v < 9.0e18) {
            *out = (int64_t)v;
            return true;
        }
    }
    kn__error(KN_ERR_VALUE,
              "optimizer state: %s must be a one-element tensor holding a "
              "non-negative integer",
              e->name);
    return false;
}

/* Splits "name.index" into a slot (or -1 for "step") and a parameter index. */
static bool parse_entry(const kn_optimizer *opt, const char *name, int *slot, int *index)
{
    const char *dot = strrchr(name, '.');
    if (!dot || !dot[1]) return false;
    char *end;
    long i = strtol(dot + 1, &end, 10);
    if (*end || i < 0 || i >= opt->count || dot[1] == '-' || dot[1] == '+') return false;
    size_t len = (size_t)(dot - name);
    *index = (int)i;
    if (len == 4 && !strncmp(name, "step", 4) && has_param_steps(&opt->o)) {
        *slot = -1;
        return true;
    }
    for (int s = 0; s < SLOT_COUNT; s++) {
        if (slot_used(&opt->o, s) && strlen(slot_names[s]) == len &&
            !strncmp(name, slot_names[s], len)) {
            *slot = s;
            return true;
        }
    }
    return false;
}

kn_status kn_optimizer_load_state(kn_optimizer *opt, const kn_optimizer_state_entry *entries,
                                  int count)
{
    if (!opt || (count > 0 && !entries))
        return kn__error(KN_ERR_NULL, "optimizer_load_state: NULL argument");
    const char *kind = kn_optimizer_kind_name(opt->o.kind);
    int n = opt->count;
    /* Validate everything into `found` first: a failed load changes nothing. */
    const kn_optimizer_state_entry **found = calloc((size_t)n * SLOT_COUNT, sizeof *found);
    int64_t *steps = calloc((size_t)n, sizeof *steps);
    bool *has_step = calloc((size_t)n, sizeof *has_step);
    kn_tensor **fresh = calloc((size_t)n * SLOT_COUNT, sizeof *fresh);
    int64_t global = 0;
    kn_status status = KN_OK;
    if (!found || !steps || !has_step || !fresh) {
        status = kn__error(KN_ERR_MEMORY, "optimizer_load_state: out of memory");
        goto done;
    }
    for (int k = 0; k < count; k++) {
        const kn_optimizer_state_entry *e = &entries[k];
        int slot, i;
        if (!strcmp(e->name, "step")) {
            if (!read_step(e, &global)) goto fail;
            continue;
        }
        if (!parse_entry(opt, e->name, &slot, &i)) {
            status = kn__error(KN_ERR_VALUE,
                               "optimizer state: unexpected entry '%s' for %s with "
                               "%d parameters and these options",
                               e->name, kind, n);
            goto done;
        }
        if (slot < 0) {
            if (!read_step(e, &steps[i])) goto fail;
            has_step[i] = true;
            continue;
        }
        kn_tensor *t = e->tensor, *p = opt->params[i];
        if (!t || t->dtype != KN_FLOAT32 || !kn__same_shape(t, p)) {
            status = kn__error(KN_ERR_SHAPE,
                               "optimizer state: %s must be a float32 tensor of "
                               "shape %s like parameter %d, got %s of shape %s",
                               e->name, kn__shape(p), i, t ? kn_dtype_name(t->dtype) : "NULL",
                               t ? kn__shape(t) : "?");
            goto done;
        }
        found[i * SLOT_COUNT + slot] = e;
    }
    /* Each parameter has either all of its state or none of it. */
    for (int i = 0; i < n; i++) {
        int present = 0, used = 0, missing = -1;
        for (int slot = 0; slot < SLOT_COUNT; slot++) {
            if (!slot_used(&opt->o, slot)) continue;
            used++;
            if (found[i * SLOT_COUNT + slot])
                present++;
            else if (missing < 0)
                missing = slot;
        }
        bool want_step = has_param_steps(&opt->o) && present > 0;
        if ((present > 0 && present < used) || (want_step && !has_step[i]) ||
            (has_step[i] && steps[i] > 0 && present == 0)) {
            status = kn__error(KN_ERR_VALUE,
                               "optimizer state: parameter %d has incomplete %s "
                               "state: missing %s.%d",
                               i, kind, missing >= 0 ? slot_names[missing] : "step", i);
            goto done;
        }
        if (has_step[i] && steps[i] == 0 && present > 0) {
            status = kn__error(KN_ERR_VALUE,
                               "optimizer state: step.%d is 0 but parameter %d has "
                               "state",
                               i, i);
            goto done;
        }
        if (!has_param_steps(&opt->o)) steps[i] = present > 0 ? 1 : 0;
    }
    for (int k = 0; k < n * SLOT_COUNT; k++) {
        if (!found[k]) continue;
        /* kn_copy_ moves state saved on another device to the parameter's */
        if (!(fresh[k] = state_zeros(opt->params[k / SLOT_COUNT])) ||
            kn_copy_(fresh[k], found[k]->tensor) != KN_OK)
            goto fail;
    }
    for (int k = 0; k < n * SLOT_COUNT; k++) {
        kn_release(opt->state[k]);
        opt->state[k] = fresh[k];
        fresh[k] = NULL;
    }
    memcpy(opt->steps, steps, sizeof *steps * (size_t)n);
    opt->step_count = global;
    goto done;
fail:
    status = kn_last_status() ? kn_last_status() : KN_ERR_VALUE;
done:
    if (fresh)
        for (int k = 0; k < n * SLOT_COUNT; k++) kn_release(fresh[k]);
    free(found);
    free(steps);
    free(has_step);
    free(fresh);
    return status;
}

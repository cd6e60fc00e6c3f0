/*
 * kn_optim.h — optimizers with torch.optim's semantics and defaults (SGD, Adam, AdamW,
 * RMSprop), learning-rate schedules and gradient clipping by global norm.
 *
 * Ownership: an optimizer borrows the parameter tensors it is given (they must outlive
 * it; a module's parameters do) and owns its state tensors; free it with
 * kn_optimizer_free. Steps run under no-grad and change parameters in place.
 */
#ifndef KN_OPTIM_H
#define KN_OPTIM_H

#include "kn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KN_OPTIM_SGD,
    KN_OPTIM_ADAM,
    KN_OPTIM_ADAMW,
    KN_OPTIM_RMSPROP,
} kn_optimizer_kind;

/* Which parameters weight_decay applies to. KN_DECAY_MATRICES is nanoGPT's two
 * parameter groups (configure_optimizers: decay where p.dim() >= 2, none elsewhere):
 * weights and embeddings decay; biases, normalisation weights and biases (1-D) and 0-d
 * parameters do not. torch's equivalent is two param_groups with weight_decay wd and 0. */
typedef enum {
    KN_DECAY_ALL,      /* every parameter (torch's single param group; the default) */
    KN_DECAY_MATRICES, /* only parameters of 2 or more dimensions */
} kn_weight_decay_params;

/* Every field an optimizer reads; kn_optimizer_defaults fills PyTorch's defaults for
 * the kind (SGD lr has no default in torch: 0.01 here; Adam 1e-3, betas (0.9, 0.999),
 * eps 1e-8; AdamW the same with weight_decay 0.01; RMSprop lr 0.01, alpha 0.99,
 * eps 1e-8). Fields a kind does not read are ignored.
 *
 * The updates are torch 1.13's single-tensor ones, per parameter p with gradient g:
 *   SGD:     g += wd p; if momentum: buf = g on the first step, else
 *            buf = momentum buf + (1 - dampening) g; g = nesterov ? g + momentum buf : buf;
 *            p -= lr g
 *   Adam:    g += wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; (amsgrad: vmax =
 *            max(vmax, v), used for v); p -= lr / (1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 *   AdamW:   p *= 1 - lr wd first, then Adam without the g += wd p
 *   RMSprop: g += wd p; s = alpha s + (1-alpha) g^2; centered: a = alpha a + (1-alpha) g,
 *            avg = sqrt(s - a^2) + eps, else sqrt(s) + eps; momentum > 0: buf = momentum buf
 *            + g / avg, p -= lr buf; else p -= lr g / avg
 * t is the parameter's own step count (a parameter without .grad at a step does not
 * advance it, as in torch). State tensors are created on a parameter's first step.
 * wd is weight_decay for the parameters weight_decay_params selects and 0 for the others
 * (the decay terms then vanish exactly, as in torch's param group without decay). */
typedef struct kn_optimizer_options {
    kn_optimizer_kind kind;
    double lr;
    double momentum;     /* SGD, RMSprop */
    double dampening;    /* SGD */
    bool nesterov;       /* SGD */
    double weight_decay; /* all; AdamW decoupled */
    /* which parameters weight_decay applies to (KN_DECAY_ALL, 0, by default) */
    kn_weight_decay_params weight_decay_params;
    double beta1, beta2; /* Adam, AdamW */
    double eps;          /* Adam, AdamW, RMSprop */
    bool amsgrad;        /* Adam, AdamW */
    double alpha;        /* RMSprop smoothing */
    bool centered;       /* RMSprop */
} kn_optimizer_options;

kn_optimizer_options kn_optimizer_defaults(kn_optimizer_kind kind);
const char *kn_optimizer_kind_name(kn_optimizer_kind kind); /* "sgd", "adam", ... */

typedef struct kn_optimizer kn_optimizer;

/* NULL with an error naming the field on invalid options (negative lr, betas outside
 * [0, 1), nesterov without momentum, ...), e.g. "adam: lr must be a finite number >= 0,
 * got -1". Parameters must be distinct contiguous float32 CPU leaf tensors. */
kn_optimizer *kn_optimizer_new(kn_tensor *const *params, int count, kn_optimizer_options options);
void kn_optimizer_free(kn_optimizer *opt);
kn_status kn_optimizer_step(kn_optimizer *opt); /* skips parameters without .grad */
void kn_optimizer_zero_grad(kn_optimizer *opt); /* set_to_none, as torch 2.x */
double kn_optimizer_get_lr(const kn_optimizer *opt);
void kn_optimizer_set_lr(kn_optimizer *opt, double lr);
int64_t kn_optimizer_step_count(const kn_optimizer *opt);
/* The options in use (lr as last set); borrowed, NULL for a NULL optimizer. */
const kn_optimizer_options *kn_optimizer_options_of(const kn_optimizer *opt);

/* State for checkpoints: named tensors such as "exp_avg.3" (state of parameter 3) and
 * "step". The array is malloc'd (caller frees with free()); tensors are borrowed and
 * entries for state not created yet are absent.
 *   "step"                 0-d int64: kn_optimizer_step calls so far
 *   "step.<i>"             0-d int64: parameter i's own step count (Adam, AdamW, RMSprop,
 *                          as torch's state['step']; present once the parameter has state)
 *   "<name>.<i>"           float32, the parameter's shape; name is torch's: momentum_buffer
 *                          (SGD with momentum, RMSprop with momentum), exp_avg, exp_avg_sq,
 *                          max_exp_avg_sq (amsgrad), square_avg, grad_avg (centered)
 * The step tensors are owned by the optimizer and hold the values as of this call. */
typedef struct kn_optimizer_state_entry {
    char name[64];
    kn_tensor *tensor;
} kn_optimizer_state_entry;
kn_optimizer_state_entry *kn_optimizer_state(kn_optimizer *opt, int *count);
/* Restores state saved by kn_optimizer_state (same parameters in the same order, same
 * kind and options), replacing all current state; values are copied. Step entries may be
 * int64 or float32. Errors name the entry and shapes (an unknown entry, a wrong shape, a
 * parameter with only part of its state); on error nothing changes. */
kn_status kn_optimizer_load_state(kn_optimizer *opt, const kn_optimizer_state_entry *entries,
                                  int count);

/* ---- learning-rate schedules ------------------------------------------------------ */
/* With s = step - warmup_steps (s = step when there is no warmup):
 *   step < warmup_steps: lr * (f + (1 - f) * step / warmup_steps), f = warmup_start_factor
 *                        (torch's LinearLR(start_factor=f, end_factor=1, total_iters=W))
 *   constant: lr
 *   step:     lr * gamma^floor(s / step_size)                       (StepLR)
 *   cosine:   eta_min + (lr - eta_min) (1 + cos(pi s / t_max)) / 2  (CosineAnnealingLR's
 *             closed form; past t_max it rises again, as torch's does)
 * which is SequentialLR([LinearLR, main], milestones=[warmup_steps]): the main schedule
 * starts from its step 0 when warmup ends. */
typedef enum {
    KN_LR_CONSTANT,
    KN_LR_STEP,   /* lr * gamma^(floor(step / step_size)) */
    KN_LR_COSINE, /* eta_min + (lr - eta_min) (1 + cos(pi step / t_max)) / 2 */
} kn_lr_schedule_kind;

typedef struct kn_lr_schedule {
    kn_lr_schedule_kind kind;
    int64_t step_size;    /* step */
    double gamma;         /* step */
    int64_t t_max;        /* cosine, in steps */
    double eta_min;       /* cosine */
    int64_t warmup_steps; /* linear warmup from warmup_start_factor * lr, before the rest */
    double warmup_start_factor;
} kn_lr_schedule;

/* torch's defaults: gamma 0.1, eta_min 0, warmup_start_factor 1/3, no warmup; step_size
 * and t_max (required in torch) 1. */
kn_lr_schedule kn_lr_schedule_defaults(kn_lr_schedule_kind kind);
/* KN_OK, or an error naming the field (step_size/t_max <= 0, gamma < 0, eta_min < 0,
 * warmup_steps < 0, warmup_start_factor outside (0, 1] when warming up). */
kn_status kn_lr_schedule_check(const kn_lr_schedule *schedule);
/* The learning rate for optimizer step `step` (0-based) given the base rate: the value
 * torch's scheduler gives after `step` calls of scheduler.step(). An invalid schedule's
 * unusable part (step_size or t_max <= 0) leaves base_lr. */
double kn_lr_at(const kn_lr_schedule *schedule, double base_lr, int64_t step);

/* ---- gradient clipping ------------------------------------------------------------ */
/* Scales all .grad so their global L2 norm is at most max_norm (torch's
 * clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when below 1; parameters
 * without .grad are skipped). *total_norm (may be NULL) gets the norm before clipping
 * (float32 precision), which is NaN or inf when a gradient is not finite; the gradients
 * are then scaled by 0 or NaN, as torch does. */
kn_status kn_clip_grad_norm(kn_tensor *const *params, int count, double max_norm,
                            double *total_norm);
/* True when every .grad of params is finite. */
bool kn_grads_finite(kn_tensor *const *params, int count);

#ifdef __cplusplus
}
#endif
#endif

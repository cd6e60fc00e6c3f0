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

/* Every field an optimizer reads; kn_optimizer_defaults fills PyTorch's defaults for
 * the kind (SGD lr has no default in torch: 0.01 here; Adam 1e-3, betas (0.9, 0.999),
 * eps 1e-8; AdamW the same with weight_decay 0.01; RMSprop lr 0.01, alpha 0.99,
 * eps 1e-8). */
typedef struct kn_optimizer_options {
    kn_optimizer_kind kind;
    double lr;
    double momentum;     /* SGD, RMSprop */
    double dampening;    /* SGD */
    bool nesterov;       /* SGD */
    double weight_decay; /* all; AdamW decoupled */
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
 * [0, 1), nesterov without momentum, ...). */
kn_optimizer *kn_optimizer_new(kn_tensor *const *params, int count, kn_optimizer_options options);
void kn_optimizer_free(kn_optimizer *opt);
kn_status kn_optimizer_step(kn_optimizer *opt); /* skips parameters without .grad */
void kn_optimizer_zero_grad(kn_optimizer *opt);  /* set_to_none, as torch 2.x */
double kn_optimizer_get_lr(const kn_optimizer *opt);
void kn_optimizer_set_lr(kn_optimizer *opt, double lr);
int64_t kn_optimizer_step_count(const kn_optimizer *opt);

/* State for checkpoints: named tensors such as "exp_avg.3" (state of parameter 3) and
 * "step". The array is malloc'd (caller frees with free()); tensors are borrowed and
 * entries for state not created yet are absent. */
typedef struct kn_optimizer_state_entry {
    char name[64];
    kn_tensor *tensor;
} kn_optimizer_state_entry;
kn_optimizer_state_entry *kn_optimizer_state(kn_optimizer *opt, int *count);
/* Restores state saved by kn_optimizer_state (same parameters in the same order);
 * errors name the entry and shapes. */
kn_status kn_optimizer_load_state(kn_optimizer *opt, const kn_optimizer_state_entry *entries,
                                  int count);

/* ---- learning-rate schedules ------------------------------------------------------ */
typedef enum {
    KN_LR_CONSTANT,
    KN_LR_STEP,   /* lr * gamma^(floor(step / step_size)) */
    KN_LR_COSINE, /* eta_min + (lr - eta_min) (1 + cos(pi step / t_max)) / 2 */
} kn_lr_schedule_kind;

typedef struct kn_lr_schedule {
    kn_lr_schedule_kind kind;
    int64_t step_size; /* step */
    double gamma;      /* step */
    int64_t t_max;     /* cosine, in steps */
    double eta_min;    /* cosine */
    int64_t warmup_steps; /* linear warmup from warmup_start_factor * lr, before the rest */
    double warmup_start_factor;
} kn_lr_schedule;

/* The learning rate for optimizer step `step` (0-based) given the base rate. */
double kn_lr_at(const kn_lr_schedule *schedule, double base_lr, int64_t step);

/* ---- gradient clipping ------------------------------------------------------------ */
/* Scales all .grad so their global L2 norm is at most max_norm (torch's
 * clip_grad_norm_). *total_norm (may be NULL) gets the norm before clipping, which is
 * NaN or inf when a gradient is not finite. */
kn_status kn_clip_grad_norm(kn_tensor *const *params, int count, double max_norm,
                            double *total_norm);
/* True when every .grad of params is finite. */
bool kn_grads_finite(kn_tensor *const *params, int count);

#ifdef __cplusplus
}
#endif
#endif

/*
 * lr_schedule.c — learning-rate schedules as closed forms of torch's LinearLR (warmup),
 * StepLR and CosineAnnealingLR, chained like SequentialLR([LinearLR, main],
 * milestones=[warmup_steps]). A pure function of the step, so a resumed run needs no
 * scheduler state.
 */
#include "kn_optim.h"
#include "kn_internal.h"

#include <math.h>

kn_lr_schedule kn_lr_schedule_defaults(kn_lr_schedule_kind kind)
{
    /* torch: StepLR gamma 0.1, CosineAnnealingLR eta_min 0, LinearLR start_factor 1/3 */
    return (kn_lr_schedule){.kind = kind,
                            .step_size = 1,
                            .gamma = 0.1,
                            .t_max = 1,
                            .eta_min = 0,
                            .warmup_steps = 0,
                            .warmup_start_factor = 1.0 / 3.0};
}

kn_status kn_lr_schedule_check(const kn_lr_schedule *s)
{
    if (!s) return kn__error(KN_ERR_NULL, "lr_schedule: NULL schedule");
    switch (s->kind) {
    case KN_LR_CONSTANT:
        break;
    case KN_LR_STEP:
        if (s->step_size <= 0)
            return kn__error(KN_ERR_VALUE,
                             "lr_schedule: step_size must be a positive integer, "
                             "got %lld",
                             (long long)s->step_size);
        if (!(s->gamma >= 0) || isinf(s->gamma))
            return kn__error(KN_ERR_VALUE,
                             "lr_schedule: gamma must be a finite number >= 0, "
                             "got %g",
                             s->gamma);
        break;
    case KN_LR_COSINE:
        if (s->t_max <= 0)
            return kn__error(KN_ERR_VALUE,
                             "lr_schedule: t_max must be a positive integer, "
                             "got %lld",
                             (long long)s->t_max);
        if (!isfinite(s->eta_min) || s->eta_min < 0)
            return kn__error(KN_ERR_VALUE,
                             "lr_schedule: eta_min must be a finite number >= 0, "
                             "got %g",
                             s->eta_min);
        break;
    default:
        return kn__error(KN_ERR_VALUE, "lr_schedule: unknown kind %d", (int)s->kind);
    }
    if (s->warmup_steps < 0)
        return kn__error(KN_ERR_VALUE, "lr_schedule: warmup_steps must be >= 0, got %lld",
                         (long long)s->warmup_steps);
    if (s->warmup_steps > 0 && !(s->warmup_start_factor > 0 && s->warmup_start_factor <= 1))
        return kn__error(KN_ERR_VALUE, "lr_schedule: warmup_start_factor must be in (0, 1], got %g",
                         s->warmup_start_factor);
    return KN_OK;
}

double kn_lr_at(const kn_lr_schedule *s, double base_lr, int64_t step)
{
    if (!s || step < 0) return base_lr;
    if (step < s->warmup_steps) {
        /* LinearLR(start_factor, end_factor=1, total_iters=warmup_steps) */
        double f = s->warmup_start_factor;
        return base_lr * (f + (1.0 - f) * (double)step / (double)s->warmup_steps);
    }
    if (s->warmup_steps > 0) step -= s->warmup_steps;
    switch (s->kind) {
    case KN_LR_STEP:
        if (s->step_size <= 0) return base_lr;
        return base_lr * pow(s->gamma, (double)(step / s->step_size));
    case KN_LR_COSINE:
        if (s->t_max <= 0) return base_lr;
        return s->eta_min +
               (base_lr - s->eta_min) * (1 + cos(M_PI * (double)step / (double)s->t_max)) / 2;
    case KN_LR_CONSTANT:
    default:
        return base_lr;
    }
}

/*
 * optim.c — the fused update loops of SGD, Adam/AdamW and RMSprop: one pass over a
 * parameter's contiguous float32 data, its gradient and its state, with no temporaries.
 *
 * Each loop repeats torch 1.13's single-tensor sequence of in-place ops element by element
 * (same operation order, every Python scalar rounded to float first, as torch's CPU
 * kernels do, fused where torch's build fuses), so results match torch's bit for bit.
 * The option flags are compile-time constants of always-inlined loops, so each variant
 * vectorises without branches; the loops run on the engine's pool for large parameters.
 *
 * sqrtf keeps a loop from vectorising (GCC guards it with an errno call unless built
 * with -fno-math-errno, which a pragma cannot turn on), so Adam and RMSprop work in
 * blocks: a vectorised pass writes the values to take the root of into a small buffer,
 * block_sqrt takes the roots with SSE, and a second vectorised pass updates parameters.
 */
#include "kn_cpu_optim.h"
#include "kn_cpu.h"

#include <math.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Rounding as torch's kernels round: torch's build fuses a * b + c wherever one of its ops
 * computes it (add_ with alpha, addcmul_), so FMA(a, b, c) marks those places and nothing
 * else may be contracted (GCC would otherwise fuse differently in a loop's vector body
 * and its scalar tail, and an element's result would depend on where chunks end). */
#pragma GCC optimize("fp-contract=off")
#define FMA(a, b, c) fmaf(a, b, c)

/* "fma" implies AVX (256-bit float vectors), which is all these loops need; avx512f has
 * its own FMA. The default clone calls libm's fmaf (only CPUs from before 2013). */
#define CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#define INLINE static inline __attribute__((always_inline))
/* The update reads ~4 and writes ~3 floats per element with a sqrt and a division: cheap
 * enough that small parameters are not worth waking the pool for. */
#define GRAIN 16384
#define BLOCK 256 /* floats per block of the two-pass loops: stays in L1 */

/* x = sqrt(x), correctly rounded like sqrtf (NaN for negative x, as torch) */
INLINE void block_sqrt(float *x, int64_t n)
{
    int64_t j = 0;
#if defined(__SSE2__)
    for (; j + 4 <= n; j += 4) _mm_storeu_ps(x + j, _mm_sqrt_ps(_mm_loadu_ps(x + j)));
#endif
    for (; j < n; j++) x[j] = sqrtf(x[j]);
}

typedef struct ctx {
    float *restrict p;
    const float *restrict g;
    float *restrict buf, *restrict m, *restrict v, *restrict vmax, *restrict gavg;
    float neg_lr, wd, momentum, one_minus_dampening;
    float beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, neg_step_size, decay;
    float alpha, one_minus_alpha, eps;
    bool has_wd, first, nesterov, has_momentum, amsgrad, decoupled, centered;
} ctx;

/* ---- SGD ------------------------------------------------------------------------------ */

INLINE void sgd_loop(const ctx *c, int64_t b, int64_t e, bool wd, bool mom, bool first, bool nest)
{
    float *restrict p = c->p, *restrict buf = c->buf;
    const float *restrict g = c->g;
    /* constants in locals: the stores through p must not make them look reloadable */
    const float wdv = c->wd, mu = c->momentum, omd = c->one_minus_dampening, nlr = c->neg_lr;
    for (int64_t i = b; i < e; i++) {
        float d = g[i];
        if (wd) d = FMA(wdv, p[i], d); /* d_p = d_p.add(param, alpha=wd) */
        if (mom) {
            float bv = first ? d : FMA(omd, d, buf[i] * mu); /* buf.mul_(m).add_(d_p, 1-damp) */
            buf[i] = bv;
            d = nest ? FMA(mu, bv, d) : bv; /* d_p.add(buf, alpha=momentum) */
        }
        p[i] = FMA(nlr, d, p[i]); /* param.add_(d_p, alpha=-lr) */
    }
}

CLONES static void sgd_range(void *arg, int64_t b, int64_t e)
{
    const ctx *c = arg;
#define SGD_MOM(wd)                                                                                \
    do {                                                                                           \
        if (!c->has_momentum)                                                                      \
            sgd_loop(c, b, e, wd, false, false, false);                                            \
        else if (c->first)                                                                         \
            sgd_loop(c, b, e, wd, true, true, c->nesterov);                                        \
        else if (c->nesterov)                                                                      \
            sgd_loop(c, b, e, wd, true, false, true);                                              \
        else                                                                                       \
            sgd_loop(c, b, e, wd, true, false, false);                                             \
    } while (0)
    if (c->has_wd)
        SGD_MOM(true);
    else
        SGD_MOM(false);
#undef SGD_MOM
}

void kn_cpu_optim_sgd(const kn_cpu_optim_args *a, int64_t n)
{
    ctx c = {
        .p = a->param,
        .g = a->grad,
        .buf = a->buf,
        .neg_lr = (float)-a->lr,
        .wd = (float)a->weight_decay,
        .momentum = (float)a->momentum,
        .one_minus_dampening = (float)(1 - a->dampening),
        .has_wd = a->weight_decay != 0,
        .first = a->first,
        .nesterov = a->nesterov,
        .has_momentum = a->momentum != 0,
    };
    kn_cpu_parallel_for(n, GRAIN, sgd_range, &c);
}

/* ---- Adam / AdamW --------------------------------------------------------------------- */

INLINE void adam_loop(const ctx *c, int64_t b, int64_t e, bool wd, bool decoupled, bool ams)
{
    float *restrict p = c->p, *restrict m = c->m, *restrict v = c->v, *restrict vmax = c->vmax;
    const float *restrict g = c->g;
    const float wdv = c->wd, decay = c->decay, b1 = c->beta1, omb1 = c->one_minus_beta1;
    const float b2 = c->beta2, omb2 = c->one_minus_beta2, bc2 = c->bc2_sqrt, eps = c->eps;
    const float nss = c->neg_step_size;
    float root[BLOCK];
    for (int64_t i0 = b; i0 < e; i0 += BLOCK) {
        int64_t n = e - i0 < BLOCK ? e - i0 : BLOCK;
        for (int64_t j = 0; j < n; j++) {
            int64_t i = i0 + j;
            float gi = g[i];
            /* grad.add(param, alpha=weight_decay) */
            if (wd) gi = FMA(wdv, p[i], gi);
            float mi = FMA(omb1, gi, m[i] * b1);      /* mul_(beta1).add_(g, alpha=1-beta1) */
            float vi = FMA(omb2 * gi, gi, v[i] * b2); /* addcmul_: v + (value * g) * g */
            m[i] = mi;
            v[i] = vi;
            if (ams) {
                float x = vmax[i];
                x = (x > vi || x != x) ? x : vi; /* torch.maximum propagates NaN */
                vmax[i] = x;
                vi = x;
            }
            root[j] = vi;
        }
        block_sqrt(root, n);
        for (int64_t j = 0; j < n; j++) {
            int64_t i = i0 + j;
            float pi = p[i];
            if (decoupled) pi = pi * decay; /* param.mul_(1 - lr * weight_decay) */
            float denom = root[j] / bc2 + eps;
            p[i] = pi + nss * m[i] / denom; /* addcdiv_: p + (value * m) / denom */
        }
    }
}

CLONES static void adam_range(void *arg, int64_t b, int64_t e)
{
    const ctx *c = arg;
#define ADAM_AMS(wd, dec)                                                                          \
    do {                                                                                           \
        if (c->amsgrad)                                                                            \
            adam_loop(c, b, e, wd, dec, true);                                                     \
        else                                                                                       \
            adam_loop(c, b, e, wd, dec, false);                                                    \
    } while (0)
    if (c->decoupled)
        ADAM_AMS(false, true);
    else if (c->has_wd)
        ADAM_AMS(true, false);
    else
        ADAM_AMS(false, false);
#undef ADAM_AMS
}

void kn_cpu_optim_adam(const kn_cpu_optim_args *a, int64_t n)
{
    double step = (double)a->step;
    double bias_correction1 = 1 - pow(a->beta1, step);
    double bias_correction2 = 1 - pow(a->beta2, step);
    ctx c = {
        .p = a->param,
        .g = a->grad,
        .m = a->exp_avg,
        .v = a->exp_avg_sq,
        .vmax = a->max_exp_avg_sq,
        .wd = (float)a->weight_decay,
        .beta1 = (float)a->beta1,
        .one_minus_beta1 = (float)(1 - a->beta1),
        .beta2 = (float)a->beta2,
        .one_minus_beta2 = (float)(1 - a->beta2),
        .bc2_sqrt = (float)sqrt(bias_correction2),
        .neg_step_size = (float)-(a->lr / bias_correction1),
        .decay = (float)(1 - a->lr * a->weight_decay),
        .eps = (float)a->eps,
        .has_wd = a->weight_decay != 0,
        .amsgrad = a->max_exp_avg_sq != NULL,
        .decoupled = a->decoupled,
    };
    kn_cpu_parallel_for(n, GRAIN, adam_range, &c);
}

/* ---- RMSprop -------------------------------------------------------------------------- */

INLINE void rmsprop_loop(const ctx *c, int64_t b, int64_t e, bool wd, bool centered, bool mom)
{
    float *restrict p = c->p, *restrict sq = c->v, *restrict ga = c->gavg, *restrict buf = c->buf;
    const float *restrict g = c->g;
    const float wdv = c->wd, al = c->alpha, oma = c->one_minus_alpha, eps = c->eps;
    const float mu = c->momentum, nlr = c->neg_lr;
    float root[BLOCK];
    for (int64_t i0 = b; i0 < e; i0 += BLOCK) {
        int64_t n = e - i0 < BLOCK ? e - i0 : BLOCK;
        for (int64_t j = 0; j < n; j++) {
            int64_t i = i0 + j;
            float gi = g[i];
            if (wd) gi = FMA(wdv, p[i], gi);
            float s = FMA(oma * gi, gi, sq[i] * al);
            sq[i] = s;
            if (centered) {
                float a = FMA(oma, gi, ga[i] * al);
                ga[i] = a;
                s = FMA(-1.0f * a, a, s); /* square_avg.addcmul(ga, ga, value=-1) */
            }
            root[j] = s;
        }
        block_sqrt(root, n);
        for (int64_t j = 0; j < n; j++) {
            int64_t i = i0 + j;
            float pi = p[i], gi = g[i];
            if (wd) gi = FMA(wdv, pi, gi); /* the same value as in the first pass */
            float avg = root[j] + eps;
            if (mom) {
                float bv = buf[i] * mu + 1.0f * gi / avg; /* buf.mul_(m).addcdiv_(g, avg) */
                buf[i] = bv;
                p[i] = FMA(nlr, bv, pi); /* param.add_(buf, alpha=-lr) */
            } else {
                p[i] = pi + nlr * gi / avg; /* param.addcdiv_(g, avg, value=-lr) */
            }
        }
    }
}

CLONES static void rmsprop_range(void *arg, int64_t b, int64_t e)
{
    const ctx *c = arg;
#define RMS_MOM(wd, cen)                                                                           \
    do {                                                                                           \
        if (c->has_momentum)                                                                       \
            rmsprop_loop(c, b, e, wd, cen, true);                                                  \
        else                                                                                       \
            rmsprop_loop(c, b, e, wd, cen, false);                                                 \
    } while (0)
    if (c->has_wd) {
        if (c->centered)
            RMS_MOM(true, true);
        else
            RMS_MOM(true, false);
    } else {
        if (c->centered)
            RMS_MOM(false, true);
        else
            RMS_MOM(false, false);
    }
#undef RMS_MOM
}

void kn_cpu_optim_rmsprop(const kn_cpu_optim_args *a, int64_t n)
{
    ctx c = {
        .p = a->param,
        .g = a->grad,
        .v = a->square_avg,
        .gavg = a->grad_avg,
        .buf = a->buf,
        .neg_lr = (float)-a->lr,
        .wd = (float)a->weight_decay,
        .momentum = (float)a->momentum,
        .alpha = (float)a->alpha,
        .one_minus_alpha = (float)(1 - a->alpha),
        .eps = (float)a->eps,
        .has_wd = a->weight_decay != 0,
        .centered = a->grad_avg != NULL,
        .has_momentum = a->momentum > 0,
    };
    kn_cpu_parallel_for(n, GRAIN, rmsprop_range, &c);
}

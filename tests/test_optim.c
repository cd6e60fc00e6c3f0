/*
 * test_optim.c — optimizers, learning-rate schedules and gradient clipping against
 * PyTorch 1.13 (numbers in tests/golden/optim_expected.h, written by
 * tests/golden/generate_optim.py), state round trips for checkpoints, and the errors.
 */
#include "kn_optim.h"
#include "kn_test.h"

#include "golden/optim_expected.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NPARAMS 3
static const int64_t shapes[NPARAMS][2] = {{2, 3}, {3, 0}, {2, 2}};
static const int ndims[NPARAMS] = {2, 1, 2};
static const int64_t offsets[NPARAMS + 1] = {0, 6, 9, 13};

/* The same table as OPTIM_CASES in generate_optim.py. */
typedef struct optim_case {
    const char *name;
    kn_optimizer_options options;
    unsigned skip[OPTIM_STEPS]; /* per step: bit i set = parameter i has no gradient */
    const float (*expected)[OPTIM_NUMEL];
} optim_case;

static kn_optimizer_options opts(kn_optimizer_kind kind)
{
    return kn_optimizer_defaults(kind);
}

static optim_case make_case(int k)
{
    optim_case c = {0};
    kn_optimizer_options o;
    switch (k) {
    case 0:
        o = opts(KN_OPTIM_SGD), o.lr = 0.1;
        c = (optim_case){"sgd_plain", o, {0}, optim_sgd_plain};
        break;
    case 1:
        o = opts(KN_OPTIM_SGD), o.lr = 0.05, o.momentum = 0.9;
        c = (optim_case){"sgd_momentum", o, {0}, optim_sgd_momentum};
        break;
    case 2:
        o = opts(KN_OPTIM_SGD), o.lr = 0.05, o.momentum = 0.9, o.dampening = 0.1,
        o.weight_decay = 0.01;
        c = (optim_case){"sgd_dampening_wd", o, {0}, optim_sgd_dampening_wd};
        break;
    case 3:
        o = opts(KN_OPTIM_SGD), o.lr = 0.05, o.momentum = 0.8, o.nesterov = true,
        o.weight_decay = 0.001;
        c = (optim_case){"sgd_nesterov", o, {0}, optim_sgd_nesterov};
        break;
    case 4:
        o = opts(KN_OPTIM_SGD), o.lr = 0.05, o.momentum = 0.9;
        c = (optim_case){"sgd_skip", o, {0, 2, 2, 0}, optim_sgd_skip};
        break;
    case 5:
        o = opts(KN_OPTIM_ADAM);
        c = (optim_case){"adam_default", o, {0}, optim_adam_default};
        break;
    case 6:
        o = opts(KN_OPTIM_ADAM), o.lr = 0.1;
        c = (optim_case){"adam_lr", o, {0}, optim_adam_lr};
        break;
    case 7:
        o = opts(KN_OPTIM_ADAM), o.lr = 0.05, o.beta1 = 0.8, o.beta2 = 0.99, o.eps = 1e-6,
        o.weight_decay = 0.1, o.amsgrad = true;
        c = (optim_case){"adam_wd_amsgrad", o, {0}, optim_adam_wd_amsgrad};
        break;
    case 8:
        o = opts(KN_OPTIM_ADAM), o.lr = 0.1;
        c = (optim_case){"adam_skip", o, {4, 2, 2, 0}, optim_adam_skip};
        break;
    case 9:
        o = opts(KN_OPTIM_ADAMW), o.lr = 0.05;
        c = (optim_case){"adamw_default", o, {0}, optim_adamw_default};
        break;
    case 10:
        o = opts(KN_OPTIM_ADAMW), o.lr = 0.02, o.beta1 = 0.85, o.beta2 = 0.95, o.weight_decay = 0.1,
        o.amsgrad = true;
        c = (optim_case){"adamw_amsgrad", o, {0}, optim_adamw_amsgrad};
        break;
    case 11:
        o = opts(KN_OPTIM_RMSPROP);
        c = (optim_case){"rmsprop_default", o, {0}, optim_rmsprop_default};
        break;
    case 12:
        o = opts(KN_OPTIM_RMSPROP), o.lr = 0.01, o.momentum = 0.9, o.eps = 1e-4;
        c = (optim_case){"rmsprop_momentum", o, {0}, optim_rmsprop_momentum};
        break;
    case 13:
        o = opts(KN_OPTIM_RMSPROP), o.lr = 0.01, o.alpha = 0.9, o.centered = true, o.momentum = 0.5,
        o.weight_decay = 0.01;
        c = (optim_case){"rmsprop_centered", o, {0}, optim_rmsprop_centered};
        break;
    case 14:
        o = opts(KN_OPTIM_RMSPROP), o.lr = 0.02, o.centered = true;
        c = (optim_case){"rmsprop_centered_plain", o, {0}, optim_rmsprop_centered_plain};
        break;
    /* weight_decay_params "matrices" against torch's two param groups (decay on the 2-D
     * parameters 0 and 2, none on the 1-D parameter 1) */
    case 15:
        o = opts(KN_OPTIM_ADAMW), o.lr = 0.02, o.beta2 = 0.99, o.weight_decay = 0.1,
        o.weight_decay_params = KN_DECAY_MATRICES;
        c = (optim_case){"adamw_matrices", o, {0}, optim_adamw_matrices};
        break;
    case 16:
        o = opts(KN_OPTIM_ADAM), o.lr = 0.05, o.weight_decay = 0.1,
        o.weight_decay_params = KN_DECAY_MATRICES;
        c = (optim_case){"adam_matrices", o, {0}, optim_adam_matrices};
        break;
    case 17:
        o = opts(KN_OPTIM_SGD), o.lr = 0.05, o.momentum = 0.9, o.weight_decay = 0.05,
        o.weight_decay_params = KN_DECAY_MATRICES;
        c = (optim_case){"sgd_matrices", o, {0}, optim_sgd_matrices};
        break;
    case 18:
        o = opts(KN_OPTIM_RMSPROP), o.lr = 0.01, o.momentum = 0.5, o.weight_decay = 0.01,
        o.weight_decay_params = KN_DECAY_MATRICES;
        c = (optim_case){"rmsprop_matrices", o, {0}, optim_rmsprop_matrices};
        break;
    }
    return c;
}
#define NCASES 19

/* Parameters holding `values` (OPTIM_NUMEL floats), requiring grad, owned by the scope. */
static void make_params(kn_tensor **params, const float *values)
{
    for (int i = 0; i < NPARAMS; i++) {
        params[i] =
            kn_set_requires_grad(kn_from_floats(values + offsets[i], shapes[i], ndims[i]), true);
        cr_assert_not_null(params[i], "%s", kn_last_error());
    }
}

/* .grad of each parameter not in skip becomes exactly optim_grads[step] (through a
 * backward of sum(p * g)); skipped parameters have none. */
static void set_grads(kn_tensor **params, int step, unsigned skip)
{
    for (int i = 0; i < NPARAMS; i++) kn_zero_grad(params[i]);
    kn_scope_begin();
    kn_tensor *loss = NULL;
    for (int i = 0; i < NPARAMS; i++) {
        if (skip & (1u << i)) continue;
        kn_tensor *g = kn_from_floats(optim_grads[step] + offsets[i], shapes[i], ndims[i]);
        kn_tensor *term = kn_sum_all(kn_mul(params[i], g));
        loss = loss ? kn_add(loss, term) : term;
    }
    if (loss) cr_assert_eq(kn_backward(loss, NULL, false), KN_OK, "%s", kn_last_error());
    kn_scope_end();
}

/* Exact: the kernels round (and fuse) as torch's do, and fmaf, sqrt and division are
 * correctly rounded on every CPU, so any difference is a bug. */
static void assert_params(const char *what, int step, kn_tensor **params, const float *want)
{
    for (int i = 0; i < NPARAMS; i++) {
        char msg[256];
        cr_assert(kn_test_close(params[i], want + offsets[i], offsets[i + 1] - offsets[i], 0, 0,
                                msg, sizeof msg),
                  "%s, step %d, parameter %d: %s", what, step + 1, i, msg);
    }
}

Test(optim, steps_match_torch)
{
    for (int k = 0; k < NCASES; k++) {
        optim_case c = make_case(k);
        kn_scope_begin();
        kn_tensor *params[NPARAMS];
        make_params(params, optim_init);
        kn_optimizer *opt = kn_optimizer_new(params, NPARAMS, c.options);
        cr_assert_not_null(opt, "%s: %s", c.name, kn_last_error());
        for (int step = 0; step < OPTIM_STEPS; step++) {
            set_grads(params, step, c.skip[step]);
            cr_assert_eq(kn_optimizer_step(opt), KN_OK, "%s: %s", c.name, kn_last_error());
            assert_params(c.name, step, params, c.expected[step]);
        }
        cr_assert_eq(kn_optimizer_step_count(opt), OPTIM_STEPS);
        kn_optimizer_free(opt);
        kn_scope_end();
    }
}

static bool has_entry(const kn_optimizer_state_entry *e, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(e[i].name, name)) return true;
    return false;
}

/* Two steps, save, load into a fresh optimizer over copies of the parameters, and two
 * more steps on both: bit-identical, and still torch's numbers. */
Test(optim, state_round_trip_continues_identically)
{
    for (int k = 0; k < NCASES; k++) {
        optim_case c = make_case(k);
        kn_scope_begin();
        kn_tensor *a[NPARAMS], *b[NPARAMS];
        make_params(a, optim_init);
        kn_optimizer *oa = kn_optimizer_new(a, NPARAMS, c.options);
        cr_assert_not_null(oa);
        for (int step = 0; step < 2; step++) {
            set_grads(a, step, c.skip[step]);
            cr_assert_eq(kn_optimizer_step(oa), KN_OK, "%s", kn_last_error());
        }
        float now[OPTIM_NUMEL];
        for (int i = 0; i < NPARAMS; i++) kn_copy_to_floats(a[i], now + offsets[i]);
        make_params(b, now);
        kn_optimizer *ob = kn_optimizer_new(b, NPARAMS, c.options);
        cr_assert_not_null(ob);

        int n = 0;
        kn_optimizer_state_entry *saved = kn_optimizer_state(oa, &n);
        cr_assert_not_null(saved, "%s", kn_last_error());
        cr_assert(has_entry(saved, n, "step"), "%s", c.name);
        /* copies, so the load cannot lean on oa's tensors */
        for (int i = 0; i < n; i++) saved[i].tensor = kn_clone(saved[i].tensor);
        cr_assert_eq(kn_optimizer_load_state(ob, saved, n), KN_OK, "%s: %s", c.name,
                     kn_last_error());
        free(saved);
        cr_assert_eq(kn_optimizer_step_count(ob), 2);

        for (int step = 2; step < OPTIM_STEPS; step++) {
            set_grads(a, step, c.skip[step]);
            set_grads(b, step, c.skip[step]);
            cr_assert_eq(kn_optimizer_step(oa), KN_OK);
            cr_assert_eq(kn_optimizer_step(ob), KN_OK);
            for (int i = 0; i < NPARAMS; i++) {
                float va[OPTIM_NUMEL], vb[OPTIM_NUMEL];
                kn_copy_to_floats(a[i], va);
                kn_copy_to_floats(b[i], vb);
                cr_assert(!memcmp(va, vb, sizeof(float) * (size_t)kn_numel(a[i])),
                          "%s: parameter %d differs after reload, step %d", c.name, i, step + 1);
            }
            assert_params(c.name, step, b, c.expected[step]);
        }
        kn_optimizer_free(oa);
        kn_optimizer_free(ob);
        kn_scope_end();
    }
}

Test(optim, state_entries_are_named_like_torch)
{
    kn_scope_begin();
    kn_tensor *p[NPARAMS];
    make_params(p, optim_init);
    kn_optimizer_options o = kn_optimizer_defaults(KN_OPTIM_ADAM);
    o.amsgrad = true;
    kn_optimizer *opt = kn_optimizer_new(p, NPARAMS, o);
    int n = -1;
    kn_optimizer_state_entry *e = kn_optimizer_state(opt, &n);
    cr_assert_eq(n, 1); /* no state before the first step, only "step" */
    cr_assert_str_eq(e[0].name, "step");
    cr_assert_eq(e[0].tensor->dtype, KN_INT64);
    cr_assert_eq(e[0].tensor->ndim, 0);
    free(e);
    set_grads(p, 0, 2); /* parameter 1 has no gradient */
    cr_assert_eq(kn_optimizer_step(opt), KN_OK);
    e = kn_optimizer_state(opt, &n);
    cr_assert_eq(n, 1 + 2 * 4);
    const char *names[] = {"step",         "step.0",           "exp_avg.0",
                           "exp_avg_sq.0", "max_exp_avg_sq.0", "step.2",
                           "exp_avg.2",    "exp_avg_sq.2",     "max_exp_avg_sq.2"};
    for (int i = 0; i < 9; i++) cr_assert(has_entry(e, n, names[i]), "missing %s", names[i]);
    cr_assert_eq(kn_item_i64(e[0].tensor), 1);
    cr_assert(e[2].tensor->ndim == 2 && e[2].tensor->shape[0] == 2 && e[2].tensor->shape[1] == 3);
    free(e);
    kn_optimizer_free(opt);
    kn_scope_end();
}

Test(optim, load_state_errors_name_the_entry)
{
    kn_scope_begin();
    kn_tensor *p[NPARAMS];
    make_params(p, optim_init);
    kn_optimizer_options o = kn_optimizer_defaults(KN_OPTIM_ADAM);
    kn_optimizer *opt = kn_optimizer_new(p, NPARAMS, o);
    kn_tensor *wrong = kn_zeros(KN_SHAPE(5), KN_FLOAT32);
    kn_tensor *good = kn_zeros(KN_SHAPE(2, 3), KN_FLOAT32);
    kn_tensor *one = kn_from_int64s((int64_t[]){1}, KN_SHAPE(1));

    kn_optimizer_state_entry bad_shape[] = {{"exp_avg.0", wrong}};
    cr_assert_neq(kn_optimizer_load_state(opt, bad_shape, 1), KN_OK);
    cr_assert(strstr(kn_last_error(), "exp_avg.0") && strstr(kn_last_error(), "[5]") &&
                  strstr(kn_last_error(), "[2, 3]"),
              "%s", kn_last_error());

    kn_optimizer_state_entry unknown[] = {{"momentum_buffer.0", good}};
    cr_assert_neq(kn_optimizer_load_state(opt, unknown, 1), KN_OK);
    cr_assert(strstr(kn_last_error(), "'momentum_buffer.0'"), "%s", kn_last_error());

    kn_optimizer_state_entry out_of_range[] = {{"exp_avg.7", good}};
    cr_assert_neq(kn_optimizer_load_state(opt, out_of_range, 1), KN_OK);
    cr_assert(strstr(kn_last_error(), "exp_avg.7"), "%s", kn_last_error());

    kn_optimizer_state_entry partial[] = {{"exp_avg.0", good}, {"step.0", one}};
    cr_assert_neq(kn_optimizer_load_state(opt, partial, 2), KN_OK);
    cr_assert(strstr(kn_last_error(), "exp_avg_sq.0"), "%s", kn_last_error());

    kn_optimizer_state_entry no_step[] = {{"exp_avg.0", good}, {"exp_avg_sq.0", good}};
    cr_assert_neq(kn_optimizer_load_state(opt, no_step, 2), KN_OK);
    cr_assert(strstr(kn_last_error(), "step.0"), "%s", kn_last_error());

    kn_optimizer_state_entry negative[] = {{"step", kn_from_int64s((int64_t[]){-3}, KN_SHAPE(1))}};
    cr_assert_neq(kn_optimizer_load_state(opt, negative, 1), KN_OK);
    cr_assert(strstr(kn_last_error(), "step"), "%s", kn_last_error());

    /* nothing changed: the optimizer still steps from scratch like torch */
    cr_assert_eq(kn_optimizer_step_count(opt), 0);
    int n;
    kn_optimizer_state_entry *e = kn_optimizer_state(opt, &n);
    cr_assert_eq(n, 1);
    free(e);
    /* a float32 step count is accepted */
    kn_optimizer_state_entry ok[] = {{"exp_avg.0", good},
                                     {"exp_avg_sq.0", good},
                                     {"step.0", kn_test_scalar(3)},
                                     {"step", kn_test_scalar(3)}};
    cr_assert_eq(kn_optimizer_load_state(opt, ok, 4), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_optimizer_step_count(opt), 3);
    kn_optimizer_free(opt);
    kn_scope_end();
}

/* A parameter big enough to run on the thread pool gives, element by element, what the
 * same values give in a small single-threaded parameter. */
Test(optim, large_parameters_match_small_ones)
{
    kn_set_num_threads(2);
    const int64_t big = 200003, small = 1000;
    kn_optimizer_kind kinds[] = {KN_OPTIM_SGD, KN_OPTIM_ADAM, KN_OPTIM_ADAMW, KN_OPTIM_RMSPROP};
    for (int k = 0; k < 4; k++) {
        kn_scope_begin();
        kn_tensor *p = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(big), -1, 1, 7), true);
        kn_tensor *g = kn_test_uniform(KN_SHAPE(big), -1, 1, 8);
        /* the tail of the big one, where the last thread's chunk ends */
        kn_tensor *q =
            kn_set_requires_grad(kn_clone(kn_narrow(kn_detach(p), 0, big - small, small)), true);
        kn_tensor *h = kn_clone(kn_narrow(g, 0, big - small, small));
        kn_optimizer_options o = kn_optimizer_defaults(kinds[k]);
        o.momentum = kinds[k] == KN_OPTIM_ADAM ? 0 : 0.9;
        o.weight_decay = 0.01;
        o.amsgrad = o.centered = true;
        kn_optimizer *op = kn_optimizer_new(&p, 1, o), *oq = kn_optimizer_new(&q, 1, o);
        cr_assert(op && oq, "%s", kn_last_error());
        for (int step = 0; step < 3; step++) {
            kn_optimizer_zero_grad(op);
            kn_optimizer_zero_grad(oq);
            cr_assert_eq(kn_backward(kn_sum_all(kn_mul(p, g)), NULL, false), KN_OK);
            cr_assert_eq(kn_backward(kn_sum_all(kn_mul(q, h)), NULL, false), KN_OK);
            cr_assert_eq(kn_optimizer_step(op), KN_OK);
            cr_assert_eq(kn_optimizer_step(oq), KN_OK);
        }
        float *tail = kn_data_f32(p) + (big - small);
        cr_assert(!memcmp(tail, kn_data_f32(q), sizeof(float) * (size_t)small),
                  "%s: the pooled update differs", kn_optimizer_kind_name(kinds[k]));
        kn_optimizer_free(op);
        kn_optimizer_free(oq);
        kn_scope_end();
    }
}

Test(optim, zero_grad_lr_and_skipped_parameters)
{
    kn_scope_begin();
    kn_tensor *p[NPARAMS];
    make_params(p, optim_init);
    kn_optimizer *opt = kn_optimizer_new(p, NPARAMS, kn_optimizer_defaults(KN_OPTIM_SGD));
    cr_assert_float_eq(kn_optimizer_get_lr(opt), 0.01, 1e-15);
    kn_optimizer_set_lr(opt, 0.5);
    cr_assert_float_eq(kn_optimizer_get_lr(opt), 0.5, 1e-15);
    cr_assert_float_eq(kn_optimizer_options_of(opt)->lr, 0.5, 1e-15);
    /* no gradients at all: nothing moves */
    cr_assert_eq(kn_optimizer_step(opt), KN_OK);
    char msg[256];
    cr_assert(kn_test_close(p[0], optim_init, 6, 0, 0, msg, sizeof msg), "%s", msg);
    set_grads(p, 0, 0);
    cr_assert_not_null(p[1]->grad);
    kn_optimizer_zero_grad(opt);
    for (int i = 0; i < NPARAMS; i++) cr_assert_null(p[i]->grad);
    kn_optimizer_free(opt);
    kn_optimizer_free(NULL);
    kn_scope_end();
}

static void expect_error(kn_optimizer_options o, const char *want)
{
    kn_scope_begin();
    kn_tensor *p = kn_set_requires_grad(kn_zeros(KN_SHAPE(2), KN_FLOAT32), true);
    kn_clear_error();
    kn_optimizer *opt = kn_optimizer_new(&p, 1, o);
    cr_assert_null(opt, "expected an error containing '%s'", want);
    cr_assert(strstr(kn_last_error(), want), "got '%s', expected '%s'", kn_last_error(), want);
    kn_scope_end();
}

Test(optim, invalid_options_name_the_field)
{
    kn_optimizer_options o = kn_optimizer_defaults(KN_OPTIM_ADAM);
    o.lr = -1;
    expect_error(o, "adam: lr must be a finite number >= 0, got -1");
    o = kn_optimizer_defaults(KN_OPTIM_ADAM), o.beta1 = 1;
    expect_error(o, "adam: beta1 must be in [0, 1), got 1");
    o = kn_optimizer_defaults(KN_OPTIM_ADAMW), o.beta2 = -0.5;
    expect_error(o, "adamw: beta2 must be in [0, 1), got -0.5");
    o = kn_optimizer_defaults(KN_OPTIM_ADAMW), o.eps = -1e-8;
    expect_error(o, "adamw: eps must be a finite number >= 0, got -1e-08");
    o = kn_optimizer_defaults(KN_OPTIM_SGD), o.weight_decay = -0.1;
    expect_error(o, "sgd: weight_decay must be a finite number >= 0, got -0.1");
    o = kn_optimizer_defaults(KN_OPTIM_SGD), o.momentum = -0.9;
    expect_error(o, "sgd: momentum must be a finite number >= 0, got -0.9");
    o = kn_optimizer_defaults(KN_OPTIM_SGD), o.nesterov = true;
    expect_error(o, "sgd: nesterov requires momentum > 0 and dampening 0, got momentum 0 and "
                    "dampening 0");
    o.momentum = 0.9, o.dampening = 0.1;
    expect_error(o, "got momentum 0.9 and dampening 0.1");
    o = kn_optimizer_defaults(KN_OPTIM_RMSPROP), o.alpha = -0.5;
    expect_error(o, "rmsprop: alpha must be a finite number >= 0, got -0.5");
    o = kn_optimizer_defaults(KN_OPTIM_RMSPROP), o.lr = NAN;
    expect_error(o, "rmsprop: lr must be a finite number >= 0, got nan");
    o = kn_optimizer_defaults(KN_OPTIM_RMSPROP), o.momentum = INFINITY;
    expect_error(o, "rmsprop: momentum");
    o = kn_optimizer_defaults(KN_OPTIM_SGD), o.kind = (kn_optimizer_kind)42;
    expect_error(o, "optimizer: unknown kind 42");
    o = kn_optimizer_defaults(KN_OPTIM_ADAMW), o.weight_decay_params = (kn_weight_decay_params)7;
    expect_error(o, "adamw: weight_decay_params must be KN_DECAY_ALL or KN_DECAY_MATRICES, got 7");
}

Test(optim, invalid_parameters)
{
    kn_scope_begin();
    kn_optimizer_options o = kn_optimizer_defaults(KN_OPTIM_SGD);
    cr_assert_null(kn_optimizer_new(NULL, 0, o));
    cr_assert(strstr(kn_last_error(), "at least one parameter"), "%s", kn_last_error());
    kn_tensor *p = kn_zeros(KN_SHAPE(2, 3), KN_FLOAT32);
    kn_tensor *dup[] = {p, p};
    cr_assert_null(kn_optimizer_new(dup, 2, o));
    cr_assert(strstr(kn_last_error(), "parameters 0 and 1"), "%s", kn_last_error());
    kn_tensor *ints = kn_arange(4);
    cr_assert_null(kn_optimizer_new(&ints, 1, o));
    cr_assert(strstr(kn_last_error(), "parameter 0") && strstr(kn_last_error(), "int64"), "%s",
              kn_last_error());
    kn_tensor *t = kn_test_transposed(p, 0, 1);
    cr_assert_null(kn_optimizer_new(&t, 1, o));
    cr_assert(strstr(kn_last_error(), "non-contiguous"), "%s", kn_last_error());
    kn_tensor *leaf = kn_set_requires_grad(kn_zeros(KN_SHAPE(3), KN_FLOAT32), true);
    kn_tensor *nonleaf = kn_mul_scalar(leaf, 2);
    cr_assert_null(kn_optimizer_new(&nonleaf, 1, o));
    cr_assert(strstr(kn_last_error(), "got a non-leaf float32 cpu tensor of shape [3]"), "%s",
              kn_last_error());
    kn_tensor *none[] = {leaf, NULL};
    cr_assert_null(kn_optimizer_new(none, 2, o));
    cr_assert(strstr(kn_last_error(), "parameter 1 is NULL"), "%s", kn_last_error());
    cr_assert_eq(kn_optimizer_step(NULL), KN_ERR_NULL);
    kn_scope_end();
}

/* ---- schedules ---------------------------------------------------------------------- */

static void check_schedule(const char *name, kn_lr_schedule s, const double *want)
{
    cr_assert_eq(kn_lr_schedule_check(&s), KN_OK, "%s: %s", name, kn_last_error());
    for (int step = 0; step < 30; step++) {
        double got = kn_lr_at(&s, 0.1, step);
        cr_assert(fabs(got - want[step]) <= 1e-12 * fabs(want[step]),
                  "%s, step %d: got %.17g, torch %.17g", name, step, got, want[step]);
    }
}

/* The same table as SCHED_CASES in generate_optim.py (base lr 0.1). */
Test(optim, schedules_match_torch)
{
    kn_lr_schedule step = kn_lr_schedule_defaults(KN_LR_STEP);
    step.step_size = 7, step.gamma = 0.5;
    check_schedule("step", step, sched_step);
    kn_lr_schedule cosine = kn_lr_schedule_defaults(KN_LR_COSINE);
    cosine.t_max = 20, cosine.eta_min = 0.001;
    check_schedule("cosine", cosine, sched_cosine);
    kn_lr_schedule constant = kn_lr_schedule_defaults(KN_LR_CONSTANT);
    constant.warmup_steps = 5, constant.warmup_start_factor = 0.1;
    check_schedule("warmup_constant", constant, sched_warmup_constant);
    step.warmup_steps = 4, step.warmup_start_factor = 0.25;
    check_schedule("warmup_step", step, sched_warmup_step);
    cosine.warmup_steps = 6; /* the default start factor, 1/3 as torch's LinearLR */
    check_schedule("warmup_cosine", cosine, sched_warmup_cosine);
    kn_lr_schedule none = kn_lr_schedule_defaults(KN_LR_CONSTANT);
    cr_assert_eq(kn_lr_at(&none, 0.25, 1000), 0.25);
}

Test(optim, invalid_schedules_name_the_field)
{
    kn_lr_schedule s = kn_lr_schedule_defaults(KN_LR_STEP);
    s.step_size = 0;
    cr_assert_neq(kn_lr_schedule_check(&s), KN_OK);
    cr_assert(strstr(kn_last_error(), "step_size must be a positive integer, got 0"), "%s",
              kn_last_error());
    s = kn_lr_schedule_defaults(KN_LR_COSINE), s.t_max = -5;
    cr_assert_neq(kn_lr_schedule_check(&s), KN_OK);
    cr_assert(strstr(kn_last_error(), "t_max must be a positive integer, got -5"), "%s",
              kn_last_error());
    s = kn_lr_schedule_defaults(KN_LR_CONSTANT), s.warmup_steps = 3, s.warmup_start_factor = 0;
    cr_assert_neq(kn_lr_schedule_check(&s), KN_OK);
    cr_assert(strstr(kn_last_error(), "warmup_start_factor must be in (0, 1], got 0"), "%s",
              kn_last_error());
    s = kn_lr_schedule_defaults(KN_LR_CONSTANT), s.warmup_steps = -1;
    cr_assert_neq(kn_lr_schedule_check(&s), KN_OK);
    cr_assert(strstr(kn_last_error(), "warmup_steps"), "%s", kn_last_error());
    s = kn_lr_schedule_defaults(KN_LR_STEP), s.gamma = -1;
    cr_assert_neq(kn_lr_schedule_check(&s), KN_OK);
    cr_assert(strstr(kn_last_error(), "gamma"), "%s", kn_last_error());
}

/* ---- clipping ----------------------------------------------------------------------- */

static void check_clip(const char *name, double max_norm, float scale, float want_total,
                       const float *want)
{
    kn_scope_begin();
    float values[OPTIM_NUMEL];
    for (int i = 0; i < OPTIM_NUMEL; i++) values[i] = optim_grads[0][i] * scale;
    kn_tensor *p[NPARAMS];
    make_params(p, optim_init);
    kn_scope_begin();
    kn_tensor *loss = NULL;
    for (int i = 0; i < NPARAMS; i++) {
        kn_tensor *g = kn_from_floats(values + offsets[i], shapes[i], ndims[i]);
        kn_tensor *term = kn_sum_all(kn_mul(p[i], g));
        loss = loss ? kn_add(loss, term) : term;
    }
    cr_assert_eq(kn_backward(loss, NULL, false), KN_OK);
    kn_scope_end();
    double total = 0;
    cr_assert_eq(kn_clip_grad_norm(p, NPARAMS, max_norm, &total), KN_OK, "%s", kn_last_error());
    cr_assert(fabs(total - want_total) <= 1e-6 * want_total, "%s: total %.9g, torch %.9g", name,
              total, want_total);
    for (int i = 0; i < NPARAMS; i++) {
        char msg[256];
        cr_assert(kn_test_close(p[i]->grad, want + offsets[i], offsets[i + 1] - offsets[i], 1e-6,
                                1e-8, msg, sizeof msg),
                  "%s, gradient %d: %s", name, i, msg);
    }
    kn_scope_end();
}

/* The same table as CLIP_CASES in generate_optim.py. */
Test(optim, clip_grad_norm_matches_torch)
{
    check_clip("clip_active", 1.0, 1.0f, clip_active_total, clip_active_grads);
    check_clip("clip_inactive", 100.0, 1.0f, clip_inactive_total, clip_inactive_grads);
    check_clip("clip_tiny", 0.05, 3.0f, clip_tiny_total, clip_tiny_grads);
}

Test(optim, clip_and_finite_checks_handle_missing_and_bad_gradients)
{
    kn_scope_begin();
    kn_tensor *p[2];
    p[0] = kn_set_requires_grad(kn_zeros(KN_SHAPE(40), KN_FLOAT32), true);
    p[1] = kn_set_requires_grad(kn_zeros(KN_SHAPE(3), KN_FLOAT32), true);
    double total = -1;
    /* no gradients: norm 0, like torch's tensor(0.) */
    cr_assert_eq(kn_clip_grad_norm(p, 2, 1.0, &total), KN_OK);
    cr_assert_eq(total, 0);
    cr_assert(kn_grads_finite(p, 2));
    float g[40];
    for (int i = 0; i < 40; i++) g[i] = 3; /* norm 3 * sqrt(40) */
    kn_scope_begin();
    cr_assert_eq(
        kn_backward(kn_sum_all(kn_mul(p[0], kn_from_floats(g, KN_SHAPE(40)))), NULL, false), KN_OK);
    kn_scope_end();
    cr_assert_eq(kn_clip_grad_norm(p, 2, 1.0, &total), KN_OK);
    cr_assert(fabs(total - 3 * sqrt(40.0)) < 1e-5, "%g", total);
    cr_assert(fabs(kn_item(kn_sum_all(kn_mul(p[0]->grad, p[0]->grad))) - 1.0) < 1e-5);
    cr_assert(kn_grads_finite(p, 2));
    kn_zero_grad(p[0]);
    g[37] = INFINITY;
    kn_scope_begin();
    cr_assert_eq(
        kn_backward(kn_sum_all(kn_mul(p[0], kn_from_floats(g, KN_SHAPE(40)))), NULL, false), KN_OK);
    kn_scope_end();
    cr_assert(!kn_grads_finite(p, 2));
    cr_assert_eq(kn_clip_grad_norm(p, 2, 1.0, &total), KN_OK);
    cr_assert(isinf(total));
    g[37] = NAN;
    kn_zero_grad(p[0]);
    kn_scope_begin();
    cr_assert_eq(
        kn_backward(kn_sum_all(kn_mul(p[0], kn_from_floats(g, KN_SHAPE(40)))), NULL, false), KN_OK);
    kn_scope_end();
    cr_assert(!kn_grads_finite(p, 2));
    cr_assert_neq(kn_clip_grad_norm(p, 2, -1.0, NULL), KN_OK);
    cr_assert(strstr(kn_last_error(), "max_norm must be >= 0, got -1"), "%s", kn_last_error());
    kn_scope_end();
}

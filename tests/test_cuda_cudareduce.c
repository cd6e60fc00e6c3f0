/*
 * test_cuda_cudareduce.c — the CUDA reductions, softmax and losses (kernels/cuda/reduce.cu,
 * kernels/cuda/loss.cu) against the CPU on the same random inputs, forward and backward:
 * sum/mean/var over dims and all, max/min with indices (ties to the first index, NaN
 * winning), max_all/min_all, argmax, softmax/log_softmax over every dim, cross entropy
 * (ignore_index, label smoothing, [N, C, d] inputs), nll, mse and bce with logits under
 * each reduction. Without a device these tests skip, saying why; what runs everywhere
 * checks that these ops accept CUDA tensors only where CUDA is available.
 *
 * Tolerances: sums, means, variances rtol 1e-5 (atol 1e-5; both total in double, in
 * another order); max/min exact, indices equal; softmax, log_softmax and the losses
 * rtol 1e-4 (atol 1e-5): the CPU uses a polynomial exp, CUDA expf.
 */
#include "kn_internal.h"
#include "kn_test.h"
#include "kn_test_cuda.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- everywhere ---------------------------------------------------------------------- */

Test(cuda_reduce, ops_fail_cleanly_naming_the_op_without_a_device)
{
    if (kn_cuda_device_count() > 0) cr_skip_test("a CUDA device is present");
    kn_scope_begin();
    kn_tensor *b = kn_test_fake_cuda(kn_ones(KN_SHAPE(2, 3), KN_FLOAT32));
    kn_tensor *t = kn_test_fake_cuda(kn_zeros(KN_SHAPE(2), KN_INT64));
    struct {
        const char *name;
        kn_tensor *result;
    } cases[] = {
        {"softmax", kn_softmax(b, 1)},
        {"log_softmax", kn_log_softmax(b, 0)},
        {"sum", kn_sum_all(b)},
        {"mean", kn_mean(b, (int[]){1}, 1, false)},
        {"var", kn_var(b, (int[]){0}, 1, 1, true)},
        {"max", kn_max(b, 1, false, NULL)},
        {"min", kn_min_all(b)},
        {"argmax", kn_argmax(b, 0, false)},
        {"mse_loss", kn_mse_loss(b, b, KN_REDUCTION_MEAN)},
        {"binary_cross_entropy_with_logits",
         kn_binary_cross_entropy_with_logits(b, b, KN_REDUCTION_SUM)},
        {"cross_entropy", kn_cross_entropy(b, t, KN_REDUCTION_MEAN, -100, 0.0)},
        {"nll_loss", kn_nll_loss(b, t, KN_REDUCTION_MEAN, -100)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_null(cases[i].result, "%s accepted an unavailable device", cases[i].name);
    }
    /* the message names the op and the device */
    cr_assert_null(kn_log_softmax(b, 1));
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE);
    cr_assert(strncmp(kn_last_error(), "log_softmax: device cuda:0 is not available", 43) == 0,
              "%s", kn_last_error());
    cr_assert_null(kn_cross_entropy(b, t, KN_REDUCTION_MEAN, -100, 0.0));
    cr_assert(strncmp(kn_last_error(), "cross_entropy: ", 15) == 0, "%s", kn_last_error());
    /* a cpu target next to cuda logits: both devices named */
    cr_assert_null(
        kn_cross_entropy(b, kn_zeros(KN_SHAPE(2), KN_INT64), KN_REDUCTION_MEAN, -100, 0.0));
    cr_assert(strstr(kn_last_error(), "cpu") && strstr(kn_last_error(), "cuda:0"), "%s",
              kn_last_error());
    kn_scope_end();
}

/* ---- with a device ------------------------------------------------------------------- */

static void assert_same_indices(const char *what, kn_tensor *cpu, kn_tensor *gpu)
{
    cr_assert_not_null(gpu, "%s (cuda): %s", what, kn_last_error());
    kn_tensor *back = kn_to(gpu, kn_cpu());
    cr_assert_not_null(back, "%s: %s", what, kn_last_error());
    cr_assert(kn__same_shape(cpu, back), "%s: index shapes differ", what);
    const int64_t *a = kn_data_i64(cpu), *b = kn_data_i64(back);
    for (int64_t i = 0; i < kn_numel(cpu); i++)
        cr_assert_eq(a[i], b[i], "%s: index %lld is %lld on the cpu and %lld on cuda", what,
                     (long long)i, (long long)a[i], (long long)b[i]);
}

typedef kn_tensor *(*op_fn)(kn_tensor *x, void *arg);

/* f(x) on both devices, then the gradient of sum(f(x) * w) for a random w: outputs and
 * input gradients compared. */
static void check_op(const char *what, op_fn f, void *arg, kn_tensor *host, double rtol,
                     double atol)
{
    kn_scope_begin();
    kn_tensor *xc = kn_set_requires_grad(kn_clone(host), true);
    kn_tensor *xg = kn_set_requires_grad(kn_to(host, kn_test_cuda0), true);
    cr_assert_not_null(xg, "%s", kn_last_error());
    kn_tensor *yc = f(xc, arg), *yg = f(xg, arg);
    kn_test_assert_close_cuda(what, yc, yg, rtol, atol);
    kn_tensor *w = kn_test_randn(yc->shape, yc->ndim, 99);
    kn_tensor *lc = kn_sum_all(kn_mul(yc, w));
    kn_tensor *lg = kn_sum_all(kn_mul(yg, kn_to(w, kn_test_cuda0)));
    cr_assert_not_null(lg, "%s backward: %s", what, kn_last_error());
    cr_assert_eq(kn_backward(lc, NULL, false), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_backward(lg, NULL, false), KN_OK, "%s: %s", what, kn_last_error());
    char name[128];
    snprintf(name, sizeof name, "%s backward", what);
    kn_test_assert_close_cuda(name, kn_grad(xc), kn_grad(xg), rtol, atol);
    kn_scope_end();
}

typedef struct dims_arg {
    int dims[4];
    int ndims;
    bool keepdim;
    int correction;
} dims_arg;

static kn_tensor *do_sum(kn_tensor *x, void *arg)
{
    dims_arg *a = arg;
    return kn_sum(x, a->dims, a->ndims, a->keepdim);
}
static kn_tensor *do_mean(kn_tensor *x, void *arg)
{
    dims_arg *a = arg;
    return kn_mean(x, a->dims, a->ndims, a->keepdim);
}
static kn_tensor *do_var(kn_tensor *x, void *arg)
{
    dims_arg *a = arg;
    return kn_var(x, a->dims, a->ndims, a->correction, a->keepdim);
}
static kn_tensor *do_transposed_sum(kn_tensor *x, void *arg)
{
    return do_sum(kn_transpose(x, 0, 2), arg);
}

Test(cuda_reduce, sum_mean_var_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *x = kn_test_randn(KN_SHAPE(5, 37, 9), 1);
    dims_arg cases[] = {
        {{1}, 1, false, 0},     {{0, 2}, 2, true, 1},
        {{2}, 1, false, 1},     {{0}, 0, false, 0}, /* all */
        {{-1, 0}, 2, false, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_op("sum", do_sum, &cases[i], x, 1e-5, 1e-5);
        check_op("mean", do_mean, &cases[i], x, 1e-5, 1e-5);
        check_op("var", do_var, &cases[i], x, 1e-5, 1e-5);
        check_op("sum of a transposed view", do_transposed_sum, &cases[i], x, 1e-5, 1e-5);
    }
    /* long rows and few of them; a long column reduction */
    dims_arg last = {{1}, 1, false, 1}, first = {{0}, 1, false, 1};
    kn_tensor *wide = kn_test_randn(KN_SHAPE(3, 300001), 2);
    check_op("sum of long rows", do_sum, &last, wide, 1e-5, 1e-4);
    check_op("var of long rows", do_var, &last, wide, 1e-5, 1e-5);
    kn_tensor *tall = kn_test_randn(KN_SHAPE(20001, 70), 3);
    check_op("mean of long columns", do_mean, &first, tall, 1e-5, 1e-5);
    /* empty reductions: 0 for sum, NaN for mean and var */
    kn_tensor *empty = kn_zeros(KN_SHAPE(4, 0), KN_FLOAT32);
    kn_tensor *eg = kn_to(empty, kn_test_cuda0);
    kn_test_assert_close_cuda("empty sum", kn_sum(empty, (int[]){1}, 1, false),
                              kn_sum(eg, (int[]){1}, 1, false), 0, 0);
    kn_test_assert_close_cuda("empty mean", kn_mean(empty, (int[]){1}, 1, false),
                              kn_mean(eg, (int[]){1}, 1, false), 0, 0);
    kn_test_assert_close_cuda("empty var", kn_var(empty, (int[]){1}, 1, 1, false),
                              kn_var(eg, (int[]){1}, 1, 1, false), 0, 0);
    kn_scope_end();
}

/* Exact answers, not the CPU's: a block reduction of 256 threads (8 warps) must count
 * each warp's partial once. Sums of ones over a row (block per row), a whole loss, and
 * max_all backward sharing among ties (a count of matches). */
Test(cuda_reduce, block_reductions_count_every_element_once)
{
    kn_test_need_cuda();
    kn_scope_begin();
    const int64_t n = 1000;
    kn_tensor *ones = kn_to(kn_ones(&n, 1, KN_FLOAT32), kn_test_cuda0);
    cr_assert_not_null(ones, "%s", kn_last_error());
    cr_assert_float_eq(kn_item(kn_sum_all(ones)), 1000.f, 0, "sum of 1000 ones: %g",
                       kn_item(kn_sum_all(ones)));
    cr_assert_float_eq(kn_item(kn_mean_all(ones)), 1.f, 0);
    cr_assert_float_eq(kn_item(kn_var(ones, (int[]){0}, 1, 1, false)), 0.f, 0);
    kn_tensor *rows = kn_to(kn_ones(KN_SHAPE(3, 70000), KN_FLOAT32), kn_test_cuda0);
    kn_tensor *row_sums = kn_to(kn_sum(rows, (int[]){1}, 1, false), kn_cpu());
    cr_assert_not_null(row_sums, "%s", kn_last_error());
    for (int i = 0; i < 3; i++) cr_assert_float_eq(kn_data_f32(row_sums)[i], 70000.f, 0);
    kn_tensor *zero = kn_to(kn_zeros(&n, 1, KN_FLOAT32), kn_test_cuda0);
    cr_assert_float_eq(kn_item(kn_mse_loss(ones, zero, KN_REDUCTION_SUM)), 1000.f, 0);
    cr_assert_float_eq(kn_item(kn_mse_loss(ones, zero, KN_REDUCTION_MEAN)), 1.f, 0);
    /* every element ties for the max: each gets 1/1000 of the gradient */
    kn_tensor *leaf = kn_set_requires_grad(kn_clone(ones), true);
    cr_assert_eq(kn_backward(kn_max_all(leaf), NULL, false), KN_OK, "%s", kn_last_error());
    kn_tensor *g = kn_to(kn_grad(leaf), kn_cpu());
    cr_assert_not_null(g, "%s", kn_last_error());
    for (int64_t i = 0; i < n; i++)
        cr_assert_float_eq(kn_data_f32(g)[i], 1.f / 1000.f, 0, "element %lld: %g", (long long)i,
                           kn_data_f32(g)[i]);
    kn_scope_end();
}

/* Values with many ties and a few NaNs. */
static kn_tensor *tied(const int64_t *shape, int ndim, bool nans)
{
    kn_tensor *x = kn_test_randn(shape, ndim, 7);
    float *d = kn_data_f32(x);
    for (int64_t i = 0; i < kn_numel(x); i++) d[i] = floorf(d[i] * 2.f);
    if (nans)
        for (int64_t i = 13; i < kn_numel(x); i += 97) d[i] = NAN;
    return x;
}

static void check_select(const char *what, kn_tensor *x, int dim, bool keepdim)
{
    kn_tensor *xg = kn_to(x, kn_test_cuda0);
    for (int is_min = 0; is_min < 2; is_min++) {
        kn_tensor *ic, *ig;
        kn_tensor *vc = is_min ? kn_min(x, dim, keepdim, &ic) : kn_max(x, dim, keepdim, &ic);
        kn_tensor *vg = is_min ? kn_min(xg, dim, keepdim, &ig) : kn_max(xg, dim, keepdim, &ig);
        kn_test_assert_close_cuda(what, vc, vg, 0, 0);
        assert_same_indices(what, ic, ig);
        kn_test_assert_close_cuda(is_min ? "min_all" : "max_all",
                                  is_min ? kn_min_all(x) : kn_max_all(x),
                                  is_min ? kn_min_all(xg) : kn_max_all(xg), 0, 0);
    }
    assert_same_indices("argmax", kn_argmax(x, dim, keepdim), kn_argmax(xg, dim, keepdim));
}

typedef struct select_arg {
    int dim;
    bool is_min, all;
} select_arg;

static kn_tensor *do_select(kn_tensor *x, void *arg)
{
    select_arg *a = arg;
    if (a->all) return a->is_min ? kn_min_all(x) : kn_max_all(x);
    return a->is_min ? kn_min(x, a->dim, false, NULL) : kn_max(x, a->dim, false, NULL);
}

Test(cuda_reduce, max_min_argmax_match_the_cpu_with_ties_and_nans)
{
    kn_test_need_cuda();
    kn_scope_begin();
    for (int nans = 0; nans < 2; nans++) {
        kn_tensor *x = tied(KN_SHAPE(6, 33, 11), nans);
        for (int dim = 0; dim < 3; dim++) check_select("max/min", x, dim, dim == 1);
        check_select("max/min of long rows", tied(KN_SHAPE(2, 100003), nans), 1, false);
    }
    kn_tensor *x = tied(KN_SHAPE(6, 33, 11), false);
    for (int dim = 0; dim < 3; dim++)
        for (int is_min = 0; is_min < 2; is_min++) {
            select_arg a = {dim, is_min, false};
            check_op("max/min backward", do_select, &a, x, 0, 0);
        }
    select_arg all = {0, false, true};
    check_op("max_all backward (ties share)", do_select, &all, x, 1e-6, 0);
    kn_scope_end();
}

static kn_tensor *do_softmax(kn_tensor *x, void *arg)
{
    int dim = *(int *)arg;
    return dim >= 0 ? kn_softmax(x, dim) : kn_log_softmax(x, -dim - 1);
}

Test(cuda_reduce, softmax_and_log_softmax_match_the_cpu_on_every_dim)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *x = kn_mul_scalar(kn_test_randn(KN_SHAPE(4, 19, 7), 11), 3.0);
    for (int dim = 0; dim < 3; dim++) {
        int log_dim = -dim - 1;
        check_op("softmax", do_softmax, &dim, x, 1e-4, 1e-6);
        check_op("log_softmax", do_softmax, &log_dim, x, 1e-4, 1e-5);
    }
    int last = 1, log_last = -2;
    kn_tensor *wide = kn_mul_scalar(kn_test_randn(KN_SHAPE(3, 5000), 12), 10.0); /* block per row */
    check_op("softmax of long rows", do_softmax, &last, wide, 1e-4, 1e-6);
    check_op("log_softmax of long rows", do_softmax, &log_last, wide, 1e-4, 1e-4);
    /* a row of -inf gives NaN on both */
    kn_tensor *inf = kn_full(KN_SHAPE(2, 3), -INFINITY, KN_FLOAT32);
    kn_test_assert_close_cuda("softmax of -inf", kn_softmax(inf, 1),
                              kn_softmax(kn_to(inf, kn_test_cuda0), 1), 0, 0);
    kn_scope_end();
}

typedef struct loss_arg {
    int kind; /* 0 ce, 1 nll (on log_softmax), 2 mse, 3 bce */
    kn_reduction reduction;
    int64_t ignore;
    double smoothing;
    kn_tensor *target_cpu, *target_gpu;
} loss_arg;

static kn_tensor *do_loss(kn_tensor *x, void *arg)
{
    loss_arg *a = arg;
    kn_tensor *t = x->device.type == KN_DEVICE_CUDA ? a->target_gpu : a->target_cpu;
    switch (a->kind) {
    case 0:
        return kn_cross_entropy(x, t, a->reduction, a->ignore, a->smoothing);
    case 1:
        return kn_nll_loss(kn_log_softmax(x, x->ndim > 1 ? 1 : 0), t, a->reduction, a->ignore);
    case 2:
        return kn_mse_loss(x, t, a->reduction);
    default:
        return kn_binary_cross_entropy_with_logits(x, t, a->reduction);
    }
}

/* class targets in [0, c) with every fifth one ignore_index */
static kn_tensor *class_targets(const int64_t *shape, int ndim, int64_t c, int64_t ignore)
{
    kn_tensor *t = kn_zeros(shape, ndim, KN_INT64);
    int64_t *d = kn_data_i64(t);
    for (int64_t i = 0; i < kn_numel(t); i++) d[i] = i % 5 == 4 ? ignore : (i * 7 + 3) % c;
    return t;
}

Test(cuda_reduce, losses_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_reduction reductions[] = {KN_REDUCTION_MEAN, KN_REDUCTION_SUM, KN_REDUCTION_NONE};
    struct {
        int64_t shape[3];
        int ndim;
        int64_t c;
    } shapes[] = {{{64, 10}, 2, 10}, {{6, 5, 13}, 3, 5}, {{3, 1500}, 2, 1500}, {{7}, 1, 7}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        kn_tensor *x = kn_mul_scalar(kn_test_randn(shapes[k].shape, shapes[k].ndim, 20 + k), 2.0);
        int64_t tshape[2];
        int tndim = 0;
        if (shapes[k].ndim >= 2) tshape[tndim++] = shapes[k].shape[0];
        if (shapes[k].ndim == 3) tshape[tndim++] = shapes[k].shape[2];
        kn_tensor *t = class_targets(tshape, tndim, shapes[k].c, -100);
        if (shapes[k].ndim == 1) kn_data_i64(t)[0] = 3;
        for (int r = 0; r < 3; r++)
            for (int kind = 0; kind < 2; kind++)
                for (int s = 0; s < 2; s++) {
                    if (kind == 1 && s == 1) continue;
                    loss_arg a = {kind, reductions[r],          -100, s ? 0.1 : 0.0,
                                  t,    kn_to(t, kn_test_cuda0)};
                    check_op(kind ? "nll_loss" : "cross_entropy", do_loss, &a, x, 1e-4, 1e-5);
                }
    }
    /* every target ignored: a mean of 0 / 0 is NaN on both */
    kn_tensor *x = kn_test_randn(KN_SHAPE(4, 3), 30);
    kn_tensor *all = kn_full(KN_SHAPE(4), -100, KN_INT64);
    kn_test_assert_close_cuda("cross_entropy all ignored",
                              kn_cross_entropy(x, all, KN_REDUCTION_MEAN, -100, 0.0),
                              kn_cross_entropy(kn_to(x, kn_test_cuda0), kn_to(all, kn_test_cuda0),
                                               KN_REDUCTION_MEAN, -100, 0.0),
                              0, 0);
    /* an out-of-range target is the same error */
    kn_tensor *bad = kn_from_int64s((int64_t[]){0, 1, 9, 2}, KN_SHAPE(4));
    cr_assert_null(kn_cross_entropy(kn_to(x, kn_test_cuda0), kn_to(bad, kn_test_cuda0),
                                    KN_REDUCTION_MEAN, -100, 0.0));
    cr_assert(strstr(kn_last_error(), "target 9 is out of bounds for 3 classes"), "%s",
              kn_last_error());
    /* a NaN logit makes its loss NaN (only there: the other rows' losses come from
     * different exps, so they get the losses' tolerance, not an exact match) */
    kn_tensor *nan = kn_clone(x);
    kn_data_f32(nan)[4] = NAN;
    kn_tensor *t = kn_from_int64s((int64_t[]){0, 1, 2, 0}, KN_SHAPE(4));
    kn_test_assert_close_cuda("cross_entropy with a NaN logit",
                              kn_cross_entropy(nan, t, KN_REDUCTION_NONE, -100, 0.0),
                              kn_cross_entropy(kn_to(nan, kn_test_cuda0), kn_to(t, kn_test_cuda0),
                                               KN_REDUCTION_NONE, -100, 0.0),
                              1e-4, 1e-5);
    /* mse and bce with logits */
    kn_tensor *p = kn_mul_scalar(kn_test_randn(KN_SHAPE(9, 31), 40), 4.0);
    kn_tensor *target = kn_sigmoid(kn_test_randn(KN_SHAPE(9, 31), 41));
    for (int r = 0; r < 3; r++)
        for (int kind = 2; kind < 4; kind++) {
            loss_arg a = {kind, reductions[r], 0, 0.0, target, kn_to(target, kn_test_cuda0)};
            check_op(kind == 2 ? "mse_loss" : "bce_with_logits", do_loss, &a, p, 1e-4, 1e-5);
        }
    kn_scope_end();
}

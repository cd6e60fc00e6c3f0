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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* ---- the parallel sums: sum_to, whole-tensor sums and maxes ------------------------------
 * sum_to (every broadcast backward: conv and linear bias gradients) runs a group or a
 * thread per output and cuts few outputs into chunks; sum_all, max_all and whole losses
 * cut their one output into chunks joined by a second kernel. Integer values in [-8, 8]
 * make every partial exact in float and double, so there the CPU and CUDA agree to the
 * bit in any order; normal values get the sums' tolerance. No float atomics anywhere, so
 * a second run gives the same bits. */

static kn_tensor *small_ints(const int64_t *shape, int ndim, uint64_t seed)
{
    kn_tensor *x = kn_test_randn(shape, ndim, seed);
    float *d = kn_data_f32(x);
    for (int64_t i = 0; i < kn_numel(x); i++) d[i] = fminf(8.f, fmaxf(-8.f, floorf(d[i] * 3.f)));
    return x;
}

static void assert_same_bits(const char *what, kn_tensor *a, kn_tensor *b)
{
    cr_assert_not_null(a, "%s: %s", what, kn_last_error());
    cr_assert_not_null(b, "%s (again): %s", what, kn_last_error());
    int64_t n = kn_numel(a);
    cr_assert_eq(n, kn_numel(b), "%s: sizes differ", what);
    float *x = malloc(sizeof(float) * (size_t)(n ? n : 1)),
          *y = malloc(sizeof(float) * (size_t)(n ? n : 1));
    cr_assert_eq(kn_copy_to_floats(a, x), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_copy_to_floats(b, y), KN_OK, "%s", kn_last_error());
    cr_assert(memcmp(x, y, sizeof(float) * (size_t)n) == 0, "%s: two runs differ", what);
    free(x);
    free(y);
}

/* g (a CPU tensor, or view of one) summed to shape on both devices by kn__sum_to_shape,
 * as a backward does; view() makes the same view of the CUDA copy (NULL: none). */
typedef kn_tensor *(*view_fn)(kn_tensor *t);

static void check_sum_to(const char *what, kn_tensor *host, view_fn view, const int64_t *shape,
                         int ndim, double rtol, double atol)
{
    kn_scope_begin();
    kn_tensor *dev = kn_to(host, kn_test_cuda0);
    cr_assert_not_null(dev, "%s: %s", what, kn_last_error());
    kn_tensor *gc = view ? view(host) : host, *gg = view ? view(dev) : dev;
    kn_tensor *c = kn__sum_to_shape(gc, shape, ndim);
    kn_tensor *g = kn__sum_to_shape(gg, shape, ndim);
    kn_test_assert_close_cuda(what, c, g, rtol, atol);
    assert_same_bits(what, g, kn__sum_to_shape(gg, shape, ndim));
    kn_scope_end();
}

static kn_tensor *channels_last(kn_tensor *t) /* [N, H, W, C] storage read as [N, C, H, W] */
{
    return kn_permute(t, (int[]){0, 3, 1, 2}, 4);
}
static kn_tensor *swap01(kn_tensor *t)
{
    return kn_transpose(t, 0, 1);
}
static kn_tensor *expand_middle(kn_tensor *t) /* [6, 1, 7] read as [6, 50, 7]: stride 0 */
{
    return kn_expand(t, KN_SHAPE(6, 50, 7));
}

Test(cuda_reduce, sum_to_matches_the_cpu_for_every_layout)
{
    kn_test_need_cuda();
    kn_scope_begin();
    int64_t none[1] = {0};
    struct {
        const char *what;
        int64_t shape[4];
        int ndim;
        int64_t to[4];
        int to_ndim;
        view_fn view;
        double atol; /* for normal values */
    } cases[] = {
        {"conv bias [64,16,28,28] -> [1,16,1,1]",
         {64, 16, 28, 28},
         4,
         {1, 16, 1, 1},
         4,
         NULL,
         1e-4},
        {"conv bias, channels last", {64, 28, 28, 16}, 4, {1, 16, 1, 1}, 4, channels_last, 1e-4},
        {"second conv bias [64,32,14,14]", {64, 32, 14, 14}, 4, {32, 1, 1}, 3, NULL, 1e-4},
        {"linear bias [64,128] -> [128]", {64, 128}, 2, {128}, 1, NULL, 1e-5},
        {"linear bias [8192,10] -> [10]", {8192, 10}, 2, {10}, 1, NULL, 1e-4},
        {"leading dims dropped [2,64,128] -> [128]", {2, 64, 128}, 3, {128}, 1, NULL, 1e-5},
        {"rows [1000,64] -> [1000,1]", {1000, 64}, 2, {1000, 1}, 2, NULL, 1e-5},
        {"everything [1,1000000] -> []", {1, 1000000}, 2, {0}, 0, NULL, 1e-3},
        {"nothing [3,1] -> [3,1]", {3, 1}, 2, {3, 1}, 2, NULL, 0},
        {"middle dim [4,300,5] -> [4,1,5]", {4, 300, 5}, 3, {4, 1, 5}, 3, NULL, 1e-5},
        {"outer dims [4,300,5] -> [300,1]", {4, 300, 5}, 3, {300, 1}, 2, NULL, 1e-5},
        {"transposed [50,64,9] -> [1,50,9]", {50, 64, 9}, 3, {1, 50, 9}, 3, swap01, 1e-5},
        {"transposed [50,64,9] -> [64,1,1]", {50, 64, 9}, 3, {64, 1, 1}, 3, swap01, 1e-5},
        {"broadcast input [6,50,7] -> [1,50,1]", {6, 1, 7}, 3, {1, 50, 1}, 3, expand_middle, 1e-5},
        {"broadcast input [6,50,7] -> [6,1,7]", {6, 1, 7}, 3, {6, 1, 7}, 3, expand_middle, 1e-5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int64_t *to = cases[i].to_ndim ? cases[i].to : none;
        char what[160];
        snprintf(what, sizeof what, "%s (integers)", cases[i].what);
        check_sum_to(what, small_ints(cases[i].shape, cases[i].ndim, 50 + i), cases[i].view, to,
                     cases[i].to_ndim, 0, 0);
        check_sum_to(cases[i].what, kn_test_randn(cases[i].shape, cases[i].ndim, 70 + i),
                     cases[i].view, to, cases[i].to_ndim, 1e-5, cases[i].atol);
    }
    /* an empty gradient sums to zeros */
    check_sum_to("empty [0,5] -> [5]", kn_zeros(KN_SHAPE(0, 5), KN_FLOAT32), NULL, (int64_t[]){5},
                 1, 0, 0);
    /* through autograd: the bias of a broadcast add gets the summed gradient */
    kn_tensor *x = kn_test_randn(KN_SHAPE(64, 16, 28, 28), 90);
    kn_tensor *b = kn_test_randn(KN_SHAPE(1, 16, 1, 1), 91);
    kn_tensor *w = kn_test_randn(KN_SHAPE(64, 16, 28, 28), 92);
    kn_tensor *bc = kn_set_requires_grad(kn_clone(b), true);
    kn_tensor *bg = kn_set_requires_grad(kn_to(b, kn_test_cuda0), true);
    cr_assert_eq(kn_backward(kn_sum_all(kn_mul(kn_add(x, bc), w)), NULL, false), KN_OK, "%s",
                 kn_last_error());
    cr_assert_eq(kn_backward(kn_sum_all(kn_mul(kn_add(kn_to(x, kn_test_cuda0), bg),
                                               kn_to(w, kn_test_cuda0))),
                             NULL, false),
                 KN_OK, "%s", kn_last_error());
    kn_test_assert_close_cuda("bias gradient of a broadcast add", kn_grad(bc), kn_grad(bg), 1e-5,
                              1e-4);
    kn_scope_end();
}

Test(cuda_reduce, whole_tensor_sum_and_max_match_the_cpu_at_every_size)
{
    kn_test_need_cuda();
    const int64_t sizes[] = {1, 255, 256, 257, 1000000, 10000003};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        kn_scope_begin();
        int64_t n = sizes[i];
        char what[96];
        /* exact: integers; ties for the max everywhere, so the first index must win */
        kn_tensor *xi = small_ints(&n, 1, 200 + i), *gi = kn_to(xi, kn_test_cuda0);
        cr_assert_not_null(gi, "%s", kn_last_error());
        snprintf(what, sizeof what, "sum_all of %lld integers", (long long)n);
        kn_test_assert_close_cuda(what, kn_sum_all(xi), kn_sum_all(gi), 0, 0);
        assert_same_bits(what, kn_sum_all(gi), kn_sum_all(gi));
        snprintf(what, sizeof what, "mean_all of %lld integers", (long long)n);
        kn_test_assert_close_cuda(what, kn_mean_all(xi), kn_mean_all(gi), 0, 0);
        snprintf(what, sizeof what, "max_all of %lld integers", (long long)n);
        kn_test_assert_close_cuda(what, kn_max_all(xi), kn_max_all(gi), 0, 0);
        snprintf(what, sizeof what, "min_all of %lld integers", (long long)n);
        kn_test_assert_close_cuda(what, kn_min_all(xi), kn_min_all(gi), 0, 0);
        snprintf(what, sizeof what, "argmax of %lld integers", (long long)n);
        assert_same_indices(what, kn_argmax(xi, 0, false), kn_argmax(gi, 0, false));

        /* normal values: the sums' tolerance (both total in double, in another order) */
        kn_tensor *xr = kn_test_randn(&n, 1, 300 + i), *gr = kn_to(xr, kn_test_cuda0);
        snprintf(what, sizeof what, "sum_all of %lld normals", (long long)n);
        kn_test_assert_close_cuda(what, kn_sum_all(xr), kn_sum_all(gr), 1e-5, 1e-3);
        assert_same_bits(what, kn_sum_all(gr), kn_sum_all(gr));
        snprintf(what, sizeof what, "var of %lld normals", (long long)n);
        if (n > 1)
            kn_test_assert_close_cuda(what, kn_var(xr, (int[]){0}, 1, 1, false),
                                      kn_var(gr, (int[]){0}, 1, 1, false), 1e-5, 1e-5);
        snprintf(what, sizeof what, "max_all of %lld normals", (long long)n);
        kn_test_assert_close_cuda(what, kn_max_all(xr), kn_max_all(gr), 0, 0);
        snprintf(what, sizeof what, "mse_loss mean over %lld", (long long)n);
        kn_tensor *zc = kn_zeros(&n, 1, KN_FLOAT32), *zg = kn_to(zc, kn_test_cuda0);
        kn_test_assert_close_cuda(what, kn_mse_loss(xr, zc, KN_REDUCTION_MEAN),
                                  kn_mse_loss(gr, zg, KN_REDUCTION_MEAN), 1e-4, 1e-5);

        /* NaNs: the sum is NaN, the max is NaN and the first NaN's index wins */
        if (n > 2) {
            kn_tensor *xn = kn_clone(xi);
            kn_data_f32(xn)[n / 2] = NAN;
            kn_data_f32(xn)[n - 1] = NAN;
            kn_tensor *gn = kn_to(xn, kn_test_cuda0);
            snprintf(what, sizeof what, "sum_all of %lld with NaNs", (long long)n);
            kn_test_assert_close_cuda(what, kn_sum_all(xn), kn_sum_all(gn), 0, 0);
            snprintf(what, sizeof what, "max_all of %lld with NaNs", (long long)n);
            kn_test_assert_close_cuda(what, kn_max_all(xn), kn_max_all(gn), 0, 0);
            kn_test_assert_close_cuda(what, kn_min_all(xn), kn_min_all(gn), 0, 0);
            snprintf(what, sizeof what, "argmax of %lld with NaNs", (long long)n);
            assert_same_indices(what, kn_argmax(xn, 0, false), kn_argmax(gn, 0, false));
        }
        /* a 2-D tensor reduced whole goes the same way */
        if (n == 1000000) {
            kn_tensor *x2 = kn_reshape(xr, KN_SHAPE(1000, 1000));
            kn_test_assert_close_cuda("sum_all of [1000,1000]", kn_sum_all(x2),
                                      kn_sum_all(kn_to(x2, kn_test_cuda0)), 1e-5, 1e-3);
            kn_test_assert_close_cuda(
                "sum_all of a transposed [1000,1000]", kn_sum_all(kn_transpose(x2, 0, 1)),
                kn_sum_all(kn_transpose(kn_to(x2, kn_test_cuda0), 0, 1)), 1e-5, 1e-3);
        }
        kn_scope_end();
    }
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Not a check: how long the sums a training step leans on take, on stderr (run the
 * binary itself to see it). */
Test(cuda_reduce, sum_timings)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *g = kn_to(kn_test_randn(KN_SHAPE(64, 16, 28, 28), 400), kn_test_cuda0);
    kn_tensor *big = kn_to(kn_test_randn(KN_SHAPE(10000003), 401), kn_test_cuda0);
    cr_assert_not_null(big, "%s", kn_last_error());
    struct {
        const char *what;
        int kind;
    } runs[] = {{"sum_to [64,16,28,28] -> [1,16,1,1]", 0},
                {"sum_all of 10^7 + 3", 1},
                {"max_all of 10^7 + 3", 2}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        double best = 1e30;
        for (int rep = 0; rep < 20; rep++) {
            kn_scope_begin();
            cr_assert_eq(kn_cuda_synchronize(0), KN_OK, "%s", kn_last_error());
            double t0 = seconds_now();
            kn_tensor *y = runs[r].kind == 0   ? kn__sum_to_shape(g, KN_SHAPE(1, 16, 1, 1))
                           : runs[r].kind == 1 ? kn_sum_all(big)
                                               : kn_max_all(big);
            cr_assert_not_null(y, "%s: %s", runs[r].what, kn_last_error());
            cr_assert_eq(kn_cuda_synchronize(0), KN_OK, "%s", kn_last_error());
            double t = seconds_now() - t0;
            if (t < best) best = t;
            kn_scope_end();
        }
        fprintf(stderr, "timing: %s: %.1f us (best of 20, with the launch)\n", runs[r].what,
                best * 1e6);
    }
    kn_scope_end();
}

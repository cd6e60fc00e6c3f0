/*
 * test_cuda_linear.c — TF32 as an opt-in and linear on CUDA through cublasLt.
 *
 * Everywhere: kn_set_allow_tf32 is off by default, per thread, and a thread's choice
 * leaves the others' alone. With a device (else the tests skip, saying why): a 1024³
 * matmul in fp32 matches the CPU (relative Frobenius error <= 1e-5) and with TF32
 * differs from it by a TF32-sized error (1e-5 to 1e-2), likewise linear's cublasLt
 * path; linear forward and backward on CUDA match the CPU within rtol 1e-4 with and
 * without a bias, for shapes that are not multiples of 4, 8 or 16, a batch of 1,
 * 1-D and 3-D inputs and a transposed weight.
 */
#include "kn_internal.h"
#include "kn_test_cuda.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

/* ---- everywhere ---------------------------------------------------------------------- */

typedef struct thread_view {
    bool seen_at_start, seen_after_set;
} thread_view;

static void *other_thread(void *arg)
{
    thread_view *v = arg;
    v->seen_at_start = kn_get_allow_tf32();
    kn_set_allow_tf32(!v->seen_at_start);
    v->seen_after_set = kn_get_allow_tf32();
    return NULL;
}

Test(tf32, off_by_default_per_thread_and_restorable)
{
    cr_assert_not(kn_get_allow_tf32(), "TF32 is opt-in, as torch.backends.cuda.matmul");
    bool before = kn_get_allow_tf32();
    kn_set_allow_tf32(true);
    cr_assert(kn_get_allow_tf32());

    /* a new thread starts from the default, not from this thread's choice, and what it
     * sets stays its own */
    thread_view v = {0};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, other_thread, &v), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_not(v.seen_at_start, "a new thread inherited TF32 from its creator");
    cr_assert(v.seen_after_set);
    cr_assert(kn_get_allow_tf32(), "another thread's setting changed this thread's");

    kn_set_allow_tf32(before); /* what the CLI and kilnd's job runner do after a job */
    cr_assert_not(kn_get_allow_tf32());

    /* the CPU ignores it: the same product either way */
    kn_scope_begin();
    kn_tensor *a = kn_test_randn(KN_SHAPE(33, 65), 1), *b = kn_test_randn(KN_SHAPE(65, 17), 2);
    kn_tensor *plain = kn_matmul(a, b);
    kn_set_allow_tf32(true);
    kn_tensor *with = kn_matmul(a, b);
    kn_set_allow_tf32(before);
    cr_assert(plain && with);
    const float *p = kn_data_f32(plain), *w = kn_data_f32(with);
    for (int64_t i = 0; i < kn_numel(plain); i++)
        cr_assert_eq(p[i], w[i], "element %lld", (long long)i);
    kn_scope_end();
}

/* ---- with a device ------------------------------------------------------------------- */

/* ||got - ref||_F / ||ref||_F, with got copied to the CPU. */
static double relative_error(kn_tensor *ref, kn_tensor *got)
{
    cr_assert_not_null(got, "%s", kn_last_error());
    kn_tensor *host = kn_contiguous(kn_to(got, kn_cpu()));
    kn_tensor *r = kn_contiguous(ref);
    cr_assert_not_null(host, "%s", kn_last_error());
    cr_assert_eq(kn_numel(host), kn_numel(r));
    const float *x = kn_data_f32(r), *y = kn_data_f32(host);
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < kn_numel(r); i++) {
        double d = (double)y[i] - (double)x[i];
        diff += d * d;
        norm += (double)x[i] * (double)x[i];
    }
    return sqrt(diff) / sqrt(norm);
}

Test(cuda_tf32, matmul_1024_is_fp32_unless_tf32_is_allowed)
{
    kn_test_need_cuda();
    bool before = kn_get_allow_tf32();
    kn_scope_begin();
    kn_tensor *a = kn_test_randn(KN_SHAPE(1024, 1024), 11);
    kn_tensor *b = kn_test_randn(KN_SHAPE(1024, 1024), 12);
    kn_tensor *cpu = kn_matmul(a, b);
    kn_tensor *ga = kn_to(a, kn_test_cuda0), *gb = kn_to(b, kn_test_cuda0);
    cr_assert(cpu && ga && gb, "%s", kn_last_error());

    kn_set_allow_tf32(false);
    double fp32 = relative_error(cpu, kn_matmul(ga, gb));
    kn_set_allow_tf32(true);
    double tf32 = relative_error(cpu, kn_matmul(ga, gb));
    kn_set_allow_tf32(before);
    cr_assert_leq(fp32, 1e-5, "fp32 matmul differs from the CPU by %g", fp32);
    cr_assert(tf32 >= 1e-5 && tf32 <= 1e-2,
              "TF32 matmul differs from the CPU by %g (fp32: %g): not a TF32-sized error", tf32,
              fp32);

    /* linear (cublasLt, bias in the epilogue) follows the same setting */
    kn_tensor *w = kn_test_randn(KN_SHAPE(1024, 1024), 13),
              *bias = kn_test_randn(KN_SHAPE(1024), 14);
    kn_tensor *lin = kn_linear(a, w, bias);
    kn_tensor *gw = kn_to(w, kn_test_cuda0), *gbias = kn_to(bias, kn_test_cuda0);
    cr_assert(lin && gw && gbias, "%s", kn_last_error());
    kn_set_allow_tf32(false);
    fp32 = relative_error(lin, kn_linear(ga, gw, gbias));
    kn_set_allow_tf32(true);
    tf32 = relative_error(lin, kn_linear(ga, gw, gbias));
    kn_set_allow_tf32(before);
    cr_assert_leq(fp32, 1e-5, "fp32 linear differs from the CPU by %g", fp32);
    cr_assert(tf32 >= 1e-5 && tf32 <= 1e-2,
              "TF32 linear differs from the CPU by %g (fp32: %g): not a TF32-sized error", tf32,
              fp32);
    kn_scope_end();
}

/* Leaves on each device holding the same values. */
static void twin(kn_tensor *host, kn_tensor **cpu, kn_tensor **gpu)
{
    *cpu = kn_set_requires_grad(kn_clone(host), true);
    *gpu = kn_set_requires_grad(kn_to(host, kn_test_cuda0), true);
    cr_assert_not_null(*gpu, "%s", kn_last_error());
}

Test(cuda_linear, forward_and_backward_match_the_cpu)
{
    kn_test_need_cuda();
    cr_assert_not(kn_get_allow_tf32());
    struct {
        int64_t x[3];
        int xn;
        int64_t out;
        bool transposed_weight; /* W as the transpose of a contiguous [in, out] */
    } cases[] = {
        {{1, 7}, 2, 5, false},       /* a batch of 1, odd sizes */
        {{3, 17}, 2, 13, false},     /* nothing a multiple of 4 */
        {{33, 129}, 2, 65, false},   /* one past multiples of 16 */
        {{64, 100}, 2, 10, false},   /* the MLP's last layer */
        {{128, 256}, 2, 512, false}, /* multiples of everything */
        {{2, 5, 31}, 3, 9, false},   /* leading dims fold into rows */
        {{23}, 1, 6, false},         /* 1-D input */
        {{9, 24}, 2, 7, true},       {{1, 1}, 2, 1, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            kn_scope_begin();
            int64_t in_f = cases[i].x[cases[i].xn - 1], out_f = cases[i].out;
            kn_tensor *x_cpu, *x_gpu, *w_cpu, *w_gpu, *b_cpu = NULL, *b_gpu = NULL;
            twin(kn_test_randn(cases[i].x, cases[i].xn, 100 + i), &x_cpu, &x_gpu);
            if (cases[i].transposed_weight) {
                twin(kn_test_randn(KN_SHAPE(in_f, out_f), 200 + i), &w_cpu, &w_gpu);
            } else {
                twin(kn_test_randn(KN_SHAPE(out_f, in_f), 200 + i), &w_cpu, &w_gpu);
            }
            if (with_bias) twin(kn_test_randn(KN_SHAPE(out_f), 300 + i), &b_cpu, &b_gpu);
            kn_tensor *wc = cases[i].transposed_weight ? kn_transpose(w_cpu, 0, 1) : w_cpu;
            kn_tensor *wg = cases[i].transposed_weight ? kn_transpose(w_gpu, 0, 1) : w_gpu;
            kn_tensor *y_cpu = kn_linear(x_cpu, wc, b_cpu), *y_gpu = kn_linear(x_gpu, wg, b_gpu);
            char what[64];
            snprintf(what, sizeof what, "linear case %zu%s", i, with_bias ? " with bias" : "");
            kn_test_assert_close_cuda(what, y_cpu, y_gpu, 1e-4, 1e-4);
            kn_tensor *g = kn_test_randn(y_cpu->shape, y_cpu->ndim, 400 + i);
            cr_assert_eq(kn_backward(y_cpu, g, false), KN_OK, "%s", kn_last_error());
            cr_assert_eq(kn_backward(y_gpu, kn_to(g, kn_test_cuda0), false), KN_OK, "%s: %s", what,
                         kn_last_error());
            char part[96];
            snprintf(part, sizeof part, "%s: grad x", what);
            kn_test_assert_close_cuda(part, kn_grad(x_cpu), kn_grad(x_gpu), 1e-4, 1e-4);
            snprintf(part, sizeof part, "%s: grad W", what);
            kn_test_assert_close_cuda(part, kn_grad(w_cpu), kn_grad(w_gpu), 1e-4, 1e-4);
            if (with_bias) {
                snprintf(part, sizeof part, "%s: grad b", what);
                kn_test_assert_close_cuda(part, kn_grad(b_cpu), kn_grad(b_gpu), 1e-4, 1e-4);
            }
            kn_scope_end();
        }
    }
}

Test(cuda_linear, bias_grad_alone_and_weight_grad_alone)
{
    kn_test_need_cuda();
    /* only the bias needs a gradient (no weight-gradient product to fuse it into), then
     * only the weight (the fused epilogue is not used) */
    for (int which = 0; which < 2; which++) {
        kn_scope_begin();
        kn_tensor *hx = kn_test_randn(KN_SHAPE(19, 11), 500),
                  *hw = kn_test_randn(KN_SHAPE(6, 11), 501);
        kn_tensor *hb = kn_test_randn(KN_SHAPE(6), 502);
        kn_tensor *w_cpu = kn_clone(hw), *w_gpu = kn_to(hw, kn_test_cuda0);
        kn_tensor *b_cpu = kn_clone(hb), *b_gpu = kn_to(hb, kn_test_cuda0);
        kn_tensor *leaf_cpu = which == 0 ? b_cpu : w_cpu, *leaf_gpu = which == 0 ? b_gpu : w_gpu;
        kn_set_requires_grad(leaf_cpu, true);
        kn_set_requires_grad(leaf_gpu, true);
        kn_tensor *y_cpu = kn_linear(hx, w_cpu, b_cpu);
        kn_tensor *y_gpu = kn_linear(kn_to(hx, kn_test_cuda0), w_gpu, b_gpu);
        kn_tensor *g = kn_test_randn(KN_SHAPE(19, 6), 503);
        cr_assert_eq(kn_backward(y_cpu, g, false), KN_OK);
        cr_assert_eq(kn_backward(y_gpu, kn_to(g, kn_test_cuda0), false), KN_OK, "%s",
                     kn_last_error());
        kn_test_assert_close_cuda(which == 0 ? "grad b alone" : "grad W alone", kn_grad(leaf_cpu),
                                  kn_grad(leaf_gpu), 1e-4, 1e-4);
        kn_scope_end();
    }
}

Test(cuda_linear, empty_batch)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *x_cpu, *x_gpu, *w_cpu, *w_gpu, *b_cpu, *b_gpu;
    twin(kn_zeros(KN_SHAPE(0, 5), KN_FLOAT32), &x_cpu, &x_gpu);
    twin(kn_test_randn(KN_SHAPE(3, 5), 600), &w_cpu, &w_gpu);
    twin(kn_test_randn(KN_SHAPE(3), 601), &b_cpu, &b_gpu);
    kn_tensor *y_gpu = kn_linear(x_gpu, w_gpu, b_gpu), *y_cpu = kn_linear(x_cpu, w_cpu, b_cpu);
    kn_test_assert_close_cuda("empty linear", y_cpu, y_gpu, 0, 0);
    cr_assert_eq(kn_backward(kn_sum_all(y_cpu), NULL, false), KN_OK);
    cr_assert_eq(kn_backward(kn_sum_all(y_gpu), NULL, false), KN_OK, "%s", kn_last_error());
    kn_test_assert_close_cuda("empty grad W", kn_grad(w_cpu), kn_grad(w_gpu), 0, 0);
    kn_test_assert_close_cuda("empty grad b", kn_grad(b_cpu), kn_grad(b_gpu), 0, 0);
    kn_scope_end();
}

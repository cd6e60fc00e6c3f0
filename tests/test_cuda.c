/*
 * test_cuda.c — the CUDA device: what every machine checks (cuda unavailable gives
 * clear errors, ops without a CUDA path refuse CUDA tensors before touching them) and,
 * where a GPU is present, CUDA against the CPU on the same random inputs for every op
 * with a CUDA path, forward and backward, moves between devices, and the allocator's
 * steady state. Without a device those tests skip, saying why.
 *
 * Tolerances: elementwise ops rtol 1e-5 (atol 1e-6); matmul and linear rtol 1e-4
 * (atol 1e-4): cuBLAS sums in another order than OpenBLAS.
 */
#include "kn_internal.h"
#include "kn_nn.h"
#include "kn_optim.h"
#include "kn_test.h"
#include "kn_test_cuda.h"

#include <criterion/criterion.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- everywhere ---------------------------------------------------------------------- */

/* Without the driver library the answer comes at once, without loading the module, the
 * CUDA runtime or cuBLAS (seconds in every process that asks). */
Test(cuda, no_driver_is_known_without_loading_the_runtime)
{
    void *driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (driver) {
        dlclose(driver);
        cr_skip_test("the CUDA driver library is installed here");
    }
    cr_assert_eq(kn_cuda_device_count(), 0);
    cr_assert(strstr(kn_cuda_status(), "libcuda.so.1"), "%s", kn_cuda_status());
    FILE *maps = fopen("/proc/self/maps", "r");
    cr_assert_not_null(maps);
    char line[1024];
    while (fgets(line, sizeof line, maps))
        cr_assert(!strstr(line, "libcudart") && !strstr(line, "libcublas") &&
                      !strstr(line, "libkiln_cuda"),
                  "loaded anyway: %s", line);
    fclose(maps);
}

/* The runner asked once, before the tests (kn_test_cuda.h), and passed its answer to each
 * test; it is what this process finds for itself. */
Test(cuda, the_runners_probe_agrees_with_this_process)
{
    const char *probe = getenv(KN_TEST_CUDA_PROBE);
    cr_assert_not_null(probe, KN_TEST_CUDA_PROBE " is not set: the runner did not probe");
    char *rest = NULL;
    long count = strtol(probe, &rest, 10);
    cr_assert(rest != probe && *rest == ' ', "%s", probe);
    cr_assert_eq(count, kn_cuda_device_count(), "%s", probe);
    cr_assert_str_eq(rest + 1, kn_cuda_status());
}

Test(cuda, status_and_availability_agree)
{
    const char *status = kn_cuda_status();
    cr_assert(status && status[0], "kn_cuda_status is empty");
    cr_assert(kn_device_available(kn_cpu()));
    cr_assert(!kn_device_available((kn_device){KN_DEVICE_CUDA, 1000}));
    int count = kn_cuda_device_count();
    cr_assert_eq(kn_device_available(kn_test_cuda0), count > 0, "%s", status);
    if (count == 0)
        cr_assert(strstr(status, "no CUDA device") || strstr(status, "libkiln_cuda.so"), "%s",
                  status);
}

Test(cuda, to_an_unavailable_device_says_why)
{
    kn_scope_begin();
    kn_tensor *t = kn_ones(KN_SHAPE(2, 2), KN_FLOAT32);
    kn_device missing = kn_cuda_device_count() > 0
                            ? (kn_device){KN_DEVICE_CUDA, kn_cuda_device_count()}
                            : kn_test_cuda0;
    char name[32], expected[64];
    kn_device_str(missing, name, sizeof name);
    snprintf(expected, sizeof expected, "to: device %s is not available (", name);
    cr_assert_null(kn_to(t, missing));
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE);
    cr_assert(strstr(kn_last_error(), expected), "%s", kn_last_error());
    if (kn_cuda_device_count() == 0)
        cr_assert(strstr(kn_last_error(), kn_cuda_status()), "%s", kn_last_error());
    /* a module moves nothing when one tensor cannot move */
    kn_module *m = kn_linear_new(3, 2, true, NULL);
    cr_assert_not_null(m);
    cr_assert_eq(kn_module_to(m, missing), KN_ERR_DEVICE);
    kn_named_tensor *p = kn_module_parameters(m, &(int){0});
    cr_assert_eq(p[0].tensor->device.type, KN_DEVICE_CPU);
    free(p);
    kn_module_free(m);
    kn_scope_end();
}

/* Fake CUDA handles point at host memory: only meaningful (and only safe) where no
 * device exists, so that no kernel can ever be launched on them. */
Test(cuda, fake_cuda_tensors_are_refused_without_a_device)
{
    if (kn_cuda_device_count() > 0) cr_skip_test("a CUDA device is present");
    kn_scope_begin();
    kn_tensor *a = kn_ones(KN_SHAPE(2, 3), KN_FLOAT32);
    kn_tensor *b = kn_test_fake_cuda(a);
    struct {
        const char *name;
        kn_tensor *result;
    } cases[] = {
        {"layer_norm", kn_layer_norm(b, 1, NULL, NULL, 1e-5)},
        {"dropout", kn_dropout(b, 0.5, true, NULL)},
        {"softmax", kn_softmax(b, 1)},
        {"sum", kn_sum_all(b)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_null(cases[i].result, "%s accepted a cuda tensor", cases[i].name);
        cr_assert_eq(kn_last_status(), KN_ERR_DEVICE, "%s: %s", cases[i].name, kn_last_error());
    }
    cr_assert_null(kn_data_f32(b));
    cr_assert(strstr(kn_last_error(), "cuda:0"), "%s", kn_last_error());
    /* a cpu tensor next to a cuda one: both devices named */
    cr_assert_null(kn_mul(a, b));
    cr_assert(strstr(kn_last_error(), "cpu") && strstr(kn_last_error(), "cuda:0"), "%s",
              kn_last_error());
    /* an optimizer over parameters on an unavailable device refuses them */
    kn_tensor *p = kn_set_requires_grad(kn_test_fake_cuda(kn_ones(KN_SHAPE(2), KN_FLOAT32)), true);
    cr_assert_null(kn_optimizer_new(&p, 1, kn_optimizer_defaults(KN_OPTIM_SGD)));
    kn_scope_end();
}

Test(cuda, ops_with_a_cuda_path_fail_cleanly_without_a_device)
{
    if (kn_cuda_device_count() > 0) cr_skip_test("a CUDA device is present");
    kn_scope_begin();
    kn_tensor *b = kn_test_fake_cuda(kn_ones(KN_SHAPE(2, 3), KN_FLOAT32));
    cr_assert_null(kn_add(b, b));
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE);
    cr_assert(strstr(kn_last_error(), "cuda:0 is not available"), "%s", kn_last_error());
    cr_assert_null(kn_matmul(b, kn_transpose(b, 0, 1)));
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE);
    cr_assert_neq(kn_fill_(b, 1.0), KN_OK);
    cr_assert(isnan(kn_item(kn_select(kn_select(b, 0, 0), 0, 0))));
    cr_assert_null(kn_to(b, kn_cpu()));
    cr_assert(strstr(kn_last_error(), "not available"), "%s", kn_last_error());
    kn_scope_end();
}

/* ---- with a device: CUDA against the CPU -------------------------------------------- */

/* Leaves on each device holding the same values. */
static void twin(kn_tensor *host, kn_tensor **cpu, kn_tensor **gpu)
{
    *cpu = kn_set_requires_grad(kn_clone(host), true);
    *gpu = kn_set_requires_grad(kn_to(host, kn_test_cuda0), true);
    cr_assert_not_null(*gpu, "%s", kn_last_error());
}

typedef kn_tensor *(*unary_fn)(kn_tensor *);
static kn_tensor *gelu_exact(kn_tensor *a)
{
    return kn_gelu(a, KN_GELU_EXACT);
}
static kn_tensor *gelu_tanh(kn_tensor *a)
{
    return kn_gelu(a, KN_GELU_TANH);
}
static kn_tensor *clamp(kn_tensor *a)
{
    return kn_clamp(a, -0.5, 0.7);
}
static kn_tensor *pow3(kn_tensor *a)
{
    return kn_pow(a, 3.0);
}
static kn_tensor *pow_half(kn_tensor *a)
{
    return kn_pow(a, 0.5);
}
static kn_tensor *add_scalar(kn_tensor *a)
{
    return kn_add_scalar(a, 1.5);
}
static kn_tensor *mul_scalar(kn_tensor *a)
{
    return kn_mul_scalar(a, -2.5);
}
static kn_tensor *leaky(kn_tensor *a)
{
    return kn_leaky_relu(a, 0.1);
}
static kn_tensor *clone(kn_tensor *a)
{
    return kn_clone(a);
}
/* ---- sequence layers (issue 12) ---- */
static kn_tensor *elu(kn_tensor *a)
{
    return kn_elu(a, 0.7);
}

Test(cuda, unary_ops_forward_and_backward_match_the_cpu)
{
    kn_test_need_cuda();
    struct {
        const char *name;
        unary_fn fn;
        bool positive;
    } ops[] = {
        {"neg", kn_neg, false},
        {"exp", kn_exp, false},
        {"log", kn_log, true},
        {"sqrt", kn_sqrt, true},
        {"abs", kn_abs, false},
        {"relu", kn_relu, false},
        {"tanh", kn_tanh, false},
        {"sigmoid", kn_sigmoid, false},
        {"gelu", gelu_exact, false},
        {"gelu_tanh", gelu_tanh, false},
        {"silu", kn_silu, false},
        {"clamp", clamp, false},
        {"pow3", pow3, false},
        {"pow0.5", pow_half, true},
        {"add_scalar", add_scalar, false},
        {"mul_scalar", mul_scalar, false},
        {"leaky_relu", leaky, false},
        {"clone", clone, false},
        {"elu", elu, false}, /* sequence layers (issue 12) */
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        kn_scope_begin();
        kn_tensor *host = kn_test_randn(KN_SHAPE(3, 5, 7), 10 + i);
        if (ops[i].positive) host = kn_add_scalar(kn_abs(host), 0.1);
        /* a non-contiguous input too: the kernels take strides */
        kn_tensor *x_cpu, *x_gpu;
        twin(host, &x_cpu, &x_gpu);
        kn_tensor *g = kn_test_randn(KN_SHAPE(7, 5, 3), 99);
        kn_tensor *y_cpu = ops[i].fn(kn_permute(x_cpu, KN_DIMS(2, 1, 0)));
        kn_tensor *y_gpu = ops[i].fn(kn_permute(x_gpu, KN_DIMS(2, 1, 0)));
        kn_test_assert_close_cuda(ops[i].name, y_cpu, y_gpu, 1e-5, 1e-6);
        cr_assert_eq(kn_backward(y_cpu, g, false), KN_OK, "%s", kn_last_error());
        cr_assert_eq(kn_backward(y_gpu, kn_to(g, kn_test_cuda0), false), KN_OK, "%s: %s",
                     ops[i].name, kn_last_error());
        kn_test_assert_close_cuda(ops[i].name, kn_grad(x_cpu), kn_grad(x_gpu), 1e-5, 1e-6);
        kn_scope_end();
    }
}

typedef kn_tensor *(*binary_fn)(kn_tensor *, kn_tensor *);

Test(cuda, binary_ops_broadcast_forward_and_backward_match_the_cpu)
{
    kn_test_need_cuda();
    struct {
        const char *name;
        binary_fn fn;
    } ops[] = {{"add", kn_add}, {"sub", kn_sub}, {"mul", kn_mul}, {"div", kn_div}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        kn_scope_begin();
        kn_tensor *ha = kn_test_randn(KN_SHAPE(4, 1, 5), 1), *hb = kn_test_randn(KN_SHAPE(3, 5), 2);
        if (ops[i].fn == kn_div) hb = kn_add_scalar(kn_abs(hb), 0.5);
        kn_tensor *a_cpu, *a_gpu, *b_cpu, *b_gpu;
        twin(ha, &a_cpu, &a_gpu);
        twin(hb, &b_cpu, &b_gpu);
        kn_tensor *y_cpu = ops[i].fn(a_cpu, b_cpu), *y_gpu = ops[i].fn(a_gpu, b_gpu);
        kn_test_assert_close_cuda(ops[i].name, y_cpu, y_gpu, 1e-5, 1e-6);
        kn_tensor *g = kn_test_randn(KN_SHAPE(4, 3, 5), 3);
        cr_assert_eq(kn_backward(y_cpu, g, false), KN_OK);
        cr_assert_eq(kn_backward(y_gpu, kn_to(g, kn_test_cuda0), false), KN_OK, "%s",
                     kn_last_error());
        kn_test_assert_close_cuda("grad a", kn_grad(a_cpu), kn_grad(a_gpu), 1e-5, 1e-6);
        kn_test_assert_close_cuda("grad b", kn_grad(b_cpu), kn_grad(b_gpu), 1e-5, 1e-6);
        kn_scope_end();
    }
    kn_scope_begin(); /* comparisons share the kernel */
    kn_tensor *a = kn_test_randn(KN_SHAPE(6), 4), *b = kn_scalar(0.f);
    kn_tensor *ga = kn_to(a, kn_test_cuda0), *gb = kn_to(b, kn_test_cuda0);
    kn_test_assert_close_cuda("gt", kn_gt(a, b), kn_gt(ga, gb), 0, 0);
    kn_test_assert_close_cuda("lt", kn_lt(a, b), kn_lt(ga, gb), 0, 0);
    kn_test_assert_close_cuda("eq", kn_eq(a, a), kn_eq(ga, ga), 0, 0);
    kn_scope_end();
}

Test(cuda, matmul_and_linear_forward_and_backward_match_the_cpu)
{
    kn_test_need_cuda();
    struct {
        int64_t a[4], b[4];
        int an, bn;
        bool transpose_b;
    } cases[] = {
        {{3, 4}, {4, 5}, 2, 2, false},
        {{3, 4}, {5, 4}, 2, 2, true},
        {{2, 3, 4, 5}, {5, 6}, 4, 2, false},
        {{2, 4, 5}, {2, 5, 3}, 3, 3, false},
        {{2, 1, 4, 5}, {3, 5, 6}, 4, 3, false},
        {{7}, {7}, 1, 1, false},
        {{7}, {7, 3}, 1, 2, false},
        {{2, 3, 7}, {7}, 3, 1, false},
        {{64, 96}, {96, 80}, 2, 2, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kn_scope_begin();
        kn_tensor *ha = kn_test_randn(cases[i].a, cases[i].an, 20 + i);
        kn_tensor *hb = kn_test_randn(cases[i].b, cases[i].bn, 40 + i);
        kn_tensor *a_cpu, *a_gpu, *b_cpu, *b_gpu;
        twin(ha, &a_cpu, &a_gpu);
        twin(hb, &b_cpu, &b_gpu);
        kn_tensor *bc = cases[i].transpose_b ? kn_transpose(b_cpu, 0, 1) : b_cpu;
        kn_tensor *bg = cases[i].transpose_b ? kn_transpose(b_gpu, 0, 1) : b_gpu;
        kn_tensor *y_cpu = kn_matmul(a_cpu, bc), *y_gpu = kn_matmul(a_gpu, bg);
        char what[32];
        snprintf(what, sizeof what, "matmul case %zu", i);
        kn_test_assert_close_cuda(what, y_cpu, y_gpu, 1e-4, 1e-4);
        kn_tensor *g = kn_test_randn(y_cpu->shape, y_cpu->ndim, 60 + i);
        cr_assert_eq(kn_backward(y_cpu, g, false), KN_OK);
        cr_assert_eq(kn_backward(y_gpu, kn_to(g, kn_test_cuda0), false), KN_OK, "%s: %s", what,
                     kn_last_error());
        kn_test_assert_close_cuda(what, kn_grad(a_cpu), kn_grad(a_gpu), 1e-4, 1e-4);
        kn_test_assert_close_cuda(what, kn_grad(b_cpu), kn_grad(b_gpu), 1e-4, 1e-4);
        kn_scope_end();
    }
    kn_scope_begin();
    kn_tensor *x_cpu, *x_gpu, *w_cpu, *w_gpu, *b_cpu, *b_gpu;
    twin(kn_test_randn(KN_SHAPE(4, 6, 16), 7), &x_cpu, &x_gpu);
    twin(kn_test_randn(KN_SHAPE(8, 16), 8), &w_cpu, &w_gpu);
    twin(kn_test_randn(KN_SHAPE(8), 9), &b_cpu, &b_gpu);
    kn_tensor *y_cpu = kn_linear(x_cpu, w_cpu, b_cpu), *y_gpu = kn_linear(x_gpu, w_gpu, b_gpu);
    kn_test_assert_close_cuda("linear", y_cpu, y_gpu, 1e-4, 1e-4);
    kn_tensor *g = kn_test_randn(KN_SHAPE(4, 6, 8), 10);
    cr_assert_eq(kn_backward(y_cpu, g, false), KN_OK);
    cr_assert_eq(kn_backward(y_gpu, kn_to(g, kn_test_cuda0), false), KN_OK, "%s", kn_last_error());
    kn_test_assert_close_cuda("linear grad x", kn_grad(x_cpu), kn_grad(x_gpu), 1e-4, 1e-4);
    kn_test_assert_close_cuda("linear grad w", kn_grad(w_cpu), kn_grad(w_gpu), 1e-4, 1e-4);
    kn_test_assert_close_cuda("linear grad b", kn_grad(b_cpu), kn_grad(b_gpu), 1e-4, 1e-4);
    kn_scope_end();
}

Test(cuda, in_place_ops_and_copies_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *h = kn_test_randn(KN_SHAPE(5, 6), 11), *s = kn_test_randn(KN_SHAPE(6), 12);
    kn_tensor *c = kn_clone(h), *g = kn_to(h, kn_test_cuda0), *gs = kn_to(s, kn_test_cuda0);
    cr_assert_eq(kn_add_(c, s, 0.5), KN_OK);
    cr_assert_eq(kn_add_(g, gs, 0.5), KN_OK, "%s", kn_last_error());
    kn_test_assert_close_cuda("add_", c, g, 1e-5, 1e-6);
    cr_assert_eq(kn_mul_scalar_(kn_transpose(c, 0, 1), 3.0), KN_OK);
    cr_assert_eq(kn_mul_scalar_(kn_transpose(g, 0, 1), 3.0), KN_OK);
    kn_test_assert_close_cuda("mul_scalar_", c, g, 1e-5, 1e-6);
    cr_assert_eq(kn_copy_(kn_narrow(c, 0, 1, 2), kn_narrow(h, 0, 3, 2)), KN_OK);
    cr_assert_eq(kn_copy_(kn_narrow(g, 0, 1, 2), kn_narrow(h, 0, 3, 2)), KN_OK, "%s",
                 kn_last_error()); /* across devices */
    kn_test_assert_close_cuda("copy_", c, g, 0, 0);
    cr_assert_eq(kn_fill_(kn_select(c, 1, 2), 4.0), KN_OK);
    cr_assert_eq(kn_fill_(kn_select(g, 1, 2), 4.0), KN_OK);
    kn_test_assert_close_cuda("fill_", c, g, 0, 0);
    kn_test_assert_close_cuda("contiguous", kn_contiguous(kn_transpose(c, 0, 1)),
                              kn_contiguous(kn_transpose(g, 0, 1)), 0, 0);
    kn_test_assert_close_cuda("reshape", kn_reshape(kn_transpose(c, 0, 1), KN_SHAPE(30)),
                              kn_reshape(kn_transpose(g, 0, 1), KN_SHAPE(30)), 0, 0);
    kn_test_assert_close_cuda("ones_like", kn_ones_like(c), kn_ones_like(g), 0, 0);
    /* random fills draw on the cpu: the same stream of numbers on either device */
    kn_tensor *rc = kn_zeros(KN_SHAPE(4, 4), KN_FLOAT32), *r = kn_to(rc, kn_test_cuda0);
    kn_generator *g1 = kn_generator_new(5), *g2 = kn_generator_new(5);
    cr_assert_eq(kn_normal_(rc, 0, 1, g1), KN_OK);
    cr_assert_eq(kn_normal_(r, 0, 1, g2), KN_OK, "%s", kn_last_error());
    kn_test_assert_close_cuda("normal_", rc, r, 0, 0);
    kn_generator_free(g1);
    kn_generator_free(g2);
    kn_scope_end();
}

Test(cuda, moves_round_trip_and_element_access)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *h = kn_test_randn(KN_SHAPE(3, 4, 5), 13);
    kn_tensor *back = kn_to(kn_to(kn_transpose(h, 0, 2), kn_test_cuda0), kn_cpu());
    cr_assert_not_null(back, "%s", kn_last_error());
    cr_assert_eq(back->device.type, KN_DEVICE_CPU);
    kn_tensor *expected = kn_contiguous(kn_transpose(h, 0, 2));
    cr_assert_eq(memcmp(kn_data_f32(back), kn_data_f32(expected), sizeof(float) * 60), 0);
    kn_tensor *ids = kn_to(kn_arange(10), kn_test_cuda0);
    cr_assert_eq(ids->dtype, KN_INT64);
    cr_assert_eq(kn_item_i64(kn_select(ids, 0, 7)), 7);
    int64_t values[10];
    cr_assert_eq(kn_copy_to_int64s(kn_slice(ids, 0, 0, 10, 3), values), KN_OK);
    cr_assert_eq(values[3], 9);
    kn_tensor *g = kn_to(h, kn_test_cuda0);
    cr_assert_float_eq(kn_get(g, (int64_t[]){2, 1, 3}), kn_get(h, (int64_t[]){2, 1, 3}), 0);
    cr_assert_float_eq(kn_item(kn_select(kn_select(kn_select(g, 0, 1), 0, 2), 0, 4)),
                       kn_get(h, (int64_t[]){1, 2, 4}), 0);
    char *text = kn_to_string(g);
    cr_assert(text && strstr(text, "device='cuda:0'"), "%s", text ? text : kn_last_error());
    free(text);
    if (kn_cuda_device_count() > 1) {
        kn_tensor *other = kn_to(g, (kn_device){KN_DEVICE_CUDA, 1});
        kn_test_assert_close_cuda("cuda:1", h, kn_to(other, kn_test_cuda0), 0, 0);
    }
    /* a gradient through to() goes back to the source device */
    kn_tensor *leaf = kn_set_requires_grad(kn_clone(h), true);
    kn_tensor *y = kn_mul_scalar(kn_to(leaf, kn_test_cuda0), 2.0);
    cr_assert_eq(kn_backward(y, kn_ones_like(y), false), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_grad(leaf)->device.type, KN_DEVICE_CPU);
    cr_assert_float_eq(kn_get(kn_grad(leaf), (int64_t[]){0, 0, 0}), 2.f, 0);
    kn_scope_end();
}

/* kn_to between two devices copies from a temporary (the contiguous copy of a view) that
 * goes back to cuda:0's cache at once; the next kernel on cuda:0 gets the same block and
 * must not overwrite it while the copy to cuda:1 still reads it. */
Test(cuda, a_copy_between_devices_is_done_before_its_source_is_reused)
{
    kn_test_need_cuda();
    if (kn_cuda_device_count() < 2) cr_skip_test("needs two CUDA devices");
    kn_scope_begin();
    const kn_device cuda1 = {KN_DEVICE_CUDA, 1};
    kn_tensor *ones = kn_to(kn_ones(KN_SHAPE(4096, 4096), KN_FLOAT32), kn_test_cuda0);
    cr_assert_not_null(ones, "%s", kn_last_error());
    for (int round = 0; round < 5; round++) {
        kn_scope_begin();
        kn_tensor *moved = kn_to(kn_transpose(ones, 0, 1), cuda1);
        cr_assert_not_null(moved, "%s", kn_last_error());
        /* same size class as the freed temporary: very likely the same block */
        kn_tensor *other = kn_mul_scalar(ones, 3.0);
        cr_assert_not_null(other, "%s", kn_last_error());
        cr_assert_float_eq(kn_item(kn_max_all(moved)), 1.f, 0, "round %d", round);
        cr_assert_float_eq(kn_item(kn_min_all(moved)), 1.f, 0, "round %d", round);
        kn_scope_end();
    }
    kn_scope_end();
}

Test(cuda, out_of_memory_is_an_error_with_sizes)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *one = kn_to(kn_ones(KN_SHAPE(1, 1), KN_FLOAT32), kn_test_cuda0);
    kn_tensor *huge = kn_contiguous(kn_expand(one, KN_SHAPE(1 << 20, 1 << 20)));
    cr_assert_null(huge);
    cr_assert_eq(kn_last_status(), KN_ERR_MEMORY, "%s", kn_last_error());
    cr_assert(strstr(kn_last_error(), "out of memory") && strstr(kn_last_error(), "cuda:0"), "%s",
              kn_last_error());
    /* and the device still works */
    cr_assert_float_eq(kn_item(kn_add(one, one)), 2.f, 0);
    kn_scope_end();
}

Test(cuda, allocator_reaches_a_steady_state)
{
    kn_test_need_cuda();
    kn_tensor *w =
        kn_set_requires_grad(kn_to(kn_test_randn(KN_SHAPE(32, 64), 14), kn_test_cuda0), true);
    kn_tensor *x = kn_to(kn_test_randn(KN_SHAPE(16, 64), 15), kn_test_cuda0);
    kn_alloc_stats warm = {0}, after = {0};
    for (int step = 0; step < 50; step++) {
        if (step == 5) {
            cr_assert_eq(kn_cuda_synchronize(0), KN_OK);
            cr_assert_eq(kn_cuda_get_alloc_stats(0, &warm), KN_OK);
        }
        kn_scope_begin();
        kn_tensor *y = kn_tanh(kn_linear(x, w, NULL));
        cr_assert_eq(kn_backward(y, kn_ones_like(y), false), KN_OK, "%s", kn_last_error());
        kn_no_grad_begin();
        cr_assert_eq(kn_add_(w, kn_grad(w), -0.01), KN_OK);
        kn_no_grad_end();
        kn_zero_grad(w);
        kn_scope_end();
    }
    cr_assert_eq(kn_cuda_synchronize(0), KN_OK);
    cr_assert_eq(kn_cuda_get_alloc_stats(0, &after), KN_OK);
    cr_assert_eq(after.system_allocs, warm.system_allocs,
                 "cudaMalloc called %llu times after warm-up",
                 (unsigned long long)(after.system_allocs - warm.system_allocs));
    cr_assert_eq(after.bytes_in_use, warm.bytes_in_use);
    cr_assert_gt(after.cache_hits, warm.cache_hits);
    kn_release(w);
    kn_release(x);
}

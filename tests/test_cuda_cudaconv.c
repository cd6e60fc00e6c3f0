/*
 * test_cuda_cudaconv.c — the CUDA paths of conv2d, max/avg/adaptive pooling, where and
 * the indexing ops (cat, stack, index_select, gather, embedding). Everywhere: these ops
 * accept CUDA tensors only when a device is there (a fake cuda:0 handle fails with
 * "not available" and never touches its data). With a device: CUDA against the CPU on
 * the same random inputs, forward and backward, and out-of-range indices on the device
 * fail with the CPU's message. Without a device those tests skip, saying why.
 *
 * Tolerances: conv2d rtol 1e-4, atol 1e-4 (cuBLAS sums in another order); pooling,
 * where and indexing forward exact (atol 0: same formulas, same order), their backwards
 * rtol 1e-5, atol 1e-6 (atomic adds of overlapping windows in another order).
 */
#include "kn_internal.h"
#include "kn_nn.h"
#include "kn_test.h"
#include "kn_test_cuda.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- everywhere ---------------------------------------------------------------------- */

Test(cuda_conv, ops_fail_cleanly_on_cuda_without_a_device)
{
    if (kn_cuda_device_count() > 0) cr_skip_test("a CUDA device is present");
    kn_scope_begin();
    kn_tensor *x = kn_test_fake_cuda(kn_ones(KN_SHAPE(1, 2, 4, 4), KN_FLOAT32));
    kn_tensor *w = kn_test_fake_cuda(kn_ones(KN_SHAPE(3, 2, 3, 3), KN_FLOAT32));
    kn_tensor *v = kn_test_fake_cuda(kn_ones(KN_SHAPE(4, 3), KN_FLOAT32));
    kn_tensor *idx = kn_test_fake_cuda(kn_zeros(KN_SHAPE(2), KN_INT64));
    kn_tensor *idx2 = kn_test_fake_cuda(kn_zeros(KN_SHAPE(4, 3), KN_INT64));
    kn_pool2d_args pool = {.kernel_size = {2, 2}};
    struct {
        const char *name;
        kn_tensor *result;
    } cases[] = {
        {"conv2d", kn_conv2d(x, w, NULL, (kn_conv2d_args){.groups = 1})},
        {"max_pool2d", kn_max_pool2d(x, pool)},
        {"avg_pool2d", kn_avg_pool2d(x, pool)},
        {"adaptive_avg_pool2d", kn_adaptive_avg_pool2d(x, 1, 1)},
        {"where", kn_where(v, v, v)},
        {"cat", kn_cat((kn_tensor *[]){v, v}, 2, 0)},
        {"stack", kn_stack((kn_tensor *[]){v, v}, 2, 0)},
        {"index_select", kn_index_select(v, 0, idx)},
        {"gather", kn_gather(v, 0, idx2)},
        {"embedding", kn_embedding(v, idx)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_null(cases[i].result, "%s accepted a cuda tensor without a device",
                       cases[i].name);
        cr_assert_eq(kn_last_status(), KN_ERR_DEVICE, "%s: %s", cases[i].name, kn_last_error());
    }
    cr_assert_null(kn_conv2d(x, w, NULL, (kn_conv2d_args){.groups = 1}));
    cr_assert(strstr(kn_last_error(), "conv2d: device cuda:0 is not available"), "%s",
              kn_last_error());
    cr_assert_null(kn_max_pool2d(x, pool));
    cr_assert(strstr(kn_last_error(), "max_pool2d: device cuda:0 is not available"), "%s",
              kn_last_error());
    kn_scope_end();
}

Test(cuda_conv, mixed_devices_name_both)
{
    kn_scope_begin();
    kn_tensor *x = kn_ones(KN_SHAPE(1, 2, 4, 4), KN_FLOAT32);
    kn_tensor *w = kn_test_fake_cuda(kn_ones(KN_SHAPE(3, 2, 3, 3), KN_FLOAT32));
    cr_assert_null(kn_conv2d(x, w, NULL, (kn_conv2d_args){.groups = 1}));
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE);
    cr_assert(strstr(kn_last_error(), "cpu") && strstr(kn_last_error(), "cuda:0"), "%s",
              kn_last_error());
    kn_tensor *v = kn_ones(KN_SHAPE(4, 3), KN_FLOAT32);
    kn_tensor *idx = kn_test_fake_cuda(kn_zeros(KN_SHAPE(2), KN_INT64));
    cr_assert_null(kn_index_select(v, 0, idx));
    cr_assert(strstr(kn_last_error(), "cpu") && strstr(kn_last_error(), "cuda:0"), "%s",
              kn_last_error());
    kn_scope_end();
}

/* ---- with a device: CUDA against the CPU -------------------------------------------- */

#define MAX_IN 4

typedef kn_tensor *(*op_fn)(kn_tensor **in, const void *ctx);

/* Inputs check_op leaves without grad (bit i: input i), besides the int64 ones. */
static unsigned no_grad_inputs;

/* fn on both devices over the same inputs (float ones become leaves requiring grad),
 * then backward with the same random gradient; compares outputs and input grads. */
static void check_op(const char *what, kn_tensor **host, int n, op_fn fn, const void *ctx,
                     double rtol, double atol, double grad_rtol, double grad_atol)
{
    kn_scope_begin();
    kn_tensor *cpu[MAX_IN], *gpu[MAX_IN];
    bool leaf[MAX_IN];
    for (int i = 0; i < n; i++) {
        leaf[i] = host[i]->dtype == KN_FLOAT32 && !(no_grad_inputs & (1u << i));
        cpu[i] = leaf[i] ? kn_set_requires_grad(kn_clone(host[i]), true) : host[i];
        gpu[i] = kn_to(host[i], kn_test_cuda0);
        cr_assert_not_null(gpu[i], "%s: %s", what, kn_last_error());
        if (leaf[i]) kn_set_requires_grad(gpu[i], true);
    }
    kn_tensor *y_cpu = fn(cpu, ctx), *y_gpu = fn(gpu, ctx);
    kn_test_assert_close_cuda(what, y_cpu, y_gpu, rtol, atol);
    if (y_cpu->dtype == KN_FLOAT32 && y_cpu->requires_grad) {
        kn_tensor *g = kn_test_randn(y_cpu->shape, y_cpu->ndim, 99);
        cr_assert_eq(kn_backward(y_cpu, g, false), KN_OK, "%s: %s", what, kn_last_error());
        cr_assert_eq(kn_backward(y_gpu, kn_to(g, kn_test_cuda0), false), KN_OK, "%s: %s", what,
                     kn_last_error());
        for (int i = 0; i < n; i++) {
            if (!leaf[i]) continue;
            char name[128];
            snprintf(name, sizeof name, "%s: grad of input %d", what, i);
            kn_test_assert_close_cuda(name, kn_grad(cpu[i]), kn_grad(gpu[i]), grad_rtol, grad_atol);
        }
    }
    kn_scope_end();
}

static kn_tensor *conv_op(kn_tensor **in, const void *ctx)
{
    return kn_conv2d(in[0], in[1], in[2], *(const kn_conv2d_args *)ctx);
}
static kn_tensor *conv_nobias_op(kn_tensor **in, const void *ctx)
{
    return kn_conv2d(in[0], in[1], NULL, *(const kn_conv2d_args *)ctx);
}

Test(cuda_conv, conv2d_forward_and_backward_match_the_cpu)
{
    kn_test_need_cuda();
    struct {
        int64_t n, c, h, w, o, kh, kw;
        kn_conv2d_args args;
        bool bias;
    } cases[] = {
        {2, 3, 8, 8, 4, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
        {3, 4, 9, 7, 6, 3, 2, {{2, 1}, {1, 0}, {1, 2}, 2}, true},
        {2, 6, 10, 10, 6, 3, 3, {{2, 2}, {2, 2}, {2, 2}, 6}, false}, /* depthwise */
        {4, 5, 6, 6, 7, 1, 1, {{0, 0}, {0, 0}, {0, 0}, 0}, true},    /* 1x1 */
        {64, 1, 28, 28, 8, 5, 5, {{1, 1}, {2, 2}, {1, 1}, 1}, true}, /* the CNN's first */
        {1, 2, 5, 5, 3, 5, 5, {{3, 3}, {0, 0}, {1, 1}, 1}, false},   /* one output */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kn_scope_begin();
        int g = cases[i].args.groups ? cases[i].args.groups : 1;
        kn_tensor *in[3] = {
            kn_test_randn(KN_SHAPE(cases[i].n, cases[i].c, cases[i].h, cases[i].w), 10 + i),
            kn_test_randn(KN_SHAPE(cases[i].o, cases[i].c / g, cases[i].kh, cases[i].kw), 20 + i),
            kn_test_randn(KN_SHAPE(cases[i].o), 30 + i)};
        char what[64];
        snprintf(what, sizeof what, "conv2d case %zu", i);
        if (cases[i].bias)
            check_op(what, in, 3, conv_op, &cases[i].args, 1e-4, 1e-4, 1e-4, 1e-3);
        else
            check_op(what, in, 2, conv_nobias_op, &cases[i].args, 1e-4, 1e-4, 1e-4, 1e-3);
        kn_scope_end();
    }
}

static kn_tensor *max_pool_op(kn_tensor **in, const void *ctx)
{
    return kn_max_pool2d(in[0], *(const kn_pool2d_args *)ctx);
}
static kn_tensor *avg_pool_op(kn_tensor **in, const void *ctx)
{
    return kn_avg_pool2d(in[0], *(const kn_pool2d_args *)ctx);
}
static kn_tensor *adaptive_op(kn_tensor **in, const void *ctx)
{
    const int *size = ctx;
    return kn_adaptive_avg_pool2d(in[0], size[0], size[1]);
}

Test(cuda_conv, pooling_forward_and_backward_match_the_cpu)
{
    kn_test_need_cuda();
    kn_pool2d_args cases[] = {
        {.kernel_size = {2, 2}},
        {.kernel_size = {3, 3}, .stride = {2, 2}, .padding = {1, 1}},
        {.kernel_size = {3, 2}, .stride = {2, 1}, .padding = {1, 0}, .ceil_mode = true},
        {.kernel_size = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .dilation = {2, 1}},
        {.kernel_size = {3, 3},
         .stride = {2, 2},
         .padding = {1, 1},
         .ceil_mode = true,
         .exclude_padding_from_count = true},
        {.kernel_size = {2, 2}, .stride = {1, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kn_scope_begin();
        kn_tensor *x = kn_test_randn(KN_SHAPE(2, 3, 9, 8), 40 + i);
        char what[64];
        snprintf(what, sizeof what, "max_pool2d case %zu", i);
        check_op(what, &x, 1, max_pool_op, &cases[i], 0, 0, 1e-5, 1e-6);
        snprintf(what, sizeof what, "avg_pool2d case %zu", i);
        kn_pool2d_args avg = cases[i];
        memset(avg.dilation, 0, sizeof avg.dilation);
        check_op(what, &x, 1, avg_pool_op, &avg, 0, 0, 1e-5, 1e-6);
        kn_scope_end();
    }
    kn_scope_begin();
    kn_tensor *x3 = kn_test_randn(KN_SHAPE(3, 10, 7), 50);
    kn_pool2d_args two = {.kernel_size = {2, 2}};
    check_op("max_pool2d 3-D", &x3, 1, max_pool_op, &two, 0, 0, 1e-5, 1e-6);
    int sizes[][2] = {{1, 1}, {3, 3}, {4, 5}, {10, 7}, {7, 3}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "adaptive_avg_pool2d %dx%d", sizes[i][0], sizes[i][1]);
        check_op(what, &x3, 1, adaptive_op, sizes[i], 0, 0, 1e-5, 1e-6);
    }
    kn_scope_end();
}

Test(cuda_conv, max_pool2d_ties_and_nan_follow_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    float data[] = {1, 1, 2, 2, 1, 1, 2, 2, NAN, 0, 5, NAN, 3, NAN, 5, 5};
    kn_tensor *x = kn_from_floats(data, KN_SHAPE(1, 1, 4, 4));
    kn_pool2d_args args[] = {{.kernel_size = {2, 2}},
                             {.kernel_size = {3, 3}, .stride = {1, 1}},
                             {.kernel_size = {2, 2}, .stride = {1, 1}}};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "max_pool2d ties/NaN case %zu", i);
        /* backward as the header says (rtol 1e-5): case 2's windows overlap, and the
         * atomic adds may round a sum of up to four gradients differently */
        check_op(what, &x, 1, max_pool_op, &args[i], 0, 0, 1e-5, 1e-6);
    }
    kn_scope_end();
}

static kn_tensor *where_op(kn_tensor **in, const void *ctx)
{
    (void)ctx;
    return kn_where(in[0], in[1], in[2]);
}

Test(cuda_conv, where_forward_and_backward_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *a = kn_test_randn(KN_SHAPE(4, 5), 60), *b = kn_test_randn(KN_SHAPE(5), 61);
    float cf[] = {1, 0, -2, 0};
    int64_t ci[] = {0, 3, 0, 0, -1, 0, 0, 0, 1, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 9};
    kn_tensor *in[3] = {kn_from_floats(cf, KN_SHAPE(4, 1)), a, b};
    no_grad_inputs = 1; /* the condition has no gradient */
    check_op("where (float condition)", in, 3, where_op, NULL, 0, 0, 0, 0);
    no_grad_inputs = 0;
    kn_tensor *in64[3] = {kn_from_int64s(ci, KN_SHAPE(4, 5)), a, b};
    check_op("where (int64 condition)", in64, 3, where_op, NULL, 0, 0, 0, 0);
    kn_scope_end();
}

/* The third input is transposed (dims 1, 2) here, so one operand is strided. */
static kn_tensor *cat_op(kn_tensor **in, const void *ctx)
{
    kn_tensor *list[3] = {in[0], in[1], kn_transpose(in[2], 1, 2)};
    return kn_cat(list, 3, *(const int *)ctx);
}
static kn_tensor *stack_op(kn_tensor **in, const void *ctx)
{
    return kn_stack(in, 3, *(const int *)ctx);
}

Test(cuda_conv, cat_and_stack_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    for (int dim = 0; dim < 3; dim++) {
        int64_t s1[3] = {2, 3, 4}, s2[3] = {2, 3, 4};
        s1[dim] = 1;
        s2[dim] = 5;
        kn_tensor *in[3] = {kn_test_randn(KN_SHAPE(2, 3, 4), 70), kn_test_randn(s1, 3, 71),
                            kn_test_randn(KN_SHAPE(s2[0], s2[2], s2[1]), 72)};
        char what[64];
        snprintf(what, sizeof what, "cat dim %d", dim);
        check_op(what, in, 3, cat_op, &dim, 0, 0, 0, 0);
        kn_tensor *same[3] = {kn_test_randn(KN_SHAPE(2, 3), 73), kn_test_randn(KN_SHAPE(2, 3), 74),
                              kn_transpose(kn_test_randn(KN_SHAPE(3, 2), 75), 0, 1)};
        snprintf(what, sizeof what, "stack dim %d", dim);
        check_op(what, same, 3, stack_op, &dim, 0, 0, 0, 0);
    }
    kn_scope_end();
}

static kn_tensor *index_select_op(kn_tensor **in, const void *ctx)
{
    return kn_index_select(in[0], *(const int *)ctx, in[1]);
}
static kn_tensor *gather_op(kn_tensor **in, const void *ctx)
{
    return kn_gather(in[0], *(const int *)ctx, in[1]);
}
static kn_tensor *gather_t_op(kn_tensor **in, const void *ctx)
{
    return kn_gather(kn_transpose(in[0], 0, 1), *(const int *)ctx, in[1]);
}
static kn_tensor *embedding_op(kn_tensor **in, const void *ctx)
{
    (void)ctx;
    return kn_embedding(in[0], in[1]);
}

Test(cuda_conv, indexing_forward_and_backward_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    int64_t rows[] = {0, 3, 3, 1, 4, 0, 2};
    kn_tensor *idx = kn_from_int64s(rows, KN_SHAPE(7));
    kn_tensor *t = kn_test_randn(KN_SHAPE(5, 6, 5), 80);
    for (int dim = 0; dim < 3; dim++) {
        kn_tensor *in[2] = {t, idx};
        char what[64];
        snprintf(what, sizeof what, "index_select dim %d", dim);
        check_op(what, in, 2, index_select_op, &dim, 0, 0, 1e-5, 1e-6);
    }
    kn_tensor *emb[2] = {kn_test_randn(KN_SHAPE(5, 8), 81),
                         kn_reshape(kn_slice(idx, 0, 0, 6, 1), KN_SHAPE(2, 3))};
    check_op("embedding", emb, 2, embedding_op, NULL, 0, 0, 1e-5, 1e-6);
    int64_t g[12] = {0, 4, 2, 2, 1, 0, 3, 3, 3, 4, 0, 1};
    kn_tensor *gidx = kn_from_int64s(g, KN_SHAPE(3, 4));
    kn_tensor *src = kn_test_randn(KN_SHAPE(5, 5), 82);
    int dim0 = 0, dim1 = 1;
    kn_tensor *gin[2] = {src, gidx};
    check_op("gather dim 0", gin, 2, gather_op, &dim0, 0, 0, 1e-5, 1e-6);
    check_op("gather dim 1", gin, 2, gather_op, &dim1, 0, 0, 1e-5, 1e-6);
    check_op("gather strided", gin, 2, gather_t_op, &dim1, 0, 0, 1e-5, 1e-6);
    kn_scope_end();
}

Test(cuda_conv, out_of_range_indices_fail_as_on_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    int64_t bad[] = {0, 2, 7, 1};
    kn_tensor *idx = kn_from_int64s(bad, KN_SHAPE(4));
    kn_tensor *t = kn_test_randn(KN_SHAPE(5, 3), 90);
    kn_tensor *idx_gpu = kn_to(idx, kn_test_cuda0), *t_gpu = kn_to(t, kn_test_cuda0);
    cr_assert_not_null(t_gpu, "%s", kn_last_error());
    char expected[512];
    cr_assert_null(kn_index_select(t, 0, idx));
    snprintf(expected, sizeof expected, "%s", kn_last_error());
    cr_assert_null(kn_index_select(t_gpu, 0, idx_gpu));
    cr_assert_eq(kn_last_status(), KN_ERR_VALUE);
    cr_assert_str_eq(kn_last_error(), expected);
    cr_assert_null(kn_embedding(t, idx));
    snprintf(expected, sizeof expected, "%s", kn_last_error());
    cr_assert_null(kn_embedding(t_gpu, idx_gpu));
    cr_assert_str_eq(kn_last_error(), expected);
    int64_t neg[] = {0, -1, 1, 2, 0, 1};
    kn_tensor *gidx = kn_from_int64s(neg, KN_SHAPE(2, 3));
    cr_assert_null(kn_gather(t, 0, gidx));
    snprintf(expected, sizeof expected, "%s", kn_last_error());
    cr_assert_null(kn_gather(t_gpu, 0, kn_to(gidx, kn_test_cuda0)));
    cr_assert_str_eq(kn_last_error(), expected);
    kn_scope_end();
}

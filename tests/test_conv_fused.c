/*
 * test_conv_fused.c — conv2d -> relu (-> 2x2 max_pool2d) as one op (kn__conv2d_relu_pool,
 * core/ops_conv.c) and Sequential running it: the output and every gradient the same
 * bits as the three ops one by one (negative values, exact ties, NaN, odd map sizes, no
 * bias, input gradient or not), the ops one by one where it does not fuse (strided
 * convolution, a 3x3 pool), and a Sequential's errors still naming the layer.
 */
#include "kn_internal.h"
#include "kn_nn.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CONV(...) ((kn_conv2d_args){__VA_ARGS__})
#define POOL(...) ((kn_pool2d_args){__VA_ARGS__})

typedef struct result {
    float *y, *gx, *gw, *gb;
    int64_t ny, nx, nw, nb;
    char name[64]; /* the output's grad_fn */
} result;

static float *copy_out(kn_tensor *t, int64_t *n)
{
    *n = t ? kn_numel(t) : 0;
    if (!t) return NULL;
    float *v = malloc(sizeof(float) * (size_t)(*n > 0 ? *n : 1));
    kn_copy_to_floats(t, v);
    return v;
}

/* Values in steps of 1/8 (exact ties in pooling windows), some NaN if asked. */
static kn_tensor *stepped(const int64_t *shape, int ndim, uint64_t seed, bool nan)
{
    kn_tensor *t = kn_test_uniform(shape, ndim, -1, 1, seed);
    float *v = kn_data_f32(t);
    for (int64_t i = 0; i < kn_numel(t); i++) v[i] = roundf(v[i] * 8) / 8;
    if (nan) v[kn_numel(t) / 3] = NAN;
    return t;
}

static result run(bool fused, const int64_t *xs, const int64_t *ws, bool bias, bool x_grad,
                  bool nan, kn_conv2d_args a, const kn_pool2d_args *pool)
{
    kn_scope_begin();
    kn_tensor *x = stepped(xs, 4, 1, nan), *w = stepped(ws, 4, 2, false);
    kn_tensor *b = bias ? stepped(ws, 1, 3, false) : NULL;
    if (x_grad) kn_set_requires_grad(x, true);
    kn_set_requires_grad(w, true);
    if (b) kn_set_requires_grad(b, true);
    kn_tensor *y;
    if (fused) {
        y = kn__conv2d_relu_pool(x, w, b, a, pool);
    } else {
        y = kn_relu(kn_conv2d(x, w, b, a));
        if (pool) y = kn_max_pool2d(y, *pool);
    }
    cr_assert_not_null(y, "%s", kn_last_error());
    result r = {0};
    snprintf(r.name, sizeof r.name, "%s", y->grad_fn ? y->grad_fn->name : "");
    kn_tensor *g = stepped(y->shape, y->ndim, 4, false);
    cr_assert_eq(kn_backward(y, g, false), KN_OK, "%s", kn_last_error());
    r.y = copy_out(y, &r.ny);
    r.gx = copy_out(x_grad ? kn_grad(x) : NULL, &r.nx);
    r.gw = copy_out(kn_grad(w), &r.nw);
    r.gb = copy_out(b ? kn_grad(b) : NULL, &r.nb);
    kn_scope_end();
    return r;
}

static void same_bits(const float *a, const float *b, int64_t n, const char *what,
                      const char *label)
{
    for (int64_t i = 0; i < n; i++)
        cr_assert_eq(memcmp(&a[i], &b[i], sizeof(float)), 0, "%s: %s[%lld] %.9g vs %.9g", label,
                     what, (long long)i, a[i], b[i]);
}

static void free_result(result *r)
{
    free(r->y);
    free(r->gx);
    free(r->gw);
    free(r->gb);
}

static void check(const int64_t *xs, int xn, const int64_t *ws, int wn, bool bias, bool x_grad,
                  bool nan, kn_conv2d_args a, const kn_pool2d_args *pool, const char *want_node,
                  const char *label)
{
    (void)xn;
    (void)wn;
    result f = run(true, xs, ws, bias, x_grad, nan, a, pool);
    result u = run(false, xs, ws, bias, x_grad, nan, a, pool);
    cr_assert_str_eq(f.name, want_node, "%s: the fused op's node", label);
    cr_assert_eq(f.ny, u.ny, "%s", label);
    same_bits(f.y, u.y, f.ny, "y", label);
    same_bits(f.gx, u.gx, f.nx, "grad x", label);
    same_bits(f.gw, u.gw, f.nw, "grad w", label);
    same_bits(f.gb, u.gb, f.nb, "grad b", label);
    free_result(&f);
    free_result(&u);
}

Test(conv_fused, same_bits_as_the_three_ops)
{
    kn_pool2d_args p2 = POOL(.kernel_size = {2, 2});
    const char *fp = "conv2d_relu_max_pool2d", *fr = "conv2d_relu";
    check(KN_SHAPE(8, 1, 28, 28), KN_SHAPE(16, 1, 3, 3), true, false, false,
          CONV(.padding = {1, 1}), &p2, fp, "conv1 + relu + pool");
    check(KN_SHAPE(8, 16, 14, 14), KN_SHAPE(32, 16, 3, 3), true, true, false,
          CONV(.padding = {1, 1}), &p2, fp, "conv2 + relu + pool, input grad");
    check(KN_SHAPE(3, 4, 9, 7), KN_SHAPE(5, 4, 3, 3), false, true, true, CONV(.padding = {1, 1}),
          &p2, fp, "odd map, no bias, a NaN");
    check(KN_SHAPE(2, 3, 8, 8), KN_SHAPE(6, 3, 3, 3), true, true, false, CONV(.groups = 1), &p2, fp,
          "unpadded 3x3 (6x6 out)");
    check(KN_SHAPE(4, 3, 10, 10), KN_SHAPE(7, 3, 3, 3), true, true, true, CONV(.padding = {1, 1}),
          NULL, fr, "conv + relu alone, a NaN");
    check(KN_SHAPE(2, 3, 8, 8), KN_SHAPE(6, 3, 3, 3), true, true, false, CONV(.padding = {1, 1}),
          &(kn_pool2d_args){.kernel_size = {2, 2}, .stride = {2, 2}}, fp, "stride given as 2");
}

Test(conv_fused, the_ops_one_by_one_where_it_does_not_fuse)
{
    kn_pool2d_args p2 = POOL(.kernel_size = {2, 2}), p3 = POOL(.kernel_size = {3, 3});
    check(KN_SHAPE(2, 3, 12, 12), KN_SHAPE(4, 3, 3, 3), true, true, false,
          CONV(.stride = {2, 2}, .padding = {1, 1}), &p2, "max_pool2d", "strided convolution");
    check(KN_SHAPE(2, 3, 12, 12), KN_SHAPE(4, 3, 3, 3), true, true, false, CONV(.padding = {1, 1}),
          &p3, "max_pool2d", "3x3 pool");
    check(KN_SHAPE(2, 4, 8, 8), KN_SHAPE(4, 2, 3, 3), true, true, false,
          CONV(.padding = {1, 1}, .groups = 2), NULL, "relu", "grouped convolution");
    cr_assert(!kn__conv2d_relu_pool_fusable(NULL, NULL, NULL, CONV(.groups = 1), NULL));
}

Test(conv_fused, errors_are_the_ops_errors)
{
    kn_scope_begin();
    kn_tensor *w = kn_ones(KN_SHAPE(4, 3, 3, 3), KN_FLOAT32);
    kn_pool2d_args p2 = POOL(.kernel_size = {2, 2});
    cr_assert_null(kn__conv2d_relu_pool(kn_ones(KN_SHAPE(1, 2, 8, 8), KN_FLOAT32), w, NULL,
                                        CONV(.groups = 1), &p2));
    cr_assert(strstr(kn_last_error(), "conv2d: input [1, 2, 8, 8] has 2 channels"), "%s",
              kn_last_error());
    cr_assert_null(kn__conv2d_relu_pool(kn_ones(KN_SHAPE(1, 3, 3, 3), KN_FLOAT32), w, NULL,
                                        CONV(.groups = 1), &p2));
    cr_assert(strstr(kn_last_error(), "max_pool2d"), "%s", kn_last_error());
    kn_scope_end();
}

/* ---- Sequential ---------------------------------------------------------------------- */

static kn_module *small_cnn(uint64_t seed)
{
    kn_generator *gen = kn_generator_new(seed);
    kn_module *m = kn_sequential_new();
    const int k3[2] = {3, 3};
    kn_conv2d_args same = CONV(.padding = {1, 1});
    kn_sequential_append(m, kn_conv2d_new(1, 4, k3, same, true, gen));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_max_pool2d_new(POOL(.kernel_size = {2, 2})));
    kn_sequential_append(m, kn_conv2d_new(4, 6, k3, same, true, gen));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_flatten_new(1, -1));
    kn_sequential_append(m, kn_linear_new(6 * 5 * 5, 3, true, gen));
    kn_generator_free(gen);
    return m;
}

Test(conv_fused, sequential_fuses_with_the_same_bits)
{
    kn_scope_begin();
    kn_module *m = small_cnn(5), *same = small_cnn(5);
    kn_tensor *x = stepped(KN_SHAPE(3, 1, 10, 10), 6, false);
    kn_tensor *y = kn_module_forward(m, x);
    cr_assert_not_null(y, "%s", kn_last_error());
    /* the same layers one by one */
    kn_tensor *h = x;
    for (int i = 0; i < same->n_children; i++) h = kn_module_forward(same->children[i], h);
    cr_assert_eq(kn_numel(y), kn_numel(h));
    same_bits(kn_data_f32(y), kn_data_f32(h), kn_numel(y), "y", "sequential");
    cr_assert_eq(kn_backward(kn_sum_all(y), NULL, false), KN_OK);
    cr_assert_eq(kn_backward(kn_sum_all(h), NULL, false), KN_OK);
    int na, nb;
    kn_named_tensor *pa = kn_module_parameters(m, &na), *pb = kn_module_parameters(same, &nb);
    cr_assert_eq(na, nb);
    for (int i = 0; i < na; i++)
        same_bits(kn_data_f32(kn_grad(pa[i].tensor)), kn_data_f32(kn_grad(pb[i].tensor)),
                  kn_numel(pa[i].tensor), "grad", pa[i].name);
    free(pa);
    free(pb);
    kn_module_free(m);
    kn_module_free(same);
    kn_scope_end();
}

Test(conv_fused, sequential_errors_still_name_the_layer)
{
    kn_scope_begin();
    kn_module *m = small_cnn(5);
    cr_assert_null(kn_module_forward(m, kn_ones(KN_SHAPE(1, 2, 10, 10), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "layer 0 (conv2d): conv2d: input [1, 2, 10, 10]"), "%s",
              kn_last_error());
    /* 1x1 maps: the first block fuses, its pool leaves nothing for the second one's */
    cr_assert_null(kn_module_forward(m, kn_ones(KN_SHAPE(1, 1, 2, 2), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "layer 6 (linear)"), "%s", kn_last_error());
    kn_module_free(m);
    kn_scope_end();
}

/*
 * test_conv.c — kn_conv2d, kn_max_pool2d and kn_avg_pool2d: values against PyTorch
 * 1.13, every conv code path (wide GEMM, image by image, 1x1 without unfolding,
 * chunked batches) against a naive reference, gradient checks including stride,
 * padding, dilation, groups, ceil_mode and padding in pools, and error messages.
 */
#include "kn_cpu_linalg.h"
#include "kn_internal.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Expected values computed with torch (see each name's shape comment). */
static const float CONV_BASIC[] = {
    2.734375, 0.53125,   2.046875,  -0.578125, -1.1875,   -2.59375,  0,        1.8125,
    2.828125, 2.6875,    1.578125,  -0.328125, -1.140625, 0.171875,  0.6875,   3.03125,
    1.421875, 3.53125,   -1.1875,   -2.59375,  -3.46875,  -2.375,    -2.1875,  -1.46875,
    1.578125, -0.328125, -1.703125, -2.640625, -2.953125, -2.734375, 1.421875, 3.53125,
    1.65625,  -1.3125,   -2.125,    -2.40625}; /* [2, 3, 2, 3] */
static const float CONV_ARGS[] = {
    -0.734375, -0.703125, -0.5625,   -0.625,    -0.6875,   -0.75,     0.25,      -0.984375,
    0.515625,  -0.046875, -0.1875,   -1.390625, -1.59375,  -1.265625, -1.46875,  -1.671875,
    -1.46875,  -1.53125,  -1.484375, -1.625,    1.078125,  0.609375,  -1.453125, -1.390625,
    -1.59375,  -1.28125,  -1.34375,  -1.65625,  -1.453125, -2.4375,   -2.15625,  -1.875,
    -1.59375,  -2.109375, -1.046875, -1.234375, -0.171875, 0.078125,  -1.234375, -0.921875,
    -1.9375,   -1.625,    -1.3125,   -0.96875,  -0.90625,  0.9375,    1.1875,    2.609375,
    0.796875,  1.90625,   -1.234375, -0.921875, -1.15625,  -1.09375,  0.5,       0.34375,
    1.4375,    1.265625,  1.09375,   0.921875,  0.75,      1.296875,  1.28125,   -1.203125,
    -0.828125, -2.703125, -1.078125, -1.3125,   -0.21875,  -0.453125, 0.40625,   0.328125,
    0.859375,  0.703125,  0.125,     -1.703125, -1.40625,  -2.703125, -1.078125, -0.6875,
    0.5625,    -0.59375,  -0.578125, -1.046875, -0.875,    -0.703125, -0.53125,  -0.359375,
    0.796875,  0.953125,  2.265625,  0.90625,   1.984375,  0.140625,  0.15625,   -0.359375,
    -0.34375,  0.515625,  0.5625,    1.296875,  1.265625,  0.609375,  1.6875,    0.375,
    1.984375,  0.140625,  0.90625,   0.421875}; /* [1, 4, 3, 9] */
static const float CONV_1X1[] = {
    0.234375,  0.09375,  0.21875,   0.078125, -0.0625,   -0.203125, 0.515625, 0.65625,   -0.53125,
    -0.390625, -0.25,    -0.109375, 0.09375,  0.21875,   0.078125,  -0.0625,  -0.203125, -0.34375,
    0.65625,   -0.53125, -0.390625, -0.25,    -0.109375, 0.03125}; /* [2, 2, 2, 3] */
static const float MAXP_CEIL[] = {
    1,     0.75,  0.375, 0.625, 0.25,  1,     0.125, 0.75, 0.5,
    0.625, 0.875, 1,     0.75,  0.875, 0.625, -0.25, 1,    0.125}; /* [1, 2, 3, 3] */
static const float MAXP_PAD[] = {
    0,    1,     0.75,  0.625, 0.75,  -0.25,  0.625, 1,     0.75, 0.875, 1, 0.875, 0.625,
    0.75, 0.625, 0.75,  1,     0.375, -0.375, 0.625, 0.875, 1,    0.875, 1, 0.75,  0.875,
    0.75, 1,     0.625, 1,     0.25,  0.875,  1,     0.875, 1,    0}; /* [1, 2, 3, 6] */
static const float AVGP_CEIL[] = {-0.03125, 0.15625, -0.1875,  0.03125, -0.3125,  0.40625, -0.1875,
                                  0,        0.1875,  -0.40625, 0.3125,  -0.03125, 0.1875,  -0.15625,
                                  0.03125,  -0.5625, 0.6875,   -0.1875}; /* [1, 2, 3, 3] */
static const float AVGP_PAD[] = {-0.013888889,  0.013888889,
                                 -0.0972222239, 0.0416666679,
                                 0.0694444478,  -0.138888896,
                                 0.166666672,   0.0416666679,
                                 0.027777778,   -0.0416666679,
                                 0.0833333358,  0.25,
                                 -0.180555552,  0,
                                 0.125,         -0.0833333358,
                                 0.055555556,   -0.0416666679,
                                 0.027777778,   -0.145833328,
                                 -0.138888896,  0.180555552,
                                 0.0694444478,  0.125}; /* [1, 2, 3, 4] */
static const float AVGP_EXCL[] = {
    -0.03125,     0.020833334, -0.145833328, 0.125,         0.104166664, -0.138888896, 0.166666672,
    0.0833333358, 0.0625,      -0.0625,      0.125,         0.75,        -0.40625,     0,
    0.1875,       -0.25,       0.0833333358, -0.0416666679, 0.027777778, -0.291666657, -0.3125,
    0.270833343,  0.104166664, 0.375};                         /* [1, 2, 3, 4] */
static const float MAXP_NAN[] = {3, NAN};                      /* [1, 1, 1, 2] */
static const float MAXP_NAN_S1[] = {3, 3, NAN};                /* [1, 1, 1, 3] */
static const float MAXP_NAN_GRAD[] = {0, 2, 0, 1, 0, 0, 0, 0}; /* [1, 1, 2, 4] */

#define CONV(...) ((kn_conv2d_args){__VA_ARGS__})
#define POOL(...) ((kn_pool2d_args){__VA_ARGS__})

Test(conv2d, values_match_torch)
{
    kn_scope_begin();
    kn_tensor *y =
        kn_conv2d(kn_test_seq(KN_SHAPE(2, 2, 4, 5), 1), kn_test_seq(KN_SHAPE(3, 2, 3, 3), 2),
                  kn_test_seq(KN_SHAPE(3), 3), CONV(.groups = 1));
    KN_ASSERT_SHAPE(y, KN_SHAPE(2, 3, 2, 3));
    KN_ASSERT_VALUES(y, CONV_BASIC);
    kn_conv2d_args args = {.stride = {2, 1}, .padding = {1, 2}, .dilation = {1, 2}, .groups = 2};
    y = kn_conv2d(kn_test_seq(KN_SHAPE(1, 4, 6, 7), 1), kn_test_seq(KN_SHAPE(4, 2, 3, 2), 2),
                  kn_test_seq(KN_SHAPE(4), 3), args);
    KN_ASSERT_SHAPE(y, KN_SHAPE(1, 4, 3, 9));
    KN_ASSERT_VALUES(y, CONV_ARGS);
    y = kn_conv2d(kn_test_seq(KN_SHAPE(2, 3, 2, 3), 1), kn_test_seq(KN_SHAPE(2, 3, 1, 1), 2), NULL,
                  CONV(.groups = 1));
    KN_ASSERT_SHAPE(y, KN_SHAPE(2, 2, 2, 3));
    KN_ASSERT_VALUES(y, CONV_1X1);
    /* a non-contiguous input: the same values through a double transpose */
    kn_tensor *x =
        kn_transpose(kn_contiguous(kn_transpose(kn_test_seq(KN_SHAPE(2, 2, 4, 5), 1), 2, 3)), 2, 3);
    cr_assert(!kn_is_contiguous(x));
    KN_ASSERT_VALUES(kn_conv2d(x, kn_test_seq(KN_SHAPE(3, 2, 3, 3), 2), kn_test_seq(KN_SHAPE(3), 3),
                               CONV(.groups = 1)),
                     CONV_BASIC);
    kn_scope_end();
}

/* Naive double-precision convolution of contiguous tensors. */
static kn_tensor *reference_conv(kn_tensor *x, kn_tensor *w, kn_tensor *b, kn_conv2d_args a)
{
    int64_t n = x->shape[0], c = x->shape[1], h = x->shape[2], wd = x->shape[3];
    int64_t o = w->shape[0], cg = w->shape[1], kh = w->shape[2], kw = w->shape[3];
    int sh = a.stride[0] ? a.stride[0] : 1, sw = a.stride[1] ? a.stride[1] : 1;
    int dh = a.dilation[0] ? a.dilation[0] : 1, dw = a.dilation[1] ? a.dilation[1] : 1;
    int ph = a.padding[0], pw = a.padding[1], groups = a.groups ? a.groups : 1;
    int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    int64_t ow = (wd + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    kn_tensor *y = kn_empty(KN_SHAPE(n, o, oh, ow), KN_FLOAT32);
    const float *xv = kn_data_f32(x), *wv = kn_data_f32(w), *bv = b ? kn_data_f32(b) : NULL;
    float *yv = kn_data_f32(y);
    int64_t og = o / groups;
    for (int64_t i = 0; i < n; i++)
        for (int64_t oc = 0; oc < o; oc++)
            for (int64_t r = 0; r < oh; r++)
                for (int64_t s = 0; s < ow; s++) {
                    double sum = bv ? bv[oc] : 0;
                    for (int64_t q = 0; q < cg; q++) {
                        int64_t ic = (oc / og) * cg + q;
                        (void)c;
                        for (int64_t u = 0; u < kh; u++)
                            for (int64_t v = 0; v < kw; v++) {
                                int64_t ih = r * sh - ph + u * dh, iw = s * sw - pw + v * dw;
                                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                                sum += (double)xv[((i * c + ic) * h + ih) * wd + iw] *
                                       wv[((oc * cg + q) * kh + u) * kw + v];
                            }
                    }
                    yv[((i * o + oc) * oh + r) * ow + s] = (float)sum;
                }
    return y;
}

static void check_conv_path(const int64_t *xs, int xn, const int64_t *ws, int wn, bool bias,
                            kn_conv2d_args a)
{
    (void)xn;
    (void)wn;
    kn_scope_begin();
    kn_tensor *x = kn_test_uniform(xs, 4, -1, 1, 11), *w = kn_test_uniform(ws, 4, -1, 1, 12);
    kn_tensor *b = bias ? kn_test_uniform(&ws[0], 1, -1, 1, 13) : NULL;
    kn_tensor *want = reference_conv(x, w, b, a), *got = kn_conv2d(x, w, b, a);
    KN_ASSERT_SHAPE(got, want->shape, 4);
    int64_t n = kn_numel(want);
    float *values = malloc(sizeof(float) * (size_t)n);
    kn_copy_to_floats(want, values);
    char msg[256];
    cr_assert(kn_test_close(got, values, n, 1e-4, 1e-4, msg, sizeof msg), "%s", msg);
    free(values);
    kn_scope_end();
}

Test(conv2d, every_code_path_matches_reference)
{
    /* small maps: the whole batch in one wide GEMM per group */
    check_conv_path(KN_SHAPE(3, 4, 9, 8), KN_SHAPE(6, 2, 3, 2), true,
                    CONV(.stride = {2, 1}, .padding = {1, 1}, .dilation = {2, 1}, .groups = 2));
    /* large maps: image by image */
    check_conv_path(KN_SHAPE(2, 3, 30, 30), KN_SHAPE(4, 3, 3, 3), true, CONV(.padding = {1, 1}));
    check_conv_path(KN_SHAPE(2, 4, 26, 25), KN_SHAPE(8, 1, 3, 3), false,
                    CONV(.padding = {1, 0}, .groups = 4));
    /* 1x1: no unfolding */
    check_conv_path(KN_SHAPE(2, 4, 5, 6), KN_SHAPE(6, 2, 1, 1), true, CONV(.groups = 2));
    check_conv_path(KN_SHAPE(2, 4, 30, 30), KN_SHAPE(5, 4, 1, 1), false, CONV(.groups = 1));
    /* strided 1x1 still unfolds */
    check_conv_path(KN_SHAPE(2, 3, 7, 7), KN_SHAPE(2, 3, 1, 1), true, CONV(.stride = {2, 2}));
    /* a batch that does not split evenly over the threads */
    check_conv_path(KN_SHAPE(5, 16, 128, 128), KN_SHAPE(4, 16, 3, 3), true,
                    CONV(.padding = {1, 1}));
}

typedef struct conv_case {
    kn_conv2d_args args;
    bool transpose_input;
} conv_case;

static kn_tensor *conv_fn(kn_tensor **in, void *context)
{
    const conv_case *c = context;
    kn_tensor *x = c->transpose_input ? kn_transpose(in[0], 2, 3) : in[0];
    return kn_conv2d(x, in[1], in[2], c->args);
}

static void gradcheck_conv(const int64_t *xs, int xn, const int64_t *ws, int wn, bool bias,
                           conv_case c, int max_elements)
{
    (void)xn;
    (void)wn;
    kn_scope_begin();
    kn_tensor *in[3] = {kn_set_requires_grad(kn_test_uniform(xs, 4, -1, 1, 1), true),
                        kn_set_requires_grad(kn_test_uniform(ws, 4, -1, 1, 2), true),
                        bias ? kn_set_requires_grad(kn_test_uniform(ws, 1, -1, 1, 3), true) : NULL};
    char msg[512];
    cr_assert(
        kn_test_gradcheck(conv_fn, in, 3, &c, 1e-3, 2e-2, 2e-3, max_elements, msg, sizeof msg),
        "%s", msg);
    kn_scope_end();
}

Test(conv2d, gradcheck)
{
    gradcheck_conv(KN_SHAPE(2, 2, 5, 6), KN_SHAPE(3, 2, 3, 3), true,
                   (conv_case){CONV(.groups = 1), false}, 0);
    gradcheck_conv(
        KN_SHAPE(2, 4, 7, 6), KN_SHAPE(4, 2, 3, 2), true,
        (conv_case){CONV(.stride = {2, 1}, .padding = {1, 1}, .dilation = {2, 1}, .groups = 2),
                    false},
        0);
    gradcheck_conv(KN_SHAPE(1, 3, 6, 5), KN_SHAPE(2, 3, 2, 2), false,
                   (conv_case){CONV(.stride = {2, 2}, .padding = {1, 1}), true}, 0);
    gradcheck_conv(KN_SHAPE(2, 4, 3, 4), KN_SHAPE(6, 2, 1, 1), true,
                   (conv_case){CONV(.groups = 2), false}, 0);
    /* image-by-image path (24x24 outputs) */
    gradcheck_conv(KN_SHAPE(2, 2, 24, 24), KN_SHAPE(3, 2, 3, 3), true,
                   (conv_case){CONV(.padding = {1, 1}), false}, 60);
}

/* ---- gradients against a double-precision reference -------------------------------- */

typedef struct conv_grads {
    double *gx, *gw, *gb;
} conv_grads;

/* gx, gw, gb of sum(conv(x, w, b) * g) in double, by scattering each output's gradient. */
static conv_grads reference_grads(kn_tensor *x, kn_tensor *w, kn_tensor *g, kn_conv2d_args a)
{
    int64_t n = x->shape[0], c = x->shape[1], h = x->shape[2], wd = x->shape[3];
    int64_t o = w->shape[0], cg = w->shape[1], kh = w->shape[2], kw = w->shape[3];
    int64_t oh = g->shape[2], ow = g->shape[3];
    int sh = a.stride[0] ? a.stride[0] : 1, sw = a.stride[1] ? a.stride[1] : 1;
    int dh = a.dilation[0] ? a.dilation[0] : 1, dw = a.dilation[1] ? a.dilation[1] : 1;
    int groups = a.groups ? a.groups : 1;
    int64_t og = o / groups;
    conv_grads r = {calloc((size_t)kn_numel(x), sizeof(double)),
                    calloc((size_t)kn_numel(w), sizeof(double)), calloc((size_t)o, sizeof(double))};
    const float *xv = kn_data_f32(x), *wv = kn_data_f32(w), *gv = kn_data_f32(g);
    for (int64_t i = 0; i < n; i++)
        for (int64_t oc = 0; oc < o; oc++)
            for (int64_t p = 0; p < oh; p++)
                for (int64_t q = 0; q < ow; q++) {
                    double gval = gv[((i * o + oc) * oh + p) * ow + q];
                    r.gb[oc] += gval;
                    for (int64_t cq = 0; cq < cg; cq++) {
                        int64_t ic = (oc / og) * cg + cq;
                        for (int64_t u = 0; u < kh; u++)
                            for (int64_t v = 0; v < kw; v++) {
                                int64_t ih = p * sh - a.padding[0] + u * dh;
                                int64_t iw = q * sw - a.padding[1] + v * dw;
                                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                                int64_t xi = ((i * c + ic) * h + ih) * wd + iw;
                                int64_t wi = ((oc * cg + cq) * kh + u) * kw + v;
                                r.gx[xi] += wv[wi] * gval;
                                r.gw[wi] += xv[xi] * gval;
                            }
                    }
                }
    return r;
}

static void assert_close_to(kn_tensor *t, const double *want, const char *what, const char *label)
{
    int64_t n = kn_numel(t);
    const float *got = kn_data_f32(t);
    double scale = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (int64_t i = 0; i < n; i++)
        cr_assert(fabs(got[i] - want[i]) <= 1e-5 * scale + 1e-5, "%s, %s[%lld] = %.7g, want %.7g",
                  label, what, (long long)i, got[i], want[i]);
}

static void check_grads(const int64_t *xs, int xn, const int64_t *ws, int wn, kn_conv2d_args a,
                        const char *label)
{
    (void)xn;
    (void)wn;
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_uniform(xs, 4, -1, 1, 21), true);
    kn_tensor *w = kn_set_requires_grad(kn_test_uniform(ws, 4, -1, 1, 22), true);
    kn_tensor *b = kn_set_requires_grad(kn_test_uniform(ws, 1, -1, 1, 23), true);
    kn_tensor *y = kn_conv2d(x, w, b, a);
    cr_assert_not_null(y, "%s: %s", label, kn_last_error());
    kn_tensor *g = kn_test_uniform(y->shape, 4, -1, 1, 24);
    cr_assert_eq(kn_backward(y, g, false), KN_OK, "%s: %s", label, kn_last_error());
    conv_grads r = reference_grads(x, w, g, a);
    assert_close_to(kn_grad(x), r.gx, "grad x", label);
    assert_close_to(kn_grad(w), r.gw, "grad w", label);
    assert_close_to(kn_grad(b), r.gb, "grad b", label);
    free(r.gx);
    free(r.gw);
    free(r.gb);
    kn_scope_end();
}

/* Every shape once per weight-gradient form of the direct kernels (and the im2col path
 * for the strided, dilated and grouped ones). */
static void check_grad_shapes(void)
{
    check_grads(KN_SHAPE(64, 16, 14, 14), KN_SHAPE(32, 16, 3, 3), CONV(.padding = {1, 1}), "conv2");
    check_grads(KN_SHAPE(37, 1, 28, 28), KN_SHAPE(16, 1, 3, 3), CONV(.padding = {1, 1}), "conv1");
    check_grads(KN_SHAPE(3, 5, 11, 9), KN_SHAPE(20, 5, 5, 5), CONV(.padding = {2, 2}), "5x5 pad 2");
    check_grads(KN_SHAPE(2, 3, 8, 10), KN_SHAPE(9, 3, 3, 3), CONV(.groups = 1), "3x3 unpadded");
    check_grads(KN_SHAPE(2, 4, 7, 9), KN_SHAPE(6, 4, 2, 3), CONV(.padding = {1, 0}),
                "2x3 pad (1, 0)");
    check_grads(KN_SHAPE(3, 7, 5, 6), KN_SHAPE(33, 7, 1, 1), CONV(.groups = 1), "1x1, 33 outputs");
    check_grads(KN_SHAPE(17, 3, 9, 8), KN_SHAPE(4, 3, 3, 3),
                CONV(.stride = {2, 2}, .padding = {1, 1}), "stride 2 (im2col)");
    check_grads(KN_SHAPE(18, 4, 9, 9), KN_SHAPE(6, 2, 3, 3),
                CONV(.padding = {2, 2}, .dilation = {2, 2}, .groups = 2),
                "dilated, grouped (im2col)");
}

Test(conv2d, gradients_match_reference_rows_form)
{
    setenv("KN_CONV_WGRAD", "rows", 1);
    check_grad_shapes();
}

Test(conv2d, gradients_match_reference_dot_form)
{
    setenv("KN_CONV_WGRAD", "dot", 1);
    check_grad_shapes();
}

Test(conv2d, gradients_match_reference_each_layers_choice)
{
    check_grad_shapes();
}

/* Shapes for the narrow weight-gradient tile (<= 16 output channels) and the pixel-row
 * forward (32k output channels, or 32k input channels for the input gradient), with
 * tails: rows of 29 and 7 (pixel tiles of 14), 1 and 3 input channels, weight steps not
 * a multiple of the tile's 12, padding 0 and 2, one image. */
static void check_tile_shapes(void)
{
    check_grads(KN_SHAPE(5, 16, 14, 14), KN_SHAPE(16, 16, 3, 3), CONV(.padding = {1, 1}),
                "resnet 16->16");
    check_grads(KN_SHAPE(3, 3, 11, 29), KN_SHAPE(32, 3, 3, 3), CONV(.padding = {1, 1}),
                "3->32, rows of 29");
    check_grads(KN_SHAPE(1, 1, 7, 7), KN_SHAPE(64, 1, 5, 5), CONV(.padding = {2, 2}),
                "1->64 5x5 pad 2, rows of 7, one image");
    check_grads(KN_SHAPE(2, 32, 9, 9), KN_SHAPE(16, 32, 3, 3), CONV(.padding = {0, 0}),
                "32->16 unpadded (pixel-row input gradient)");
    check_grads(KN_SHAPE(2, 3, 10, 12), KN_SHAPE(12, 3, 3, 3), CONV(.padding = {1, 1}),
                "3->12 (narrow, partial)");
    check_grads(KN_SHAPE(3, 5, 6, 8), KN_SHAPE(1, 5, 3, 3), CONV(.padding = {1, 1}), "5->1");
    check_grads(KN_SHAPE(2, 4, 9, 9), KN_SHAPE(17, 4, 3, 3), CONV(.padding = {2, 2}),
                "4->17 pad 2 (wide)");
    /* one input channel, 3x3: rows of 28 (16 + a tail of 12), of 40 (two vectors and 8),
     * of 5 (a tail alone), one output channel */
    check_grads(KN_SHAPE(6, 1, 28, 28), KN_SHAPE(16, 1, 3, 3), CONV(.padding = {1, 1}),
                "1->16 28x28");
    check_grads(KN_SHAPE(3, 1, 6, 40), KN_SHAPE(7, 1, 3, 3), CONV(.padding = {1, 1}),
                "1->7, rows of 40");
    check_grads(KN_SHAPE(4, 1, 7, 7), KN_SHAPE(3, 1, 3, 3), CONV(.padding = {0, 0}),
                "1->3 unpadded, rows of 5");
    check_grads(KN_SHAPE(2, 1, 9, 17), KN_SHAPE(1, 1, 3, 3), CONV(.padding = {2, 2}),
                "1->1 pad 2, rows of 19");
    /* padded rows of 16: an odd number of rows, a partial panel, 5x5 */
    check_grads(KN_SHAPE(3, 12, 13, 14), KN_SHAPE(13, 12, 3, 3), CONV(.padding = {1, 1}),
                "12->13 13x14");
    check_grads(KN_SHAPE(2, 5, 12, 12), KN_SHAPE(6, 5, 5, 5), CONV(.padding = {2, 2}),
                "5->6 5x5 pad 2, 12x12");
}

Test(conv2d, new_tiles_match_reference_each_form)
{
    const char *forward[] = {"pixels", "tiles", NULL};
    const char *wgrad[] = {"rows", "rows-wide", NULL};
    for (int f = 0; f < 3; f++)
        for (int g = 0; g < 3; g++) {
            if (forward[f])
                setenv("KN_CONV_FORWARD", forward[f], 1);
            else
                unsetenv("KN_CONV_FORWARD");
            if (wgrad[g])
                setenv("KN_CONV_WGRAD", wgrad[g], 1);
            else
                unsetenv("KN_CONV_WGRAD");
            check_tile_shapes();
        }
}

/* The kernels each instruction set falls back to (criterion runs each test in a process
 * of its own, so KN_GEMM_ISA is read afresh). */
Test(conv2d, new_tile_shapes_on_avx2)
{
    setenv("KN_GEMM_ISA", "avx2", 1);
    check_tile_shapes();
    check_grad_shapes();
}

Test(conv2d, new_tile_shapes_on_generic)
{
    setenv("KN_GEMM_ISA", "generic", 1);
    check_tile_shapes();
}

/* ---- the same bits for any thread count ----------------------------------------------- */

typedef struct conv_run {
    float *y, *gx, *gw, *gb;
    int64_t ny, nx, nw, nb;
} conv_run;

static conv_run run_conv(const int64_t *xs, const int64_t *ws, kn_conv2d_args a, int threads)
{
    kn_set_num_threads(threads);
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_uniform(xs, 4, -1, 1, 31), true);
    kn_tensor *w = kn_set_requires_grad(kn_test_uniform(ws, 4, -1, 1, 32), true);
    kn_tensor *b = kn_set_requires_grad(kn_test_uniform(ws, 1, -1, 1, 33), true);
    kn_tensor *y = kn_conv2d(x, w, b, a);
    cr_assert_not_null(y);
    cr_assert_eq(kn_backward(y, kn_test_uniform(y->shape, 4, -1, 1, 34), false), KN_OK);
    conv_run r = {NULL, NULL, NULL, NULL, kn_numel(y), kn_numel(x), kn_numel(w), kn_numel(b)};
    r.y = malloc(sizeof(float) * (size_t)r.ny);
    r.gx = malloc(sizeof(float) * (size_t)r.nx);
    r.gw = malloc(sizeof(float) * (size_t)r.nw);
    r.gb = malloc(sizeof(float) * (size_t)r.nb);
    kn_copy_to_floats(y, r.y);
    kn_copy_to_floats(kn_grad(x), r.gx);
    kn_copy_to_floats(kn_grad(w), r.gw);
    kn_copy_to_floats(kn_grad(b), r.gb);
    kn_scope_end();
    return r;
}

static void free_run(conv_run *r)
{
    free(r->y);
    free(r->gx);
    free(r->gw);
    free(r->gb);
}

/* y and every gradient of two runs, bit for bit. */
static void assert_same_bits(const conv_run *one, const conv_run *other, const char *label)
{
    cr_assert_eq(memcmp(one->y, other->y, sizeof(float) * (size_t)one->ny), 0, "%s: y", label);
    cr_assert_eq(memcmp(one->gx, other->gx, sizeof(float) * (size_t)one->nx), 0, "%s: grad x",
                 label);
    cr_assert_eq(memcmp(one->gw, other->gw, sizeof(float) * (size_t)one->nw), 0, "%s: grad w",
                 label);
    cr_assert_eq(memcmp(one->gb, other->gb, sizeof(float) * (size_t)one->nb), 0, "%s: grad b",
                 label);
}

static void check_thread_invariance(const int64_t *xs, int xn, const int64_t *ws, int wn,
                                    kn_conv2d_args a, const char *label)
{
    (void)xn;
    (void)wn;
    conv_run one = run_conv(xs, ws, a, 1);
    for (int t = 2; t <= 4; t++) {
        conv_run more = run_conv(xs, ws, a, t);
        char what[128];
        snprintf(what, sizeof what, "%s, %d threads", label, t);
        assert_same_bits(&one, &more, what);
        free_run(&more);
    }
    free_run(&one);
}

/* The pixel-row forward and the MR x NR tiles, and the narrow and wide weight-gradient
 * tiles, compute each value as the same chain of FMAs: the same bits. */
static conv_run run_forms(const int64_t *xs, const int64_t *ws, kn_conv2d_args a,
                          const char *forward, const char *wgrad)
{
    setenv("KN_CONV_FORWARD", forward, 1);
    setenv("KN_CONV_WGRAD", wgrad, 1);
    return run_conv(xs, ws, a, 2);
}

static void check_forms_same_bits(const int64_t *xs, int xn, const int64_t *ws, int wn,
                                  kn_conv2d_args a, const char *label)
{
    (void)xn;
    (void)wn;
    conv_run one = run_forms(xs, ws, a, "tiles", "rows-wide");
    conv_run other = run_forms(xs, ws, a, "pixels", "rows");
    assert_same_bits(&one, &other, label);
    free_run(&one);
    free_run(&other);
}

Test(conv2d, every_tile_form_gives_the_same_bits)
{
    check_forms_same_bits(KN_SHAPE(8, 16, 14, 14), KN_SHAPE(32, 16, 3, 3), CONV(.padding = {1, 1}),
                          "16->32");
    check_forms_same_bits(KN_SHAPE(8, 16, 14, 14), KN_SHAPE(16, 16, 3, 3), CONV(.padding = {1, 1}),
                          "16->16");
    check_forms_same_bits(KN_SHAPE(3, 32, 11, 29), KN_SHAPE(32, 32, 3, 3), CONV(.padding = {2, 2}),
                          "32->32 pad 2, rows of 29");
    check_forms_same_bits(KN_SHAPE(2, 3, 9, 7), KN_SHAPE(12, 3, 3, 3), CONV(.padding = {0, 0}),
                          "3->12 unpadded");
}

/* The forwards that store straight into the output (AVX-512: one input channel 3x3, and
 * the tiles over padded rows of 16) against the MR x NR tiles through the virtual
 * layout: the same chains, the same bits, through a row's tails, an odd number of
 * rows, partial panels and the fused relu. */
static void check_own_forward_same_bits(const int64_t *xs, int xn, const int64_t *ws, int wn,
                                        kn_conv2d_args a, const char *label)
{
    (void)xn;
    (void)wn;
    conv_run one = run_forms(xs, ws, a, "tiles", "rows");
    unsetenv("KN_CONV_FORWARD");
    conv_run other = run_conv(xs, ws, a, 2);
    assert_same_bits(&one, &other, label);
    free_run(&one);
    free_run(&other);
}

static void fused_relu_bits(const int64_t *xs, int xn, const int64_t *ws, int wn, kn_conv2d_args a,
                            float *y, int64_t n)
{
    (void)xn;
    (void)wn;
    kn_scope_begin();
    kn_tensor *x = kn_test_uniform(xs, 4, -1, 1, 41), *w = kn_test_uniform(ws, 4, -1, 1, 42);
    kn_tensor *b = kn_test_uniform(ws, 1, -1, 1, 43);
    ((float *)kn__data_ptr(x))[100] = NAN; /* relu keeps NaN */
    kn_tensor *out = kn__conv2d_relu_pool(x, w, b, a, NULL);
    cr_assert_not_null(out, "%s", kn_last_error());
    cr_assert_eq(kn_numel(out), n);
    kn_copy_to_floats(out, y);
    kn_scope_end();
}

Test(conv2d, own_forwards_give_the_tiles_bits)
{
    check_own_forward_same_bits(KN_SHAPE(5, 1, 28, 28), KN_SHAPE(16, 1, 3, 3),
                                CONV(.padding = {1, 1}), "1->16 28x28");
    check_own_forward_same_bits(KN_SHAPE(3, 1, 6, 40), KN_SHAPE(7, 1, 3, 3),
                                CONV(.padding = {1, 1}), "1->7, rows of 40");
    check_own_forward_same_bits(KN_SHAPE(2, 1, 9, 17), KN_SHAPE(1, 1, 3, 3),
                                CONV(.padding = {2, 2}), "1->1 pad 2");
    check_own_forward_same_bits(KN_SHAPE(3, 4, 8, 8), KN_SHAPE(1, 4, 3, 3), CONV(.padding = {1, 1}),
                                "4->1 (its input gradient)");
    check_own_forward_same_bits(KN_SHAPE(6, 16, 14, 14), KN_SHAPE(16, 16, 3, 3),
                                CONV(.padding = {1, 1}), "16->16 14x14 (rows of 16)");
    check_own_forward_same_bits(KN_SHAPE(3, 12, 13, 14), KN_SHAPE(13, 12, 3, 3),
                                CONV(.padding = {1, 1}), "12->13 13x14 (odd rows, partial panel)");
    check_own_forward_same_bits(KN_SHAPE(2, 5, 12, 12), KN_SHAPE(6, 5, 5, 5),
                                CONV(.padding = {2, 2}), "5->6 5x5 pad 2 (rows of 16, wo 12)");
    int64_t n = 5 * 16 * 28 * 28;
    float *tiles = malloc(sizeof(float) * (size_t)n), *own = malloc(sizeof(float) * (size_t)n);
    setenv("KN_CONV_FORWARD", "tiles", 1);
    fused_relu_bits(KN_SHAPE(5, 1, 28, 28), KN_SHAPE(16, 1, 3, 3), CONV(.padding = {1, 1}), tiles,
                    n);
    unsetenv("KN_CONV_FORWARD");
    fused_relu_bits(KN_SHAPE(5, 1, 28, 28), KN_SHAPE(16, 1, 3, 3), CONV(.padding = {1, 1}), own, n);
    cr_assert_eq(memcmp(tiles, own, sizeof(float) * (size_t)n), 0, "conv2d + relu, 1->16");
    n = 3 * 16 * 14 * 14;
    setenv("KN_CONV_FORWARD", "tiles", 1);
    fused_relu_bits(KN_SHAPE(3, 16, 14, 14), KN_SHAPE(16, 16, 3, 3), CONV(.padding = {1, 1}), tiles,
                    n);
    unsetenv("KN_CONV_FORWARD");
    fused_relu_bits(KN_SHAPE(3, 16, 14, 14), KN_SHAPE(16, 16, 3, 3), CONV(.padding = {1, 1}), own,
                    n);
    cr_assert_eq(memcmp(tiles, own, sizeof(float) * (size_t)n), 0, "conv2d + relu, 16->16");
    free(tiles);
    free(own);
}

/* The weight gradient from the images the forward kept padded, and from x padded again:
 * the same bits (kernel level: kn_conv2d always keeps them when the weight needs a
 * gradient). */
static void check_kept_padding(int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t k,
                               int64_t pad, const char *label)
{
    kn_cpu_conv_geometry g = {.channels = c,
                              .height = h,
                              .width = w,
                              .kernel_h = k,
                              .kernel_w = k,
                              .stride_h = 1,
                              .stride_w = 1,
                              .pad_h = pad,
                              .pad_w = pad,
                              .dilation_h = 1,
                              .dilation_w = 1,
                              .out_h = h + 2 * pad - k + 1,
                              .out_w = w + 2 * pad - k + 1};
    cr_assert(kn_cpu_conv_direct_ok(&g, 1), "%s", label);
    int64_t nx = n * c * h * w, nw = o * c * k * k, ny = n * o * g.out_h * g.out_w;
    int64_t np = n * kn_cpu_conv_direct_padded_floats(&g);
    float *x = malloc(sizeof(float) * (size_t)nx), *wt = malloc(sizeof(float) * (size_t)nw);
    float *y = malloc(sizeof(float) * (size_t)ny), *gy = malloc(sizeof(float) * (size_t)ny);
    float *padded = malloc(sizeof(float) * (size_t)np);
    float *gw_kept = malloc(sizeof(float) * (size_t)nw),
          *gw_again = malloc(sizeof(float) * (size_t)nw);
    float gb_kept[64], gb_again[64];
    for (int64_t i = 0; i < nx; i++) x[i] = (float)((i * 37) % 101) / 50.f - 1.f;
    for (int64_t i = 0; i < nw; i++) wt[i] = (float)((i * 13) % 29) / 14.f - 1.f;
    for (int64_t i = 0; i < ny; i++) gy[i] = (float)((i * 7) % 23) / 11.f - 1.f;
    for (int64_t i = 0; i < np; i++) padded[i] = NAN; /* every float the forward must write */
    cr_assert(kn_cpu_conv2d_forward(&g, n, o, 1, x, wt, NULL, y, padded), "%s", label);
    cr_assert(kn_cpu_conv2d_backward(&g, n, o, 1, x, padded, wt, gy, NULL, gw_kept, gb_kept));
    cr_assert(kn_cpu_conv2d_backward(&g, n, o, 1, x, NULL, wt, gy, NULL, gw_again, gb_again));
    cr_assert_eq(memcmp(gw_kept, gw_again, sizeof(float) * (size_t)nw), 0, "%s: grad w", label);
    cr_assert_eq(memcmp(gb_kept, gb_again, sizeof(float) * (size_t)o), 0, "%s: grad b", label);
    free(x);
    free(wt);
    free(y);
    free(gy);
    free(padded);
    free(gw_kept);
    free(gw_again);
}

Test(conv2d, weight_gradient_from_the_kept_padding)
{
    kn_set_num_threads(2);
    check_kept_padding(9, 16, 14, 14, 16, 3, 1, "16->16 (rows form, narrow)");
    check_kept_padding(5, 16, 14, 14, 32, 3, 1, "16->32 (rows form)");
    check_kept_padding(7, 1, 28, 28, 16, 3, 1, "1->16 (one channel)");
    check_kept_padding(3, 3, 9, 11, 4, 5, 2, "3->4 5x5 pad 2 (dot form)");
    check_kept_padding(2, 2, 6, 7, 3, 3, 0, "2->3 unpadded");
    setenv("KN_CONV_WGRAD", "dot", 1);
    check_kept_padding(4, 16, 14, 14, 16, 3, 1, "16->16, dot form");
}

Test(conv2d, same_bits_for_any_thread_count)
{
    check_thread_invariance(KN_SHAPE(64, 16, 14, 14), KN_SHAPE(32, 16, 3, 3),
                            CONV(.padding = {1, 1}), "conv2");
    check_thread_invariance(KN_SHAPE(64, 16, 14, 14), KN_SHAPE(16, 16, 3, 3),
                            CONV(.padding = {1, 1}), "resnet 16->16");
    check_thread_invariance(KN_SHAPE(37, 1, 28, 28), KN_SHAPE(16, 1, 3, 3), CONV(.padding = {1, 1}),
                            "conv1");
    check_thread_invariance(KN_SHAPE(19, 3, 9, 8), KN_SHAPE(4, 3, 3, 3),
                            CONV(.stride = {2, 2}, .padding = {1, 1}), "stride 2 (im2col)");
    check_thread_invariance(KN_SHAPE(1, 3, 40, 40), KN_SHAPE(8, 3, 3, 3), CONV(.stride = {2, 2}),
                            "one image (im2col, parallel GEMMs)");
}

Test(conv2d, errors_name_the_shapes)
{
    kn_scope_begin();
    kn_tensor *w = kn_ones(KN_SHAPE(4, 3, 3, 3), KN_FLOAT32);
    cr_assert_null(kn_conv2d(kn_ones(KN_SHAPE(3, 28, 28), KN_FLOAT32), w, NULL, CONV(.groups = 1)));
    cr_assert_str_eq(kn_last_error(), "conv2d: expected a 4-D input [N, C, H, W], got [3, 28, 28]");
    cr_assert_null(
        kn_conv2d(kn_ones(KN_SHAPE(1, 2, 8, 8), KN_FLOAT32), w, NULL, CONV(.groups = 1)));
    cr_assert(strstr(kn_last_error(), "[1, 2, 8, 8] has 2 channels") &&
                  strstr(kn_last_error(), "[4, 3, 3, 3] expects 3"),
              "%s", kn_last_error());
    cr_assert_null(
        kn_conv2d(kn_ones(KN_SHAPE(1, 3, 2, 8), KN_FLOAT32), w, NULL, CONV(.groups = 1)));
    cr_assert(strstr(kn_last_error(), "larger than the padded input 2x8"), "%s", kn_last_error());
    cr_assert_not_null(
        kn_conv2d(kn_ones(KN_SHAPE(1, 3, 2, 8), KN_FLOAT32), w, NULL, CONV(.padding = {1, 0})));
    cr_assert_null(kn_conv2d(kn_ones(KN_SHAPE(1, 6, 8, 8), KN_FLOAT32),
                             kn_ones(KN_SHAPE(4, 3, 3, 3), KN_FLOAT32), NULL, CONV(.groups = 4)));
    cr_assert(strstr(kn_last_error(), "groups=4 must divide"), "%s", kn_last_error());
    cr_assert_null(kn_conv2d(kn_ones(KN_SHAPE(1, 3, 8, 8), KN_FLOAT32), w,
                             kn_ones(KN_SHAPE(3), KN_FLOAT32), CONV(.groups = 1)));
    cr_assert(strstr(kn_last_error(), "bias [3]"), "%s", kn_last_error());
    cr_assert_null(
        kn_conv2d(kn_ones(KN_SHAPE(1, 3, 8, 8), KN_FLOAT32), w, NULL, CONV(.stride = {-1, 1})));
    cr_assert(strstr(kn_last_error(), "negative"), "%s", kn_last_error());
    kn_scope_end();
}

/* ---- pooling --------------------------------------------------------------------- */

Test(pool2d, values_match_torch)
{
    kn_scope_begin();
    kn_tensor *x = kn_test_seq(KN_SHAPE(1, 2, 5, 6), 5);
    kn_tensor *y = kn_max_pool2d(x, POOL(.kernel_size = {2, 2}, .ceil_mode = true));
    KN_ASSERT_SHAPE(y, KN_SHAPE(1, 2, 3, 3));
    KN_ASSERT_VALUES(y, MAXP_CEIL);
    y = kn_max_pool2d(
        x, POOL(.kernel_size = {3, 2}, .stride = {2, 1}, .padding = {1, 1}, .dilation = {1, 2}));
    KN_ASSERT_SHAPE(y, KN_SHAPE(1, 2, 3, 6));
    KN_ASSERT_VALUES(y, MAXP_PAD);
    y = kn_avg_pool2d(x, POOL(.kernel_size = {2, 2}, .ceil_mode = true));
    KN_ASSERT_SHAPE(y, KN_SHAPE(1, 2, 3, 3));
    KN_ASSERT_VALUES(y, AVGP_CEIL);
    kn_pool2d_args padded = {
        .kernel_size = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .ceil_mode = true};
    y = kn_avg_pool2d(x, padded);
    KN_ASSERT_SHAPE(y, KN_SHAPE(1, 2, 3, 4));
    KN_ASSERT_VALUES(y, AVGP_PAD);
    padded.exclude_padding_from_count = true;
    KN_ASSERT_VALUES(kn_avg_pool2d(x, padded), AVGP_EXCL);
    /* 3-D input [C, H, W] and a non-contiguous one */
    KN_ASSERT_SHAPE(kn_max_pool2d(kn_test_seq(KN_SHAPE(2, 5, 6), 5),
                                  POOL(.kernel_size = {2, 2}, .ceil_mode = true)),
                    KN_SHAPE(2, 3, 3));
    kn_tensor *xt = kn_transpose(kn_contiguous(kn_transpose(x, 2, 3)), 2, 3);
    KN_ASSERT_VALUES(kn_max_pool2d(xt, POOL(.kernel_size = {2, 2}, .ceil_mode = true)), MAXP_CEIL);
    kn_scope_end();
}

Test(pool2d, max_ties_pick_the_first_and_nan_propagates)
{
    kn_scope_begin();
    float data[] = {1, 3, 3, NAN, 3, 0, 2, 5};
    kn_tensor *x = kn_set_requires_grad(kn_from_floats(data, KN_SHAPE(1, 1, 2, 4)), true);
    KN_ASSERT_VALUES(kn_max_pool2d(x, POOL(.kernel_size = {2, 2})), MAXP_NAN);
    kn_tensor *y = kn_max_pool2d(x, POOL(.kernel_size = {2, 2}, .stride = {1, 1}));
    KN_ASSERT_VALUES(y, MAXP_NAN_S1);
    cr_assert_eq(kn_backward(y, kn_ones_like(y), false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_VALUES(x->grad, MAXP_NAN_GRAD);
    kn_scope_end();
}

static kn_tensor *max_pool_fn(kn_tensor **in, void *context)
{
    return kn_max_pool2d(in[0], *(kn_pool2d_args *)context);
}

static kn_tensor *avg_pool_fn(kn_tensor **in, void *context)
{
    return kn_avg_pool2d(in[0], *(kn_pool2d_args *)context);
}

Test(pool2d, gradcheck)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(2, 2, 7, 6), -1, 1, 9), true);
    kn_pool2d_args cases[] = {
        {.kernel_size = {2, 2}},
        {.kernel_size = {3, 2}, .stride = {2, 1}, .padding = {1, 1}, .dilation = {1, 2}},
        {.kernel_size = {3, 3}, .stride = {2, 2}, .padding = {1, 0}, .ceil_mode = true},
        {.kernel_size = {3, 3},
         .stride = {2, 2},
         .padding = {1, 1},
         .ceil_mode = true,
         .exclude_padding_from_count = true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        KN_ASSERT_GRADCHECK(max_pool_fn, &x, 1, &cases[i]);
        KN_ASSERT_GRADCHECK(avg_pool_fn, &x, 1, &cases[i]);
    }
    kn_scope_end();
}

Test(pool2d, errors)
{
    kn_scope_begin();
    kn_tensor *x = kn_ones(KN_SHAPE(1, 1, 4, 4), KN_FLOAT32);
    cr_assert_null(kn_max_pool2d(x, POOL(.kernel_size = {3, 3}, .padding = {2, 0})));
    cr_assert(strstr(kn_last_error(), "max_pool2d: padding (2, 0)") &&
                  strstr(kn_last_error(), "half the kernel size (3, 3)"),
              "%s", kn_last_error());
    cr_assert_null(kn_avg_pool2d(x, POOL(.kernel_size = {5, 5})));
    cr_assert(strstr(kn_last_error(), "avg_pool2d: input [1, 1, 4, 4] is too small"), "%s",
              kn_last_error());
    cr_assert_null(kn_max_pool2d(kn_ones(KN_SHAPE(4, 4), KN_FLOAT32), POOL(.kernel_size = {2, 2})));
    cr_assert(strstr(kn_last_error(), "got [4, 4]"), "%s", kn_last_error());
    cr_assert_null(kn_avg_pool2d(x, POOL(.kernel_size = {0, 2})));
    cr_assert(strstr(kn_last_error(), "must be positive"), "%s", kn_last_error());
    kn_scope_end();
}

/* avg_pool2d 2x2 stride 2 (the ResNet's 14x14 -> 7x7 as its adaptive pool runs it) has
 * vector kernels: the same bits as the window rule, sum from 0 in scan order over 4
 * and 0 + g/4 back, on rows longer than one vector (37 wide: 18 outputs), odd last rows
 * and columns (zero gradient), a plane of 2x2 and signed zeros (0 + -0 is +0). */
Test(pooling, avg_2x2_same_bits_as_the_window_rule)
{
    const int64_t sizes[][4] = {{2, 3, 35, 37}, {1, 2, 2, 2}, {64, 16, 14, 14}, {1, 1, 5, 33}};
    for (size_t c = 0; c < sizeof sizes / sizeof *sizes; c++) {
        kn_scope_begin();
        int64_t n = sizes[c][0], ch = sizes[c][1], h = sizes[c][2], w = sizes[c][3];
        int64_t oh = h / 2, ow = w / 2, planes = n * ch, in_n = planes * h * w,
                out_n = planes * oh * ow;
        float *xv = malloc(sizeof(float) * (size_t)in_n),
              *gv = malloc(sizeof(float) * (size_t)out_n);
        kn_copy_to_floats(kn_test_uniform(KN_SHAPE(n, ch, h, w), -1, 1, 40 + c), xv);
        kn_copy_to_floats(kn_test_uniform(KN_SHAPE(n, ch, oh, ow), -1, 1, 50 + c), gv);
        for (int64_t i = 0; i < 8 && i < in_n; i++) xv[i] = -0.f; /* whole windows of -0 */
        gv[0] = -0.f;
        kn_tensor *x = kn_set_requires_grad(kn_from_floats(xv, KN_SHAPE(n, ch, h, w)), true);
        kn_tensor *y = kn_avg_pool2d(x, POOL(.kernel_size = {2, 2}));
        cr_assert_not_null(y, "%s", kn_last_error());
        cr_assert_eq(kn_backward(y, kn_from_floats(gv, KN_SHAPE(n, ch, oh, ow)), false), KN_OK,
                     "%s", kn_last_error());
        const float *got_y = kn_data_f32(y), *got_gx = kn_data_f32(kn_grad(x));
        for (int64_t p = 0; p < planes; p++)
            for (int64_t r = 0; r < h; r++)
                for (int64_t q = 0; q < w; q++) {
                    const float *in = xv + p * h * w;
                    int64_t i = r / 2, j = q / 2, at = (p * h + r) * w + q;
                    float want_gx = i < oh && j < ow ? 0.f + gv[(p * oh + i) * ow + j] / 4.f : 0.f;
                    cr_assert(memcmp(&got_gx[at], &want_gx, 4) == 0,
                              "%lldx%lld: grad [%lld, %lld, %lld] %g, expected %g", (long long)h,
                              (long long)w, (long long)p, (long long)r, (long long)q, got_gx[at],
                              want_gx);
                    if (r % 2 || q % 2 || i >= oh || j >= ow) continue;
                    float sum = 0.f;
                    sum += in[r * w + q];
                    sum += in[r * w + q + 1];
                    sum += in[(r + 1) * w + q];
                    sum += in[(r + 1) * w + q + 1];
                    float want_y = sum / 4.f;
                    cr_assert(memcmp(&got_y[(p * oh + i) * ow + j], &want_y, 4) == 0,
                              "%lldx%lld: value [%lld, %lld, %lld] %g, expected %g", (long long)h,
                              (long long)w, (long long)p, (long long)i, (long long)j,
                              got_y[(p * oh + i) * ow + j], want_y);
                }
        free(xv);
        free(gv);
        kn_scope_end();
    }
}

/*
 * test_norm.c — layer norm and batch norm: values and gradients against PyTorch 1.13,
 * finite-difference gradchecks (train and eval, 2-D to 4-D, with and without affine),
 * running-statistics updates, non-contiguous inputs and error messages.
 */
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Generated with PyTorch 1.13 (inputs rounded to 4 decimals). */
static const float LN_X[24] = {
    -0.111699998f, -0.496600002f, 0.163100004f, -0.881699979f, 0.0538999997f, 0.66839999f,
    -0.059700001f, -0.467500001f, 0.636900008f, -0.714100003f, -1.08309996f,  -0.554700017f,
    0.971700013f,  -0.514999986f, 1.42550004f,  0.798699975f,  -2.52729988f,  1.47780001f,
    -0.169599995f, -0.991900027f, -1.4569f,     0.256300002f,  -0.402999997f, 0.419499993f};
static const float LN_W[12] = {-0.203899994f, 0.87379998f,   -0.681599975f, 0.633899987f,
                               0.192200005f,  0.0917999968f, -0.862500012f, 0.159600005f,
                               0.818400025f,  -0.764900029f, 0.804199994f,  -0.138300002f};
static const float LN_B[12] = {0.319599986f, -1.0187f,      -1.31470001f,  2.52279997f,
                               0.450100005f, 0.270900011f,  -0.808700025f, -0.0217000004f,
                               -1.04130006f, 0.0702000037f, 0.579699993f,  -0.0599000007f};
static const float LN_Y2[24] = {
    0.27190429f,   -1.44100797f,   -1.82315707f, 1.76155531f,  0.554367363f,  0.425816655f,
    -1.09402645f,  -0.0901805237f, 0.291749626f, 0.749880373f, -0.687861443f, 0.0219132099f,
    0.137205124f,  -1.36394715f,   -2.19272399f, 2.99471426f,  0.0386605971f, 0.393319756f,
    -0.726338148f, -0.15078415f,   -2.03333426f, -0.13934876f, 0.340084285f,  -0.117366962f};
static const float LN_GY[24] = {
    -0.563000023f, -0.282900006f, 0.0731000006f, -1.38800001f,  -0.267800003f, -0.125400007f,
    -1.50380003f,  -0.328700006f, 0.957000017f,  -0.550999999f, 2.66170001f,   2.1479001f,
    -0.855499983f, -0.720799983f, 1.37549996f,   0.99879998f,   0.146899998f,  -0.905300021f,
    -0.358700007f, 1.63740003f,   0.689700007f,  -0.584399998f, 0.907800019f,  0.484800011f};
static const float LN_DX2[24] = {
    -0.251568079f, -1.00706029f,  -0.500519991f, -2.26694155f, -0.526556075f, -0.32284537f,
    1.96232462f,   -0.638068318f, 1.1514008f,    0.193160236f, 3.31885624f,   -1.11218286f,
    0.148186967f,  -0.694051862f, -0.772270799f, 0.529266596f, -0.318891525f, -0.0260042697f,
    0.154258937f,  0.0326147676f, 0.250339866f,  0.315061301f, 0.496476799f,  -0.114986934f};
static const float LN_DW2[12] = {-0.896966517f, 0.421520978f, 1.82642341f,   2.41040468f,
                                 -0.459746301f, -1.41887963f, -0.463223904f, -1.18328846f,
                                 0.722779214f,  0.329511791f, -4.46579409f,  -1.06917286f};
static const float LN_DB2[12] = {-1.41849995f,  -1.00370002f, 1.44859993f,  -0.389200032f,
                                 -0.120900005f, -1.03069997f, -1.86250007f, 1.30870008f,
                                 1.64670002f,   -1.13540006f, 3.56949997f,  2.6327002f};
static const float LN_Y1[24] = {
    0.557535172f,  -0.417787164f, 1.25386822f,  -1.3936162f,   0.0125948656f, 1.52275097f,
    -0.266581267f, -1.26876462f,  1.65365601f,  -0.442800909f, -1.01540828f,  -0.195446953f,
    0.417806506f,  -1.64257264f,  1.04671621f,  0.17805022f,   -1.36568761f,  1.40441978f,
    0.2650038f,    -0.303735942f, -1.57387674f, 0.748824298f,  -0.145033255f, 0.970085561f};
static const float LN_XT[12] = {0.897099972f, -0.0784000009f, 0.554799974f,  -0.0844999999f,
                                0.590300024f, -1.00320005f,   -1.78729999f,  0.0538000017f,
                                0.824599981f, -0.572300017f,  -0.487599999f, 0.194399998f};
static const float LN_YT[12] = {0.0487185195f, -0.745408475f, -0.32688418f, 2.40108895f,
                                0.371424347f,  0.27579397f,   -1.37533593f, 1.68842971f,
                                0.199258074f,  -2.45248532f,  -1.9803201f,  2.56977606f};
static const float BN_X2[12] = {-1.09619999f, 0.851799965f, 0.310100019f, -2.08929992f,
                                1.13699996f,  -2.02080011f, -1.34130001f, 1.45179999f,
                                3.93910003f,  -1.65680003f, 4.98920012f,  -0.641800046f};
static const float BN_W[3] = {1.00610006f, -1.06640005f, -0.457199991f};
static const float BN_B[3] = {0.0900999978f, 0.401800007f, -1.15419996f};
static const float BN_Y2[12] = {1.30835247f, 1.20013988f,   -1.13626826f, -1.38198829f,
                                1.01881027f, -0.653345883f, 0.644368291f, 0.818661034f,
                                -1.8881346f, -0.210331738f, -1.43041122f, -0.939050972f};
static const float BN_RM2[3] = {-0.154590011f, 0.210745007f, 0.0396649987f};
static const float BN_RV2[3] = {0.918389082f, 1.27509308f, 1.54929626f};
static const float BN_GY2[12] = {0.119199999f, -0.734799981f,  -1.58640003f, -0.267100006f,
                                 2.6874001f,   -0.46329999f,   0.663900018f, 0.238299996f,
                                 0.830500007f, -0.0838000029f, 0.952300012f, 0.2016f};
static const float BN_DX2[12] = {-0.72911042f,   0.902751088f,   0.272294462f,  -0.0987663269f,
                                 -1.25853097f,   -0.0593118183f, 1.16034997f,   0.314658463f,
                                 -0.0744373128f, -0.332474142f,  0.0411214493f, -0.138545349f};
static const float BN_DW2[3] = {0.925917208f, 0.538206518f, 1.80807352f};
static const float BN_DB2[3] = {0.432200015f, 3.14320016f, -1.01760006f};
static const float BN_X4[24] = {
    -1.96880007f,  0.742749929f,  -0.875149965f, -0.2597f,      -0.188300014f, 1.28184986f,
    -1.59800005f,  1.55019999f,   -3.40549994f,  -0.504350007f, -2.76064992f,  -1.52045f,
    -0.829400003f, 0.40929997f,   -0.429049999f, -0.481400013f, 0.131649971f,  1.02295005f,
    1.52799988f,   -0.499550015f, -0.558650017f, -0.437600017f, -2.07019997f,  -0.449750006f};
static const float BN_RM4_IN[3] = {-0.136899993f, 0.056499999f, 0.0401399992f};
static const float BN_RV4_IN[3] = {1.8987f, 1.20179999f, 0.990100026f};
static const float BN_Y4[24] = {
    -1.86025417f,  1.64816582f,   -0.445202261f, 0.351116061f, 0.997291327f,  -0.481778681f,
    2.41554475f,   -0.751757026f, -0.345827222f, -1.55338764f, -0.614236414f, -1.1304512f,
    -0.386007309f, 1.21672165f,   0.131997496f,  0.064262867f, 0.675400078f,  -0.221308008f,
    -0.729422212f, 1.31042981f,   -1.53078604f,  -1.58117127f, -0.901625931f, -1.57611406f};
static const float BN_RM4[3] = {-0.234259382f, 0.160629988f, -0.410920143f};
static const float BN_RV4[3] = {1.53605115f, 1.22612858f, 1.10639167f};
static const float BN_GY4[24] = {
    -0.915600002f, 0.712800026f,  1.10370004f,  -0.711899996f, -0.222499996f, 0.354099989f,
    -0.855400026f, 1.4224f,       -1.41659999f, -0.986299992f, 0.609099984f,  0.666800022f,
    -1.12059999f,  -1.66799998f,  1.06850004f,  -0.1831f,      0.644500017f,  -0.559199989f,
    -0.448000014f, -0.647599995f, 0.208299994f, -0.737800002f, -0.321799994f, -0.949100018f};
static const float BN_DX4[24] = {
    -0.650798559f, 0.994510055f, 1.77573752f,   -0.678212047f, -0.0369828939f,  -0.066591084f,
    0.0719021112f, -1.04089069f, 0.467316419f,  0.243412927f,  -0.385808259f,   -0.428975374f,
    -1.11002839f,  -2.02918863f, 1.65424383f,   0.0437363759f, -0.789439738f,   0.755306602f,
    0.83254534f,   0.274150401f, -0.252983004f, 0.1389478f,    -0.00899649039f, 0.227085903f};
static const float BN_DW4[3] = {0.818529189f, 3.15605068f, -0.325989276f};
static const float BN_DB4[3] = {-1.71419978f, -0.311699986f, -2.92740011f};
static const float BN_Y4_EVAL[24] = {
    -1.31750739f,  0.882958591f,  -0.429992914f, 0.0694545358f, 0.737702668f,  -0.677558959f,
    2.09477139f,   -0.935890198f, 0.14684248f,   -1.11360788f,  -0.133322775f, -0.672147155f,
    -0.392866105f, 0.612358689f,  -0.067975685f, -0.11045856f,  0.42969805f,   -0.428325206f,
    -0.914518893f, 1.03733206f,   -1.09001637f,  -1.1426084f,   -0.433299631f, -1.1373297f};
static const float BN_DX4_EVAL[24] = {
    -0.743023932f, 0.578448534f, 0.895670056f,   -0.577718079f, 0.214192927f,  -0.340879619f,
    0.823463559f,  -1.36929452f, 0.61546427f,    0.428513616f,  -0.264633119f, -0.289701819f,
    -0.909384668f, -1.35360849f, 0.867104709f,   -0.148588553f, -0.620437503f, 0.53832221f,
    0.431273878f,  0.623421788f, -0.0904992223f, 0.320548892f,  0.139811099f,  0.412351489f};
static const float BN_DW4_EVAL[3] = {0.827480972f, 2.95152926f, 2.58754063f};
static const float BN_DB4_EVAL[3] = {-1.71419978f, -0.311699986f, -2.92740011f};
static const float BN_X3_NLC[30] = {
    1.0704f,       -1.04700005f,  1.37699997f,   0.398900002f, -1.21529996f,  -0.0315999985f,
    -0.868700027f, -0.351000011f, -0.200000003f, -1.4447f,     0.840200007f,  -0.86680001f,
    -0.972800016f, -1.24520004f,  -0.264200002f, 0.256000012f, -0.669200003f, -2.3203001f,
    0.502099991f,  -0.124600001f, 0.65259999f,   -1.34510005f, -1.18429995f,  -0.264499992f,
    -2.76749992f,  1.48020005f,   0.294200003f,  1.39240003f,  2.11299992f,   -0.0856000036f};
static const float BN_Y3[30] = {
    1.1674602f,     0.626170754f,  -0.395628989f, -0.859936833f, -0.479542941f, -0.786851048f,
    -0.932907999f,  -0.182836026f, 0.850932121f,  -0.958856404f, 1.68493664f,   0.151652128f,
    -0.0316540673f, -0.757476926f, -0.101536833f, 0.510980487f,  0.709359169f,  -0.779650271f,
    -1.92623246f,   1.42702115f,   -0.458981961f, 0.0136424219f, -0.906005025f, 1.40634835f,
    1.95551586f,    -2.33963609f,  0.896415174f,  -0.101863377f, 0.506290853f,  0.0928722322f};

#define ASSERT_CLOSE(t, want, rtol, atol)                                                          \
    do {                                                                                           \
        char m_[512];                                                                              \
        cr_assert(kn_test_close((t), (want), (int64_t)(sizeof(want) / sizeof(float)), (rtol),      \
                                (atol), m_, sizeof m_),                                            \
                  "%s", m_);                                                                       \
    } while (0)

static kn_tensor *leaf(const float *data, const int64_t *shape, int ndim)
{
    return kn_set_requires_grad(kn_from_floats(data, shape, ndim), true);
}

/* ---- layer norm ------------------------------------------------------------------------ */

Test(layer_norm, forward_and_backward_match_torch)
{
    kn_scope_begin();
    kn_tensor *x = leaf(LN_X, KN_SHAPE(2, 3, 4));
    kn_tensor *w = leaf(LN_W, KN_SHAPE(3, 4));
    kn_tensor *b = leaf(LN_B, KN_SHAPE(3, 4));
    kn_tensor *y = kn_layer_norm(x, 2, w, b, 1e-5);
    cr_assert_not_null(y, "%s", kn_last_error());
    ASSERT_CLOSE(y, LN_Y2, 1e-5, 1e-6);
    cr_assert_eq(kn_backward(y, kn_from_floats(LN_GY, KN_SHAPE(2, 3, 4)), false), KN_OK, "%s",
                 kn_last_error());
    ASSERT_CLOSE(x->grad, LN_DX2, 1e-4, 1e-5);
    ASSERT_CLOSE(w->grad, LN_DW2, 1e-5, 1e-6);
    ASSERT_CLOSE(b->grad, LN_DB2, 1e-5, 1e-6);
    kn_scope_end();
}

Test(layer_norm, without_affine_over_last_dim)
{
    kn_scope_begin();
    kn_tensor *y = kn_layer_norm(kn_from_floats(LN_X, KN_SHAPE(2, 3, 4)), 1, NULL, NULL, 1e-5);
    cr_assert_not_null(y, "%s", kn_last_error());
    ASSERT_CLOSE(y, LN_Y1, 1e-5, 1e-6);
    kn_scope_end();
}

Test(layer_norm, transposed_input)
{
    kn_scope_begin();
    kn_tensor *xt = kn_transpose(kn_from_floats(LN_XT, KN_SHAPE(4, 3)), 0, 1);
    cr_assert(!kn_is_contiguous(xt));
    kn_tensor *w = kn_from_floats(LN_W, KN_SHAPE(4)); /* first row of LN_W */
    kn_tensor *b = kn_from_floats(LN_B, KN_SHAPE(4));
    kn_tensor *y = kn_layer_norm(xt, 1, w, b, 1e-5);
    cr_assert_not_null(y, "%s", kn_last_error());
    ASSERT_CLOSE(y, LN_YT, 1e-5, 1e-6);
    kn_scope_end();
}

typedef struct ln_case {
    int nd;
    bool transpose;
} ln_case;

static kn_tensor *ln_fn(kn_tensor **in, void *context)
{
    ln_case *c = context;
    kn_tensor *x = c->transpose ? kn_transpose(in[0], 0, 1) : in[0];
    return kn_layer_norm(x, c->nd, in[1], in[2], 1e-5);
}

Test(layer_norm, gradcheck)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 2, 5), -2, 2, 1), true);
    kn_tensor *w = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(2, 5), 0.5, 1.5, 2), true);
    kn_tensor *b = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(2, 5), -1, 1, 3), true);
    kn_tensor *in[3] = {x, w, b};
    ln_case two = {2, false};
    KN_ASSERT_GRADCHECK(ln_fn, in, 3, &two);
    kn_tensor *w1 = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5), 0.5, 1.5, 4), true);
    kn_tensor *in1[3] = {x, w1, NULL};
    ln_case one = {1, false};
    KN_ASSERT_GRADCHECK(ln_fn, in1, 3, &one);
    kn_tensor *in0[3] = {x, NULL, NULL};
    KN_ASSERT_GRADCHECK(ln_fn, in0, 3, &one);
    kn_tensor *xt = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5, 3), -2, 2, 5), true);
    kn_tensor *w3 = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5), 0.5, 1.5, 6), true);
    kn_tensor *int_[3] = {xt, w3, NULL};
    ln_case transposed = {1, true};
    KN_ASSERT_GRADCHECK(ln_fn, int_, 3, &transposed);
    kn_scope_end();
}

/* The first thread count's result kept in *ref, the later ones compared bit for bit. */
static void keep_or_compare_bits(float **ref, const float *got, int64_t count, const char *what,
                                 int threads)
{
    if (!*ref) {
        *ref = malloc(sizeof(float) * (size_t)count);
        memcpy(*ref, got, sizeof(float) * (size_t)count);
    } else {
        cr_assert(memcmp(*ref, got, sizeof(float) * (size_t)count) == 0,
                  "%s: other bits with %d threads", what, threads);
    }
}

/* The backward kernel against a double reference and for 1-3 threads: the GPT's
 * [768, 128], a width with a scalar tail (37), one long row per block (3 x 5000, the
 * partials capped at 64 blocks: 9000 x 5), with and without the affine parameters, and
 * dx alone. Same bits for every thread count (the blocks depend on the shape only). */
static void ln_backward_case(int64_t rows, int64_t cols, bool affine, bool params_grad)
{
    int64_t shape[2] = {rows, cols}, pshape[1] = {cols};
    kn_manual_seed((uint64_t)(rows * 131 + cols));
    kn_tensor *x = kn_randn(shape, 2, NULL), *gy = kn_randn(shape, 2, NULL);
    kn_tensor *w = affine ? kn_randn(pshape, 1, NULL) : NULL;
    kn_tensor *b = affine ? kn_randn(pshape, 1, NULL) : NULL;
    float *ref[3] = {NULL, NULL, NULL};
    int threads_before = kn_get_num_threads();
    for (int threads = 1; threads <= 3; threads++) {
        kn_set_num_threads(threads);
        kn_tensor *xl = kn_set_requires_grad(kn_detach(x), true);
        kn_tensor *wl = w ? kn_set_requires_grad(kn_detach(w), params_grad) : NULL;
        kn_tensor *bl = b ? kn_set_requires_grad(kn_detach(b), params_grad) : NULL;
        kn_tensor *y = kn_layer_norm(xl, 1, wl, bl, 1e-5);
        cr_assert_not_null(y, "%s", kn_last_error());
        cr_assert_eq(kn_backward(y, gy, false), KN_OK, "%s", kn_last_error());
        kn_tensor *got[3] = {xl->grad, wl && params_grad ? wl->grad : NULL,
                             bl && params_grad ? bl->grad : NULL};
        int64_t sizes[3] = {rows * cols, cols, cols};
        for (int k = 0; k < 3; k++) {
            if (!got[k]) continue;
            char what[64];
            snprintf(what, sizeof what, "[%lld, %lld] grad %d", (long long)rows, (long long)cols,
                     k);
            keep_or_compare_bits(&ref[k], kn_data_f32(got[k]), sizes[k], what, threads);
        }
    }
    kn_set_num_threads(threads_before);
    /* the reference in double: dx = rstd (g - mean g - xhat mean(g xhat)), g = gy w */
    const float *xv = kn_data_f32(x), *gv = kn_data_f32(gy);
    const float *wv = w ? kn_data_f32(w) : NULL;
    double *dw = calloc((size_t)cols, sizeof(double)), *db = calloc((size_t)cols, sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xv + r * cols, *gr = gv + r * cols;
        double m = 0, v = 0, sg = 0, sgx = 0;
        for (int64_t j = 0; j < cols; j++) m += xr[j];
        m /= (double)cols;
        for (int64_t j = 0; j < cols; j++) v += (xr[j] - m) * (xr[j] - m);
        double rs = 1 / sqrt(v / (double)cols + 1e-5);
        for (int64_t j = 0; j < cols; j++) {
            double g = gr[j] * (wv ? wv[j] : 1.0), xh = (xr[j] - m) * rs;
            sg += g;
            sgx += g * xh;
            dw[j] += gr[j] * xh;
            db[j] += gr[j];
        }
        for (int64_t j = 0; j < cols; j++) {
            double g = gr[j] * (wv ? wv[j] : 1.0), xh = (xr[j] - m) * rs;
            double want = rs * (g - sg / (double)cols - xh * sgx / (double)cols);
            float have = ref[0][r * cols + j];
            cr_assert(fabs(have - want) <= 1e-4 + 1e-4 * fabs(want),
                      "[%lld, %lld] dx[%lld, %lld] = %g, want %g", (long long)rows, (long long)cols,
                      (long long)r, (long long)j, have, want);
        }
    }
    for (int64_t j = 0; affine && params_grad && j < cols; j++) {
        double tol = 1e-4 * sqrt((double)rows);
        cr_assert(fabs(ref[1][j] - dw[j]) <= tol * (1 + fabs(dw[j])), "dweight[%lld]",
                  (long long)j);
        cr_assert(fabs(ref[2][j] - db[j]) <= tol * (1 + fabs(db[j])), "dbias[%lld]", (long long)j);
    }
    free(dw);
    free(db);
    for (int k = 0; k < 3; k++) free(ref[k]);
}

Test(layer_norm, backward_same_bits_for_any_thread_count)
{
    kn_scope_begin();
    ln_backward_case(768, 128, true, true);
    ln_backward_case(1000, 37, true, true);
    ln_backward_case(3, 5000, true, true);
    ln_backward_case(9000, 5, true, true);
    ln_backward_case(700, 64, false, false);
    ln_backward_case(700, 64, true, false);
    kn_scope_end();
}

Test(layer_norm, errors_name_shapes)
{
    kn_scope_begin();
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3, 4), KN_FLOAT32);
    cr_assert_null(kn_layer_norm(x, 1, kn_ones(KN_SHAPE(3), KN_FLOAT32), NULL, 1e-5));
    cr_assert(strstr(kn_last_error(), "[3]") && strstr(kn_last_error(), "[4]") &&
                  strstr(kn_last_error(), "[2, 3, 4]"),
              "%s", kn_last_error());
    cr_assert_null(kn_layer_norm(x, 4, NULL, NULL, 1e-5));
    cr_assert(strstr(kn_last_error(), "normalized_ndim 4"), "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_layer_norm(NULL, 1, NULL, NULL, 1e-5));
    kn_scope_end();
}

/* ---- batch norm ------------------------------------------------------------------------ */

Test(batch_norm, train_2d_updates_running_stats_like_torch)
{
    kn_scope_begin();
    kn_tensor *x = leaf(BN_X2, KN_SHAPE(4, 3));
    kn_tensor *w = leaf(BN_W, KN_SHAPE(3));
    kn_tensor *b = leaf(BN_B, KN_SHAPE(3));
    kn_tensor *rm = kn_zeros(KN_SHAPE(3), KN_FLOAT32);
    kn_tensor *rv = kn_ones(KN_SHAPE(3), KN_FLOAT32);
    kn_tensor *y = kn_batch_norm(x, rm, rv, w, b, true, 0.1, 1e-5);
    cr_assert_not_null(y, "%s", kn_last_error());
    ASSERT_CLOSE(y, BN_Y2, 1e-5, 1e-5);
    ASSERT_CLOSE(rm, BN_RM2, 1e-5, 1e-6);
    ASSERT_CLOSE(rv, BN_RV2, 1e-5, 1e-6);
    cr_assert(!rm->requires_grad && !rv->requires_grad);
    cr_assert_eq(kn_backward(y, kn_from_floats(BN_GY2, KN_SHAPE(4, 3)), false), KN_OK, "%s",
                 kn_last_error());
    ASSERT_CLOSE(x->grad, BN_DX2, 1e-4, 1e-5);
    ASSERT_CLOSE(w->grad, BN_DW2, 1e-5, 1e-5);
    ASSERT_CLOSE(b->grad, BN_DB2, 1e-5, 1e-5);
    kn_scope_end();
}

Test(batch_norm, train_4d_and_eval_match_torch)
{
    kn_scope_begin();
    kn_tensor *x = leaf(BN_X4, KN_SHAPE(2, 3, 2, 2));
    kn_tensor *w = leaf(BN_W, KN_SHAPE(3));
    kn_tensor *b = leaf(BN_B, KN_SHAPE(3));
    kn_tensor *rm = kn_from_floats(BN_RM4_IN, KN_SHAPE(3));
    kn_tensor *rv = kn_from_floats(BN_RV4_IN, KN_SHAPE(3));
    kn_tensor *y = kn_batch_norm(x, rm, rv, w, b, true, 0.3, 1e-3);
    cr_assert_not_null(y, "%s", kn_last_error());
    ASSERT_CLOSE(y, BN_Y4, 1e-5, 1e-5);
    ASSERT_CLOSE(rm, BN_RM4, 1e-5, 1e-6);
    ASSERT_CLOSE(rv, BN_RV4, 1e-5, 1e-6);
    kn_tensor *gy = kn_from_floats(BN_GY4, KN_SHAPE(2, 3, 2, 2));
    cr_assert_eq(kn_backward(y, gy, false), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(x->grad, BN_DX4, 1e-4, 1e-5);
    ASSERT_CLOSE(w->grad, BN_DW4, 1e-5, 1e-5);
    ASSERT_CLOSE(b->grad, BN_DB4, 1e-5, 1e-5);
    kn_zero_grad(x);
    kn_zero_grad(w);
    kn_zero_grad(b);

    /* eval uses the (now updated) running statistics and leaves them alone */
    kn_tensor *e = kn_batch_norm(x, rm, rv, w, b, false, 0.3, 1e-3);
    cr_assert_not_null(e, "%s", kn_last_error());
    ASSERT_CLOSE(e, BN_Y4_EVAL, 1e-5, 1e-5);
    ASSERT_CLOSE(rm, BN_RM4, 1e-5, 1e-6);
    cr_assert_eq(kn_backward(e, gy, false), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(x->grad, BN_DX4_EVAL, 1e-4, 1e-5);
    ASSERT_CLOSE(w->grad, BN_DW4_EVAL, 1e-5, 1e-5);
    ASSERT_CLOSE(b->grad, BN_DB4_EVAL, 1e-5, 1e-5);
    kn_scope_end();
}

Test(batch_norm, permuted_3d_input)
{
    kn_scope_begin();
    int dims[3] = {0, 2, 1};
    kn_tensor *x = kn_permute(kn_from_floats(BN_X3_NLC, KN_SHAPE(2, 5, 3)), dims, 3);
    cr_assert(!kn_is_contiguous(x));
    kn_tensor *y = kn_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
    cr_assert_not_null(y, "%s", kn_last_error());
    ASSERT_CLOSE(y, BN_Y3, 1e-5, 1e-5);
    kn_scope_end();
}

typedef struct bn_case {
    bool training, permute;
    kn_tensor *rm, *rv;
} bn_case;

static kn_tensor *bn_fn(kn_tensor **in, void *context)
{
    bn_case *c = context;
    kn_tensor *x = in[0];
    if (c->permute) x = kn_permute(x, KN_DIMS(0, 3, 1, 2)); /* [N, H, W, C] -> [N, C, H, W] */
    return kn_batch_norm(x, c->rm, c->rv, in[1], in[2], c->training, 0.1, 1e-5);
}

Test(batch_norm, gradcheck_train_and_eval)
{
    kn_scope_begin();
    kn_tensor *w = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3), 0.5, 1.5, 11), true);
    kn_tensor *b = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3), -1, 1, 12), true);
    const int64_t shapes[3][4] = {{6, 3}, {2, 3, 4}, {2, 3, 2, 3}};
    const int ranks[3] = {2, 3, 4};
    for (int k = 0; k < 3; k++) {
        kn_tensor *x = kn_set_requires_grad(
            kn_test_uniform(shapes[k], ranks[k], -2, 2, 20 + (uint64_t)k), true);
        kn_tensor *in[3] = {x, w, b};
        bn_case train = {true, false, NULL, NULL};
        KN_ASSERT_GRADCHECK(bn_fn, in, 3, &train);
        kn_tensor *in_plain[3] = {x, NULL, NULL};
        KN_ASSERT_GRADCHECK(bn_fn, in_plain, 3, &train);
        bn_case eval = {false, false, kn_test_uniform(KN_SHAPE(3), -0.5, 0.5, 30),
                        kn_test_uniform(KN_SHAPE(3), 0.5, 2.0, 31)};
        KN_ASSERT_GRADCHECK(bn_fn, in, 3, &eval);
    }
    kn_tensor *xp = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(2, 2, 2, 3), -2, 2, 40), true);
    kn_tensor *inp[3] = {xp, w, b};
    bn_case permuted = {true, true, NULL, NULL};
    KN_ASSERT_GRADCHECK(bn_fn, inp, 3, &permuted);
    kn_scope_end();
}

Test(batch_norm, errors)
{
    kn_scope_begin();
    kn_tensor *one = kn_ones(KN_SHAPE(1, 3), KN_FLOAT32);
    cr_assert_null(kn_batch_norm(one, NULL, NULL, NULL, NULL, true, 0.1, 1e-5));
    cr_assert(strstr(kn_last_error(), "Expected more than 1 value per channel when training") &&
                  strstr(kn_last_error(), "[1, 3]"),
              "%s", kn_last_error());
    /* one value per channel is fine in eval */
    kn_tensor *rm = kn_zeros(KN_SHAPE(3), KN_FLOAT32), *rv = kn_ones(KN_SHAPE(3), KN_FLOAT32);
    cr_assert_not_null(kn_batch_norm(one, rm, rv, NULL, NULL, false, 0.1, 1e-5), "%s",
                       kn_last_error());
    kn_tensor *x = kn_ones(KN_SHAPE(4, 3, 2), KN_FLOAT32);
    cr_assert_null(kn_batch_norm(x, NULL, NULL, NULL, NULL, false, 0.1, 1e-5));
    cr_assert(strstr(kn_last_error(), "evaluation mode"), "%s", kn_last_error());
    cr_assert_null(
        kn_batch_norm(x, NULL, NULL, kn_ones(KN_SHAPE(4), KN_FLOAT32), NULL, true, 0.1, 1e-5));
    cr_assert(strstr(kn_last_error(), "weight of shape [4]") &&
                  strstr(kn_last_error(), "[4, 3, 2]"),
              "%s", kn_last_error());
    cr_assert_null(
        kn_batch_norm(kn_ones(KN_SHAPE(4), KN_FLOAT32), NULL, NULL, NULL, NULL, true, 0.1, 1e-5));
    cr_assert(strstr(kn_last_error(), "[4]"), "%s", kn_last_error());
    kn_scope_end();
}

Test(batch_norm, constant_channel_is_finite)
{
    kn_scope_begin();
    kn_tensor *x = kn_full(KN_SHAPE(8, 2), 1000.0, KN_FLOAT32);
    kn_tensor *y = kn_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
    float zeros[16] = {0};
    ASSERT_CLOSE(y, zeros, 0, 1e-6);
    kn_scope_end();
}

/* Batch norm's kernels against a double reference, for 1-3 threads (same bits): planes
 * of a segment and a tail (s = 1100: 1024 + 76), a tail alone (s = 7), the ResNet's
 * 14x14 planes, two segments and one value (s = 2049). The data sit at 100 + N(0, 1)
 * so a statistic summed without the channel's shift, or a dropped tail or segment,
 * misses the tolerances. */
static void bn_kernel_case(int64_t n, int64_t c, int64_t s)
{
    int64_t numel = n * c * s;
    kn_manual_seed((uint64_t)(n * 7919 + c * 31 + s));
    kn_tensor *noise = kn_randn(KN_SHAPE(n, c, s), NULL), *gy = kn_randn(KN_SHAPE(n, c, s), NULL);
    kn_tensor *w = kn_randn(KN_SHAPE(c), NULL), *b = kn_randn(KN_SHAPE(c), NULL);
    float *xs = malloc(sizeof(float) * (size_t)numel);
    for (int64_t i = 0; i < numel; i++) xs[i] = 100.f + (float)(i / s % c) + kn_data_f32(noise)[i];
    kn_tensor *x = kn_from_floats(xs, KN_SHAPE(n, c, s));
    float *ref[6] = {NULL};
    int64_t sizes[6] = {numel, c, c, numel, c, c};
    int threads_before = kn_get_num_threads();
    for (int threads = 1; threads <= 3; threads++) {
        kn_set_num_threads(threads);
        kn_tensor *xl = kn_set_requires_grad(kn_detach(x), true);
        kn_tensor *wl = kn_set_requires_grad(kn_detach(w), true);
        kn_tensor *bl = kn_set_requires_grad(kn_detach(b), true);
        kn_tensor *rm = kn_zeros(KN_SHAPE(c), KN_FLOAT32), *rv = kn_ones(KN_SHAPE(c), KN_FLOAT32);
        kn_tensor *y = kn_batch_norm(xl, rm, rv, wl, bl, true, 0.1, 1e-5);
        cr_assert_not_null(y, "%s", kn_last_error());
        cr_assert_eq(kn_backward(y, gy, false), KN_OK, "%s", kn_last_error());
        kn_tensor *got[6] = {y, rm, rv, xl->grad, wl->grad, bl->grad};
        for (int k = 0; k < 6; k++) {
            char what[64];
            snprintf(what, sizeof what, "[%lld, %lld, %lld] result %d", (long long)n, (long long)c,
                     (long long)s, k);
            keep_or_compare_bits(&ref[k], kn_data_f32(got[k]), sizes[k], what, threads);
        }
    }
    kn_set_num_threads(threads_before);
    const float *gv = kn_data_f32(gy), *wv = kn_data_f32(w), *bv = kn_data_f32(b);
    double count = (double)(n * s);
    for (int64_t ch = 0; ch < c; ch++) {
        double m = 0, v = 0, sg = 0, sgx = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < s; j++) m += xs[(i * c + ch) * s + j];
        m /= count;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < s; j++) {
                int64_t at = (i * c + ch) * s + j;
                double d = xs[at] - m;
                v += d * d;
                sg += gv[at];
                sgx += gv[at] * d;
            }
        double rstd = 1 / sqrt(v / count + 1e-5);
        cr_assert(fabs(ref[1][ch] - 0.1 * m) <= 1e-6 * fabs(0.1 * m),
                  "[%lld, %lld, %lld] running_mean[%lld]", (long long)n, (long long)c, (long long)s,
                  (long long)ch);
        double rv_want = 0.9 + 0.1 * v / (count - 1);
        cr_assert(fabs(ref[2][ch] - rv_want) <= 1e-5 * rv_want,
                  "[%lld, %lld, %lld] running_var[%lld]: %g, expected %g", (long long)n,
                  (long long)c, (long long)s, (long long)ch, ref[2][ch], rv_want);
        cr_assert(fabs(ref[4][ch] - sgx * rstd) <= 1e-4 * (1 + fabs(sgx * rstd)), "dweight[%lld]",
                  (long long)ch);
        cr_assert(fabs(ref[5][ch] - sg) <= 1e-4 * (1 + fabs(sg)), "dbias[%lld]", (long long)ch);
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < s; j++) {
                int64_t at = (i * c + ch) * s + j;
                double xhat = (xs[at] - m) * rstd;
                double y = xhat * wv[ch] + bv[ch];
                double dx = wv[ch] * rstd * (gv[at] - sg / count - xhat * sgx * rstd / count);
                cr_assert(fabs(ref[0][at] - y) <= 2e-4 * (1 + fabs(y)), "y[%lld]: %g, expected %g",
                          (long long)at, ref[0][at], y);
                cr_assert(fabs(ref[3][at] - dx) <= 2e-4 * (1 + fabs(dx)),
                          "dx[%lld]: %g, expected %g", (long long)at, ref[3][at], dx);
            }
    }
    for (int k = 0; k < 6; k++) free(ref[k]);
    free(xs);
}

Test(batch_norm, kernels_match_double_reference_same_bits_for_any_thread_count)
{
    kn_scope_begin();
    bn_kernel_case(3, 2, 1100);
    bn_kernel_case(5, 3, 7);
    bn_kernel_case(64, 4, 196);
    bn_kernel_case(2, 3, 2049);
    kn_scope_end();
}

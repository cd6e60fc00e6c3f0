/*
 * test_loss.c — the losses (mse, binary cross entropy with logits, cross entropy, nll):
 * values and gradients against PyTorch 1.13 in every reduction, ignore_index and label
 * smoothing, 4-D inputs, gradchecks, non-contiguous inputs and error messages.
 */
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

/* Generated with PyTorch 1.13 (inputs rounded to 4 decimals). */
static const float MSE_A[12] = {0.612699986f, -1.17540002f,  -0.764599979f, -0.666599989f,
                                0.744400024f, -0.645299971f, -1.38900006f,  -0.273000002f,
                                0.940599978f, -2.6177001f,   -0.951099992f, -0.219600007f};
static const float MSE_B[12] = {0.167699993f,   -0.00529999984f, -2.0927999f,   0.180600002f,
                                -0.0271000005f, -0.0441999994f,  -0.277099997f, -1.43359995f,
                                -0.825100005f,  -0.181899995f,   -1.01209998f,  -0.454299986f};
static const float MSE_MEAN[1] = {1.391541f};
static const float MSE_SUM[1] = {16.6984921f};
static const float MSE_NONE[12] = {0.198024988f, 1.36913395f,  1.76411486f,    0.717747808f,
                                   0.59521234f,  0.361321181f, 1.23632181f,    1.34699225f,
                                   3.11769652f,  5.93312216f,  0.00372099876f, 0.0550840795f};
static const float BCE_X[8] = {100.f,       -100.f,      -5.02619982f, -4.80810022f,
                               2.51270008f, 1.51400006f, 3.61089993f,  30.f};
static const float BCE_T[8] = {0.0240000002f, 0.600300014f, 1.f,          0.313199997f,
                               0.171200007f,  0.f,          0.677600026f, 0.649600029f};
static const float BCE_MEAN[1] = {22.4691162f};
static const float BCE_SUM[1] = {179.75293f};
static const float BCE_NONE[8] = {97.5999985f, 60.0300026f, 5.03274202f, 1.51402724f,
                                  2.16045761f, 1.71287394f, 1.19082272f, 10.5119991f};
static const float BCE_DX_MEAN[8] = {0.122000001f,  -0.0750375018f, -0.124184884f, -0.038137842f,
                                     0.0942284167f, 0.102456659f,   0.0370104685f, 0.0437999964f};
static const float BCE_DT_MEAN[8] = {-12.5f,       12.5f,         0.628274977f,  0.601012528f,
                                     -0.31408751f, -0.189250007f, -0.451362491f, -3.75f};
static const float CE_X[20] = {0.100900002f, 2.56329989f,  -0.708100021f, 1.43110001f, -1.89559996f,
                               0.739600003f, -3.35730004f, 1.52049994f,   1.06169999f, 2.10960007f,
                               -1.72189999f, -1.24689996f, -2.31730008f,  1.73959994f, -2.3578999f,
                               2.34380007f,  1.55089998f,  -3.00469995f,  2.12450004f, -2.0474999f};
static const int64_t CE_T[4] = {1, 4, 0, 2};
static const float CE_MEAN[1] = {2.72221136f};
static const float CE_SUM[1] = {10.8888454f};
static const float CE_NONE[4] = {0.376435757f, 0.771880269f, 3.57103848f, 6.16949129f};
static const int64_t CE_TI[4] = {1, -100, 3, -100};
static const float CE_IGN_SMOOTH_MEAN[1] = {0.502260208f};
static const float CE_IGN_SMOOTH_SUM[1] = {1.00452042f};
static const float CE_IGN_SMOOTH_NONE[4] = {0.602933764f, 0.f, 0.401586622f, 0.f};
static const float CE_IGN_SMOOTH_DX[20] = {0.0192468613f,
                                           -0.116848417f,
                                           0.00302371965f,
                                           0.100605778f,
                                           -0.00602799002f,
                                           0.f,
                                           0.f,
                                           0.f,
                                           0.f,
                                           0.f,
                                           0.00406331383f,
                                           0.0126140127f,
                                           -0.00224630535f,
                                           -0.0118762525f,
                                           -0.00255479896f,
                                           0.f,
                                           0.f,
                                           0.f,
                                           0.f,
                                           0.f};
static const float CE_DX[20] = {0.0146234324f,  -0.0784242004f, 0.00651186053f,  0.0553028956f,
                                0.00198600511f, 0.0293584503f,  0.000488058926f, 0.0641023144f,
                                0.0405153371f,  -0.134464175f,  -0.242968336f,   0.0113070067f,
                                0.00387684745f, 0.224061877f,   0.00372260064f,  0.109998845f,
                                0.0497778356f,  -0.249476925f,  0.0883379579f,   0.00136229349f};
static const float CE_IGN2_SUM[1] = {5.57403946f};
static const float CE4_X[24] = {
    0.994599998f,  -0.654999971f, 0.0888999999f,  0.951900005f,  1.68859994f,   -1.2737f,
    0.0447999984f, -1.02839994f,  0.00999999978f, -0.296600014f, 2.48189998f,   0.791000009f,
    1.79270005f,   -0.861299992f, -2.33400011f,   -1.51059997f,  0.223299995f,  0.592000008f,
    0.641300023f,  2.48639989f,   0.274500012f,   -0.359600008f, -0.319400012f, 1.55729997f};
static const int64_t CE4_T[8] = {0, 2, 1, 1, 2, 0, -100, 1};
static const float CE4_MEAN[1] = {1.59453654f};
static const float CE4_SUM[1] = {11.1617556f};
static const float CE4_NONE[8] = {1.23585606f, 0.819088221f, 2.43615746f, 2.41482234f,
                                  1.77616787f, 1.80534351f,  0.f,         0.674319625f};
static const float CE4_DX[24] = {-0.081485182f,
                                 0.0385813937f,
                                 0.00154769165f,
                                 0.0622851774f,
                                 0.0751970932f,
                                 0.0163877755f,
                                 -0.11321567f,
                                 -0.11389789f,
                                 0.0062880842f,
                                 -0.0549691617f,
                                 0.111667976f,
                                 0.0516127236f,
                                 0.0905669555f,
                                 -0.103191443f,
                                 0.f,
                                 -0.00766686536f,
                                 0.0113120889f,
                                 0.0786639675f,
                                 0.f,
                                 -0.02272751f,
                                 -0.101879045f,
                                 0.024527492f,
                                 0.f,
                                 0.0303943846f};
static const float CE1[1] = {1.50863564f};
static const float NLL_LP[20] = {-2.83879995f, -0.376399994f, -3.64779997f, -1.5086f,
                                 -4.83529997f, -2.14190006f,  -6.23880005f, -1.36099994f,
                                 -1.81980002f, -0.771899998f, -3.5710001f,  -3.09599996f,
                                 -4.16639996f, -0.109499998f, -4.20699978f, -0.82099998f,
                                 -1.61389995f, -6.16949987f,  -1.04030001f, -5.21229982f};
static const float NLL_MEAN[1] = {0.242949992f};
static const float NLL_SUM[1] = {0.485899985f};
static const float NLL_NONE[4] = {0.376399994f, 0.f, 0.109499998f, 0.f};

#define N_OF(a) ((int64_t)(sizeof(a) / sizeof((a)[0])))
#define ASSERT_CLOSE(t, want, rtol, atol)                                                          \
    do {                                                                                           \
        char m_[512];                                                                              \
        cr_assert(kn_test_close((t), (want), N_OF(want), (rtol), (atol), m_, sizeof m_), "%s",     \
                  m_);                                                                             \
    } while (0)

static const kn_reduction REDUCTIONS[3] = {KN_REDUCTION_MEAN, KN_REDUCTION_SUM, KN_REDUCTION_NONE};

static kn_tensor *leaf(const float *data, const int64_t *shape, int ndim)
{
    return kn_set_requires_grad(kn_from_floats(data, shape, ndim), true);
}

/* ---- mse -------------------------------------------------------------------------------- */

Test(mse_loss, values_match_torch)
{
    kn_scope_begin();
    kn_tensor *a = kn_from_floats(MSE_A, KN_SHAPE(3, 4)),
              *b = kn_from_floats(MSE_B, KN_SHAPE(3, 4));
    ASSERT_CLOSE(kn_mse_loss(a, b, KN_REDUCTION_MEAN), MSE_MEAN, 1e-5, 1e-6);
    ASSERT_CLOSE(kn_mse_loss(a, b, KN_REDUCTION_SUM), MSE_SUM, 1e-5, 1e-6);
    kn_tensor *none = kn_mse_loss(a, b, KN_REDUCTION_NONE);
    ASSERT_CLOSE(none, MSE_NONE, 1e-5, 1e-6);
    cr_assert_eq(none->ndim, 2);
    cr_assert_eq(kn_mse_loss(a, b, KN_REDUCTION_MEAN)->ndim, 0);
    /* a transposed view of both gives the same total */
    ASSERT_CLOSE(kn_mse_loss(kn_transpose(a, 0, 1), kn_transpose(b, 0, 1), KN_REDUCTION_SUM),
                 MSE_SUM, 1e-5, 1e-6);
    kn_scope_end();
}

typedef struct loss_case {
    kn_reduction reduction;
    int64_t ignore;
    double smoothing;
    kn_tensor *target; /* class targets */
    bool transpose;
} loss_case;

static kn_tensor *mse_fn(kn_tensor **in, void *context)
{
    loss_case *c = context;
    kn_tensor *a = c->transpose ? kn_transpose(in[0], 0, 1) : in[0];
    return kn_mse_loss(a, in[1], c->reduction);
}

static kn_tensor *bce_fn(kn_tensor **in, void *context)
{
    loss_case *c = context;
    kn_tensor *a = c->transpose ? kn_transpose(in[0], 0, 1) : in[0];
    return kn_binary_cross_entropy_with_logits(a, in[1], c->reduction);
}

Test(mse_loss, gradcheck_every_reduction)
{
    kn_scope_begin();
    kn_tensor *a = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 4), -2, 2, 1), true);
    kn_tensor *b = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 4), -2, 2, 2), true);
    kn_tensor *at = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(4, 3), -2, 2, 3), true);
    for (int r = 0; r < 3; r++) {
        loss_case c = {.reduction = REDUCTIONS[r]};
        kn_tensor *in[2] = {a, b};
        KN_ASSERT_GRADCHECK(mse_fn, in, 2, &c);
        loss_case ct = {.reduction = REDUCTIONS[r], .transpose = true};
        kn_tensor *int_[2] = {at, b};
        KN_ASSERT_GRADCHECK(mse_fn, int_, 2, &ct);
    }
    kn_scope_end();
}

Test(mse_loss, errors)
{
    kn_scope_begin();
    kn_tensor *a = kn_zeros(KN_SHAPE(3, 4), KN_FLOAT32), *b = kn_zeros(KN_SHAPE(4, 3), KN_FLOAT32);
    cr_assert_null(kn_mse_loss(a, b, KN_REDUCTION_MEAN));
    cr_assert(strstr(kn_last_error(), "[3, 4]") && strstr(kn_last_error(), "[4, 3]"), "%s",
              kn_last_error());
    cr_assert_null(kn_mse_loss(a, a, (kn_reduction)7));
    cr_assert(strstr(kn_last_error(), "reduction 7"), "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_mse_loss(NULL, a, KN_REDUCTION_MEAN));
    kn_scope_end();
}

/* ---- bce with logits -------------------------------------------------------------------- */

Test(bce_with_logits, values_match_torch_and_are_stable)
{
    kn_scope_begin();
    kn_tensor *x = leaf(BCE_X, KN_SHAPE(2, 4)), *t = leaf(BCE_T, KN_SHAPE(2, 4));
    ASSERT_CLOSE(kn_binary_cross_entropy_with_logits(x, t, KN_REDUCTION_SUM), BCE_SUM, 1e-5, 1e-5);
    ASSERT_CLOSE(kn_binary_cross_entropy_with_logits(x, t, KN_REDUCTION_NONE), BCE_NONE, 1e-5,
                 1e-6);
    kn_tensor *loss = kn_binary_cross_entropy_with_logits(x, t, KN_REDUCTION_MEAN);
    ASSERT_CLOSE(loss, BCE_MEAN, 1e-5, 1e-6);
    cr_assert_eq(kn_backward(loss, NULL, false), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(x->grad, BCE_DX_MEAN, 1e-5, 1e-6);
    ASSERT_CLOSE(t->grad, BCE_DT_MEAN, 1e-5, 1e-6);
    kn_scope_end();
}

Test(bce_with_logits, gradcheck_every_reduction)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 4), -4, 4, 5), true);
    kn_tensor *t = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 4), 0, 1, 6), true);
    kn_tensor *xt = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(4, 3), -4, 4, 7), true);
    for (int r = 0; r < 3; r++) {
        loss_case c = {.reduction = REDUCTIONS[r]};
        kn_tensor *in[2] = {x, t};
        KN_ASSERT_GRADCHECK(bce_fn, in, 2, &c);
        loss_case ct = {.reduction = REDUCTIONS[r], .transpose = true};
        kn_tensor *int_[2] = {xt, t};
        KN_ASSERT_GRADCHECK(bce_fn, int_, 2, &ct);
    }
    kn_scope_end();
}

Test(bce_with_logits, shape_mismatch)
{
    kn_scope_begin();
    cr_assert_null(kn_binary_cross_entropy_with_logits(kn_zeros(KN_SHAPE(2, 4), KN_FLOAT32),
                                                       kn_zeros(KN_SHAPE(8), KN_FLOAT32),
                                                       KN_REDUCTION_MEAN));
    cr_assert(strstr(kn_last_error(), "[2, 4]") && strstr(kn_last_error(), "[8]"), "%s",
              kn_last_error());
    kn_scope_end();
}

/* ---- cross entropy ---------------------------------------------------------------------- */

Test(cross_entropy, values_match_torch)
{
    kn_scope_begin();
    kn_tensor *z = leaf(CE_X, KN_SHAPE(4, 5));
    kn_tensor *t = kn_from_int64s(CE_T, KN_SHAPE(4));
    ASSERT_CLOSE(kn_cross_entropy(z, t, KN_REDUCTION_SUM, -100, 0), CE_SUM, 1e-5, 1e-5);
    ASSERT_CLOSE(kn_cross_entropy(z, t, KN_REDUCTION_NONE, -100, 0), CE_NONE, 1e-5, 1e-5);
    kn_tensor *loss = kn_cross_entropy(z, t, KN_REDUCTION_MEAN, -100, 0);
    ASSERT_CLOSE(loss, CE_MEAN, 1e-5, 1e-5);
    cr_assert_eq(kn_backward(loss, NULL, false), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(z->grad, CE_DX, 1e-5, 1e-6);
    ASSERT_CLOSE(kn_cross_entropy(z, t, KN_REDUCTION_SUM, 2, 0.25), CE_IGN2_SUM, 1e-5, 1e-5);
    /* unbatched: logits [C], target [] */
    kn_tensor *row = kn_select(z, 0, 0);
    kn_tensor *one = kn_from_int64s((int64_t[]){3}, (int64_t[]){1}, 0);
    ASSERT_CLOSE(kn_cross_entropy(row, one, KN_REDUCTION_MEAN, -100, 0), CE1, 1e-5, 1e-5);
    kn_scope_end();
}

Test(cross_entropy, ignore_index_and_label_smoothing_match_torch)
{
    kn_scope_begin();
    kn_tensor *z = leaf(CE_X, KN_SHAPE(4, 5));
    kn_tensor *t = kn_from_int64s(CE_TI, KN_SHAPE(4));
    ASSERT_CLOSE(kn_cross_entropy(z, t, KN_REDUCTION_SUM, -100, 0.1), CE_IGN_SMOOTH_SUM, 1e-5,
                 1e-5);
    ASSERT_CLOSE(kn_cross_entropy(z, t, KN_REDUCTION_NONE, -100, 0.1), CE_IGN_SMOOTH_NONE, 1e-5,
                 1e-5);
    kn_tensor *loss = kn_cross_entropy(z, t, KN_REDUCTION_MEAN, -100, 0.1);
    ASSERT_CLOSE(loss, CE_IGN_SMOOTH_MEAN, 1e-5, 1e-5);
    cr_assert_eq(kn_backward(loss, NULL, false), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(z->grad, CE_IGN_SMOOTH_DX, 1e-5, 1e-6);
    kn_scope_end();
}

Test(cross_entropy, four_d_matches_torch)
{
    kn_scope_begin();
    kn_tensor *z = leaf(CE4_X, KN_SHAPE(2, 3, 2, 2));
    kn_tensor *t = kn_from_int64s(CE4_T, KN_SHAPE(2, 2, 2));
    ASSERT_CLOSE(kn_cross_entropy(z, t, KN_REDUCTION_SUM, -100, 0.2), CE4_SUM, 1e-5, 1e-5);
    kn_tensor *none = kn_cross_entropy(z, t, KN_REDUCTION_NONE, -100, 0.2);
    ASSERT_CLOSE(none, CE4_NONE, 1e-5, 1e-5);
    cr_assert_eq(none->ndim, 3);
    kn_tensor *loss = kn_cross_entropy(z, t, KN_REDUCTION_MEAN, -100, 0.2);
    ASSERT_CLOSE(loss, CE4_MEAN, 1e-5, 1e-5);
    cr_assert_eq(kn_backward(loss, NULL, false), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(z->grad, CE4_DX, 1e-5, 1e-6);
    kn_scope_end();
}

static kn_tensor *ce_fn(kn_tensor **in, void *context)
{
    loss_case *c = context;
    kn_tensor *z = c->transpose ? kn_transpose(in[0], 0, 1) : in[0];
    return kn_cross_entropy(z, c->target, c->reduction, c->ignore, c->smoothing);
}

static kn_tensor *nll_fn(kn_tensor **in, void *context)
{
    loss_case *c = context;
    kn_tensor *z = c->transpose ? kn_transpose(in[0], 0, 1) : in[0];
    return kn_nll_loss(z, c->target, c->reduction, c->ignore);
}

Test(cross_entropy, gradcheck_every_reduction)
{
    kn_scope_begin();
    kn_tensor *z = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(4, 5), -3, 3, 8), true);
    kn_tensor *zt = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5, 4), -3, 3, 9), true);
    kn_tensor *z4 = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(2, 3, 2, 2), -3, 3, 10), true);
    kn_tensor *t = kn_from_int64s((int64_t[]){1, -100, 4, 0}, KN_SHAPE(4));
    kn_tensor *t4 = kn_from_int64s(CE4_T, KN_SHAPE(2, 2, 2));
    const double smoothing[2] = {0.0, 0.3};
    for (int r = 0; r < 3; r++)
        for (int s = 0; s < 2; s++) {
            loss_case c = {REDUCTIONS[r], -100, smoothing[s], t, false};
            KN_ASSERT_GRADCHECK(ce_fn, &z, 1, &c);
            loss_case ct = {REDUCTIONS[r], -100, smoothing[s], t, true};
            KN_ASSERT_GRADCHECK(ce_fn, &zt, 1, &ct);
            loss_case c4 = {REDUCTIONS[r], -100, smoothing[s], t4, false};
            KN_ASSERT_GRADCHECK(ce_fn, &z4, 1, &c4);
        }
    kn_scope_end();
}

Test(cross_entropy, transposed_logits_match_contiguous)
{
    kn_scope_begin();
    kn_tensor *zt =
        kn_transpose(kn_contiguous(kn_transpose(kn_from_floats(CE_X, KN_SHAPE(4, 5)), 0, 1)), 0, 1);
    cr_assert(!kn_is_contiguous(zt));
    kn_tensor *t = kn_from_int64s(CE_T, KN_SHAPE(4));
    ASSERT_CLOSE(kn_cross_entropy(zt, t, KN_REDUCTION_NONE, -100, 0), CE_NONE, 1e-5, 1e-5);
    kn_scope_end();
}

Test(cross_entropy, errors_and_edge_cases)
{
    kn_scope_begin();
    kn_tensor *z = kn_from_floats(CE_X, KN_SHAPE(4, 5));
    cr_assert_null(kn_cross_entropy(z, kn_from_int64s((int64_t[]){1, 5, 0, 0}, KN_SHAPE(4)),
                                    KN_REDUCTION_MEAN, -100, 0));
    cr_assert(strstr(kn_last_error(), "target 5") && strstr(kn_last_error(), "5 classes"), "%s",
              kn_last_error());
    cr_assert_null(kn_cross_entropy(z, kn_from_int64s((int64_t[]){1, -1, 0, 0}, KN_SHAPE(4)),
                                    KN_REDUCTION_MEAN, -100, 0));
    cr_assert(strstr(kn_last_error(), "target -1"), "%s", kn_last_error());
    cr_assert_null(kn_cross_entropy(z, kn_from_int64s((int64_t[]){1, 2, 3}, KN_SHAPE(3)),
                                    KN_REDUCTION_MEAN, -100, 0));
    cr_assert(strstr(kn_last_error(), "[3]") && strstr(kn_last_error(), "[4, 5]"), "%s",
              kn_last_error());
    cr_assert_null(
        kn_cross_entropy(z, kn_zeros(KN_SHAPE(4), KN_FLOAT32), KN_REDUCTION_MEAN, -100, 0));
    cr_assert(strstr(kn_last_error(), "int64"), "%s", kn_last_error());
    cr_assert_null(
        kn_cross_entropy(z, kn_from_int64s(CE_T, KN_SHAPE(4)), KN_REDUCTION_MEAN, -100, 1.5));
    cr_assert(strstr(kn_last_error(), "label_smoothing"), "%s", kn_last_error());

    /* every target ignored: mean is nan (0/0), sum is 0, as in PyTorch */
    kn_tensor *ignored = kn_full(KN_SHAPE(4), -100, KN_INT64);
    cr_assert(isnan(kn_item(kn_cross_entropy(z, ignored, KN_REDUCTION_MEAN, -100, 0.1))));
    cr_assert_float_eq(kn_item(kn_cross_entropy(z, ignored, KN_REDUCTION_SUM, -100, 0)), 0.f, 0);

    /* NaN in a logit makes that row's loss NaN, the others are untouched */
    float with_nan[20];
    memcpy(with_nan, CE_X, sizeof with_nan);
    with_nan[7] = NAN; /* row 1, not its target */
    kn_tensor *none =
        kn_cross_entropy(kn_from_floats(with_nan, KN_SHAPE(4, 5)),
                         kn_from_int64s(CE_T, KN_SHAPE(4)), KN_REDUCTION_NONE, -100, 0);
    float want[4] = {CE_NONE[0], NAN, CE_NONE[2], CE_NONE[3]};
    ASSERT_CLOSE(none, want, 1e-5, 1e-5);
    kn_clear_error();
    cr_assert_null(kn_cross_entropy(NULL, ignored, KN_REDUCTION_MEAN, -100, 0));
    kn_scope_end();
}

/* ---- nll -------------------------------------------------------------------------------- */

Test(nll_loss, values_and_gradcheck)
{
    kn_scope_begin();
    kn_tensor *lp = leaf(NLL_LP, KN_SHAPE(4, 5));
    kn_tensor *t = kn_from_int64s(CE_TI, KN_SHAPE(4));
    ASSERT_CLOSE(kn_nll_loss(lp, t, KN_REDUCTION_MEAN, -100), NLL_MEAN, 1e-6, 1e-6);
    ASSERT_CLOSE(kn_nll_loss(lp, t, KN_REDUCTION_SUM, -100), NLL_SUM, 1e-6, 1e-6);
    ASSERT_CLOSE(kn_nll_loss(lp, t, KN_REDUCTION_NONE, -100), NLL_NONE, 1e-6, 1e-6);
    ASSERT_CLOSE(kn_nll_loss(kn_transpose(kn_contiguous(kn_transpose(lp, 0, 1)), 0, 1), t,
                             KN_REDUCTION_NONE, -100),
                 NLL_NONE, 1e-6, 1e-6);
    kn_tensor *lpt = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5, 4), -3, 0, 12), true);
    kn_tensor *lp4 = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(2, 3, 2, 2), -3, 0, 13), true);
    kn_tensor *t4 = kn_from_int64s(CE4_T, KN_SHAPE(2, 2, 2));
    for (int r = 0; r < 3; r++) {
        loss_case c = {REDUCTIONS[r], -100, 0, t, false};
        KN_ASSERT_GRADCHECK(nll_fn, &lp, 1, &c);
        loss_case ct = {REDUCTIONS[r], -100, 0, t, true};
        KN_ASSERT_GRADCHECK(nll_fn, &lpt, 1, &ct);
        loss_case c4 = {REDUCTIONS[r], -100, 0, t4, false};
        KN_ASSERT_GRADCHECK(nll_fn, &lp4, 1, &c4);
    }
    cr_assert_null(kn_nll_loss(lp, kn_from_int64s((int64_t[]){0, 0, 0, 9}, KN_SHAPE(4)),
                               KN_REDUCTION_MEAN, -100));
    cr_assert(strstr(kn_last_error(), "nll_loss") && strstr(kn_last_error(), "target 9"), "%s",
              kn_last_error());
    cr_assert(
        isnan(kn_item(kn_nll_loss(lp, kn_full(KN_SHAPE(4), 3, KN_INT64), KN_REDUCTION_MEAN, 3))));
    kn_scope_end();
}

/* ---- l1, smooth_l1, huber, weights, pos_weight: finite differences and torch's edges ------ */

typedef struct reg_case {
    int kind; /* 0 l1, 1 smooth_l1, 2 huber, 3 bce with pos_weight, 4 weighted ce, 5 weighted nll */
    kn_reduction reduction;
    double param;
    kn_tensor *extra;  /* pos_weight or class weights */
    kn_tensor *target; /* class targets */
    double smoothing;
} reg_case;

static kn_tensor *reg_fn(kn_tensor **in, void *context)
{
    reg_case *c = context;
    switch (c->kind) {
    case 0:
        return kn_l1_loss(in[0], in[1], c->reduction);
    case 1:
        return kn_smooth_l1_loss(in[0], in[1], c->reduction, c->param);
    case 2:
        return kn_huber_loss(in[0], in[1], c->reduction, c->param);
    case 3:
        return kn_binary_cross_entropy_with_logits_pos_weight(in[0], in[1], c->extra, c->reduction);
    case 4:
        return kn_cross_entropy_weighted(in[0], c->target, c->extra, c->reduction, -100,
                                         c->smoothing);
    default:
        return kn_nll_loss_weighted(in[0], c->target, c->extra, c->reduction, -100);
    }
}

Test(regression_losses, gradcheck_every_reduction)
{
    kn_scope_begin();
    /* |x - t| spread over [0, 4): both branches of smooth_l1 (beta 1, 0.5) and huber (delta 1,
     * 2), far from the kinks at the finite-difference step */
    kn_tensor *x = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 5), -2, 2, 21), true);
    kn_tensor *t = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 5), -2, 2, 22), true);
    const struct {
        int kind;
        double param;
    } cases[] = {{0, 0}, {1, 1.0}, {1, 0.5}, {2, 1.0}, {2, 2.0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int r = 0; r < 3; r++) {
            reg_case c = {
                .kind = cases[k].kind, .reduction = REDUCTIONS[r], .param = cases[k].param};
            kn_tensor *in[2] = {x, t};
            KN_ASSERT_GRADCHECK(reg_fn, in, 2, &c);
        }
    kn_scope_end();
}

/* torch 1.13 on d = x - t in {-2, -1, -0.5, 0, 0.5, 1, 2}: the gradient at the branch points
 * (|d| = beta, d = 0) is torch's, including smooth_l1's -1 at d = 0 when beta is 0. */
Test(regression_losses, branch_points_match_torch)
{
    kn_scope_begin();
    static const float d[7] = {-2, -1, -0.5f, 0, 0.5f, 1, 2};
    struct {
        int kind;
        double param;
        float value[7], grad[7];
    } want[] = {
        {0, 0, {2, 1, 0.5f, 0, 0.5f, 1, 2}, {-1, -1, -1, 0, 1, 1, 1}},
        {1, 1, {1.5f, 0.5f, 0.125f, 0, 0.125f, 0.5f, 1.5f}, {-1, -1, -0.5f, 0, 0.5f, 1, 1}},
        {1, 0, {2, 1, 0.5f, 0, 0.5f, 1, 2}, {-1, -1, -1, -1, 1, 1, 1}},
        {2, 1, {1.5f, 0.5f, 0.125f, 0, 0.125f, 0.5f, 1.5f}, {-1, -1, -0.5f, 0, 0.5f, 1, 1}},
        {2,
         0.5,
         {0.875f, 0.375f, 0.125f, 0, 0.125f, 0.375f, 0.875f},
         {-0.5f, -0.5f, -0.5f, 0, 0.5f, 0.5f, 0.5f}},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        kn_tensor *x = leaf(d, KN_SHAPE(7));
        kn_tensor *t = kn_set_requires_grad(kn_zeros(KN_SHAPE(7), KN_FLOAT32), true);
        reg_case c = {.kind = want[k].kind, .reduction = KN_REDUCTION_NONE, .param = want[k].param};
        kn_tensor *in[2] = {x, t};
        kn_tensor *out = reg_fn(in, &c);
        ASSERT_CLOSE(out, want[k].value, 1e-6, 1e-7);
        cr_assert_eq(kn_backward(kn_sum_all(out), NULL, false), KN_OK, "%s", kn_last_error());
        ASSERT_CLOSE(x->grad, want[k].grad, 1e-6, 1e-7);
        float neg[7];
        for (int i = 0; i < 7; i++) neg[i] = -want[k].grad[i];
        ASSERT_CLOSE(t->grad, neg, 1e-6, 1e-7);
    }
    kn_scope_end();
}

Test(regression_losses, errors_name_the_parameter)
{
    kn_scope_begin();
    kn_tensor *a = kn_zeros(KN_SHAPE(2, 3), KN_FLOAT32);
    cr_assert_null(kn_smooth_l1_loss(a, a, KN_REDUCTION_MEAN, -1));
    cr_assert(strstr(kn_last_error(), "beta") && strstr(kn_last_error(), "-1"), "%s",
              kn_last_error());
    cr_assert_null(kn_huber_loss(a, a, KN_REDUCTION_MEAN, 0));
    cr_assert(strstr(kn_last_error(), "delta"), "%s", kn_last_error());
    cr_assert_null(kn_huber_loss(a, a, KN_REDUCTION_MEAN, NAN));
    cr_assert_null(kn_l1_loss(a, kn_zeros(KN_SHAPE(3, 2), KN_FLOAT32), KN_REDUCTION_MEAN));
    cr_assert(strstr(kn_last_error(), "l1_loss") && strstr(kn_last_error(), "[3, 2]"), "%s",
              kn_last_error());
    /* pos_weight must broadcast over the last dim */
    cr_assert_null(kn_binary_cross_entropy_with_logits_pos_weight(
        a, a, kn_ones(KN_SHAPE(2), KN_FLOAT32), KN_REDUCTION_MEAN));
    cr_assert(strstr(kn_last_error(), "pos_weight") && strstr(kn_last_error(), "[3]"), "%s",
              kn_last_error());
    /* class weights must have one value per class */
    cr_assert_null(kn_cross_entropy_weighted(a, kn_zeros(KN_SHAPE(2), KN_INT64),
                                             kn_ones(KN_SHAPE(2), KN_FLOAT32), KN_REDUCTION_MEAN,
                                             -100, 0));
    cr_assert(strstr(kn_last_error(), "weight") && strstr(kn_last_error(), "3 classes"), "%s",
              kn_last_error());
    cr_assert_null(kn_nll_loss_weighted(a, kn_zeros(KN_SHAPE(2), KN_INT64),
                                        kn_ones(KN_SHAPE(3), KN_INT64), KN_REDUCTION_MEAN, -100));
    kn_scope_end();
}

Test(weighted_losses, gradcheck_every_reduction)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 4), -4, 4, 31), true);
    kn_tensor *t = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 4), 0, 1, 32), true);
    kn_tensor *pw = kn_test_uniform(KN_SHAPE(4), 0.5, 3, 33);
    kn_tensor *z = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5, 4), -3, 3, 34), true);
    kn_tensor *lp = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5, 4), -3, 0, 35), true);
    kn_tensor *w = kn_test_uniform(KN_SHAPE(4), 0.2, 2, 36);
    kn_tensor *classes = kn_from_int64s((int64_t[]){3, 0, -100, 1, 3}, KN_SHAPE(5));
    for (int r = 0; r < 3; r++) {
        reg_case bce = {.kind = 3, .reduction = REDUCTIONS[r], .extra = pw};
        kn_tensor *in[2] = {x, t};
        KN_ASSERT_GRADCHECK(reg_fn, in, 2, &bce);
        for (int smooth = 0; smooth < 2; smooth++) {
            reg_case ce = {.kind = 4,
                           .reduction = REDUCTIONS[r],
                           .extra = w,
                           .target = classes,
                           .smoothing = smooth * 0.3};
            KN_ASSERT_GRADCHECK(reg_fn, &z, 1, &ce);
        }
        reg_case nll = {.kind = 5, .reduction = REDUCTIONS[r], .extra = w, .target = classes};
        KN_ASSERT_GRADCHECK(reg_fn, &lp, 1, &nll);
    }
    /* weights of 1 are the unweighted loss; pos_weight of 1 is plain bce */
    kn_tensor *ones = kn_ones(KN_SHAPE(4), KN_FLOAT32);
    cr_assert_float_eq(
        kn_item(kn_cross_entropy_weighted(z, classes, ones, KN_REDUCTION_MEAN, -100, 0.1)),
        kn_item(kn_cross_entropy(z, classes, KN_REDUCTION_MEAN, -100, 0.1)), 1e-6);
    cr_assert_float_eq(
        kn_item(kn_binary_cross_entropy_with_logits_pos_weight(x, t, ones, KN_REDUCTION_SUM)),
        kn_item(kn_binary_cross_entropy_with_logits(x, t, KN_REDUCTION_SUM)), 1e-5);
    kn_scope_end();
}

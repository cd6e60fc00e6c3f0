/*
 * test_softmax.c — softmax and log_softmax: values against PyTorch 1.13 over every dim,
 * transposed inputs, large and masked logits, long rows, gradients and errors.
 */
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

/* x[i] = 3 sin(1.3 i), shape [2, 3, 4]: no ties, values of both signs. */
static kn_tensor *x234(void)
{
    return kn_test_sin24(KN_SHAPE(2, 3, 4));
}

Test(softmax, last_dim)
{
    kn_scope_begin();
    kn_tensor *y = kn_softmax(x234(), 2);
    cr_assert_eq(y->ndim, 3);
    KN_ASSERT_CLOSE(y, {0.04196828976273537f,   0.7556580305099487f,    0.197042316198349f,
                        0.005331411957740784f,  0.0028733029030263424f, 0.07757043093442917f,
                        0.813589870929718f,     0.10596633702516556f,   0.0036257803440093994f,
                        0.00441760802641511f,   0.15324683487415314f,   0.8387097716331482f,
                        0.1781097948551178f,    0.007938841357827187f,  0.021002482622861862f,
                        0.7929489016532898f,    0.9387823343276978f,    0.041774578392505646f,
                        0.0029965192079544067f, 0.016446541994810104f,  0.4427877366542816f,
                        0.5377526879310608f,    0.017211802303791046f,  0.002247751224786043f});
    KN_ASSERT_CLOSE(
        kn_log_softmax(x234(), -1),
        {-3.1708409786224365f,  -0.280166357755661f,  -1.624336838722229f,   -5.2341389656066895f,
         -5.852293014526367f,   -2.5565688610076904f, -0.20629887282848358f, -2.244633674621582f,
         -5.619685649871826f,   -5.422156810760498f,  -1.875705361366272f,   -0.17589057981967926f,
         -1.7253551483154297f,  -4.8359880447387695f, -3.863114595413208f,   -0.23199649155139923f,
         -0.06317161023616791f, -3.1754672527313232f, -5.810303688049316f,   -4.107639789581299f,
         -0.8146647810935974f,  -0.6203565001487732f, -4.062160015106201f,   -6.097825050354004f});
    kn_scope_end();
}

Test(softmax, inner_dims)
{
    kn_scope_begin();
    KN_ASSERT_CLOSE(kn_softmax(x234(), 1),
                    {0.8664926290512085f,   0.8996517062187195f,   0.16637136042118073f,
                     0.005764917936176062f, 0.06119647994637489f,  0.09526792168617249f,
                     0.708640456199646f,    0.11820075660943985f,  0.07231084257364273f,
                     0.005080361384898424f, 0.12498820573091507f,  0.8760343790054321f,
                     0.050321608781814575f, 0.004830621648579836f, 0.27259501814842224f,
                     0.948465883731842f,    0.5908483266830444f,   0.05662425234913826f,
                     0.08663802593946457f,  0.043822333216667175f, 0.358830064535141f,
                     0.9385451078414917f,   0.6407669186592102f,   0.0077117192558944225f});
    KN_ASSERT_CLOSE(kn_log_softmax(x234(), 0),
                    {-0.8677833676338196f,    -0.0034143980592489243f, -0.034112025052309036f,
                     -3.900360345840454f,     -5.441093444824219f,     -0.32106995582580566f,
                     -0.0025858795270323753f, -0.1035599336028099f,    -4.779589653015137f,
                     -4.77639627456665f,      -0.10307475179433823f,   -0.0025874252896755934f,
                     -0.5445224046707153f,    -5.681461334228516f,     -3.3951144218444824f,
                     -0.020442159846425056f,  -0.004344192799180746f,  -1.29233980178833f,
                     -5.958962917327881f,     -2.3189377784729004f,    -0.008434861898422241f,
                     -0.008462049067020416f,  -2.3233959674835205f,    -5.958388328552246f});
    kn_scope_end();
}

Test(softmax, transposed_input)
{
    kn_scope_begin();
    kn_tensor *t = kn_test_transposed(x234(), 0, 2); /* [4, 3, 2] */
    KN_ASSERT_CLOSE(kn_softmax(t, 1),
                    {0.8664926290512085f,   0.050321608781814575f, 0.06119647994637489f,
                     0.5908483266830444f,   0.07231084257364273f,  0.358830064535141f,
                     0.8996517062187195f,   0.004830621648579836f, 0.09526792168617249f,
                     0.05662425234913826f,  0.005080361384898424f, 0.9385451078414917f,
                     0.16637136042118073f,  0.27259501814842224f,  0.708640456199646f,
                     0.08663802593946457f,  0.12498820573091507f,  0.6407669186592102f,
                     0.005764917936176062f, 0.948465883731842f,    0.11820075660943985f,
                     0.043822333216667175f, 0.8760343790054321f,   0.0077117192558944225f});
    KN_ASSERT_CLOSE(kn_log_softmax(t, 2),
                    {-0.8677833676338196f,    -0.5445224046707153f,    -5.441093444824219f,
                     -0.004344192799180746f,  -4.779589653015137f,     -0.008434861898422241f,
                     -0.0034143980592489243f, -5.681461334228516f,     -0.32106995582580566f,
                     -1.29233980178833f,      -4.77639627456665f,      -0.008462049067020416f,
                     -0.034112025052309036f,  -3.3951144218444824f,    -0.0025858795270323753f,
                     -5.958962917327881f,     -0.10307475179433823f,   -2.3233959674835205f,
                     -3.900360345840454f,     -0.020442159846425056f,  -0.1035599336028099f,
                     -2.3189377784729004f,    -0.0025874252896755934f, -5.958388328552246f});
    kn_scope_end();
}

Test(softmax, stable_for_large_and_masked_logits)
{
    kn_scope_begin();
    float logits[] = {1000, 1001, 1002, -1000, -1001, -1002};
    kn_tensor *big = kn_from_floats(logits, KN_SHAPE(2, 3));
    KN_ASSERT_CLOSE(kn_softmax(big, 1),
                    {0.09003057330846786f, 0.2447284758090973f, 0.6652409434318542f,
                     0.6652409434318542f, 0.2447284758090973f, 0.09003057330846786f});
    KN_ASSERT_CLOSE(kn_log_softmax(big, 1),
                    {-2.4076058864593506f, -1.4076058864593506f, -0.40760594606399536f,
                     -0.40760594606399536f, -1.4076058864593506f, -2.4076058864593506f});
    kn_tensor *mask = kn_from_floats((float[]){0, -INFINITY, 1}, KN_SHAPE(1, 3));
    kn_tensor *y = kn_softmax(mask, 1);
    KN_ASSERT_CLOSE(y, {0.2689414322376251f, 0.0f, 0.7310585975646973f});
    cr_assert_eq(kn_data_f32(y)[1], 0.f); /* exactly 0, as in PyTorch */
    KN_ASSERT_CLOSE(kn_log_softmax(mask, 1),
                    {-1.31326162815094f, -INFINITY, -0.31326165795326233f});
    /* the same down columns (inner > 1, 8 columns: the vector path); column 0 is masked */
    float cols[24], want[24];
    const float col0[3] = {0.2689414322376251f, 0.0f, 0.7310585975646973f};
    for (int i = 0; i < 24; i++) {
        cols[i] = i % 8 ? 5.f : (float[]){0, -INFINITY, 1}[i / 8];
        want[i] = i % 8 ? 1.f / 3.f : col0[i / 8];
    }
    kn_tensor *yc = kn_softmax(kn_from_floats(cols, KN_SHAPE(3, 8)), 0);
    char msg[256];
    cr_assert(kn_test_close(yc, want, 24, 1e-5, 1e-6, msg, sizeof msg), "%s", msg);
    cr_assert_eq(kn_data_f32(yc)[8], 0.f);
    /* an all -inf row has no softmax: NaN as in PyTorch */
    kn_tensor *none = kn_softmax(kn_from_floats((float[]){-INFINITY, -INFINITY}, KN_SHAPE(2)), 0);
    cr_assert(isnan(kn_data_f32(none)[0]) && isnan(kn_data_f32(none)[1]));
    kn_scope_end();
}

Test(softmax, scalar_and_empty)
{
    kn_scope_begin();
    KN_ASSERT_CLOSE(kn_softmax(kn_test_scalar(3.f), 0), {1.f});
    KN_ASSERT_CLOSE(kn_log_softmax(kn_test_scalar(3.f), -1), {0.f});
    kn_tensor *e = kn_softmax(kn_zeros(KN_SHAPE(0, 4), KN_FLOAT32), 1);
    cr_assert_not_null(e, "%s", kn_last_error());
    cr_assert_eq(kn_numel(e), 0);
    kn_scope_end();
}

/* Rows long and many enough for the vectorised and threaded paths, against doubles. */
Test(softmax, long_rows_match_double_reference)
{
    kn_scope_begin();
    const int rows = 64, n = 3000;
    kn_tensor *x = kn_test_uniform(KN_SHAPE(rows, n), -8.0, 8.0, 11);
    kn_tensor *y = kn_softmax(x, 1), *l = kn_log_softmax(x, 1);
    kn_tensor *yc = kn_softmax(kn_test_transposed(x, 0, 1), 0); /* column path */
    const float *xd = kn_data_f32(x), *yd = kn_data_f32(y), *ld = kn_data_f32(l);
    const float *cd = kn_data_f32(yc);
    for (int r = 0; r < rows; r++) {
        double m = -INFINITY, s = 0;
        for (int i = 0; i < n; i++) m = fmax(m, xd[r * n + i]);
        for (int i = 0; i < n; i++) s += exp(xd[r * n + i] - m);
        for (int i = 0; i < n; i += 7) {
            double want = exp(xd[r * n + i] - m) / s;
            double lwant = xd[r * n + i] - m - log(s);
            cr_assert(fabs(yd[r * n + i] - want) <= 1e-5 * want + 1e-9, "(%d, %d)", r, i);
            cr_assert(fabs(ld[r * n + i] - lwant) <= 1e-5 * fabs(lwant) + 1e-6, "(%d, %d)", r, i);
            cr_assert(fabs(cd[i * rows + r] - want) <= 1e-5 * want + 1e-9, "(%d, %d)", r, i);
        }
    }
    kn_scope_end();
}

/* ---- gradients ------------------------------------------------------------------------ */

static kn_tensor *softmax_fn(kn_tensor **in, void *c)
{
    return kn_softmax(in[0], *(int *)c);
}
static kn_tensor *log_softmax_fn(kn_tensor **in, void *c)
{
    return kn_log_softmax(in[0], *(int *)c);
}

Test(softmax, gradcheck_every_dim)
{
    for (int dim = -3; dim < 3; dim++) {
        kn_scope_begin();
        kn_tensor *x = kn_set_requires_grad(x234(), true);
        KN_ASSERT_GRADCHECK(softmax_fn, &x, 1, &dim);
        KN_ASSERT_GRADCHECK(log_softmax_fn, &x, 1, &dim);
        kn_scope_end();
    }
}

Test(softmax, backward_values_and_noncontiguous_grad)
{
    kn_scope_begin();
    /* PyTorch: y = softmax([1, 2, 3]); y.backward([1, 0, 0]) */
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){1, 2, 3}, KN_SHAPE(3)), true);
    kn_tensor *g = kn_from_floats((float[]){1, 0, 0}, KN_SHAPE(3));
    cr_assert_eq(kn_backward(kn_softmax(x, 0), g, false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(x->grad, {0.08192507177591324f, -0.022033045068383217f, -0.05989202484488487f});
    kn_zero_grad(x);
    cr_assert_eq(kn_backward(kn_log_softmax(x, 0), g, false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(x->grad, {0.9099694490432739f, -0.24472849071025848f, -0.665241003036499f});
    /* a transposed gradient gives what its contiguous copy gives */
    kn_tensor *a = kn_set_requires_grad(kn_test_sin24(KN_SHAPE(4, 6)), true);
    kn_tensor *gt = kn_test_transposed(kn_test_sin24(KN_SHAPE(6, 4)), 0, 1);
    cr_assert_eq(kn_backward(kn_softmax(a, 1), gt, false), KN_OK, "%s", kn_last_error());
    kn_tensor *b = kn_set_requires_grad(kn_test_sin24(KN_SHAPE(4, 6)), true);
    float dense[24];
    cr_assert_eq(kn_copy_to_floats(gt, dense), KN_OK);
    kn_tensor *gd = kn_from_floats(dense, KN_SHAPE(4, 6));
    cr_assert_eq(kn_backward(kn_softmax(b, 1), gd, false), KN_OK);
    char msg[256];
    cr_assert(kn_test_close(a->grad, kn_data_f32(b->grad), 24, 0, 0, msg, sizeof msg), "%s", msg);
    kn_scope_end();
}

Test(softmax, errors)
{
    kn_scope_begin();
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3), KN_FLOAT32);
    cr_assert_null(kn_softmax(x, 2));
    cr_assert(strstr(kn_last_error(), "softmax") && strstr(kn_last_error(), "dim 2") &&
                  strstr(kn_last_error(), "rank 2"),
              "%s", kn_last_error());
    cr_assert_null(kn_log_softmax(x, -3));
    cr_assert(strstr(kn_last_error(), "log_softmax"), "%s", kn_last_error());
    cr_assert_null(kn_softmax(kn_arange(3), 0));
    cr_assert(strstr(kn_last_error(), "int64"), "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_softmax(NULL, 0));
    cr_assert_null(kn_log_softmax(NULL, 0));
    kn_scope_end();
}

/*
 * test_reduce.c — sum, mean, var, max/min (values and indices), max_all/min_all and
 * argmax: values against PyTorch 1.13, keepdim shapes, several and negative dims,
 * transposed inputs, empty dims, large-sum accuracy, gradients and error messages.
 */
#include "kn_test.h"
#include "kn_internal.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT_SHAPE(t, ...)                                                                       \
    do {                                                                                           \
        const int64_t want__[] = {__VA_ARGS__};                                                    \
        int n__ = (int)(sizeof want__ / sizeof *want__);                                           \
        cr_assert_not_null((t), "%s", kn_last_error());                                            \
        cr_assert_eq((t)->ndim, n__, "rank %d, want %d", (t)->ndim, n__);                          \
        for (int d__ = 0; d__ < n__; d__++) cr_assert_eq((t)->shape[d__], want__[d__]);            \
    } while (0)

#define ASSERT_INDICES(t, ...)                                                                     \
    do {                                                                                           \
        const int64_t want__[] = __VA_ARGS__;                                                      \
        int64_t n__ = (int64_t)(sizeof want__ / sizeof *want__);                                   \
        cr_assert_not_null((t), "%s", kn_last_error());                                            \
        cr_assert_eq((t)->dtype, KN_INT64);                                                        \
        cr_assert_eq(kn_numel(t), n__);                                                            \
        int64_t got__[64];                                                                         \
        cr_assert_eq(kn_copy_to_int64s((t), got__), KN_OK);                                        \
        for (int64_t k__ = 0; k__ < n__; k__++)                                                    \
            cr_assert_eq(got__[k__], want__[k__], "index %ld: %ld != %ld", (long)k__,              \
                         (long)got__[k__], (long)want__[k__]);                                     \
    } while (0)

/* x[i] = 3 sin(1.3 i), shape [2, 3, 4]: no ties, values of both signs. */
static kn_tensor *x234(void)
{
    return kn_test_sin24(KN_SHAPE(2, 3, 4));
}

/* ---- forward values ------------------------------------------------------------------ */

Test(reduce, sum_one_dim)
{
    kn_scope_begin();
    kn_tensor *s = kn_sum(x234(), KN_DIMS(1), false);
    ASSERT_SHAPE(s, 2, 4);
    KN_ASSERT_CLOSE(s, {-5.133843421936035f, 1.2500839233398438f, 5.802635192871094f,
                        1.854312539100647f, 5.397322177886963f, -0.631298303604126f,
                        -5.73506498336792f, -2.436948299407959f});
    kn_scope_end();
}

Test(reduce, sum_several_dims_keepdim)
{
    kn_scope_begin();
    kn_tensor *s = kn_sum(x234(), KN_DIMS(0, 2), true);
    ASSERT_SHAPE(s, 1, 3, 1);
    KN_ASSERT_CLOSE(s, {-0.08810949325561523f, 0.18956756591796875f, 0.26574110984802246f});
    kn_tensor *t = kn_sum(x234(), KN_DIMS(2, -3), false); /* order and sign do not matter */
    ASSERT_SHAPE(t, 3);
    KN_ASSERT_CLOSE(t, {-0.08810949325561523f, 0.18956756591796875f, 0.26574110984802246f});
    kn_scope_end();
}

Test(reduce, sum_negative_dim_and_all)
{
    kn_scope_begin();
    kn_tensor *s = kn_sum(x234(), KN_DIMS(-1), false);
    ASSERT_SHAPE(s, 2, 3);
    KN_ASSERT_CLOSE(s, {2.37388014793396f, 1.9479211568832397f, -0.5486130714416504f,
                        -2.461989641189575f, -1.758353590965271f, 0.8143541812896729f});
    kn_tensor *all = kn_sum(x234(), NULL, 0, false);
    ASSERT_SHAPE(all, );
    KN_ASSERT_CLOSE(all, {0.36719924211502075f});
    kn_tensor *allk = kn_sum(x234(), NULL, 0, true);
    ASSERT_SHAPE(allk, 1, 1, 1);
    KN_ASSERT_CLOSE(kn_sum_all(x234()), {0.36719924211502075f});
    ASSERT_SHAPE(kn_sum_all(x234()), );
    kn_scope_end();
}

Test(reduce, sum_of_a_scalar_and_of_size_one_dims)
{
    kn_scope_begin();
    kn_tensor *s = kn_test_scalar(2.5f);
    KN_ASSERT_CLOSE(kn_sum(s, KN_DIMS(0), false), {2.5f});
    KN_ASSERT_CLOSE(kn_sum(s, KN_DIMS(-1), true), {2.5f});
    KN_ASSERT_CLOSE(kn_sum_all(s), {2.5f});
    kn_tensor *c = kn_from_floats((float[]){1, 2, 3}, KN_SHAPE(3, 1));
    kn_tensor *r = kn_sum(c, KN_DIMS(1), false);
    ASSERT_SHAPE(r, 3);
    KN_ASSERT_CLOSE(r, {1, 2, 3});
    kn_scope_end();
}

Test(reduce, mean)
{
    kn_scope_begin();
    kn_tensor *m = kn_mean(x234(), KN_DIMS(0, 1), false);
    ASSERT_SHAPE(m, 4);
    KN_ASSERT_CLOSE(m, {0.043913085013628006f, 0.10313093662261963f, 0.011261682026088238f,
                        -0.09710594266653061f});
    KN_ASSERT_CLOSE(kn_mean_all(x234()), {0.015299968421459198f});
    KN_ASSERT_CLOSE(kn_mean(x234(), NULL, 0, false), {0.015299968421459198f});
    kn_scope_end();
}

Test(reduce, var)
{
    kn_scope_begin();
    kn_tensor *v = kn_var(x234(), KN_DIMS(1), 1, false);
    ASSERT_SHAPE(v, 2, 4);
    KN_ASSERT_CLOSE(v, {2.203325033187866f, 6.7385783195495605f, 0.8654059767723083f,
                        6.395463466644287f, 1.695770025253296f, 6.951528549194336f,
                        1.0080114603042603f, 5.938118934631348f});
    kn_tensor *p = kn_var(x234(), KN_DIMS(0, 2), 0, true);
    ASSERT_SHAPE(p, 1, 3, 1);
    KN_ASSERT_CLOSE(p, {3.6837947368621826f, 4.443199634552002f, 5.378079414367676f});
    /* one element with correction 1: 0 / 0 */
    kn_tensor *one = kn_from_floats((float[]){1}, KN_SHAPE(1));
    cr_assert(isnan(kn_item(kn_var(one, KN_DIMS(0), 1, false))));
    kn_scope_end();
}

Test(reduce, max_min_with_indices)
{
    kn_scope_begin();
    kn_tensor *index = NULL;
    kn_tensor *v = kn_max(x234(), 1, false, &index);
    ASSERT_SHAPE(v, 2, 4);
    ASSERT_SHAPE(index, 2, 4);
    KN_ASSERT_CLOSE(v, {0.0f, 2.890674591064453f, 2.9956300258636475f, 2.9603159427642822f,
                        2.7863857746124268f, 2.4819836616516113f, -0.9598199129104614f,
                        1.816619634628296f});
    ASSERT_INDICES(index, {0, 0, 1, 2, 1, 2, 2, 0});
    kn_tensor *w = kn_min(x234(), -1, true, &index);
    ASSERT_SHAPE(w, 2, 3, 1);
    ASSERT_SHAPE(index, 2, 3, 1);
    KN_ASSERT_CLOSE(w, {-2.063298463821411f, -2.6503639221191406f, -2.4834794998168945f,
                        -2.78737211227417f, -2.9607467651367188f, -2.9954850673675537f});
    ASSERT_INDICES(index, {3, 0, 0, 1, 2, 3});
    cr_assert_not_null(kn_max(x234(), 0, false, NULL)); /* indices are optional */
    kn_scope_end();
}

Test(reduce, max_ties_pick_the_first)
{
    kn_scope_begin();
    kn_tensor *t = kn_from_floats((float[]){2, 5, 5, 1, 5}, KN_SHAPE(5));
    kn_tensor *index = NULL;
    KN_ASSERT_CLOSE(kn_max(t, 0, false, &index), {5});
    ASSERT_INDICES(index, {1});
    KN_ASSERT_CLOSE(kn_min(t, 0, false, &index), {1});
    ASSERT_INDICES(index, {3});
    /* long rows go through the vectorised path: still the first of the ties */
    float data[100];
    for (int i = 0; i < 100; i++) data[i] = (float)(i % 7);
    kn_tensor *l = kn_from_floats(data, KN_SHAPE(100));
    KN_ASSERT_CLOSE(kn_max(l, 0, false, &index), {6});
    ASSERT_INDICES(index, {6});
    ASSERT_INDICES(kn_argmax(l, 0, false), {6});
    kn_scope_end();
}

Test(reduce, max_propagates_nan)
{
    kn_scope_begin();
    float data[40];
    for (int i = 0; i < 40; i++) data[i] = (float)i;
    data[17] = NAN;
    data[30] = NAN;
    kn_tensor *t = kn_from_floats(data, KN_SHAPE(40));
    kn_tensor *index = NULL;
    cr_assert(isnan(kn_item(kn_max(t, 0, false, &index))));
    ASSERT_INDICES(index, {17});
    cr_assert(isnan(kn_item(kn_min(t, 0, false, &index))));
    ASSERT_INDICES(index, {17});
    cr_assert(isnan(kn_item(kn_max_all(t))));
    /* an infinity is not a NaN */
    data[17] = INFINITY;
    data[30] = 3;
    ASSERT_INDICES(kn_argmax(kn_from_floats(data, KN_SHAPE(40)), 0, false), {17});
    /* column (inner > 1) path */
    kn_tensor *c = kn_from_floats((float[]){1, 2, NAN, 0, 3, 4}, KN_SHAPE(3, 2));
    ASSERT_INDICES(kn_argmax(c, 0, false), {1, 2});
    kn_scope_end();
}

Test(reduce, argmax_and_all)
{
    kn_scope_begin();
    kn_tensor *a = kn_argmax(x234(), 2, false);
    ASSERT_SHAPE(a, 2, 3);
    ASSERT_INDICES(a, {1, 2, 3, 3, 0, 1});
    ASSERT_SHAPE(kn_argmax(x234(), 2, true), 2, 3, 1);
    KN_ASSERT_CLOSE(kn_max_all(x234()), {2.9956300258636475f});
    KN_ASSERT_CLOSE(kn_min_all(x234()), {-2.9954850673675537f});
    ASSERT_SHAPE(kn_max_all(x234()), );
    kn_scope_end();
}

Test(reduce, transposed_input)
{
    kn_scope_begin();
    kn_tensor *t = kn_test_transposed(x234(), 0, 2); /* [4, 3, 2] */
    cr_assert(!kn_is_contiguous(t));
    KN_ASSERT_CLOSE(kn_sum(t, KN_DIMS(0), false),
                    {2.37388014793396f, -2.461989641189575f, 1.9479211568832397f,
                     -1.758353590965271f, -0.5486130714416504f, 0.8143541812896729f});
    KN_ASSERT_CLOSE(kn_sum(t, KN_DIMS(1, 2), false), {0.26347851753234863f, 0.6187856197357178f,
                                                      0.06757009029388428f, -0.5826356410980225f});
    KN_ASSERT_CLOSE(kn_sum(t, KN_DIMS(0, 2), false),
                    {-0.08810949325561523f, 0.18956756591796875f, 0.26574110984802246f});
    kn_tensor *index = NULL;
    KN_ASSERT_CLOSE(kn_max(t, 1, false, &index),
                    {0.0f, 2.7863857746124268f, 2.890674591064453f, 2.4819836616516113f,
                     2.9956300258636475f, -0.9598199129104614f, 2.9603159427642822f,
                     1.816619634628296f});
    ASSERT_INDICES(index, {0, 1, 0, 2, 1, 2, 2, 0});
    KN_ASSERT_CLOSE(kn_var(t, KN_DIMS(2), 1, false),
                    {0.05224882438778877f, 14.779123306274414f, 11.381959915161133f,
                     16.120107650756836f, 0.47168248891830444f, 11.366599082946777f,
                     5.648169040679932f, 17.739212036132812f, 2.4649128913879395f,
                     7.526882171630859f, 2.453949451446533f, 17.735782623291016f});
    KN_ASSERT_CLOSE(kn_max_all(t), {2.9956300258636475f});
    KN_ASSERT_CLOSE(kn_sum_all(t), {0.36719924211502075f});
    kn_scope_end();
}

Test(reduce, empty_dims)
{
    kn_scope_begin();
    kn_tensor *e = kn_zeros(KN_SHAPE(0, 3), KN_FLOAT32);
    kn_tensor *s = kn_sum(e, KN_DIMS(0), false);
    ASSERT_SHAPE(s, 3);
    KN_ASSERT_CLOSE(s, {0, 0, 0});
    kn_tensor *m = kn_mean(e, KN_DIMS(0), false);
    KN_ASSERT_CLOSE(m, {NAN, NAN, NAN});
    ASSERT_SHAPE(kn_sum(e, KN_DIMS(1), false), 0);
    KN_ASSERT_CLOSE(kn_sum_all(e), {0});
    ASSERT_SHAPE(kn_max(e, 1, false, NULL), 0);
    cr_assert_null(kn_max(e, 0, false, NULL));
    cr_assert(strstr(kn_last_error(), "max") && strstr(kn_last_error(), "[0, 3]"), "%s",
              kn_last_error());
    cr_assert_null(kn_max_all(e));
    cr_assert(strstr(kn_last_error(), "[0, 3]"), "%s", kn_last_error());
    kn_scope_end();
}

/* ---- accuracy and layouts of large reductions ------------------------------------------- */

static double exact_sum(const float *x, int64_t n, int64_t stride)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i * stride];
    return s;
}

Test(reduce, large_sum_accuracy)
{
    kn_scope_begin();
    kn_tensor *x = kn_test_uniform(KN_SHAPE(1000000), 0.0, 1.0, 7);
    const float *d = kn_data_f32(x);
    double want = exact_sum(d, 1000000, 1);
    float got = kn_item(kn_sum_all(x));
    cr_assert(fabs(got - want) <= 1e-6 * fabs(want), "%.9g vs %.9g", got, want);
    float mean = kn_item(kn_mean_all(x));
    cr_assert(fabs(mean - want / 1e6) <= 1e-6 * fabs(want / 1e6), "%.9g", mean);
    /* the same data as long rows (split), as long columns (tiles) and transposed */
    kn_tensor *rows = kn_from_floats(d, KN_SHAPE(4, 250000));
    kn_tensor *rs = kn_sum(rows, KN_DIMS(1), false);
    for (int r = 0; r < 4; r++) {
        double w = exact_sum(d + r * 250000, 250000, 1);
        cr_assert(fabs(kn_data_f32(rs)[r] - w) <= 1e-6 * fabs(w), "row %d", r);
    }
    kn_tensor *cols = kn_from_floats(d, KN_SHAPE(250000, 4));
    kn_tensor *cs = kn_sum(cols, KN_DIMS(0), false);
    for (int c = 0; c < 4; c++) {
        double w = exact_sum(d + c, 250000, 4);
        cr_assert(fabs(kn_data_f32(cs)[c] - w) <= 1e-6 * fabs(w), "col %d", c);
    }
    kn_tensor *ts = kn_sum(kn_test_transposed(cols, 0, 1), KN_DIMS(1), false);
    for (int c = 0; c < 4; c++) cr_assert_eq(kn_data_f32(ts)[c], kn_data_f32(cs)[c]);
    /* a variance with a large mean needs the two passes */
    kn_tensor *shifted = kn_add_scalar(x, 1000.0);
    float v = kn_item(kn_var(shifted, NULL, 0, 1, false));
    cr_assert(fabs(v - 1.0 / 12.0) < 2e-3, "var %.7g", v);
    kn_scope_end();
}

Test(reduce, long_row_max_is_split_and_keeps_first_occurrence)
{
    kn_scope_begin();
    int64_t n = 300000;
    float *d = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) d[i] = (float)(i % 1000) / 1000.f;
    d[150001] = 2.f; /* ties in two chunks: the first wins */
    d[290000] = 2.f;
    kn_tensor *x = kn_from_floats(d, KN_SHAPE(300000));
    kn_tensor *index = NULL;
    KN_ASSERT_CLOSE(kn_max(x, 0, false, &index), {2.f});
    ASSERT_INDICES(index, {150001});
    KN_ASSERT_CLOSE(kn_max_all(x), {2.f});
    KN_ASSERT_CLOSE(kn_min(x, 0, false, &index), {0.f});
    ASSERT_INDICES(index, {0});
    d[200000] = NAN; /* a later NaN beats an earlier maximum */
    kn_tensor *y = kn_from_floats(d, KN_SHAPE(2, 150000));
    ASSERT_INDICES(kn_argmax(kn_from_floats(d, KN_SHAPE(300000)), 0, false), {200000});
    ASSERT_INDICES(kn_argmax(y, 1, false), {999, 50000});
    free(d);
    kn_scope_end();
}

Test(reduce, wide_tiles_and_many_rows)
{
    kn_scope_begin();
    /* inner > TILE and an outer dim: [3, 100, 700] over dim 1 */
    kn_tensor *x = kn_test_uniform(KN_SHAPE(3, 100, 700), -1.0, 1.0, 3);
    const float *d = kn_data_f32(x);
    kn_tensor *s = kn_sum(x, KN_DIMS(1), false);
    kn_tensor *index = NULL;
    kn_tensor *m = kn_max(x, 1, false, &index);
    for (int o = 0; o < 3; o++)
        for (int i = 0; i < 700; i += 37) {
            const float *col = d + o * 70000 + i;
            double w = exact_sum(col, 100, 700);
            cr_assert(fabs(kn_data_f32(s)[o * 700 + i] - w) < 1e-5, "(%d, %d)", o, i);
            int64_t best = 0;
            for (int r = 1; r < 100; r++)
                if (col[r * 700] > col[best * 700]) best = r;
            cr_assert_eq(kn_data_i64(index)[o * 700 + i], best);
            cr_assert_eq(kn_data_f32(m)[o * 700 + i], col[best * 700]);
        }
    kn_scope_end();
}

Test(reduce, same_bits_for_any_thread_count)
{
    kn_scope_begin();
    int threads = kn_cpu_get_num_threads();
    kn_tensor *x = kn_test_uniform(KN_SHAPE(1000, 1000), -1.0, 1.0, 5);
    float got[2][4];
    for (int t = 0; t < 2; t++) {
        kn_cpu_set_num_threads(t + 1);
        got[t][0] = kn_item(kn_sum_all(x));
        got[t][1] = kn_item(kn_sum_all(kn_sum(x, KN_DIMS(0), false)));
        got[t][2] = kn_item(kn_sum_all(kn_var(x, KN_DIMS(1), 1, false)));
        got[t][3] = kn_item(kn_sum_all(kn_softmax(x, 1)));
    }
    kn_cpu_set_num_threads(threads);
    for (int k = 0; k < 4; k++) cr_assert_eq(got[0][k], got[1][k], "result %d", k);
    kn_scope_end();
}

/* ---- gradients ------------------------------------------------------------------------ */

typedef struct reduce_args {
    int dims[KN_MAX_DIMS];
    int ndims;
    int correction;
    bool keepdim;
} reduce_args;

static kn_tensor *sum_fn(kn_tensor **in, void *c)
{
    reduce_args *a = c;
    return kn_sum(in[0], a->dims, a->ndims, a->keepdim);
}
static kn_tensor *mean_fn(kn_tensor **in, void *c)
{
    reduce_args *a = c;
    return kn_mean(in[0], a->dims, a->ndims, a->keepdim);
}
static kn_tensor *var_fn(kn_tensor **in, void *c)
{
    reduce_args *a = c;
    return kn_var(in[0], a->dims, a->ndims, a->correction, a->keepdim);
}
static kn_tensor *max_fn(kn_tensor **in, void *c)
{
    reduce_args *a = c;
    return kn_max(in[0], a->dims[0], a->keepdim, NULL);
}
static kn_tensor *min_fn(kn_tensor **in, void *c)
{
    reduce_args *a = c;
    return kn_min(in[0], a->dims[0], a->keepdim, NULL);
}
static kn_tensor *max_all_fn(kn_tensor **in, void *c)
{
    (void)c;
    return kn_max_all(in[0]);
}
static kn_tensor *min_all_fn(kn_tensor **in, void *c)
{
    (void)c;
    return kn_min_all(in[0]);
}
static kn_tensor *sum_all_fn(kn_tensor **in, void *c)
{
    (void)c;
    return kn_sum_all(in[0]);
}
static kn_tensor *mean_all_fn(kn_tensor **in, void *c)
{
    (void)c;
    return kn_mean_all(in[0]);
}

static const reduce_args CASES[] = {
    {{1}, 1, 1, false}, {{0, 2}, 2, 0, true},  {{-1}, 1, 1, true},
    {{0}, 0, 1, false}, {{2, 0}, 2, 1, false},
};

Test(reduce, gradcheck_sum_mean_var)
{
    for (size_t k = 0; k < sizeof CASES / sizeof *CASES; k++) {
        kn_scope_begin();
        kn_tensor *x = kn_set_requires_grad(x234(), true);
        reduce_args a = CASES[k];
        KN_ASSERT_GRADCHECK(sum_fn, &x, 1, &a);
        KN_ASSERT_GRADCHECK(mean_fn, &x, 1, &a);
        KN_ASSERT_GRADCHECK(var_fn, &x, 1, &a);
        kn_scope_end();
    }
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(x234(), true);
    KN_ASSERT_GRADCHECK(sum_all_fn, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(mean_all_fn, &x, 1, NULL);
    kn_scope_end();
}

Test(reduce, gradcheck_max_min)
{
    for (int dim = -3; dim < 3; dim++)
        for (int keep = 0; keep < 2; keep++) {
            kn_scope_begin();
            kn_tensor *x = kn_set_requires_grad(x234(), true);
            reduce_args a = {{dim}, 1, 0, keep};
            KN_ASSERT_GRADCHECK(max_fn, &x, 1, &a);
            KN_ASSERT_GRADCHECK(min_fn, &x, 1, &a);
            kn_scope_end();
        }
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(x234(), true);
    KN_ASSERT_GRADCHECK(max_all_fn, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(min_all_fn, &x, 1, NULL);
    kn_scope_end();
}

Test(reduce, backward_values)
{
    kn_scope_begin();
    /* max along a dim: the gradient goes to the first maximum only */
    kn_tensor *x = kn_from_floats((float[]){1, 3, 3, 2}, KN_SHAPE(1, 4));
    kn_set_requires_grad(x, true);
    cr_assert_eq(kn_backward(kn_sum_all(kn_max(x, 1, false, NULL)), NULL, false), KN_OK, "%s",
                 kn_last_error());
    KN_ASSERT_CLOSE(x->grad, {0, 1, 0, 0});
    /* max_all: shared evenly by the ties, as torch.max() */
    kn_tensor *y = kn_set_requires_grad(kn_from_floats((float[]){1, 3, 3, 2}, KN_SHAPE(4)), true);
    cr_assert_eq(kn_backward(kn_max_all(y), NULL, false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(y->grad, {0, 0.5f, 0.5f, 0});
    kn_tensor *z = kn_from_floats((float[]){1, NAN, 3, NAN}, KN_SHAPE(4));
    kn_set_requires_grad(z, true);
    cr_assert_eq(kn_backward(kn_max_all(z), NULL, false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(z->grad, {0, 0.5f, 0, 0.5f});
    /* mean: 1/n everywhere; sum keepdim with an explicit gradient */
    kn_tensor *m = kn_set_requires_grad(kn_ones(KN_SHAPE(2, 2), KN_FLOAT32), true);
    cr_assert_eq(kn_backward(kn_mean_all(m), NULL, false), KN_OK);
    KN_ASSERT_CLOSE(m->grad, {0.25f, 0.25f, 0.25f, 0.25f});
    kn_tensor *s = kn_set_requires_grad(kn_ones(KN_SHAPE(2, 3), KN_FLOAT32), true);
    kn_tensor *g = kn_from_floats((float[]){1, 2}, KN_SHAPE(2, 1));
    cr_assert_eq(kn_backward(kn_sum(s, KN_DIMS(1), true), g, false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(s->grad, {1, 1, 1, 2, 2, 2});
    /* a transposed leaf that requires grad: its gradient has its own shape [4, 6] */
    kn_tensor *t = kn_test_sin24(KN_SHAPE(6, 4));
    kn_tensor *tt = kn_set_requires_grad(kn_test_transposed(t, 0, 1), true);
    kn_tensor *w = kn_from_floats((float[]){1, 2, 3, 4}, KN_SHAPE(4));
    cr_assert_eq(kn_backward(kn_sum_all(kn_mul(kn_sum(tt, KN_DIMS(1), false), w)), NULL, false),
                 KN_OK, "%s", kn_last_error());
    ASSERT_SHAPE(tt->grad, 4, 6);
    float want[24];
    for (int i = 0; i < 24; i++) want[i] = (float)(i / 6 + 1);
    char msg[256];
    cr_assert(kn_test_close(tt->grad, want, 24, 0, 0, msg, sizeof msg), "%s", msg);
    /* argmax and indices carry no gradient */
    cr_assert(!kn_argmax(t, 0, false)->requires_grad);
    kn_scope_end();
}

/* ---- errors ----------------------------------------------------------------------------- */

Test(reduce, errors)
{
    kn_scope_begin();
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3), KN_FLOAT32);
    cr_assert_null(kn_sum(x, KN_DIMS(2), false));
    cr_assert(strstr(kn_last_error(), "sum") && strstr(kn_last_error(), "dim 2") &&
                  strstr(kn_last_error(), "rank 2"),
              "%s", kn_last_error());
    cr_assert_eq(kn_last_status(), KN_ERR_DIM);
    cr_assert_null(kn_mean(x, KN_DIMS(-3), false));
    cr_assert(strstr(kn_last_error(), "mean") && strstr(kn_last_error(), "dim -3"), "%s",
              kn_last_error());
    cr_assert_null(kn_var(x, KN_DIMS(1, -1), 1, false));
    cr_assert(strstr(kn_last_error(), "appears multiple times"), "%s", kn_last_error());
    cr_assert_null(kn_max(x, 5, false, NULL));
    cr_assert(strstr(kn_last_error(), "max") && strstr(kn_last_error(), "dim 5"), "%s",
              kn_last_error());
    kn_tensor *index = kn_test_scalar(1); /* overwritten with NULL on error */
    cr_assert_null(kn_min(x, -4, false, &index));
    cr_assert_null(index);
    cr_assert_null(kn_argmax(x, 2, false));
    kn_tensor *i = kn_arange(4);
    cr_assert_null(kn_sum_all(i));
    cr_assert(strstr(kn_last_error(), "int64") && strstr(kn_last_error(), "[4]"), "%s",
              kn_last_error());
    /* NULL inputs pass through silently, keeping the first error */
    kn_clear_error();
    cr_assert_null(kn_sum(NULL, KN_DIMS(0), false));
    cr_assert_null(kn_max_all(NULL));
    cr_assert_null(kn_argmax(NULL, 0, false));
    kn_scope_end();
}

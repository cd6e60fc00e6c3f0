/*
 * test_golden_shape.c — view and join ops against PyTorch fixtures (tests/golden/data):
 * view, reshape (view and copy), permute, transpose, narrow, slice with a step, select,
 * expand, squeeze, unsqueeze, flatten, contiguous, cat, stack, index_select, gather;
 * forward values (through the views' strides) and gradients.
 */
#include "golden/golden_case.h"

/* out = expr(a) for the fixture's leaf a; views copy values, so exact comparisons. */
#define VIEW_TEST(name, expr)                                                                      \
    Test(golden_view, name)                                                                        \
    {                                                                                              \
        GOLDEN_BEGIN(#name);                                                                       \
        kn_tensor *a = golden_leaf(g, "a");                                                        \
        kn_tensor *out = (expr);                                                                   \
        golden_check(g, out, "out", GOLDEN_EXACT);                                                 \
        golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);                                         \
        GOLDEN_END();                                                                              \
    }

VIEW_TEST(view, kn_view(a, KN_SHAPE(3, 4)))           /* [2, 6] */
VIEW_TEST(reshape, kn_reshape(a, KN_SHAPE(4, -1)))    /* [2, 3, 4] */
VIEW_TEST(permute, kn_permute(a, KN_DIMS(2, 0, 1)))   /* [2, 3, 4] */
VIEW_TEST(transpose, kn_transpose(a, 0, 2))           /* [2, 3, 4] */
VIEW_TEST(narrow, kn_narrow(a, 1, 1, 3))              /* [4, 5] */
VIEW_TEST(slice_step, kn_slice(a, 0, 1, 6, 2))        /* [7, 3]: a[1:6:2] */
VIEW_TEST(slice_step_dim1, kn_slice(a, 1, 0, 9, 3))   /* [2, 9]: a[:, 0:9:3] */
VIEW_TEST(select, kn_select(a, 1, 2))                 /* [2, 3, 4] */
VIEW_TEST(select_neg, kn_select(a, 0, -1))            /* [3, 4] */
VIEW_TEST(expand, kn_expand(a, KN_SHAPE(2, 3, 4)))    /* [3, 1] */
VIEW_TEST(expand_keep, kn_expand(a, KN_SHAPE(3, -1))) /* [1, 4] */
VIEW_TEST(squeeze, kn_squeeze(a, 1))                  /* [2, 1, 3] */
VIEW_TEST(squeeze_all, kn_squeeze_all(a))             /* [1, 3, 1, 2] */
VIEW_TEST(unsqueeze, kn_unsqueeze(a, 1))              /* [2, 3] */
VIEW_TEST(unsqueeze_neg, kn_unsqueeze(a, -1))         /* [2, 3] */
VIEW_TEST(flatten, kn_flatten(a, 1, -1))              /* [2, 3, 4] */
VIEW_TEST(flatten_all, kn_flatten(a, 0, -1))          /* [2, 3, 4] */

/* A transposed input cannot be viewed as 1-D: reshape must copy (PyTorch: base.t()). */
Test(golden_view, reshape_noncontig)
{
    GOLDEN_BEGIN("reshape_noncontig");
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *out = kn_reshape(kn_transpose(base, 0, 1), KN_SHAPE(12));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

Test(golden_view, contiguous)
{
    GOLDEN_BEGIN("contiguous");
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *out = kn_contiguous(kn_transpose(base, 0, 1));
    cr_assert(out && kn_is_contiguous(out), "%s", kn_last_error());
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

/* An expanded (stride 0) tensor cannot be viewed as 1-D either: base [3, 1] -> [3, 4]. */
Test(golden_view, reshape_expanded)
{
    GOLDEN_BEGIN("reshape_expanded");
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *out = kn_reshape(kn_expand(base, KN_SHAPE(3, 4)), KN_SHAPE(12));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

/* ---- joins ------------------------------------------------------------------------------ */

static void join_case(const char *name, kn_tensor *(*op)(kn_tensor *const *, int, int), int count,
                      int dim)
{
    GOLDEN_BEGIN(name);
    kn_tensor *a = golden_leaf(g, "a"), *b = golden_leaf(g, "b");
    kn_tensor *c = count > 2 ? golden_leaf(g, "c") : NULL;
    kn_tensor *parts[3] = {a, b, c};
    kn_tensor *out = op(parts, count, dim);
    golden_check(g, out, "out", GOLDEN_EXACT);
    if (count > 2)
        golden_backward(g, out, GOLDEN_TOL, "a", a, "b", b, "c", c, NULL);
    else
        golden_backward(g, out, GOLDEN_TOL, "a", a, "b", b, NULL);
    GOLDEN_END();
}

Test(golden_join, cat_dim0)
{
    join_case("cat_dim0", kn_cat, 3, 0);
} /* [2|1|3, 3] */
Test(golden_join, cat_dim1)
{
    join_case("cat_dim1", kn_cat, 3, 1);
} /* [2, 3|1|2] */
Test(golden_join, stack_dim0)
{
    join_case("stack_dim0", kn_stack, 3, 0);
} /* 3 x [2, 3] */
Test(golden_join, stack_dim2)
{
    join_case("stack_dim2", kn_stack, 2, 2);
} /* 2 x [2, 3] */

Test(golden_join, cat_negdim)
{
    join_case("cat_negdim", kn_cat, 2, -1);
} /* [2, 3|2] */

/* First part is abase [3, 2].t(): a strided input to the copy. */
static void join_noncontig_case(const char *name, kn_tensor *(*op)(kn_tensor *const *, int, int),
                                int dim)
{
    GOLDEN_BEGIN(name);
    kn_tensor *abase = golden_leaf(g, "abase"), *b = golden_leaf(g, "b");
    kn_tensor *parts[2] = {kn_transpose(abase, 0, 1), b};
    kn_tensor *out = op(parts, 2, dim);
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "abase", abase, "b", b, NULL);
    GOLDEN_END();
}

Test(golden_join, cat_noncontig)
{
    join_noncontig_case("cat_noncontig", kn_cat, 0);
}
Test(golden_join, stack_noncontig)
{
    join_noncontig_case("stack_noncontig", kn_stack, 1);
}

/* ---- indexing (repeated indices: gradients accumulate) --------------------------------- */

Test(golden_index, index_select)
{
    GOLDEN_BEGIN("index_select"); /* a [4, 3], index [3, 0, 3, 1] on dim 0 */
    kn_tensor *a = golden_leaf(g, "a");
    kn_tensor *out = kn_index_select(a, 0, golden_input(g, "index"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);
    GOLDEN_END();
}

Test(golden_index, index_select_dim1)
{
    GOLDEN_BEGIN("index_select_dim1"); /* a [2, 5], index [4, 4, 2] on dim 1 */
    kn_tensor *a = golden_leaf(g, "a");
    kn_tensor *out = kn_index_select(a, 1, golden_input(g, "index"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);
    GOLDEN_END();
}

Test(golden_index, gather)
{
    GOLDEN_BEGIN("gather"); /* a [3, 4], index [3, 2] on dim 1 */
    kn_tensor *a = golden_leaf(g, "a");
    kn_tensor *out = kn_gather(a, 1, golden_input(g, "index"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);
    GOLDEN_END();
}

Test(golden_index, gather_dim0)
{
    GOLDEN_BEGIN("gather_dim0"); /* a [3, 4], index [2, 4] on dim 0 */
    kn_tensor *a = golden_leaf(g, "a");
    kn_tensor *out = kn_gather(a, 0, golden_input(g, "index"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);
    GOLDEN_END();
}

Test(golden_index, index_select_noncontig)
{
    GOLDEN_BEGIN("index_select_noncontig"); /* base [3, 4].t(), index [1, 3, 1] on dim 0 */
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *out = kn_index_select(kn_transpose(base, 0, 1), 0, golden_input(g, "index"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

Test(golden_index, gather_noncontig)
{
    GOLDEN_BEGIN("gather_noncontig"); /* base [4, 3].t(), index [3, 2] on dim 1 */
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *out = kn_gather(kn_transpose(base, 0, 1), 1, golden_input(g, "index"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

/*
 * test_shape.c — the view and indexing ops: values against PyTorch, storage sharing,
 * non-contiguous inputs, int64 inputs, gradients by finite differences, and the error
 * messages for bad shapes, dims and indices.
 */
#include "kn_test.h"

#include <criterion/criterion.h>
#include <string.h>

#define EXPECT(t, ...)                                                                             \
    do {                                                                                           \
        const float want_[] = {__VA_ARGS__};                                                       \
        char msg_[512];                                                                            \
        cr_assert_not_null((t), "%s", kn_last_error());                                            \
        cr_assert_eq(kn_numel(t), (int64_t)(sizeof want_ / sizeof *want_), "numel %lld",           \
                     (long long)kn_numel(t));                                                      \
        cr_assert(kn_test_close((t), want_, (int64_t)(sizeof want_ / sizeof *want_), 0, 0, msg_,   \
                                sizeof msg_),                                                      \
                  "%s", msg_);                                                                     \
    } while (0)

#define EXPECT_SHAPE(t, ...)                                                                       \
    do {                                                                                           \
        const int64_t want_[] = {__VA_ARGS__};                                                     \
        int n_ = (int)(sizeof want_ / sizeof *want_);                                              \
        cr_assert_not_null((t), "%s", kn_last_error());                                            \
        cr_assert_eq((t)->ndim, n_, "rank %d, expected %d", (t)->ndim, n_);                        \
        for (int i_ = 0; i_ < n_; i_++) cr_assert_eq((t)->shape[i_], want_[i_]);                   \
    } while (0)

#define EXPECT_ERROR(expr, status, ...)                                                            \
    do {                                                                                           \
        kn_clear_error();                                                                          \
        cr_assert_null((expr));                                                                    \
        cr_assert_eq(kn_last_status(), (status), "status %d: %s", kn_last_status(),                \
                     kn_last_error());                                                             \
        const char *parts_[] = {__VA_ARGS__};                                                      \
        for (size_t i_ = 0; i_ < sizeof parts_ / sizeof *parts_; i_++)                             \
            cr_assert(strstr(kn_last_error(), parts_[i_]), "'%s' not in: %s", parts_[i_],          \
                      kn_last_error());                                                            \
    } while (0)

/* Ends the test's scope and checks that everything it made, graphs included, is freed
 * (each Criterion test runs in its own process, so the count starts at zero). */
static void end_test(void)
{
    kn_scope_end();
    cr_assert_eq(kn_scope_depth(), 0);
    cr_assert_eq(kn_get_alloc_stats().bytes_in_use, 0, "%llu bytes still in use",
                 (unsigned long long)kn_get_alloc_stats().bytes_in_use);
}

/* 0, 1, 2, ... as float32 of the given shape. */
static kn_tensor *arangef(const int64_t *shape, int ndim)
{
    kn_tensor *t = kn_empty(shape, ndim, KN_FLOAT32);
    float *p = kn_data_f32(t);
    for (int64_t i = 0; i < kn_numel(t); i++) p[i] = (float)i;
    return t;
}

/* A 0-dim tensor (kn_scalar passes NULL to memcpy, which UBSan flags; see report). */
static kn_tensor *scalar(float value)
{
    return kn_squeeze_all(kn_from_floats(&value, KN_SHAPE(1)));
}

static kn_tensor *leaf(const int64_t *shape, int ndim, uint64_t seed)
{
    return kn_set_requires_grad(kn_test_uniform(shape, ndim, -1, 1, seed), true);
}

/* ---- view / reshape -------------------------------------------------------------- */

Test(shape, view_shares_storage)
{
    kn_scope_begin();
    kn_tensor *x = arangef(KN_SHAPE(2, 3));
    kn_tensor *v = kn_view(x, KN_SHAPE(3, -1));
    EXPECT_SHAPE(v, 3, 2);
    cr_assert_eq(v->storage, x->storage);
    kn_data_f32(v)[3] = 100; /* element [1, 1] of v is element [1, 0] of x */
    cr_assert_float_eq(kn_get(x, (int64_t[]){1, 0}), 100.f, 0);
    kn_data_f32(x)[0] = -1;
    cr_assert_float_eq(kn_get(v, (int64_t[]){0, 0}), -1.f, 0);
    end_test();
}

Test(shape, view_of_non_viewable_strides_is_an_error)
{
    kn_scope_begin();
    kn_tensor *t = kn_transpose(arangef(KN_SHAPE(2, 3)), 0, 1);
    EXPECT_ERROR(kn_view(t, KN_SHAPE(6)), KN_ERR_SHAPE, "view", "[6]", "[3, 2]", "kn_reshape");
    /* splitting a dim that is itself contiguous is fine even on a transposed tensor */
    kn_tensor *u = kn_view(kn_transpose(arangef(KN_SHAPE(4, 3)), 0, 1), KN_SHAPE(3, 2, 2));
    EXPECT_SHAPE(u, 3, 2, 2);
    EXPECT(u, 0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11);
    end_test();
}

Test(shape, reshape_views_or_copies)
{
    kn_scope_begin();
    kn_tensor *x = arangef(KN_SHAPE(2, 3));
    kn_tensor *r = kn_reshape(x, KN_SHAPE(-1));
    EXPECT_SHAPE(r, 6);
    cr_assert_eq(r->storage, x->storage);
    kn_tensor *c = kn_reshape(kn_transpose(x, 0, 1), KN_SHAPE(6));
    cr_assert_neq(c->storage, x->storage);
    EXPECT(c, 0, 3, 1, 4, 2, 5);
    EXPECT_SHAPE(kn_reshape(x, KN_SHAPE(1, 3, 1, 2)), 1, 3, 1, 2);
    EXPECT_SHAPE(kn_reshape(scalar(2), KN_SHAPE(1, 1)), 1, 1);
    EXPECT_SHAPE(kn_reshape(kn_zeros(KN_SHAPE(0, 3), KN_FLOAT32), KN_SHAPE(3, 0, 5)), 3, 0, 5);
    end_test();
}

Test(shape, reshape_errors)
{
    kn_scope_begin();
    kn_tensor *x = arangef(KN_SHAPE(2, 3));
    EXPECT_ERROR(kn_reshape(x, KN_SHAPE(4, 2)), KN_ERR_SHAPE, "reshape", "[4, 2]", "[2, 3]", "6");
    EXPECT_ERROR(kn_reshape(x, KN_SHAPE(-1, -1)), KN_ERR_SHAPE, "only one dimension");
    EXPECT_ERROR(kn_reshape(x, KN_SHAPE(4, -1)), KN_ERR_SHAPE, "[4, -1]", "[2, 3]");
    EXPECT_ERROR(kn_reshape(x, KN_SHAPE(-2, 3)), KN_ERR_SHAPE, "-2");
    EXPECT_ERROR(kn_reshape(kn_zeros(KN_SHAPE(0, 3), KN_FLOAT32), KN_SHAPE(0, -1)), KN_ERR_SHAPE,
                 "[0, -1]");
    end_test();
}

Test(shape, flatten)
{
    kn_scope_begin();
    kn_tensor *x = arangef(KN_SHAPE(2, 3, 4));
    EXPECT_SHAPE(kn_flatten(x, 1, 2), 2, 12);
    EXPECT_SHAPE(kn_flatten(x, 0, -1), 24);
    EXPECT_SHAPE(kn_flatten(x, 0, 1), 6, 4);
    EXPECT_SHAPE(kn_flatten(x, 1, 1), 2, 3, 4);
    EXPECT_SHAPE(kn_flatten(scalar(1), 0, -1), 1);
    EXPECT_ERROR(kn_flatten(x, 2, 1), KN_ERR_DIM, "start_dim");
    EXPECT_ERROR(kn_flatten(x, 0, 3), KN_ERR_DIM, "dim 3", "rank 3");
    end_test();
}

/* ---- permute / transpose ------------------------------------------------------------ */

Test(shape, permute_and_transpose)
{
    kn_scope_begin();
    kn_tensor *x = arangef(KN_SHAPE(2, 3, 4));
    kn_tensor *p = kn_permute(x, KN_DIMS(2, 0, -2));
    EXPECT_SHAPE(p, 4, 2, 3);
    cr_assert_eq(p->storage, x->storage);
    EXPECT(p, 0, 4, 8, 12, 16, 20, 1, 5, 9, 13, 17, 21, 2, 6, 10, 14, 18, 22, 3, 7, 11, 15, 19, 23);
    kn_tensor *t = kn_transpose(kn_from_floats((float[]){1, 2, 3, 4, 5, 6}, KN_SHAPE(2, 3)), -1, 0);
    EXPECT_SHAPE(t, 3, 2);
    EXPECT(t, 1, 4, 2, 5, 3, 6);
    cr_assert(!kn_is_contiguous(t));
    EXPECT_ERROR(kn_permute(x, KN_DIMS(0, 0, 1)), KN_ERR_DIM, "repeated");
    EXPECT_ERROR(kn_permute(x, KN_DIMS(0, 1)), KN_ERR_DIM, "[2, 3, 4]");
    EXPECT_ERROR(kn_transpose(x, 0, 3), KN_ERR_DIM, "transpose", "dim 3");
    end_test();
}

/* ---- narrow / slice / select ---------------------------------------------------------- */

Test(shape, narrow_slice_select_values)
{
    kn_scope_begin();
    kn_tensor *y = arangef(KN_SHAPE(3, 4));
    EXPECT(kn_narrow(y, 1, -2, 2), 2, 3, 6, 7, 10, 11);
    EXPECT(kn_narrow(y, 0, 1, 0));
    EXPECT(kn_slice(y, 1, -3, 100, 2), 1, 3, 5, 7, 9, 11);
    EXPECT(kn_slice(y, 0, -5, 2, 1), 0, 1, 2, 3, 4, 5, 6, 7);
    EXPECT_SHAPE(kn_slice(y, 1, 3, 1, 1), 3, 0);
    EXPECT(kn_slice(y, 0, 0, INT64_MAX, 2), 0, 1, 2, 3, 8, 9, 10, 11);
    kn_tensor *s = kn_select(y, 1, -1);
    EXPECT_SHAPE(s, 3);
    EXPECT(s, 3, 7, 11);
    EXPECT_SHAPE(kn_select(kn_select(y, 0, 2), 0, 1), );
    cr_assert_float_eq(kn_item(kn_select(kn_select(y, 0, 2), 0, 1)), 9.f, 0);
    /* views: writing through the slice shows in the base */
    kn_tensor *v = kn_slice(y, 1, 1, 4, 2);
    cr_assert_eq(v->storage, y->storage);
    kn_fill_(v, -1);
    EXPECT(y, 0, -1, 2, -1, 4, -1, 6, -1, 8, -1, 10, -1);
    end_test();
}

Test(shape, narrow_slice_select_errors)
{
    kn_scope_begin();
    kn_tensor *y = arangef(KN_SHAPE(3, 4));
    EXPECT_ERROR(kn_narrow(y, 1, 2, 3), KN_ERR_VALUE, "narrow", "start (2) + length (3)", "[3, 4]");
    EXPECT_ERROR(kn_narrow(y, 2, 0, 1), KN_ERR_DIM, "narrow", "dim 2");
    EXPECT_ERROR(kn_slice(y, 0, 0, 2, 0), KN_ERR_VALUE, "step");
    EXPECT_ERROR(kn_select(y, 0, 3), KN_ERR_VALUE, "select", "index 3", "[3, 4]");
    EXPECT_ERROR(kn_select(y, 0, -4), KN_ERR_VALUE, "index -4");
    EXPECT_ERROR(kn_select(scalar(1), 0, 0), KN_ERR_DIM, "0-dim");
    end_test();
}

/* ---- expand / squeeze / unsqueeze / contiguous ---------------------------------------- */

Test(shape, expand)
{
    kn_scope_begin();
    kn_tensor *x = kn_from_floats((float[]){1, 2, 3}, KN_SHAPE(3, 1));
    kn_tensor *e = kn_expand(x, KN_SHAPE(2, -1, 2));
    EXPECT_SHAPE(e, 2, 3, 2);
    cr_assert_eq(e->strides[0], 0);
    cr_assert_eq(e->strides[2], 0);
    cr_assert_eq(e->storage, x->storage);
    EXPECT(e, 1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3);
    EXPECT_ERROR(kn_expand(x, KN_SHAPE(4, 2)), KN_ERR_SHAPE, "expand", "[4, 2]", "[3, 1]");
    EXPECT_ERROR(kn_expand(x, KN_SHAPE(-1, 3, 1)), KN_ERR_SHAPE, "leading");
    EXPECT_ERROR(kn_expand(x, KN_SHAPE(3)), KN_ERR_SHAPE, "[3, 1]");
    end_test();
}

Test(shape, squeeze_unsqueeze)
{
    kn_scope_begin();
    kn_tensor *x = arangef(KN_SHAPE(1, 3, 1, 2));
    EXPECT_SHAPE(kn_squeeze(x, 0), 3, 1, 2);
    EXPECT_SHAPE(kn_squeeze(x, -2), 1, 3, 2);
    EXPECT_SHAPE(kn_squeeze(x, 1), 1, 3, 1, 2); /* not size 1: unchanged, as in torch */
    EXPECT_SHAPE(kn_squeeze_all(x), 3, 2);
    EXPECT_SHAPE(kn_squeeze_all(kn_ones(KN_SHAPE(1, 1), KN_FLOAT32)), );
    EXPECT_SHAPE(kn_squeeze(scalar(1), 0), );
    kn_tensor *t = kn_transpose(arangef(KN_SHAPE(2, 3)), 0, 1); /* [3, 2], strides [1, 3] */
    kn_tensor *u = kn_unsqueeze(t, 1);
    EXPECT_SHAPE(u, 3, 1, 2);
    cr_assert_eq(u->strides[1], 6);
    kn_tensor *w = kn_unsqueeze(t, -1);
    EXPECT_SHAPE(w, 3, 2, 1);
    cr_assert_eq(w->strides[2], 1);
    EXPECT(w, 0, 3, 1, 4, 2, 5);
    EXPECT_SHAPE(kn_unsqueeze(scalar(1), 0), 1);
    EXPECT_ERROR(kn_unsqueeze(t, 3), KN_ERR_DIM, "unsqueeze");
    EXPECT_ERROR(kn_squeeze(t, 2), KN_ERR_DIM, "squeeze");
    end_test();
}

Test(shape, contiguous)
{
    kn_scope_begin();
    kn_tensor *x = arangef(KN_SHAPE(2, 3));
    kn_tensor *same = kn_contiguous(x);
    cr_assert_eq(same, x);
    cr_assert_eq(x->refcount, 2);
    kn_tensor *c = kn_contiguous(kn_transpose(x, 0, 1));
    cr_assert(kn_is_contiguous(c));
    cr_assert_neq(c->storage, x->storage);
    EXPECT(c, 0, 3, 1, 4, 2, 5);
    end_test();
}

/* Large enough for the tiled transposing copy, with ragged tiles and several dims. */
Test(shape, contiguous_of_large_transposes)
{
    kn_scope_begin();
    kn_tensor *x = arangef(KN_SHAPE(3, 45, 70));
    kn_tensor *p = kn_permute(x, KN_DIMS(2, 0, 1)); /* [70, 3, 45] */
    kn_tensor *c = kn_contiguous(p);
    cr_assert(kn_is_contiguous(c));
    const float *d = kn_data_f32(c);
    for (int64_t i = 0; i < 70; i++)
        for (int64_t j = 0; j < 3; j++)
            for (int64_t k = 0; k < 45; k++)
                cr_assert_eq(d[(i * 3 + j) * 45 + k], (float)(j * 45 * 70 + k * 70 + i));
    kn_tensor *l = kn_reshape(kn_transpose(kn_reshape(kn_arange(64 * 50), KN_SHAPE(64, 50)), 0, 1),
                              KN_SHAPE(-1));
    const int64_t *q = kn_data_i64(l);
    for (int64_t i = 0; i < 50; i++)
        for (int64_t j = 0; j < 64; j++) cr_assert_eq(q[i * 64 + j], j * 50 + i);
    end_test();
}

/* ---- cat / stack -------------------------------------------------------------------- */

Test(shape, cat_and_stack)
{
    kn_scope_begin();
    kn_tensor *a = arangef(KN_SHAPE(2, 3));
    kn_tensor *b = kn_add_scalar(arangef(KN_SHAPE(2, 2)), 6);
    kn_tensor *c = kn_cat((kn_tensor *[]){a, b}, 2, -1);
    EXPECT_SHAPE(c, 2, 5);
    EXPECT(c, 0, 1, 2, 6, 7, 3, 4, 5, 8, 9);
    kn_tensor *d = kn_cat((kn_tensor *[]){a, kn_transpose(arangef(KN_SHAPE(3, 2)), 0, 1)}, 2, 0);
    EXPECT_SHAPE(d, 4, 3);
    EXPECT(d, 0, 1, 2, 3, 4, 5, 0, 2, 4, 1, 3, 5);
    kn_tensor *s = kn_stack((kn_tensor *[]){a, kn_mul_scalar(a, 10)}, 2, -1);
    EXPECT_SHAPE(s, 2, 3, 2);
    EXPECT(s, 0, 0, 1, 10, 2, 20, 3, 30, 4, 40, 5, 50);
    EXPECT_SHAPE(kn_stack((kn_tensor *[]){a, a, a}, 3, 0), 3, 2, 3);
    EXPECT_SHAPE(kn_stack((kn_tensor *[]){scalar(1), scalar(2)}, 2, 0), 2);
    end_test();
}

Test(shape, cat_and_stack_errors)
{
    kn_scope_begin();
    kn_tensor *a = arangef(KN_SHAPE(2, 3));
    kn_tensor *b = kn_zeros(KN_SHAPE(3, 3), KN_FLOAT32);
    EXPECT_ERROR(kn_cat((kn_tensor *[]){a, b}, 2, 1), KN_ERR_SHAPE, "cat", "[2, 3]", "[3, 3]");
    EXPECT_ERROR(kn_cat((kn_tensor *[]){a, kn_zeros(KN_SHAPE(6), KN_FLOAT32)}, 2, 0), KN_ERR_SHAPE,
                 "[2, 3]", "[6]");
    EXPECT_ERROR(kn_cat((kn_tensor *[]){a, kn_arange(3)}, 2, 0), KN_ERR_DTYPE, "int64");
    EXPECT_ERROR(kn_cat((kn_tensor *[]){a}, 0, 0), KN_ERR_VALUE, "non-empty");
    EXPECT_ERROR(kn_cat((kn_tensor *[]){a, b}, 2, 2), KN_ERR_DIM, "cat", "dim 2");
    EXPECT_ERROR(kn_stack((kn_tensor *[]){a, b}, 2, 0), KN_ERR_SHAPE, "stack", "[2, 3]", "[3, 3]");
    end_test();
}

/* ---- index_select / gather / embedding ------------------------------------------------ */

Test(shape, index_select)
{
    kn_scope_begin();
    kn_tensor *y = arangef(KN_SHAPE(3, 4));
    kn_tensor *idx = kn_from_int64s((int64_t[]){3, 0, 3}, KN_SHAPE(3));
    kn_tensor *r = kn_index_select(y, 1, idx);
    EXPECT_SHAPE(r, 3, 3);
    EXPECT(r, 3, 0, 3, 7, 4, 7, 11, 8, 11);
    EXPECT(kn_index_select(y, 0, kn_from_int64s((int64_t[]){2, 0}, KN_SHAPE(2))), 8, 9, 10, 11, 0,
           1, 2, 3);
    /* non-contiguous input and index */
    kn_tensor *idx2 = kn_slice(kn_from_int64s((int64_t[]){1, 9, 0, 9}, KN_SHAPE(4)), 0, 0, 4, 2);
    EXPECT(kn_index_select(kn_transpose(y, 0, 1), 1, idx2), 4, 0, 5, 1, 6, 2, 7, 3);
    EXPECT_ERROR(kn_index_select(y, 1, kn_from_int64s((int64_t[]){0, 4}, KN_SHAPE(2))),
                 KN_ERR_VALUE, "index_select", "index 4", "size 4");
    EXPECT_ERROR(kn_index_select(y, 0, kn_from_int64s((int64_t[]){-1}, KN_SHAPE(1))), KN_ERR_VALUE,
                 "index -1");
    EXPECT_ERROR(kn_index_select(y, 0, kn_from_floats((float[]){0}, KN_SHAPE(1))), KN_ERR_DTYPE,
                 "int64");
    EXPECT_ERROR(kn_index_select(y, 0, kn_zeros(KN_SHAPE(1, 1), KN_INT64)), KN_ERR_SHAPE, "1-D");
    EXPECT_ERROR(kn_index_select(y, 2, idx), KN_ERR_DIM, "dim 2");
    end_test();
}

Test(shape, gather)
{
    kn_scope_begin();
    kn_tensor *y = arangef(KN_SHAPE(3, 4));
    kn_tensor *i0 = kn_from_int64s((int64_t[]){0, 2, 2, 1, 1, 1, 0, 0, 2, 0, 1, 2}, KN_SHAPE(3, 4));
    EXPECT(kn_gather(y, 0, i0), 0, 9, 10, 7, 4, 5, 2, 3, 8, 1, 6, 11);
    kn_tensor *i1 = kn_from_int64s((int64_t[]){3, 0, 1, 1, 2, 3}, KN_SHAPE(3, 2));
    kn_tensor *g = kn_gather(y, 1, i1);
    EXPECT_SHAPE(g, 3, 2);
    EXPECT(g, 3, 0, 5, 5, 10, 11);
    kn_tensor *i2 = kn_from_int64s((int64_t[]){2, 0, 1, 1, 0, 2, 2, 2}, KN_SHAPE(4, 2));
    EXPECT(kn_gather(kn_transpose(y, 0, 1), 1, i2), 8, 0, 5, 5, 2, 10, 11, 11);
    EXPECT_ERROR(kn_gather(y, 1, kn_from_int64s((int64_t[]){4}, KN_SHAPE(1, 1))), KN_ERR_VALUE,
                 "gather", "index 4", "size 4");
    EXPECT_ERROR(kn_gather(y, 1, kn_zeros(KN_SHAPE(4, 1), KN_INT64)), KN_ERR_SHAPE, "[4, 1]",
                 "[3, 4]");
    EXPECT_ERROR(kn_gather(y, 1, kn_zeros(KN_SHAPE(3), KN_INT64)), KN_ERR_SHAPE, "rank");
    end_test();
}

Test(shape, embedding)
{
    kn_scope_begin();
    kn_tensor *w = kn_set_requires_grad(arangef(KN_SHAPE(3, 4)), true);
    kn_tensor *idx = kn_from_int64s((int64_t[]){2, 0, 2, 1}, KN_SHAPE(2, 2));
    kn_tensor *e = kn_embedding(w, idx);
    EXPECT_SHAPE(e, 2, 2, 4);
    EXPECT(e, 8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7);
    cr_assert_eq(kn_backward(e, kn_ones_like(e), false), KN_OK, "%s", kn_last_error());
    EXPECT(w->grad, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2);
    EXPECT_ERROR(kn_embedding(w, kn_from_int64s((int64_t[]){3}, KN_SHAPE(1))), KN_ERR_VALUE,
                 "embedding", "index 3", "[3, 4]");
    EXPECT_ERROR(kn_embedding(w, kn_from_floats((float[]){0}, KN_SHAPE(1))), KN_ERR_DTYPE, "int64");
    EXPECT_ERROR(kn_embedding(kn_zeros(KN_SHAPE(3), KN_FLOAT32), idx), KN_ERR_SHAPE, "2-D");
    end_test();
}

/* ---- int64 ---------------------------------------------------------------------------- */

Test(shape, int64_tensors)
{
    kn_scope_begin();
    kn_tensor *x = kn_reshape(kn_arange(6), KN_SHAPE(2, 3));
    cr_assert_eq(x->dtype, KN_INT64);
    kn_tensor *t = kn_transpose(x, 0, 1);
    EXPECT(kn_reshape(t, KN_SHAPE(6)), 0, 3, 1, 4, 2, 5);
    EXPECT(kn_contiguous(t), 0, 3, 1, 4, 2, 5);
    EXPECT(kn_slice(x, 1, 0, 3, 2), 0, 2, 3, 5);
    EXPECT(kn_expand(kn_select(x, 0, 1), KN_SHAPE(2, 3)), 3, 4, 5, 3, 4, 5);
    EXPECT(kn_squeeze_all(kn_unsqueeze(kn_narrow(x, 1, 2, 1), 0)), 2, 5);
    kn_tensor *c = kn_cat((kn_tensor *[]){x, t}, 2, 0);
    cr_assert_null(c); /* [2, 3] and [3, 2] */
    c = kn_cat((kn_tensor *[]){x, x}, 2, 1);
    cr_assert_eq(c->dtype, KN_INT64);
    EXPECT(c, 0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5);
    EXPECT(kn_stack((kn_tensor *[]){x, x}, 2, 2), 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5);
    EXPECT(kn_index_select(x, 1, kn_from_int64s((int64_t[]){2, 2, 0}, KN_SHAPE(3))), 2, 2, 0, 5, 5,
           3);
    EXPECT(kn_gather(x, 0, kn_from_int64s((int64_t[]){1, 0, 1}, KN_SHAPE(1, 3))), 3, 1, 5);
    end_test();
}

Test(shape, null_inputs_return_null)
{
    kn_scope_begin();
    cr_assert_null(kn_view(NULL, KN_SHAPE(1)));
    cr_assert_null(kn_reshape(NULL, KN_SHAPE(1)));
    cr_assert_null(kn_permute(NULL, KN_DIMS(0)));
    cr_assert_null(kn_transpose(NULL, 0, 1));
    cr_assert_null(kn_select(NULL, 0, 0));
    cr_assert_null(kn_expand(NULL, KN_SHAPE(1)));
    cr_assert_null(kn_contiguous(NULL));
    cr_assert_null(kn_cat((kn_tensor *[]){NULL}, 1, 0));
    cr_assert_null(kn_gather(NULL, 0, NULL));
    cr_assert_null(kn_embedding(NULL, NULL));
    end_test();
}

/* ---- gradients --------------------------------------------------------------------- */

static kn_tensor *f_view(kn_tensor **x, void *c)
{
    (void)c;
    return kn_view(x[0], KN_SHAPE(4, -1));
}
static kn_tensor *f_reshape_t(kn_tensor **x, void *c)
{
    (void)c;
    return kn_reshape(kn_transpose(x[0], 0, 1), KN_SHAPE(2, 6)); /* copies */
}
static kn_tensor *f_flatten(kn_tensor **x, void *c)
{
    (void)c;
    return kn_flatten(x[0], 0, 1);
}
static kn_tensor *f_permute(kn_tensor **x, void *c)
{
    (void)c;
    return kn_permute(x[0], KN_DIMS(1, 2, 0));
}
static kn_tensor *f_narrow(kn_tensor **x, void *c)
{
    (void)c;
    return kn_narrow(x[0], 1, 1, 2);
}
static kn_tensor *f_slice(kn_tensor **x, void *c)
{
    (void)c;
    return kn_slice(x[0], -1, -3, 4, 2);
}
static kn_tensor *f_select(kn_tensor **x, void *c)
{
    (void)c;
    return kn_select(x[0], 1, -1);
}
static kn_tensor *f_expand(kn_tensor **x, void *c)
{
    (void)c;
    return kn_expand(kn_select(x[0], 2, 0), KN_SHAPE(3, 2, 3));
}
static kn_tensor *f_squeeze(kn_tensor **x, void *c)
{
    (void)c;
    return kn_unsqueeze(kn_squeeze_all(kn_narrow(x[0], 2, 1, 1)), 0);
}
static kn_tensor *f_contiguous(kn_tensor **x, void *c)
{
    (void)c;
    return kn_contiguous(kn_permute(x[0], KN_DIMS(2, 0, 1)));
}
static kn_tensor *f_cat(kn_tensor **x, void *c)
{
    (void)c;
    return kn_cat((kn_tensor *[]){x[0], kn_transpose(x[1], 0, 1), x[0]}, 3, 1);
}
static kn_tensor *f_stack(kn_tensor **x, void *c)
{
    (void)c;
    return kn_stack((kn_tensor *[]){x[0], kn_transpose(x[1], 0, 1)}, 2, 1);
}
static kn_tensor *f_index_select(kn_tensor **x, void *c)
{
    return kn_index_select(kn_transpose(x[0], 0, 1), 1, c);
}
static kn_tensor *f_gather(kn_tensor **x, void *c)
{
    return kn_gather(x[0], 1, c);
}
static kn_tensor *f_gather_t(kn_tensor **x, void *c)
{
    return kn_gather(kn_transpose(x[0], 0, 1), 0, c);
}
static kn_tensor *f_embedding(kn_tensor **x, void *c)
{
    return kn_embedding(x[0], c);
}

Test(shape, gradients_of_views)
{
    kn_scope_begin();
    kn_tensor *x = leaf(KN_SHAPE(2, 3, 2), 1);
    KN_ASSERT_GRADCHECK(f_view, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(f_flatten, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(f_permute, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(f_narrow, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(f_select, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(f_expand, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(f_squeeze, &x, 1, NULL);
    KN_ASSERT_GRADCHECK(f_contiguous, &x, 1, NULL);
    kn_tensor *m = leaf(KN_SHAPE(6, 2), 2);
    KN_ASSERT_GRADCHECK(f_reshape_t, &m, 1, NULL);
    kn_tensor *s = leaf(KN_SHAPE(3, 5), 3);
    KN_ASSERT_GRADCHECK(f_slice, &s, 1, NULL);
    end_test();
}

Test(shape, gradients_of_cat_and_stack)
{
    kn_scope_begin();
    kn_tensor *x[2] = {leaf(KN_SHAPE(2, 3), 4), leaf(KN_SHAPE(3, 2), 5)};
    KN_ASSERT_GRADCHECK(f_cat, x, 2, NULL);
    kn_tensor *y[2] = {leaf(KN_SHAPE(2, 3), 6), leaf(KN_SHAPE(3, 2), 7)};
    KN_ASSERT_GRADCHECK(f_stack, y, 2, NULL);
    /* only the second input requires grad */
    kn_tensor *z[2] = {kn_test_uniform(KN_SHAPE(2, 3), -1, 1, 8), leaf(KN_SHAPE(3, 2), 9)};
    KN_ASSERT_GRADCHECK(f_cat, z, 2, NULL);
    end_test();
}

Test(shape, gradients_of_indexing)
{
    kn_scope_begin();
    kn_tensor *x = leaf(KN_SHAPE(4, 3), 10);
    kn_tensor *idx = kn_from_int64s((int64_t[]){3, 0, 3, 1, 3}, KN_SHAPE(5));
    KN_ASSERT_GRADCHECK(f_index_select, &x, 1, idx);
    kn_tensor *gi = kn_from_int64s((int64_t[]){2, 2, 0, 1, 1, 1, 0, 0, 2}, KN_SHAPE(3, 3));
    kn_tensor *g = leaf(KN_SHAPE(3, 4), 11);
    KN_ASSERT_GRADCHECK(f_gather, &g, 1, gi);
    kn_tensor *gt = kn_from_int64s((int64_t[]){3, 0, 0, 3, 3, 1}, KN_SHAPE(2, 3));
    KN_ASSERT_GRADCHECK(f_gather_t, &g, 1, gt);
    kn_tensor *w = leaf(KN_SHAPE(5, 3), 12);
    kn_tensor *ei = kn_from_int64s((int64_t[]){4, 0, 4, 2, 4, 1}, KN_SHAPE(3, 2));
    KN_ASSERT_GRADCHECK(f_embedding, &w, 1, ei);
    end_test();
}

Test(shape, chained_views_backward_without_reductions)
{
    kn_scope_begin();
    /* y = x.t().narrow(0, 1, 2).reshape(4); dy/dx with an explicit upstream gradient */
    kn_tensor *x = kn_set_requires_grad(arangef(KN_SHAPE(2, 3)), true);
    kn_tensor *y = kn_reshape(kn_narrow(kn_transpose(x, 0, 1), 0, 1, 2), KN_SHAPE(4));
    EXPECT(y, 1, 4, 2, 5);
    cr_assert_eq(kn_backward(y, kn_from_floats((float[]){1, 2, 3, 4}, KN_SHAPE(4)), false), KN_OK,
                 "%s", kn_last_error());
    EXPECT(x->grad, 0, 1, 3, 0, 2, 4);
    end_test();
}

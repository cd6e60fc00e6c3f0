/*
 * test_data.c — datasets (validation, normalisation, split), epoch order and batching.
 * The file parsers are tested in test_data_formats.c.
 */
#include "kn_data.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT_ERROR_HAS(text)                                                                     \
    cr_assert(strstr(kn_last_error(), (text)), "error '%s' should mention '%s'", kn_last_error(),  \
              (text))

/* Inputs [n, 2, 2] with sample i filled by i + element/10; labels i % classes. */
static kn_dataset *toy(int64_t n, int64_t classes)
{
    float *x = malloc(sizeof *x * (size_t)(n * 4));
    int64_t *y = malloc(sizeof *y * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < 4; j++) x[i * 4 + j] = (float)i + (float)j / 10;
        y[i] = i % classes;
    }
    kn_dataset *ds =
        kn_dataset_new(kn_from_floats(x, KN_SHAPE(n, 2, 2)), kn_from_int64s(y, KN_SHAPE(n)));
    free(x);
    free(y);
    cr_assert_not_null(ds, "%s", kn_last_error());
    return ds;
}

/* ---- datasets ----------------------------------------------------------------------- */

Test(dataset, new_validates_inputs_and_labels)
{
    kn_scope_begin();
    kn_tensor *x = kn_zeros(KN_SHAPE(3, 2), KN_FLOAT32);
    kn_tensor *y = kn_from_int64s((int64_t[]){0, 4, 1}, KN_SHAPE(3));
    kn_dataset *ds = kn_dataset_new(x, y);
    cr_assert_not_null(ds, "%s", kn_last_error());
    cr_assert_eq(ds->count, 3);
    cr_assert_eq(ds->num_classes, 5);
    kn_dataset_free(ds);

    cr_assert_null(kn_dataset_new(kn_zeros(KN_SHAPE(3), KN_FLOAT32), y));
    ASSERT_ERROR_HAS("at least 2 dims, got [3]");
    cr_assert_null(kn_dataset_new(x, kn_zeros(KN_SHAPE(3), KN_FLOAT32)));
    ASSERT_ERROR_HAS("labels must be int64, got float32");
    cr_assert_null(kn_dataset_new(x, kn_zeros(NULL, 0, KN_INT64)));
    ASSERT_ERROR_HAS("labels must be [N] (a class per sample) or [N, T, ...] (a class per "
                     "position), got []");
    cr_assert_null(kn_dataset_new(x, kn_zeros(KN_SHAPE(4), KN_INT64)));
    ASSERT_ERROR_HAS("inputs have 3 samples [3, 2] but labels have 4");
    cr_assert_null(kn_dataset_new(x, kn_from_int64s((int64_t[]){0, -1, 1}, KN_SHAPE(3))));
    ASSERT_ERROR_HAS("labels must be >= 0, sample 1 has -1");
    cr_assert_null(kn_dataset_new(x, NULL));
    kn_tensor *bad = kn_from_floats((float[]){0, 1, 2, 3, NAN, 5}, KN_SHAPE(3, 2));
    cr_assert_null(kn_dataset_new(bad, y));
    ASSERT_ERROR_HAS("inputs must be finite, sample 2 has nan at element 0");
    bad = kn_from_floats((float[]){0, -INFINITY, 2, 3, 4, 5}, KN_SHAPE(3, 2));
    cr_assert_null(kn_dataset_new(bad, y));
    ASSERT_ERROR_HAS("sample 0 has -inf at element 1");
    kn_scope_end();
}

Test(dataset, strided_inputs_are_made_contiguous)
{
    kn_scope_begin();
    kn_tensor *x = kn_from_floats((float[]){1, 2, 3, 4, 5, 6}, KN_SHAPE(2, 3));
    kn_tensor *xt = kn_transpose(x, 0, 1); /* [3, 2]: rows (1,4) (2,5) (3,6) */
    kn_dataset *ds = kn_dataset_new(xt, kn_from_int64s((int64_t[]){0, 1, 2}, KN_SHAPE(3)));
    cr_assert_not_null(ds, "%s", kn_last_error());
    kn_tensor *bx, *by;
    cr_assert_eq(
        kn_dataset_batch(ds, kn_from_int64s((int64_t[]){2, 0}, KN_SHAPE(2)), 0, 2, &bx, &by), KN_OK,
        "%s", kn_last_error());
    KN_ASSERT_CLOSE(bx, {3, 6, 1, 4});
    kn_dataset_free(ds);
    kn_scope_end();
}

Test(dataset, normalize_scales_then_standardises_per_channel)
{
    kn_scope_begin();
    /* [2, 2 channels, 2]: x * 0.5 then (x - mean[c]) / std[c] */
    kn_tensor *x = kn_from_floats((float[]){2, 4, 6, 8, 10, 12, 14, 16}, KN_SHAPE(2, 2, 2));
    kn_dataset *ds = kn_dataset_new(x, kn_zeros(KN_SHAPE(2), KN_INT64));
    cr_assert_eq(kn_dataset_normalize(ds, 0.5, (double[]){1, 2}, (double[]){2, 4}, 2), KN_OK, "%s",
                 kn_last_error());
    KN_ASSERT_CLOSE(ds->inputs, {0, 0.5f, 0.25f, 0.5f, 2, 2.5f, 1.25f, 1.5f});
    cr_assert_neq(kn_dataset_normalize(ds, 1, (double[]){0, 0, 0}, (double[]){1, 1, 1}, 3), KN_OK);
    ASSERT_ERROR_HAS("3 channels of mean/std but inputs [2, 2, 2] have 2 in dim 1");
    cr_assert_neq(kn_dataset_normalize(ds, 1, (double[]){0, 0}, (double[]){1, 0}, 2), KN_OK);
    ASSERT_ERROR_HAS("std[1] must be > 0, got 0");
    cr_assert_neq(kn_dataset_normalize(ds, NAN, NULL, NULL, 0), KN_OK);
    ASSERT_ERROR_HAS("scale must be finite");
    kn_dataset_free(ds);

    /* one channel over [N, H, W] images: Fashion-MNIST's 1/255 then (x - 0.2860) / 0.3530,
     * in float32 as torch computes (x * (1/255) - 0.2860) / 0.3530 */
    x = kn_from_floats((float[]){0, 255, 128, 64}, KN_SHAPE(1, 2, 2));
    ds = kn_dataset_new(x, kn_zeros(KN_SHAPE(1), KN_INT64));
    cr_assert_eq(kn_dataset_normalize(ds, 1.0 / 255, (double[]){0.2860}, (double[]){0.3530}, 1),
                 KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(ds->inputs, {-0.8101983666f, 2.022662878f, 0.6117870211f, -0.09920568764f});
    kn_dataset_free(ds);
    kn_scope_end();
}

Test(dataset, split_is_seeded_disjoint_and_complete)
{
    kn_scope_begin();
    kn_dataset *ds = toy(10, 10); /* label i identifies sample i */
    kn_dataset *train, *val;
    cr_assert_eq(kn_dataset_split(ds, 0.3, 7, &train, &val), KN_OK, "%s", kn_last_error());
    cr_assert_eq(train->count, 7);
    cr_assert_eq(val->count, 3);
    cr_assert_eq(train->num_classes, 10);
    cr_assert_eq(val->num_classes, 10);
    int seen[10] = {0};
    for (int64_t i = 0; i < train->count; i++) seen[kn_data_i64(train->labels)[i]]++;
    for (int64_t i = 0; i < val->count; i++) seen[kn_data_i64(val->labels)[i]]++;
    for (int i = 0; i < 10; i++) cr_assert_eq(seen[i], 1, "sample %d seen %d times", i, seen[i]);
    /* inputs travel with their labels, in the original order */
    for (int64_t i = 0; i < val->count; i++) {
        int64_t id = kn_data_i64(val->labels)[i];
        cr_assert_eq(kn_data_f32(val->inputs)[i * 4 + 3], (float)id + 0.3f);
        if (i) cr_assert_gt(id, kn_data_i64(val->labels)[i - 1]);
    }
    /* same seed, same split; another seed, another split */
    kn_dataset *train2, *val2;
    cr_assert_eq(kn_dataset_split(ds, 0.3, 7, &train2, &val2), KN_OK);
    cr_assert_eq(memcmp(kn_data_i64(val->labels), kn_data_i64(val2->labels), 3 * 8), 0);
    kn_dataset_free(train2);
    kn_dataset_free(val2);
    bool differs = false;
    for (uint64_t seed = 8; seed < 12 && !differs; seed++) {
        cr_assert_eq(kn_dataset_split(ds, 0.3, seed, &train2, &val2), KN_OK);
        differs = memcmp(kn_data_i64(val->labels), kn_data_i64(val2->labels), 3 * 8) != 0;
        kn_dataset_free(train2);
        kn_dataset_free(val2);
    }
    cr_assert(differs);
    kn_dataset_free(train);
    kn_dataset_free(val);

    cr_assert_neq(kn_dataset_split(ds, 0.01, 7, &train, &val), KN_OK);
    ASSERT_ERROR_HAS("leaves 0 for validation");
    cr_assert_null(train);
    cr_assert_neq(kn_dataset_split(ds, 1.0, 7, &train, &val), KN_OK);
    ASSERT_ERROR_HAS("fraction must be in (0, 1), got 1");
    kn_dataset_free(ds);

    ds = toy(60000, 10);
    cr_assert_eq(kn_dataset_split(ds, 0.1, 0, &train, &val), KN_OK);
    cr_assert_eq(val->count, 6000);
    cr_assert_eq(train->count, 54000);
    kn_dataset_free(train);
    kn_dataset_free(val);
    kn_dataset_free(ds);
    kn_scope_end();
}

/* ---- epoch order and batches ---------------------------------------------------------- */

Test(epoch, order_is_a_pure_function_of_seed_and_epoch)
{
    kn_scope_begin();
    int64_t n = 1000;
    kn_tensor *a = kn_epoch_order(n, 42, 3, true);
    kn_tensor *b = kn_epoch_order(n, 42, 3, true);
    kn_tensor *c = kn_epoch_order(n, 42, 4, true);
    kn_tensor *d = kn_epoch_order(n, 43, 3, true);
    cr_assert_not_null(a, "%s", kn_last_error());
    cr_assert_eq(memcmp(kn_data_i64(a), kn_data_i64(b), (size_t)n * 8), 0);
    cr_assert_neq(memcmp(kn_data_i64(a), kn_data_i64(c), (size_t)n * 8), 0);
    cr_assert_neq(memcmp(kn_data_i64(a), kn_data_i64(d), (size_t)n * 8), 0);
    /* (seed + 1, epoch) and (seed, epoch + 1) must not collide as a plain sum would */
    kn_tensor *e = kn_epoch_order(n, 43, 2, true);
    cr_assert_neq(memcmp(kn_data_i64(d), kn_data_i64(e), (size_t)n * 8), 0);
    /* a permutation that actually moves things */
    char *seen = calloc((size_t)n, 1);
    int64_t fixed = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = kn_data_i64(a)[i];
        cr_assert(v >= 0 && v < n && !seen[v]);
        seen[v] = 1;
        fixed += v == i;
    }
    free(seen);
    cr_assert_lt(fixed, 10);
    KN_ASSERT_CLOSE(kn_epoch_order(4, 42, 3, false), {0, 1, 2, 3});
    cr_assert_null(kn_epoch_order(4, 42, -1, true));
    kn_scope_end();
}

Test(batch, gathers_rows_in_order_with_a_short_last_batch)
{
    kn_scope_begin();
    kn_dataset *ds = toy(5, 3);
    kn_tensor *order = kn_from_int64s((int64_t[]){4, 0, 3, 1, 2}, KN_SHAPE(5));
    cr_assert_eq(kn_batches_per_epoch(5, 2, false), 3);
    cr_assert_eq(kn_batches_per_epoch(5, 2, true), 2);
    cr_assert_eq(kn_batches_per_epoch(4, 2, true), 2);
    kn_tensor *x, *y;
    cr_assert_eq(kn_dataset_batch(ds, order, 0, 2, &x, &y), KN_OK, "%s", kn_last_error());
    KN_ASSERT_SHAPE(x, KN_SHAPE(2, 2, 2));
    KN_ASSERT_CLOSE(x, {4, 4.1f, 4.2f, 4.3f, 0, 0.1f, 0.2f, 0.3f});
    KN_ASSERT_CLOSE(y, {1, 0});
    cr_assert_eq(kn_dataset_batch(ds, order, 2, 2, &x, &y), KN_OK, "%s", kn_last_error());
    KN_ASSERT_SHAPE(x, KN_SHAPE(1, 2, 2));
    KN_ASSERT_CLOSE(x, {2, 2.1f, 2.2f, 2.3f});
    KN_ASSERT_CLOSE(y, {2});
    /* a strided order (every other element of a longer one) */
    kn_tensor *strided = kn_slice(kn_from_int64s((int64_t[]){3, 9, 1, 9}, KN_SHAPE(4)), 0, 0, 4, 2);
    cr_assert_eq(kn_dataset_batch(ds, strided, 0, 8, &x, &y), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(y, {0, 1});

    cr_assert_neq(kn_dataset_batch(ds, order, 3, 2, &x, &y), KN_OK);
    ASSERT_ERROR_HAS("batch 3 is out of range: an order of 5 samples has 3 batches of 2");
    cr_assert_null(x);
    kn_tensor *bad = kn_from_int64s((int64_t[]){0, 5}, KN_SHAPE(2));
    cr_assert_neq(kn_dataset_batch(ds, bad, 0, 2, &x, &y), KN_OK);
    ASSERT_ERROR_HAS("order[1] = 5 is out of range for 5 samples");
    cr_assert_neq(kn_dataset_batch(ds, order, 0, 0, &x, &y), KN_OK);
    ASSERT_ERROR_HAS("batch_size must be > 0");
    kn_dataset_free(ds);
    kn_scope_end();
}

/* Speed is measured by bench/, never asserted here; this checks that an epoch of
 * batches visits every sample exactly once. */
Test(batch, an_epoch_of_batches_covers_every_sample_once)
{
    kn_scope_begin();
    int64_t n = 1000;
    kn_tensor *inputs = kn_empty(KN_SHAPE(n, 2), KN_FLOAT32);
    float *p = kn_data_f32(inputs);
    for (int64_t i = 0; i < n; i++) p[2 * i] = p[2 * i + 1] = (float)i;
    kn_dataset *ds = kn_dataset_new(inputs, kn_zeros(KN_SHAPE(n), KN_INT64));
    cr_assert_not_null(ds, "%s", kn_last_error());
    kn_tensor *order = kn_epoch_order(n, 1, 3, true);
    int64_t batches = kn_batches_per_epoch(n, 64, false);
    cr_assert_eq(batches, 16);
    static int seen[1000];
    memset(seen, 0, sizeof seen);
    for (int64_t b = 0; b < batches; b++) {
        kn_scope_begin();
        kn_tensor *x, *y;
        cr_assert_eq(kn_dataset_batch(ds, order, b, 64, &x, &y), KN_OK, "%s", kn_last_error());
        cr_assert_eq(x->shape[0], b + 1 < batches ? 64 : n - 64 * 15);
        const float *xp = kn_data_f32(x);
        for (int64_t i = 0; i < x->shape[0]; i++) {
            cr_assert_eq(xp[2 * i], xp[2 * i + 1]);
            seen[(int)xp[2 * i]]++;
        }
        kn_scope_end();
    }
    for (int64_t i = 0; i < n; i++)
        cr_assert_eq(seen[i], 1, "sample %ld seen %d times", (long)i, seen[i]);
    kn_dataset_free(ds);
    kn_scope_end();
}

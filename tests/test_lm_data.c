/*
 * test_lm_data.c — a language model's dataset (kn_dataset_windows): windows of one token
 * stream with the next tokens as labels, gathered into batches by the trainer's path
 * (kn_dataset_batch) as nanoGPT's get_batch builds x and y, no copy per window, strides
 * for validation, the refusals (too short, negative ids, split, to float), and a trainer
 * run on it that learns a repeating text.
 */
#include "kn_data.h"
#include "kn_nn.h"
#include "kn_train.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static kn_tensor *stream_of(int64_t n, int64_t period)
{
    int64_t *t = malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) t[i] = (i * 3) % period;
    kn_tensor *s = kn_from_int64s(t, (int64_t[]){n}, 1);
    free(t);
    return s;
}

Test(lm_data, windows_and_their_next_tokens)
{
    kn_scope_begin();
    kn_tensor *s = stream_of(20, 7);
    kn_dataset *ds = kn_dataset_windows(s, 4, 1);
    cr_assert_not_null(ds, "%s", kn_last_error());
    cr_assert_eq(ds->count, 16); /* offsets 0..15: the last window's labels end at token 19 */
    cr_assert_eq(ds->num_classes, 7);
    cr_assert_eq(ds->inputs->storage, s->storage, "the windows are views of the stream");
    kn_tensor *order = kn_from_int64s((int64_t[]){15, 0, 7}, (int64_t[]){3}, 1);
    kn_tensor *x = NULL, *y = NULL;
    cr_assert_eq(kn_dataset_batch(ds, order, 0, 3, &x, &y), KN_OK, "%s", kn_last_error());
    cr_assert_eq(x->shape[0], 3);
    cr_assert_eq(x->shape[1], 4);
    const int64_t *xs = kn_data_i64(x), *ys = kn_data_i64(y);
    int64_t offsets[3] = {15, 0, 7};
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 4; j++) {
            cr_assert_eq(xs[r * 4 + j], ((offsets[r] + j) * 3) % 7, "x[%d][%d]", r, j);
            cr_assert_eq(ys[r * 4 + j], ((offsets[r] + j + 1) * 3) % 7, "y[%d][%d]", r, j);
        }
    kn_dataset_free(ds);

    /* stride block_size: non-overlapping windows */
    ds = kn_dataset_windows(s, 4, 4);
    cr_assert_eq(ds->count, 4); /* offsets 0, 4, 8, 12 (16 would need token 20) */
    order = kn_epoch_order(ds->count, 0, 0, false);
    cr_assert_eq(kn_dataset_batch(ds, order, 1, 2, &x, &y), KN_OK);
    cr_assert_eq(kn_data_i64(x)[0], (8 * 3) % 7);
    cr_assert_eq(kn_data_i64(y)[7], (16 * 3) % 7);
    kn_dataset_free(ds);
    kn_scope_end();
}

Test(lm_data, refusals_name_what_is_wrong)
{
    kn_scope_begin();
    cr_assert_null(kn_dataset_windows(stream_of(4, 3), 4, 1));
    cr_assert_str_eq(kn_last_error(),
                     "dataset_windows: 4 tokens make no window of block_size 4 (a window needs "
                     "block_size + 1 tokens: its inputs and the next token of each)");
    cr_assert_null(
        kn_dataset_windows(kn_from_int64s((int64_t[]){1, -2, 3}, (int64_t[]){3}, 1), 1, 1));
    cr_assert_str_eq(kn_last_error(), "dataset_windows: token ids must be >= 0, token 1 is -2");
    cr_assert_null(kn_dataset_windows(kn_ones(KN_SHAPE(8), KN_FLOAT32), 2, 1));
    cr_assert(strstr(kn_last_error(), "expected a cpu int64 token stream [L], got float32 [8]"));
    cr_assert_null(kn_dataset_windows(stream_of(8, 3), 2, 0));
    kn_dataset *ds = kn_dataset_windows(stream_of(30, 5), 4, 1);
    kn_dataset *a = NULL, *b = NULL;
    cr_assert_neq(kn_dataset_split(ds, 0.1, 0, &a, &b), KN_OK);
    cr_assert(strstr(kn_last_error(), "split the stream instead"));
    cr_assert_neq(kn_dataset_to_dtype(ds, KN_FLOAT32), KN_OK);
    cr_assert(strstr(kn_last_error(), "they stay int64 token ids"));
    cr_assert_eq(kn_dataset_to_dtype(ds, KN_INT64), KN_OK);
    kn_dataset_free(ds);
    kn_scope_end();
}

/* The trainer draws shuffled windows and a small causal model learns a periodic text:
 * the loss falls far below log(vocab). */
Test(lm_data, a_trainer_learns_from_windows)
{
    kn_scope_begin();
    kn_dataset *train = kn_dataset_windows(stream_of(400, 7), 8, 1);
    kn_dataset *val = kn_dataset_windows(stream_of(100, 7), 8, 8);
    kn_module *m = kn_sequential_new();
    kn_sequential_append(m, kn_embedding_new(7, 16, NULL));
    kn_sequential_append(m, kn_positional_embedding_new(8, 16, NULL));
    kn_transformer_encoder_layer_options o = {.d_model = 16,
                                              .nhead = 2,
                                              .dim_feedforward = 32,
                                              .activation = KN_TRANSFORMER_GELU,
                                              .layer_norm_eps = 1e-5,
                                              .batch_first = true,
                                              .norm_first = true,
                                              .is_causal = true};
    kn_sequential_append(m, kn_transformer_encoder_layer_new(&o, NULL));
    kn_sequential_append(m, kn_linear_new(16, 7, false, NULL));
    kn_train_config c = kn_train_config_defaults();
    c.batch_size = 8;
    c.max_steps = 120;
    c.optimizer.lr = 1e-2;
    c.eval_every_steps = 0;
    kn_trainer *t = kn_trainer_new(m, &c);
    kn_train_summary summary;
    cr_assert_eq(kn_trainer_run(t, train, val, NULL, &summary), KN_OK, "%s", kn_last_error());
    cr_assert(summary.has_validation);
    cr_assert_lt(summary.final_validation.loss, 0.2, "val loss %g (log 7 = 1.95)",
                 summary.final_validation.loss);
    kn_trainer_free(t);
    kn_module_free(m);
    kn_dataset_free(train);
    kn_dataset_free(val);
    kn_scope_end();
}

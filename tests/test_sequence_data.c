/*
 * test_sequence_data.c — int64 token data end to end (issue 12): NPY integer inputs stay
 * int64, datasets and their batches and splits keep int64 inputs and labels per position
 * ([N, T], -100 ignored), inputs converted to what the model's first layer takes, labels
 * checked against the model's output, and models with an embedding trained by the
 * trainer and by `kiln train` — which failed at step 1 ("embedding: expected indices to
 * be an int64 tensor, got float32") before. kilnd's side is tests/test_server_sequence.c.
 */
#include "kapi.h"
#include "kn_data.h"
#include "kn_test.h"
#include "kn_test_tokens.h"
#include "kn_train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ASSERT_OK(call) cr_assert_eq((call), KN_OK, "%s", kn_last_error())
#define ASSERT_ERROR_HAS(text)                                                                     \
    cr_assert(strstr(kn_last_error(), (text)), "error '%s' should mention '%s'", kn_last_error(),  \
              (text))

#define VOCAB KN_TEST_VOCAB
#define SEQ KN_TEST_SEQ
static const char CLASSIFIER[] = KN_TEST_CLASSIFIER;
static const char TAGGER[] = KN_TEST_TAGGER;

/* ---- files --------------------------------------------------------------------------------- */

Test(sequence_data, npy_integer_inputs_stay_int64)
{
    kn_scope_begin();
    char path[512];
    snprintf(path, sizeof path, "%s/seq-data-%d.npy", KILN_BINARY_DIR, (int)getpid());
    int64_t big[4] = {0, 1, (int64_t)1 << 40, 16777217}; /* not exact in float32 */
    struct {
        const char *descr;
        const void *data;
        size_t bytes;
        kn_dtype want;
    } cases[] = {
        {"<i8", big, sizeof big, KN_INT64},
        {"<i4", (int32_t[]){-3, 7, 16777217, 2}, 16, KN_INT64},
        {"<u2", (uint16_t[]){0, 50256, 65535, 9}, 8, KN_INT64}, /* GPT-2 token ids fit */
        {"<i2", (int16_t[]){-1, 2, 3, 4}, 8, KN_INT64},
        {"|u1", (uint8_t[]){0, 128, 255, 7}, 4, KN_FLOAT32}, /* bytes are images */
        {"<f4", (float[]){0.5f, 1, 2, 3}, 16, KN_FLOAT32},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cr_assert(kn_test_write_npy(path, cases[i].descr, (int64_t[]){2, 2}, 2, cases[i].data),
                  "%s", path);
        kapi_errors errors = {0};
        size_t size;
        void *bytes = kapi_read_file(path, &size, &errors);
        kn_tensor *t = kn_parse_npy(bytes, size, false);
        free(bytes);
        cr_assert_not_null(t, "%s: %s", cases[i].descr, kn_last_error());
        cr_assert_eq(t->dtype, cases[i].want, "%s gives %s", cases[i].descr,
                     kn_dtype_name(t->dtype));
    }
    /* exact: 2^40 and 2^24 + 1 survive */
    cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){4}, 1, big), "%s", path);
    kapi_errors errors = {0};
    size_t size;
    void *bytes = kapi_read_file(path, &size, &errors);
    kn_tensor *t = kn_parse_npy(bytes, size, false);
    free(bytes);
    cr_assert_eq(kn_data_i64(t)[2], (int64_t)1 << 40);
    cr_assert_eq(kn_data_i64(t)[3], 16777217);
    /* labels per position: [N, T] */
    cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){2, 2}, 2, big), "%s", path);
    bytes = kapi_read_file(path, &size, &errors);
    t = kn_parse_npy(bytes, size, true);
    free(bytes);
    cr_assert_not_null(t, "%s", kn_last_error());
    KN_ASSERT_SHAPE(t, KN_SHAPE(2, 2));
    unlink(path);
    kn_scope_end();
}

/* ---- datasets -------------------------------------------------------------------------------- */

Test(sequence_data, datasets_keep_int64_inputs_and_labels_per_position)
{
    kn_scope_begin();
    enum { N = 10 };
    int64_t tokens[N * SEQ], labels[N * SEQ];
    kn_test_make_tokens(N, 3, tokens, NULL, labels);
    kn_dataset *ds = kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(N, SEQ)),
                                    kn_from_int64s(labels, KN_SHAPE(N, SEQ)));
    cr_assert_not_null(ds, "%s", kn_last_error());
    cr_assert_eq(ds->inputs->dtype, KN_INT64);
    int64_t max = 0;
    for (int i = 0; i < N * SEQ; i++) max = labels[i] > max ? labels[i] : max;
    cr_assert_eq(ds->num_classes, max + 1, "-100 is no class");
    /* a batch in a given order: rows of both, as int64 */
    kn_tensor *order = kn_from_int64s((int64_t[]){7, 2, 9, 0, 4, 1, 3, 5, 6, 8}, KN_SHAPE(N));
    kn_tensor *x, *y;
    ASSERT_OK(kn_dataset_batch(ds, order, 0, 3, &x, &y));
    KN_ASSERT_SHAPE(x, KN_SHAPE(3, SEQ));
    KN_ASSERT_SHAPE(y, KN_SHAPE(3, SEQ));
    cr_assert_eq(x->dtype, KN_INT64);
    const int64_t rows[3] = {7, 2, 9};
    for (int r = 0; r < 3; r++)
        for (int t = 0; t < SEQ; t++) {
            cr_assert_eq(kn_data_i64(x)[r * SEQ + t], tokens[rows[r] * SEQ + t]);
            cr_assert_eq(kn_data_i64(y)[r * SEQ + t], labels[rows[r] * SEQ + t]);
        }
    /* the split keeps dtypes, shapes and every sample once */
    kn_dataset *train, *val;
    ASSERT_OK(kn_dataset_split(ds, 0.3, 1, &train, &val));
    cr_assert_eq(train->count + val->count, N);
    cr_assert_eq(val->inputs->dtype, KN_INT64);
    KN_ASSERT_SHAPE(val->labels, KN_SHAPE(3, SEQ));
    int64_t seen = 0;
    for (int k = 0; k < 2; k++) {
        const kn_dataset *part = k ? val : train;
        for (int64_t i = 0; i < part->count; i++)
            for (int64_t j = 0; j < N; j++)
                seen += memcmp(kn_data_i64(part->inputs) + i * SEQ, tokens + j * SEQ,
                               sizeof(int64_t) * SEQ) == 0 &&
                        memcmp(kn_data_i64(part->labels) + i * SEQ, labels + j * SEQ,
                               sizeof(int64_t) * SEQ) == 0;
    }
    cr_assert_geq(seen, N, "every sample with its labels in one of the parts");
    kn_dataset_free(train);
    kn_dataset_free(val);
    /* normalising with nothing to do keeps the tokens; scaling makes floats */
    ASSERT_OK(kn_dataset_normalize(ds, 1.0, NULL, NULL, 0));
    cr_assert_eq(ds->inputs->dtype, KN_INT64);
    ASSERT_OK(kn_dataset_normalize(ds, 0.5, NULL, NULL, 0));
    cr_assert_eq(ds->inputs->dtype, KN_FLOAT32);
    cr_assert_float_eq(kn_data_f32(ds->inputs)[1], (float)tokens[1] * 0.5f, 0);
    kn_dataset_free(ds);
    kn_scope_end();
}

Test(sequence_data, labels_are_checked)
{
    kn_scope_begin();
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3), KN_INT64);
    cr_assert_null(kn_dataset_new(x, kn_from_int64s((int64_t[]){0, -100}, KN_SHAPE(2))));
    ASSERT_ERROR_HAS("labels must be >= 0, sample 1 has -100");
    cr_assert_null(
        kn_dataset_new(x, kn_from_int64s((int64_t[]){0, 1, 2, 3, -5, 1}, KN_SHAPE(2, 3))));
    ASSERT_ERROR_HAS("labels must be >= 0 or -100 (ignore_index: a position the loss skips), "
                     "sample 1 has -5 at position 1");
    kn_dataset *ds = kn_dataset_new(
        x, kn_from_int64s((int64_t[]){-100, -100, -100, -100, -100, -100}, KN_SHAPE(2, 3)));
    cr_assert_not_null(ds, "%s", kn_last_error());
    cr_assert_eq(ds->num_classes, 0);
    kn_dataset_free(ds);
    kn_scope_end();
}

Test(sequence_data, inputs_become_what_the_model_takes)
{
    kn_scope_begin();
    kapi_model_spec *classifier = kn_test_parse_model(CLASSIFIER);
    cr_assert_eq(classifier->input_dtype, KN_INT64);
    /* token ids written as floats (a CSV's features) become int64 indices */
    float as_floats[2 * SEQ];
    for (int i = 0; i < 2 * SEQ; i++) as_floats[i] = (float)(i % VOCAB);
    kn_dataset *ds = kn_dataset_new(kn_from_floats(as_floats, KN_SHAPE(2, SEQ)),
                                    kn_from_int64s((int64_t[]){0, 1}, KN_SHAPE(2)));
    kapi_errors errors = {0};
    cr_assert(kapi_dataset_fit_model(ds, classifier, "data.train", &errors));
    cr_assert_eq(ds->inputs->dtype, KN_INT64);
    cr_assert_eq(kn_data_i64(ds->inputs)[11], 11);
    kn_dataset_free(ds);
    /* ... but not values that are no index */
    as_floats[5] = 2.5f;
    ds = kn_dataset_new(kn_from_floats(as_floats, KN_SHAPE(2, SEQ)),
                        kn_from_int64s((int64_t[]){0, 1}, KN_SHAPE(2)));
    cr_assert_not(kapi_dataset_fit_model(ds, classifier, "data.train", &errors));
    cr_assert_str_eq(errors.items[0].path, "data.train");
    cr_assert_str_eq(errors.items[0].message,
                     "dataset: inputs must be integers to be int64 indices, sample 0 has 2.5 at "
                     "element 5 of the sample (the model's first layer takes int64 token "
                     "indices: give integer inputs, not scaled or normalised)");
    kapi_errors_free(&errors);
    kn_dataset_free(ds);
    /* int64 features (an '<i8' NPY) for a float model become float32 */
    const char *mlp = "{\"input_shape\": [8], \"layers\": [{\"type\": \"linear\", "
                      "\"out_features\": 2}]}";
    kapi_model_spec *float_model = kn_test_parse_model(mlp);
    int64_t tokens[2 * SEQ];
    kn_test_make_tokens(2, 1, tokens, NULL, NULL);
    ds = kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(2, SEQ)),
                        kn_from_int64s((int64_t[]){0, 1}, KN_SHAPE(2)));
    cr_assert(kapi_dataset_fit_model(ds, float_model, "data.train", &errors));
    cr_assert_eq(ds->inputs->dtype, KN_FLOAT32);
    cr_assert_float_eq(kn_data_f32(ds->inputs)[3], (float)tokens[3], 0);
    kn_dataset_free(ds);
    kapi_model_spec_free(float_model);
    kapi_model_spec_free(classifier);
    kn_scope_end();
}

Test(sequence_data, labels_must_fit_the_output)
{
    kn_scope_begin();
    kapi_model_spec *classifier = kn_test_parse_model(CLASSIFIER); /* output [2] */
    kapi_model_spec *tagger = kn_test_parse_model(TAGGER);         /* output [8, 12] */
    int64_t tokens[2 * SEQ], has_seven[2], per_position[2 * SEQ];
    kn_test_make_tokens(2, 5, tokens, has_seven, per_position);
    struct {
        const kapi_model_spec *model;
        bool per_position;
        const char *error;
    } cases[] = {
        {classifier, false, NULL},
        {tagger, true, NULL},
        {tagger, false,
         "labels are one class per sample but the model outputs [8, 12] per sample: end the "
         "model in an output [classes] (e.g. a flatten and a linear), or give labels per "
         "position [N, 8]"},
        {classifier, true,
         "labels are [8] per sample (a class per position) but the model outputs [2] per "
         "sample: expected an output [8, classes], the classes last"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        kn_tensor *labels = cases[i].per_position ? kn_from_int64s(per_position, KN_SHAPE(2, SEQ))
                                                  : kn_from_int64s(has_seven, KN_SHAPE(2));
        kn_dataset *ds = kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(2, SEQ)), labels);
        kapi_errors errors = {0};
        bool fits = kapi_dataset_fit_model(ds, cases[i].model, "data.test", &errors);
        if (!cases[i].error) {
            cr_assert(fits, "case %zu: %s", i, errors.count ? errors.items[0].message : "");
        } else {
            cr_assert_not(fits, "case %zu", i);
            cr_assert_str_eq(errors.items[0].message, cases[i].error);
        }
        kapi_errors_free(&errors);
        kn_dataset_free(ds);
    }
    /* nothing to learn */
    int64_t ignored[2 * SEQ];
    for (int i = 0; i < 2 * SEQ; i++) ignored[i] = -100;
    kn_dataset *none = kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(2, SEQ)),
                                      kn_from_int64s(ignored, KN_SHAPE(2, SEQ)));
    kapi_errors none_errors = {0};
    cr_assert_not(kapi_dataset_fit_model(none, tagger, "data.train", &none_errors));
    cr_assert_str_eq(none_errors.items[0].message,
                     "every label is -100 (ignore_index): no position to learn or score");
    kapi_errors_free(&none_errors);
    kn_dataset_free(none);
    /* a label beyond the classes of the last dim */
    per_position[3] = 12;
    kn_dataset *ds = kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(2, SEQ)),
                                    kn_from_int64s(per_position, KN_SHAPE(2, SEQ)));
    kapi_errors errors = {0};
    cr_assert_not(kapi_dataset_fit_model(ds, tagger, "data.test", &errors));
    cr_assert_str_eq(errors.items[0].message,
                     "labels go up to 12 but the model outputs 12 classes");
    kapi_errors_free(&errors);
    kn_dataset_free(ds);
    kapi_model_spec_free(classifier);
    kapi_model_spec_free(tagger);
    kn_scope_end();
}

/* The union with issue 13's task checks: a job's class labels per position against a
 * [T, V] output (kapi_check_labels, which kilnd runs at submission), class weights
 * counted on the classes of the last dim, and no scaling or normalising of token inputs
 * (they would be floats again after kapi_dataset_fit_job made them int64). */
Test(sequence_data, jobs_check_labels_per_position_and_keep_tokens_unscaled)
{
    kn_scope_begin();
    kapi_model_spec *tagger = kn_test_parse_model(TAGGER);         /* output [8, 12] */
    kapi_model_spec *classifier = kn_test_parse_model(CLASSIFIER); /* output [2] */
    kn_train_config c = kn_train_config_defaults();
    int64_t tokens[2 * SEQ], per_position[2 * SEQ];
    kn_test_make_tokens(2, 5, tokens, NULL, per_position);
    kn_tensor *labels = kn_from_int64s(per_position, KN_SHAPE(2, SEQ));
    kapi_errors errors = {0};
    cr_assert(kapi_check_labels(labels, tagger, &c, "data.train (labels)", &errors), "%s",
              errors.count ? errors.items[0].message : "");
    cr_assert_not(kapi_check_labels(labels, classifier, &c, "data.train (labels)", &errors));
    cr_assert_str_eq(errors.items[0].message,
                     "labels are [8] per sample (a class per position) but the model outputs [2] "
                     "per sample: expected an output [8, classes], the classes last");
    kapi_errors_free(&errors);
    /* [N, K] 0/1 labels for K outputs are most likely multi-label targets: say so */
    kn_tensor *pairs = kn_from_int64s((int64_t[]){0, 1, 1, 0}, KN_SHAPE(2, 2));
    cr_assert_not(kapi_check_labels(pairs, classifier, &c, "data.train (labels)", &errors));
    cr_assert(strstr(errors.items[0].message, "set \"task\": \"multilabel\""), "%s",
              errors.items[0].message);
    kapi_errors_free(&errors);
    /* a label beyond the last dim's classes, with the job's hint */
    per_position[5] = 12;
    cr_assert_not(kapi_check_labels(kn_from_int64s(per_position, KN_SHAPE(2, SEQ)), tagger, &c,
                                    "data.train (labels)", &errors));
    cr_assert(strstr(errors.items[0].message, "labels go up to 12 but the model outputs 12 "
                                              "classes"),
              "%s", errors.items[0].message);
    kapi_errors_free(&errors);

    /* class weights: one per class of the last dim; scale and normalize refused */
    struct {
        const char *extra, *path, *message;
    } cases[] = {
        {"\"loss\": {\"type\": \"cross_entropy\", \"weight\": [1, 2]}", "loss.weight",
         "expected one weight per class: 12 (the model's outputs), got 2"},
        {"\"data\": {\"train\": {\"format\": \"npy\", \"inputs\": \"x.npy\", \"labels\": "
         "\"y.npy\"}, \"scale\": 0.5}",
         "data.scale",
         "the model's first layer takes int64 token indices, which are not scaled or "
         "normalised: leave data.scale and data.normalize out"},
        {"\"data\": {\"train\": {\"format\": \"npy\", \"inputs\": \"x.npy\", \"labels\": "
         "\"y.npy\"}, \"normalize\": \"auto\"}",
         "data.normalize", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char json[1024];
        bool has_data = strstr(cases[i].extra, "\"data\"") != NULL;
        snprintf(json, sizeof json, "{\"model\": %s, %s%s}", TAGGER, cases[i].extra,
                 has_data ? ""
                          : ", \"data\": {\"train\": {\"format\": \"npy\", \"inputs\": "
                            "\"x.npy\", \"labels\": \"y.npy\"}}");
        kapi_job_parse_options options = {.allow_paths = true};
        kapi_job_spec *spec = kapi_job_spec_parse(json, strlen(json), options, &errors);
        cr_assert_null(spec, "case %zu parsed", i);
        bool found = false;
        for (int k = 0; k < errors.count; k++)
            found = found ||
                    (strcmp(errors.items[k].path, cases[i].path) == 0 &&
                     (!cases[i].message || strcmp(errors.items[k].message, cases[i].message) == 0));
        cr_assert(found, "case %zu: %s: %s", i, errors.items[0].path, errors.items[0].message);
        kapi_errors_free(&errors);
    }
    /* the job's data path itself: kapi_prepare_data refuses before touching the tokens */
    kapi_job_spec job = {.data = {.scale = 255}};
    kn_dataset *train = kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(2, SEQ)),
                                       kn_from_int64s(per_position, KN_SHAPE(2, SEQ)));
    kn_dataset *validation = NULL;
    kapi_preprocessing pre;
    cr_assert_not(kapi_prepare_data(&job, tagger, &train, &validation, NULL, &pre, &errors));
    cr_assert_str_eq(errors.items[0].path, "data.scale");
    cr_assert_eq(train->inputs->dtype, KN_INT64);
    cr_assert_eq(kn_data_i64(train->inputs)[3], tokens[3]);
    kapi_errors_free(&errors);
    kn_dataset_free(train);
    kapi_model_spec_free(tagger);
    kapi_model_spec_free(classifier);
    kn_scope_end();
}

/* ---- training ------------------------------------------------------------------------------- */

/* A dataset of n token sequences (int64 [n, SEQ]) with either labels. */
static kn_dataset *token_dataset(int64_t n, uint64_t seed, bool per_position)
{
    int64_t *tokens = malloc(sizeof(int64_t) * (size_t)(n * SEQ));
    int64_t *labels = malloc(sizeof(int64_t) * (size_t)(n * SEQ));
    kn_test_make_tokens(n, seed, tokens, per_position ? NULL : labels,
                        per_position ? labels : NULL);
    kn_scope_begin();
    kn_tensor *y = per_position ? kn_from_int64s(labels, KN_SHAPE(n, SEQ))
                                : kn_from_int64s(labels, KN_SHAPE(n));
    kn_dataset *ds = kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(n, SEQ)), y);
    kn_scope_end();
    free(tokens);
    free(labels);
    cr_assert_not_null(ds, "%s", kn_last_error());
    return ds;
}

/* Trains m on train (Adam at lr, batch, steps, seed 4, validating on test) and returns
 * its evaluation on test, which must equal the trainer's final validation. */
static kn_eval_result run_trainer(kn_module *m, kn_generator *gen, kn_dataset *train,
                                  kn_dataset *test, double lr, int64_t batch, int64_t steps)
{
    kn_train_config c = kn_train_config_defaults();
    c.optimizer.lr = lr;
    c.batch_size = batch;
    c.max_steps = steps;
    c.seed = 4;
    c.generator = gen;
    kn_trainer *t = kn_trainer_new(m, &c);
    cr_assert_not_null(t, "%s", kn_last_error());
    kn_train_summary summary;
    ASSERT_OK(kn_trainer_run(t, train, test, NULL, &summary));
    kn_eval_result after;
    ASSERT_OK(kn_evaluate(m, test, KN_LOSS_CROSS_ENTROPY, 128, &after));
    cr_assert_float_eq(summary.final_validation.loss, after.loss, 1e-5);
    kn_trainer_free(t);
    return after;
}

static kn_eval_result train_model(const char *json, bool per_position, int64_t steps, double lr)
{
    kapi_model_spec *spec = kn_test_parse_model(json);
    kn_generator *gen = kn_generator_new(1);
    kn_module *m = kapi_model_build(spec, gen);
    kn_dataset *train = token_dataset(1024, 11, per_position);
    kn_dataset *test = token_dataset(256, 99, per_position);
    kapi_errors errors = {0};
    cr_assert(kapi_dataset_fit_model(train, spec, "data.train", &errors));
    kn_eval_result before;
    ASSERT_OK(kn_evaluate(m, test, KN_LOSS_CROSS_ENTROPY, 128, &before));
    kn_eval_result after = run_trainer(m, gen, train, test, lr, 32, steps);
    cr_assert_lt(after.loss, before.loss / 4, "loss %g -> %g", before.loss, after.loss);
    kn_dataset_free(train);
    kn_dataset_free(test);
    kn_module_free(m);
    kn_generator_free(gen);
    kapi_model_spec_free(spec);
    return after;
}

/* The failure: a model with an embedding could not take a step on int64 data. */
Test(sequence_data, an_embedding_classifier_trains_on_int64_tokens)
{
    kn_eval_result r = train_model(CLASSIFIER, false, 400, 0.02);
    cr_assert_gt(r.accuracy, 0.95, "accuracy %g", r.accuracy);
}

/* Every position scored ([N, 8, 12] against [N, 8]); position 0 is ignored, so the
 * accuracy counts 7 of 8 positions and the loss is their mean. */
Test(sequence_data, a_tagger_trains_on_labels_per_position)
{
    kn_eval_result r = train_model(TAGGER, true, 600, 0.01);
    cr_assert_gt(r.accuracy, 0.95, "accuracy %g", r.accuracy);
}

Test(sequence_data, evaluation_skips_ignored_positions)
{
    kn_scope_begin();
    kapi_model_spec *spec = kn_test_parse_model(TAGGER);
    kn_module *m = kapi_model_build(spec, NULL);
    kn_dataset *ds = token_dataset(6, 7, true);
    kn_eval_result r;
    ASSERT_OK(kn_evaluate(m, ds, KN_LOSS_CROSS_ENTROPY, 4, &r)); /* batches of 4 and 2 */
    /* the same numbers from the loss over the whole set at once */
    kn_module_train(m, false);
    kn_no_grad_begin();
    kn_tensor *logits = kn_module_forward(m, ds->inputs);
    kn_tensor *loss = kn_sequence_cross_entropy(logits, ds->labels, KN_REDUCTION_MEAN,
                                                KN_DEFAULT_IGNORE_INDEX, 0.0);
    kn_no_grad_end();
    cr_assert_float_eq(r.loss, kn_item(loss), 1e-5);
    kn_tensor *pred = kn_argmax(logits, -1, false);
    int64_t correct = 0, counted = 0;
    for (int i = 0; i < 6 * SEQ; i++) {
        int64_t label = kn_data_i64(ds->labels)[i];
        if (label == KN_DEFAULT_IGNORE_INDEX) continue;
        counted++;
        correct += kn_data_i64(pred)[i] == label;
    }
    cr_assert_eq(counted, 6 * (SEQ - 1));
    cr_assert_float_eq(r.accuracy, (double)correct / (double)counted, 1e-12);
    kn_dataset_free(ds);
    kn_module_free(m);
    kapi_model_spec_free(spec);
    kn_scope_end();
}

/* ---- kiln train ------------------------------------------------------------------------------ */

/* dir/name-inputs.npy (descr '<i8' or '<i4') and dir/name-labels.npy: one class per
 * sequence, or per position ([n, SEQ]). */
static void write_tokens(const char *dir, const char *name, int64_t n, uint64_t seed,
                         const char *descr, bool per_position)
{
    int64_t *tokens = malloc(sizeof(int64_t) * (size_t)(n * SEQ));
    int64_t *labels = malloc(sizeof(int64_t) * (size_t)(n * SEQ));
    kn_test_make_tokens(n, seed, tokens, per_position ? NULL : labels,
                        per_position ? labels : NULL);
    char path[600];
    snprintf(path, sizeof path, "%s/%s-inputs.npy", dir, name);
    if (strcmp(descr, "<i4") == 0) { /* np.int32 as some tokenisers give */
        int32_t *narrow = malloc(sizeof(int32_t) * (size_t)(n * SEQ));
        for (int64_t i = 0; i < n * SEQ; i++) narrow[i] = (int32_t)tokens[i];
        cr_assert(kn_test_write_npy(path, "<i4", (int64_t[]){n, SEQ}, 2, narrow), "%s", path);
        free(narrow);
    } else {
        cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){n, SEQ}, 2, tokens), "%s", path);
    }
    snprintf(path, sizeof path, "%s/%s-labels.npy", dir, name);
    if (per_position)
        cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){n, SEQ}, 2, labels), "%s", path);
    else
        cr_assert(kn_test_write_npy(path, "<i8", (int64_t[]){n}, 1, labels), "%s", path);
    free(tokens);
    free(labels);
}

/* Runs kiln with args; its output (stdout and stderr) into out; the exit status. */
static int run_kiln(const char *args, char *out, size_t size)
{
    char command[2048];
    snprintf(command, sizeof command, "%s/kiln %s 2>&1", KILN_BINARY_DIR, args);
    return kn_test_run(command, out, size);
}

/* dir/job.json: model on dir's train and test NPY files. */
static void write_job(const char *dir, const char *model, int steps, double lr)
{
    char path[600];
    snprintf(path, sizeof path, "%s/job.json", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "{\"model\": %s, \"data\": {\"train\": {\"format\": \"npy\", \"inputs\": "
            "\"train-inputs.npy\", \"labels\": \"train-labels.npy\"}, \"test\": {\"format\": "
            "\"npy\", \"inputs\": \"test-inputs.npy\", \"labels\": \"test-labels.npy\"}, "
            "\"validation_split\": 0.1}, \"optimizer\": {\"type\": \"adam\", \"lr\": %g}, "
            "\"batch_size\": 32, \"max_steps\": %d, \"seed\": 2}",
            model, lr, steps);
    fclose(f);
}

/* The number after "key": in text, which must have it. */
static double json_number(const char *text, const char *key)
{
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\":", key);
    const char *at = strstr(text, quoted);
    cr_assert_not_null(at, "no %s in %s", key, text);
    return strtod(at + strlen(quoted), NULL);
}

Test(sequence_data, kiln_train_trains_an_embedding_model_on_npy_tokens)
{
    char kiln[512];
    snprintf(kiln, sizeof kiln, "%s/kiln", KILN_BINARY_DIR);
    if (access(kiln, X_OK) != 0) cr_skip_test("%s is not built", kiln);
    char dir[256], args[1200], out[16384];
    snprintf(dir, sizeof dir, "%s/seq-cli-%d", KILN_BINARY_DIR, (int)getpid());
    mkdir(dir, 0700);
    write_tokens(dir, "train", 1024, 11, "<i8", false);
    write_tokens(dir, "test", 256, 99, "<i4", false); /* np.int32 as some tokenisers give */
    write_job(dir, CLASSIFIER, 400, 0.02);
    snprintf(args, sizeof args, "train %s/job.json --json --quiet --threads 1", dir);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln train failed:\n%s", out);
    const char *summary = strstr(out, "\"event\":\"summary\"");
    cr_assert_not_null(summary, "%s", out);
    cr_assert_gt(json_number(summary, "test_accuracy"), 0.95, "%s", out);

    /* a tagger: labels per position, its weights, then eval and predict from them */
    write_tokens(dir, "train", 1024, 11, "<i8", true);
    write_tokens(dir, "test", 256, 99, "<i8", true);
    write_job(dir, TAGGER, 600, 0.01);
    snprintf(args, sizeof args, "train %s/job.json --json --quiet --threads 1 --out %s/out", dir,
             dir);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln train failed:\n%s", out);
    summary = strstr(out, "\"event\":\"summary\"");
    cr_assert_not_null(summary, "%s", out);
    double trained = json_number(summary, "test_accuracy");
    cr_assert_gt(trained, 0.95, "%s", out);
    snprintf(args, sizeof args, "eval %s/out/model.safetensors %s/job.json --json", dir, dir);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln eval failed:\n%s", out);
    cr_assert_float_eq(json_number(out, "test_accuracy"), trained, 1e-6, "%s", out);
    snprintf(args, sizeof args, "predict %s/out/model.safetensors %s/job.json --limit 4 --json",
             dir, dir);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln predict failed:\n%s", out);
    int64_t tokens[4 * SEQ], labels[4 * SEQ];
    kn_test_make_tokens(4, 99, tokens, NULL, labels);
    const char *line = out;
    int right = 0;
    for (int i = 0; i < 4; i++, line = strchr(line, '\n') + 1) {
        const char *classes = strstr(line, "\"classes\":[");
        cr_assert_not_null(classes, "%s", out);
        classes += strlen("\"classes\":[");
        for (int t = 0; t < SEQ; t++) {
            char *end;
            long c = strtol(classes, &end, 10);
            cr_assert(end != classes, "%s", out);
            classes = end + 1;
            right += t > 0 && c == labels[i * SEQ + t];
        }
    }
    cr_assert_geq(right, 4 * (SEQ - 1) - 1, "%d of %d positions right:\n%s", right, 4 * (SEQ - 1),
                  out);
    snprintf(args, sizeof args, "rm -rf '%s'", dir);
    cr_assert_eq(system(args), 0);
}

/* A model of one output position ([1, V]: a tagger over sequences of one token) takes
 * labels [N], which a file's column [N, 1] is read as: they are the position's labels,
 * paired with the outputs [N, 1, V] (they were refused before, "give labels per position
 * [N, 1]", though the file had exactly that). */
Test(sequence_data, one_position_models_take_labels_per_sample)
{
    kn_scope_begin();
    const char *one = "{\"name\": \"one\", \"input_shape\": [1], \"layers\": ["
                      "{\"type\": \"embedding\", \"num_embeddings\": 12, \"embedding_dim\": 16},"
                      "{\"type\": \"linear\", \"in_features\": 16, \"out_features\": 12}]}";
    kapi_model_spec *spec = kn_test_parse_model(one);
    cr_assert_eq(spec->output_ndim, 2);
    cr_assert_eq(spec->output_shape[0], 1);
    enum { N = 240 };
    int64_t tokens[N], labels[N];
    for (int i = 0; i < N; i++) {
        tokens[i] = i % 12;
        labels[i] = (tokens[i] + 3) % 12; /* a function of the token */
    }
    kn_tensor *y = kn_from_int64s(labels, KN_SHAPE(N));
    kapi_errors errors = {0};
    kn_train_config c = kn_train_config_defaults();
    /* the submission's check (kilnd's) accepts them */
    cr_assert(kapi_check_labels(y, spec, &c, "data.train", &errors), "%s",
              errors.count ? errors.items[0].message : "");
    kn_dataset *ds = kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(N, 1)), y);
    cr_assert(kapi_dataset_fit_job(ds, spec, &c, "data.train", &errors), "%s",
              errors.count ? errors.items[0].message : "");
    cr_assert_eq(ds->labels->ndim, 2);
    cr_assert_eq(ds->labels->shape[1], 1);
    kn_dataset *test =
        kn_dataset_new(kn_from_int64s(tokens, KN_SHAPE(N, 1)), kn_from_int64s(labels, KN_SHAPE(N)));
    cr_assert(kapi_dataset_fit_model(test, spec, "data.test", &errors), "%s",
              errors.count ? errors.items[0].message : "");
    cr_assert_eq(test->labels->ndim, 2);
    /* and the model learns the mapping from them */
    kn_generator *gen = kn_generator_new(1);
    kn_module *m = kapi_model_build(spec, gen);
    kn_eval_result r = run_trainer(m, gen, ds, test, 0.05, 24, 200);
    cr_assert_gt(r.accuracy, 0.99, "accuracy %g", r.accuracy);
    kn_eval_result_clear(&r);
    kn_dataset_free(ds);
    kn_dataset_free(test);
    kn_module_free(m);
    kn_generator_free(gen);
    kapi_model_spec_free(spec);
    kapi_errors_free(&errors);
    kn_scope_end();
}

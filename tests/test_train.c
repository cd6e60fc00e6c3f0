/*
 * test_train.c — the trainer: a tiny synthetic problem is learned, runs are
 * deterministic, a run resumed from a mid-epoch checkpoint ends with the very same
 * weights as an uninterrupted one (dropout included; also with the run's own generator,
 * which concurrent runs keep apart), non-finite losses name the step
 * or are skipped, early stopping, the losses from labels, and the tasks: classification,
 * regression and multi-label metrics against scikit-learn, each task learned.
 */
#include "kn_data.h"
#include "kn_nn.h"
#include "kn_optim.h"
#include "kn_test.h"
#include "kn_train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Three Gaussian blobs in 4-D, deterministic from seed: a dataset the caller frees. */
static kn_dataset *blobs(int64_t n, uint64_t seed)
{
    kn_generator *gen = kn_generator_new(seed);
    kn_tensor *x = kn_randn(KN_SHAPE(n, 4), gen);
    kn_tensor *y = kn_zeros(KN_SHAPE(n), KN_INT64);
    float *xd = kn_data_f32(x);
    int64_t *yd = kn_data_i64(y);
    for (int64_t i = 0; i < n; i++) {
        yd[i] = i % 3;
        xd[i * 4 + yd[i]] += 3.0f; /* class c is shifted along axis c */
    }
    kn_dataset *ds = kn_dataset_new(x, y);
    kn_generator_free(gen);
    cr_assert_not_null(ds, "%s", kn_last_error());
    return ds;
}

/* Linear(4, 16) ReLU [Dropout(0.2)] Linear(16, 3), initialised from gen (NULL: the
 * default generator). */
static kn_module *small_model_from(kn_generator *gen, bool dropout)
{
    kn_module *m = kn_sequential_new();
    cr_assert_eq(kn_sequential_append(m, kn_linear_new(4, 16, true, gen)), KN_OK, "%s",
                 kn_last_error());
    cr_assert_eq(kn_sequential_append(m, kn_relu_new()), KN_OK);
    if (dropout) cr_assert_eq(kn_sequential_append(m, kn_dropout_new(0.2)), KN_OK);
    cr_assert_eq(kn_sequential_append(m, kn_linear_new(16, 3, true, gen)), KN_OK);
    return m;
}

/* The same, initialised from the default generator seeded with seed. */
static kn_module *small_model(uint64_t seed, bool dropout)
{
    kn_manual_seed(seed);
    return small_model_from(NULL, dropout);
}

static kn_train_config small_config(void)
{
    kn_train_config c = kn_train_config_defaults();
    c.optimizer.lr = 1e-2;
    c.batch_size = 32;
    c.epochs = 3;
    c.seed = 7;
    return c;
}

/* Records every step's loss. */
typedef struct recorder {
    double losses[512];
    int n;
    int evals;
    /* for the resume and non-finite tests */
    kn_trainer *trainer;
    int64_t checkpoint_at;
    const char *checkpoint_path;
    int64_t poison_at;
    kn_module *model;
} recorder;

static kn_status record_step(void *context, const kn_step_info *info)
{
    recorder *r = context;
    if (r->n < 512) r->losses[r->n++] = info->loss;
    if (r->poison_at && info->step == r->poison_at) {
        int n = 0;
        kn_named_tensor *p = kn_module_parameters(r->model, &n);
        /* the last bias: NaN reaches the logits whatever the activations do */
        kn_no_grad_begin();
        cr_assert_eq(kn_fill_(p[n - 1].tensor, NAN), KN_OK, "%s", kn_last_error());
        kn_no_grad_end();
        free(p);
    }
    return KN_OK;
}

static kn_status record_eval(void *context, const kn_eval_result *result)
{
    (void)result;
    ((recorder *)context)->evals++;
    return KN_OK;
}

/* Saves the checkpoint at r->checkpoint_at, then stops the run as a cancel would. */
static kn_status checkpoint_and_stop(void *context, kn_trainer *trainer, int64_t step)
{
    recorder *r = context;
    if (step != r->checkpoint_at) return KN_OK;
    kn_status st = kn_trainer_save_checkpoint(trainer, r->checkpoint_path);
    cr_assert_eq(st, KN_OK, "%s", kn_last_error());
    return KN_ERR_VALUE;
}

/* All parameters of m as one float array (malloc'd), *n gets the length. */
static float *flat_params(kn_module *m, int64_t *n)
{
    int count = 0;
    kn_named_tensor *p = kn_module_state_dict(m, &count);
    int64_t total = 0;
    for (int i = 0; i < count; i++) total += kn_numel(p[i].tensor);
    float *out = malloc((size_t)total * sizeof *out);
    int64_t at = 0;
    for (int i = 0; i < count; i++) {
        cr_assert_eq(kn_copy_to_floats(p[i].tensor, out + at), KN_OK);
        at += kn_numel(p[i].tensor);
    }
    free(p);
    *n = total;
    return out;
}

Test(train, tiny_problem_is_learned)
{
    kn_scope_begin();
    kn_dataset *train = blobs(300, 1), *test = blobs(150, 2);
    kn_module *m = small_model(0, false);
    kn_train_config c = small_config();
    c.epochs = 10;
    kn_trainer *t = kn_trainer_new(m, &c);
    cr_assert_not_null(t, "%s", kn_last_error());
    kn_eval_result before;
    cr_assert_eq(kn_evaluate(m, test, c.loss, 64, &before), KN_OK, "%s", kn_last_error());
    recorder r = {0};
    kn_train_callbacks cb = {.context = &r, .on_step = record_step, .on_eval = record_eval};
    kn_train_summary s;
    cr_assert_eq(kn_trainer_run(t, train, test, &cb, &s), KN_OK, "%s", kn_last_error());
    cr_assert_eq(s.steps, 10 * 10); /* 300 samples in batches of 32: 10 per epoch */
    cr_assert_eq(s.epochs_completed, 10);
    cr_assert_eq(r.evals, 10, "one evaluation per epoch, got %d", r.evals);
    cr_assert(s.has_validation);
    cr_assert_eq(s.final_validation.count, 150);
    cr_assert_gt(s.final_validation.accuracy, 0.9, "accuracy %g", s.final_validation.accuracy);
    cr_assert_lt(s.final_validation.loss, before.loss / 2, "loss %g -> %g", before.loss,
                 s.final_validation.loss);
    cr_assert_gt(s.samples_per_second, 0);
    cr_assert(m->training, "the model is back in train mode after evaluation");
    kn_trainer_free(t);
    kn_module_free(m);
    kn_dataset_free(train);
    kn_dataset_free(test);
    kn_scope_end();
}

static void run_recorded(uint64_t init_seed, recorder *r, kn_train_config c, bool dropout)
{
    kn_dataset *train = blobs(100, 1);
    kn_module *m = small_model(init_seed, dropout);
    kn_trainer *t = kn_trainer_new(m, &c);
    cr_assert_not_null(t, "%s", kn_last_error());
    kn_train_callbacks cb = {.context = r, .on_step = record_step};
    cr_assert_eq(kn_trainer_run(t, train, NULL, &cb, NULL), KN_OK, "%s", kn_last_error());
    kn_trainer_free(t);
    kn_module_free(m);
    kn_dataset_free(train);
}

Test(train, same_seed_same_losses)
{
    kn_scope_begin();
    recorder *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b), *d = calloc(1, sizeof *d);
    kn_train_config c = small_config();
    run_recorded(3, a, c, true);
    run_recorded(3, b, c, true);
    cr_assert_eq(a->n, 12); /* 100 samples, batches of 32: 4 per epoch, 3 epochs */
    cr_assert_eq(memcmp(a->losses, b->losses, sizeof a->losses), 0, "losses differ");
    c.seed = 8; /* another data order */
    run_recorded(3, d, c, true);
    cr_assert_neq(memcmp(a->losses, d->losses, sizeof a->losses), 0);
    free(a);
    free(b);
    free(d);
    kn_scope_end();
}

Test(train, resume_mid_epoch_gives_the_same_weights)
{
    kn_scope_begin();
    char path[] = "/tmp/kiln_test_resume_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    kn_dataset *train = blobs(100, 1);
    kn_train_config c = small_config();
    c.checkpoint_every_steps = 6; /* step 6 is batch 2 of epoch 1 (4 batches an epoch) */
    /* nanoGPT's optimizer: decay on the weights, not the biases (the resumed run must
     * decay the same parameters to end with the same weights) */
    c.optimizer = kn_optimizer_defaults(KN_OPTIM_ADAMW);
    c.optimizer.lr = 1e-2, c.optimizer.weight_decay = 0.1;
    c.optimizer.weight_decay_params = KN_DECAY_MATRICES;

    /* uninterrupted */
    kn_module *a = small_model(5, true);
    kn_trainer *ta = kn_trainer_new(a, &c);
    cr_assert_eq(kn_trainer_run(ta, train, NULL, NULL, NULL), KN_OK, "%s", kn_last_error());

    /* interrupted at step 6 */
    kn_module *b = small_model(5, true);
    kn_trainer *tb = kn_trainer_new(b, &c);
    recorder r = {.checkpoint_at = 6, .checkpoint_path = path};
    kn_train_callbacks cb = {.context = &r, .on_checkpoint = checkpoint_and_stop};
    cr_assert_eq(kn_trainer_run(tb, train, NULL, &cb, NULL), KN_ERR_VALUE);
    cr_assert_eq(kn_trainer_step(tb), 6);

    /* resumed into a differently initialised model, with the generator moved on */
    kn_module *d = small_model(99, true);
    kn_manual_seed(1234);
    kn_trainer *td = kn_trainer_new(d, &c);
    cr_assert_eq(kn_trainer_load_checkpoint(td, path), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_trainer_step(td), 6);
    kn_train_summary s;
    cr_assert_eq(kn_trainer_run(td, train, NULL, NULL, &s), KN_OK, "%s", kn_last_error());
    cr_assert_eq(s.steps, 12);

    int64_t na, nd;
    float *wa = flat_params(a, &na), *wd = flat_params(d, &nd);
    cr_assert_eq(na, nd);
    for (int64_t i = 0; i < na; i++)
        cr_assert_eq(wa[i], wd[i], "weight %lld: %.9g vs %.9g", (long long)i, wa[i], wd[i]);
    free(wa);
    free(wd);
    kn_trainer_free(ta);
    kn_trainer_free(tb);
    kn_trainer_free(td);
    kn_module_free(a);
    kn_module_free(b);
    kn_module_free(d);
    kn_dataset_free(train);
    unlink(path);
    kn_scope_end();
}

/* The default generator's state, to see that a run with its own generator leaves it be. */
static unsigned char *default_state(void)
{
    unsigned char *state = malloc(kn_generator_state_size());
    kn_generator_get_state(kn_default_generator(), state);
    return state;
}

Test(train, own_generator_is_the_runs_and_resumes)
{
    kn_scope_begin();
    char path[] = "/tmp/kiln_test_resume_own_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    kn_dataset *train = blobs(100, 1);
    kn_train_config c = small_config();
    c.checkpoint_every_steps = 6;

    /* uninterrupted: initialised and run from one generator, as kilnd runs a job; the
     * same numbers as the default generator seeded alike (torch.manual_seed) */
    kn_generator *ga = kn_generator_new(5);
    kn_module *a = small_model_from(ga, true);
    c.generator = ga;
    kn_trainer *ta = kn_trainer_new(a, &c);
    kn_manual_seed(77);
    unsigned char *before = default_state();
    cr_assert_eq(kn_trainer_run(ta, train, NULL, NULL, NULL), KN_OK, "%s", kn_last_error());
    unsigned char *after = default_state();
    cr_assert_eq(memcmp(before, after, kn_generator_state_size()), 0,
                 "a run with its own generator drew from the default one");
    cr_assert_null(a->children[2]->dropout_generator, "the dropout kept the run's generator");
    kn_module *same = small_model(5, true);
    c.generator = NULL;
    kn_trainer *tsame = kn_trainer_new(same, &c);
    cr_assert_eq(kn_trainer_run(tsame, train, NULL, NULL, NULL), KN_OK, "%s", kn_last_error());

    /* interrupted at step 6, resumed with a generator seeded otherwise while the default
     * one is drawn from in between: the checkpoint carries the run's generator */
    kn_generator *gb = kn_generator_new(5), *gd = kn_generator_new(4321);
    kn_module *b = small_model_from(gb, true);
    c.generator = gb;
    kn_trainer *tb = kn_trainer_new(b, &c);
    recorder r = {.checkpoint_at = 6, .checkpoint_path = path};
    kn_train_callbacks cb = {.context = &r, .on_checkpoint = checkpoint_and_stop};
    cr_assert_eq(kn_trainer_run(tb, train, NULL, &cb, NULL), KN_ERR_VALUE);
    kn_module *d = small_model_from(gd, true);
    cr_assert_not_null(kn_rand(KN_SHAPE(1000), NULL)); /* the default generator moves on */
    c.generator = gd;
    kn_trainer *td = kn_trainer_new(d, &c);
    cr_assert_eq(kn_trainer_load_checkpoint(td, path), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_trainer_run(td, train, NULL, NULL, NULL), KN_OK, "%s", kn_last_error());

    int64_t na, ns, nd;
    float *wa = flat_params(a, &na), *ws = flat_params(same, &ns), *wd = flat_params(d, &nd);
    cr_assert(na == ns && na == nd);
    for (int64_t i = 0; i < na; i++) {
        cr_assert_eq(wa[i], ws[i], "weight %lld: %.9g vs the default generator's %.9g",
                     (long long)i, wa[i], ws[i]);
        cr_assert_eq(wa[i], wd[i], "weight %lld: %.9g vs resumed %.9g", (long long)i, wa[i], wd[i]);
    }
    free(wa);
    free(ws);
    free(wd);
    free(before);
    free(after);
    kn_trainer_free(ta);
    kn_trainer_free(tsame);
    kn_trainer_free(tb);
    kn_trainer_free(td);
    kn_module_free(a);
    kn_module_free(same);
    kn_module_free(b);
    kn_module_free(d);
    kn_generator_free(ga);
    kn_generator_free(gb);
    kn_generator_free(gd);
    kn_dataset_free(train);
    unlink(path);
    kn_scope_end();
}

/* One run with dropout from its own generator, as a kilnd worker runs a job. */
typedef struct concurrent_run {
    uint64_t seed;
    recorder *r;
    kn_status status;
} concurrent_run;

static void *run_with_own_generator(void *arg)
{
    concurrent_run *run = arg;
    kn_scope_begin();
    kn_generator *gen = kn_generator_new(run->seed);
    kn_dataset *train = blobs(100, 1);
    kn_module *m = small_model_from(gen, true);
    kn_train_config c = small_config();
    c.generator = gen;
    kn_trainer *t = kn_trainer_new(m, &c);
    kn_train_callbacks cb = {.context = run->r, .on_step = record_step};
    run->status = t ? kn_trainer_run(t, train, NULL, &cb, NULL) : KN_ERR_NULL;
    kn_trainer_free(t);
    kn_module_free(m);
    kn_dataset_free(train);
    kn_generator_free(gen);
    kn_scope_end();
    return NULL;
}

Test(train, runs_at_once_with_own_generators_match_runs_alone)
{
    recorder *alone[2], *together[2];
    concurrent_run runs[2];
    for (int i = 0; i < 2; i++) {
        alone[i] = calloc(1, sizeof *alone[i]);
        together[i] = calloc(1, sizeof *together[i]);
        runs[i] = (concurrent_run){.seed = 11 + (uint64_t)i, .r = alone[i]};
        run_with_own_generator(&runs[i]);
        cr_assert_eq(runs[i].status, KN_OK);
    }
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        runs[i] = (concurrent_run){.seed = 11 + (uint64_t)i, .r = together[i]};
        cr_assert_eq(pthread_create(&threads[i], NULL, run_with_own_generator, &runs[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
        cr_assert_eq(runs[i].status, KN_OK, "run %d: %d", i, runs[i].status);
        cr_assert_eq(together[i]->n, 12);
        cr_assert_eq(memcmp(alone[i]->losses, together[i]->losses, sizeof alone[i]->losses), 0,
                     "run %d: its dropout masks depended on the other run", i);
    }
    cr_assert_neq(memcmp(alone[0]->losses, alone[1]->losses, sizeof alone[0]->losses), 0);
    for (int i = 0; i < 2; i++) {
        free(alone[i]);
        free(together[i]);
    }
}

Test(train, non_finite_loss_names_the_step)
{
    kn_scope_begin();
    kn_dataset *train = blobs(100, 1);
    kn_module *m = small_model(0, false);
    kn_train_config c = small_config();
    kn_trainer *t = kn_trainer_new(m, &c);
    recorder r = {.poison_at = 5, .model = m};
    kn_train_callbacks cb = {.context = &r, .on_step = record_step};
    cr_assert_neq(kn_trainer_run(t, train, NULL, &cb, NULL), KN_OK);
    cr_assert_str_eq(kn_last_error(), "step 6: loss is nan");
    kn_trainer_free(t);
    kn_module_free(m);

    /* skipped instead, and counted */
    m = small_model(0, false);
    c.skip_non_finite = true;
    t = kn_trainer_new(m, &c);
    recorder r2 = {.poison_at = 5, .model = m};
    cb.context = &r2;
    kn_train_summary s;
    cr_assert_eq(kn_trainer_run(t, train, NULL, &cb, &s), KN_OK, "%s", kn_last_error());
    cr_assert_eq(s.steps, 12);
    cr_assert_eq(s.skipped_steps, 7);
    kn_trainer_free(t);
    kn_module_free(m);
    kn_dataset_free(train);
    kn_scope_end();
}

Test(train, early_stopping_on_validation_loss)
{
    kn_scope_begin();
    kn_dataset *train = blobs(100, 1), *val = blobs(60, 2);
    kn_module *m = small_model(0, false);
    kn_train_config c = small_config();
    c.optimizer = kn_optimizer_defaults(KN_OPTIM_SGD);
    c.optimizer.lr = 0; /* the loss never improves after the first evaluation */
    c.eval_every_steps = 1;
    c.early_stopping_patience = 2;
    c.epochs = 5;
    kn_trainer *t = kn_trainer_new(m, &c);
    cr_assert_not_null(t, "%s", kn_last_error());
    recorder r = {0};
    kn_train_callbacks cb = {.context = &r, .on_eval = record_eval};
    kn_train_summary s;
    cr_assert_eq(kn_trainer_run(t, train, val, &cb, &s), KN_OK, "%s", kn_last_error());
    cr_assert(s.stopped_early);
    cr_assert_eq(s.steps, 3);
    cr_assert_eq(r.evals, 3);
    kn_trainer_free(t);
    kn_module_free(m);

    /* a model that learns keeps going */
    m = small_model(0, false);
    c = small_config();
    c.eval_every_steps = 2;
    c.early_stopping_patience = 3;
    t = kn_trainer_new(m, &c);
    cr_assert_eq(kn_trainer_run(t, train, val, NULL, &s), KN_OK, "%s", kn_last_error());
    cr_assert_not(s.stopped_early);
    cr_assert_eq(s.steps, 12);
    kn_trainer_free(t);
    kn_module_free(m);
    kn_dataset_free(train);
    kn_dataset_free(val);
    kn_scope_end();
}

Test(train, max_steps_and_bad_config)
{
    kn_scope_begin();
    kn_dataset *train = blobs(100, 1);
    kn_module *m = small_model(0, false);
    kn_train_config c = small_config();
    c.max_steps = 5;
    kn_trainer *t = kn_trainer_new(m, &c);
    kn_train_summary s;
    cr_assert_eq(kn_trainer_run(t, train, NULL, NULL, &s), KN_OK, "%s", kn_last_error());
    cr_assert_eq(s.steps, 5);
    cr_assert_eq(s.epochs_completed, 1);
    kn_trainer_free(t);
    c.batch_size = 0;
    cr_assert_null(kn_trainer_new(m, &c));
    cr_assert(strstr(kn_last_error(), "batch_size") != NULL, "%s", kn_last_error());
    kn_module_free(m);
    kn_dataset_free(train);
    kn_scope_end();
}

Test(train, losses_from_labels)
{
    kn_scope_begin();
    kn_tensor *logits = kn_from_floats((float[]){1, 2, 0, 0}, KN_SHAPE(2, 2));
    kn_tensor *labels = kn_from_int64s((int64_t[]){1, 0}, KN_SHAPE(2));
    /* torch: F.mse_loss(logits, one_hot) = (1 + 1 + 1 + 0) / 4 */
    KN_ASSERT_CLOSE(kn_train_loss(KN_LOSS_MSE, logits, labels, 0), {0.75f});
    /* torch: F.cross_entropy(torch.tensor([[1.,2],[0,0]]), torch.tensor([1,0])) */
    KN_ASSERT_CLOSE(kn_train_loss(KN_LOSS_CROSS_ENTROPY, logits, labels, 0), {0.5032044053f});
    /* torch: F.binary_cross_entropy_with_logits(logits, one_hot) */
    KN_ASSERT_CLOSE(kn_train_loss(KN_LOSS_BCE_WITH_LOGITS, logits, labels, 0), {0.7066210508f});
    kn_tensor *bad = kn_from_int64s((int64_t[]){1, 5}, KN_SHAPE(2));
    cr_assert_null(kn_train_loss(KN_LOSS_MSE, logits, bad, 0));
    cr_assert(strstr(kn_last_error(), "label 5") != NULL, "%s", kn_last_error());
    kn_scope_end();
}

/* ---- tasks: the labels each loss takes and the metrics of each task ------------------------- */

/* A model whose outputs are its inputs ([N, K] stays [N, K]): the metrics of given outputs. */
static kn_module *identity_model(void)
{
    kn_module *m = kn_sequential_new();
    cr_assert_eq(kn_sequential_append(m, kn_flatten_new(1, -1)), KN_OK, "%s", kn_last_error());
    return m;
}

static kn_eval_result evaluate_outputs(kn_tensor *outputs, kn_tensor *labels, kn_loss_kind loss,
                                       kn_task task)
{
    kn_dataset *ds = kn_dataset_new(outputs, labels);
    cr_assert_not_null(ds, "%s", kn_last_error());
    kn_module *m = identity_model();
    kn_train_config c = kn_train_config_defaults();
    c.loss = loss;
    c.task = task;
    c.eval_batch_size = 3; /* several batches: the metrics accumulate */
    kn_eval_result r;
    cr_assert_eq(kn_evaluate_config(m, ds, &c, &r), KN_OK, "%s", kn_last_error());
    kn_module_free(m);
    kn_dataset_free(ds);
    return r;
}

/* scikit-learn 1.2: accuracy_score, precision_recall_fscore_support(average="macro") over the
 * classes seen (class 3 is neither a label nor a prediction), confusion_matrix. */
Test(train_tasks, classification_metrics_match_scikit_learn)
{
    kn_scope_begin();
    kn_tensor *out = kn_from_floats((float[]){2, 1, 0, -1, 0, 3, 1, 0, 1, 0, 2, 0, 0, 0, 5, 1,
                                              4, 0, 0, 0,  0, 2, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0},
                                    KN_SHAPE(8, 4));
    kn_tensor *y = kn_from_int64s((int64_t[]){0, 1, 2, 2, 1, 1, 0, 0}, KN_SHAPE(8));
    kn_eval_result r = evaluate_outputs(out, y, KN_LOSS_CROSS_ENTROPY, KN_TASK_AUTO);
    cr_assert_eq(r.task, KN_TASK_CLASSIFICATION);
    cr_assert_float_eq(r.accuracy, 0.75, 1e-12);
    cr_assert_float_eq(r.precision, 0.7777777777777777, 1e-12);
    cr_assert_float_eq(r.recall, 0.7777777777777777, 1e-12);
    cr_assert_float_eq(r.f1, 0.7555555555555555, 1e-12);
    cr_assert(isnan(r.mse) && isnan(r.r2));
    cr_assert_eq(r.classes, 4);
    const int64_t want[16] = {2, 0, 1, 0, 1, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0};
    cr_assert_not_null(r.confusion);
    cr_assert_eq(memcmp(r.confusion, want, sizeof want), 0);
    kn_eval_result_clear(&r);
    cr_assert_null(r.confusion);
    /* kn_evaluate gives the numbers without the matrix */
    kn_dataset *ds = kn_dataset_new(out, y);
    kn_module *m = identity_model();
    cr_assert_eq(kn_evaluate(m, ds, KN_LOSS_CROSS_ENTROPY, 5, &r), KN_OK, "%s", kn_last_error());
    cr_assert_null(r.confusion);
    cr_assert_float_eq(r.f1, 0.7555555555555555, 1e-12);
    kn_module_free(m);
    kn_dataset_free(ds);
    kn_scope_end();
}

/* scikit-learn: mean_squared_error, mean_absolute_error, r2_score (uniform average). */
Test(train_tasks, regression_metrics_match_scikit_learn)
{
    kn_scope_begin();
    kn_tensor *out = kn_from_floats((float[]){1, 10, 2, 20, 3, 30, 4, 40, 5, 50}, KN_SHAPE(5, 2));
    kn_tensor *t =
        kn_from_floats((float[]){1.5f, 12, 2, 18, 2.5f, 33, 4, 40, 6, 45}, KN_SHAPE(5, 2));
    kn_eval_result r = evaluate_outputs(out, t, KN_LOSS_MSE, KN_TASK_AUTO);
    cr_assert_eq(r.task, KN_TASK_REGRESSION);
    cr_assert_float_eq(r.mse, 4.35, 1e-9);
    cr_assert_float_eq(r.mae, 1.4, 1e-9);
    cr_assert_float_eq(r.r2, 0.9173983385823521, 1e-9);
    cr_assert_float_eq(r.loss, 4.35, 1e-6); /* the mse loss is the mse */
    cr_assert(isnan(r.accuracy));
    /* a constant target predicted exactly scores 1, otherwise 0 (scikit-learn) */
    kn_eval_result c =
        evaluate_outputs(kn_full(KN_SHAPE(4, 1), 3, KN_FLOAT32),
                         kn_full(KN_SHAPE(4), 3, KN_FLOAT32), KN_LOSS_L1, KN_TASK_REGRESSION);
    cr_assert_float_eq(c.r2, 1, 0);
    cr_assert_float_eq(c.mae, 0, 0);
    kn_scope_end();
}

/* scikit-learn: f1_score(average=None / "macro") and accuracy_score (exact match) of
 * predictions output > 0. */
Test(train_tasks, multilabel_metrics_match_scikit_learn)
{
    kn_scope_begin();
    kn_tensor *out =
        kn_from_floats((float[]){1, -1, 2, -1, -2, 3, 0.5f, 0.5f, -1, -3, 1, 1}, KN_SHAPE(4, 3));
    kn_tensor *t = kn_from_floats((float[]){1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0}, KN_SHAPE(4, 3));
    kn_eval_result r = evaluate_outputs(out, t, KN_LOSS_BCE_WITH_LOGITS, KN_TASK_AUTO);
    cr_assert_eq(r.task, KN_TASK_MULTILABEL);
    cr_assert_float_eq(r.accuracy, 0.5, 1e-12);
    cr_assert_float_eq(r.f1, 0.8222222222222223, 1e-12);
    cr_assert_eq(r.classes, 3);
    cr_assert_not_null(r.label_f1);
    cr_assert_float_eq(r.label_f1[0], 1, 1e-12);
    cr_assert_float_eq(r.label_f1[1], 2.0 / 3, 1e-12);
    cr_assert_float_eq(r.label_f1[2], 0.8, 1e-12);
    kn_eval_result_clear(&r);
    kn_scope_end();
}

/* One logit and bce on class labels: binary classification, a 2 x 2 confusion matrix. */
Test(train_tasks, binary_one_logit)
{
    kn_scope_begin();
    kn_tensor *out = kn_from_floats((float[]){2, -1, 0.5f, -3, 1}, KN_SHAPE(5, 1));
    kn_tensor *y = kn_from_int64s((int64_t[]){1, 0, 0, 0, 1}, KN_SHAPE(5));
    /* torch: F.binary_cross_entropy_with_logits(out, y.float().unsqueeze(1)) */
    KN_ASSERT_CLOSE(kn_train_loss(KN_LOSS_BCE_WITH_LOGITS, out, y, 0), {0.3552231193f});
    kn_eval_result r = evaluate_outputs(out, y, KN_LOSS_BCE_WITH_LOGITS, KN_TASK_CLASSIFICATION);
    cr_assert_eq(r.classes, 2);
    cr_assert_float_eq(r.accuracy, 0.8, 1e-12);
    const int64_t want[4] = {2, 1, 0, 2};
    cr_assert_eq(memcmp(r.confusion, want, sizeof want), 0);
    kn_eval_result_clear(&r);
    cr_assert_null(kn_train_loss(KN_LOSS_BCE_WITH_LOGITS, out,
                                 kn_from_int64s((int64_t[]){1, 0, 2, 0, 1}, KN_SHAPE(5)), 0));
    cr_assert(strstr(kn_last_error(), "label 2 out of range for 2 classes"), "%s", kn_last_error());
    kn_scope_end();
}

Test(train_tasks, loss_refuses_the_wrong_labels)
{
    kn_scope_begin();
    kn_tensor *out = kn_zeros(KN_SHAPE(3, 2), KN_FLOAT32);
    cr_assert_null(kn_train_loss(KN_LOSS_CROSS_ENTROPY, out, kn_zeros(KN_SHAPE(3), KN_FLOAT32), 0));
    cr_assert(strstr(kn_last_error(), "cross_entropy takes int64 class labels, got float32"), "%s",
              kn_last_error());
    cr_assert_null(kn_train_loss(KN_LOSS_HUBER, out, kn_zeros(KN_SHAPE(3), KN_INT64), 0));
    cr_assert(strstr(kn_last_error(), "huber compares float targets"), "%s", kn_last_error());
    /* [N] targets for [N, 1] outputs are a column, never broadcast to [N, N] */
    kn_tensor *col = kn_from_floats((float[]){1, 2, 3}, KN_SHAPE(3, 1));
    KN_ASSERT_CLOSE(
        kn_train_loss(KN_LOSS_MSE, col, kn_from_floats((float[]){1, 2, 5}, KN_SHAPE(3)), 0),
        {4.0f / 3});
    kn_scope_end();
}

/* Linear regression learned with each regression loss: R^2 close to 1. */
Test(train_tasks, regression_learns)
{
    kn_scope_begin();
    int64_t n = 256;
    kn_generator *gen = kn_generator_new(11);
    kn_tensor *x = kn_randn(KN_SHAPE(n, 2), gen);
    kn_tensor *y = kn_zeros(KN_SHAPE(n, 1), KN_FLOAT32);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = kn_data_f32(x) + 2 * i;
        kn_data_f32(y)[i] = 150 + 30 * xi[0] - 20 * xi[1]; /* diabetes-like scale */
    }
    kn_dataset *ds = kn_dataset_new(x, y);
    cr_assert_not_null(ds, "%s", kn_last_error());
    const kn_loss_kind losses[] = {KN_LOSS_MSE, KN_LOSS_L1, KN_LOSS_SMOOTH_L1, KN_LOSS_HUBER};
    for (size_t k = 0; k < sizeof losses / sizeof losses[0]; k++) {
        kn_module *m = kn_sequential_new();
        cr_assert_eq(kn_sequential_append(m, kn_linear_new(2, 1, true, gen)), KN_OK);
        kn_train_config c = kn_train_config_defaults();
        c.loss = losses[k];
        c.optimizer.lr = 5;
        c.lr_schedule.kind = KN_LR_COSINE;
        c.lr_schedule.t_max = 600;
        c.batch_size = 32;
        c.max_steps = 600;
        kn_trainer *t = kn_trainer_new(m, &c);
        cr_assert_not_null(t, "%s", kn_last_error());
        kn_train_summary s;
        cr_assert_eq(kn_trainer_run(t, ds, ds, NULL, &s), KN_OK, "%s", kn_last_error());
        cr_assert_eq(s.final_validation.task, KN_TASK_REGRESSION);
        cr_assert_gt(s.final_validation.r2, 0.99, "%s: r2 %g", kn_loss_name(losses[k]),
                     s.final_validation.r2);
        cr_assert_lt(s.final_validation.mae, 3, "%s: mae %g", kn_loss_name(losses[k]),
                     s.final_validation.mae);
        kn_trainer_free(t);
        kn_module_free(m);
    }
    kn_generator_free(gen);
    kn_dataset_free(ds);
    kn_scope_end();
}

/* Three independent labels x_k > 0 learned with bce_with_logits and a pos_weight. */
static kn_status copy_label_f1(void *context, const kn_eval_result *r)
{
    double *f1 = context;
    for (int64_t k = 0; k < r->classes && r->label_f1; k++) f1[k] = r->label_f1[k];
    return KN_OK;
}

Test(train_tasks, multilabel_learns)
{
    kn_scope_begin();
    int64_t n = 300;
    kn_generator *gen = kn_generator_new(5);
    kn_tensor *x = kn_randn(KN_SHAPE(n, 3), gen);
    kn_tensor *y = kn_zeros(KN_SHAPE(n, 3), KN_FLOAT32);
    for (int64_t i = 0; i < n * 3; i++) kn_data_f32(y)[i] = kn_data_f32(x)[i] > 0.3f;
    kn_dataset *ds = kn_dataset_new(x, y);
    kn_module *m = kn_sequential_new();
    kn_sequential_append(m, kn_linear_new(3, 3, true, gen));
    kn_train_config c = kn_train_config_defaults();
    c.loss = KN_LOSS_BCE_WITH_LOGITS;
    const float pw[3] = {1.5f, 1.5f, 1.5f};
    c.pos_weight = pw;
    c.pos_weight_count = 3;
    c.optimizer.lr = 0.1;
    c.epochs = 30;
    kn_trainer *t = kn_trainer_new(m, &c);
    double f1[3] = {0};
    kn_train_callbacks cb = {.context = f1, .on_eval = copy_label_f1};
    kn_train_summary s;
    cr_assert_eq(kn_trainer_run(t, ds, ds, &cb, &s), KN_OK, "%s", kn_last_error());
    cr_assert_eq(s.final_validation.task, KN_TASK_MULTILABEL);
    cr_assert_null(s.final_validation.label_f1); /* the summary keeps numbers only */
    cr_assert_gt(s.final_validation.accuracy, 0.85, "exact match %g", s.final_validation.accuracy);
    for (int k = 0; k < 3; k++) cr_assert_gt(f1[k], 0.9, "label %d f1 %g", k, f1[k]);
    kn_trainer_free(t);
    kn_module_free(m);
    kn_generator_free(gen);
    kn_dataset_free(ds);
    kn_scope_end();
}

Test(train_tasks, config_and_data_are_checked)
{
    kn_scope_begin();
    kn_module *m = small_model(1, false);
    kn_train_config c = small_config();
    c.huber_delta = 0;
    cr_assert_null(kn_trainer_new(m, &c));
    cr_assert(strstr(kn_last_error(), "huber delta"), "%s", kn_last_error());
    c = small_config();
    const float w[3] = {1, -1, 1};
    c.class_weight = w;
    c.class_weight_count = 3;
    cr_assert_null(kn_trainer_new(m, &c));
    cr_assert(strstr(kn_last_error(), "class_weight[1]"), "%s", kn_last_error());
    c = small_config();
    kn_trainer *t = kn_trainer_new(m, &c);
    kn_dataset *unlabeled = kn_dataset_new(kn_zeros(KN_SHAPE(8, 4), KN_FLOAT32), NULL);
    cr_assert_neq(kn_trainer_run(t, unlabeled, NULL, NULL, NULL), KN_OK);
    cr_assert(strstr(kn_last_error(), "training data has no labels"), "%s", kn_last_error());
    kn_trainer_free(t);
    kn_dataset_free(unlabeled);
    kn_module_free(m);
    kn_scope_end();
}

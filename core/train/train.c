/*
 * train.c — the training loop shared by the CLI and the server: batches in an order
 * fixed by (seed, epoch), forward, loss, backward, optional clipping, an optimizer step
 * at the scheduled learning rate, evaluation, early stopping and the callbacks. Also
 * kn_evaluate and kn_train_loss. Checkpoints are in checkpoint.c; on a CUDA device the
 * staging of batches and the captured step are in train_cuda.c.
 */
#include "kn_internal.h"
#include "kn_train_internal.h"
#include "kn_layer.h" /* the rows' flags: which modules draw random numbers */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

kn_train_config kn_train_config_defaults(void)
{
    kn_train_config c;
    memset(&c, 0, sizeof c);
    c.loss = KN_LOSS_CROSS_ENTROPY;
    c.optimizer = kn_optimizer_defaults(KN_OPTIM_ADAM);
    c.lr_schedule.kind = KN_LR_CONSTANT;
    c.lr_schedule.gamma = 0.1;
    c.lr_schedule.warmup_start_factor = 1.0 / 3.0; /* torch's LinearLR default */
    c.batch_size = 64;
    c.epochs = 1;
    c.shuffle = true;
    c.eval_batch_size = 1000;
    return c;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static kn_status check_config(const kn_train_config *c)
{
    if (c->batch_size <= 0)
        return kn__error(KN_ERR_VALUE, "batch_size: expected a positive integer, got %lld",
                         (long long)c->batch_size);
    if (c->epochs < 0 || (c->epochs == 0 && c->max_steps <= 0))
        return kn__error(KN_ERR_VALUE,
                         "epochs: expected a positive integer when max_steps "
                         "is 0, got %lld",
                         (long long)c->epochs);
    if (c->max_steps < 0)
        return kn__error(KN_ERR_VALUE, "max_steps: expected >= 0, got %lld",
                         (long long)c->max_steps);
    if (c->eval_every_steps < 0 || c->eval_batch_size < 0 || c->checkpoint_every_steps < 0)
        return kn__error(KN_ERR_VALUE, "eval_every_steps, eval_batch_size and "
                                       "checkpoint_every_steps must be >= 0");
    if (!(c->grad_clip_norm >= 0))
        return kn__error(KN_ERR_VALUE, "grad_clip_norm: expected >= 0, got %g", c->grad_clip_norm);
    if (c->early_stopping_patience < 0 || !(c->early_stopping_min_delta >= 0))
        return kn__error(KN_ERR_VALUE, "early stopping: patience and min_delta must be >= 0");
    if (!(c->label_smoothing >= 0 && c->label_smoothing <= 1))
        return kn__error(KN_ERR_VALUE, "label_smoothing: expected a number in [0, 1], got %g",
                         c->label_smoothing);
    return KN_OK;
}

kn_trainer *kn_trainer_new(kn_module *model, const kn_train_config *config)
{
    if (!model || !config)
        return kn__error_null(KN_ERR_NULL, "kn_trainer_new: model and config are required");
    if (check_config(config) != KN_OK) return NULL;
    kn_trainer *t = calloc(1, sizeof *t);
    if (!t) return kn__error_null(KN_ERR_MEMORY, "kn_trainer_new: out of memory");
    t->model = model;
    t->config = *config;
    if (t->config.eval_batch_size == 0) t->config.eval_batch_size = 1000;
    t->best_val_loss = INFINITY;
    kn_named_tensor *named = kn_module_parameters(model, &t->n_params);
    if (!named && t->n_params > 0) {
        free(t);
        return kn__error_null(KN_ERR_MEMORY, "kn_trainer_new: out of memory");
    }
    t->params = calloc(t->n_params > 0 ? (size_t)t->n_params : 1, sizeof *t->params);
    if (!t->params) {
        free(named);
        free(t);
        return kn__error_null(KN_ERR_MEMORY, "kn_trainer_new: out of memory");
    }
    for (int i = 0; i < t->n_params; i++) t->params[i] = named[i].tensor;
    free(named);
    t->optimizer = kn_optimizer_new(t->params, t->n_params, config->optimizer);
    if (!t->optimizer) {
        free(t->params);
        free(t);
        return NULL;
    }
    return t;
}

void kn_trainer_free(kn_trainer *t)
{
    if (!t) return;
    kn_optimizer_free(t->optimizer);
    free(t->params);
    free(t);
}

kn_module *kn_trainer_model(kn_trainer *t)
{
    return t ? t->model : NULL;
}
kn_optimizer *kn_trainer_optimizer(kn_trainer *t)
{
    return t ? t->optimizer : NULL;
}
int64_t kn_trainer_step(const kn_trainer *t)
{
    return t ? t->step : 0;
}

/* ---- losses ------------------------------------------------------------------------ */

/* One-hot float targets [N, C] for the losses that compare with probabilities. */
static kn_tensor *one_hot(kn_tensor *labels, const kn_tensor *logits)
{
    if (logits->ndim != 2)
        return kn__error_null(KN_ERR_SHAPE,
                              "loss: expected logits [N, C] for one-hot "
                              "targets, got %s",
                              kn__shape(logits));
    int64_t n = logits->shape[0], c = logits->shape[1];
    if (labels->ndim != 1 || labels->shape[0] != n)
        return kn__error_null(KN_ERR_SHAPE, "loss: expected labels [%lld], got %s", (long long)n,
                              kn__shape(labels));
    kn_tensor *cpu_labels = kn_contiguous(kn_to(labels, kn_cpu()));
    kn_tensor *target = kn_zeros(KN_SHAPE(n, c), KN_FLOAT32);
    if (!cpu_labels || !target) return NULL;
    const int64_t *l = kn_data_i64(cpu_labels);
    float *dst = kn_data_f32(target);
    for (int64_t i = 0; i < n; i++) {
        if (l[i] < 0 || l[i] >= c)
            return kn__error_null(KN_ERR_VALUE,
                                  "loss: label %lld of sample %lld is outside "
                                  "[0, %lld)",
                                  (long long)l[i], (long long)i, (long long)c);
        dst[i * c + l[i]] = 1.0f;
    }
    return kn_to(target, logits->device);
}

kn_tensor *kn_train_loss(kn_loss_kind loss, kn_tensor *logits, kn_tensor *labels,
                         double label_smoothing)
{
    if (!logits || !labels) return NULL;
    switch (loss) {
    /* the classes are the outputs' last dim: [N, C] against [N], or a sequence model's
     * [N, T, V] against labels per position [N, T] (issue 12) */
    case KN_LOSS_CROSS_ENTROPY:
        return kn_sequence_cross_entropy(logits, labels, KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX,
                                         label_smoothing);
    case KN_LOSS_NLL:
        return kn_sequence_nll_loss(logits, labels, KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX);
    case KN_LOSS_MSE:
        return kn_mse_loss(logits, one_hot(labels, logits), KN_REDUCTION_MEAN);
    case KN_LOSS_BCE_WITH_LOGITS:
        return kn_binary_cross_entropy_with_logits(logits, one_hot(labels, logits),
                                                   KN_REDUCTION_MEAN);
    }
    return kn__error_null(KN_ERR_VALUE, "loss: unknown kind %d", (int)loss);
}

/* ---- evaluation -------------------------------------------------------------------- */

static kn_device model_device(kn_module *model)
{
    int n = 0;
    kn_named_tensor *p = kn_module_state_dict(model, &n);
    kn_device d = n > 0 && p ? p[0].tensor->device : kn_cpu();
    free(p);
    return d;
}

/* What one evaluation batch adds up: the loss weighted by the labels it counted, and
 * the predictions (the logits' argmax on the last dim) that equal their label. */
typedef struct eval_sums {
    double loss;
    int64_t labels, correct;
} eval_sums;

/* The batch's counted labels: all of them, but the positions ignore_index marks (labels
 * per position, issue 12), which the mean loss and the accuracy skip. */
static kn_status eval_batch(kn_module *model, kn_tensor *x, kn_tensor *y, kn_loss_kind loss,
                            eval_sums *sums)
{
    kn_tensor *logits = kn_module_forward(model, x);
    kn_tensor *l = kn_train_loss(loss, logits, y, 0.0);
    if (!l) return kn_last_status() != KN_OK ? kn_last_status() : KN_ERR_NULL;
    kn_tensor *yc = kn_contiguous(kn_to(y, kn_cpu()));
    if (!yc) return kn_last_status();
    const int64_t *t = kn_data_i64(yc);
    int64_t n = kn_numel(yc), counted = 0;
    for (int64_t i = 0; i < n; i++) counted += t[i] != KN_DEFAULT_IGNORE_INDEX;
    if (counted > 0) sums->loss += (double)kn_item(l) * (double)counted;
    sums->labels += counted;
    if (logits->ndim == y->ndim + 1) {
        kn_tensor *pred = kn_contiguous(kn_to(kn_argmax(logits, -1, false), kn_cpu()));
        if (!pred) return kn_last_status();
        const int64_t *p = kn_data_i64(pred);
        for (int64_t i = 0; i < n; i++)
            sums->correct += t[i] != KN_DEFAULT_IGNORE_INDEX && p[i] == t[i];
    }
    return KN_OK;
}

kn_status kn_evaluate(kn_module *model, const kn_dataset *ds, kn_loss_kind loss, int64_t batch_size,
                      kn_eval_result *result)
{
    if (!model || !ds || !result)
        return kn__error(KN_ERR_NULL, "kn_evaluate: model, dataset and result are required");
    if (ds->count <= 0) return kn__error(KN_ERR_VALUE, "evaluate: the dataset is empty");
    if (batch_size <= 0) batch_size = 1000;
    bool was_training = model->training;
    kn_module_train(model, false);
    kn_no_grad_begin();
    kn_device device = model_device(model);
    eval_sums sums = {0};
    kn_status st = KN_OK;
    kn_scope_begin();
    kn_tensor *order = kn_epoch_order(ds->count, 0, 0, false);
    int64_t batches = kn_batches_per_epoch(ds->count, batch_size, false);
    if (!order) st = kn_last_status();
    for (int64_t b = 0; st == KN_OK && b < batches; b++) {
        kn_scope_begin();
        kn_tensor *x = NULL, *y = NULL;
        st = kn_dataset_batch(ds, order, b, batch_size, &x, &y);
        if (st == KN_OK && device.type != KN_DEVICE_CPU) {
            x = kn_to(x, device);
            y = kn_to(y, device);
        }
        if (st == KN_OK) st = eval_batch(model, x, y, loss, &sums);
        kn_scope_end();
    }
    kn_scope_end();
    kn_no_grad_end();
    kn_module_train(model, was_training);
    if (st != KN_OK) return st;
    memset(result, 0, sizeof *result);
    result->count = ds->count;
    /* nothing but ignored positions: NaN, as torch's mean over no targets */
    result->loss = sums.labels > 0 ? sums.loss / (double)sums.labels : NAN;
    result->accuracy = sums.labels > 0 ? (double)sums.correct / (double)sums.labels : NAN;
    return KN_OK;
}

/* ---- the loop ---------------------------------------------------------------------- */

typedef struct run_state {
    kn_trainer *t;
    const kn_dataset *train, *validation;
    const kn_train_callbacks *cb;
    kn_train_summary *summary;
    kn_device device;
    kn__train_cuda *cuda; /* CUDA: pinned staging and the graph (NULL: batches via kn_to) */
    int64_t bpe, total_steps;
    double train_seconds; /* batches only: evaluation and callbacks excluded */
    int64_t samples;
    int64_t last_eval_step;
    bool stop_early;
} run_state;

/* Prefixes the current error with the step; the message is copied first because
 * kn__error writes the very buffer kn_last_error() points to. */
static kn_status step_error(kn_status st, int64_t step_no)
{
    char message[512];
    snprintf(message, sizeof message, "%s", kn_last_error());
    return kn__error(st != KN_OK ? st : KN_ERR_NULL, "step %lld: %s", (long long)step_no, message);
}

static const char *non_finite_name(double v)
{
    return isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
}

/* The batch on the model's device: through the staging ring on CUDA, else kn_to. */
static kn_status load_batch(run_state *rs, kn_tensor *order, kn_tensor **x, kn_tensor **y)
{
    kn_trainer *t = rs->t;
    if (rs->cuda) return kn__train_cuda_batch(rs->cuda, order, t->epoch, t->batch_in_epoch, x, y);
    kn_status st =
        kn_dataset_batch(rs->train, order, t->batch_in_epoch, t->config.batch_size, x, y);
    if (st == KN_OK && rs->device.type != KN_DEVICE_CPU) {
        *x = kn_to(*x, rs->device);
        *y = kn_to(*y, rs->device);
        if (!*x || !*y) st = kn_last_status();
    }
    return st;
}

/* One batch: zero_grad, forward, loss, backward, clip, step (on CUDA with cuda_graph,
 * forward, loss and backward may be one replay of a captured graph instead). *skipped
 * when the batch was not finite and the config asks to skip such steps. */
static kn_status train_batch(run_state *rs, kn_tensor *order, double *loss_out, bool *skipped)
{
    kn_trainer *t = rs->t;
    const kn_train_config *c = &t->config;
    int64_t step_no = t->step + 1; /* 1-based, as reported */
    *skipped = false;
    kn_optimizer_set_lr(t->optimizer, kn_lr_at(&c->lr_schedule, c->optimizer.lr, t->step));
    kn__graph_step g = {0};
    kn_status st = KN_OK;
    if (rs->cuda &&
        (st = kn__train_cuda_graph_step(rs->cuda, order, t->epoch, t->batch_in_epoch, &g)) != KN_OK)
        return step_error(st, step_no);
    kn_tensor *loss = NULL;
    double value;
    if (g.ran) {
        rs->samples += g.rows;
        value = g.loss;
    } else {
        kn_optimizer_zero_grad(t->optimizer);
        kn_tensor *x = NULL, *y = NULL;
        if ((st = load_batch(rs, order, &x, &y)) != KN_OK) return step_error(st, step_no);
        rs->samples += y->shape[0];
        loss = kn_train_loss(c->loss, kn_module_forward(t->model, x), y, c->label_smoothing);
        if (!loss) return step_error(kn_last_status(), step_no);
        /* the host gathers the next batch while the device computes the loss */
        kn__train_cuda_prefetch(rs->cuda, order, t->epoch, t->batch_in_epoch + 1);
        value = kn_item(loss);
    }
    *loss_out = value;
    if (!isfinite(value)) {
        if (c->skip_non_finite) {
            *skipped = true;
            return KN_OK;
        }
        return kn__error(KN_ERR_VALUE, "step %lld: loss is %s", (long long)step_no,
                         non_finite_name(value));
    }
    if (!g.ran && (st = kn_backward(loss, NULL, false)) != KN_OK) return step_error(st, step_no);
    bool finite;
    double norm = 0;
    if (c->grad_clip_norm > 0) {
        st = kn_clip_grad_norm(t->params, t->n_params, c->grad_clip_norm, &norm);
        if (st != KN_OK) return st;
        finite = isfinite(norm);
    } else {
        /* a replay computed the answer on the device with the loss */
        finite = g.ran ? g.grads_finite : kn_grads_finite(t->params, t->n_params);
    }
    if (!finite) {
        if (c->skip_non_finite) {
            kn_optimizer_zero_grad(t->optimizer);
            *skipped = true;
            return KN_OK;
        }
        return kn__error(KN_ERR_VALUE, "step %lld: gradients are not finite (loss %g)",
                         (long long)step_no, value);
    }
    st = kn_optimizer_step(t->optimizer);
    if (st != KN_OK) return step_error(st, step_no);
    return KN_OK;
}

/* CUDA work is queued: the time the device still needs for the steps counts as training
 * time, so it is waited for before evaluation, a checkpoint or the end of the run. */
static kn_status drain(run_state *rs)
{
    if (rs->device.type != KN_DEVICE_CUDA) return KN_OK;
    double t0 = now_seconds();
    kn_status st = kn_cuda_synchronize(rs->device.index);
    rs->train_seconds += now_seconds() - t0;
    return st;
}

/* Evaluates on the validation set, reports it and updates early stopping. */
static kn_status run_eval(run_state *rs, int64_t epoch)
{
    kn_trainer *t = rs->t;
    kn_eval_result r;
    kn_status st =
        kn_evaluate(t->model, rs->validation, t->config.loss, t->config.eval_batch_size, &r);
    if (st != KN_OK) return st;
    r.step = t->step;
    r.epoch = epoch;
    rs->last_eval_step = t->step;
    rs->summary->has_validation = true;
    rs->summary->final_validation = r;
    if (t->config.early_stopping_patience > 0) {
        if (r.loss < t->best_val_loss - t->config.early_stopping_min_delta) {
            t->best_val_loss = r.loss;
            t->evals_without_improvement = 0;
        } else if (++t->evals_without_improvement >= t->config.early_stopping_patience) {
            rs->stop_early = true;
        }
    }
    if (rs->cb && rs->cb->on_eval) return rs->cb->on_eval(rs->cb->context, &r);
    return KN_OK;
}

static bool planned_done(const run_state *rs)
{
    const kn_trainer *t = rs->t;
    if (t->config.max_steps > 0) return t->step >= t->config.max_steps;
    return t->epoch >= t->config.epochs;
}

/* After a batch: advance the position, then step callback, evaluation, checkpoint. */
static kn_status after_batch(run_state *rs, double loss, bool skipped, double run_start)
{
    kn_trainer *t = rs->t;
    const kn_train_config *c = &t->config;
    int64_t epoch = t->epoch;
    t->step++;
    t->batch_in_epoch++;
    if (skipped) t->skipped_steps++;
    bool epoch_end = t->batch_in_epoch >= rs->bpe;
    kn_step_info info = {
        .step = t->step,
        .total_steps = rs->total_steps,
        .epoch = epoch,
        .batch_in_epoch = t->batch_in_epoch,
        .batches_per_epoch = rs->bpe,
        .loss = loss,
        .lr = kn_optimizer_get_lr(t->optimizer),
        .samples_per_second = rs->train_seconds > 0 ? rs->samples / rs->train_seconds : 0,
        .elapsed_seconds = now_seconds() - run_start,
        .skipped = skipped,
    };
    if (epoch_end) {
        t->epoch++;
        t->batch_in_epoch = 0;
        rs->summary->epochs_completed++;
    }
    kn_status st = KN_OK;
    if (rs->cb && rs->cb->on_step) st = rs->cb->on_step(rs->cb->context, &info);
    bool eval = rs->validation &&
                ((c->eval_every_steps > 0 && t->step % c->eval_every_steps == 0) || epoch_end);
    bool checkpoint = c->checkpoint_every_steps > 0 && t->step % c->checkpoint_every_steps == 0 &&
                      rs->cb && rs->cb->on_checkpoint;
    if (st == KN_OK && (eval || checkpoint)) st = drain(rs);
    if (st == KN_OK && eval) st = run_eval(rs, epoch);
    if (st == KN_OK && checkpoint) st = rs->cb->on_checkpoint(rs->cb->context, t, t->step);
    return st;
}

static kn_status run(kn_trainer *t, const kn_dataset *train, const kn_dataset *validation,
                     const kn_train_callbacks *callbacks, kn_train_summary *summary)
{
    kn_train_summary local;
    if (!summary) summary = &local;
    memset(summary, 0, sizeof *summary);
    if (!t || !train)
        return kn__error(KN_ERR_NULL, "kn_trainer_run: trainer and training data are required");
    const kn_train_config *c = &t->config;
    run_state rs = {.t = t,
                    .train = train,
                    .validation = validation,
                    .cb = callbacks,
                    .summary = summary,
                    .device = model_device(t->model),
                    .last_eval_step = -1};
    rs.bpe = kn_batches_per_epoch(train->count, c->batch_size, c->drop_last);
    if (rs.bpe <= 0)
        return kn__error(KN_ERR_VALUE, "train: %lld samples give no batch of %lld%s",
                         (long long)train->count, (long long)c->batch_size,
                         c->drop_last ? " with drop_last" : "");
    rs.total_steps = c->max_steps > 0 ? c->max_steps : c->epochs * rs.bpe;
    /* a checkpoint taken at the end of an epoch resumes at the next one */
    if (t->batch_in_epoch >= rs.bpe) {
        t->epoch++;
        t->batch_in_epoch = 0;
    }
    kn_module_train(t->model, true);
    rs.cuda = kn__train_cuda_new(t, train, rs.device, rs.bpe, summary->cuda_note,
                                 sizeof summary->cuda_note);
    double run_start = now_seconds();
    kn_status st = KN_OK;
    while (st == KN_OK && !rs.stop_early && !planned_done(&rs)) {
        kn_scope_begin();
        kn_tensor *order = kn_epoch_order(train->count, c->seed, t->epoch, c->shuffle);
        if (!order) st = kn_last_status() ? kn_last_status() : KN_ERR_NULL;
        int64_t epoch = t->epoch;
        while (st == KN_OK && !rs.stop_early && !planned_done(&rs) && t->epoch == epoch) {
            double loss = 0;
            bool skipped = false;
            double t0 = now_seconds();
            kn_scope_begin();
            st = train_batch(&rs, order, &loss, &skipped);
            kn_scope_end();
            rs.train_seconds += now_seconds() - t0;
            if (st == KN_OK) st = after_batch(&rs, loss, skipped, run_start);
        }
        kn_scope_end();
    }
    kn_status drained = drain(&rs);
    if (st == KN_OK) st = drained;
    kn__train_cuda_free(rs.cuda, summary->cuda_note, sizeof summary->cuda_note,
                        &summary->graph_steps);
    /* the final evaluation, unless the last step was just evaluated */
    if (st == KN_OK && validation && rs.last_eval_step != t->step)
        st = run_eval(&rs, t->epoch > 0 && t->batch_in_epoch == 0 ? t->epoch - 1 : t->epoch);
    summary->steps = t->step;
    summary->train_seconds = rs.train_seconds;
    summary->samples_per_second = rs.train_seconds > 0 ? rs.samples / rs.train_seconds : 0;
    summary->stopped_early = rs.stop_early;
    summary->skipped_steps = t->skipped_steps;
    return st;
}

/* Points the dropout modules of m that have no generator at gen, recording them in lent
 * (up to capacity). Returns how many there are (capacity 0: only counts them). */
static int lend_generator(kn_module *m, kn_generator *gen, kn_module **lent, int capacity, int n)
{
    if (!m) return n;
    bool draws = m->kind == KN_MODULE_DROPOUT || (m->layer->flags & KN_LAYER_RANDOM);
    if (draws && !m->dropout_generator) {
        if (n < capacity) {
            m->dropout_generator = gen;
            lent[n] = m;
        }
        n++;
    }
    for (int i = 0; i < m->n_children; i++)
        n = lend_generator(m->children[i], gen, lent, capacity, n);
    return n;
}

kn_status kn_trainer_run(kn_trainer *t, const kn_dataset *train, const kn_dataset *validation,
                         const kn_train_callbacks *callbacks, kn_train_summary *summary)
{
    if (!t || !t->config.generator) return run(t, train, validation, callbacks, summary);
    /* the run's dropout draws from the run's generator, and only while it runs: the
     * model may outlive the generator */
    int n = lend_generator(t->model, NULL, NULL, 0, 0);
    kn_module **lent = calloc((size_t)n + 1, sizeof *lent);
    if (!lent) return kn__error(KN_ERR_MEMORY, "kn_trainer_run: out of memory");
    n = lend_generator(t->model, t->config.generator, lent, n, 0);
    kn_status st = run(t, train, validation, callbacks, summary);
    for (int i = 0; i < n; i++) lent[i]->dropout_generator = NULL;
    free(lent);
    return st;
}

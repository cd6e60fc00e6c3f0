/*
 * train.c — the training loop shared by the CLI and the server: batches in an order
 * fixed by (seed, epoch), forward, loss, backward, optional clipping, an optimizer step
 * at the scheduled learning rate, evaluation, early stopping and the callbacks. Also the
 * loss of a batch as the task takes its labels (kn_train_loss_config). Evaluation and its
 * metrics are in evaluate.c, checkpoints in checkpoint.c; on a CUDA device the staging of
 * batches and the captured step are in train_cuda.c.
 */
#include "kn_internal.h"
#include "kn_dist.h"
#include "kn_layer.h"
#include "kn_train_internal.h"

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
    c.smooth_l1_beta = 1.0; /* torch's defaults */
    c.huber_delta = 1.0;
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
    if (!(c->bucket_cap_mb >= 0))
        return kn__error(KN_ERR_VALUE, "bucket_cap_mb: expected >= 0, got %g", c->bucket_cap_mb);
    if (c->dist && c->batch_size % kn_dist_world_size(c->dist) != 0)
        return kn__error(KN_ERR_VALUE,
                         "batch_size: the global batch of %lld does not divide by the %d "
                         "processes (each takes batch_size / processes samples a step)",
                         (long long)c->batch_size, kn_dist_world_size(c->dist));
    if ((unsigned)c->loss > KN_LOSS_HUBER || (unsigned)c->task > KN_TASK_MULTILABEL)
        return kn__error(KN_ERR_VALUE, "loss %d or task %d is not one of the kinds", (int)c->loss,
                         (int)c->task);
    if (!(c->smooth_l1_beta >= 0) || !isfinite(c->smooth_l1_beta))
        return kn__error(KN_ERR_VALUE, "smooth_l1 beta: expected a finite number >= 0, got %g",
                         c->smooth_l1_beta);
    if (!(c->huber_delta > 0) || !isfinite(c->huber_delta))
        return kn__error(KN_ERR_VALUE, "huber delta: expected a finite number > 0, got %g",
                         c->huber_delta);
    const struct {
        const char *name;
        const float *values;
        int64_t count;
    } weights[2] = {{"class_weight", c->class_weight, c->class_weight_count},
                    {"pos_weight", c->pos_weight, c->pos_weight_count}};
    for (int k = 0; k < 2; k++) {
        if (weights[k].count < 0 || (weights[k].count > 0 && !weights[k].values))
            return kn__error(KN_ERR_VALUE, "%s: %lld values but no array", weights[k].name,
                             (long long)weights[k].count);
        for (int64_t i = 0; weights[k].values && i < weights[k].count; i++)
            if (!(weights[k].values[i] >= 0) || !isfinite(weights[k].values[i]))
                return kn__error(KN_ERR_VALUE, "%s[%lld]: expected a finite number >= 0, got %g",
                                 weights[k].name, (long long)i, (double)weights[k].values[i]);
    }
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

kn_task kn_task_of_loss(kn_loss_kind loss)
{
    switch (loss) {
    case KN_LOSS_CROSS_ENTROPY:
    case KN_LOSS_NLL:
        return KN_TASK_CLASSIFICATION;
    case KN_LOSS_BCE_WITH_LOGITS:
        return KN_TASK_MULTILABEL;
    case KN_LOSS_MSE:
    case KN_LOSS_L1:
    case KN_LOSS_SMOOTH_L1:
    case KN_LOSS_HUBER:
        break;
    }
    return KN_TASK_REGRESSION;
}

const char *kn_task_name(kn_task task)
{
    switch (task) {
    case KN_TASK_CLASSIFICATION:
        return "classification";
    case KN_TASK_REGRESSION:
        return "regression";
    case KN_TASK_MULTILABEL:
        return "multilabel";
    case KN_TASK_AUTO:
        break;
    }
    return "auto";
}

const char *kn_loss_name(kn_loss_kind loss)
{
    static const char *const names[] = {"cross_entropy", "nll",  "mse", "bce_with_logits", "l1",
                                        "smooth_l1",     "huber"};
    return (unsigned)loss < sizeof names / sizeof names[0] ? names[loss] : "unknown";
}

/* Float targets [N, K] for the losses that compare values: one-hot rows for [N, C] outputs,
 * or the 0/1 labels themselves for one output (binary bce). */
static kn_tensor *class_targets(kn_tensor *labels, const kn_tensor *logits)
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
    int64_t classes = c == 1 ? 2 : c; /* one output: a binary label, 0 or 1 */
    for (int64_t i = 0; i < n; i++) {
        if (l[i] < 0 || l[i] >= classes)
            return kn__error_null(KN_ERR_VALUE, "loss: label %lld out of range for %lld classes",
                                  (long long)l[i], (long long)classes);
        if (c == 1)
            dst[i] = (float)l[i];
        else
            dst[i * c + l[i]] = 1.0f;
    }
    return logits->device.type == KN_DEVICE_CPU ? target : kn_to(target, logits->device);
}

/* A borrowed float array as a tensor on device (NULL when there is none). */
static kn_tensor *weights_on(const float *values, int64_t count, kn_device device, bool *failed)
{
    *failed = false;
    if (!values || count <= 0) return NULL;
    kn_tensor *t = kn_from_floats(values, &count, 1);
    if (t && device.type != KN_DEVICE_CPU) t = kn_to(t, device);
    *failed = t == NULL;
    return t;
}

kn_tensor *kn_train_loss_config(const kn_train_config *c, kn_tensor *outputs, kn_tensor *labels)
{
    if (!c) return kn__error_null(KN_ERR_NULL, "loss: config is NULL");
    if (!outputs || !labels) return NULL; /* the error of the op that failed stands */
    bool failed = false;
    if (labels->dtype == KN_INT64) {
        switch (c->loss) {
        case KN_LOSS_CROSS_ENTROPY:
        case KN_LOSS_NLL: {
            kn_tensor *w =
                weights_on(c->class_weight, c->class_weight_count, outputs->device, &failed);
            if (failed) return NULL;
            /* the classes are the outputs' last dim: [N, C] against [N], or a sequence
             * model's [N, T, V] against labels per position [N, T] (issue 12) */
            return c->loss == KN_LOSS_CROSS_ENTROPY
                       ? kn_sequence_cross_entropy_weighted(outputs, labels, w, KN_REDUCTION_MEAN,
                                                            KN_DEFAULT_IGNORE_INDEX,
                                                            c->label_smoothing)
                       : kn_sequence_nll_loss_weighted(outputs, labels, w, KN_REDUCTION_MEAN,
                                                       KN_DEFAULT_IGNORE_INDEX);
        }
        case KN_LOSS_MSE:
        case KN_LOSS_BCE_WITH_LOGITS:
            labels = class_targets(labels, outputs);
            if (!labels) return NULL;
            break;
        default:
            return kn__error_null(KN_ERR_VALUE,
                                  "loss: %s compares float targets, not class labels (int64)",
                                  kn_loss_name(c->loss));
        }
    } else if (c->loss == KN_LOSS_CROSS_ENTROPY || c->loss == KN_LOSS_NLL) {
        return kn__error_null(KN_ERR_DTYPE, "loss: %s takes int64 class labels, got %s targets %s",
                              kn_loss_name(c->loss), kn_dtype_name(labels->dtype),
                              kn__shape(labels));
    } else if (labels->ndim == 1 && outputs->ndim == 2 && outputs->shape[1] == 1 &&
               labels->shape[0] == outputs->shape[0]) {
        /* targets [N] for outputs [N, 1]: never broadcast to [N, N] */
        labels = kn_reshape(labels, KN_SHAPE(labels->shape[0], 1));
    }
    switch (c->loss) {
    case KN_LOSS_MSE:
        return kn_mse_loss(outputs, labels, KN_REDUCTION_MEAN);
    case KN_LOSS_L1:
        return kn_l1_loss(outputs, labels, KN_REDUCTION_MEAN);
    case KN_LOSS_SMOOTH_L1:
        return kn_smooth_l1_loss(outputs, labels, KN_REDUCTION_MEAN, c->smooth_l1_beta);
    case KN_LOSS_HUBER:
        return kn_huber_loss(outputs, labels, KN_REDUCTION_MEAN, c->huber_delta);
    case KN_LOSS_BCE_WITH_LOGITS: {
        kn_tensor *pw = weights_on(c->pos_weight, c->pos_weight_count, outputs->device, &failed);
        if (failed) return NULL;
        return kn_binary_cross_entropy_with_logits_pos_weight(outputs, labels, pw,
                                                              KN_REDUCTION_MEAN);
    }
    default:
        break;
    }
    return kn__error_null(KN_ERR_VALUE, "loss: unknown kind %d", (int)c->loss);
}

kn_tensor *kn_train_loss(kn_loss_kind loss, kn_tensor *logits, kn_tensor *labels,
                         double label_smoothing)
{
    kn_train_config c = kn_train_config_defaults();
    c.loss = loss;
    c.label_smoothing = label_smoothing;
    return kn_train_loss_config(&c, logits, labels);
}

kn_device kn__module_device(kn_module *model)
{
    int n = 0;
    kn_named_tensor *p = kn_module_state_dict(model, &n);
    kn_device d = n > 0 && p ? p[0].tensor->device : kn_cpu();
    free(p);
    return d;
}

/* ---- the loop ---------------------------------------------------------------------- */

typedef struct run_state {
    kn_trainer *t;
    const kn_dataset *train, *validation;
    const kn_train_callbacks *cb;
    kn_train_summary *summary;
    kn_device device;
    kn__train_cuda *cuda;  /* CUDA: pinned staging and the graph (NULL: batches via kn_to) */
    kn__ddp *ddp;          /* distributed runs (dist_ddp.c), else NULL */
    bool has_validation;   /* rank 0's, in a distributed run: only rank 0 evaluates */
    int64_t batch_size;    /* this rank's: the global batch / world size */
    kn_status stop_status; /* distributed: the stop a callback asked for, agreed later */
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
    kn_status st = kn_dataset_batch(rs->train, order, t->batch_in_epoch, rs->batch_size, x, y);
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
    int64_t rows = 0;
    if (g.ran) {
        rs->samples += g.rows;
        value = g.loss;
    } else {
        kn_optimizer_zero_grad(t->optimizer);
        kn_tensor *x = NULL, *y = NULL;
        if ((st = load_batch(rs, order, &x, &y)) != KN_OK) return step_error(st, step_no);
        rows = y->shape[0];
        rs->samples += rows;
        loss = kn_train_loss_config(c, kn_module_forward(t->model, x), y);
        if (!loss) return step_error(kn_last_status(), step_no);
        /* the host gathers the next batch while the device computes the loss */
        kn__train_cuda_prefetch(rs->cuda, order, t->epoch, t->batch_in_epoch + 1);
        value = kn_item(loss);
    }
    if (rs->ddp) { /* backward with the ranks' gradients averaged; the global batch's loss */
        double sps = rs->train_seconds > 0 ? (double)rs->samples / rs->train_seconds : 0;
        if ((st = kn__ddp_backward(rs->ddp, loss, value, rows, sps, &value)) != KN_OK)
            return step_error(st, step_no);
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
    if (!g.ran && !rs->ddp && (st = kn_backward(loss, NULL, false)) != KN_OK)
        return step_error(st, step_no);
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

/* What a callback's status does: a stop (any status but KN_OK) ends one process's run at
 * once; a distributed rank asks the others, and every rank stops after the step whose
 * all-reduce carried the request (kn__ddp_stop_agreed). */
static kn_status callback_status(run_state *rs, kn_status st)
{
    if (st == KN_OK) return KN_OK;
    if (!rs->ddp) {
        rs->summary->stopped = true;
        return st;
    }
    if (rs->stop_status == KN_OK) {
        rs->stop_status = st;
        kn__ddp_request_stop(rs->ddp);
    }
    return KN_OK;
}

/* Evaluates on the validation set, reports it and updates early stopping. */
static kn_status run_eval(run_state *rs, int64_t epoch)
{
    kn_trainer *t = rs->t;
    kn_eval_result r;
    if (rs->ddp && kn__ddp_rank(rs->ddp) != 0) { /* rank 0 evaluates and decides */
        rs->last_eval_step = t->step;
        return t->config.early_stopping_patience > 0 ? kn__ddp_share_flag(rs->ddp, &rs->stop_early)
                                                     : KN_OK;
    }
    kn_status st = kn_evaluate_config(t->model, rs->validation, &t->config, &r);
    if (st != KN_OK) return st;
    r.step = t->step;
    r.epoch = epoch;
    rs->last_eval_step = t->step;
    rs->summary->has_validation = true;
    rs->summary->final_validation = r;
    /* the arrays are the callback's to copy: the summary keeps the numbers */
    rs->summary->final_validation.confusion = NULL;
    rs->summary->final_validation.label_f1 = NULL;
    if (t->config.early_stopping_patience > 0) {
        if (r.loss < t->best_val_loss - t->config.early_stopping_min_delta) {
            t->best_val_loss = r.loss;
            t->evals_without_improvement = 0;
        } else if (++t->evals_without_improvement >= t->config.early_stopping_patience) {
            rs->stop_early = true;
        }
        if (rs->ddp) st = kn__ddp_share_flag(rs->ddp, &rs->stop_early);
    }
    if (st == KN_OK && rs->cb && rs->cb->on_eval)
        st = callback_status(rs, rs->cb->on_eval(rs->cb->context, &r));
    kn_eval_result_clear(&r);
    return st;
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
        .world_size = rs->ddp ? kn__ddp_world(rs->ddp) : 1,
    };
    if (rs->ddp) { /* the global batch's rate: the sum of the ranks' */
        info.rank_samples_per_second = kn__ddp_rank_samples_per_second(rs->ddp);
        info.communication_seconds = kn__ddp_communication_seconds(rs->ddp);
        info.samples_per_second = 0;
        for (int r = 0; r < info.world_size; r++)
            info.samples_per_second += info.rank_samples_per_second[r];
    }
    if (epoch_end) {
        t->epoch++;
        t->batch_in_epoch = 0;
        rs->summary->epochs_completed++;
    }
    kn_status st = KN_OK;
    if (rs->cb && rs->cb->on_step)
        st = callback_status(rs, rs->cb->on_step(rs->cb->context, &info));
    if (st == KN_OK && rs->ddp && kn__ddp_stop_agreed(rs->ddp)) {
        rs->summary->stopped = true; /* every rank, after this same step */
        st = rs->stop_status != KN_OK
                 ? rs->stop_status
                 : kn__error(KN_ERR_VALUE, "stopped at step %lld: another rank asked to stop",
                             (long long)t->step);
    }
    bool eval = rs->has_validation &&
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
    if (!train->labels || (validation && !validation->labels))
        return kn__error(KN_ERR_VALUE, "train: the %s data has no labels",
                         train->labels ? "validation" : "training");
    const kn_train_config *c = &t->config;
    run_state rs = {.t = t,
                    .train = train,
                    .validation = validation,
                    .cb = callbacks,
                    .summary = summary,
                    .device = kn__module_device(t->model),
                    .last_eval_step = -1};
    /* a distributed rank takes its shard of each epoch, batch_size / world size at a time */
    int world = kn_dist_world_size(c->dist);
    rs.batch_size = c->batch_size / world;
    int64_t count = c->drop_last ? train->count / world : (train->count + world - 1) / world;
    rs.bpe = kn_batches_per_epoch(count, rs.batch_size, c->drop_last);
    if (rs.bpe <= 0)
        return kn__error(KN_ERR_VALUE, "train: %lld samples give no batch of %lld%s",
                         (long long)train->count, (long long)c->batch_size,
                         c->drop_last ? " with drop_last" : "");
    rs.has_validation = validation != NULL;
    if (c->dist && !(rs.ddp = kn__ddp_new(t, &rs.has_validation))) return kn_last_status();
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
        if (rs.ddp) order = kn__ddp_shard(rs.ddp, order, c->drop_last);
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
    if (st == KN_OK && rs.has_validation && rs.last_eval_step != t->step)
        st = run_eval(&rs, t->epoch > 0 && t->batch_in_epoch == 0 ? t->epoch - 1 : t->epoch);
    summary->steps = t->step;
    summary->train_seconds = rs.train_seconds;
    summary->samples_per_second = rs.train_seconds > 0 ? rs.samples / rs.train_seconds : 0;
    summary->stopped_early = rs.stop_early;
    summary->skipped_steps = t->skipped_steps;
    summary->world_size = world;
    if (rs.ddp) {
        summary->communication_seconds = kn__ddp_communication_seconds(rs.ddp);
        const double *sps = kn__ddp_rank_samples_per_second(rs.ddp);
        summary->samples_per_second = 0;
        for (int r = 0; r < world; r++) summary->samples_per_second += sps[r];
        kn__ddp_free(rs.ddp);
    }
    return st;
}

/* Points the modules of m that draw random numbers (KN_LAYER_RANDOM: dropout, and the
 * recurrent layers' dropout between layers) and have no generator at gen, recording them
 * in lent (up to capacity). Returns how many there are (capacity 0: only counts them). */
static int lend_generator(kn_module *m, kn_generator *gen, kn_module **lent, int capacity, int n)
{
    if (!m) return n;
    if ((m->layer->flags & KN_LAYER_RANDOM) && !m->dropout_generator) {
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

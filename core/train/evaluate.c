/*
 * evaluate.c — a model evaluated over a dataset, in eval mode and without grad: the mean
 * loss (as the trainer computes it) and the metrics of the task, accumulated batch by
 * batch on the host from the outputs and the labels.
 *
 *   classification: a confusion matrix (prediction: the argmax, or output > 0 for one
 *     output with bce), from which accuracy and scikit-learn's macro precision, recall and
 *     F1 (over the classes seen in labels or predictions) follow. With labels per position
 *     ([N, T] against outputs [N, T, V], issue 12) every position is a prediction, and the
 *     positions labelled ignore_index (-100) count for nothing: neither in the metrics nor
 *     in the mean loss, which is weighted by the labels each batch counted.
 *   regression: per target column the squared and absolute errors and the running mean
 *     and sum of squares of the targets (Welford's update, stable for targets far from
 *     zero), giving MSE, MAE and R^2 averaged over the columns.
 *   multilabel: per label the true/false positives and false negatives (output > 0),
 *     and the count of samples with every label right (exact match).
 */
#include "kn_internal.h"
#include "kn_train_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct metrics {
    kn_task task;
    int64_t k;          /* classification: classes; regression, multilabel: columns */
    int64_t count;      /* samples seen (classification: labels counted) */
    int64_t correct;    /* classification: right predictions */
    int64_t *confusion; /* k x k (NULL beyond 65536 classes) */
    /* regression: per column */
    double *sq_err, *abs_err, *mean, *m2;
    /* multilabel: per label, and samples with every label right */
    int64_t *tp, *fp, *fn;
    int64_t exact;
} metrics;

static void metrics_free(metrics *m)
{
    free(m->confusion);
    free(m->sq_err);
    free(m->abs_err);
    free(m->mean);
    free(m->m2);
    free(m->tp);
    free(m->fp);
    free(m->fn);
}

/* Sized on the first batch, from the outputs' width. */
static kn_status metrics_init(metrics *m, int64_t k)
{
    m->k = k;
    size_t n = (size_t)(k > 0 ? k : 1);
    bool ok = true;
    if (m->task == KN_TASK_CLASSIFICATION) {
        if (k > 65536) /* a confusion matrix of k^2 counts would not be worth its memory */
            return KN_OK;
        ok = (m->confusion = calloc(n * n, sizeof *m->confusion)) != NULL;
    } else if (m->task == KN_TASK_REGRESSION) {
        ok = (m->sq_err = calloc(n, sizeof(double))) && (m->abs_err = calloc(n, sizeof(double))) &&
             (m->mean = calloc(n, sizeof(double))) && (m->m2 = calloc(n, sizeof(double)));
    } else {
        ok = (m->tp = calloc(n, sizeof(int64_t))) && (m->fp = calloc(n, sizeof(int64_t))) &&
             (m->fn = calloc(n, sizeof(int64_t)));
    }
    return ok ? KN_OK
              : kn__error(KN_ERR_MEMORY, "evaluate: out of memory for %lld columns", (long long)k);
}

/* One batch: outputs [n, k] (float, cpu, contiguous), labels int64 [n] or float [n, k];
 * class labels equal to ignore_index are skipped (labels per position, flattened). */
static kn_status metrics_add(metrics *m, const float *out, const void *labels, int64_t n, int64_t k)
{
    if (m->task == KN_TASK_CLASSIFICATION) {
        const int64_t *y = labels;
        int64_t classes = k == 1 ? 2 : k;
        if (m->k == 0 && metrics_init(m, classes) != KN_OK) return kn_last_status();
        for (int64_t i = 0; i < n; i++) {
            if (y[i] == KN_DEFAULT_IGNORE_INDEX) continue;
            const float *row = out + i * k;
            int64_t best = 0;
            if (k == 1) {
                best = row[0] > 0.f;
            } else {
                for (int64_t j = 1; j < k; j++)
                    if (row[j] > row[best]) best = j;
            }
            if (y[i] < 0 || y[i] >= classes)
                return kn__error(KN_ERR_VALUE, "evaluate: label %lld out of range for %lld classes",
                                 (long long)y[i], (long long)classes);
            m->correct += best == y[i];
            if (m->confusion) m->confusion[y[i] * classes + best]++;
            m->count++;
        }
        return KN_OK;
    }
    if (m->k == 0 && metrics_init(m, k) != KN_OK) return kn_last_status();
    const float *t = labels;
    for (int64_t i = 0; i < n; i++) {
        bool all_right = true;
        double seen = (double)(m->count + 1);
        for (int64_t j = 0; j < k; j++) {
            double o = out[i * k + j], y = t[i * k + j];
            if (m->task == KN_TASK_REGRESSION) {
                m->sq_err[j] += (o - y) * (o - y);
                m->abs_err[j] += fabs(o - y);
                double delta = y - m->mean[j];
                m->mean[j] += delta / seen;
                m->m2[j] += delta * (y - m->mean[j]);
            } else {
                bool predicted = o > 0, positive = y > 0.5;
                m->tp[j] += predicted && positive;
                m->fp[j] += predicted && !positive;
                m->fn[j] += !predicted && positive;
                all_right = all_right && predicted == positive;
            }
        }
        m->exact += all_right;
        m->count++;
    }
    return KN_OK;
}

static double ratio(double a, double b)
{
    return b > 0 ? a / b : 0.0; /* scikit-learn's zero_division: 0 */
}

/* The numbers of a finished accumulation into r; the arrays move to r when wanted. */
static kn_status metrics_finish(metrics *m, kn_eval_result *r, bool keep_arrays)
{
    r->task = m->task;
    r->accuracy = r->precision = r->recall = r->f1 = NAN;
    r->mse = r->mae = r->r2 = NAN;
    r->classes = m->k;
    int64_t k = m->k;
    double n = (double)m->count;
    /* no label counted (every position ignored): NaN, as torch's mean over no targets */
    if (m->task == KN_TASK_CLASSIFICATION) r->accuracy = n > 0 ? (double)m->correct / n : NAN;
    if (m->task == KN_TASK_CLASSIFICATION && m->confusion) {
        int64_t seen = 0;
        double p_sum = 0, r_sum = 0, f_sum = 0;
        for (int64_t c = 0; c < k; c++) {
            int64_t tp = m->confusion[c * k + c], support = 0, predicted = 0;
            for (int64_t j = 0; j < k; j++) {
                support += m->confusion[c * k + j];
                predicted += m->confusion[j * k + c];
            }
            if (support == 0 && predicted == 0) continue; /* neither label nor prediction */
            seen++;
            p_sum += ratio((double)tp, (double)predicted);
            r_sum += ratio((double)tp, (double)support);
            f_sum += ratio(2.0 * (double)tp, (double)(support + predicted));
        }
        r->precision = ratio(p_sum, (double)seen);
        r->recall = ratio(r_sum, (double)seen);
        r->f1 = ratio(f_sum, (double)seen);
        if (keep_arrays) {
            r->confusion = m->confusion;
            m->confusion = NULL;
        }
    } else if (m->task == KN_TASK_REGRESSION && k > 0) {
        double mse = 0, mae = 0, r2 = 0;
        for (int64_t j = 0; j < k; j++) {
            mse += m->sq_err[j] / n;
            mae += m->abs_err[j] / n;
            /* scikit-learn: a constant target scores 1 when predicted exactly, else 0 */
            r2 += m->m2[j] > 0 ? 1.0 - m->sq_err[j] / m->m2[j] : (m->sq_err[j] == 0 ? 1.0 : 0.0);
        }
        r->mse = mse / (double)k;
        r->mae = mae / (double)k;
        r->r2 = r2 / (double)k;
    } else if (m->task == KN_TASK_MULTILABEL && k > 0) {
        double *f1 = malloc(sizeof *f1 * (size_t)k);
        if (!f1) return kn__error(KN_ERR_MEMORY, "evaluate: out of memory");
        double sum = 0;
        for (int64_t j = 0; j < k; j++) {
            f1[j] = ratio(2.0 * (double)m->tp[j], (double)(2 * m->tp[j] + m->fp[j] + m->fn[j]));
            sum += f1[j];
        }
        r->accuracy = ratio((double)m->exact, n);
        r->f1 = sum / (double)k;
        if (keep_arrays)
            r->label_f1 = f1;
        else
            free(f1);
    }
    return KN_OK;
}

void kn_eval_result_clear(kn_eval_result *r)
{
    if (!r) return;
    free(r->confusion);
    free(r->label_f1);
    r->confusion = NULL;
    r->label_f1 = NULL;
}

/* The task whose metrics a dataset gets: the config's, or from its labels and loss. */
static kn_task resolve_task(kn_task task, kn_loss_kind loss, const kn_tensor *labels)
{
    if (task != KN_TASK_AUTO) return task;
    if (labels->dtype == KN_INT64) return KN_TASK_CLASSIFICATION;
    return loss == KN_LOSS_BCE_WITH_LOGITS ? KN_TASK_MULTILABEL : KN_TASK_REGRESSION;
}

/* What the loss of a batch is weighted by: its samples, or for class labels the labels
 * it counted (all but the positions ignore_index marks, which the mean loss skips). */
static int64_t counted_labels(const kn_tensor *labels_cpu)
{
    if (labels_cpu->dtype != KN_INT64) return labels_cpu->shape[0];
    const int64_t *t = kn_data_i64((kn_tensor *)labels_cpu);
    int64_t n = kn_numel(labels_cpu), counted = 0;
    for (int64_t i = 0; i < n; i++) counted += t[i] != KN_DEFAULT_IGNORE_INDEX;
    return counted;
}

/* Sums the loss (weighted by the batch's counted labels, added to *weight) and adds the
 * batch to the metrics. */
static kn_status eval_batch(kn_module *model, const kn_train_config *c, kn_tensor *x, kn_tensor *y,
                            double *loss_sum, int64_t *weight, metrics *m)
{
    kn_tensor *outputs = kn_module_forward(model, x);
    kn_tensor *l = kn_train_loss_config(c, outputs, y);
    if (!l) return kn_last_status() != KN_OK ? kn_last_status() : KN_ERR_NULL;
    kn_tensor *t = kn_contiguous(kn_to(y, kn_cpu()));
    if (!t) return kn_last_status();
    int64_t n = y->shape[0], counted = counted_labels(t);
    if (counted > 0) *loss_sum += (double)kn_item(l) * (double)counted;
    *weight += counted;
    /* class labels per position: outputs [N, T, ..., V] are numel(labels) rows of V */
    bool per_position = m->task == KN_TASK_CLASSIFICATION && t->dtype == KN_INT64 && y->ndim > 1 &&
                        outputs->ndim == y->ndim + 1;
    if (outputs->ndim != 2 && !per_position)
        return KN_OK; /* metrics are for [N, K] outputs; the loss counts */
    kn_tensor *o = kn_contiguous(kn_to(outputs, kn_cpu()));
    if (!o) return kn_last_status();
    int64_t k = outputs->shape[outputs->ndim - 1];
    if (per_position) n = kn_numel(t);
    if (m->task != KN_TASK_CLASSIFICATION && kn_numel(t) != n * k)
        return kn__error(KN_ERR_SHAPE, "evaluate: targets %s do not match outputs %s", kn__shape(y),
                         kn__shape(outputs));
    if (m->task == KN_TASK_CLASSIFICATION && t->dtype != KN_INT64)
        return kn__error(KN_ERR_DTYPE, "evaluate: classification needs int64 labels, got %s",
                         kn_dtype_name(t->dtype));
    if (m->task != KN_TASK_CLASSIFICATION && t->dtype != KN_FLOAT32)
        return kn__error(KN_ERR_DTYPE, "evaluate: %s needs float targets, got %s",
                         kn_task_name(m->task), kn_dtype_name(t->dtype));
    return metrics_add(m, kn_data_f32(o), kn__data_ptr(t), n, k);
}

static kn_status evaluate(kn_module *model, const kn_dataset *ds, const kn_train_config *config,
                          kn_eval_result *result, bool keep_arrays)
{
    if (!model || !ds || !result || !config)
        return kn__error(KN_ERR_NULL, "kn_evaluate: model, dataset and result are required");
    if (ds->count <= 0) return kn__error(KN_ERR_VALUE, "evaluate: the dataset is empty");
    if (!ds->labels) return kn__error(KN_ERR_VALUE, "evaluate: the dataset has no labels");
    int64_t batch_size = config->eval_batch_size > 0 ? config->eval_batch_size : 1000;
    bool was_training = model->training;
    kn_module_train(model, false);
    kn_no_grad_begin();
    kn_device device = kn__module_device(model);
    double loss_sum = 0;
    int64_t weight = 0;
    metrics m = {.task = resolve_task(config->task, config->loss, ds->labels)};
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
        if (st == KN_OK) st = eval_batch(model, config, x, y, &loss_sum, &weight, &m);
        kn_scope_end();
    }
    kn_scope_end();
    kn_no_grad_end();
    kn_module_train(model, was_training);
    memset(result, 0, sizeof *result);
    if (st == KN_OK) {
        result->count = ds->count;
        /* nothing but ignored positions: NaN, as torch's mean over no targets */
        result->loss = weight > 0 ? loss_sum / (double)weight : NAN;
        st = metrics_finish(&m, result, keep_arrays);
    }
    metrics_free(&m);
    return st;
}

kn_status kn_evaluate_config(kn_module *model, const kn_dataset *ds, const kn_train_config *config,
                             kn_eval_result *result)
{
    return evaluate(model, ds, config, result, true);
}

kn_status kn_evaluate(kn_module *model, const kn_dataset *ds, kn_loss_kind loss, int64_t batch_size,
                      kn_eval_result *result)
{
    kn_train_config c = kn_train_config_defaults();
    c.loss = loss;
    c.eval_batch_size = batch_size;
    return evaluate(model, ds, &c, result, false);
}

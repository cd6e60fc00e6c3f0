/*
 * train_cuda.c — the CUDA side of a training run (kn_train_internal.h): batches staged
 * in page-locked host buffers and copied without waiting, and the captured training
 * step (config.cuda_graph) replayed as one CUDA graph launch.
 *
 * Staging. Two page-locked buffers take turns. A batch is gathered into one on the host,
 * copied to the device on its stream (cudaMemcpyAsync returns at once from pinned
 * memory) and an event recorded after the copy; before the host gathers into that
 * buffer again it waits for the event. So the host gathers batch k+1 (prefetch) while
 * the device still runs step k.
 *
 * The captured step. After two eager steps of full batches (the caching allocator and
 * cuBLAS are warm, the kernels loaded), the next full batch is captured: zero_grad (so
 * backward writes the gradients instead of adding to them), the batch copied into two
 * device tensors that the graph reads at every replay, then on the capture stream:
 * forward, loss, backward, a flag whose value is non-finite exactly when a gradient is,
 * and copies of the loss and the flag to a pinned result buffer. The optimizer step is
 * not in the graph: it runs eagerly after the host has read the loss (a few fused
 * kernels), so the learning rate of a schedule, Adam's step count and bias corrections,
 * clipping and the skip of non-finite steps work exactly as in eager steps. Per replay
 * the host copies the staged batch into the graph's inputs, launches, gathers the next
 * batch, then waits for the result buffer's event.
 *
 * What stays eager: partial batches (another shape), evaluation and checkpoints (they
 * never enter this file), models with layers whose step needs the host (dropout with
 * p > 0 draws its mask on the cpu; batch norm counts batches on the cpu; embedding
 * checks indices on the host), the mse / bce losses (their one-hot targets are built
 * on the cpu), a batch whose labels are out of range (the eager step reports it) or
 * have positions to ignore (the replay's loss would count them), and
 * everything after a capture failure (one line on stderr, then eager to the end).
 *
 * Memory: the graph's pool (kernels/cuda/graph.cu) keeps every block the captured step
 * used for as long as the graph lives. The gradients made during the capture are kept
 * here too; before each replay every parameter's grad is set back to them (an eager step
 * in between, e.g. the partial batch, gives parameters gradients of its own), so the
 * eager optimizer step after a replay reads what the replay wrote.
 */
#include "kn_cuda.h"
#include "kn_internal.h"
#include "kn_layer.h"
#include "kn_train_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STAGING_SLOTS 2
#define WARMUP_STEPS 2 /* eager full-batch steps before the capture */

typedef struct staging_slot {
    void *x;                    /* pinned: batch_size x row_bytes of inputs (any dtype) */
    int64_t *y;                 /* pinned: batch_size x label_row labels */
    void *event;                /* recorded after the copies that read this slot */
    bool pending;               /* event recorded since the last wait */
    int64_t epoch, batch, rows; /* what it holds; batch -1: nothing */
} staging_slot;

typedef enum { GRAPH_OFF, GRAPH_WARMING, GRAPH_READY, GRAPH_FAILED } graph_state;

struct kn__train_cuda {
    kn_trainer *t;
    const kn_dataset *train;
    kn_device device;
    const kn_cuda_host *h;
    int64_t batch_size, bpe;
    size_t row_bytes;  /* one sample's inputs (float32 or int64) */
    int64_t label_row; /* one sample's labels: 1, or T for labels per position */
    staging_slot slots[STAGING_SLOTS];
    int last_slot;
    /* the graph */
    graph_state state;
    char note[320]; /* why off or failed, or what was captured */
    int64_t warm_steps, replays;
    void *pool, *exec, *result_event;
    float *result;          /* pinned: loss, gradient flag */
    kn_tensor *x_in, *y_in; /* the graph's inputs (device), owned */
    kn_tensor **grads;      /* per parameter: the gradient the graph writes (owned refs) */
    int64_t classes;        /* the logits' classes (last dim): labels are checked against it */
    bool with_flag;         /* the graph computes the gradient flag (no clipping) */
};

/* ---- which runs can be captured -------------------------------------------------------- */

static void graph_off(kn__train_cuda *tc, const char *why)
{
    tc->state = GRAPH_OFF;
    snprintf(tc->note, sizeof tc->note, "not captured: %s", why);
}

static void decide_graph(kn__train_cuda *tc)
{
    const kn_train_config *c = &tc->t->config;
    tc->state = GRAPH_WARMING;
    if (!c->cuda_graph) {
        tc->state = GRAPH_OFF;
        snprintf(tc->note, sizeof tc->note, "pinned staging; no graph (cuda_graph is off)");
        return;
    }
    /* each layer's row says whether its step can be captured (kn_layer.h) */
    const char *why = kn_layer_host_bound(tc->t->model);
    if (why) return graph_off(tc, why);
    if (c->loss != KN_LOSS_CROSS_ENTROPY && c->loss != KN_LOSS_NLL)
        return graph_off(tc, "mse and bce_with_logits build their one-hot targets on the cpu");
    /* one full batch must come at least WARMUP_STEPS + 1 times */
    if (tc->train->count < tc->batch_size) return graph_off(tc, "no full batch");
    tc->grads = calloc((size_t)(tc->t->n_params > 0 ? tc->t->n_params : 1), sizeof *tc->grads);
    if (!tc->grads) return graph_off(tc, "out of host memory");
}

/* One line on stderr for each thing that happens to the graph, never one per step. */
static void graph_log(const kn__train_cuda *tc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void graph_log(const kn__train_cuda *tc, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "kiln: cuda graph (cuda:%d): %s\n", tc->device.index, line);
}

/* ---- lifetime ---------------------------------------------------------------------------- */

static int64_t row_elements(const kn_tensor *t)
{
    int64_t n = 1;
    for (int d = 1; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* The labels of a staged batch are class indices the graph can take: a replay's loss
 * trusts them (ops_loss.c), so a label out of [0, classes), or an ignored position, makes
 * the step eager (which reports the bad label, or skips the ignored position). */
static bool labels_in_range(const kn__train_cuda *tc, const staging_slot *s, int64_t *bad)
{
    for (int64_t j = 0; j < s->rows * tc->label_row; j++)
        if (s->y[j] < 0 || s->y[j] >= tc->classes) {
            *bad = s->y[j];
            return false;
        }
    return true;
}

/* A device tensor of the dataset's sample shape (inputs or labels) for rows samples. */
static kn_tensor *batch_like(const kn_tensor *t, int64_t rows, kn_device device)
{
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = rows;
    return kn__empty_raw(shape, t->ndim, t->dtype, device);
}

static kn_status host_error(const char *message)
{
    return kn__cuda_error(message);
}

kn__train_cuda *kn__train_cuda_new(kn_trainer *t, const kn_dataset *train, kn_device device,
                                   int64_t batches_per_epoch, char *note, size_t note_size)
{
    if (note_size) note[0] = '\0';
    if (device.type != KN_DEVICE_CUDA) return NULL;
    const kn_cuda_host *h = kn__cuda_host(device, "train");
    kn__train_cuda *tc = h ? calloc(1, sizeof *tc) : NULL;
    if (!tc) {
        snprintf(note, note_size, "no pinned staging (%s): batches move with to()",
                 h ? "out of host memory" : kn_last_error());
        kn_clear_error();
        return NULL;
    }
    tc->t = t;
    tc->train = train;
    tc->device = device;
    tc->h = h;
    tc->batch_size = t->config.batch_size;
    tc->row_bytes = (size_t)row_elements(train->inputs) * kn_dtype_size(train->inputs->dtype);
    tc->label_row = row_elements(train->labels);
    tc->bpe = batches_per_epoch;
    tc->last_slot = STAGING_SLOTS - 1;
    /* a batch is never larger than the dataset */
    int64_t rows = tc->batch_size < train->count ? tc->batch_size : train->count;
    const char *error = NULL;
    for (int i = 0; i < STAGING_SLOTS && !error; i++) {
        staging_slot *s = &tc->slots[i];
        s->batch = -1;
        error = h->host_alloc((size_t)rows * tc->row_bytes, &s->x);
        if (!error)
            error = h->host_alloc((size_t)(rows * tc->label_row) * sizeof(int64_t), (void **)&s->y);
        if (!error) error = h->event_new(device.index, &s->event);
    }
    if (error) {
        snprintf(note, note_size, "no pinned staging (%s): batches move with to()", error);
        kn__train_cuda_free(tc, NULL, 0, NULL);
        return NULL;
    }
    decide_graph(tc);
    return tc;
}

/* Drops the graph and what only it uses; the stream must have finished its replays. */
static void drop_graph(kn__train_cuda *tc)
{
    tc->h->graph_free(tc->exec);
    tc->exec = NULL;
    if (tc->grads)
        for (int i = 0; i < tc->t->n_params; i++) {
            kn_release(tc->grads[i]);
            tc->grads[i] = NULL;
        }
    tc->h->pool_free(tc->pool);
    tc->pool = NULL;
}

void kn__train_cuda_free(kn__train_cuda *tc, char *note, size_t note_size, int64_t *graph_steps)
{
    if (!tc) return;
    /* replays, copies and the optimizer's kernels may still be queued */
    kn_status synced = kn_cuda_synchronize(tc->device.index);
    if (synced != KN_OK) kn_clear_error(); /* the run's own status says what went wrong */
    drop_graph(tc);
    for (int i = 0; i < STAGING_SLOTS; i++) {
        tc->h->event_free(tc->slots[i].event);
        tc->h->host_free(tc->slots[i].x);
        tc->h->host_free(tc->slots[i].y);
    }
    tc->h->event_free(tc->result_event);
    tc->h->host_free(tc->result);
    kn_release(tc->x_in);
    kn_release(tc->y_in);
    if (note && note_size) snprintf(note, note_size, "%s", tc->note);
    if (graph_steps) *graph_steps = tc->replays;
    free(tc->grads);
    free(tc);
}

/* ---- staging ------------------------------------------------------------------------------- */

/* The slot that holds batch batch of epoch, gathering it into the next free one when none
 * does (after waiting until the device has read what that slot held). */
static kn_status stage(kn__train_cuda *tc, kn_tensor *order, int64_t epoch, int64_t batch,
                       staging_slot **out)
{
    for (int i = 0; i < STAGING_SLOTS; i++) {
        staging_slot *s = &tc->slots[i];
        if (s->batch == batch && s->epoch == epoch) {
            tc->last_slot = i;
            *out = s;
            return KN_OK;
        }
    }
    int i = (tc->last_slot + 1) % STAGING_SLOTS;
    staging_slot *s = &tc->slots[i];
    if (s->pending) {
        kn_status st = host_error(tc->h->event_wait(s->event));
        if (st != KN_OK) return st;
        s->pending = false;
    }
    s->batch = -1;
    kn_status st =
        kn__dataset_gather(tc->train, order, batch, tc->batch_size, s->x, s->y, &s->rows);
    if (st != KN_OK) return st;
    s->epoch = epoch;
    s->batch = batch;
    tc->last_slot = i;
    *out = s;
    return KN_OK;
}

/* Queues the copies of slot s into x and y and marks the slot busy until they have run. */
static kn_status upload(kn__train_cuda *tc, staging_slot *s, kn_tensor *x, kn_tensor *y)
{
    const kn_cuda_host *h = tc->h;
    int dev = tc->device.index;
    const char *error =
        h->copy_h2d_async(dev, kn__data_ptr(x), s->x, (size_t)s->rows * tc->row_bytes);
    if (!error)
        error = h->copy_h2d_async(dev, kn__data_ptr(y), s->y,
                                  (size_t)(s->rows * tc->label_row) * sizeof(int64_t));
    kn_status st = host_error(error);
    /* even after a failed copy the first one may be queued: the slot is busy until the
     * event passes, or, without an event, until the device is idle */
    kn_status recorded = host_error(h->event_record(dev, s->event));
    if (recorded == KN_OK)
        s->pending = true;
    else if (kn_cuda_synchronize(dev) != KN_OK || st == KN_OK)
        st = kn_last_status();
    return st;
}

kn_status kn__train_cuda_batch(kn__train_cuda *tc, kn_tensor *order, int64_t epoch,
                               int64_t batch_index, kn_tensor **x, kn_tensor **y)
{
    *x = *y = NULL;
    staging_slot *s;
    kn_status st = stage(tc, order, epoch, batch_index, &s);
    if (st != KN_OK) return st;
    kn_tensor *xd = batch_like(tc->train->inputs, s->rows, tc->device);
    kn_tensor *yd = xd ? batch_like(tc->train->labels, s->rows, tc->device) : NULL;
    st = yd ? upload(tc, s, xd, yd) : kn_last_status();
    if (st != KN_OK) {
        kn_release(xd);
        kn_release(yd);
        return st;
    }
    *x = kn__result(xd);
    *y = kn__result(yd);
    return KN_OK;
}

void kn__train_cuda_prefetch(kn__train_cuda *tc, kn_tensor *order, int64_t epoch,
                             int64_t batch_index)
{
    if (!tc || batch_index >= tc->bpe) return;
    staging_slot *s;
    if (stage(tc, order, epoch, batch_index, &s) != KN_OK) kn_clear_error();
}

bool kn__train_cuda_test_fail_capture;

/* ---- capture --------------------------------------------------------------------------------- */

/* Forward, loss, backward, the gradient flag and the copies of the results, recorded on
 * the capture stream; *why is left empty, or says what went wrong. */
static void record_step(kn__train_cuda *tc, const staging_slot *s, char *why, size_t size)
{
    kn_trainer *t = tc->t;
    const kn_train_config *c = &t->config;
    int dev = tc->device.index;
    kn_tensor *logits = kn_module_forward(t->model, tc->x_in);
    float first;
    if (logits && kn__train_cuda_test_fail_capture &&
        kn__copy_to_host(logits, 0, &first, sizeof first) != KN_OK) {
        snprintf(why, size, "%s", kn_last_error());
        return;
    }
    if (logits && logits->ndim != tc->y_in->ndim + 1) {
        snprintf(why, size, "the model's output is %s, not [N, ..., classes] for labels %s",
                 kn__shape(logits), kn__shape(tc->y_in));
        return;
    }
    if (logits) {
        /* the loss trusts the labels while capturing (ops_loss.c): check them here */
        tc->classes = logits->shape[logits->ndim - 1];
        int64_t bad;
        if (!labels_in_range(tc, s, &bad)) {
            snprintf(why, size, "label %lld of the batch is outside [0, %lld)", (long long)bad,
                     (long long)tc->classes);
            return;
        }
    }
    kn_tensor *loss = kn_train_loss(c->loss, logits, tc->y_in, c->label_smoothing);
    kn_tensor *flag = NULL;
    bool ok = loss && kn_backward(loss, NULL, false) == KN_OK;
    if (ok && tc->with_flag) {
        /* sum(g * 0) is 0 for a finite g and NaN otherwise (inf * 0 is NaN), and never
         * overflows as sum(g) could */
        kn_no_grad_begin();
        for (int i = 0; ok && i < t->n_params; i++) {
            kn_tensor *g = t->params[i]->grad;
            if (!g) continue;
            kn_tensor *z = kn_sum_all(kn_mul_scalar(g, 0.0));
            flag = flag && z ? kn_add(flag, z) : z;
            ok = flag != NULL;
        }
        kn_no_grad_end();
    }
    if (!ok) {
        snprintf(why, size, "%s", kn_last_error()[0] ? kn_last_error() : "an op failed");
        return;
    }
    const kn_cuda_host *h = tc->h;
    const char *error = h->copy_d2h_async(dev, &tc->result[0], kn__data_ptr(loss), sizeof(float));
    if (!error && flag)
        error = h->copy_d2h_async(dev, &tc->result[1], kn__data_ptr(flag), sizeof(float));
    if (error) snprintf(why, size, "%s", error);
}

/* Captures the step for staged batch s. false: the graph failed (logged once) and this
 * step, like every later one, runs eagerly. */
static bool capture(kn__train_cuda *tc, staging_slot *s)
{
    kn_trainer *t = tc->t;
    const kn_cuda_host *h = tc->h;
    int dev = tc->device.index;
    char why[400] = "";
    const char *error = NULL;
    if (!tc->result && !(error = h->host_alloc(2 * sizeof(float), (void **)&tc->result)))
        tc->result[0] = tc->result[1] = 0.f; /* the flag stays 0 when no parameter has a grad */
    if (!error && !tc->result_event) error = h->event_new(dev, &tc->result_event);
    if (!error && !tc->pool) error = h->pool_new(dev, &tc->pool);
    if (!error && !tc->x_in) {
        tc->x_in = batch_like(tc->train->inputs, tc->batch_size, tc->device);
        tc->y_in = batch_like(tc->train->labels, tc->batch_size, tc->device);
        if (!tc->x_in || !tc->y_in) error = kn_last_error();
    }
    if (error) snprintf(why, sizeof why, "%s", error);
    /* grads set to none: the captured backward then writes them instead of adding */
    if (!why[0]) kn_optimizer_zero_grad(t->optimizer);
    if (!why[0] && upload(tc, s, tc->x_in, tc->y_in) != KN_OK)
        snprintf(why, sizeof why, "%s", kn_last_error());
    tc->with_flag = !(t->config.grad_clip_norm > 0);
    void *exec = NULL;
    kn_scope_begin();
    if (!why[0]) {
        kn__cuda_capture_mark(true);
        error = h->capture_begin(dev, tc->pool);
        if (error) {
            snprintf(why, sizeof why, "%s", error);
        } else {
            record_step(tc, s, why, sizeof why);
            /* always ended, also after a failure: the first failure is the reason */
            error = h->capture_end(dev, &exec);
            if (error && !why[0]) snprintf(why, sizeof why, "%s", error);
        }
        kn__cuda_capture_mark(false);
    }
    if (!why[0])
        for (int i = 0; i < t->n_params; i++) tc->grads[i] = kn_retain(t->params[i]->grad);
    kn_scope_end(); /* the step's intermediates go back to the pool */
    if (why[0]) {
        h->graph_free(exec);
        /* the failed capture's gradients are pool blocks: freed before the pool is */
        kn_optimizer_zero_grad(t->optimizer);
        h->pool_free(tc->pool); /* nothing ran on it: no replay to wait for */
        tc->pool = NULL;
        kn_release(tc->x_in);
        kn_release(tc->y_in);
        tc->x_in = tc->y_in = NULL;
        tc->state = GRAPH_FAILED;
        snprintf(tc->note, sizeof tc->note, "capture failed at step %lld, eager from there: %.200s",
                 (long long)t->step + 1, why);
        graph_log(tc, "capture failed at step %lld, training eagerly from here: %s",
                  (long long)t->step + 1, why);
        kn_clear_error();
        return false;
    }
    tc->exec = exec;
    tc->state = GRAPH_READY;
    size_t blocks = 0, bytes = 0;
    h->pool_stats(tc->pool, &blocks, &bytes);
    snprintf(tc->note, sizeof tc->note,
             "captured at step %lld (batch %lld); pool %zu blocks, %.1f MiB",
             (long long)t->step + 1, (long long)tc->batch_size, blocks,
             (double)bytes / (1024.0 * 1024.0));
    graph_log(tc,
              "captured forward + loss + backward at step %lld for batches of %lld; "
              "pool %zu blocks, %.1f MiB; full batches replay it from here",
              (long long)t->step + 1, (long long)tc->batch_size, blocks,
              (double)bytes / (1024.0 * 1024.0));
    return true;
}

/* ---- replay ---------------------------------------------------------------------------------- */

kn_status kn__train_cuda_graph_step(kn__train_cuda *tc, kn_tensor *order, int64_t epoch,
                                    int64_t batch_index, kn__graph_step *g)
{
    memset(g, 0, sizeof *g);
    if (tc->state == GRAPH_OFF || tc->state == GRAPH_FAILED) return KN_OK;
    kn_trainer *t = tc->t;
    int64_t start = batch_index * tc->batch_size;
    int64_t rows =
        tc->train->count - start < tc->batch_size ? tc->train->count - start : tc->batch_size;
    if (rows != tc->batch_size) return KN_OK; /* another shape: the partial batch */
    if (tc->state == GRAPH_WARMING && tc->warm_steps < WARMUP_STEPS) {
        tc->warm_steps++; /* this eager step warms the allocator for the capture */
        return KN_OK;
    }
    staging_slot *s;
    kn_status st = stage(tc, order, epoch, batch_index, &s);
    if (st != KN_OK) return st;
    const kn_cuda_host *h = tc->h;
    int dev = tc->device.index;
    if (tc->state == GRAPH_WARMING) {
        if (!capture(tc, s)) return KN_OK; /* eager, from the same staged batch */
    } else {
        int64_t bad;
        if (!labels_in_range(tc, s, &bad)) return KN_OK; /* the eager step reports it */
        /* the parameters' gradients are the graph's again (an eager step may have made
         * its own), so the optimizer reads what the replay writes */
        for (int i = 0; i < t->n_params; i++) {
            kn_tensor *p = t->params[i];
            if (p->grad == tc->grads[i]) continue;
            kn_release(p->grad);
            p->grad = kn_retain(tc->grads[i]);
        }
        if ((st = upload(tc, s, tc->x_in, tc->y_in)) != KN_OK) return st;
    }
    const char *error = h->graph_launch(dev, tc->exec);
    if (!error) error = h->event_record(dev, tc->result_event);
    if (error) return host_error(error);
    /* the host gathers the next batch while the device runs this one */
    kn__train_cuda_prefetch(tc, order, epoch, batch_index + 1);
    if ((st = host_error(h->event_wait(tc->result_event))) != KN_OK) return st;
    g->ran = true;
    g->rows = rows;
    g->loss = tc->result[0];
    g->grads_finite = !tc->with_flag || isfinite(tc->result[1]);
    tc->replays++;
    return KN_OK;
}

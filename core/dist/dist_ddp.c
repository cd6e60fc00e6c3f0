/*
 * dist_ddp.c — data-parallel training as PyTorch's DistributedDataParallel does it, for
 * the trainer (train.c) when its config has a communicator (kn_dist.h):
 *
 *   - at the start every rank takes rank 0's parameters and buffers (a broadcast), so
 *     the replicas begin identical whatever each rank built;
 *   - each epoch's order is the same function of (seed, epoch) everywhere and each rank
 *     takes its shard, as torch's DistributedSampler: the order padded (from its start)
 *     to a multiple of the world size, rank r taking positions r, r + N, r + 2N, ...;
 *     its batches are batch_size / N of them, so global batch b is the 1-process batch b;
 *   - gradients are summed by all-reduce in buckets of about bucket_cap_mb (25 MB; the
 *     first 1 MB, as DDP) over the parameters in reverse order, each bucket started as
 *     soon as the backward pass has finished every gradient in it (kn__set_backward_hooks)
 *     and tested between the backward's nodes so that it progresses meanwhile; at the end
 *     they are divided by N, the mean over the global batch;
 *   - beside them, each step sums a few numbers over the ranks without waiting: the loss
 *     (so every rank reports and judges the same global loss), a stop request (a cancel
 *     or pause seen by any rank stops every rank after the same step) and each rank's
 *     samples/s;
 *   - with sync_batch_norm, batch norm combines its statistics over the ranks (the
 *     forward's mean and variance, the backward's gradient sums), as SyncBatchNorm.
 *
 * Dropout draws from a stream per rank: rank 0 keeps the run's generator as seeded, rank
 * r > 0 reseeds it from (seed, r) at the start of a fresh run; checkpoints keep every
 * rank's state (checkpoint.c).
 */
#include "kn_internal.h"
#include "kn_dist.h"
#include "kn_train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_BUCKET_MB 25.0
#define FIRST_BUCKET_BYTES (1024.0 * 1024.0)
#define EXTRA_LOSS 0
#define EXTRA_ROWS 1
#define EXTRA_STOP 2
#define EXTRA_RANKS 3 /* then one samples/s per rank */

typedef struct bucket {
    int first, count;     /* params order[first .. first + count) (reverse registration order) */
    kn_tensor *flat;      /* float32 [numel] on the device, owned */
    int pending;          /* gradients not yet in flat this step */
    kn_dist_request *req; /* in flight */
    bool done;
} bucket;

typedef struct param_ref {
    const kn_tensor *tensor;
    int index;
} param_ref;

struct kn__ddp {
    kn_trainer *t;
    kn_dist *dist;
    int rank, world;
    kn_device device;
    int n_params;
    int *order;        /* bucket order: parameter indices, last registered first */
    param_ref *lookup; /* parameters sorted by address, for leaf_ready */
    int *bucket_of;    /* parameter -> bucket */
    kn_tensor **views; /* parameter -> its part of its bucket's flat, owned */
    bool *ready;       /* parameter's gradient is in its bucket this step */
    bucket *buckets;
    int n_buckets, next_launch, first_unfinished;
    double *extras; /* EXTRA_RANKS + world */
    int n_extras;
    kn_dist_request *extras_req;
    double *rank_sps;
    bool stop_requested, stop_agreed;
    kn__backward_hooks hooks;
    kn__bn_sync bn_sync;
    double *bn_buffer;
    size_t bn_capacity;
    double comm_seconds; /* waiting for communication: what the overlap did not hide */
    double launched_at;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_refs(const void *a, const void *b)
{
    const kn_tensor *x = ((const param_ref *)a)->tensor, *y = ((const param_ref *)b)->tensor;
    return x < y ? -1 : x > y;
}

static int find_param(const kn__ddp *d, const kn_tensor *leaf)
{
    int lo = 0, hi = d->n_params - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const kn_tensor *p = d->lookup[mid].tensor;
        if (p == leaf) return d->lookup[mid].index;
        if (p < leaf)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* ---- buckets ------------------------------------------------------------------------- */

/* Groups the parameters, last registered first, into buckets of at most cap bytes (the
 * first of at most 1 MB); a parameter larger than the cap is a bucket of its own. */
static kn_status plan_buckets(kn__ddp *d, double cap_mb)
{
    double cap = (cap_mb > 0 ? cap_mb : DEFAULT_BUCKET_MB) * 1024.0 * 1024.0;
    double first_cap = cap < FIRST_BUCKET_BYTES ? cap : FIRST_BUCKET_BYTES;
    int n = d->n_params;
    d->buckets = calloc((size_t)(n ? n : 1), sizeof *d->buckets);
    if (!d->buckets) return kn__error(KN_ERR_MEMORY, "distributed: out of memory");
    double bytes = 0;
    for (int k = 0; k < n; k++) {
        int i = d->order[k];
        double size = (double)kn_numel(d->t->params[i]) * sizeof(float);
        bucket *b = d->n_buckets ? &d->buckets[d->n_buckets - 1] : NULL;
        double limit = d->n_buckets <= 1 ? first_cap : cap;
        if (!b || (b->count > 0 && bytes + size > limit)) {
            b = &d->buckets[d->n_buckets++];
            b->first = k;
            bytes = 0;
        }
        b->count++;
        bytes += size;
        d->bucket_of[i] = (int)(b - d->buckets);
    }
    /* each bucket's flat buffer and each parameter's view of it */
    for (int bi = 0; bi < d->n_buckets; bi++) {
        bucket *b = &d->buckets[bi];
        int64_t numel = 0;
        for (int k = b->first; k < b->first + b->count; k++)
            numel += kn_numel(d->t->params[d->order[k]]);
        b->flat = kn__empty_raw(&numel, 1, KN_FLOAT32, d->device);
        if (!b->flat) return kn_last_status();
        int64_t offset = 0;
        for (int k = b->first; k < b->first + b->count; k++) {
            kn_tensor *p = d->t->params[d->order[k]];
            kn_scope_begin();
            kn_tensor *view =
                kn_view(kn_narrow(b->flat, 0, offset, kn_numel(p)), p->shape, p->ndim);
            d->views[d->order[k]] = kn_retain(view);
            kn_scope_end();
            if (!view) return kn_last_status();
            offset += kn_numel(p);
        }
    }
    return KN_OK;
}

static kn_status launch_ready(kn__ddp *d)
{
    while (d->next_launch < d->n_buckets && d->buckets[d->next_launch].pending == 0) {
        bucket *b = &d->buckets[d->next_launch];
        b->req = kn_dist_allreduce_start(d->dist, b->flat);
        if (!b->req) return kn_last_status();
        b->done = false;
        d->next_launch++;
    }
    return KN_OK;
}

/* A parameter's gradient is complete: into its bucket, and the bucket out when full. */
static kn_status take_gradient(kn__ddp *d, int i)
{
    if (d->ready[i]) return KN_OK;
    d->ready[i] = true;
    kn_tensor *grad = d->t->params[i]->grad;
    kn_status st = grad ? kn_copy_(d->views[i], grad) : kn_fill_(d->views[i], 0);
    if (st != KN_OK) return st;
    d->buckets[d->bucket_of[i]].pending--;
    return launch_ready(d);
}

static kn_status on_leaf_ready(void *context, kn_tensor *leaf)
{
    kn__ddp *d = context;
    int i = find_param(d, leaf);
    return i < 0 ? KN_OK : take_gradient(d, i);
}

/* Between the backward's nodes: MPI moves nonblocking collectives on only inside its
 * calls, so the oldest bucket still in flight is tested (which advances them all). */
static kn_status on_after_node(void *context)
{
    kn__ddp *d = context;
    while (d->first_unfinished < d->next_launch) {
        bucket *b = &d->buckets[d->first_unfinished];
        bool done = false;
        kn_status st = kn_dist_test(b->req, &done);
        if (st != KN_OK) return st;
        if (!done) break;
        b->done = true;
        d->first_unfinished++;
    }
    return KN_OK;
}

/* After the backward: buckets with gradients that never came (parameters the loss does
 * not reach) go out with zeros, every bucket is waited for, and the sums divided by N
 * become the parameters' gradients. */
static kn_status finish_buckets(kn__ddp *d)
{
    kn_status st = KN_OK;
    for (int k = 0; st == KN_OK && k < d->n_params; k++) st = take_gradient(d, d->order[k]);
    double t0 = now_seconds();
    for (int bi = 0; bi < d->n_buckets; bi++) {
        kn_status w = kn_dist_wait(d->buckets[bi].req);
        d->buckets[bi].req = NULL;
        if (st == KN_OK) st = w;
    }
    d->comm_seconds += now_seconds() - t0;
    for (int bi = 0; st == KN_OK && bi < d->n_buckets; bi++)
        st = kn_mul_scalar_(d->buckets[bi].flat, 1.0 / d->world);
    for (int i = 0; st == KN_OK && i < d->n_params; i++) {
        kn_tensor *p = d->t->params[i];
        if (!p->grad) {
            kn_tensor *g = kn__empty_raw(p->shape, p->ndim, KN_FLOAT32, p->device);
            if (!g) return kn_last_status();
            p->grad = g;
        }
        st = kn_copy_(p->grad, d->views[i]);
    }
    return st;
}

static void reset_step(kn__ddp *d)
{
    memset(d->ready, 0, sizeof *d->ready * (size_t)(d->n_params ? d->n_params : 1));
    for (int bi = 0; bi < d->n_buckets; bi++) {
        d->buckets[bi].pending = d->buckets[bi].count;
        d->buckets[bi].req = NULL;
        d->buckets[bi].done = false;
    }
    d->next_launch = d->first_unfinished = 0;
}

kn_status kn__ddp_backward(kn__ddp *d, kn_tensor *loss, double local_loss, int64_t rows,
                           double local_samples_per_second, double *global_loss)
{
    /* the step's numbers travel while the backward runs */
    memset(d->extras, 0, sizeof *d->extras * (size_t)d->n_extras);
    d->extras[EXTRA_LOSS] = local_loss * (double)rows;
    d->extras[EXTRA_ROWS] = (double)rows;
    d->extras[EXTRA_STOP] = d->stop_requested ? 1 : 0;
    d->extras[EXTRA_RANKS + d->rank] = local_samples_per_second;
    d->extras_req = kn_dist_allreduce_f64_start(d->dist, d->extras, d->n_extras);
    if (!d->extras_req) return kn_last_status();
    reset_step(d);
    kn__set_backward_hooks(&d->hooks);
    kn_status st = kn_backward(loss, NULL, false);
    kn__set_backward_hooks(NULL);
    if (st == KN_OK) st = finish_buckets(d);
    double t0 = now_seconds();
    kn_status w = kn_dist_wait(d->extras_req);
    d->comm_seconds += now_seconds() - t0;
    d->extras_req = NULL;
    if (st != KN_OK) return st;
    if (w != KN_OK) return w;
    *global_loss = d->extras[EXTRA_LOSS] / d->extras[EXTRA_ROWS];
    if (d->extras[EXTRA_STOP] > 0) d->stop_agreed = true;
    memcpy(d->rank_sps, d->extras + EXTRA_RANKS, sizeof *d->rank_sps * (size_t)d->world);
    return KN_OK;
}

/* ---- synchronised batch norm (kn__bn_sync) ---------------------------------------------- */

static double *bn_scratch(kn__ddp *d, size_t n)
{
    if (n > d->bn_capacity) {
        double *grown = realloc(d->bn_buffer, n * sizeof *grown);
        if (!grown) return kn__error_null(KN_ERR_MEMORY, "sync batch_norm: out of memory");
        d->bn_buffer = grown;
        d->bn_capacity = n;
    }
    return d->bn_buffer;
}

/* Every rank's (count, mean, var) combined in rank order (Chan et al.'s pairwise update),
 * so that every rank computes the very same numbers. */
static kn_status bn_stats(void *context, int64_t c, double *count, double *mean, double *var)
{
    kn__ddp *d = context;
    size_t per = 1 + 2 * (size_t)c;
    double *buf = bn_scratch(d, per * (size_t)(d->world + 1));
    if (!buf) return kn_last_status();
    double *mine = buf + per * (size_t)d->world;
    mine[0] = *count;
    for (int64_t ch = 0; ch < c; ch++) {
        mine[1 + ch] = *count > 0 ? mean[ch] : 0;
        mine[1 + c + ch] = *count > 0 ? var[ch] : 0;
    }
    double t0 = now_seconds();
    kn_status st = kn_dist_allgather(d->dist, mine, buf, per * sizeof(double));
    d->comm_seconds += now_seconds() - t0;
    if (st != KN_OK) return st;
    double total = 0;
    for (int r = 0; r < d->world; r++) total += buf[per * (size_t)r];
    for (int64_t ch = 0; ch < c; ch++) {
        double n = 0, m = 0, m2 = 0;
        for (int r = 0; r < d->world; r++) {
            const double *theirs = buf + per * (size_t)r;
            double nr = theirs[0];
            if (nr <= 0) continue;
            double delta = theirs[1 + ch] - m, sum = n + nr;
            m += delta * nr / sum;
            m2 += theirs[1 + c + ch] * nr + delta * delta * n * nr / sum;
            n = sum;
        }
        mean[ch] = m;
        var[ch] = n > 0 ? m2 / n : NAN;
    }
    *count = total;
    return KN_OK;
}

static kn_status bn_grad_sums(void *context, int64_t c, double *sum_dy, double *sum_dyx)
{
    kn__ddp *d = context;
    double *buf = bn_scratch(d, 2 * (size_t)c);
    if (!buf) return kn_last_status();
    memcpy(buf, sum_dy, sizeof *buf * (size_t)c);
    memcpy(buf + c, sum_dyx, sizeof *buf * (size_t)c);
    double t0 = now_seconds();
    kn_status st = kn_dist_allreduce_f64(d->dist, buf, (int)(2 * c));
    d->comm_seconds += now_seconds() - t0;
    if (st != KN_OK) return st;
    memcpy(sum_dy, buf, sizeof *buf * (size_t)c);
    memcpy(sum_dyx, buf + c, sizeof *buf * (size_t)c);
    return KN_OK;
}

/* ---- set-up ---------------------------------------------------------------------------- */

/* Rank 0's value of a state tensor, in place on every rank. */
static kn_status broadcast_state(kn__ddp *d, kn_tensor *t)
{
    if (t->dtype == KN_FLOAT32 && kn_is_contiguous(t) && kn_device_equal(t->device, d->device))
        return kn_dist_broadcast_tensor(d->dist, t, 0);
    /* buffers of other kinds (num_batches_tracked): through the host */
    kn_scope_begin();
    kn_tensor *host = kn_contiguous(kn_to(t, kn_cpu()));
    kn_tensor *copy = host ? kn_clone(host) : NULL;
    kn_status st = copy ? kn_dist_broadcast(d->dist, kn__data_ptr(copy),
                                            (size_t)kn_numel(copy) * kn_dtype_size(copy->dtype), 0)
                        : kn_last_status();
    if (st == KN_OK) st = kn_copy_(t, copy);
    kn_scope_end();
    return st;
}

static kn_status broadcast_model(kn__ddp *d)
{
    int n = 0;
    kn_named_tensor *state = kn_module_state_dict(d->t->model, &n);
    if (!state && n > 0) return kn__error(KN_ERR_MEMORY, "distributed: out of memory");
    kn_status st = KN_OK;
    kn_no_grad_begin();
    for (int i = 0; st == KN_OK && i < n; i++) {
        st = broadcast_state(d, state[i].tensor);
        if (st != KN_OK) {
            char message[400];
            snprintf(message, sizeof message, "%s", kn_last_error());
            st = kn__error(st, "distributed: taking rank 0's %s: %s", state[i].name, message);
        }
    }
    kn_no_grad_end();
    free(state);
    return st;
}

/* splitmix64: rank r's dropout stream from the run's seed */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

kn__ddp *kn__ddp_new(kn_trainer *t, bool *has_validation)
{
    kn_dist *dist = t->config.dist;
    int world = kn_dist_world_size(dist); /* batch_size divides by it (train.c's check) */
    kn_device device = kn_dist_device(dist);
    for (int i = 0; i < t->n_params; i++)
        if (!kn_device_equal(t->params[i]->device, device)) {
            char a[32], b[32];
            return kn__error_null(KN_ERR_DEVICE,
                                  "distributed: the model is on %s but this rank's communicator "
                                  "is for %s",
                                  kn_device_str(t->params[i]->device, a, sizeof a),
                                  kn_device_str(device, b, sizeof b));
        }
    kn__ddp *d = calloc(1, sizeof *d);
    if (!d) return kn__error_null(KN_ERR_MEMORY, "distributed: out of memory");
    d->t = t;
    d->dist = dist;
    d->rank = kn_dist_rank(dist);
    d->world = world;
    d->device = device;
    d->n_params = t->n_params;
    size_t n = (size_t)(t->n_params ? t->n_params : 1);
    d->order = calloc(n, sizeof *d->order);
    d->lookup = calloc(n, sizeof *d->lookup);
    d->bucket_of = calloc(n, sizeof *d->bucket_of);
    d->views = calloc(n, sizeof *d->views);
    d->ready = calloc(n, sizeof *d->ready);
    d->n_extras = EXTRA_RANKS + world;
    d->extras = calloc((size_t)d->n_extras, sizeof *d->extras);
    d->rank_sps = calloc((size_t)world, sizeof *d->rank_sps);
    if (!d->order || !d->lookup || !d->bucket_of || !d->views || !d->ready || !d->extras ||
        !d->rank_sps) {
        kn__ddp_free(d);
        return kn__error_null(KN_ERR_MEMORY, "distributed: out of memory");
    }
    for (int i = 0; i < t->n_params; i++) {
        d->order[i] = t->n_params - 1 - i;
        d->lookup[i] = (param_ref){t->params[i], i};
    }
    qsort(d->lookup, n, sizeof *d->lookup, compare_refs);
    d->hooks = (kn__backward_hooks){d, on_leaf_ready, on_after_node};
    d->bn_sync = (kn__bn_sync){d, bn_stats, bn_grad_sums};
    kn_status st = plan_buckets(d, t->config.bucket_cap_mb);
    /* rank 0's weights and buffers everywhere; whether rank 0 evaluates */
    if (st == KN_OK) st = broadcast_model(d);
    unsigned char flag = *has_validation;
    if (st == KN_OK) st = kn_dist_broadcast(dist, &flag, 1, 0);
    *has_validation = flag != 0;
    if (st != KN_OK) {
        kn__ddp_free(d);
        return NULL;
    }
    if (t->step == 0 && d->rank > 0) { /* a fresh run: rank r's own dropout stream */
        kn_generator *gen = kn__trainer_generator(t);
        kn_generator_seed(gen, mix(kn_generator_initial_seed(gen) ^ mix((uint64_t)d->rank)));
    }
    t->rank_batch_size = t->config.batch_size / world;
    if (t->config.sync_batch_norm) kn__set_bn_sync(&d->bn_sync);
    return d;
}

void kn__ddp_free(kn__ddp *d)
{
    if (!d) return;
    kn__set_bn_sync(NULL);
    kn__set_backward_hooks(NULL);
    d->t->rank_batch_size = 0;
    /* requests still in flight belong to a rank that is failing: MPI forbids freeing
     * them, and the job is taken down (kn_dist_abort) */
    for (int bi = 0; bi < d->n_buckets; bi++) kn_release(d->buckets[bi].flat);
    for (int i = 0; d->views && i < d->n_params; i++) kn_release(d->views[i]);
    free(d->buckets);
    free(d->order);
    free(d->lookup);
    free(d->bucket_of);
    free(d->views);
    free(d->ready);
    free(d->extras);
    free(d->rank_sps);
    free(d->bn_buffer);
    free(d);
}

/* ---- the loop's questions ------------------------------------------------------------ */

int64_t kn__ddp_shard_count(const kn__ddp *d, int64_t count, bool drop_last)
{
    return drop_last ? count / d->world : (count + d->world - 1) / d->world;
}

kn_tensor *kn__ddp_shard(kn__ddp *d, kn_tensor *order, bool drop_last)
{
    if (!order) return NULL;
    int64_t count = order->shape[0];
    int64_t n = kn__ddp_shard_count(d, count, drop_last);
    kn_tensor *shard = kn__empty_raw(&n, 1, KN_INT64, kn_cpu());
    if (!shard) return NULL;
    kn_tensor *full = kn__contiguous_raw(order);
    if (!full) {
        kn_release(shard);
        return NULL;
    }
    const int64_t *src = kn__data_ptr(full);
    int64_t *dst = kn__data_ptr(shard);
    for (int64_t j = 0; j < n; j++) dst[j] = src[(d->rank + j * d->world) % count];
    kn_release(full);
    return kn__result(shard);
}

void kn__ddp_request_stop(kn__ddp *d)
{
    d->stop_requested = true;
}

bool kn__ddp_stop_agreed(const kn__ddp *d)
{
    return d->stop_agreed;
}

kn_status kn__ddp_share_flag(kn__ddp *d, bool *flag)
{
    unsigned char byte = *flag;
    double t0 = now_seconds();
    kn_status st = kn_dist_broadcast(d->dist, &byte, 1, 0);
    d->comm_seconds += now_seconds() - t0;
    *flag = byte != 0;
    return st;
}

int kn__ddp_rank(const kn__ddp *d)
{
    return d->rank;
}

int kn__ddp_world(const kn__ddp *d)
{
    return d->world;
}

const double *kn__ddp_rank_samples_per_second(const kn__ddp *d)
{
    return d->rank_sps;
}

double kn__ddp_communication_seconds(const kn__ddp *d)
{
    return d->comm_seconds;
}

int kn__ddp_buckets(const kn__ddp *d)
{
    return d->n_buckets;
}

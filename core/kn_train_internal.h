/*
 * kn_train_internal.h — the trainer's state, shared by train.c (the loop) and
 * checkpoint.c (saving and restoring it). Not part of the public API.
 */
#ifndef KN_TRAIN_INTERNAL_H
#define KN_TRAIN_INTERNAL_H

#include "kn_train.h"

struct kn_trainer {
    kn_module *model; /* borrowed */
    kn_train_config config;
    kn_optimizer *optimizer; /* owned */
    kn_tensor **params;      /* borrowed from the model, in registration order */
    int n_params;
    /* where the run is: the next batch to train is batch_in_epoch of epoch */
    int64_t step; /* batches done (skipped ones included) */
    int64_t epoch;
    int64_t batch_in_epoch;
    int64_t skipped_steps;
    /* early stopping */
    double best_val_loss; /* INFINITY before the first evaluation */
    int64_t evals_without_improvement;
    int64_t rank_batch_size; /* while a distributed run runs: batch_size / world size */
};

/* checkpoint.c: the generator a run draws from (config.generator, else the default). */
kn_generator *kn__trainer_generator(const kn_trainer *t);

/* ---- dist_ddp.c: data-parallel training over config.dist --------------------------------
 * kn__ddp_new checks the batch against the world size, broadcasts rank 0's parameters and
 * buffers, plans the gradient buckets and turns synchronised batch norm on when asked;
 * *has_validation becomes rank 0's answer (only rank 0 evaluates). */
typedef struct kn__ddp kn__ddp;
kn__ddp *kn__ddp_new(kn_trainer *t, bool *has_validation);
void kn__ddp_free(kn__ddp *ddp);
/* This rank's share of an epoch's order (DistributedSampler) and its length. */
kn_tensor *kn__ddp_shard(kn__ddp *ddp, kn_tensor *order, bool drop_last);
int64_t kn__ddp_shard_count(const kn__ddp *ddp, int64_t count, bool drop_last);
/* The backward of loss with the gradients averaged over the ranks; *global_loss is the
 * loss of the global batch. A stop requested before (kn__ddp_request_stop) on any rank
 * is agreed on every rank by the time it returns (kn__ddp_stop_agreed). */
kn_status kn__ddp_backward(kn__ddp *ddp, kn_tensor *loss, double local_loss, int64_t rows,
                           double local_samples_per_second, double *global_loss);
void kn__ddp_request_stop(kn__ddp *ddp);
bool kn__ddp_stop_agreed(const kn__ddp *ddp);
/* Rank 0's value of *flag on every rank (early stopping). */
kn_status kn__ddp_share_flag(kn__ddp *ddp, bool *flag);
int kn__ddp_rank(const kn__ddp *ddp);
int kn__ddp_world(const kn__ddp *ddp);
const double *kn__ddp_rank_samples_per_second(const kn__ddp *ddp);
double kn__ddp_communication_seconds(const kn__ddp *ddp);
int kn__ddp_buckets(const kn__ddp *ddp);

/* ---- train_cuda.c: the CUDA side of one kn_trainer_run ---------------------------------
 * Batches are gathered on the host into page-locked staging buffers (a ring of two) and
 * copied to the device without waiting; an event per buffer keeps the host from
 * overwriting one the device has not finished reading. With config.cuda_graph, full
 * batches replay a captured forward + loss + backward. */
typedef struct kn__train_cuda kn__train_cuda;

/* What a replayed step gives the loop (ran false: run the step eagerly). */
typedef struct kn__graph_step {
    bool ran;
    int64_t rows;
    double loss;
    bool grads_finite; /* only computed without clipping (clipping reads the grads) */
} kn__graph_step;

/* NULL when device is not CUDA or staging is unavailable (then *note says why and the
 * loop moves batches with kn_to). train, t and the model are borrowed for the run. */
kn__train_cuda *kn__train_cuda_new(kn_trainer *t, const kn_dataset *train, kn_device device,
                                   int64_t batches_per_epoch, char *note, size_t note_size);
/* Waits for the device, frees the graph, pool and buffers; writes the graph's story into
 * note. NULL-safe. */
void kn__train_cuda_free(kn__train_cuda *tc, char *note, size_t note_size, int64_t *graph_steps);
/* A replay of the captured step for batch batch_index of epoch (capturing it first when
 * the time has come), or g->ran false when this step must run eagerly. */
kn_status kn__train_cuda_graph_step(kn__train_cuda *tc, kn_tensor *order, int64_t epoch,
                                    int64_t batch_index, kn__graph_step *g);
/* The batch on the device, through the staging ring (results belong to the open scope). */
kn_status kn__train_cuda_batch(kn__train_cuda *tc, kn_tensor *order, int64_t epoch,
                               int64_t batch_index, kn_tensor **x, kn_tensor **y);
/* Gathers batch batch_index of epoch into a free staging buffer ahead of its step, when
 * there is such a batch; a failure is left for the step itself to report. */
void kn__train_cuda_prefetch(kn__train_cuda *tc, kn_tensor *order, int64_t epoch,
                             int64_t batch_index);

/* Tests only: when set, every capture fails as a step that waits for the device would
 * (a host read of the logits, refused inside the capture), to check the eager fallback. */
extern bool kn__train_cuda_test_fail_capture;

/* train.c: the device of a model's first parameter or buffer (the cpu when it has none). */
kn_device kn__module_device(kn_module *model);

/* data.c: gathers batch batch_index of order into caller memory (inputs: rows x the
 * sample's elements of the inputs' dtype, labels: rows x a sample's labels, in their
 * dtype), as kn_dataset_batch does. */
kn_status kn__dataset_gather(const kn_dataset *ds, kn_tensor *order, int64_t batch_index,
                             int64_t batch_size, void *inputs, void *labels, int64_t *rows);
/* Whether ds holds the windows of a token stream (kn_dataset_windows): its inputs and
 * labels are views of one storage. */
bool kn__dataset_is_windows(const kn_dataset *ds);

#endif

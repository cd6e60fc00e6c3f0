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
};

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

/* data.c: gathers batch batch_index of order into caller memory (inputs: rows x the
 * sample's elements of the inputs' dtype, labels: rows x the sample's labels, int64), as
 * kn_dataset_batch does. */
kn_status kn__dataset_gather(const kn_dataset *ds, kn_tensor *order, int64_t batch_index,
                             int64_t batch_size, void *inputs, int64_t *labels, int64_t *rows);
/* Whether ds holds the windows of a token stream (kn_dataset_windows): its inputs and
 * labels are views of one storage. */
bool kn__dataset_is_windows(const kn_dataset *ds);

#endif

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

#endif

/*
 * kn_train.h — the training loop that the CLI (kiln train) and the server share:
 * batches from a dataset in an order fixed by (seed, epoch), forward, loss, backward,
 * optional clipping, optimizer step with a learning-rate schedule, evaluation every N
 * steps and at the end, checkpoints, early stopping, and callbacks for each event.
 *
 * Ownership: kn_trainer_new borrows the model (it must outlive the trainer) and owns the
 * optimizer it makes; free with kn_trainer_free. Callbacks receive borrowed data.
 */
#ifndef KN_TRAIN_H
#define KN_TRAIN_H

#include "kn.h"
#include "kn_data.h"
#include "kn_nn.h"
#include "kn_optim.h"
#include "kn_safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KN_LOSS_CROSS_ENTROPY,
    KN_LOSS_NLL,
    KN_LOSS_MSE,             /* against one-hot labels */
    KN_LOSS_BCE_WITH_LOGITS, /* against one-hot labels */
} kn_loss_kind;

typedef struct kn_train_config {
    kn_loss_kind loss;
    double label_smoothing; /* cross_entropy */
    kn_optimizer_options optimizer;
    kn_lr_schedule lr_schedule;
    int64_t batch_size; /* > 0 */
    int64_t epochs;     /* used when max_steps == 0 */
    int64_t max_steps;  /* 0: epochs decide */
    uint64_t seed;
    bool shuffle; /* default true */
    bool drop_last;
    int64_t eval_every_steps;        /* 0: only at the end of each epoch */
    int64_t eval_batch_size;         /* 0: 1000 */
    int64_t checkpoint_every_steps;  /* 0: none during training */
    double grad_clip_norm;           /* 0: no clipping */
    bool skip_non_finite;            /* skip a step whose loss/grads are not finite */
    int64_t early_stopping_patience; /* evaluations without improvement; 0: off */
    double early_stopping_min_delta; /* on validation loss */
    /* CUDA only (the CPU ignores it): once full batches have run eagerly twice, capture
     * forward, loss and backward in a CUDA graph and replay it for later full batches
     * (the optimizer steps after it); anything the graph cannot do runs eagerly. Off by
     * default until it has been measured on a GPU. */
    bool cuda_graph;
    /* Borrowed (it must outlive the runs): the generator of the run's randomness. While
     * kn_trainer_run runs, dropout modules without a generator of their own draw from
     * it, and checkpoints save and restore its state. NULL: the process-wide default,
     * as torch's global generator. Give each of several trainers that run at once its
     * own: the default is not thread-safe. */
    kn_generator *generator;
} kn_train_config;

/* Defaults as a user expects: cross_entropy, Adam(1e-3), batch 64, 1 epoch, seed 0,
 * shuffle, evaluation at epoch ends. */
kn_train_config kn_train_config_defaults(void);

typedef struct kn_step_info {
    int64_t step;        /* 1-based count of optimizer steps done */
    int64_t total_steps; /* planned */
    int64_t epoch;       /* 0-based */
    int64_t batch_in_epoch;
    int64_t batches_per_epoch;
    double loss;
    double lr;
    double samples_per_second; /* since the run started */
    double elapsed_seconds;
    bool skipped; /* non-finite, skipped */
} kn_step_info;

typedef struct kn_eval_result {
    int64_t step, epoch;
    double loss;
    double accuracy;
    int64_t count;
} kn_eval_result;

typedef struct kn_trainer kn_trainer;

/* Any callback may be NULL; a callback returning non-KN_OK stops the run with that
 * status (a cancel). */
typedef struct kn_train_callbacks {
    void *context;
    kn_status (*on_step)(void *context, const kn_step_info *info);
    kn_status (*on_eval)(void *context, const kn_eval_result *result);
    kn_status (*on_checkpoint)(void *context, kn_trainer *trainer, int64_t step);
} kn_train_callbacks;

typedef struct kn_train_summary {
    int64_t steps;
    int64_t epochs_completed;
    double train_seconds;
    double samples_per_second;
    bool has_validation;
    kn_eval_result final_validation;
    bool stopped_early;
    int64_t skipped_steps; /* non-finite steps skipped (skip_non_finite) */
    int64_t graph_steps;   /* steps replayed from a CUDA graph (cuda_graph) */
    char cuda_note[256];   /* CUDA runs: staging and graph, what happened ("" otherwise) */
} kn_train_summary;

kn_trainer *kn_trainer_new(kn_module *model, const kn_train_config *config);
void kn_trainer_free(kn_trainer *trainer);
/* Runs until epochs/max_steps, early stopping, a callback's stop or an error (for a
 * non-finite loss the error names the step). validation may be NULL. */
kn_status kn_trainer_run(kn_trainer *trainer, const kn_dataset *train, const kn_dataset *validation,
                         const kn_train_callbacks *callbacks, kn_train_summary *summary);
kn_module *kn_trainer_model(kn_trainer *trainer);
kn_optimizer *kn_trainer_optimizer(kn_trainer *trainer);
int64_t kn_trainer_step(const kn_trainer *trainer);

/* Loss and accuracy of model over a dataset, in eval mode, without grad. With labels per
 * position ([N, T] against outputs [N, T, V]) both are over the positions, the ignored
 * ones (KN_DEFAULT_IGNORE_INDEX) left out. */
kn_status kn_evaluate(kn_module *model, const kn_dataset *ds, kn_loss_kind loss, int64_t batch_size,
                      kn_eval_result *result);
/* The loss of a batch of logits against int64 labels (one-hot for mse/bce). The classes
 * are the logits' last dim: [N, C] against [N], or [N, T, V] against [N, T] for cross
 * entropy and nll (kn_sequence_cross_entropy), positions labelled -100 ignored. */
kn_tensor *kn_train_loss(kn_loss_kind loss, kn_tensor *logits, kn_tensor *labels,
                         double label_smoothing);

/* Checkpoints (safetensors): model state under PyTorch's names, optimizer state under
 * "optimizer.<name>", and metadata step, epoch, batch_in_epoch, seed, rng state.
 * Written atomically. Loading restores all of it so kn_trainer_run resumes where the
 * checkpoint was taken; a checkpoint that is refused (corrupt, or not this model's or
 * optimizer's) leaves the trainer, its model and its generator as they were. */
kn_status kn_trainer_save_checkpoint(kn_trainer *trainer, const char *path);
kn_status kn_trainer_load_checkpoint(kn_trainer *trainer, const char *path);
/* Weights only (PyTorch state_dict names), e.g. to fine-tune from a PyTorch model. */
kn_status kn_module_save_weights(const kn_module *model, const char *path);
/* The same with string metadata (unique keys; "format": "pt" is always written). */
kn_status kn_module_save_weights_meta(const kn_module *model, const char *path,
                                      const kn_safetensors_meta *metadata, int count);
kn_status kn_module_load_weights(kn_module *model, const char *path, bool strict);

#ifdef __cplusplus
}
#endif
#endif

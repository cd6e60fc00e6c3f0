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

/* How a loss meets the labels: float targets (regression, multi-label) are compared as
 * they are, with the outputs' shape; int64 class labels go to cross_entropy and nll as
 * indices, and to mse and bce_with_logits one-hot ([N, C] outputs), or as 0/1 to
 * bce_with_logits with one output (binary classification). */
typedef enum {
    KN_LOSS_CROSS_ENTROPY,
    KN_LOSS_NLL,
    KN_LOSS_MSE,
    KN_LOSS_BCE_WITH_LOGITS,
    KN_LOSS_L1,
    KN_LOSS_SMOOTH_L1,
    KN_LOSS_HUBER,
} kn_loss_kind;

/* What the model learns, which decides the labels it takes and the metrics it gets. */
typedef enum {
    KN_TASK_AUTO = 0,       /* from the labels: int64 is classification, else from the loss */
    KN_TASK_CLASSIFICATION, /* int64 class labels [N]; outputs [N, C] (or [N, 1] with bce) */
    KN_TASK_REGRESSION,     /* float targets [N, K] of the outputs' shape */
    KN_TASK_MULTILABEL,     /* float 0/1 targets [N, K] (K = 1: binary), bce_with_logits */
} kn_task;

/* The task a loss implies when none is given: cross_entropy and nll classify,
 * bce_with_logits is multi-label (binary with one output), the others regress. */
kn_task kn_task_of_loss(kn_loss_kind loss);
/* "classification", "regression", "multilabel" ("auto" for KN_TASK_AUTO). */
const char *kn_task_name(kn_task task);
/* "cross_entropy", "nll", "mse", "bce_with_logits", "l1", "smooth_l1", "huber". */
const char *kn_loss_name(kn_loss_kind loss);

typedef struct kn_train_config {
    kn_loss_kind loss;
    kn_task task;           /* KN_TASK_AUTO: from the labels and the loss */
    double label_smoothing; /* cross_entropy */
    double smooth_l1_beta;  /* smooth_l1 (default 1) */
    double huber_delta;     /* huber (default 1) */
    /* Borrowed (they must outlive the runs), NULL: none. cross_entropy and nll weigh class
     * c by class_weight[c] (count: the model's classes); bce_with_logits weighs the positive
     * term of output k by pos_weight[k] (count: 1 or the outputs). */
    const float *class_weight;
    int64_t class_weight_count;
    const float *pos_weight;
    int64_t pos_weight_count;
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
    /* Borrowed: the communicator of a distributed run (kn_dist.h), NULL for one process.
     * Data-parallel as torch's DistributedDataParallel: batch_size is the global batch
     * (it must divide by the world size), each rank trains on its shard of every epoch's
     * order, and gradients are averaged over the ranks in buckets of bucket_cap_mb (0:
     * 25) during the backward pass. Every rank calls kn_trainer_run with the same
     * config; only rank 0 evaluates (give the validation set there) and reports on_eval,
     * while on_step and on_checkpoint run on every rank; a callback's stop on any rank
     * stops every rank after the next step. */
    struct kn_dist *dist;
    bool sync_batch_norm; /* batch norm statistics over the global batch (SyncBatchNorm) */
    double bucket_cap_mb;
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
    /* distributed runs (1 and NULL otherwise): loss and samples_per_second above are the
     * global batch's; each rank's own samples/s, and this rank's time waiting for the
     * communication so far */
    int world_size;
    const double *rank_samples_per_second; /* world_size values; borrowed for the call */
    double communication_seconds;
} kn_step_info;

/* An evaluation: the loss and the metrics of the task (NaN where they do not apply).
 *   classification: accuracy; precision, recall and f1 averaged over the classes that
 *     occur in the labels or the predictions (scikit-learn's macro average); the
 *     confusion matrix (row: true class, column: predicted), classes x classes.
 *   regression: mse, mae and r2 averaged over the K targets (scikit-learn's uniform
 *     average; r2 of a constant target is 1 when predicted exactly, else 0).
 *   multilabel: accuracy is the exact match (every label of a sample right, scikit-learn's
 *     subset accuracy), f1 the macro average of label_f1 (classes labels), a prediction
 *     being output > 0 (probability > 0.5). */
typedef struct kn_eval_result {
    int64_t step, epoch;
    double loss;
    double accuracy;
    int64_t count;
    kn_task task;
    double precision, recall, f1;
    double mse, mae, r2;
    int64_t classes;    /* classification: C (binary with one output: 2); multilabel: K */
    int64_t *confusion; /* classes x classes (classification), owned: kn_eval_result_clear */
    double *label_f1;   /* classes values (multilabel), owned: kn_eval_result_clear */
} kn_eval_result;

/* Frees confusion and label_f1 (NULL-safe) and sets them to NULL. */
void kn_eval_result_clear(kn_eval_result *result);

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
    kn_eval_result final_validation; /* without confusion and label_f1: copy them in on_eval */
    bool stopped_early;
    bool stopped;          /* a callback stopped the run (on some rank, for distributed runs) */
    int64_t skipped_steps; /* non-finite steps skipped (skip_non_finite) */
    int64_t graph_steps;   /* steps replayed from a CUDA graph (cuda_graph) */
    char cuda_note[256];   /* CUDA runs: staging and graph, what happened ("" otherwise) */
    int world_size;        /* processes (1 without config.dist) */
    double communication_seconds; /* waiting for the other ranks (distributed runs) */
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

/* Loss and the task's metrics of model over a dataset, in eval mode, without grad, as the
 * trainer evaluates (config's loss, its parameters and eval_batch_size); *result's
 * confusion or label_f1 belong to the caller (kn_eval_result_clear). With labels per
 * position ([N, T] against outputs [N, T, V]) loss and accuracy are over the positions,
 * the ignored ones (KN_DEFAULT_IGNORE_INDEX) left out. */
kn_status kn_evaluate_config(kn_module *model, const kn_dataset *ds, const kn_train_config *config,
                             kn_eval_result *result);
/* The same with a loss's defaults, result without confusion and label_f1. */
kn_status kn_evaluate(kn_module *model, const kn_dataset *ds, kn_loss_kind loss, int64_t batch_size,
                      kn_eval_result *result);
/* The loss of a batch of outputs against its labels as config says (kind, task, weights,
 * label smoothing, beta, delta): see kn_loss_kind for how labels are taken. For class
 * labels the classes are the outputs' last dim: [N, C] against [N], or [N, T, V] against
 * [N, T] for cross entropy and nll (kn_sequence_cross_entropy), positions labelled -100
 * ignored. */
kn_tensor *kn_train_loss_config(const kn_train_config *config, kn_tensor *outputs,
                                kn_tensor *labels);
/* kn_train_loss_config with the loss's defaults and label_smoothing. */
kn_tensor *kn_train_loss(kn_loss_kind loss, kn_tensor *logits, kn_tensor *labels,
                         double label_smoothing);

/* Checkpoints (safetensors): model state under PyTorch's names, optimizer state under
 * "optimizer.<name>", and metadata step, epoch, batch_in_epoch, seed, rng state.
 * Written atomically. Loading restores all of it so kn_trainer_run resumes where the
 * checkpoint was taken; a checkpoint that is refused (corrupt, or not this model's or
 * optimizer's) leaves the trainer, its model and its generator as they were.
 * Distributed runs (config.dist): saving is a collective (every rank calls it, rank 0
 * writes the file with every rank's generator state and the world size, and every rank
 * gets rank 0's status); a checkpoint resumes only on as many processes as wrote it. */
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

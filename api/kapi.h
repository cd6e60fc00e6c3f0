/*
 * kapi.h — the JSON contract, pure and fuzzable: model specs and job specs parsed and
 * validated into C structures (every problem reported with its JSON path, what was
 * expected and what was given), models built from specs, data sources loaded, and
 * error bodies written. Used by the CLI (kiln) and the server (kilnd) alike.
 *
 * Ownership: parse functions return a structure the caller frees with the matching
 * *_free, or NULL when the errors list is non-empty. kapi_errors is caller-owned
 * (zero-initialise, then kapi_errors_free). Strings returned as char * are malloc'd and
 * freed by the caller with free().
 */
#ifndef KAPI_H
#define KAPI_H

#include "kn.h"
#include "kn_data.h"
#include "kn_nn.h"
#include "kn_train.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors --------------------------------------------------------------------- */
typedef struct kapi_error {
    char path[160];     /* "layers[3].kernel_size", "" for the document itself */
    char message[1024]; /* "expected a positive integer, got -2"; room for the list of
                           every layer type an unknown type is told */
} kapi_error;

typedef struct kapi_errors {
    kapi_error *items;
    int count, capacity;
} kapi_errors;

void kapi_errors_add(kapi_errors *errors, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void kapi_errors_free(kapi_errors *errors);
/* "path: message" lines joined by newlines (malloc'd). */
char *kapi_errors_to_text(const kapi_errors *errors);
/* {"error": {"code": code, "message": first, "details": [{"path", "message"}...]}} */
char *kapi_errors_to_json(const kapi_errors *errors, const char *code);

/* A JSON item (cJSON) for an integer, written with all its digits. cJSON writes numbers
 * with 15 significant digits whenever they read back within its tolerance, which changes
 * the last digit of about one in five integers above 10^15 (a 53-bit seed given back to
 * repeat a generation). The caller adds the item to an object, which then owns it; NULL
 * when out of memory. */
struct cJSON *kapi_json_integer(int64_t value);

/* ---- model spec ------------------------------------------------------------------- */
#define KAPI_NODE_NAME_MAX 80 /* a node's path in the model ("blocks.11.mlp.fc") */
#define KAPI_MAX_TIES 4       /* weight ties of one node */
#define KAPI_MAX_BLOCKS 64    /* block definitions in one graph spec */

/* A graph's input or one output of a node: a value flowing through the model. */
typedef struct kapi_value_spec {
    /* how the spec refers to it: an input's name ("tokens"), a node's ("ln_f"), one of
     * a node's outputs ("qkv:1"); a chain's input and output are "input" and "output" */
    char name[KAPI_NODE_NAME_MAX + 8];
    int64_t shape[KN_MAX_DIMS]; /* per sample, without the batch dim */
    int ndim;
    kn_dtype dtype;
} kapi_value_spec;

/* A parameter of a node that is another node's ("weight" is "wte.weight"). */
typedef struct kapi_tie_spec {
    char parameter[32];
    char to[KAPI_NODE_NAME_MAX + 32];
} kapi_tie_spec;

/* A container the model's module tree has at path, and its class ("blocks":
 * "ModuleList", "blocks.0": "Block"). */
typedef struct kapi_container_spec {
    char path[KAPI_NODE_NAME_MAX];
    char class_name[48];
} kapi_container_spec;

typedef struct kapi_layer_spec {
    kn_module_kind kind;
    const char *type; /* the layer table's name: "conv2d" */
    /* torch.nn's arguments as the layer table describes them (kn_layer.h), defaults
     * filled; the ones inferred from the input (in_features, in_channels, num_features,
     * normalized_shape) are 0 until shape inference fills them in */
    kn_layer_options options;
    /* inferred from input_shape (without the batch dim) */
    int64_t in_shape[KN_MAX_DIMS], out_shape[KN_MAX_DIMS];
    int in_ndim, out_ndim;
    int64_t parameter_count;
    int64_t buffer_bytes; /* running statistics */
    /* ---- graph specs (issue 12) ---- */
    /* the module's path in the model: its state-dict prefix ("blocks.0.attn"; a
     * chain's layers are "0", "1", ...) */
    char name[KAPI_NODE_NAME_MAX];
    int n_inputs, inputs[KN_GRAPH_MAX_INPUTS]; /* value ids (kapi_model_spec.values) */
    int first_output, n_outputs;               /* its outputs: values first_output.. */
    int n_ties;                                /* parameters shared with other nodes' */
    kapi_tie_spec ties[KAPI_MAX_TIES];
    int64_t saved_elements; /* per sample, kept for backward besides the output (issue 12) */
} kapi_layer_spec;

typedef struct kapi_model_spec {
    char name[128];
    int64_t input_shape[KN_MAX_DIMS]; /* without the batch dim */
    int input_ndim;
    kn_dtype input_dtype; /* the first input's: a chain's first layer's (int64 indices for an
                           * embedding), a graph's first declared input's */
    int n_layers;
    kapi_layer_spec *layers;
    int64_t parameter_count;
    int64_t output_shape[KN_MAX_DIMS];
    int output_ndim;
    /* ---- graph specs (issue 12) ---- */
    /* Every spec has values: its inputs (values[0..n_inputs)), and the outputs of its
     * layers or nodes; outputs[] are the model's outputs. A chain has one input and one
     * output; input_shape and output_shape above are the first input's and output's. */
    bool graph; /* nodes (a graph) rather than layers (a chain) */
    int n_inputs, n_values;
    kapi_value_spec *values;
    int n_outputs, outputs[KN_GRAPH_MAX_INPUTS];
    /* a graph's nodes are listed in layers[] in the order their modules are registered
     * (the spec's order, blocks expanded in place); run_order[] is the order they run */
    int *run_order;
    int n_containers;
    kapi_container_spec *containers;
} kapi_model_spec;

kapi_model_spec *kapi_model_spec_parse(const char *json, size_t length, kapi_errors *errors);
void kapi_model_spec_free(kapi_model_spec *spec);
/* A Sequential of the layers (a chain), or a graph (kn_graph_new) of the nodes, their
 * modules registered in the spec's order, initialised as PyTorch would (gen NULL:
 * default). */
kn_module *kapi_model_build(const kapi_model_spec *spec, kn_generator *gen);
/* Bytes a training step needs at batch_size: parameters, gradients, optimizer state
 * (Adam: 2 per parameter) and activations kept for backward. An estimate. */
/* The rows of the embeddings that read model input `input` directly (a chain's first
 * layer, or graph nodes taking the input): the smallest num_embeddings, the bound of
 * every index the input may hold; -1 when no embedding reads it (a key-padding mask, or
 * indices a node rearranges first). *layer (may be NULL) gets that embedding's index in
 * spec->layers. */
int64_t kapi_model_input_rows(const kapi_model_spec *spec, int input, int *layer);
int64_t kapi_model_training_memory(const kapi_model_spec *spec, int64_t batch_size,
                                   kn_optimizer_kind optimizer);
/* {"valid": true, "name", "parameter_count", "output_shape", "training_memory_bytes",
 *  "layers": [{"type", "output_shape", "parameters"}...]}; a graph's has "inputs",
 *  "outputs" and "nodes": [{"name", "type", "inputs", "output_shape", "parameters"}...] */
char *kapi_model_spec_summary_json(const kapi_model_spec *spec, int64_t batch_size);

/* ---- job spec --------------------------------------------------------------------- */
typedef enum { KAPI_FORMAT_IDX, KAPI_FORMAT_CSV, KAPI_FORMAT_NPY } kapi_data_format;

/* The most normalisation channels, CSV target columns and loss weights a job may give. */
#define KAPI_MAX_CHANNELS 1000000
#define KAPI_MAX_TARGET_COLUMNS 1024
#define KAPI_MAX_WEIGHTS 1000000

/* A local data source (the CLI's; the server replaces paths by dataset names). */
typedef struct kapi_data_source {
    bool present;
    kapi_data_format format;
    char inputs_path[512];  /* idx/npy: "images"/"inputs"; csv: "path" */
    char labels_path[512];  /* idx/npy: "labels" */
    char label_column[128]; /* csv (default "label") */
    /* csv: the target columns, comma-separated (a header name has no comma); "" reads
     * label_column alone */
    char target_columns[4096];
} kapi_data_source;

typedef struct kapi_data_spec {
    kapi_data_source train, test;
    char dataset[128];       /* by name (server) instead of train/test sources */
    double validation_split; /* 0: none */
    double scale;            /* default 1 */
    int channels;            /* normalisation channels, 0: none (or auto) */
    double *mean, *std;      /* channels values each, owned by the job spec */
    bool normalize_auto;     /* "normalize": "auto": from the training split at the start */
    /* a dataset's CSV files (server): which columns are the targets, as in a csv source */
    char label_column[128];
    char target_columns[4096];
    /* ---- language models (issue 12) ---- */
    char tokenizer[16];         /* "chars" or "bytes" for a text dataset; "" when not given */
    int64_t validation_windows; /* validation windows at most (KAPI_DEFAULT_VALIDATION_WINDOWS) */
} kapi_data_spec;

/* "distributed": {"processes": N, "devices": "cpu"|"cuda", "sync_batch_norm": bool,
 * "bucket_cap_mb": x, "max_restarts": N}: one job across N processes (MPI; NCCL between
 * GPUs, one per process). sync_batch_norm and bucket_cap_mb land in the job's train
 * config. */
typedef struct kapi_dist_spec {
    int processes;    /* 0: one process (no "distributed") */
    char devices[8];  /* "cpu" or "cuda" */
    int max_restarts; /* kilnd: relaunches from the last checkpoint after a rank dies */
} kapi_dist_spec;

#define KAPI_MAX_PROCESSES 4096

typedef struct kapi_job_spec {
    char model_name[128];   /* a model by reference ("model": "name") */
    kapi_model_spec *model; /* inline model, or NULL */
    kapi_data_spec data;
    kn_train_config train;
    char device[32];        /* "cpu" (default), "cuda", "cuda:N", "auto" */
    bool device_given;      /* "device" was in the spec */
    bool allow_tf32;        /* CUDA products may use TF32 (kn_set_allow_tf32); default off */
    char resume_from[512];  /* CLI: a checkpoint path */
    char init_weights[512]; /* CLI: safetensors weights to start from */
    /* server: "init_weights": {"version": V} (a version or alias of the job's model; the
     * server pins an alias to its version at submission, keeping the alias beside it) or
     * {"job": ID} (a succeeded job's final weights). "" when absent. */
    char init_version[64], init_alias[64], init_job[40];
    char run_name[128]; /* "name": a label for the run in lists and charts, "" when absent */
    char submission_id[128];
    bool task_given;     /* "task" was in the spec (else inferred from the loss) */
    float *class_weight; /* loss.weight, owned (train.class_weight points here) */
    float *pos_weight;   /* loss.pos_weight, owned (train.pos_weight points here) */
    kapi_dist_spec distributed;
} kapi_job_spec;

typedef struct kapi_job_parse_options {
    bool allow_paths; /* the CLI: data and weights may name local files */
} kapi_job_parse_options;

kapi_job_spec *kapi_job_spec_parse(const char *json, size_t length, kapi_job_parse_options options,
                                   kapi_errors *errors);
void kapi_job_spec_free(kapi_job_spec *spec);
/* The checks a distributed job needs once its process count is known (the parse runs
 * them; the CLI again after --processes): the global batch divides by the processes,
 * one device per process. Returns false with errors added. */
bool kapi_job_check_distributed(const kapi_job_spec *spec, kapi_errors *errors);

/* ---- where distributed jobs run (dist_hosts.c) ---------------------------------------- */
typedef struct kapi_host {
    char name[256];
    int slots;  /* processes it takes ("slots=N"; 1 when not given) */
    int line;   /* in the hostfile */
    bool local; /* this machine */
} kapi_host;

typedef struct kapi_hosts {
    kapi_host *items;
    int count;
    int slots; /* the sum */
    char path[512];
} kapi_hosts;

typedef enum { KAPI_HOSTS_OK, KAPI_HOSTS_INVALID, KAPI_HOSTS_UNREACHABLE } kapi_hosts_status;

/* Reads an Open MPI hostfile ("HOST slots=N" lines, # comments) and checks that every
 * host other than this machine resolves and answers on ssh's port within timeout_ms.
 * The error names the file, the line and why. Free with kapi_hosts_free. */
kapi_hosts_status kapi_hosts_load(const char *path, kapi_hosts *out, int timeout_ms, char *error,
                                  size_t error_size);
/* This machine alone, with that many slots. */
kapi_hosts_status kapi_hosts_local(int slots, kapi_hosts *out);
void kapi_hosts_free(kapi_hosts *hosts);
bool kapi_hosts_all_local(const kapi_hosts *hosts);
bool kapi_host_is_local(const char *host);
/* Writes hosts as a hostfile mpirun reads. */
bool kapi_hosts_write(const kapi_hosts *hosts, const char *path, char *error, size_t error_size);

/* mpirun -np processes --hostfile hostfile [...] program...: the whole command line, a
 * NULL-terminated malloc'd vector (kapi_argv_free), or NULL when out of memory. */
typedef struct kapi_launch {
    const char *mpirun; /* kn_dist_mpirun() */
    int processes;
    const char *hostfile;
    bool oversubscribe;            /* more processes than slots (the CLI, when asked) */
    const char *const *export_env; /* variables passed on to every rank when set */
    const char *const *program;    /* NULL-terminated */
} kapi_launch;
char **kapi_mpirun_argv(const kapi_launch *launch);
void kapi_argv_free(char **argv);

/* How a source is loaded: the labels a task takes, and whether they may be missing. */
typedef struct kapi_load_options {
    /* classification (and AUTO): int64 class labels [N] (float targets are refused: class
     * labels must be integers); regression and multilabel: float32 targets [N, K]
     * (integers converted) */
    kn_task task;
    /* inputs alone (kiln predict): a CSV without its target columns, an NPY/IDX source
     * without a labels file give a dataset without labels */
    bool allow_unlabeled;
} kapi_load_options;

/* Loads a data source (gzip or plain files) into a dataset; errors name the file. */
kn_dataset *kapi_load_data(const kapi_data_source *source, kapi_load_options options,
                           kapi_errors *errors);
/* kapi_load_data for classification. */
kn_dataset *kapi_load_data_source(const kapi_data_source *source, kapi_errors *errors);
/* Makes a loaded dataset fit a model: inputs reshaped to [N, input_shape...] when the
 * sample sizes agree ([N, 28, 28] IDX images for input_shape [1, 28, 28]) and converted
 * to the model's input dtype (int64 token indices for an embedding, float32 otherwise;
 * kn_dataset_to_dtype), and labels checked against the output: one per sample for an
 * output [C], one per position for [T, V] (the classes are the last dim), each below the
 * class count. Errors are reported at path `what` ("data.train"). Returns false with
 * errors added. */
bool kapi_dataset_fit_model(kn_dataset *ds, const kapi_model_spec *spec, const char *what,
                            kapi_errors *errors);
/* A dataset feeds one input: false with an error at `what` naming the inputs of a graph
 * that has several. */
bool kapi_model_takes_one_input(const kapi_model_spec *spec, const char *what, kapi_errors *errors);
/* The same for a job's task and loss (train: its config): class labels one per sample or
 * per position as the output has them (the classes last), within the model's classes (0/1
 * for one output with bce_with_logits) and as many class weights as classes; float
 * targets [N] or [N, K] of the model's output width (made [N, K]), in
 * [0, 1] for bce_with_logits, pos_weight of 1 or K values. Errors name the data at
 * `what` and the fields to change. */
bool kapi_dataset_fit_job(kn_dataset *ds, const kapi_model_spec *spec, const kn_train_config *train,
                          const char *what, kapi_errors *errors);
/* The label checks of kapi_dataset_fit_job alone (labels as kapi_load_labels gives them). */
bool kapi_check_labels(const kn_tensor *labels, const kapi_model_spec *spec,
                       const kn_train_config *train, const char *what, kapi_errors *errors);
/* The labels of a source without its inputs (NPY/IDX: the labels file only; a CSV is
 * parsed whole), as the task takes them: the caller owns the tensor (kn_release). */
kn_tensor *kapi_load_labels(const kapi_data_source *source, kn_task task, kapi_errors *errors);

/* ---- evaluation metrics by task ------------------------------------------------------ */
#define KAPI_MAX_METRICS 8
typedef struct kapi_metric {
    const char *name; /* static */
    double value;
} kapi_metric;

/* An evaluation's metrics as the task names them (classification: accuracy, precision,
 * recall, f1; regression: mse, mae, r2; multilabel: exact_match, f1), those that apply;
 * returns how many. */
int kapi_eval_metrics(const kn_eval_result *result, kapi_metric out[KAPI_MAX_METRICS]);
/* {"task", "count", "loss", "metrics": {...}, "confusion_matrix": [[...]] (row: true
 * class), "label_f1": [...]} (malloc'd): the end of a job. */
char *kapi_eval_details_json(const kn_eval_result *result);

/* ---- preprocessing that travels with the weights ------------------------------------ */
/* What a job did to its inputs before the model saw them: x * scale, then per channel
 * (x - mean[c]) / std[c] in float32, channels as kn_dataset_normalize counts them (1:
 * every element; more: dim 0 of a sample). Written into the weights' safetensors
 * metadata under "kiln.preprocessing" as JSON:
 *   {"version": 1, "input_shape": [30],
 *    "steps": [{"type": "scale", "factor": 0.5},
 *              {"type": "normalize", "mean": [...], "std": [...]}]}
 * a list of steps in the order applied, so later kinds (a text vocabulary) add a step
 * type; readers refuse a step type they do not know rather than serve wrong inputs.
 * "kiln.task" holds the task ("classification", "regression", "multilabel"). */
typedef struct kapi_preprocessing {
    double scale;       /* 1: none */
    int channels;       /* 0: no normalisation */
    double *mean, *std; /* channels values each, owned */
    kn_task task;       /* what the outputs are (KN_TASK_AUTO: not recorded) */
} kapi_preprocessing;

void kapi_preprocessing_free(kapi_preprocessing *p); /* the arrays; p itself is the caller's */
bool kapi_preprocessing_is_identity(const kapi_preprocessing *p);
/* The JSON of "kiln.preprocessing" (malloc'd), for a model of input_shape. */
char *kapi_preprocessing_to_json(const kapi_preprocessing *p, const kapi_model_spec *model);
/* Parses it back (errors at path "kiln.preprocessing"): false with errors added. */
bool kapi_preprocessing_from_json(const char *json, kapi_preprocessing *out, kapi_errors *errors);
/* Applies it in place to n samples laid out as the model's input (in_numel floats each). */
kn_status kapi_preprocess(const kapi_preprocessing *p, float *x, int64_t n, int64_t in_numel);
/* The final weights with the preprocessing and task in their metadata, and a text model's
 * tokenizer (NULL: none; kapi_text.h's kiln.tokenizer, issue 12); false with an error at
 * path. */
struct kapi_tokenizer;
bool kapi_save_weights(const kn_module *model, const char *path, const kapi_preprocessing *p,
                       const kapi_model_spec *spec, const struct kapi_tokenizer *tokenizer,
                       kapi_errors *errors);
/* Reads a weights file's preprocessing: *found false (and *out the identity) when it has
 * none (a file from elsewhere); false with errors added when it is unreadable. */
bool kapi_load_preprocessing(const char *path, kapi_preprocessing *out, bool *found,
                             kapi_errors *errors);

/* A job's data made ready to train, as kiln train and kilnd do it: *train (loaded and
 * fitted, owned) split into train and validation when the job asks, then every split
 * scaled and normalised, with "normalize": "auto" computing mean and std per channel
 * (input_shape[0]) from the training part only, after scaling. validation and test may be
 * NULL; *out gets the preprocessing applied. false with errors added (at "data..."). */
bool kapi_prepare_data(const kapi_job_spec *job, const kapi_model_spec *model, kn_dataset **train,
                       kn_dataset **validation, kn_dataset **test, kapi_preprocessing *out,
                       kapi_errors *errors);
/* Reads a whole file, gunzipping when it starts with gzip's magic. malloc'd. */
void *kapi_read_file(const char *path, size_t *size, kapi_errors *errors);
/* What kapi_read_file does to a gzip file's bytes, in memory (uploads, fuzz targets):
 * every member inflated into a malloc'd buffer of *size bytes. NULL with an error at
 * path (the name used in messages) when the data is corrupt or truncated. */
void *kapi_gunzip(const void *bytes, size_t in_size, const char *path, size_t *size,
                  kapi_errors *errors);

#ifdef __cplusplus
}
#endif
#endif

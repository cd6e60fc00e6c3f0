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
    char path[160];    /* "layers[3].kernel_size", "" for the document itself */
    char message[400]; /* "expected a positive integer, got -2" */
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

/* ---- model spec ------------------------------------------------------------------- */
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
    int64_t saved_elements; /* per sample, kept for backward besides the output (issue 12) */
} kapi_layer_spec;

typedef struct kapi_model_spec {
    char name[128];
    int64_t input_shape[KN_MAX_DIMS]; /* without the batch dim */
    int input_ndim;
    kn_dtype input_dtype; /* what the first layer takes: int64 indices for an embedding */
    int n_layers;
    kapi_layer_spec *layers;
    int64_t parameter_count;
    int64_t output_shape[KN_MAX_DIMS];
    int output_ndim;
} kapi_model_spec;

kapi_model_spec *kapi_model_spec_parse(const char *json, size_t length, kapi_errors *errors);
void kapi_model_spec_free(kapi_model_spec *spec);
/* A Sequential of the layers, initialised as PyTorch would (gen NULL: default). */
kn_module *kapi_model_build(const kapi_model_spec *spec, kn_generator *gen);
/* Bytes a training step needs at batch_size: parameters, gradients, optimizer state
 * (Adam: 2 per parameter) and activations kept for backward. An estimate. */
int64_t kapi_model_training_memory(const kapi_model_spec *spec, int64_t batch_size,
                                   kn_optimizer_kind optimizer);
/* {"valid": true, "name", "parameter_count", "output_shape", "training_memory_bytes",
 *  "layers": [{"type", "output_shape", "parameters"}...]} */
char *kapi_model_spec_summary_json(const kapi_model_spec *spec, int64_t batch_size);

/* ---- job spec --------------------------------------------------------------------- */
typedef enum { KAPI_FORMAT_IDX, KAPI_FORMAT_CSV, KAPI_FORMAT_NPY } kapi_data_format;

/* A local data source (the CLI's; the server replaces paths by dataset names). */
typedef struct kapi_data_source {
    bool present;
    kapi_data_format format;
    char inputs_path[512];  /* idx/npy: "images"/"inputs"; csv: "path" */
    char labels_path[512];  /* idx/npy: "labels" */
    char label_column[128]; /* csv (default "label") */
} kapi_data_source;

typedef struct kapi_data_spec {
    kapi_data_source train, test;
    char dataset[128];       /* by name (server) instead of train/test sources */
    double validation_split; /* 0: none */
    double scale;            /* default 1 */
    int channels;            /* normalisation channels, 0: none */
    double mean[16], std[16];
    /* ---- language models (issue 12) ---- */
    char tokenizer[16];         /* "chars" or "bytes" for a text dataset; "" when not given */
    int64_t validation_windows; /* validation windows at most (KAPI_DEFAULT_VALIDATION_WINDOWS) */
} kapi_data_spec;

typedef struct kapi_job_spec {
    char model_name[128];   /* a model by reference ("model": "name") */
    kapi_model_spec *model; /* inline model, or NULL */
    kapi_data_spec data;
    kn_train_config train;
    char device[32];        /* "cpu" (default), "cuda", "cuda:N", "auto" */
    bool allow_tf32;        /* CUDA products may use TF32 (kn_set_allow_tf32); default off */
    char resume_from[512];  /* CLI: a checkpoint path */
    char init_weights[512]; /* CLI: safetensors weights to start from */
    char submission_id[128];
} kapi_job_spec;

typedef struct kapi_job_parse_options {
    bool allow_paths; /* the CLI: data and weights may name local files */
} kapi_job_parse_options;

kapi_job_spec *kapi_job_spec_parse(const char *json, size_t length, kapi_job_parse_options options,
                                   kapi_errors *errors);
void kapi_job_spec_free(kapi_job_spec *spec);

/* Loads a data source (gzip or plain files) into a dataset; errors name the file. */
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

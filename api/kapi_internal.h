/*
 * kapi_internal.h — helpers shared by api/'s parsers (not part of the public contract):
 * JSON paths, reading typed fields with precise errors, unknown and duplicate keys,
 * did-you-mean suggestions, and the model parser that the job parser reuses for an
 * inline "model".
 */
#ifndef KAPI_INTERNAL_H
#define KAPI_INTERNAL_H

#include "kapi.h"
#include "kn_layer.h"

#include <cJSON.h>

#define KAPI_PATH_MAX 160

/* Field reads: 1 when present and valid (*out set), 0 when absent (*out untouched),
 * -1 when present but invalid (an error was added). */
#define KAPI_ABSENT 0
#define KAPI_OK 1
#define KAPI_BAD (-1)

/* Cuts an incomplete UTF-8 sequence off the end of s, which a truncation to a fixed
 * buffer can leave: messages that quote user input stay valid UTF-8 when it was. */
void kapi__utf8_trim(char *s);

/* "prefix.key" ("key" for an empty prefix), "prefix[index]". */
void kapi__path(char *out, const char *prefix, const char *key);
void kapi__path_index(char *out, const char *prefix, int index);

/* How a value is shown after "got": -2, 0.5, "abc", true, null, [3, 3, 3], an object. */
void kapi__describe(const cJSON *value, char *buf, size_t size);
/* A number written back shortest-first (%.15g, %.17g when that loses bits). */
void kapi__format_number(double value, char *buf, size_t size);

/* Parses a document that must be a JSON object; errors give line, column and byte of a
 * syntax error. Returns NULL with an error added. */
cJSON *kapi__parse_object(const char *json, size_t length, kapi_errors *errors);

/* Every key of obj must be in allowed (NULL-terminated) and appear once; unknown keys
 * get a did-you-mean or the list of allowed keys. Returns false when any was wrong. */
bool kapi__check_fields(kapi_errors *errors, const cJSON *obj, const char *path,
                        const char *const *allowed);
/* The closest candidate within a small edit distance, or NULL. */
const char *kapi__suggest(const char *given, const char *const *candidates);

/* What an integer in [min, max] is called after "expected": "a positive integer", "a
 * non-negative integer", "an integer from -8 to 7"; and a number in a range: "a finite
 * number", "a finite number > 0", "a number in [0, 1]". */
void kapi__int_description(int64_t min, int64_t max, char *buf, size_t size);
void kapi__number_description(double min, bool min_inclusive, double max, bool max_inclusive,
                              char *buf, size_t size);

int kapi__get_int(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                  int64_t min, int64_t max, int64_t *out);
/* An integer value (not a field): same rules, path given whole. */
int kapi__int_value(kapi_errors *errors, const cJSON *value, const char *path, int64_t min,
                    int64_t max, int64_t *out);
int kapi__get_number(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                     double min, bool min_inclusive, double max, bool max_inclusive, double *out);
int kapi__number_value(kapi_errors *errors, const cJSON *value, const char *path, double min,
                       bool min_inclusive, double max, bool max_inclusive, double *out);
int kapi__get_bool(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                   bool *out);
/* A string of 1..out_size-1 bytes. */
int kapi__get_string(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                     char *out, size_t out_size);
/* Adds "required field missing: expected <what>" at prefix.key. */
void kapi__missing(kapi_errors *errors, const char *prefix, const char *key, const char *what);

/* Names of models, datasets, submissions: 1..127 of [A-Za-z0-9._-], starting with a
 * letter or digit. Adds an error at path and returns false otherwise. */
bool kapi__check_name(kapi_errors *errors, const char *path, const cJSON *value, char *out,
                      size_t out_size);

/* The model parser on an already-parsed object; paths start with prefix ("" or
 * "model"). Returns NULL when it added errors. */
kapi_model_spec *kapi__model_spec_from_json(const cJSON *root, const char *prefix,
                                            kapi_errors *errors);

/* ---- model specs' pieces the graph parser shares (model_spec.c) ------------------------ */

/* "unknown layer type ..." at field, with a suggestion and the spec's layer types; with
 * blocks (a NULL-terminated list of a graph's block names), "layer or block type" and
 * the blocks too. */
void kapi__unknown_type(kapi_errors *errors, const char *field, const cJSON *type,
                        const char *const *blocks);
/* A layer object's fields: "type", extra (NULL-terminated, may be NULL) and row's
 * arguments, each checked and read into options (torch's defaults for the absent). */
bool kapi__layer_fields(kapi_errors *errors, const cJSON *obj, const char *path,
                        const kn_layer_type *row, const char *const *extra,
                        kn_layer_options *options);
/* One sample's shape (input_shape's rules) at path into shape[0..*ndim). */
bool kapi__sample_shape(kapi_errors *errors, const cJSON *value, const char *path, int64_t *shape,
                        int *ndim);

/* A graph spec (model_graph.c): inputs, blocks, nodes, outputs read from root into spec,
 * shapes inferred node by node. False with errors added. */
bool kapi__graph_from_json(const cJSON *root, const char *prefix, kapi_model_spec *spec,
                           kapi_errors *errors);
/* A chain's values (its input and output) once its shapes are known (model_shape.c). */
bool kapi__chain_values(kapi_model_spec *spec);
/* preprocess.c: a model of int64 token inputs (an embedding first, issue 12) takes its
 * indices as they are: data.scale and data.normalize would make them floats. Adds an
 * error at the field and returns false when the job asks for either. */
bool kapi__check_token_preprocessing(const kapi_data_spec *data, const kapi_model_spec *model,
                                     kapi_errors *errors);
/* What takes a model's int64 tokens, for messages: "the model's first layer" (a chain's
 * embedding) or "the model's input \"tokens\"" (a graph's int64 input). Returns buf. */
const char *kapi__token_taker(const kapi_model_spec *model, char *buf, size_t size);

#endif

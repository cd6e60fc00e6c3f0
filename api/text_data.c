/*
 * text_data.c — a language model's data from a text (kapi_text.h): tokenised whole, split
 * as nanoGPT's prepare.py splits it (the first part trains, the last validates), each
 * part's windows made by kn_dataset_windows; and a generate request read with an error at
 * each field that is wrong.
 */
#include "kapi_internal.h"
#include "kapi_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kapi_text_data_free(kapi_text_data *data)
{
    if (!data) return;
    kapi_tokenizer_free(data->tokenizer);
    kn_dataset_free(data->train);
    kn_dataset_free(data->validation);
    memset(data, 0, sizeof *data);
}

/* The windows of ids[0..n) (stride 1, or spaced for at most max_windows), or NULL with an
 * error at path. */
static kn_dataset *windows(const int64_t *ids, int64_t n, int64_t block_size, bool validation,
                           int64_t max_windows, const char *path, kapi_errors *errors)
{
    kn_scope_begin();
    kn_dataset *ds = NULL;
    kn_tensor *stream = kn_from_int64s(ids, (int64_t[]){n}, 1);
    int64_t stride = validation ? block_size : 1;
    if (validation && max_windows > 0 && (n - block_size - 1) / stride + 1 > max_windows)
        stride = (n - block_size + max_windows - 1) / max_windows;
    if (stream) ds = kn_dataset_windows(stream, block_size, stride);
    if (!ds)
        kapi_errors_add(errors, path, "the %s part of the text: %s",
                        validation ? "validation" : "training", kn_last_error());
    kn_scope_end();
    return ds;
}

bool kapi_text_data_make(const char *text, size_t size, kapi_tokenizer_kind kind,
                         int64_t block_size, double validation_split, int64_t validation_windows,
                         const char *path, kapi_text_data *out, kapi_errors *errors)
{
    memset(out, 0, sizeof *out);
    int before = errors->count;
    out->tokenizer = kapi_tokenizer_for_text(kind, text, size, path, errors);
    int64_t n = 0;
    int64_t *ids =
        out->tokenizer ? kapi_tokenize(out->tokenizer, text, size, &n, path, errors) : NULL;
    if (ids) {
        /* nanoGPT: train_data = data[:int(n * 0.9)], val_data = data[int(n * 0.9):] */
        int64_t cut = validation_split > 0 ? (int64_t)((double)n * (1 - validation_split)) : n;
        out->tokens = n;
        out->train_tokens = cut;
        out->validation_tokens = n - cut;
        const char *split_path = validation_split > 0 ? "data.validation_split" : path;
        if (cut < block_size + 1 || (validation_split > 0 && n - cut < block_size + 1))
            kapi_errors_add(errors, split_path,
                            "the text has %lld tokens: %lld to train on and %lld to validate, "
                            "and each part needs at least block_size + 1 = %lld (the model's "
                            "input is %lld tokens)",
                            (long long)n, (long long)cut, (long long)(n - cut),
                            (long long)(block_size + 1), (long long)block_size);
        else {
            out->train = windows(ids, cut, block_size, false, 0, path, errors);
            if (out->train && validation_split > 0)
                out->validation =
                    windows(ids + cut, n - cut, block_size, true, validation_windows, path, errors);
        }
    }
    free(ids);
    if (errors->count == before) return true;
    kapi_text_data_free(out);
    return false;
}

bool kapi_text_data_load(const char *file, kapi_tokenizer_kind kind, int64_t block_size,
                         double validation_split, int64_t validation_windows, kapi_text_data *out,
                         kapi_errors *errors)
{
    memset(out, 0, sizeof *out);
    size_t size = 0;
    char *text = kapi_read_file(file, &size, errors);
    if (!text) return false;
    bool ok = kapi_text_data_make(text, size, kind, block_size, validation_split,
                                  validation_windows, file, out, errors);
    free(text);
    return ok;
}

/* ---- a generate request ---------------------------------------------------------------- */
static const char *const GENERATE_FIELDS[] = {"prompt",      "max_new_tokens", "do_sample",
                                              "temperature", "top_k",          "seed",
                                              "stream",      "use_cache",      NULL};

void kapi_generate_request_free(kapi_generate_request *request)
{
    if (!request) return;
    free(request->prompt);
    memset(request, 0, sizeof *request);
}

bool kapi_generate_request_parse(const char *json, size_t length, kapi_generate_request *out,
                                 kapi_errors *errors)
{
    memset(out, 0, sizeof *out);
    out->max_new_tokens = 200;
    out->do_sample = true;
    out->temperature = 1.0;
    out->use_cache = true;
    int before = errors->count;
    cJSON *o = kapi__parse_object(json, length, errors);
    if (!o) return false;
    kapi__check_fields(errors, o, "", GENERATE_FIELDS);
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    char got[96];
    if (!prompt) {
        kapi__missing(errors, "", "prompt", "the text to continue, a non-empty string");
    } else if (!cJSON_IsString(prompt) || !prompt->valuestring[0]) {
        kapi__describe(prompt, got, sizeof got);
        kapi_errors_add(errors, "prompt",
                        "expected a non-empty string (the text to continue), "
                        "got %s",
                        got);
    } else {
        out->prompt_size = strlen(prompt->valuestring);
        out->prompt = strdup(prompt->valuestring);
        if (!out->prompt) kapi_errors_add(errors, "prompt", "out of memory");
    }
    kapi__get_int(errors, o, "max_new_tokens", "", 0, KAPI_MAX_NEW_TOKENS, &out->max_new_tokens);
    kapi__get_bool(errors, o, "do_sample", "", &out->do_sample);
    kapi__get_bool(errors, o, "stream", "", &out->stream);
    kapi__get_bool(errors, o, "use_cache", "", &out->use_cache);
    const cJSON *temperature = cJSON_GetObjectItemCaseSensitive(o, "temperature");
    if (temperature) {
        bool ok = cJSON_IsNumber(temperature) && isfinite(temperature->valuedouble) &&
                  (temperature->valuedouble > 0 || !out->do_sample);
        if (ok) {
            out->temperature = temperature->valuedouble;
        } else {
            kapi__describe(temperature, got, sizeof got);
            kapi_errors_add(errors, "temperature",
                            "expected a finite number > 0 when sampling (do_sample is true; "
                            "\"do_sample\": false picks the most likely token), got %s",
                            got);
        }
    }
    int top_k = kapi__get_int(errors, o, "top_k", "", 1, KAPI_MAX_VOCAB, &out->top_k);
    if (top_k == KAPI_BAD) {
        /* say what leaving it out does: the path and message are the shared ones */
        kapi_error *e = &errors->items[errors->count - 1];
        size_t used = strlen(e->message);
        snprintf(e->message + used, sizeof e->message - used,
                 " (leave top_k out to sample from every token)");
    }
    int64_t seed = 0;
    if (kapi__get_int(errors, o, "seed", "", 0, (int64_t)1 << 53, &seed) == KAPI_OK) {
        out->seed = (uint64_t)seed;
        out->seed_given = true;
    }
    cJSON_Delete(o);
    if (errors->count == before) return true;
    kapi_generate_request_free(out);
    return false;
}

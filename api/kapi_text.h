/*
 * kapi_text.h — text for language models (issue 12): the tokenizers that turn a text
 * dataset into token ids and generated ids back into text, pure and fuzzable.
 *
 * Two tokenizers, as nanoGPT's character-level and byte-level recipes:
 *   bytes  every byte is a token (vocabulary 256); any file is valid.
 *   chars  the distinct characters (Unicode code points) of the training text, in
 *          ascending code-point order (nanoGPT's sorted(set(text))): token i is the i-th.
 *          The text must be valid UTF-8 without NUL. The vocabulary travels with the
 *          weights (kapi_tokenizer_to_json, in their metadata under kiln.tokenizer:
 *          kapi_save_weights) so generation encodes and decodes as training did.
 *
 * Decoded text is always valid UTF-8: a byte tokenizer's ids may end mid-character or
 * form no character at all; incomplete sequences wait for their next bytes
 * (kapi_text_decoder) and invalid ones become U+FFFD, as Python's
 * bytes.decode(errors="replace") does.
 *
 * Ownership: functions returning pointers return malloc'd memory the caller frees
 * (kapi_tokenizer_free for a tokenizer, free() otherwise); NULL with an error added.
 */
#ifndef KAPI_TEXT_H
#define KAPI_TEXT_H

#include "kapi.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { KAPI_TOKENIZER_BYTES = 1, KAPI_TOKENIZER_CHARS = 2 } kapi_tokenizer_kind;

/* The most characters a chars vocabulary may hold (an embedding table of this many rows
 * is already far beyond a character model). */
#define KAPI_MAX_VOCAB 65536

typedef struct kapi_tokenizer {
    kapi_tokenizer_kind kind;
    int64_t vocab_size; /* 256 for bytes */
    uint32_t *chars;    /* chars: vocab_size code points, ascending; NULL for bytes */
} kapi_tokenizer;

/* "bytes" or "chars". */
const char *kapi_tokenizer_kind_name(kapi_tokenizer_kind kind);
/* A name as a job spec gives it: false when it is neither. */
bool kapi_tokenizer_kind_parse(const char *name, kapi_tokenizer_kind *out);

/* The byte tokenizer (vocabulary 256). */
kapi_tokenizer *kapi_tokenizer_bytes(void);
/* A tokenizer of kind for a training text: bytes needs nothing of it; chars takes its
 * distinct characters. Errors (at path, e.g. the file's name): invalid UTF-8 or NUL (the
 * byte offset), an empty text, more than KAPI_MAX_VOCAB characters. */
kapi_tokenizer *kapi_tokenizer_for_text(kapi_tokenizer_kind kind, const char *text, size_t size,
                                        const char *path, kapi_errors *errors);
void kapi_tokenizer_free(kapi_tokenizer *tokenizer); /* NULL-safe */

/* Checks that text is valid UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF) without NUL; false with an error at path naming the byte offset. *chars (may
 * be NULL) gets the number of characters. */
bool kapi_text_check_utf8(const char *text, size_t size, const char *path, int64_t *chars,
                          kapi_errors *errors);

/* The token ids of text (*count of them, malloc'd; a text of no tokens gives a valid
 * 1-element buffer and *count 0). Errors at path: invalid UTF-8 for chars, a character
 * outside the vocabulary (quoted, with its code point and offset). */
int64_t *kapi_tokenize(const kapi_tokenizer *tokenizer, const char *text, size_t size,
                       int64_t *count, const char *path, kapi_errors *errors);

/* The text of ids (valid UTF-8, NUL-terminated, *size bytes before the NUL; size may be
 * NULL). An id outside the vocabulary is an error at path naming it and its index. */
char *kapi_detokenize(const kapi_tokenizer *tokenizer, const int64_t *ids, int64_t n, size_t *size,
                      const char *path, kapi_errors *errors);

/* Streaming decode, one id at a time (a stream of generated tokens): what the id
 * completes, as valid UTF-8. Zero-initialise; kapi_text_decoder_finish flushes what is
 * left (an incomplete character becomes U+FFFD). */
typedef struct kapi_text_decoder {
    unsigned char pending[4];
    int n_pending;
} kapi_text_decoder;
/* Writes the text id completes to out (at most 16 bytes, NUL-terminated) and returns its
 * length (0: waiting for more bytes); -1 for an id outside the vocabulary. */
int kapi_text_decoder_push(kapi_text_decoder *decoder, const kapi_tokenizer *tokenizer, int64_t id,
                           char out[16]);
int kapi_text_decoder_finish(kapi_text_decoder *decoder, char out[16]);

/* The tokenizer as JSON (malloc'd object; the weights' kiln.tokenizer):
 *   {"type": "tokenize", "tokenizer": "bytes", "vocab_size": 256}
 *   {"type": "tokenize", "tokenizer": "chars", "vocab_size": 65, "chars": [10, 32, ...]}
 * (code points: any character, NUL-free or not, written exactly). */
char *kapi_tokenizer_to_json(const kapi_tokenizer *tokenizer);
/* Parses it back; errors at path ("kiln.preprocessing.steps[0]"). */
kapi_tokenizer *kapi_tokenizer_from_json(const char *json, size_t length, const char *path,
                                         kapi_errors *errors);

/* The safetensors metadata key of a text model's tokenizer (kapi_tokenizer_to_json): a
 * weights file carrying it is a text model, whose generation encodes and decodes with it. */
#define KAPI_META_TOKENIZER "kiln.tokenizer"
/* The tokenizer of a weights file: NULL with *found false when the file has none (not a
 * text model), NULL with errors added (at path) when it cannot be read. */
kapi_tokenizer *kapi_load_tokenizer(const char *weights, const char *path, bool *found,
                                    kapi_errors *errors);

/* ---- a language model's data ---------------------------------------------------------- */
/* A text as a language model trains on it (nanoGPT's prepare.py and get_batch): the whole
 * text tokenised, its first 1 - validation_split part the training windows (stride 1,
 * drawn shuffled) and the rest the validation windows (stride block_size, every position
 * scored once, or spaced further apart so that there are at most validation_windows). */
typedef struct kapi_text_data {
    kapi_tokenizer *tokenizer;
    kn_dataset *train, *validation; /* validation NULL when validation_split is 0 */
    int64_t tokens, train_tokens, validation_tokens;
} kapi_text_data;

/* The most validation windows by default: nanoGPT's eval_iters 200 x batch 12. */
#define KAPI_DEFAULT_VALIDATION_WINDOWS 2400

/* Builds *out from text (size bytes). Errors at path (the field that names the text,
 * "data.dataset" or a file) and at "data.validation_split" when a part is too short for
 * one window. false with errors added, *out cleared. */
bool kapi_text_data_make(const char *text, size_t size, kapi_tokenizer_kind kind,
                         int64_t block_size, double validation_split, int64_t validation_windows,
                         const char *path, kapi_text_data *out, kapi_errors *errors);
/* kapi_text_data_make of a file (gzip or plain). */
bool kapi_text_data_load(const char *file, kapi_tokenizer_kind kind, int64_t block_size,
                         double validation_split, int64_t validation_windows, kapi_text_data *out,
                         kapi_errors *errors);
void kapi_text_data_free(kapi_text_data *data); /* what it holds; NULL-safe */

/* ---- a generate request ------------------------------------------------------------ */
/* The most tokens one request may ask for. */
#define KAPI_MAX_NEW_TOKENS 100000

/* POST /v1/models/{name}/generate's body, kiln generate's options:
 *   {"prompt": "...", "max_new_tokens": 200, "do_sample": true, "temperature": 1.0,
 *    "top_k": 40, "seed": 1, "stream": false, "use_cache": true}
 * prompt required and non-empty; max_new_tokens 0..KAPI_MAX_NEW_TOKENS (default 200);
 * temperature finite and > 0 when sampling (default 1); top_k >= 1 (absent: every
 * token); seed 0..2^53 (absent: seed_given false, the caller picks one and reports it). */
typedef struct kapi_generate_request {
    char *prompt; /* malloc'd, NUL-terminated, prompt_size bytes before the NUL */
    size_t prompt_size;
    int64_t max_new_tokens;
    bool do_sample;
    double temperature;
    int64_t top_k; /* 0: absent */
    uint64_t seed;
    bool seed_given;
    bool stream;
    bool use_cache;
} kapi_generate_request;

/* Parses a request; false with errors added (each at its field). *out is cleared on
 * failure; free with kapi_generate_request_free. */
bool kapi_generate_request_parse(const char *json, size_t length, kapi_generate_request *out,
                                 kapi_errors *errors);
void kapi_generate_request_free(kapi_generate_request *request);

#ifdef __cplusplus
}
#endif
#endif

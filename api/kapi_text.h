/*
 * kapi_text.h — text for language models (issue 12): the tokenizers that turn a text
 * dataset into token ids and generated ids back into text, pure and fuzzable.
 *
 * Two tokenizers, as nanoGPT's character-level and byte-level recipes:
 *   bytes  every byte is a token (vocabulary 256); any file is valid.
 *   chars  the distinct characters (Unicode code points) of the training text, in
 *          ascending code-point order (nanoGPT's sorted(set(text))): token i is the i-th.
 *          The text must be valid UTF-8 without NUL. The vocabulary travels with the
 *          weights (kapi_tokenizer_to_json: the "tokenize" step of "kiln.preprocessing")
 *          so generation encodes and decodes as training did.
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

/* The tokenizer as the "tokenize" step of "kiln.preprocessing" (malloc'd JSON object):
 *   {"type": "tokenize", "tokenizer": "bytes", "vocab_size": 256}
 *   {"type": "tokenize", "tokenizer": "chars", "vocab_size": 65, "chars": [10, 32, ...]}
 * (code points: any character, NUL-free or not, written exactly). */
char *kapi_tokenizer_to_json(const kapi_tokenizer *tokenizer);
/* Parses it back; errors at path ("kiln.preprocessing.steps[0]"). */
kapi_tokenizer *kapi_tokenizer_from_json(const char *json, size_t length, const char *path,
                                         kapi_errors *errors);

#ifdef __cplusplus
}
#endif
#endif

/*
 * fuzz_text.c — text uploads as kilnd checks them and language-model jobs tokenise them
 * (api/text.c): gunzipped when gzip, then a chars tokenizer built from the text (or a
 * refusal naming the byte), the text tokenised with it, decoded back to the very same
 * bytes, and streamed decoding one id at a time giving the same text; the bytes
 * tokenizer decodes any input to valid UTF-8, whole and streamed alike, and the
 * vocabulary's JSON parses back to the same vocabulary.
 */
#include "fuzz.h"
#include "kapi_text.h"

#include <stdlib.h>
#include <string.h>

/* ids decoded one at a time equal the whole decoding (valid UTF-8). */
static void check_streamed(const kapi_tokenizer *t, const int64_t *ids, int64_t n,
                           const char *whole, size_t whole_size)
{
    char *streamed = malloc((size_t)n * 4 + 4);
    FUZZ_CHECK(streamed, "out of memory");
    kapi_text_decoder d = {0};
    size_t len = 0;
    char piece[16];
    for (int64_t i = 0; i < n; i++) {
        int got = kapi_text_decoder_push(&d, t, ids[i], piece);
        FUZZ_CHECK(got >= 0 && got <= 12, "decoder_push gave %d", got);
        memcpy(streamed + len, piece, (size_t)got);
        len += (size_t)got;
    }
    int got = kapi_text_decoder_finish(&d, piece);
    memcpy(streamed + len, piece, (size_t)got);
    len += (size_t)got;
    FUZZ_CHECK(len == whole_size && !memcmp(streamed, whole, len),
               "streamed decoding differs from the whole decoding");
    FUZZ_CHECK(fuzz_utf8_valid((const uint8_t *)whole, whole_size), "decoded text is not UTF-8");
    free(streamed);
}

static void round_trip(kapi_tokenizer *t, const uint8_t *text, size_t size)
{
    kapi_errors e = {0};
    int64_t n = 0;
    int64_t *ids = kapi_tokenize(t, (const char *)text, size, &n, "text", &e);
    FUZZ_CHECK(ids, "tokenising the training text with its own vocabulary failed");
    for (int64_t i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < t->vocab_size, "id %lld out of range",
                   (long long)ids[i]);
    size_t len = 0;
    char *back = kapi_detokenize(t, ids, n, &len, "ids", &e);
    FUZZ_CHECK(back, "decoding failed");
    if (t->kind == KAPI_TOKENIZER_CHARS)
        FUZZ_CHECK(len == size && !memcmp(back, text, size), "chars decoding changed the text");
    check_streamed(t, ids, n, back, len);
    char *json = kapi_tokenizer_to_json(t);
    FUZZ_CHECK(json, "to_json failed");
    kapi_tokenizer *again = kapi_tokenizer_from_json(json, strlen(json), "step", &e);
    FUZZ_CHECK(again && again->vocab_size == t->vocab_size && again->kind == t->kind &&
                   (t->kind == KAPI_TOKENIZER_BYTES ||
                    !memcmp(again->chars, t->chars, sizeof(uint32_t) * (size_t)t->vocab_size)),
               "the vocabulary's JSON does not read back");
    kapi_tokenizer_free(again);
    free(json);
    free(back);
    free(ids);
    kapi_errors_free(&e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void *owned;
    size_t text_size;
    const uint8_t *text = fuzz_gunzip_if_gzip(data, size, &text_size, &owned);
    if (!text) return 0;
    kapi_errors e = {0};
    kapi_tokenizer *chars =
        kapi_tokenizer_for_text(KAPI_TOKENIZER_CHARS, (const char *)text, text_size, "text", &e);
    bool valid = fuzz_utf8_valid(text, text_size) && !memchr(text, 0, text_size) && text_size;
    if (chars) {
        FUZZ_CHECK(valid, "a chars tokenizer from text that is not UTF-8 without NUL");
        round_trip(chars, text, text_size);
    } else {
        fuzz_check_kapi_errors(&e, "kapi_tokenizer_for_text", fuzz_utf8_valid(data, size));
    }
    kapi_errors_free(&e);
    kapi_tokenizer_free(chars);
    kapi_tokenizer *bytes =
        kapi_tokenizer_for_text(KAPI_TOKENIZER_BYTES, (const char *)text, text_size, "text", &e);
    FUZZ_CHECK(bytes || !text_size, "the bytes tokenizer refused a non-empty text");
    if (bytes) round_trip(bytes, text, text_size);
    kapi_tokenizer_free(bytes);
    kapi_errors_free(&e);
    free(owned);
    return 0;
}

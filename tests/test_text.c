/*
 * test_text.c — the tokenizers of text datasets (api/text.c): a chars vocabulary is
 * nanoGPT's sorted(set(text)) over code points, encode/decode round trips, UTF-8 checked
 * strictly with the byte offset named, characters outside the vocabulary named, bytes
 * decoded to valid UTF-8 whether whole or streamed one id at a time, and the vocabulary's
 * JSON round trip with its errors.
 */
#include "kapi_text.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static const char *first_error(const kapi_errors *e)
{
    return e->count ? e->items[0].message : "";
}

Test(text, chars_vocabulary_is_the_sorted_distinct_code_points)
{
    kapi_errors e = {0};
    const char *text = "hello, w\xC3\xB6rld\n\xE2\x82\xAC!"; /* ö U+00F6, € U+20AC */
    kapi_tokenizer *t = kapi_tokenizer_for_text(KAPI_TOKENIZER_CHARS, text, strlen(text), "f", &e);
    cr_assert_not_null(t, "%s", first_error(&e));
    /* sorted(set("hello, wörld\n€!")) */
    uint32_t want[] = {'\n', ' ', '!', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w', 0xF6, 0x20AC};
    cr_assert_eq(t->vocab_size, 13);
    for (int i = 0; i < 13; i++) cr_assert_eq(t->chars[i], want[i], "chars[%d]", i);

    int64_t n = 0;
    int64_t *ids = kapi_tokenize(t, text, strlen(text), &n, "prompt", &e);
    cr_assert_not_null(ids, "%s", first_error(&e));
    cr_assert_eq(n, 15);       /* characters, not bytes (18) */
    cr_assert_eq(ids[0], 6);   /* h */
    cr_assert_eq(ids[8], 11);  /* ö */
    cr_assert_eq(ids[13], 12); /* € */
    size_t len = 0;
    char *back = kapi_detokenize(t, ids, n, &len, "ids", &e);
    cr_assert_str_eq(back, text);
    cr_assert_eq(len, strlen(text));
    free(back);
    free(ids);
    kapi_tokenizer_free(t);
    kapi_errors_free(&e);
}

Test(text, characters_outside_the_vocabulary_are_named)
{
    kapi_errors e = {0};
    kapi_tokenizer *t = kapi_tokenizer_for_text(KAPI_TOKENIZER_CHARS, "abc", 3, "f", &e);
    int64_t n = 0;
    cr_assert_null(kapi_tokenize(t, "abz", 3, &n, "prompt", &e));
    cr_assert_str_eq(e.items[0].path, "prompt");
    cr_assert_str_eq(first_error(&e),
                     "'z' (U+007A) at byte 2 is not in the model's vocabulary of 3 characters");
    kapi_errors_free(&e);
    cr_assert_null(kapi_tokenize(t, "a\n", 2, &n, "prompt", &e));
    cr_assert_str_eq(first_error(&e),
                     "'\\n' (U+000A) at byte 1 is not in the model's vocabulary of 3 characters");
    kapi_errors_free(&e);
    /* an id out of range in decoding */
    cr_assert_null(kapi_detokenize(t, (int64_t[]){0, 3}, 2, NULL, "tokens", &e));
    cr_assert_str_eq(first_error(&e), "token 3 (index 1) is outside the vocabulary of 3");
    kapi_errors_free(&e);
    kapi_tokenizer_free(t);
}

Test(text, utf8_is_checked_strictly)
{
    struct {
        const char *bytes;
        size_t n;
        const char *message;
    } bad[] = {
        {"ab\xC0\xAF", 4, "invalid UTF-8 at byte 2 (0xC0)"},        /* overlong '/' */
        {"\xED\xA0\x80", 3, "invalid UTF-8 at byte 0 (0xED)"},      /* a surrogate */
        {"x\xF4\x90\x80\x80", 5, "invalid UTF-8 at byte 1 (0xF4)"}, /* past U+10FFFF */
        {"ok\xE2\x82", 4, "truncated UTF-8 at byte 2 (0xE2)"},      /* cut off */
        {"\x80", 1, "invalid UTF-8 at byte 0 (0x80)"},              /* a continuation */
        {"a\0b", 3, "a NUL byte at byte 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kapi_errors e = {0};
        cr_assert_null(
            kapi_tokenizer_for_text(KAPI_TOKENIZER_CHARS, bad[i].bytes, bad[i].n, "input.txt", &e));
        cr_assert_str_eq(e.items[0].path, "input.txt");
        cr_assert(strstr(first_error(&e), bad[i].message), "case %zu: %s", i, first_error(&e));
        kapi_errors_free(&e);
        /* the bytes tokenizer takes anything */
        kapi_tokenizer *b =
            kapi_tokenizer_for_text(KAPI_TOKENIZER_BYTES, bad[i].bytes, bad[i].n, "input.txt", &e);
        cr_assert_not_null(b);
        cr_assert_eq(b->vocab_size, 256);
        kapi_tokenizer_free(b);
    }
    int64_t chars = 0;
    kapi_errors e = {0};
    cr_assert(kapi_text_check_utf8("\xF0\x9F\x94\xA5 ok", 7, "x", &chars, &e));
    cr_assert_eq(chars, 4);
    cr_assert_null(kapi_tokenizer_for_text(KAPI_TOKENIZER_CHARS, "", 0, "input.txt", &e));
    cr_assert_str_eq(first_error(&e), "the text is empty: a language model needs text to learn");
    kapi_errors_free(&e);
}

/* Bytes decode to valid UTF-8: whole characters as they are, invalid bytes as U+FFFD,
 * and one id at a time a character waits for its last byte. */
Test(text, bytes_decode_to_valid_utf8_whole_or_streamed)
{
    kapi_errors e = {0};
    kapi_tokenizer *t = kapi_tokenizer_bytes();
    const char *text = "a\xE2\x82\xAC\xFF"
                       "b\xC3";
    int64_t n = 0;
    int64_t *ids = kapi_tokenize(t, text, strlen(text), &n, "prompt", &e);
    cr_assert_eq(n, 7);
    cr_assert_eq(ids[4], 0xFF);
    char *whole = kapi_detokenize(t, ids, n, NULL, "ids", &e);
    cr_assert_str_eq(whole, "a\xE2\x82\xAC\xEF\xBF\xBD"
                            "b\xEF\xBF\xBD");
    kapi_text_decoder d = {0};
    char piece[16], streamed[64] = "";
    int lengths[7];
    for (int i = 0; i < 7; i++) {
        lengths[i] = kapi_text_decoder_push(&d, t, ids[i], piece);
        strcat(streamed, piece);
    }
    kapi_text_decoder_finish(&d, piece);
    strcat(streamed, piece);
    cr_assert_str_eq(streamed, whole);
    /* the euro sign comes out with its third byte, nothing before */
    cr_assert_eq(lengths[1], 0);
    cr_assert_eq(lengths[2], 0);
    cr_assert_eq(lengths[3], 3);
    cr_assert_eq(kapi_text_decoder_push(&d, t, 256, piece), -1);
    free(whole);
    free(ids);
    kapi_tokenizer_free(t);
}

Test(text, the_vocabulary_round_trips_through_json)
{
    kapi_errors e = {0};
    const char *text = "\x01zebra\xE2\x82\xAC";
    kapi_tokenizer *t = kapi_tokenizer_for_text(KAPI_TOKENIZER_CHARS, text, strlen(text), "f", &e);
    char *json = kapi_tokenizer_to_json(t);
    cr_assert_str_eq(json, "{\"type\":\"tokenize\",\"tokenizer\":\"chars\",\"vocab_size\":7,"
                           "\"chars\":[1,97,98,101,114,122,8364]}");
    kapi_tokenizer *back = kapi_tokenizer_from_json(json, strlen(json), "step", &e);
    cr_assert_not_null(back, "%s", first_error(&e));
    cr_assert_eq(back->vocab_size, 7);
    cr_assert_eq(memcmp(back->chars, t->chars, 7 * sizeof(uint32_t)), 0);
    kapi_tokenizer_free(back);
    free(json);
    kapi_tokenizer *b = kapi_tokenizer_bytes();
    json = kapi_tokenizer_to_json(b);
    back = kapi_tokenizer_from_json(json, strlen(json), "step", &e);
    cr_assert_eq(back->kind, KAPI_TOKENIZER_BYTES);
    kapi_tokenizer_free(back);
    kapi_tokenizer_free(b);
    free(json);
    kapi_tokenizer_free(t);

    struct {
        const char *json, *path, *message;
    } bad[] = {
        {"{\"type\":\"tokenize\",\"tokenizer\":\"words\",\"vocab_size\":3}", "step.tokenizer",
         "expected \"bytes\" or \"chars\""},
        {"{\"type\":\"tokenize\",\"tokenizer\":\"bytes\",\"vocab_size\":255}", "step.vocab_size",
         "expected 256 for the bytes tokenizer, got 255"},
        {"{\"type\":\"tokenize\",\"tokenizer\":\"chars\",\"vocab_size\":2,\"chars\":[5]}",
         "step.chars", "expected an array of vocab_size (2) code points"},
        {"{\"type\":\"tokenize\",\"tokenizer\":\"chars\",\"vocab_size\":2,\"chars\":[5,5]}",
         "step.chars[1]", "expected a code point (not a surrogate) above the one before, got 5"},
        {"{\"type\":\"tokenize\",\"tokenizer\":\"chars\",\"vocab_size\":1,\"chars\":[55296]}",
         "step.chars[0]",
         "expected a code point (not a surrogate) above the one before, got "
         "55296"},
        {"{\"type\":\"tokenize\",\"tokenizer\":\"chars\"}", "step.vocab_size", "required"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_null(kapi_tokenizer_from_json(bad[i].json, strlen(bad[i].json), "step", &e),
                       "case %zu", i);
        cr_assert_str_eq(e.items[0].path, bad[i].path, "case %zu", i);
        cr_assert_str_eq(first_error(&e), bad[i].message, "case %zu", i);
        kapi_errors_free(&e);
    }
}

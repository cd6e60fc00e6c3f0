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

/* nanoGPT's split: the first 90% trains (windows at every offset), the last 10%
 * validates (windows every block_size tokens, or further apart past a cap). */
Test(text, a_text_becomes_training_and_validation_windows)
{
    char text[1001];
    for (int i = 0; i < 1000; i++) text[i] = "abcdefg\n"[i % 8];
    text[1000] = 0;
    kapi_errors e = {0};
    kapi_text_data d;
    cr_assert(kapi_text_data_make(text, 1000, KAPI_TOKENIZER_CHARS, 8, 0.1, 0, "t", &d, &e), "%s",
              first_error(&e));
    cr_assert_eq(d.tokenizer->vocab_size, 8);
    cr_assert_eq(d.train_tokens, 900);
    cr_assert_eq(d.validation_tokens, 100);
    cr_assert_eq(d.train->count, 900 - 8);
    cr_assert_eq(d.validation->count, (100 - 9) / 8 + 1);
    kapi_text_data_free(&d);
    cr_assert(kapi_text_data_make(text, 1000, KAPI_TOKENIZER_BYTES, 8, 0.5, 10, "t", &d, &e));
    cr_assert_eq(d.tokenizer->vocab_size, 256);
    cr_assert_eq(d.validation->count, 10, "at most validation_windows");
    kapi_text_data_free(&d);
    cr_assert(kapi_text_data_make(text, 1000, KAPI_TOKENIZER_CHARS, 8, 0, 0, "t", &d, &e));
    cr_assert_null(d.validation);
    kapi_text_data_free(&d);
    cr_assert_not(kapi_text_data_make(text, 1000, KAPI_TOKENIZER_CHARS, 200, 0.1, 0, "t", &d, &e));
    cr_assert_str_eq(e.items[0].path, "data.validation_split");
    cr_assert_str_eq(first_error(&e),
                     "the text has 1000 tokens: 900 to train on and 100 to validate, and each "
                     "part needs at least block_size + 1 = 201 (the model's input is 200 tokens)");
    cr_assert_null(d.tokenizer);
    kapi_errors_free(&e);
}

Test(text, a_generate_request_and_its_errors)
{
    kapi_errors e = {0};
    kapi_generate_request r;
    const char *ok = "{\"prompt\": \"ROMEO:\", \"max_new_tokens\": 5, \"temperature\": 0.8, "
                     "\"top_k\": 40, \"seed\": 1, \"stream\": true}";
    cr_assert(kapi_generate_request_parse(ok, strlen(ok), &r, &e), "%s", first_error(&e));
    cr_assert_str_eq(r.prompt, "ROMEO:");
    cr_assert_eq(r.max_new_tokens, 5);
    cr_assert_eq(r.top_k, 40);
    cr_assert(r.seed_given && r.seed == 1 && r.stream && r.do_sample && r.use_cache);
    kapi_generate_request_free(&r);
    const char *defaults = "{\"prompt\": \"x\"}";
    cr_assert(kapi_generate_request_parse(defaults, strlen(defaults), &r, &e));
    cr_assert(r.max_new_tokens == 200 && r.temperature == 1.0 && r.top_k == 0 && !r.seed_given);
    kapi_generate_request_free(&r);
    const char *greedy = "{\"prompt\": \"x\", \"do_sample\": false, \"temperature\": 0}";
    cr_assert(kapi_generate_request_parse(greedy, strlen(greedy), &r, &e), "%s", first_error(&e));
    kapi_generate_request_free(&r);

    struct {
        const char *json, *path, *message;
    } bad[] = {
        {"{\"prompt\": \"x\", \"max_new_tokens\": -1}", "max_new_tokens",
         "expected a non-negative integer, got -1"},
        {"{\"prompt\": \"x\", \"temperature\": 0}", "temperature",
         "expected a finite number > 0 when sampling (do_sample is true; \"do_sample\": false "
         "picks the most likely token), got 0"},
        {"{\"prompt\": \"x\", \"top_k\": 0}", "top_k",
         "expected a positive integer, got 0 (leave top_k out to sample from every token)"},
        {"{\"prompt\": \"\"}", "prompt",
         "expected a non-empty string (the text to continue), got \"\""},
        {"{\"max_new_tokens\": 3}", "prompt", NULL},
        {"{\"prompt\": \"x\", \"seed\": 1.5}", "seed", NULL},
        {"{\"prompt\": \"x\", \"temprature\": 1}", "temprature", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_not(kapi_generate_request_parse(bad[i].json, strlen(bad[i].json), &r, &e),
                      "case %zu", i);
        cr_assert_str_eq(e.items[0].path, bad[i].path, "case %zu", i);
        if (bad[i].message) cr_assert_str_eq(first_error(&e), bad[i].message, "case %zu", i);
        cr_assert_null(r.prompt);
        kapi_errors_free(&e);
    }
}

/*
 * text.c — the tokenizers of text datasets and generation (kapi_text.h): UTF-8 checked
 * strictly (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF), a chars
 * vocabulary as the sorted distinct code points of the training text, encoding by binary
 * search in it, decoding to valid UTF-8 (U+FFFD for what a byte stream gets wrong), and
 * the vocabulary's JSON for the weights' metadata.
 */
#include "kapi_internal.h"
#include "kapi_text.h"
#include "kn_safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

const char *kapi_tokenizer_kind_name(kapi_tokenizer_kind kind)
{
    return kind == KAPI_TOKENIZER_CHARS ? "chars" : "bytes";
}

bool kapi_tokenizer_kind_parse(const char *name, kapi_tokenizer_kind *out)
{
    if (!name) return false;
    if (!strcmp(name, "bytes"))
        *out = KAPI_TOKENIZER_BYTES;
    else if (!strcmp(name, "chars"))
        *out = KAPI_TOKENIZER_CHARS;
    else
        return false;
    return true;
}

/* The character starting at s[0] (n bytes available): its length (1-4) and code point,
 * or 0 when the bytes are not a valid UTF-8 sequence, -1 when they are a valid but
 * incomplete start (more bytes needed). */
static int utf8_char(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t min;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80, *cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800, *cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000, *cp = c & 0x07;
    else
        return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -1;
        if ((s[i] & 0xC0) != 0x80) return 0;
        *cp = (*cp << 6) | (s[i] & 0x3F);
        /* refuse as early as the second byte decides it, so an incomplete start is a
         * prefix of some valid character */
        if (i == 1 && len == 3 && ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F)))
            return 0;
        if (i == 1 && len == 4 && ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F)))
            return 0;
    }
    if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF)) return 0;
    return len;
}

static int utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A character for a message: 'x', or the escape for a control character. */
static void quote_char(uint32_t cp, char *buf, size_t size)
{
    if (cp == '\n')
        snprintf(buf, size, "'\\n'");
    else if (cp == '\t')
        snprintf(buf, size, "'\\t'");
    else if (cp == '\r')
        snprintf(buf, size, "'\\r'");
    else if (cp < 0x20 || cp == 0x7F)
        snprintf(buf, size, "a control character");
    else {
        char enc[5] = {0};
        utf8_encode(cp, enc);
        snprintf(buf, size, "'%s'", enc);
    }
}

bool kapi_text_check_utf8(const char *text, size_t size, const char *path, int64_t *chars,
                          kapi_errors *errors)
{
    const unsigned char *s = (const unsigned char *)text;
    int64_t count = 0;
    for (size_t i = 0; i < size;) {
        uint32_t cp = 0;
        int len = s[i] < 0x80 ? 1 : utf8_char(s + i, size - i, &cp);
        if (len == 1 && s[i] == 0) {
            kapi_errors_add(errors, path,
                            "a NUL byte at byte %zu: a text of characters has none (the bytes "
                            "tokenizer takes any file)",
                            i);
            return false;
        }
        if (len <= 0) {
            kapi_errors_add(errors, path,
                            "%s UTF-8 at byte %zu (0x%02X): a text of characters must be UTF-8 "
                            "(the bytes tokenizer takes any file)",
                            len < 0 ? "truncated" : "invalid", i, s[i]);
            return false;
        }
        i += (size_t)len;
        count++;
    }
    if (chars) *chars = count;
    return true;
}

kapi_tokenizer *kapi_tokenizer_bytes(void)
{
    kapi_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->kind = KAPI_TOKENIZER_BYTES;
    t->vocab_size = 256;
    return t;
}

void kapi_tokenizer_free(kapi_tokenizer *tokenizer)
{
    if (!tokenizer) return;
    free(tokenizer->chars);
    free(tokenizer);
}

/* A chars tokenizer of the code points marked in seen (0x110000 flags). */
static kapi_tokenizer *chars_of(const unsigned char *seen, int64_t distinct)
{
    kapi_tokenizer *t = calloc(1, sizeof *t);
    uint32_t *chars = malloc(sizeof(uint32_t) * (size_t)(distinct > 0 ? distinct : 1));
    if (!t || !chars) {
        free(t);
        free(chars);
        return NULL;
    }
    int64_t n = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++)
        if (seen[cp]) chars[n++] = cp;
    t->kind = KAPI_TOKENIZER_CHARS;
    t->vocab_size = n;
    t->chars = chars;
    return t;
}

kapi_tokenizer *kapi_tokenizer_for_text(kapi_tokenizer_kind kind, const char *text, size_t size,
                                        const char *path, kapi_errors *errors)
{
    if (size == 0) {
        kapi_errors_add(errors, path, "the text is empty: a language model needs text to learn");
        return NULL;
    }
    if (kind == KAPI_TOKENIZER_BYTES) {
        kapi_tokenizer *t = kapi_tokenizer_bytes();
        if (!t) kapi_errors_add(errors, path, "out of memory");
        return t;
    }
    if (!kapi_text_check_utf8(text, size, path, NULL, errors)) return NULL;
    unsigned char *seen = calloc(0x110000, 1);
    if (!seen) {
        kapi_errors_add(errors, path, "out of memory");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)text;
    int64_t distinct = 0;
    for (size_t i = 0; i < size;) {
        uint32_t cp = 0;
        int len = utf8_char(s + i, size - i, &cp); /* valid: checked above */
        if (!seen[cp]) distinct++;
        seen[cp] = 1;
        i += (size_t)len;
    }
    kapi_tokenizer *t = NULL;
    if (distinct > KAPI_MAX_VOCAB)
        kapi_errors_add(errors, path,
                        "the text has %lld distinct characters, more than a chars vocabulary "
                        "takes (%d): use the bytes tokenizer",
                        (long long)distinct, KAPI_MAX_VOCAB);
    else if (!(t = chars_of(seen, distinct)))
        kapi_errors_add(errors, path, "out of memory");
    free(seen);
    return t;
}

/* The id of cp in a chars vocabulary, -1 when it has none. */
static int64_t char_id(const kapi_tokenizer *t, uint32_t cp)
{
    int64_t lo = 0, hi = t->vocab_size - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (t->chars[mid] == cp) return mid;
        if (t->chars[mid] < cp)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

int64_t *kapi_tokenize(const kapi_tokenizer *tokenizer, const char *text, size_t size,
                       int64_t *count, const char *path, kapi_errors *errors)
{
    int64_t *ids = malloc(sizeof(int64_t) * (size ? size : 1));
    if (!ids) {
        kapi_errors_add(errors, path, "out of memory for %zu tokens", size);
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)text;
    int64_t n = 0;
    if (tokenizer->kind == KAPI_TOKENIZER_BYTES) {
        for (size_t i = 0; i < size; i++) ids[n++] = s[i];
        *count = n;
        return ids;
    }
    if (!kapi_text_check_utf8(text, size, path, NULL, errors)) {
        free(ids);
        return NULL;
    }
    for (size_t i = 0; i < size;) {
        uint32_t cp = 0;
        int len = utf8_char(s + i, size - i, &cp);
        int64_t id = char_id(tokenizer, cp);
        if (id < 0) {
            char q[32];
            quote_char(cp, q, sizeof q);
            kapi_errors_add(errors, path,
                            "%s (U+%04X) at byte %zu is not in the model's vocabulary of %lld "
                            "characters",
                            q, (unsigned)cp, i, (long long)tokenizer->vocab_size);
            free(ids);
            return NULL;
        }
        ids[n++] = id;
        i += (size_t)len;
    }
    *count = n;
    return ids;
}

int kapi_text_decoder_push(kapi_text_decoder *d, const kapi_tokenizer *tokenizer, int64_t id,
                           char out[16])
{
    out[0] = 0;
    if (id < 0 || id >= tokenizer->vocab_size) return -1;
    if (tokenizer->kind == KAPI_TOKENIZER_CHARS) {
        int len = utf8_encode(tokenizer->chars[id], out);
        out[len] = 0;
        return len;
    }
    int len = 0;
    d->pending[d->n_pending++] = (unsigned char)id;
    /* Decide the pending bytes: a complete character goes out, an invalid start becomes
     * U+FFFD and the bytes after it are tried again, an incomplete one waits. */
    while (d->n_pending > 0) {
        uint32_t cp;
        int got = utf8_char(d->pending, (size_t)d->n_pending, &cp);
        if (got < 0) break;
        int used = got > 0 ? got : 1;
        if (got > 0)
            memcpy(out + len, d->pending, (size_t)got), len += got;
        else
            memcpy(out + len, REPLACEMENT, 3), len += 3;
        memmove(d->pending, d->pending + used, (size_t)(d->n_pending - used));
        d->n_pending -= used;
    }
    out[len] = 0;
    return len;
}

int kapi_text_decoder_finish(kapi_text_decoder *d, char out[16])
{
    int len = 0;
    if (d->n_pending > 0) memcpy(out, REPLACEMENT, 3), len = 3;
    d->n_pending = 0;
    out[len] = 0;
    return len;
}

char *kapi_detokenize(const kapi_tokenizer *tokenizer, const int64_t *ids, int64_t n, size_t *size,
                      const char *path, kapi_errors *errors)
{
    /* at most 4 bytes a chars token, 3 (U+FFFD) a byte token, plus a flushed U+FFFD */
    char *text = malloc((size_t)n * 4 + 4);
    if (!text) {
        kapi_errors_add(errors, path, "out of memory");
        return NULL;
    }
    kapi_text_decoder d = {0};
    size_t len = 0;
    char piece[16];
    for (int64_t i = 0; i < n; i++) {
        int got = kapi_text_decoder_push(&d, tokenizer, ids[i], piece);
        if (got < 0) {
            kapi_errors_add(errors, path,
                            "token %lld (index %lld) is outside the vocabulary of %lld",
                            (long long)ids[i], (long long)i, (long long)tokenizer->vocab_size);
            free(text);
            return NULL;
        }
        memcpy(text + len, piece, (size_t)got);
        len += (size_t)got;
    }
    int got = kapi_text_decoder_finish(&d, piece);
    memcpy(text + len, piece, (size_t)got);
    len += (size_t)got;
    text[len] = 0;
    if (size) *size = len;
    return text;
}

char *kapi_tokenizer_to_json(const kapi_tokenizer *tokenizer)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "type", "tokenize");
    cJSON_AddStringToObject(o, "tokenizer", kapi_tokenizer_kind_name(tokenizer->kind));
    cJSON_AddNumberToObject(o, "vocab_size", (double)tokenizer->vocab_size);
    if (tokenizer->kind == KAPI_TOKENIZER_CHARS) {
        cJSON *chars = cJSON_AddArrayToObject(o, "chars");
        for (int64_t i = 0; chars && i < tokenizer->vocab_size; i++)
            cJSON_AddItemToArray(chars, cJSON_CreateNumber(tokenizer->chars[i]));
    }
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return json;
}

kapi_tokenizer *kapi_tokenizer_from_json(const char *json, size_t length, const char *path,
                                         kapi_errors *errors)
{
    int before = errors->count;
    cJSON *o = kapi__parse_object(json, length, errors);
    if (!o) return NULL;
    static const char *const FIELDS[] = {"type", "tokenizer", "vocab_size", "chars", NULL};
    kapi__check_fields(errors, o, path, FIELDS);
    char p[KAPI_PATH_MAX];
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "tokenize") != 0) {
        kapi__path(p, path, "type");
        kapi_errors_add(errors, p, "expected \"tokenize\"");
    }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "tokenizer");
    kapi_tokenizer_kind k = KAPI_TOKENIZER_BYTES;
    if (!cJSON_IsString(kind) || !kapi_tokenizer_kind_parse(kind->valuestring, &k)) {
        kapi__path(p, path, "tokenizer");
        kapi_errors_add(errors, p, "expected \"bytes\" or \"chars\"");
    }
    int64_t vocab = 0;
    if (kapi__get_int(errors, o, "vocab_size", path, 1, KAPI_MAX_VOCAB, &vocab) == KAPI_ABSENT) {
        kapi__path(p, path, "vocab_size");
        kapi_errors_add(errors, p, "required");
    }
    kapi_tokenizer *t = NULL;
    if (errors->count == before && k == KAPI_TOKENIZER_BYTES) {
        if (vocab != 256) {
            kapi__path(p, path, "vocab_size");
            kapi_errors_add(errors, p, "expected 256 for the bytes tokenizer, got %lld",
                            (long long)vocab);
        } else {
            t = kapi_tokenizer_bytes();
        }
    } else if (errors->count == before) {
        const cJSON *chars = cJSON_GetObjectItemCaseSensitive(o, "chars");
        kapi__path(p, path, "chars");
        if (!cJSON_IsArray(chars) || cJSON_GetArraySize(chars) != vocab) {
            kapi_errors_add(errors, p, "expected an array of vocab_size (%lld) code points",
                            (long long)vocab);
        } else {
            t = calloc(1, sizeof *t);
            uint32_t *cps = malloc(sizeof(uint32_t) * (size_t)vocab);
            int i = 0;
            const cJSON *c;
            cJSON_ArrayForEach(c, chars)
            {
                char ip[KAPI_PATH_MAX];
                kapi__path_index(ip, p, i);
                int64_t cp = 0;
                if (!t || !cps) break;
                if (kapi__int_value(errors, c, ip, 0, 0x10FFFF, &cp) != KAPI_OK) break;
                if ((cp >= 0xD800 && cp <= 0xDFFF) || (i > 0 && (uint32_t)cp <= cps[i - 1])) {
                    kapi_errors_add(errors, ip,
                                    "expected a code point (not a surrogate) above the one "
                                    "before, got %lld",
                                    (long long)cp);
                    break;
                }
                cps[i++] = (uint32_t)cp;
            }
            if (!t || !cps || errors->count != before) {
                if (!t || !cps) kapi_errors_add(errors, p, "out of memory");
                free(t);
                free(cps);
                t = NULL;
            } else {
                t->kind = KAPI_TOKENIZER_CHARS;
                t->vocab_size = vocab;
                t->chars = cps;
            }
        }
    }
    cJSON_Delete(o);
    return t;
}

kapi_tokenizer *kapi_load_tokenizer(const char *weights, const char *path, bool *found,
                                    kapi_errors *errors)
{
    *found = false;
    kn_safetensors *file = kn_safetensors_load(weights);
    if (!file) {
        kapi_errors_add(errors, path, "%s", kn_last_error());
        return NULL;
    }
    const char *json = kn_safetensors_get_meta(file, KAPI_META_TOKENIZER);
    kapi_tokenizer *t = NULL;
    if (json) {
        *found = true;
        char p[KAPI_PATH_MAX];
        snprintf(p, sizeof p, "%s." KAPI_META_TOKENIZER, path);
        t = kapi_tokenizer_from_json(json, strlen(json), p, errors);
    }
    kn_safetensors_free(file);
    return t;
}

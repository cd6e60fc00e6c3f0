/*
 * text.c — a growing text buffer for the responses kilnd writes by hand (Prometheus
 * text, long metric series, dataset samples) where building a cJSON tree per number
 * would cost more than the numbers themselves. A failed allocation sticks: later
 * appends do nothing and the caller answers 500 once at the end.
 */
#include "ksrv_http.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool reserve(ksrv_text *t, size_t more)
{
    if (t->failed) return false;
    if (t->length + more + 1 <= t->capacity) return true;
    size_t capacity = (t->length + more + 1) * 2;
    if (capacity < 256) capacity = 256;
    char *grown = realloc(t->data, capacity);
    if (!grown) {
        t->failed = true;
        return false;
    }
    t->data = grown;
    t->capacity = capacity;
    return true;
}

void ksrv_text_put(ksrv_text *t, const char *bytes, size_t n)
{
    if (!reserve(t, n)) return;
    memcpy(t->data + t->length, bytes, n);
    t->length += n;
    t->data[t->length] = '\0';
}

void ksrv_text_printf(ksrv_text *t, const char *fmt, ...)
{
    if (!reserve(t, 64)) return;
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(t->data + t->length, t->capacity - t->length, fmt, args);
    va_end(args);
    if (n < 0) {
        t->failed = true;
        return;
    }
    if ((size_t)n >= t->capacity - t->length) { /* did not fit: grow and print again */
        if (!reserve(t, (size_t)n)) return;
        va_start(args, fmt);
        vsnprintf(t->data + t->length, t->capacity - t->length, fmt, args);
        va_end(args);
    }
    t->length += (size_t)n;
}

void ksrv_text_json_string(ksrv_text *t, const char *s)
{
    cJSON *j = cJSON_CreateString(s);
    char *printed = j ? cJSON_PrintUnformatted(j) : NULL;
    if (printed && ksrv_json_repair_utf8(&printed))
        ksrv_text_put(t, printed, strlen(printed));
    else
        t->failed = true;
    free(printed);
    cJSON_Delete(j);
}

/* The length of the sequence starting at s (at most n bytes) when it is one well-formed
 * UTF-8 character (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF), else 0. */
static size_t utf8_char(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80) return 1;
    size_t length = s[0] >= 0xC2 && s[0] <= 0xDF   ? 2
                    : s[0] >= 0xE0 && s[0] <= 0xEF ? 3
                    : s[0] >= 0xF0 && s[0] <= 0xF4 ? 4
                                                   : 0;
    if (length == 0 || length > n) return 0;
    for (size_t i = 1; i < length; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (s[0] == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
    if (s[0] == 0xED && s[1] > 0x9F) return 0; /* surrogates */
    if (s[0] == 0xF0 && s[1] < 0x90) return 0; /* overlong */
    if (s[0] == 0xF4 && s[1] > 0x8F) return 0; /* over U+10FFFF */
    return length;
}

size_t ksrv_utf8_valid_length(const char *text, size_t length)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t at = 0;
    while (at < length) {
        if (s[at] < 0x80) { /* ASCII runs, the common case, one byte at a time */
            at++;
            continue;
        }
        size_t n = utf8_char(s + at, length - at);
        if (n == 0) return at;
        at += n;
    }
    return length;
}

bool ksrv_json_repair_utf8(char **json)
{
    size_t length = strlen(*json);
    size_t valid = ksrv_utf8_valid_length(*json, length);
    if (valid == length) return true;
    /* cJSON writes bytes >= 0x80 only inside strings, so an escape may take their place */
    ksrv_text out = {0};
    const unsigned char *s = (const unsigned char *)*json;
    ksrv_text_put(&out, *json, valid);
    for (size_t at = valid; at < length;) {
        size_t n = s[at] < 0x80 ? 1 : utf8_char(s + at, length - at);
        if (n == 0) {
            ksrv_text_put(&out, "\\ufffd", 6);
            at++;
        } else {
            ksrv_text_put(&out, (const char *)s + at, n);
            at += n;
        }
    }
    if (out.failed) {
        free(out.data);
        return false;
    }
    free(*json);
    *json = out.data;
    return true;
}

/* The first precision that reads back, unless %g chose an exponent for a large whole
 * number ("5.4768e+06") where the widest precision prints it plainly and shorter. */
static int shortest(char out[32], double v, int from, int to, bool as_float)
{
    int n = 0, digits = from;
    for (; digits <= to; digits++) {
        n = snprintf(out, 32, "%.*g", digits, v);
        if (as_float ? strtof(out, NULL) == (float)v : strtod(out, NULL) == v) break;
    }
    if (digits < to && strchr(out, 'e')) {
        char widest[32];
        int m = snprintf(widest, sizeof widest, "%.*g", to, v);
        if (m < n) {
            memcpy(out, widest, (size_t)m + 1);
            n = m;
        }
    }
    return n;
}

/* Why not "%.9g" for every float: 9 digits always round-trip a float, but most floats need
 * 7 or 8, and a 10,000-point series sent again and again is mostly digits. */
int ksrv_format_number(char out[32], double v)
{
    if (isfinite(v) && fabs(v) <= FLT_MAX && (double)(float)v == v)
        return shortest(out, v, 6, 9, true);
    return shortest(out, v, 15, 17, false);
}

void ksrv_respond_text(ksrv_response *response, ksrv_text *t, const char *content_type)
{
    if (t->failed || !t->data) {
        free(t->data);
        t->data = NULL;
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return;
    }
    response->status = 200;
    response->body = t->data;
    response->content_type = content_type;
    t->data = NULL;
}

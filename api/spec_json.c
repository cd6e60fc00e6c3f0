/*
 * spec_json.c — the reading helpers every api/ parser uses: JSON paths, documents with
 * located syntax errors, typed fields with "expected ..., got ..." messages, unknown
 * and duplicate keys (cJSON keeps duplicates silently) with did-you-mean suggestions.
 */
#include "kapi_internal.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kapi__utf8_trim(char *s)
{
    size_t n = strlen(s), i = n;
    while (i > 0 && n - i < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--;
    if (i == 0) return;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t len = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (len > n - (i - 1)) s[i - 1] = '\0';
}

void kapi__path(char *out, const char *prefix, const char *key)
{
    if (!prefix || !prefix[0])
        snprintf(out, KAPI_PATH_MAX, "%s", key);
    else
        snprintf(out, KAPI_PATH_MAX, "%s.%s", prefix, key);
    kapi__utf8_trim(out); /* a long key may have been cut */
}

void kapi__path_index(char *out, const char *prefix, int index)
{
    snprintf(out, KAPI_PATH_MAX, "%s[%d]", prefix ? prefix : "", index);
    kapi__utf8_trim(out);
}

void kapi__format_number(double value, char *buf, size_t size)
{
    if (isnan(value)) {
        snprintf(buf, size, "nan");
        return;
    }
    if (isinf(value)) {
        snprintf(buf, size, "%s", value > 0 ? "inf" : "-inf");
        return;
    }
    snprintf(buf, size, "%.15g", value);
    if (strtod(buf, NULL) != value) snprintf(buf, size, "%.17g", value);
}

struct cJSON *kapi_json_integer(int64_t value)
{
    char text[24];
    snprintf(text, sizeof text, "%lld", (long long)value);
    return cJSON_CreateRaw(text);
}

/* Appends to a bounded buffer; returns false once it is full. */
static bool append(char *buf, size_t size, size_t *used, const char *text)
{
    size_t n = strlen(text);
    if (*used + n + 1 > size) {
        size_t room = size - *used - 1;
        memcpy(buf + *used, text, room);
        buf[*used + room] = '\0';
        kapi__utf8_trim(buf); /* not half a character */
        *used = strlen(buf);
        return false;
    }
    memcpy(buf + *used, text, n + 1);
    *used += n;
    return true;
}

static bool describe_into(const cJSON *v, char *buf, size_t size, size_t *used, int depth)
{
    char piece[64];
    if (cJSON_IsNumber(v)) {
        kapi__format_number(v->valuedouble, piece, sizeof piece);
        return append(buf, size, used, piece);
    }
    if (cJSON_IsString(v)) {
        if (!append(buf, size, used, "\"")) return false;
        const unsigned char *s = (const unsigned char *)v->valuestring;
        for (int i = 0; s[i]; i++) {
            /* cut after 40 bytes, at the start of a character */
            if (i >= 40 && (s[i] & 0xC0) != 0x80) return append(buf, size, used, "...\"");
            if (s[i] == '"' || s[i] == '\\')
                snprintf(piece, sizeof piece, "\\%c", s[i]);
            else if (s[i] < 0x20 || s[i] == 0x7f)
                snprintf(piece, sizeof piece, "\\x%02x", s[i]);
            else
                snprintf(piece, sizeof piece, "%c", s[i]);
            if (!append(buf, size, used, piece)) return false;
        }
        return append(buf, size, used, "\"");
    }
    if (cJSON_IsBool(v)) return append(buf, size, used, cJSON_IsTrue(v) ? "true" : "false");
    if (cJSON_IsNull(v)) return append(buf, size, used, "null");
    if (cJSON_IsObject(v)) return append(buf, size, used, depth ? "{...}" : "an object");
    if (cJSON_IsArray(v)) {
        if (depth > 1) return append(buf, size, used, "[...]");
        if (!append(buf, size, used, "[")) return false;
        int i = 0;
        for (const cJSON *item = v->child; item; item = item->next, i++) {
            if (i == 8) return append(buf, size, used, ", ...]");
            if (i && !append(buf, size, used, ", ")) return false;
            if (!describe_into(item, buf, size, used, depth + 1)) return false;
        }
        return append(buf, size, used, "]");
    }
    return append(buf, size, used, "an invalid value");
}

void kapi__describe(const cJSON *value, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    if (cJSON_IsNumber(value) && !isfinite(value->valuedouble)) {
        snprintf(buf, size, "a number too large for a double");
        return;
    }
    describe_into(value, buf, size, &used, 0);
}

cJSON *kapi__parse_object(const char *json, size_t length, kapi_errors *errors)
{
    size_t start = 0;
    while (start < length && isspace((unsigned char)json[start])) start++;
    if (!json || start == length) {
        kapi_errors_add(errors, "", "empty document: expected a JSON object");
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, length, &end, false);
    size_t offset = end ? (size_t)(end - json) : length;
    if (root) {
        while (offset < length && isspace((unsigned char)json[offset])) offset++;
    }
    if (!root || offset < length) {
        int line = 1, column = 1;
        for (size_t i = 0; i < offset && i < length; i++) {
            if (json[i] == '\n') {
                line++;
                column = 1;
            } else {
                column++;
            }
        }
        char what[64];
        bool unterminated = !root && offset > 0 && offset < length && json[offset - 1] == '"' &&
                            !memchr(json + offset, '"', length - offset);
        if (unterminated)
            snprintf(what, sizeof what, "unterminated string starting at byte %zu", offset - 1);
        else if (offset >= length)
            snprintf(what, sizeof what, "unexpected end of input");
        else if (isprint((unsigned char)json[offset]))
            snprintf(what, sizeof what, "unexpected '%c'%s", json[offset],
                     root ? " after the document" : "");
        else
            snprintf(what, sizeof what, "unexpected byte 0x%02x%s", (unsigned char)json[offset],
                     root ? " after the document" : "");
        kapi_errors_add(errors, "", "invalid JSON at line %d, column %d (byte %zu): %s", line,
                        column, offset, what);
        cJSON_Delete(root);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        char got[120];
        kapi__describe(root, got, sizeof got);
        kapi_errors_add(errors, "", "expected a JSON object, got %s", got);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* Levenshtein distance, case-insensitive (a wrong case is a likely typo). */
static int edit_distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > 64 || m > 64) return 99;
    int row[65];
    for (size_t j = 0; j <= m; j++) row[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        int diagonal = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int up = row[j];
            int cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int best = diagonal + cost;
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diagonal = up;
        }
    }
    return row[m];
}

const char *kapi__suggest(const char *given, const char *const *candidates)
{
    const char *best = NULL;
    int best_distance = 3;
    for (int i = 0; candidates[i]; i++) {
        int d = edit_distance(given, candidates[i]);
        int limit = (int)strlen(candidates[i]) / 2;
        /* a prefix ("label_col" for "label_column") is a likely abbreviation */
        size_t n = strlen(given);
        if (d >= best_distance && n >= 3 && strncmp(candidates[i], given, n) == 0 && !best)
            d = best_distance - 1;
        if (d < best_distance && d <= limit) {
            best = candidates[i];
            best_distance = d;
        }
    }
    return best;
}

static bool in_list(const char *key, const char *const *list)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(key, list[i]) == 0) return true;
    return false;
}

bool kapi__check_fields(kapi_errors *errors, const cJSON *obj, const char *path,
                        const char *const *allowed)
{
    bool ok = true;
    char field[KAPI_PATH_MAX];
    int index = 0;
    for (const cJSON *child = obj->child; child; child = child->next, index++) {
        const char *key = child->string ? child->string : "";
        kapi__path(field, path, key);
        /* Quadratic, so bounded: an object this big has unknown keys anyway. */
        bool duplicate = false;
        if (index < 256) {
            for (const cJSON *earlier = obj->child; earlier != child; earlier = earlier->next) {
                if (earlier->string && strcmp(earlier->string, key) == 0) {
                    duplicate = true;
                    break;
                }
            }
        }
        if (duplicate) {
            kapi_errors_add(errors, field, "duplicate key (each field may appear only once)");
            ok = false;
            continue;
        }
        if (in_list(key, allowed)) continue;
        ok = false;
        const char *suggestion = kapi__suggest(key, allowed);
        if (suggestion) {
            kapi_errors_add(errors, field, "unknown field (did you mean %s?)", suggestion);
            continue;
        }
        char list[300];
        size_t used = 0;
        list[0] = '\0';
        for (int i = 0; allowed[i]; i++) {
            if (i) append(list, sizeof list, &used, ", ");
            append(list, sizeof list, &used, allowed[i]);
        }
        kapi_errors_add(errors, field, "unknown field (expected one of: %s)", list);
    }
    return ok;
}

void kapi__missing(kapi_errors *errors, const char *prefix, const char *key, const char *what)
{
    char path[KAPI_PATH_MAX];
    kapi__path(path, prefix, key);
    kapi_errors_add(errors, path, "required field missing: expected %s", what);
}

void kapi__int_description(int64_t min, int64_t max, char *buf, size_t size)
{
    (void)max;
    if (min == 1)
        snprintf(buf, size, "a positive integer");
    else if (min == 0)
        snprintf(buf, size, "a non-negative integer");
    else
        snprintf(buf, size, "an integer from %lld to %lld", (long long)min, (long long)max);
}

int kapi__int_value(kapi_errors *errors, const cJSON *value, const char *path, int64_t min,
                    int64_t max, int64_t *out)
{
    char what[96], got[120];
    kapi__int_description(min, max, what, sizeof what);
    if (!cJSON_IsNumber(value) || !isfinite(value->valuedouble) ||
        value->valuedouble != floor(value->valuedouble) || value->valuedouble < (double)min) {
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path, "expected %s, got %s", what, got);
        return KAPI_BAD;
    }
    if (value->valuedouble > (double)max) {
        kapi__describe(value, got, sizeof got);
        if (min == 0 || min == 1)
            kapi_errors_add(errors, path, "expected %s at most %lld, got %s", what, (long long)max,
                            got);
        else
            kapi_errors_add(errors, path, "expected %s, got %s", what, got);
        return KAPI_BAD;
    }
    *out = (int64_t)value->valuedouble;
    return KAPI_OK;
}

int kapi__get_int(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                  int64_t min, int64_t max, int64_t *out)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!value) return KAPI_ABSENT;
    char path[KAPI_PATH_MAX];
    kapi__path(path, prefix, key);
    return kapi__int_value(errors, value, path, min, max, out);
}

void kapi__number_description(double min, bool min_inclusive, double max, bool max_inclusive,
                              char *buf, size_t size)
{
    char lo[40], hi[40];
    kapi__format_number(min, lo, sizeof lo);
    kapi__format_number(max, hi, sizeof hi);
    if (isinf(min) && isinf(max))
        snprintf(buf, size, "a finite number");
    else if (isinf(max))
        snprintf(buf, size, "a finite number %s %s", min_inclusive ? "≥" : ">", lo);
    else if (isinf(min))
        snprintf(buf, size, "a number %s %s", max_inclusive ? "≤" : "<", hi);
    else
        snprintf(buf, size, "a number in %c%s, %s%c", min_inclusive ? '[' : '(', lo, hi,
                 max_inclusive ? ']' : ')');
}

int kapi__number_value(kapi_errors *errors, const cJSON *value, const char *path, double min,
                       bool min_inclusive, double max, bool max_inclusive, double *out)
{
    bool ok = cJSON_IsNumber(value) && isfinite(value->valuedouble);
    if (ok) {
        double x = value->valuedouble;
        ok = (min_inclusive ? x >= min : x > min) && (max_inclusive ? x <= max : x < max);
    }
    if (!ok) {
        char what[96], got[120];
        kapi__number_description(min, min_inclusive, max, max_inclusive, what, sizeof what);
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path, "expected %s, got %s", what, got);
        return KAPI_BAD;
    }
    *out = value->valuedouble;
    return KAPI_OK;
}

int kapi__get_number(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                     double min, bool min_inclusive, double max, bool max_inclusive, double *out)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!value) return KAPI_ABSENT;
    char path[KAPI_PATH_MAX];
    kapi__path(path, prefix, key);
    return kapi__number_value(errors, value, path, min, min_inclusive, max, max_inclusive, out);
}

int kapi__get_bool(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                   bool *out)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!value) return KAPI_ABSENT;
    if (!cJSON_IsBool(value)) {
        char path[KAPI_PATH_MAX], got[120];
        kapi__path(path, prefix, key);
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path, "expected true or false, got %s", got);
        return KAPI_BAD;
    }
    *out = cJSON_IsTrue(value);
    return KAPI_OK;
}

int kapi__get_string(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                     char *out, size_t out_size)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!value) return KAPI_ABSENT;
    char path[KAPI_PATH_MAX], got[120];
    kapi__path(path, prefix, key);
    if (!cJSON_IsString(value) || !value->valuestring[0]) {
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path, "expected a non-empty string, got %s", got);
        return KAPI_BAD;
    }
    size_t n = strlen(value->valuestring);
    if (n >= out_size) {
        kapi_errors_add(errors, path, "expected at most %zu characters, got %zu", out_size - 1, n);
        return KAPI_BAD;
    }
    memcpy(out, value->valuestring, n + 1);
    return KAPI_OK;
}

bool kapi__check_name(kapi_errors *errors, const char *path, const cJSON *value, char *out,
                      size_t out_size)
{
    bool ok = cJSON_IsString(value);
    if (ok) {
        const char *s = value->valuestring;
        size_t n = strlen(s);
        ok = n >= 1 && n < out_size && n <= 127 && isalnum((unsigned char)s[0]);
        for (size_t i = 0; ok && i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            ok = isalnum(c) || c == '.' || c == '_' || c == '-';
        }
    }
    if (!ok) {
        char got[120];
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path,
                        "expected a name of 1 to 127 letters, digits, '.', '_' or '-' "
                        "starting with a letter or digit, got %s",
                        got);
        return false;
    }
    snprintf(out, out_size, "%s", value->valuestring);
    return true;
}

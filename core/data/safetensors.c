/*
 * safetensors.c — loading and atomically saving safetensors files, with the small JSON
 * reader the header needs (core keeps to libc, so no cJSON here).
 *
 * Every number in a header comes from the file: offsets, sizes and shapes are all
 * checked against each other and against the file before any data is read.
 */
#include "kn_internal.h"
#include "kn_safetensors.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* The python library refuses headers over 100 MB; so do we, before allocating. */
#define MAX_HEADER (100u * 1000u * 1000u)

/* kn__error for functions that return bool: sets the message, returns false. */
static bool fail(kn_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool fail(kn_status status, const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    kn__error(status, "%s", message);
    return false;
}

/* ---- a minimal JSON reader for the header ------------------------------------------- */

typedef struct {
    const char *p, *end;
    const char *start; /* of the header, for positions in messages */
    const char *file;  /* for messages */
} json;

static bool json_fail(json *j, const char *what)
{
    kn__error(KN_ERR_VALUE,
              "safetensors %s: header is not valid JSON: %s at byte %lld of the "
              "header",
              j->file, what, (long long)(j->p - j->start));
    return false;
}

static void ws(json *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static bool eat(json *j, char c)
{
    ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return true;
    }
    return false;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A JSON string into a new malloc'd NUL-terminated buffer (escapes decoded). */
static char *json_string(json *j)
{
    ws(j);
    if (j->p >= j->end || *j->p != '"') return json_fail(j, "expected a string"), NULL;
    j->p++;
    const char *start = j->p;
    /* decoded text is never longer than the escaped text */
    while (j->p < j->end && *j->p != '"') j->p += (*j->p == '\\') ? 2 : 1;
    if (j->p >= j->end) return json_fail(j, "unterminated string"), NULL;
    size_t n = (size_t)(j->p - start);
    char *out = malloc(n + 1);
    if (!out) return kn__error_null(KN_ERR_MEMORY, "safetensors %s: out of memory", j->file);
    size_t o = 0;
    for (const char *s = start; s < j->p;) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20) {
            j->p = s;
            free(out);
            return json_fail(j, "control character in a string"), NULL;
        }
        if (c != '\\') {
            out[o++] = (char)c;
            s++;
            continue;
        }
        char e = s[1];
        s += 2;
        switch (e) {
        case '"':
            out[o++] = '"';
            break;
        case '\\':
            out[o++] = '\\';
            break;
        case '/':
            out[o++] = '/';
            break;
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u': {
            int cp = j->p - s >= 4 ? hex4(s) : -1;
            if (cp >= 0) s += 4;
            if (cp >= 0xD800 && cp < 0xDC00) { /* a surrogate pair: \uD83D\uDE00 */
                int lo = j->p - s >= 6 && s[0] == '\\' && s[1] == 'u' ? hex4(s + 2) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    cp = -1;
                else {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    s += 6;
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = -1;
            }
            if (cp < 0) {
                j->p = s;
                free(out);
                return json_fail(j, "bad \\u escape"), NULL;
            }
            /* \u0000 would end the C string early: names with NUL are refused */
            if (cp == 0) {
                j->p = s;
                free(out);
                return json_fail(j, "\\u0000 in a string"), NULL;
            }
            o += put_utf8(out + o, (unsigned)cp);
            break;
        }
        default:
            j->p = s - 2;
            free(out);
            return json_fail(j, "bad escape"), NULL;
        }
    }
    out[o] = '\0';
    j->p++; /* closing quote */
    return out;
}

/* A non-negative integer (offsets, sizes): no sign, fraction or exponent. */
static bool json_uint(json *j, uint64_t *out)
{
    ws(j);
    const char *s = j->p;
    uint64_t v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        unsigned d = (unsigned)(*j->p - '0');
        if (v > (UINT64_MAX - d) / 10) return json_fail(j, "integer too large");
        v = v * 10 + d;
        j->p++;
    }
    if (j->p == s) return json_fail(j, "expected a non-negative integer");
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return json_fail(j, "expected an integer");
    *out = v;
    return true;
}

/* ---- dtypes ----------------------------------------------------------------------- */

/* The float kinds come first: is_float_dtype relies on it. */
typedef enum {
    ST_F32,
    ST_F64,
    ST_F16,
    ST_BF16,
    ST_I64,
    ST_I32,
    ST_I16,
    ST_I8,
    ST_U8,
    ST_BOOL
} st_dtype;

static const struct {
    const char *name;
    st_dtype type;
    size_t size;
} dtypes[] = {{"F32", ST_F32, 4}, {"F64", ST_F64, 8},  {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2},
              {"I64", ST_I64, 8}, {"I32", ST_I32, 4},  {"I16", ST_I16, 2}, {"I8", ST_I8, 1},
              {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1}};

static int find_dtype(const char *name)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (strcmp(dtypes[i].name, name) == 0) return (int)i;
    return -1;
}

static bool is_float_dtype(st_dtype t)
{
    return t <= ST_BF16;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = h >> 10 & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | mant << 13; /* inf / nan */
    } else if (exp != 0) {
        bits = sign | (exp + 112) << 23 | mant << 13;
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: normalise the mantissa */
        int e = -1;
        do {
            e++;
            mant <<= 1;
        } while (!(mant & 0x400));
        bits = sign | (uint32_t)(112 - e) << 23 | (mant & 0x3FF) << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Converts n raw elements into a float32 or int64 tensor's memory. */
static void convert(const unsigned char *src, st_dtype t, int64_t n, void *dst)
{
    float *f = dst;
    int64_t *q = dst;
    if (t == ST_F32 || t == ST_I64) { /* the formats we write: straight copies */
        memcpy(dst, src, (size_t)n * (t == ST_F32 ? 4 : 8));
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        switch (t) {
        case ST_F32:
        case ST_I64:
            break;
        case ST_F64: {
            double v;
            memcpy(&v, src + 8 * i, 8);
            f[i] = (float)v;
            break;
        }
        case ST_F16: {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            f[i] = half_to_float(v);
            break;
        }
        case ST_BF16: {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            uint32_t bits = (uint32_t)v << 16;
            memcpy(&f[i], &bits, 4);
            break;
        }
        case ST_I32: {
            int32_t v;
            memcpy(&v, src + 4 * i, 4);
            q[i] = v;
            break;
        }
        case ST_I16: {
            int16_t v;
            memcpy(&v, src + 2 * i, 2);
            q[i] = v;
            break;
        }
        case ST_I8:
            q[i] = (int8_t)src[i];
            break;
        case ST_U8:
            q[i] = src[i];
            break;
        case ST_BOOL:
            q[i] = src[i] != 0;
            break;
        }
    }
}

/* ---- loading ---------------------------------------------------------------------- */

typedef struct {
    char *name;
    int dtype; /* index into dtypes */
    int64_t shape[KN_MAX_DIMS];
    int ndim;
    uint64_t begin, end;
} st_info;

static int compare_begin(const void *a, const void *b)
{
    const st_info *x = *(const st_info *const *)a, *y = *(const st_info *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

void kn_safetensors_free(kn_safetensors *file)
{
    if (!file) return;
    for (int i = 0; i < file->count; i++) {
        free(file->entries[i].name);
        kn_release(file->entries[i].tensor);
    }
    for (int i = 0; i < file->metadata_count; i++) {
        free(file->metadata[i].key);
        free(file->metadata[i].value);
    }
    free(file->entries);
    free(file->metadata);
    free(file);
}

static bool parse_metadata(json *j, kn_safetensors *out)
{
    if (!eat(j, '{')) return json_fail(j, "__metadata__ must be an object of strings");
    if (eat(j, '}')) return true;
    do {
        kn_safetensors_meta *grown =
            realloc(out->metadata, sizeof *grown * (size_t)(out->metadata_count + 1));
        if (!grown) {
            kn__error(KN_ERR_MEMORY, "safetensors %s: out of memory", j->file);
            return false;
        }
        out->metadata = grown;
        kn_safetensors_meta *m = &out->metadata[out->metadata_count];
        m->key = json_string(j);
        m->value = NULL;
        if (!m->key) return false;
        out->metadata_count++;
        if (!eat(j, ':')) return json_fail(j, "expected ':'");
        ws(j);
        if (j->p < j->end && *j->p != '"') {
            kn__error(KN_ERR_VALUE, "safetensors %s: __metadata__ value of '%s' must be a string",
                      j->file, m->key);
            return false;
        }
        if (!(m->value = json_string(j))) return false;
    } while (eat(j, ','));
    if (!eat(j, '}')) return json_fail(j, "expected ',' or '}' in __metadata__");
    return true;
}

/* One tensor's description {"dtype": .., "shape": [..], "data_offsets": [b, e]}. */
static bool parse_info(json *j, st_info *info)
{
    bool have_dtype = false, have_shape = false, have_offsets = false;
    if (!eat(j, '{')) return json_fail(j, "expected '{' describing the tensor");
    do {
        char *key = json_string(j);
        if (!key) return false;
        if (!eat(j, ':')) {
            free(key);
            return json_fail(j, "expected ':'");
        }
        if (strcmp(key, "dtype") == 0) {
            free(key);
            char *d = json_string(j);
            if (!d) return false;
            info->dtype = find_dtype(d);
            if (info->dtype < 0) {
                kn__error(KN_ERR_DTYPE,
                          "safetensors %s: tensor '%s' has dtype '%s', supported: "
                          "F32, F64, F16, BF16, I64, I32, I16, I8, U8, BOOL",
                          j->file, info->name, d);
                free(d);
                return false;
            }
            free(d);
            have_dtype = true;
        } else if (strcmp(key, "shape") == 0) {
            free(key);
            if (!eat(j, '[')) return json_fail(j, "shape must be an array");
            info->ndim = 0;
            if (!eat(j, ']')) {
                do {
                    uint64_t v;
                    if (info->ndim == KN_MAX_DIMS) {
                        kn__error(KN_ERR_SHAPE,
                                  "safetensors %s: tensor '%s' has more than %d "
                                  "dims",
                                  j->file, info->name, KN_MAX_DIMS);
                        return false;
                    }
                    if (!json_uint(j, &v)) return false;
                    if (v > (uint64_t)INT64_MAX) return json_fail(j, "shape too large");
                    info->shape[info->ndim++] = (int64_t)v;
                } while (eat(j, ','));
                if (!eat(j, ']')) return json_fail(j, "expected ',' or ']' in shape");
            }
            have_shape = true;
        } else if (strcmp(key, "data_offsets") == 0) {
            free(key);
            if (!eat(j, '[') || !json_uint(j, &info->begin) || !eat(j, ',') ||
                !json_uint(j, &info->end) || !eat(j, ']'))
                return json_fail(j, "data_offsets must be [begin, end]");
            have_offsets = true;
        } else {
            kn__error(KN_ERR_VALUE, "safetensors %s: tensor '%s' has unknown field '%s'", j->file,
                      info->name, key);
            free(key);
            return false;
        }
    } while (eat(j, ','));
    if (!eat(j, '}')) return json_fail(j, "expected ',' or '}' in a tensor description");
    if (!have_dtype || !have_shape || !have_offsets) {
        kn__error(KN_ERR_VALUE, "safetensors %s: tensor '%s' lacks %s", j->file, info->name,
                  !have_dtype   ? "\"dtype\""
                  : !have_shape ? "\"shape\""
                                : "\"data_offsets\"");
        return false;
    }
    return true;
}

/* Checks each tensor's byte range against its dtype, shape, the data and the others. */
static bool check_infos(const char *file, st_info *infos, int n, uint64_t data_size)
{
    for (int i = 0; i < n; i++) {
        st_info *t = &infos[i];
        for (int k = 0; k < i; k++)
            if (strcmp(infos[k].name, t->name) == 0) {
                kn__error(KN_ERR_VALUE, "safetensors %s: tensor '%s' appears twice", file, t->name);
                return false;
            }
        uint64_t bytes = dtypes[t->dtype].size;
        bool overflow = false;
        for (int d = 0; d < t->ndim; d++) {
            uint64_t s = (uint64_t)t->shape[d];
            if (s != 0 && bytes > UINT64_MAX / s)
                overflow = true;
            else
                bytes *= s;
        }
        if (t->begin > t->end || t->end > data_size) {
            kn__error(KN_ERR_VALUE,
                      "safetensors %s: tensor '%s' has data_offsets [%llu, %llu] "
                      "outside the %llu bytes of data",
                      file, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                      (unsigned long long)data_size);
            return false;
        }
        if (overflow || bytes != t->end - t->begin) {
            kn__error(KN_ERR_SHAPE,
                      "safetensors %s: tensor '%s' is %s %s = %llu bytes but its "
                      "data_offsets [%llu, %llu] span %llu",
                      file, t->name, dtypes[t->dtype].name, kn__shape_of(t->shape, t->ndim),
                      (unsigned long long)bytes, (unsigned long long)t->begin,
                      (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
            return false;
        }
    }
    st_info **sorted = malloc(sizeof *sorted * (size_t)(n ? n : 1));
    if (!sorted) return fail(KN_ERR_MEMORY, "safetensors %s: out of memory", file);
    for (int i = 0; i < n; i++) sorted[i] = &infos[i];
    qsort(sorted, (size_t)n, sizeof *sorted, compare_begin);
    for (int i = 1; i < n; i++) {
        if (sorted[i]->begin < sorted[i - 1]->end) {
            kn__error(KN_ERR_VALUE,
                      "safetensors %s: tensors '%s' [%llu, %llu] and '%s' [%llu, "
                      "%llu] overlap",
                      file, sorted[i - 1]->name, (unsigned long long)sorted[i - 1]->begin,
                      (unsigned long long)sorted[i - 1]->end, sorted[i]->name,
                      (unsigned long long)sorted[i]->begin, (unsigned long long)sorted[i]->end);
            free(sorted);
            return false;
        }
    }
    free(sorted);
    return true;
}

static kn_safetensors *parse(const unsigned char *b, size_t size, const char *file)
{
    if (!b) return kn__error_null(KN_ERR_NULL, "safetensors %s: no data", file);
    if (size < 8)
        return kn__error_null(KN_ERR_VALUE,
                              "safetensors %s: truncated: %zu bytes, the header "
                              "length alone is 8",
                              file, size);
    uint64_t hlen;
    memcpy(&hlen, b, 8);
    if (hlen > size - 8 || hlen > MAX_HEADER)
        return kn__error_null(KN_ERR_VALUE,
                              "safetensors %s: header length %llu exceeds the %zu "
                              "bytes after it (truncated or not a safetensors file)",
                              file, (unsigned long long)hlen, size - 8);
    json j = {(const char *)b + 8, (const char *)b + 8 + hlen, (const char *)b + 8, file};
    uint64_t data_size = size - 8 - hlen;
    kn_safetensors *out = calloc(1, sizeof *out);
    st_info *infos = NULL;
    int n = 0;
    bool ok = out != NULL, have_metadata = false;
    if (!ok) kn__error(KN_ERR_MEMORY, "safetensors %s: out of memory", file);
    if (ok && !eat(&j, '{')) ok = json_fail(&j, "the header must be a JSON object");
    if (ok && !eat(&j, '}')) {
        do {
            char *name = json_string(&j);
            if (!name || !eat(&j, ':')) {
                ok = name ? json_fail(&j, "expected ':'") : false;
                free(name);
                break;
            }
            if (strcmp(name, "__metadata__") == 0) {
                free(name);
                if (have_metadata) {
                    ok = fail(KN_ERR_VALUE, "safetensors %s: __metadata__ appears twice", file);
                    break;
                }
                have_metadata = true;
                if (!(ok = parse_metadata(&j, out))) break;
                continue;
            }
            st_info *grown = realloc(infos, sizeof *grown * (size_t)(n + 1));
            if (!grown) {
                free(name);
                ok = fail(KN_ERR_MEMORY, "safetensors %s: out of memory", file);
                break;
            }
            infos = grown;
            memset(&infos[n], 0, sizeof infos[n]);
            infos[n++].name = name;
            if (!(ok = parse_info(&j, &infos[n - 1]))) break;
        } while (eat(&j, ','));
        if (ok && !eat(&j, '}')) ok = json_fail(&j, "expected ',' or '}'");
    }
    if (ok) {
        ws(&j); /* the python library pads with spaces */
        if (j.p != j.end) ok = json_fail(&j, "text after the header object");
    }
    if (ok) ok = check_infos(file, infos, n, data_size);
    if (ok) {
        out->entries = calloc((size_t)(n ? n : 1), sizeof *out->entries);
        if (!out->entries) ok = fail(KN_ERR_MEMORY, "safetensors %s: out of memory", file);
    }
    const unsigned char *data = b + 8 + hlen;
    for (int i = 0; ok && i < n; i++) {
        st_dtype t = dtypes[infos[i].dtype].type;
        kn_tensor *tensor = kn__empty_raw(infos[i].shape, infos[i].ndim,
                                          is_float_dtype(t) ? KN_FLOAT32 : KN_INT64, kn_cpu());
        if (!tensor) {
            ok = false;
            break;
        }
        convert(data + infos[i].begin, t, kn_numel(tensor), kn__data_ptr(tensor));
        out->entries[i].name = infos[i].name;
        out->entries[i].tensor = tensor;
        infos[i].name = NULL;
        out->count = i + 1;
    }
    for (int i = 0; i < n; i++) free(infos[i].name);
    free(infos);
    if (!ok) {
        kn_safetensors_free(out);
        return NULL;
    }
    return out;
}

kn_safetensors *kn_safetensors_parse(const void *bytes, size_t size)
{
    return parse(bytes, size, "(buffer)");
}

kn_safetensors *kn_safetensors_load(const char *path)
{
    if (!path) return kn__error_null(KN_ERR_NULL, "safetensors: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f)
        return kn__error_null(KN_ERR_VALUE, "safetensors %s: cannot open: %s", path,
                              strerror(errno));
    unsigned char *buf = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return kn__error_null(KN_ERR_VALUE, "safetensors %s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size ? size : 1);
    if (!buf) {
        fclose(f);
        return kn__error_null(KN_ERR_MEMORY, "safetensors %s: out of memory for %zu bytes", path,
                              size);
    }
    size_t got = fread(buf, 1, size, f);
    int read_error = ferror(f);
    fclose(f);
    if (got != size || read_error) {
        free(buf);
        return kn__error_null(KN_ERR_VALUE, "safetensors %s: read %zu of %zu bytes", path, got,
                              size);
    }
    kn_safetensors *out = parse(buf, size, path);
    free(buf);
    return out;
}

kn_tensor *kn_safetensors_get(const kn_safetensors *file, const char *name)
{
    if (!file || !name) return NULL;
    for (int i = 0; i < file->count; i++)
        if (strcmp(file->entries[i].name, name) == 0) return file->entries[i].tensor;
    return NULL;
}

const char *kn_safetensors_get_meta(const kn_safetensors *file, const char *key)
{
    if (!file || !key) return NULL;
    for (int i = 0; i < file->metadata_count; i++)
        if (strcmp(file->metadata[i].key, key) == 0) return file->metadata[i].value;
    return NULL;
}

/*
 * data_formats.c — parsing data files already read into memory: IDX (MNIST's format),
 * NPY (numpy's) and CSV with a header line. Results are float32 inputs or int64 labels.
 *
 * Every size comes from the file, so every size is checked against the bytes there
 * before anything is read; errors name the header field or the line and column.
 */
#include "kn_internal.h"
#include "kn_data.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared: element conversion ----------------------------------------------------- */

typedef enum { EL_U8, EL_I8, EL_I16, EL_U16, EL_I32, EL_I64, EL_F32, EL_F64 } element_kind;

static size_t element_size(element_kind k)
{
    static const size_t sizes[] = {1, 1, 2, 2, 4, 8, 4, 8};
    return sizes[k];
}

static bool element_is_float(element_kind k)
{
    return k == EL_F32 || k == EL_F64;
}

/* Reads element i of an unaligned array, swapping bytes when big_endian. */
static double read_element(const unsigned char *p, element_kind k, bool big_endian)
{
    unsigned char b[8];
    size_t size = element_size(k);
    for (size_t j = 0; j < size; j++) b[j] = big_endian ? p[size - 1 - j] : p[j];
    switch (k) {
    case EL_U8:
        return b[0];
    case EL_I8:
        return (int8_t)b[0];
    case EL_I16: {
        int16_t v;
        memcpy(&v, b, 2);
        return v;
    }
    case EL_U16: {
        uint16_t v;
        memcpy(&v, b, 2);
        return v;
    }
    case EL_I32: {
        int32_t v;
        memcpy(&v, b, 4);
        return v;
    }
    case EL_I64: {
        int64_t v;
        memcpy(&v, b, 8);
        return (double)v;
    }
    case EL_F32: {
        float v;
        memcpy(&v, b, 4);
        return v;
    }
    case EL_F64: {
        double v;
        memcpy(&v, b, 8);
        return v;
    }
    }
    return 0;
}

static int64_t read_int64(const unsigned char *p, bool big_endian)
{
    unsigned char b[8];
    for (int j = 0; j < 8; j++) b[j] = big_endian ? p[7 - j] : p[j];
    int64_t v;
    memcpy(&v, b, 8);
    return v;
}

/* Converts count elements into a new unregistered tensor of the given shape: float32,
 * or int64 (from float elements only when integral: labels). fmt names the format in
 * errors. */
static kn_tensor *convert(const unsigned char *data, element_kind k, bool big_endian,
                          const int64_t *shape, int ndim, bool as_int64, const char *fmt)
{
    kn_tensor *t = kn__empty_raw(shape, ndim, as_int64 ? KN_INT64 : KN_FLOAT32, kn_cpu());
    if (!t) return NULL;
    int64_t n = kn_numel(t);
    size_t size = element_size(k);
    if (!as_int64) {
        float *out = kn__data_ptr(t);
        if (k == EL_U8) {
            for (int64_t i = 0; i < n; i++) out[i] = data[i]; /* the common case: images */
        } else if (k == EL_F32 && !big_endian) {
            memcpy(out, data, (size_t)n * 4);
        } else {
            for (int64_t i = 0; i < n; i++)
                out[i] = (float)read_element(data + i * size, k, big_endian);
        }
        return t;
    }
    int64_t *out = kn__data_ptr(t);
    for (int64_t i = 0; i < n; i++) {
        if (k == EL_I64) {
            out[i] = read_int64(data + i * size, big_endian);
            continue;
        }
        double v = read_element(data + i * size, k, big_endian);
        if (element_is_float(k) && (v != floor(v) || fabs(v) > 9.0e15)) {
            kn_release(t);
            return kn__error_null(KN_ERR_VALUE, "%s: label %lld is %g, not an integer", fmt,
                                  (long long)i, v);
        }
        out[i] = (int64_t)v;
    }
    return t;
}

/* numel * size, or -1 when it overflows (sizes come from untrusted headers). */
static int64_t checked_bytes(const int64_t *shape, int ndim, size_t size)
{
    int64_t total = (int64_t)size;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return -1;
        if (shape[d] != 0 && total > INT64_MAX / shape[d]) return -1;
        total *= shape[d];
    }
    return total;
}

/* ---- IDX -------------------------------------------------------------------------- */

kn_tensor *kn_parse_idx(const void *bytes, size_t size, bool as_labels)
{
    const unsigned char *b = bytes;
    if (!b) return kn__error_null(KN_ERR_NULL, "idx: no data");
    if (size < 4)
        return kn__error_null(KN_ERR_VALUE,
                              "idx: file has %zu bytes, too short for the 4-byte "
                              "magic number",
                              size);
    if (b[0] != 0 || b[1] != 0)
        return kn__error_null(KN_ERR_VALUE,
                              "idx: bad magic number 0x%02x%02x%02x%02x: must start "
                              "with two zero bytes (is the file still gzip-compressed?)",
                              b[0], b[1], b[2], b[3]);
    element_kind k;
    switch (b[2]) {
    case 0x08:
        k = EL_U8;
        break;
    case 0x09:
        k = EL_I8;
        break;
    case 0x0B:
        k = EL_I16;
        break;
    case 0x0C:
        k = EL_I32;
        break;
    case 0x0D:
        k = EL_F32;
        break;
    case 0x0E:
        k = EL_F64;
        break;
    default:
        return kn__error_null(KN_ERR_DTYPE,
                              "idx: unknown data type 0x%02x in the magic number "
                              "(expected 0x08, 0x09, 0x0B, 0x0C, 0x0D or 0x0E)",
                              b[2]);
    }
    int ndim = b[3];
    if (ndim < 1 || ndim > KN_MAX_DIMS)
        return kn__error_null(KN_ERR_SHAPE,
                              "idx: %d dimensions in the magic number, expected 1 "
                              "to %d",
                              ndim, KN_MAX_DIMS);
    if (as_labels && ndim != 1)
        return kn__error_null(KN_ERR_SHAPE, "idx: labels must have 1 dimension, the file has %d",
                              ndim);
    size_t header = 4 + 4 * (size_t)ndim;
    if (size < header)
        return kn__error_null(KN_ERR_VALUE,
                              "idx: file has %zu bytes, too short for the header of "
                              "%d dimension sizes (%zu bytes)",
                              size, ndim, header);
    int64_t shape[KN_MAX_DIMS];
    char dims[160];
    size_t used = 0;
    for (int d = 0; d < ndim; d++) {
        const unsigned char *p = b + 4 + 4 * d;
        shape[d] = (int64_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
                             (uint32_t)p[3]);
        used += (size_t)snprintf(dims + used, sizeof dims - used, d ? " x %lld" : "%lld",
                                 (long long)shape[d]);
        if (used >= sizeof dims) used = sizeof dims - 1;
    }
    int64_t want = checked_bytes(shape, ndim, element_size(k));
    size_t have = size - header;
    if (want < 0 || (uint64_t)want != have) {
        if (element_size(k) > 1)
            used += (size_t)snprintf(dims + used, sizeof dims - used, " x %zu", element_size(k));
        return kn__error_null(KN_ERR_SHAPE,
                              "idx: header says %s = %lld bytes of data, file has "
                              "%zu",
                              dims, (long long)want, have);
    }
    return kn__result(convert(b + header, k, true, shape, ndim, as_labels, "idx"));
}

/* ---- NPY -------------------------------------------------------------------------- */

typedef struct {
    const char *p, *end;
} cursor;

static void skip_space(cursor *c)
{
    while (c->p < c->end && isspace((unsigned char)*c->p)) c->p++;
}

static bool expect_char(cursor *c, char ch)
{
    skip_space(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

/* A Python string literal in quotes ' or "; copies up to size-1 characters. */
static bool read_pystring(cursor *c, char *out, size_t size)
{
    skip_space(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return false;
    char quote = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != quote) {
        if (n + 1 < size) out[n++] = *c->p;
        c->p++;
    }
    out[n] = '\0';
    if (c->p >= c->end) return false;
    c->p++;
    return true;
}

static bool starts_with(cursor *c, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return false;
    c->p += n;
    return true;
}

/* The shape tuple: "()", "(5,)", "(2, 3)". */
static bool read_shape(cursor *c, int64_t *shape, int *ndim)
{
    if (!expect_char(c, '(')) return false;
    *ndim = 0;
    for (;;) {
        skip_space(c);
        if (expect_char(c, ')')) return true;
        if (*ndim == KN_MAX_DIMS) return false;
        char *endp;
        errno = 0;
        long long v = strtoll(c->p, &endp, 10);
        if (endp == c->p || errno || v < 0) return false;
        shape[(*ndim)++] = v;
        c->p = endp;
        skip_space(c);
        if (expect_char(c, ',')) continue;
        if (expect_char(c, ')')) return true;
        return false;
    }
}

static bool npy_header_error(const char *what, const char *header, size_t len)
{
    int shown = len > 200 ? 200 : (int)len;
    while (shown > 0 && (header[shown - 1] == '\n' || header[shown - 1] == ' ')) shown--;
    kn__error(KN_ERR_VALUE, "npy: %s in header '%.*s'", what, shown, header);
    return false;
}

/* Parses the header dict {'descr': .., 'fortran_order': .., 'shape': (..), }. */
static bool npy_header(const char *header, size_t len, char *descr, size_t descr_size,
                       int64_t *shape, int *ndim)
{
    if (strlen(header) != len) return npy_header_error("NUL byte", header, len);
    cursor c = {header, header + len};
    int fortran = -1;
    if (!expect_char(&c, '{')) return npy_header_error("expected '{'", header, len);
    for (;;) {
        if (expect_char(&c, '}')) break;
        char key[32];
        if (!read_pystring(&c, key, sizeof key) || !expect_char(&c, ':'))
            return npy_header_error("expected a 'key': value", header, len);
        skip_space(&c);
        if (strcmp(key, "descr") == 0) {
            if (!read_pystring(&c, descr, descr_size))
                return npy_header_error("'descr' must be a string such as '<f4'", header, len);
        } else if (strcmp(key, "fortran_order") == 0) {
            if (starts_with(&c, "False"))
                fortran = 0;
            else if (starts_with(&c, "True"))
                fortran = 1;
            else
                return npy_header_error("'fortran_order' must be True or False", header, len);
        } else if (strcmp(key, "shape") == 0) {
            if (!read_shape(&c, shape, ndim))
                return npy_header_error("'shape' must be a tuple of sizes", header, len);
        } else {
            return npy_header_error("unknown key", header, len);
        }
        if (!expect_char(&c, ',')) {
            if (expect_char(&c, '}')) break;
            return npy_header_error("expected ',' or '}'", header, len);
        }
    }
    if (!descr[0] || fortran < 0 || *ndim < 0)
        return npy_header_error("missing 'descr', 'fortran_order' or 'shape'", header, len);
    if (fortran) {
        kn__error(KN_ERR_VALUE, "npy: fortran_order True is not supported (save a C order "
                                "array, e.g. np.ascontiguousarray)");
        return false;
    }
    return true;
}

kn_tensor *kn_parse_npy(const void *bytes, size_t size, bool as_labels)
{
    const unsigned char *b = bytes;
    if (!b) return kn__error_null(KN_ERR_NULL, "npy: no data");
    if (size < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
        return kn__error_null(KN_ERR_VALUE,
                              "npy: bad magic: the file must start with "
                              "\"\\x93NUMPY\" (%zu bytes given)",
                              size);
    int major = b[6];
    size_t len, start;
    if (major == 1) {
        len = (size_t)b[8] | (size_t)b[9] << 8;
        start = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) return kn__error_null(KN_ERR_VALUE, "npy: truncated header length");
        len = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        start = 12;
    } else {
        return kn__error_null(KN_ERR_VALUE,
                              "npy: format version %d.%d is not supported "
                              "(expected 1, 2 or 3)",
                              major, b[7]);
    }
    if (len > size - start)
        return kn__error_null(KN_ERR_VALUE,
                              "npy: header of %zu bytes but the file has only %zu "
                              "after the magic",
                              len, size - start);
    /* A NUL-terminated copy keeps strtoll inside the header whatever the file holds. */
    char *header = malloc(len + 1);
    if (!header) return kn__error_null(KN_ERR_MEMORY, "npy: out of memory");
    memcpy(header, b + start, len);
    header[len] = '\0';
    char descr[32] = "";
    int64_t shape[KN_MAX_DIMS];
    int ndim = -1;
    bool ok = npy_header(header, len, descr, sizeof descr, shape, &ndim);
    free(header);
    if (!ok) return NULL;
    static const struct {
        const char *descr;
        element_kind kind;
    } types[] = {{"<f4", EL_F32}, {"<f8", EL_F64}, {"<i8", EL_I64}, {"<i4", EL_I32},
                 {"<i2", EL_I16}, {"<u2", EL_U16}, {"|u1", EL_U8},  {"|i1", EL_I8},
                 {"<u1", EL_U8},  {"<i1", EL_I8}};
    int found = -1;
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (strcmp(descr, types[i].descr) == 0) found = (int)i;
    if (found < 0)
        return kn__error_null(KN_ERR_DTYPE,
                              "npy: dtype '%s' is not supported (expected "
                              "little-endian '<f4', '<f8', '<i8', '<i4', '|u1' or '|i1')",
                              descr);
    if (as_labels && ndim < 1)
        return kn__error_null(KN_ERR_SHAPE,
                              "npy: labels must be [N] or [N, T, ...] (a class per position), "
                              "the file has shape %s",
                              kn__shape_of(shape, ndim));
    element_kind k = types[found].kind;
    /* integers wider than a byte are indices: they stay exact, as int64 */
    bool integers = k == EL_I64 || k == EL_I32 || k == EL_I16 || k == EL_U16;
    int64_t want = checked_bytes(shape, ndim, element_size(k));
    size_t have = size - start - len;
    if (want < 0 || (uint64_t)want != have)
        return kn__error_null(KN_ERR_SHAPE,
                              "npy: header says shape %s of '%s' = %lld bytes of "
                              "data, file has %zu",
                              kn__shape_of(shape, ndim), descr, (long long)want, have);
    return kn__result(
        convert(b + start + len, k, false, shape, ndim, as_labels || integers, "npy"));
}

/* ---- CSV -------------------------------------------------------------------------- */

/* Splits line (NUL-terminated, modified in place) at commas into trimmed fields; returns
 * the field count, or -1 beyond max. Surrounding double quotes are dropped. */
static int split_fields(char *line, char **fields, int max)
{
    int n = 0;
    char *p = line;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        while (isspace((unsigned char)*p)) p++;
        char *end = p + strlen(p);
        while (end > p && isspace((unsigned char)end[-1])) *--end = '\0';
        if (end - p >= 2 && *p == '"' && end[-1] == '"') {
            end[-1] = '\0';
            p++;
        }
        if (n == max) return -1;
        fields[n++] = p;
        if (!comma) return n;
        p = comma + 1;
    }
}

static int count_fields(const char *line)
{
    int n = 1;
    for (; *line; line++) n += *line == ',';
    return n;
}

kn_status kn_parse_csv(const char *text, size_t size, const char *label_column, kn_tensor **inputs,
                       kn_tensor **labels)
{
    if (!inputs || !labels) return kn__error(KN_ERR_NULL, "csv: NULL output pointer");
    *inputs = *labels = NULL;
    if (!text || !label_column) return kn__error(KN_ERR_NULL, "csv: no text or label column");
    if (memchr(text, '\0', size)) return kn__error(KN_ERR_VALUE, "csv: the text has a NUL byte");
    /* One writable NUL-terminated copy lets strtod/strtoll and the splitter work in place. */
    char *buf = malloc(size + 1);
    if (!buf) return kn__error(KN_ERR_MEMORY, "csv: out of memory");
    memcpy(buf, text, size);
    buf[size] = '\0';

    kn_status status = KN_OK;
    char **fields = NULL, **names = NULL;
    float *x = NULL;
    int64_t *y = NULL;
    int64_t rows = 0;
    char *line = buf, *next;
    int64_t line_no = 1;
    /* header */
    next = strchr(line, '\n');
    if (next) *next++ = '\0';
    if (*line && line[strlen(line) - 1] == '\r') line[strlen(line) - 1] = '\0';
    int ncols = count_fields(line);
    fields = malloc(sizeof *fields * (size_t)ncols);
    names = malloc(sizeof *names * (size_t)ncols);
    if (!fields || !names) {
        status = kn__error(KN_ERR_MEMORY, "csv: out of memory");
        goto done;
    }
    split_fields(line, names, ncols);
    int label = -1;
    for (int j = 0; j < ncols; j++)
        if (strcmp(names[j], label_column) == 0) label = j;
    if (label < 0) {
        char cols[256];
        size_t used = 0;
        for (int j = 0; j < ncols && used < sizeof cols; j++)
            used +=
                (size_t)snprintf(cols + used, sizeof cols - used, j ? ", '%s'" : "'%s'", names[j]);
        status = kn__error(KN_ERR_VALUE,
                           "csv line 1: no column named '%s' in the header "
                           "(columns: %s)",
                           label_column, cols);
        goto done;
    }
    int nfeat = ncols - 1;
    if (nfeat < 1) {
        status = kn__error(KN_ERR_SHAPE,
                           "csv line 1: the header has only the label column '%s', "
                           "no features",
                           label_column);
        goto done;
    }
    /* Every row kept has ncols - 1 commas, so the commas after the header bound the rows.
     * (Lines bound them too, but lines x columns can be the square of the text's size: a
     * 90 KB file of 30,000 commas then 30,000 newlines asked for 3.6 GB.) */
    int64_t max_rows = 0;
    for (const char *c = next; c && *c; c++) max_rows += *c == ',';
    max_rows /= ncols - 1;
    x = malloc(sizeof *x * (size_t)nfeat * (size_t)(max_rows + 1));
    y = malloc(sizeof *y * (size_t)(max_rows + 1));
    if (!x || !y) {
        status = kn__error(KN_ERR_MEMORY, "csv: out of memory for %lld rows", (long long)max_rows);
        goto done;
    }
    while ((line = next) != NULL) {
        line_no++;
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r') line[--len] = '\0';
        if (strspn(line, " \t") == len) continue; /* blank lines, typically the last one */
        int n = count_fields(line);
        if (n != ncols) {
            status = kn__error(KN_ERR_SHAPE,
                               "csv line %lld: expected %d fields as in the header, "
                               "got %d",
                               (long long)line_no, ncols, n);
            goto done;
        }
        split_fields(line, fields, ncols);
        float *row = x + rows * nfeat;
        for (int j = 0, f = 0; j < ncols; j++) {
            char *end;
            errno = 0;
            if (j == label) {
                long long v = strtoll(fields[j], &end, 10);
                if (end == fields[j] || *end || errno) {
                    status = kn__error(KN_ERR_VALUE,
                                       "csv line %lld, column '%s': expected an "
                                       "integer label, got '%.40s'",
                                       (long long)line_no, names[j], fields[j]);
                    goto done;
                }
                y[rows] = v;
            } else {
                double v = strtod(fields[j], &end);
                if (end == fields[j] || *end) {
                    status = kn__error(KN_ERR_VALUE,
                                       "csv line %lld, column '%s': expected a "
                                       "number, got '%.40s'",
                                       (long long)line_no, names[j], fields[j]);
                    goto done;
                }
                row[f++] = (float)v;
            }
        }
        rows++;
    }
    if (rows == 0) {
        status = kn__error(KN_ERR_SHAPE, "csv: no data rows after the header");
        goto done;
    }
    kn_tensor *xt = kn__empty_raw((int64_t[]){rows, nfeat}, 2, KN_FLOAT32, kn_cpu());
    kn_tensor *yt = xt ? kn__empty_raw(&rows, 1, KN_INT64, kn_cpu()) : NULL;
    if (!yt) {
        kn_release(xt);
        status = kn_last_status() ? kn_last_status() : KN_ERR_MEMORY;
        goto done;
    }
    memcpy(kn__data_ptr(xt), x, sizeof *x * (size_t)(rows * nfeat));
    memcpy(kn__data_ptr(yt), y, sizeof *y * (size_t)rows);
    *inputs = kn__result(xt);
    *labels = kn__result(yt);
done:
    free(buf);
    free(fields);
    free(names);
    free(x);
    free(y);
    return status;
}

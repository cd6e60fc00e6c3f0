/*
 * test_data_formats.c — the IDX, NPY and CSV parsers on valid and malformed bytes, and
 * on Fashion-MNIST's t10k files when /usr/share/datasets/fashion-mnist has them.
 */
#include "kn_data.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ASSERT_ERROR_HAS(text)                                                                     \
    cr_assert(strstr(kn_last_error(), (text)), "error '%s' should mention '%s'", kn_last_error(),  \
              (text))

/* ---- IDX ------------------------------------------------------------------------------ */

/* An IDX header (type, dims) followed by payload bytes, into buf; returns the size. */
static size_t idx(unsigned char *buf, int type, const uint32_t *dims, int ndim, const void *payload,
                  size_t payload_size)
{
    buf[0] = buf[1] = 0;
    buf[2] = (unsigned char)type;
    buf[3] = (unsigned char)ndim;
    for (int d = 0; d < ndim; d++)
        for (int k = 0; k < 4; k++) buf[4 + 4 * d + k] = (unsigned char)(dims[d] >> (24 - 8 * k));
    memcpy(buf + 4 + 4 * ndim, payload, payload_size);
    return 4 + 4 * (size_t)ndim + payload_size;
}

Test(idx, ubyte_images_and_labels)
{
    kn_scope_begin();
    unsigned char buf[64];
    unsigned char pixels[12] = {0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255};
    size_t n = idx(buf, 0x08, (uint32_t[]){2, 2, 3}, 3, pixels, 12);
    kn_tensor *t = kn_parse_idx(buf, n, false);
    cr_assert_not_null(t, "%s", kn_last_error());
    cr_assert_eq(t->dtype, KN_FLOAT32);
    KN_ASSERT_SHAPE(t, KN_SHAPE(2, 2, 3));
    KN_ASSERT_CLOSE(t, {0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255});

    n = idx(buf, 0x08, (uint32_t[]){4}, 1, (unsigned char[]){9, 0, 3, 1}, 4);
    t = kn_parse_idx(buf, n, true);
    cr_assert_not_null(t, "%s", kn_last_error());
    cr_assert_eq(t->dtype, KN_INT64);
    KN_ASSERT_CLOSE(t, {9, 0, 3, 1});
    kn_scope_end();
}

Test(idx, big_endian_payload_types)
{
    kn_scope_begin();
    unsigned char buf[64];
    size_t n = idx(buf, 0x09, (uint32_t[]){2}, 1, (unsigned char[]){0xff, 0x7f}, 2);
    KN_ASSERT_CLOSE(kn_parse_idx(buf, n, false), {-1, 127});
    n = idx(buf, 0x0B, (uint32_t[]){2}, 1, (unsigned char[]){0x01, 0x02, 0xff, 0xfe}, 4);
    KN_ASSERT_CLOSE(kn_parse_idx(buf, n, false), {258, -2});
    n = idx(buf, 0x0C, (uint32_t[]){1}, 1, (unsigned char[]){0x00, 0x01, 0x00, 0x00}, 4);
    KN_ASSERT_CLOSE(kn_parse_idx(buf, n, true), {65536});
    /* 1.5f = 0x3fc00000, -2.0 = 0xc000000000000000 */
    n = idx(buf, 0x0D, (uint32_t[]){1}, 1, (unsigned char[]){0x3f, 0xc0, 0, 0}, 4);
    KN_ASSERT_CLOSE(kn_parse_idx(buf, n, false), {1.5f});
    n = idx(buf, 0x0E, (uint32_t[]){1}, 1, (unsigned char[]){0xc0, 0, 0, 0, 0, 0, 0, 0}, 8);
    KN_ASSERT_CLOSE(kn_parse_idx(buf, n, false), {-2.0f});
    KN_ASSERT_CLOSE(kn_parse_idx(buf, n, true), {-2});
    n = idx(buf, 0x0D, (uint32_t[]){1}, 1, (unsigned char[]){0x3f, 0xc0, 0, 0}, 4);
    cr_assert_null(kn_parse_idx(buf, n, true));
    ASSERT_ERROR_HAS("idx: label 0 is 1.5, not an integer");
    kn_scope_end();
}

Test(idx, malformed_files_are_refused)
{
    kn_scope_begin();
    unsigned char buf[64];
    unsigned char pixels[12] = {0};
    size_t n = idx(buf, 0x08, (uint32_t[]){2, 2, 3}, 3, pixels, 12);
    cr_assert_null(kn_parse_idx(buf, n - 1, false));
    ASSERT_ERROR_HAS("idx: header says 2 x 2 x 3 = 12 bytes of data, file has 11");
    cr_assert_null(kn_parse_idx(buf, 10, false));
    ASSERT_ERROR_HAS("too short for the header of 3 dimension sizes");
    cr_assert_null(kn_parse_idx(buf, 2, false));
    ASSERT_ERROR_HAS("too short for the 4-byte magic");
    n = idx(buf, 0x0B, (uint32_t[]){3}, 1, pixels, 4);
    cr_assert_null(kn_parse_idx(buf, n, false));
    ASSERT_ERROR_HAS("idx: header says 3 x 2 = 6 bytes of data, file has 4");
    unsigned char gz[8] = {0x1f, 0x8b, 0x08, 0x00};
    cr_assert_null(kn_parse_idx(gz, sizeof gz, false));
    ASSERT_ERROR_HAS("bad magic number 0x1f8b0800");
    n = idx(buf, 0x0A, (uint32_t[]){1}, 1, pixels, 1);
    cr_assert_null(kn_parse_idx(buf, n, false));
    ASSERT_ERROR_HAS("unknown data type 0x0a");
    n = idx(buf, 0x08, (uint32_t[]){1, 1}, 2, pixels, 1);
    cr_assert_null(kn_parse_idx(buf, n, true));
    ASSERT_ERROR_HAS("labels must have 1 dimension, the file has 2");
    n = idx(buf, 0x08, (uint32_t[]){0xffffffffu, 0xffffffffu, 0xffffffffu}, 3, pixels, 0);
    cr_assert_null(kn_parse_idx(buf, n, false));
    ASSERT_ERROR_HAS("idx: header says 4294967295 x 4294967295 x 4294967295");
    kn_scope_end();
}

/* Reads a gzip file through gzip -dc (core takes bytes; decompression is the caller's). */
static unsigned char *gunzip(const char *path, size_t *size)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "gzip -dc '%s'", path);
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = malloc(cap);
    for (size_t got; (got = fread(buf + n, 1, cap - n, p)) > 0;) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    if (pclose(p) != 0) {
        free(buf);
        return NULL;
    }
    *size = n;
    return buf;
}

Test(idx, fashion_mnist_t10k)
{
    const char *dir = "/usr/share/datasets/fashion-mnist";
    if (access("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", R_OK) != 0)
        cr_skip_test("%s is not installed", dir);
    kn_scope_begin();
    size_t size;
    unsigned char *bytes =
        gunzip("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", &size);
    cr_assert_not_null(bytes);
    kn_tensor *labels = kn_parse_idx(bytes, size, true);
    free(bytes);
    cr_assert_not_null(labels, "%s", kn_last_error());
    KN_ASSERT_SHAPE(labels, KN_SHAPE(10000));
    KN_ASSERT_CLOSE(kn_narrow(labels, 0, 0, 10), {9, 2, 1, 1, 6, 1, 4, 6, 5, 7});

    bytes = gunzip("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz", &size);
    cr_assert_not_null(bytes);
    kn_tensor *images = kn_parse_idx(bytes, size, false);
    free(bytes);
    cr_assert_not_null(images, "%s", kn_last_error());
    KN_ASSERT_SHAPE(images, KN_SHAPE(10000, 28, 28));
    /* numbers from numpy over the same file */
    KN_ASSERT_CLOSE(kn_narrow(kn_select(kn_select(images, 0, 0), 0, 14), 0, 10, 8),
                    {0, 0, 98, 136, 110, 109, 110, 162});
    double total = 0;
    const float *p = kn_data_f32(images);
    for (int64_t i = 0; i < kn_numel(images); i++) total += p[i];
    cr_assert_eq(total, 573469082.0);
    kn_dataset *ds = kn_dataset_new(images, labels);
    cr_assert_not_null(ds, "%s", kn_last_error());
    cr_assert_eq(ds->num_classes, 10);
    kn_dataset_free(ds);
    kn_scope_end();
}

/* ---- NPY ------------------------------------------------------------------------------ */

/* An .npy file as numpy writes it: magic, version, header padded to 64 bytes, data. */
static size_t npy(unsigned char *buf, int version, const char *dict, const void *data,
                  size_t data_size)
{
    size_t pre = version == 1 ? 10 : 12;
    size_t len = strlen(dict) + 1;
    size_t padded = (pre + len + 63) / 64 * 64 - pre;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)version;
    buf[7] = 0;
    buf[8] = (unsigned char)(padded & 0xff);
    buf[9] = (unsigned char)(padded >> 8);
    if (version != 1) buf[10] = buf[11] = 0;
    memcpy(buf + pre, dict, strlen(dict));
    memset(buf + pre + strlen(dict), ' ', padded - strlen(dict) - 1);
    buf[pre + padded - 1] = '\n';
    if (data_size) memcpy(buf + pre + padded, data, data_size);
    return pre + padded + data_size;
}

Test(npy, parses_the_supported_dtypes)
{
    kn_scope_begin();
    unsigned char buf[256];
    size_t n = npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                   (float[]){1, 2, 3, 4, 5, 6.5f}, 24);
    kn_tensor *t = kn_parse_npy(buf, n, false);
    cr_assert_not_null(t, "%s", kn_last_error());
    KN_ASSERT_SHAPE(t, KN_SHAPE(2, 3));
    KN_ASSERT_CLOSE(t, {1, 2, 3, 4, 5, 6.5f});

    n = npy(buf, 2, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
            (double[]){0.25, -3}, 16);
    KN_ASSERT_CLOSE(kn_parse_npy(buf, n, false), {0.25f, -3});
    n = npy(buf, 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }",
            (unsigned char[]){0, 7, 255}, 3);
    KN_ASSERT_CLOSE(kn_parse_npy(buf, n, false), {0, 7, 255});
    KN_ASSERT_CLOSE(kn_parse_npy(buf, n, true), {0, 7, 255});
    n = npy(buf, 1, "{'descr': '|i1', 'fortran_order': False, 'shape': (2,), }",
            (signed char[]){-128, 5}, 2);
    KN_ASSERT_CLOSE(kn_parse_npy(buf, n, true), {-128, 5});
    n = npy(buf, 3, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
            (int64_t[]){(int64_t)1 << 60, 3}, 16);
    t = kn_parse_npy(buf, n, true);
    cr_assert_not_null(t, "%s", kn_last_error());
    cr_assert_eq(kn_data_i64(t)[0], (int64_t)1 << 60);
    n = npy(buf, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", (int32_t[]){-7, 9},
            8);
    KN_ASSERT_CLOSE(kn_parse_npy(buf, n, true), {-7, 9});
    /* keys in another order, double quotes, an empty array */
    n = npy(buf, 1, "{\"shape\": (0, 4), \"fortran_order\": False, \"descr\": \"<f4\"}", NULL, 0);
    t = kn_parse_npy(buf, n, false);
    cr_assert_not_null(t, "%s", kn_last_error());
    KN_ASSERT_SHAPE(t, KN_SHAPE(0, 4));
    kn_scope_end();
}

Test(npy, malformed_files_are_refused)
{
    kn_scope_begin();
    unsigned char buf[256];
    float data[6] = {0};
    size_t n = npy(buf, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data, 24);
    cr_assert_null(kn_parse_npy(buf, n, false));
    ASSERT_ERROR_HAS("fortran_order True is not supported");
    n = npy(buf, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", data, 24);
    cr_assert_null(kn_parse_npy(buf, n, false));
    ASSERT_ERROR_HAS("dtype '>f4' is not supported");
    n = npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data, 24);
    cr_assert_null(kn_parse_npy(buf, n - 4, false));
    ASSERT_ERROR_HAS("header says shape [2, 3] of '<f4' = 24 bytes of data, file has 20");
    cr_assert_null(kn_parse_npy(buf, 30, false));
    ASSERT_ERROR_HAS("header of 118 bytes but the file has only 20 after the magic");
    n = npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", data, 4);
    cr_assert_null(kn_parse_npy(buf, n, true));
    ASSERT_ERROR_HAS("labels must be [N] or [N, T, ...] (a class per position), the file has "
                     "shape []");
    n = npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", data, 24);
    cr_assert_null(kn_parse_npy(buf, n, false));
    ASSERT_ERROR_HAS("'shape' must be a tuple of sizes");
    n = npy(buf, 1, "{'descr': '<f4', 'shape': (2,), }", data, 8);
    cr_assert_null(kn_parse_npy(buf, n, false));
    ASSERT_ERROR_HAS("missing 'descr', 'fortran_order' or 'shape'");
    n = npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", (float[]){0.5f},
            4);
    cr_assert_null(kn_parse_npy(buf, n, true));
    ASSERT_ERROR_HAS("npy: label 0 is 0.5, not an integer");
    memcpy(buf, "PK\x03\x04", 4);
    cr_assert_null(kn_parse_npy(buf, n, false));
    ASSERT_ERROR_HAS("bad magic");
    n = npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data, 8);
    buf[6] = 4;
    cr_assert_null(kn_parse_npy(buf, n, false));
    ASSERT_ERROR_HAS("format version 4.0 is not supported");
    kn_scope_end();
}

/* ---- CSV ------------------------------------------------------------------------------ */

static kn_status csv(const char *text, const char *label, kn_tensor **x, kn_tensor **y)
{
    return kn_parse_csv(text, strlen(text), label, x, y);
}

Test(csv, label_column_by_name)
{
    kn_scope_begin();
    kn_tensor *x, *y;
    const char *text = "x1, label ,x2\r\n0.5,2,-1e3\r\n3,0,  4.25\r\n\r\n";
    cr_assert_eq(csv(text, "label", &x, &y), KN_OK, "%s", kn_last_error());
    KN_ASSERT_SHAPE(x, KN_SHAPE(2, 2));
    KN_ASSERT_CLOSE(x, {0.5f, -1000, 3, 4.25f});
    cr_assert_eq(y->dtype, KN_INT64);
    KN_ASSERT_CLOSE(y, {2, 0});
    /* no trailing newline, quoted header names */
    cr_assert_eq(csv("\"y\",\"a\"\n1,2", "y", &x, &y), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(x, {2});
    KN_ASSERT_CLOSE(y, {1});
    kn_scope_end();
}

Test(csv, errors_name_line_and_column)
{
    kn_scope_begin();
    kn_tensor *x, *y;
    cr_assert_neq(csv("label,x1,x2,x3\n1,2,3,4\n0,1,2,abc\n", "label", &x, &y), KN_OK);
    ASSERT_ERROR_HAS("csv line 3, column 'x3': expected a number, got 'abc'");
    cr_assert_null(x);
    cr_assert_neq(csv("label,x1\n1,\n", "label", &x, &y), KN_OK);
    ASSERT_ERROR_HAS("csv line 2, column 'x1': expected a number, got ''");
    cr_assert_neq(csv("label,x1\n1,2\n\n2.5,3\n", "label", &x, &y), KN_OK);
    ASSERT_ERROR_HAS("csv line 4, column 'label': expected an integer label, got '2.5'");
    cr_assert_neq(csv("label,x1,x2\n1,2,3\n1,2\n", "label", &x, &y), KN_OK);
    ASSERT_ERROR_HAS("csv line 3: expected 3 fields as in the header, got 2");
    cr_assert_neq(csv("label,x1\n1,2,3\n", "label", &x, &y), KN_OK);
    ASSERT_ERROR_HAS("csv line 2: expected 2 fields as in the header, got 3");
    cr_assert_neq(csv("a,b\n1,2\n", "label", &x, &y), KN_OK);
    ASSERT_ERROR_HAS("csv line 1: no column named 'label' in the header (columns: 'a', 'b')");
    cr_assert_neq(csv("label\n1\n", "label", &x, &y), KN_OK);
    ASSERT_ERROR_HAS("no features");
    cr_assert_neq(csv("label,x\n", "label", &x, &y), KN_OK);
    ASSERT_ERROR_HAS("no data rows");
    kn_scope_end();
}

Test(csv, nan_features_parse_but_the_dataset_refuses_them)
{
    kn_scope_begin();
    kn_tensor *x, *y;
    cr_assert_eq(csv("label,a,b\n0,1,2\n1,3,nan\n", "label", &x, &y), KN_OK, "%s", kn_last_error());
    cr_assert(isnan(kn_data_f32(x)[3]));
    cr_assert_null(kn_dataset_new(x, y));
    ASSERT_ERROR_HAS("inputs must be finite, sample 1 has nan at element 1");
    /* and negative labels are the dataset's to refuse too */
    cr_assert_eq(csv("label,a\n-1,1\n", "label", &x, &y), KN_OK, "%s", kn_last_error());
    cr_assert_null(kn_dataset_new(x, y));
    ASSERT_ERROR_HAS("labels must be >= 0, sample 0 has -1");
    kn_scope_end();
}

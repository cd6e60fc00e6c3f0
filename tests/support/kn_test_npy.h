/*
 * kn_test_npy.h — writing NumPy .npy files (version 1, C order, little-endian) for the
 * tests that feed the data path files as users save them with np.save: token matrices
 * ('<i8', '<i4', '<u2'), features ('<f4') and labels per sample or per position.
 * Header-only: it uses Criterion's assertions.
 */
#ifndef KN_TEST_NPY_H
#define KN_TEST_NPY_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Writes path with dtype descr ('<i8') and shape; bytes of data follow the header. */
static __attribute__((unused)) void kn_test_write_npy_file(const char *path, const char *descr,
                                                           const int64_t *shape, int ndim,
                                                           const void *data, size_t bytes)
{
    char dims[160] = "";
    for (int i = 0; i < ndim; i++)
        snprintf(dims + strlen(dims), sizeof dims - strlen(dims), "%lld,", (long long)shape[i]);
    char header[256];
    int n = snprintf(header, sizeof header,
                     "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
    int pad = (64 - (10 + n + 1) % 64) % 64; /* the data starts 64-byte aligned */
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    uint16_t length = (uint16_t)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fwrite(&length, 2, 1, f);
    fwrite(header, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    if (bytes) fwrite(data, 1, bytes, f);
    cr_assert_eq(fclose(f), 0, "%s", path);
}

#endif

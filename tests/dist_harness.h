/*
 * dist_harness.h — what the tests of distributed training share (test_dist.c,
 * test_server_dist.c): whether mpirun is here (they skip, saying so, where it is not),
 * a small classification data set written as NPY files, commands run with their output
 * kept (and any sanitizer report of a rank copied to stderr, where test.sh --asan looks),
 * and safetensors files compared tensor by tensor. Header-only (static).
 */
#ifndef KILN_DIST_HARNESS_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define KILN_DIST_HARNESS_H

#include "kn.h"
#include "kn_dist.h"
#include "kn_safetensors.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define D_FN static __attribute__((unused))

/* Skips the test unless this build has MPI and mpirun can be run. */
D_FN void d_require_mpirun(void)
{
    if (!kn_dist_built()) cr_skip_test("distributed tests skip: %s", kn_dist_unavailable());
    const char *mpirun = kn_dist_mpirun();
    char command[600];
    snprintf(command, sizeof command, "command -v '%s' >/dev/null 2>&1", mpirun);
    if (system(command) != 0)
        cr_skip_test("distributed tests skip: mpirun (%s) is not installed (apt install "
                     "openmpi-bin)",
                     mpirun);
}

/* Copies sanitizer reports in text (a rank's output) to stderr. */
D_FN void d_pass_sanitizers(const char *who, const char *text)
{
    bool in_report = false;
    for (const char *line = text; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        if (memmem(line, n, "ERROR: AddressSanitizer", 23) ||
            memmem(line, n, "ERROR: LeakSanitizer", 20) || memmem(line, n, "runtime error:", 14))
            in_report = true;
        if (in_report) fprintf(stderr, "%s: %.*s\n", who, (int)n, line);
        line = end ? end + 1 : NULL;
    }
}

/* Runs a shell command (stdout and stderr together into *output, malloc'd); returns its
 * exit status (-1 when it could not run). */
D_FN int d_run(const char *command, char **output)
{
    fflush(NULL);
    FILE *p = popen(command, "r");
    *output = NULL;
    if (!p) return -1;
    size_t size = 0, capacity = 4096;
    char *buf = malloc(capacity);
    size_t n;
    while (buf && (n = fread(buf + size, 1, capacity - size - 1, p)) > 0) {
        size += n;
        if (capacity - size < 1024) {
            char *grown = realloc(buf, capacity * 2);
            if (!grown) break;
            buf = grown;
            capacity *= 2;
        }
    }
    if (buf) buf[size] = '\0';
    int status = pclose(p);
    *output = buf;
    d_pass_sanitizers(command, buf);
    return WIFEXITED(status) ? WEXITSTATUS(status)
                             : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* An NPY v1 file of float32 or int64 values with this shape. */
D_FN void d_write_npy(const char *path, const void *data, bool int64, const int64_t *shape,
                      int ndim)
{
    char dims[128] = "";
    size_t used = 0;
    int64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        used += (size_t)snprintf(dims + used, sizeof dims - used, "%lld,%s", (long long)shape[i],
                                 i + 1 < ndim ? " " : "");
        count *= shape[i];
    }
    char header[256];
    int n =
        snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                 int64 ? "<i8" : "<f4", dims);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    unsigned short length = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fwrite(&length, 2, 1, f);
    fwrite(header, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    fwrite(data, int64 ? 8 : 4, (size_t)count, f);
    cr_assert_eq(fclose(f), 0);
}

/* count samples of 1 x 8 x 8 (normal, from seed) with 4 classes that depend on them:
 * dir/x.npy and dir/y.npy. */
D_FN void d_write_dataset(const char *dir, int64_t count, uint64_t seed)
{
    kn_generator *gen = kn_generator_new(seed);
    kn_tensor *x = kn_randn(KN_SHAPE(count, 64), gen);
    kn_generator_free(gen);
    cr_assert_not_null(x);
    const float *v = kn_data_f32(x);
    int64_t *y = malloc(sizeof *y * (size_t)count);
    for (int64_t i = 0; i < count; i++) {
        float a = 0, b = 0;
        for (int k = 0; k < 4; k++) a += v[i * 64 + k], b += v[i * 64 + 4 + k];
        y[i] = (a > 0) + 2 * (b > 0);
    }
    char path[600];
    snprintf(path, sizeof path, "%s/x.npy", dir);
    d_write_npy(path, v, false, (int64_t[]){count, 1, 8, 8}, 4);
    snprintf(path, sizeof path, "%s/y.npy", dir);
    d_write_npy(path, y, true, (int64_t[]){count}, 1);
    free(y);
    kn_release(x);
}

/* The largest relative difference ||a - b|| / ||a|| over the float32 tensors of two
 * safetensors files with the same entries; *worst names it. */
D_FN double d_max_relative_difference(const char *a_path, const char *b_path, char *worst,
                                      size_t size)
{
    kn_safetensors *a = kn_safetensors_load(a_path), *b = kn_safetensors_load(b_path);
    cr_assert(a && b, "loading %s and %s: %s", a_path, b_path, kn_last_error());
    cr_assert_eq(a->count, b->count);
    double max = 0;
    for (int i = 0; i < a->count; i++) {
        kn_tensor *ta = a->entries[i].tensor, *tb = NULL;
        for (int j = 0; j < b->count; j++)
            if (!strcmp(a->entries[i].name, b->entries[j].name)) tb = b->entries[j].tensor;
        cr_assert_not_null(tb, "%s has no %s", b_path, a->entries[i].name);
        if (ta->dtype != KN_FLOAT32) continue;
        cr_assert_eq(kn_numel(ta), kn_numel(tb));
        const float *x = kn_data_f32(ta), *y = kn_data_f32(tb);
        double diff = 0, norm = 0;
        for (int64_t k = 0; k < kn_numel(ta); k++) {
            diff += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
            norm += (double)x[k] * x[k];
        }
        double rel = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
        if (rel > max) {
            max = rel;
            snprintf(worst, size, "%s", a->entries[i].name);
        }
    }
    kn_safetensors_free(a);
    kn_safetensors_free(b);
    return max;
}

#endif

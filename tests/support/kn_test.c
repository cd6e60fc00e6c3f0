/*
 * kn_test.c — comparisons, golden fixture loading, finite-difference gradient checks
 * and input makers for the tests (see kn_test.h).
 *
 * Fixture format (little-endian), written by tests/golden/generate.py:
 *   "KNGOLD1\n", uint32 count, then per entry:
 *   uint32 name_length, name bytes, uint32 dtype (0 float32, 1 int64), uint32 ndim,
 *   int64 shape[ndim], then numel elements of the dtype.
 */
#define _XOPEN_SOURCE 700 /* nftw, mkdtemp */
#include "kn_test.h"
#include "kn_internal.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

bool kn_test_close(const kn_tensor *t, const float *want, int64_t n, double rtol, double atol,
                   char *message, size_t size)
{
    if (!t) {
        snprintf(message, size, "tensor is NULL: %s", kn_last_error());
        return false;
    }
    if (kn_numel(t) != n) {
        snprintf(message, size, "expected %lld elements, got %lld", (long long)n,
                 (long long)kn_numel(t));
        return false;
    }
    int64_t index[KN_MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        double got = kn_get(t, index), expected = want[i];
        bool ok = (isnan(got) && isnan(expected)) || (isinf(expected) && got == expected) ||
                  fabs(got - expected) <= atol + rtol * fabs(expected);
        if (!ok) {
            snprintf(message, size, "element %lld: got %.9g, expected %.9g (rtol %g, atol %g)",
                     (long long)i, got, expected, rtol, atol);
            return false;
        }
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++index[d] < t->shape[d]) break;
            index[d] = 0;
        }
    }
    return true;
}

bool kn_test_shape_is(const kn_tensor *t, const int64_t *shape, int ndim, char *message,
                      size_t size)
{
    if (!t) {
        snprintf(message, size, "tensor is NULL: %s", kn_last_error());
        return false;
    }
    if (t->ndim != ndim) {
        snprintf(message, size, "rank %d, expected %d", t->ndim, ndim);
        return false;
    }
    for (int i = 0; i < ndim; i++) {
        if (t->shape[i] != shape[i]) {
            snprintf(message, size, "dim %d is %lld, expected %lld", i, (long long)t->shape[i],
                     (long long)shape[i]);
            return false;
        }
    }
    return true;
}

/* ---- golden fixtures ------------------------------------------------------------------ */

typedef struct golden_entry {
    char name[128];
    kn_dtype dtype;
    int ndim;
    int64_t shape[KN_MAX_DIMS];
    void *data;
    int64_t numel;
} golden_entry;

struct kn_golden {
    golden_entry *entries;
    uint32_t count;
};

void kn_golden_free(kn_golden *g)
{
    if (!g) return;
    for (uint32_t i = 0; i < g->count; i++) free(g->entries[i].data);
    free(g->entries);
    free(g);
}

kn_golden *kn_golden_load(const char *name)
{
    char path[1024];
    /* $KILN_SOURCE_DIR first: binaries built on one machine and run from another checkout
     * (bench/cuda/run.sh on a GPU machine) find the fixtures there */
    const char *root = getenv("KILN_SOURCE_DIR");
    if (!root || !root[0]) root = KILN_SOURCE_DIR;
    snprintf(path, sizeof path, "%s/tests/golden/data/%s.bin", root, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "golden: cannot open %s\n", path);
        return NULL;
    }
    char magic[8];
    uint32_t count;
    kn_golden *g = calloc(1, sizeof *g);
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "KNGOLD1\n", 8) || fread(&count, 4, 1, f) != 1)
        goto fail;
    g->entries = calloc(count ? count : 1, sizeof *g->entries);
    for (uint32_t i = 0; i < count; i++) {
        golden_entry *e = &g->entries[i];
        uint32_t length, dtype, ndim;
        if (fread(&length, 4, 1, f) != 1 || length >= sizeof e->name) goto fail;
        if (fread(e->name, 1, length, f) != length) goto fail;
        if (fread(&dtype, 4, 1, f) != 1 || fread(&ndim, 4, 1, f) != 1 || ndim > KN_MAX_DIMS)
            goto fail;
        e->dtype = dtype ? KN_INT64 : KN_FLOAT32;
        e->ndim = (int)ndim;
        if (ndim && fread(e->shape, 8, ndim, f) != ndim) goto fail;
        e->numel = 1;
        for (uint32_t d = 0; d < ndim; d++) e->numel *= e->shape[d];
        size_t bytes = (size_t)e->numel * kn_dtype_size(e->dtype);
        e->data = malloc(bytes ? bytes : 1);
        if (bytes && fread(e->data, 1, bytes, f) != bytes) goto fail;
        g->count = i + 1;
    }
    fclose(f);
    return g;
fail:
    fprintf(stderr, "golden: %s is truncated or malformed\n", path);
    fclose(f);
    kn_golden_free(g);
    return NULL;
}

static golden_entry *find(kn_golden *g, const char *entry)
{
    for (uint32_t i = 0; g && i < g->count; i++)
        if (strcmp(g->entries[i].name, entry) == 0) return &g->entries[i];
    return NULL;
}

bool kn_golden_has(kn_golden *g, const char *entry)
{
    return find(g, entry) != NULL;
}

kn_tensor *kn_golden_tensor(kn_golden *g, const char *entry)
{
    golden_entry *e = find(g, entry);
    if (!e) {
        fprintf(stderr, "golden: no entry '%s'\n", entry);
        return NULL;
    }
    if (e->dtype == KN_INT64) return kn_from_int64s(e->data, e->shape, e->ndim);
    return kn_from_floats(e->data, e->shape, e->ndim);
}

bool kn_golden_check(kn_golden *g, const kn_tensor *t, const char *entry, double rtol, double atol,
                     char *message, size_t size)
{
    golden_entry *e = find(g, entry);
    if (!e) {
        snprintf(message, size, "golden entry '%s' is missing", entry);
        return false;
    }
    if (!t) {
        snprintf(message, size, "%s: tensor is NULL (%s)", entry, kn_last_error());
        return false;
    }
    if (t->ndim != e->ndim || memcmp(t->shape, e->shape, sizeof(int64_t) * (size_t)e->ndim)) {
        char a[128], b[128];
        snprintf(message, size, "%s: shape %s, expected %s", entry,
                 kn_shape_str(t->shape, t->ndim, a, sizeof a),
                 kn_shape_str(e->shape, e->ndim, b, sizeof b));
        return false;
    }
    float *want = malloc(sizeof(float) * (size_t)(e->numel ? e->numel : 1));
    for (int64_t i = 0; i < e->numel; i++)
        want[i] = e->dtype == KN_INT64 ? (float)((int64_t *)e->data)[i] : ((float *)e->data)[i];
    char inner[400];
    bool ok = kn_test_close(t, want, e->numel, rtol, atol, inner, sizeof inner);
    if (!ok) snprintf(message, size, "%s: %s", entry, inner);
    free(want);
    return ok;
}

/* ---- gradient checks ------------------------------------------------------------------ */

static double weighted_sum(kn_tensor *out, const float *weights)
{
    int64_t n = kn_numel(out);
    float *values = malloc(sizeof(float) * (size_t)(n ? n : 1));
    kn_copy_to_floats(out, values);
    double total = 0;
    for (int64_t i = 0; i < n; i++) total += (double)values[i] * weights[i];
    free(values);
    return total;
}

static double evaluate(kn_test_fn fn, kn_tensor **inputs, void *context, const float *weights)
{
    kn_scope_begin();
    kn_no_grad_begin();
    kn_tensor *out = fn(inputs, context);
    double value = out ? weighted_sum(out, weights) : NAN;
    kn_no_grad_end();
    kn_scope_end();
    return value;
}

bool kn_test_gradcheck(kn_test_fn fn, kn_tensor **inputs, int n_inputs, void *context, double eps,
                       double rtol, double atol, int max_elements, char *message, size_t size)
{
    bool ok = true;
    kn_scope_begin();
    for (int i = 0; i < n_inputs; i++) kn_zero_grad(inputs[i]);
    kn_tensor *out = fn(inputs, context);
    if (!out) {
        snprintf(message, size, "forward failed: %s", kn_last_error());
        kn_scope_end();
        return false;
    }
    int64_t n_out = kn_numel(out);
    float *weights = malloc(sizeof(float) * (size_t)(n_out ? n_out : 1));
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (int64_t i = 0; i < n_out; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        weights[i] = 0.5f + (float)((state >> 40) & 0xFFFF) / 65536.0f; /* in [0.5, 1.5) */
    }
    kn_tensor *w = kn_from_floats(weights, out->shape, out->ndim);
    kn_tensor *loss = kn_sum_all(kn_mul(out, w));
    if (!loss || kn_backward(loss, NULL, false) != KN_OK) {
        snprintf(message, size, "backward failed: %s", kn_last_error());
        ok = false;
    }
    for (int i = 0; ok && i < n_inputs; i++) {
        kn_tensor *x = inputs[i];
        if (!x || !x->requires_grad || x->dtype != KN_FLOAT32) continue;
        if (!x->grad) {
            snprintf(message, size, "input %d has no .grad after backward", i);
            ok = false;
            break;
        }
        float *data = kn_data_f32(x);
        int64_t n = kn_numel(x);
        int64_t step = (max_elements > 0 && n > max_elements) ? n / max_elements : 1;
        int64_t index[KN_MAX_DIMS] = {0};
        for (int64_t j = 0; j < n; j += step) {
            float saved = data[j];
            data[j] = (float)(saved + eps);
            double plus = evaluate(fn, inputs, context, weights);
            data[j] = (float)(saved - eps);
            double minus = evaluate(fn, inputs, context, weights);
            data[j] = saved;
            double numeric = (plus - minus) / (2 * eps);
            int64_t rest = j;
            for (int d = x->ndim - 1; d >= 0; d--) {
                index[d] = rest % x->shape[d];
                rest /= x->shape[d];
            }
            double analytic = kn_get(x->grad, index);
            if (!(fabs(analytic - numeric) <= atol + rtol * fabs(numeric))) {
                snprintf(message, size,
                         "input %d element %lld: analytic gradient %.6g, numeric %.6g", i,
                         (long long)j, analytic, numeric);
                ok = false;
                break;
            }
        }
    }
    free(weights);
    for (int i = 0; i < n_inputs; i++) kn_zero_grad(inputs[i]);
    kn_scope_end();
    return ok;
}

kn_tensor *kn_test_uniform(const int64_t *shape, int ndim, double low, double high, uint64_t seed)
{
    kn_tensor *t = kn_empty(shape, ndim, KN_FLOAT32);
    if (!t) return NULL;
    float *p = kn_data_f32(t);
    uint64_t state = seed * 2862933555777941757ull + 3037000493ull;
    for (int64_t i = 0; i < kn_numel(t); i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)(low + (high - low) * (double)(state >> 11) / 9007199254740992.0);
    }
    return t;
}

kn_tensor *kn_test_seq(const int64_t *shape, int ndim, int seed)
{
    kn_tensor *t = kn_empty(shape, ndim, KN_FLOAT32);
    if (!t) return NULL;
    float *p = kn_data_f32(t);
    for (int64_t i = 0; i < kn_numel(t); i++) p[i] = (float)((i * seed + 3) % 17 - 8) / 8.f;
    return t;
}

kn_tensor *kn_test_sin24(const int64_t *shape, int ndim)
{
    static const float values[24] = {0.0f,
                                     2.890674591064453f,
                                     1.5465041399002075f,
                                     -2.063298463821411f,
                                     -2.6503639221191406f,
                                     0.645359992980957f,
                                     2.9956300258636475f,
                                     0.9572950601577759f,
                                     -2.4834794998168945f,
                                     -2.2859506607055664f,
                                     1.2605011463165283f,
                                     2.9603159427642822f,
                                     0.32326096296310425f,
                                     -2.78737211227417f,
                                     -1.8144984245300293f,
                                     1.816619634628296f,
                                     2.7863857746124268f,
                                     -0.3259097933769226f,
                                     -2.9607467651367188f,
                                     -1.2580827474594116f,
                                     2.287675380706787f,
                                     2.4819836616516113f,
                                     -0.9598199129104614f,
                                     -2.9954850673675537f};
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    if (n != 24) {
        fprintf(stderr, "kn_test_sin24: shape has %lld elements, expected 24\n", (long long)n);
        return NULL;
    }
    return kn_from_floats(values, shape, ndim);
}

kn_tensor *kn_test_scalar(float value)
{
    return kn_from_floats(&value, (const int64_t[]){1}, 0);
}

kn_tensor *kn_test_transposed(kn_tensor *t, int d0, int d1)
{
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    memcpy(strides, t->strides, sizeof strides);
    shape[d0] = t->shape[d1], shape[d1] = t->shape[d0];
    strides[d0] = t->strides[d1], strides[d1] = t->strides[d0];
    return kn_autorelease(kn__view_raw(t, shape, strides, t->ndim, t->offset));
}

bool kn_test_write_npy(const char *path, const char *descr, const int64_t *shape, int ndim,
                       const void *data)
{
    char dims[160] = "", dict[256];
    size_t count = 1, used = 0;
    for (int i = 0; i < ndim; i++) {
        used += (size_t)snprintf(dims + used, sizeof dims - used, "%lld%s", (long long)shape[i],
                                 ndim == 1      ? ","
                                 : i + 1 < ndim ? ", "
                                                : "");
        count *= (size_t)shape[i];
    }
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr,
             dims);
    size_t len = strlen(dict) + 1, padded = (10 + len + 63) / 64 * 64 - 10;
    size_t element = (size_t)(descr[2] - '0');
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(padded & 0xff), f);
    fputc((int)(padded >> 8), f);
    fputs(dict, f);
    for (size_t i = strlen(dict); i + 1 < padded; i++) fputc(' ', f);
    fputc('\n', f);
    bool ok = fwrite(data, element, count, f) == count;
    return fclose(f) == 0 && ok;
}

bool kn_test_temp_dir(const char *prefix, char *out, size_t size)
{
    int n = snprintf(out, size, "/tmp/%s-XXXXXX", prefix);
    if (n < 0 || (size_t)n >= size || !mkdtemp(out)) {
        if (size) out[0] = '\0';
        return false;
    }
    return true;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void kn_test_remove_dir(const char *dir)
{
    if (dir && dir[0]) nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int kn_test_run(const char *command, char *out, size_t size)
{
    out[0] = '\0';
    FILE *p = popen(command, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

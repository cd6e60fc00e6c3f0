/*
 * random.c — generators and random fills. A kn_generator is PyTorch's CPU generator:
 * an mt19937 seeded with the low 32 bits of the seed, plus the cached second Box–Muller
 * sample. Every fill consumes the stream exactly as torch 1.13 on the CPU does, so
 * kn_manual_seed(s) followed by kn_rand/kn_uniform_/kn_normal_/kn_bernoulli_/kn_randperm
 * gives torch.manual_seed(s)'s numbers:
 *   uniform_   24 bits of one 32-bit draw: (r & 0xffffff) * 2^-24 * (high - low) + low
 *   normal_    >= 16 contiguous elements: uniforms first, then Box–Muller in float over
 *              blocks of 16 (the last block recomputed when numel % 16 != 0); otherwise
 *              one double normal per element from two 53-bit uniforms, caching the sine
 *   bernoulli_ a 53-bit double uniform per element, 1 when it is < p
 *   randperm   Fisher–Yates with draw % (n - i), starting from arange(n)
 * (torch's AVX2 build of normal_ uses SLEEF's log/sincos: last-ulp differences only.)
 * Non-contiguous tensors are filled in memory order, as torch's TensorIterator does.
 */
#include "kn_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* x * (high - low) + low must not become an fma, or the numbers stop matching torch. */
#pragma GCC optimize("fp-contract=off")

#define MT_N 624
#define MT_M 397
#define DEFAULT_SEED 67280421310721ULL
#define STATE_MAGIC "KNRG"
#define STATE_VERSION 1u

struct kn_generator {
    uint32_t mt[MT_N];
    uint32_t index; /* next word of mt to temper; MT_N means regenerate first */
    uint64_t seed;
    bool has_normal; /* a cached double normal sample (torch's next_double_normal_sample) */
    double normal;
};

/* ---- mt19937 --------------------------------------------------------------------- */

static void mt_seed(kn_generator *g, uint64_t seed)
{
    g->seed = seed;
    g->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < MT_N; j++)
        g->mt[j] = 1812433253u * (g->mt[j - 1] ^ (g->mt[j - 1] >> 30)) + j;
    g->index = MT_N;
    g->has_normal = false;
    g->normal = 0.0;
}

static void mt_twist(kn_generator *g)
{
    uint32_t *s = g->mt;
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (s[i] & 0x80000000u) | (s[(i + 1) % MT_N] & 0x7fffffffu);
        s[i] = s[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    g->index = 0;
}

static inline uint32_t next_u32(kn_generator *g)
{
    if (g->index >= MT_N) mt_twist(g);
    uint32_t y = g->mt[g->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* torch's random64(): the first draw is the high word. */
static inline uint64_t next_u64(kn_generator *g)
{
    uint64_t hi = next_u32(g);
    return (hi << 32) | next_u32(g);
}

static inline float uniform_float(kn_generator *g, float low, float high)
{
    float x = (float)(next_u32(g) & 0xffffffu) * (1.0f / 16777216.0f);
    /* torch's kernel is compiled with FMA contraction: one rounding, not two */
    return fmaf(x, high - low, low);
}

static inline double uniform_double(kn_generator *g)
{
    return (double)(next_u64(g) & ((1ULL << 53) - 1)) * (1.0 / 9007199254740992.0);
}

static double normal_double(kn_generator *g)
{
    if (g->has_normal) {
        g->has_normal = false;
        return g->normal;
    }
    double u1 = uniform_double(g);
    double u2 = uniform_double(g);
    double r = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * M_PI * u1;
    g->normal = r * sin(theta);
    g->has_normal = true;
    return r * cos(theta);
}

/* ---- generators ------------------------------------------------------------------ */

static kn_generator default_generator;
static bool default_ready;

kn_generator *kn_generator_new(uint64_t seed)
{
    kn_generator *g = malloc(sizeof *g);
    if (!g) return kn__error_null(KN_ERR_MEMORY, "generator_new: out of memory");
    mt_seed(g, seed);
    return g;
}

void kn_generator_free(kn_generator *gen)
{
    free(gen);
}

kn_generator *kn_default_generator(void)
{
    if (!default_ready) {
        mt_seed(&default_generator, DEFAULT_SEED);
        default_ready = true;
    }
    return &default_generator;
}

static kn_generator *resolve(kn_generator *gen)
{
    return gen ? gen : kn_default_generator();
}

void kn_manual_seed(uint64_t seed)
{
    mt_seed(kn_default_generator(), seed);
}

void kn_generator_seed(kn_generator *gen, uint64_t seed)
{
    mt_seed(resolve(gen), seed);
}

uint64_t kn_generator_initial_seed(const kn_generator *gen)
{
    return gen ? gen->seed : kn_default_generator()->seed;
}

uint32_t kn_generator_next_u32(kn_generator *gen)
{
    return next_u32(resolve(gen));
}

/* ---- state blobs ------------------------------------------------------------------ */

/* magic, version, seed, mt words, index, has_normal, normal: fixed-size, native endian. */
#define STATE_SIZE (4 + 4 + 8 + 4 * MT_N + 4 + 4 + 8)

size_t kn_generator_state_size(void)
{
    return STATE_SIZE;
}

void kn_generator_get_state(const kn_generator *gen, void *buffer)
{
    if (!buffer) return;
    const kn_generator *g = gen ? gen : kn_default_generator();
    unsigned char *p = buffer;
    uint32_t version = STATE_VERSION, has_normal = g->has_normal;
    memcpy(p, STATE_MAGIC, 4), p += 4;
    memcpy(p, &version, 4), p += 4;
    memcpy(p, &g->seed, 8), p += 8;
    memcpy(p, g->mt, 4 * MT_N), p += 4 * MT_N;
    memcpy(p, &g->index, 4), p += 4;
    memcpy(p, &has_normal, 4), p += 4;
    memcpy(p, &g->normal, 8);
}

kn_status kn_generator_set_state(kn_generator *gen, const void *buffer, size_t size)
{
    if (!buffer) return kn__error(KN_ERR_NULL, "generator_set_state: state buffer is NULL");
    if (size != STATE_SIZE)
        return kn__error(KN_ERR_VALUE, "generator_set_state: state has %zu bytes, expected %d",
                         size, STATE_SIZE);
    const unsigned char *p = buffer;
    if (memcmp(p, STATE_MAGIC, 4) != 0)
        return kn__error(KN_ERR_VALUE, "generator_set_state: not a Kiln generator state "
                                       "(bad magic)");
    kn_generator g;
    uint32_t version, has_normal;
    memcpy(&version, p + 4, 4);
    memcpy(&g.seed, p + 8, 8);
    memcpy(g.mt, p + 16, 4 * MT_N);
    memcpy(&g.index, p + 16 + 4 * MT_N, 4);
    memcpy(&has_normal, p + 20 + 4 * MT_N, 4);
    memcpy(&g.normal, p + 24 + 4 * MT_N, 8);
    if (version != STATE_VERSION)
        return kn__error(KN_ERR_VALUE, "generator_set_state: state version %u, expected %u",
                         version, STATE_VERSION);
    if (g.index > MT_N)
        return kn__error(KN_ERR_VALUE,
                         "generator_set_state: position %u is out of range "
                         "(0..%d)",
                         g.index, MT_N);
    if (has_normal > 1 || (has_normal && !isfinite(g.normal)))
        return kn__error(KN_ERR_VALUE, "generator_set_state: corrupt cached normal sample");
    uint32_t any = 0;
    for (int i = 0; i < MT_N; i++) any |= g.mt[i];
    if (!any) return kn__error(KN_ERR_VALUE, "generator_set_state: the mt19937 state is all zero");
    g.has_normal = has_normal;
    *resolve(gen) = g;
    return KN_OK;
}

/* ---- fills ------------------------------------------------------------------------ */

typedef enum { FILL_UNIFORM, FILL_NORMAL, FILL_BERNOULLI } fill_kind;

typedef struct fill_args {
    fill_kind kind;
    double a, b; /* low/high, mean/std, p */
} fill_args;

static void normal_fill_16(float *data, float mean, float std)
{
    for (int j = 0; j < 8; j++) {
        float u1 = 1 - data[j]; /* [0, 1) -> (0, 1] for the log */
        float u2 = data[j + 8];
        float radius = sqrtf(-2 * logf(u1));
        float theta = (float)(2.0f * M_PI * u2);
        data[j] = radius * cosf(theta) * std + mean;
        data[j + 8] = radius * sinf(theta) * std + mean;
    }
}

/* torch's normal_fill: the path for >= 16 contiguous float elements. */
static void normal_fill(kn_generator *g, float *data, int64_t n, float mean, float std)
{
    for (int64_t i = 0; i < n; i++) data[i] = uniform_float(g, 0.f, 1.f);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(data + i, mean, std);
    if (n % 16 != 0) {
        data += n - 16;
        for (int i = 0; i < 16; i++) data[i] = uniform_float(g, 0.f, 1.f);
        normal_fill_16(data, mean, std);
    }
}

/* Fills n contiguous elements in stream order. */
static void fill_contiguous(kn_generator *g, void *ptr, kn_dtype dtype, int64_t n, fill_args args,
                            bool vector_normal)
{
    if (dtype == KN_INT64) { /* only bernoulli_ reaches here with int64 */
        int64_t *data = ptr;
        for (int64_t i = 0; i < n; i++) data[i] = uniform_double(g) < args.a;
        return;
    }
    float *data = ptr;
    switch (args.kind) {
    case FILL_UNIFORM: {
        float low = (float)args.a, high = (float)args.b;
        for (int64_t i = 0; i < n; i++) data[i] = uniform_float(g, low, high);
        break;
    }
    case FILL_NORMAL:
        if (vector_normal) {
            normal_fill(g, data, n, (float)args.a, (float)args.b);
        } else {
            for (int64_t i = 0; i < n; i++) data[i] = (float)(normal_double(g) * args.b + args.a);
        }
        break;
    case FILL_BERNOULLI:
        for (int64_t i = 0; i < n; i++) data[i] = uniform_double(g) < args.a ? 1.f : 0.f;
        break;
    }
}

/* t's geometry with dims ordered by decreasing stride, so a row-major walk of it visits
 * memory in order (TensorIterator's order for a lone output). Stable for equal strides. */
static void memory_order(const kn_tensor *t, int64_t *shape, int64_t *strides)
{
    int order[KN_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) order[d] = d;
    for (int i = 1; i < t->ndim; i++)
        for (int j = i; j > 0 && t->strides[order[j - 1]] < t->strides[order[j]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    for (int d = 0; d < t->ndim; d++) {
        shape[d] = t->shape[order[d]];
        strides[d] = t->strides[order[d]];
    }
}

static kn_status fill(const char *op, kn_tensor *t, fill_args args, kn_generator *gen)
{
    /* other devices draw on the cpu and copy over (below) */
    if (!kn__check_inputs(op, &t, 1)) return kn_last_status();
    if (args.kind != FILL_BERNOULLI && !kn__check_float(op, t)) return kn_last_status();
    kn_generator *g = resolve(gen);
    int64_t n = kn_numel(t);
    if (n == 0) return KN_OK;
    if (t->device.type != KN_DEVICE_CPU) {
        /* Same stream as on the CPU: draw there, then copy over. */
        kn_status status = KN_OK;
        kn_scope_begin();
        kn_tensor *host = kn_empty(t->shape, t->ndim, t->dtype);
        if (!host) status = kn_last_status();
        if (host) fill_contiguous(g, kn__data_ptr(host), t->dtype, n, args, n >= 16);
        if (host) status = kn_copy_(t, host);
        kn_scope_end();
        return status;
    }
    if (kn_is_contiguous(t)) {
        fill_contiguous(g, kn__data_ptr(t), t->dtype, n, args, n >= 16);
        return KN_OK;
    }
    size_t elem = kn_dtype_size(t->dtype);
    void *tmp = kn__alloc((size_t)n * elem);
    if (!tmp) return kn__error(KN_ERR_MEMORY, "%s: out of memory for %s", op, kn__shape(t));
    fill_contiguous(g, tmp, t->dtype, n, args, false);
    kn_cpu_operand out = {kn__data_ptr(t), {0}}, in = {tmp, {0}};
    int64_t shape[KN_MAX_DIMS];
    memory_order(t, shape, out.strides);
    kn__contiguous_strides(shape, t->ndim, in.strides);
    kn_cpu_copy(shape, t->ndim, elem, out, in);
    kn__free(tmp, (size_t)n * elem);
    return KN_OK;
}

kn_status kn_uniform_(kn_tensor *t, double low, double high, kn_generator *gen)
{
    if (t && !(isfinite(low) && isfinite(high) && low <= high))
        return kn__error(KN_ERR_VALUE,
                         "uniform_: expected a finite range with low <= high, "
                         "got [%g, %g)",
                         low, high);
    return fill("uniform_", t, (fill_args){FILL_UNIFORM, low, high}, gen);
}

kn_status kn_normal_(kn_tensor *t, double mean, double std, kn_generator *gen)
{
    if (t && !(isfinite(mean) && isfinite(std) && std >= 0))
        return kn__error(KN_ERR_VALUE,
                         "normal_: expected a finite mean and std >= 0, got "
                         "mean %g and std %g",
                         mean, std);
    return fill("normal_", t, (fill_args){FILL_NORMAL, mean, std}, gen);
}

kn_status kn_bernoulli_(kn_tensor *t, double p, kn_generator *gen)
{
    if (t && !(p >= 0 && p <= 1))
        return kn__error(KN_ERR_VALUE, "bernoulli_: expected 0 <= p <= 1, got p = %g", p);
    return fill("bernoulli_", t, (fill_args){FILL_BERNOULLI, p, 0}, gen);
}

static kn_tensor *random_tensor(const int64_t *shape, int ndim, fill_args args, kn_generator *gen,
                                const char *op)
{
    kn_tensor *t = kn__empty_raw(shape, ndim, KN_FLOAT32, kn_cpu());
    if (!t) return NULL;
    if (fill(op, t, args, gen) != KN_OK) {
        kn_release(t);
        return NULL;
    }
    return kn__result(t);
}

kn_tensor *kn_rand(const int64_t *shape, int ndim, kn_generator *gen)
{
    return random_tensor(shape, ndim, (fill_args){FILL_UNIFORM, 0, 1}, gen, "rand");
}

kn_tensor *kn_randn(const int64_t *shape, int ndim, kn_generator *gen)
{
    return random_tensor(shape, ndim, (fill_args){FILL_NORMAL, 0, 1}, gen, "randn");
}

kn_tensor *kn_randperm(int64_t n, kn_generator *gen)
{
    if (n < 0)
        return kn__error_null(KN_ERR_VALUE, "randperm: n must be >= 0, got %lld", (long long)n);
    kn_tensor *t = kn__empty_raw((int64_t[]){n}, 1, KN_INT64, kn_cpu());
    if (!t) return NULL;
    kn_generator *g = resolve(gen);
    int64_t *r = kn__data_ptr(t);
    for (int64_t i = 0; i < n; i++) r[i] = i;
    for (int64_t i = 0; i < n - 1; i++) {
        /* torch draws 32 bits; beyond 2^32 remaining elements that cannot reach them all. */
        uint64_t span = (uint64_t)(n - i);
        uint64_t draw = span > UINT32_MAX ? next_u64(g) : next_u32(g);
        int64_t z = (int64_t)(draw % span);
        int64_t tmp = r[i];
        r[i] = r[i + z];
        r[i + z] = tmp;
    }
    return kn__result(t);
}

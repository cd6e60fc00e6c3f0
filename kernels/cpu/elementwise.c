/*
 * elementwise.c — the strided elementwise iterator and the kernels that run on it.
 *
 * Every elementwise op (unary, binary with broadcasting, where, copy) goes through one
 * driver: dims are coalesced where the operands' strides allow, so a contiguous or
 * simply broadcast tensor of any rank becomes one or two flat loops; the innermost
 * loop has fast paths for unit and zero strides that the compiler vectorises; large
 * ranges are split over the thread pool.
 */
#include "kn_cpu.h"

#include <math.h>
#include <string.h>

#define MAX_OPERANDS 4

typedef void (*inner_fn)(void *context, char **ptrs, const int64_t *strides, int64_t count);

typedef struct iteration {
    int nops, ndim;
    int64_t shape[KN_CPU_MAX_DIMS];
    int64_t strides[MAX_OPERANDS][KN_CPU_MAX_DIMS]; /* bytes */
    char *base[MAX_OPERANDS];
    inner_fn inner;
    void *context;
} iteration;

/* Drops size-1 dims and merges neighbours whose strides line up for every operand. */
static void coalesce(iteration *it)
{
    int ndim = 0;
    for (int d = 0; d < it->ndim; d++) {
        if (it->shape[d] == 1) continue;
        it->shape[ndim] = it->shape[d];
        for (int k = 0; k < it->nops; k++) it->strides[k][ndim] = it->strides[k][d];
        ndim++;
    }
    it->ndim = ndim;
    if (ndim <= 1) return;
    int out = 0;
    for (int d = 1; d < ndim; d++) {
        bool mergeable = true;
        for (int k = 0; k < it->nops; k++)
            if (it->strides[k][out] != it->strides[k][d] * it->shape[d]) mergeable = false;
        if (mergeable) {
            it->shape[out] *= it->shape[d];
            for (int k = 0; k < it->nops; k++) it->strides[k][out] = it->strides[k][d];
        } else {
            out++;
            it->shape[out] = it->shape[d];
            for (int k = 0; k < it->nops; k++) it->strides[k][out] = it->strides[k][d];
        }
    }
    it->ndim = out + 1;
}

/* Runs the inner loop over linear elements [begin, end) of the iteration space. */
static void iterate_range(void *arg, int64_t begin, int64_t end)
{
    iteration *it = arg;
    if (it->ndim == 0) {
        char *ptrs[MAX_OPERANDS];
        int64_t zero[MAX_OPERANDS] = {0};
        for (int k = 0; k < it->nops; k++) ptrs[k] = it->base[k];
        it->inner(it->context, ptrs, zero, 1);
        return;
    }
    int last = it->ndim - 1;
    int64_t inner_size = it->shape[last];
    int64_t index[KN_CPU_MAX_DIMS];
    int64_t rest = begin;
    for (int d = last; d >= 0; d--) {
        index[d] = rest % it->shape[d];
        rest /= it->shape[d];
    }
    int64_t inner_strides[MAX_OPERANDS];
    for (int k = 0; k < it->nops; k++) inner_strides[k] = it->strides[k][last];
    int64_t position = begin;
    while (position < end) {
        char *ptrs[MAX_OPERANDS];
        for (int k = 0; k < it->nops; k++) {
            int64_t offset = 0;
            for (int d = 0; d <= last; d++) offset += index[d] * it->strides[k][d];
            ptrs[k] = it->base[k] + offset;
        }
        int64_t count = inner_size - index[last];
        if (count > end - position) count = end - position;
        it->inner(it->context, ptrs, inner_strides, count);
        position += count;
        index[last] += count;
        for (int d = last; d > 0 && index[d] >= it->shape[d]; d--) {
            index[d] = 0;
            index[d - 1]++;
        }
    }
}

static void run(iteration *it, const int64_t *shape, int ndim, int64_t grain)
{
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    if (numel == 0) return;
    coalesce(it);
    kn_cpu_parallel_for(numel, grain, iterate_range, it);
}

static void setup(iteration *it, const int64_t *shape, int ndim, int nops,
                  const kn_cpu_operand *operands, const size_t *elem_sizes)
{
    it->nops = nops;
    it->ndim = ndim;
    memcpy(it->shape, shape, sizeof(int64_t) * (size_t)ndim);
    for (int k = 0; k < nops; k++) {
        it->base[k] = operands[k].data;
        for (int d = 0; d < ndim; d++)
            it->strides[k][d] = operands[k].strides[d] * (int64_t)elem_sizes[k];
    }
}

/* ---- math helpers --------------------------------------------------------------------- */

static inline float fast_expf(float x)
{
    return kn_cpu_expf_inline(x);
}

float kn_cpu_expf(float x)
{
    return fast_expf(x);
}

static inline float sigmoidf(float x)
{
    return 1.f / (1.f + expf(-x));
}

/* torch's CPU formulas: x / (1 + exp(-x)), and its gradient from the same sigmoid */
static inline float silu(float x)
{
    return x / (1.f + expf(-x));
}
static inline float silu_grad(float x)
{
    float s = 1.f / (1.f + expf(-x));
    return s * (1.f + x * (1.f - s));
}

/* ---- binary --------------------------------------------------------------------------- */

typedef struct binary_context {
    kn_binary_op op;
    float alpha, beta;
} binary_context;

/* One loop per op with fast paths for the stride patterns that matter. */
#define BINARY_LOOP(EXPR)                                                                          \
    do {                                                                                           \
        if (so == 1 && sa == 1 && sb == 1) {                                                       \
            for (int64_t i = 0; i < n; i++) {                                                      \
                float x = a[i], y = b[i];                                                          \
                out[i] = (EXPR);                                                                   \
            }                                                                                      \
        } else if (so == 1 && sa == 1 && sb == 0) {                                                \
            float y = b[0];                                                                        \
            for (int64_t i = 0; i < n; i++) {                                                      \
                float x = a[i];                                                                    \
                out[i] = (EXPR);                                                                   \
            }                                                                                      \
        } else if (so == 1 && sa == 0 && sb == 1) {                                                \
            float x = a[0];                                                                        \
            for (int64_t i = 0; i < n; i++) {                                                      \
                float y = b[i];                                                                    \
                out[i] = (EXPR);                                                                   \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t i = 0; i < n; i++) {                                                      \
                float x = a[i * sa], y = b[i * sb];                                                \
                out[i * so] = (EXPR);                                                              \
            }                                                                                      \
        }                                                                                          \
    } while (0)

__attribute__((target_clones("avx512f", "avx2", "default"))) static void
binary_inner(void *arg, char **ptrs, const int64_t *strides, int64_t n)
{
    const binary_context *c = arg;
    float *out = (float *)ptrs[0];
    const float *a = (const float *)ptrs[1], *b = (const float *)ptrs[2];
    int64_t so = strides[0] / 4, sa = strides[1] / 4, sb = strides[2] / 4;
    const float alpha = c->alpha, beta = c->beta;
    switch (c->op) {
    case KN_BINARY_ADD:
        BINARY_LOOP(x + y);
        break;
    case KN_BINARY_SUB:
        BINARY_LOOP(x - y);
        break;
    case KN_BINARY_MUL:
        BINARY_LOOP(x * y);
        break;
    case KN_BINARY_DIV:
        BINARY_LOOP(x / y);
        break;
    case KN_BINARY_EQ:
        BINARY_LOOP(x == y ? 1.f : 0.f);
        break;
    case KN_BINARY_GT:
        BINARY_LOOP(x > y ? 1.f : 0.f);
        break;
    case KN_BINARY_LT:
        BINARY_LOOP(x < y ? 1.f : 0.f);
        break;
    case KN_BINARY_ADD_SCALED:
        BINARY_LOOP(x + alpha * y);
        break;
    case KN_BINARY_RELU_BACKWARD:
        BINARY_LOOP(y > 0.f ? x : 0.f);
        break;
    case KN_BINARY_LEAKY_RELU_BACKWARD:
        BINARY_LOOP(y > 0.f ? x : x * alpha);
        break;
    case KN_BINARY_TANH_BACKWARD:
        BINARY_LOOP(x * (1.f - y * y));
        break;
    case KN_BINARY_SIGMOID_BACKWARD:
        BINARY_LOOP(x * y * (1.f - y));
        break;
    case KN_BINARY_GELU_BACKWARD: /* gelu.c: vector code for every stride */
    case KN_BINARY_GELU_TANH_BACKWARD:
        kn_cpu_gelu_backward(out, so, a, sa, b, sb, n, c->op == KN_BINARY_GELU_TANH_BACKWARD);
        break;
    case KN_BINARY_SILU_BACKWARD:
        BINARY_LOOP(x * silu_grad(y));
        break;
    case KN_BINARY_POW_BACKWARD:
        BINARY_LOOP(x * alpha * powf(y, alpha - 1.f));
        break;
    case KN_BINARY_CLAMP_BACKWARD:
        BINARY_LOOP((y >= alpha && y <= beta) ? x : 0.f);
        break;
    /* ---- sequence layers (issue 12) ---- */
    case KN_BINARY_ELU_BACKWARD: /* torch's elu_backward from the input: x <= 0 is the
                                    exponential side, so the gradient at 0 is alpha */
        BINARY_LOOP(y > 0.f ? x : x * alpha * expf(y));
        break;
    case KN_BINARY_COUNT:
        break;
    }
    (void)beta;
}

void kn_cpu_binary(kn_binary_op op, const int64_t *shape, int ndim, kn_cpu_operand out,
                   kn_cpu_operand a, kn_cpu_operand b, float alpha, float beta)
{
    binary_context context = {op, alpha, beta};
    iteration it;
    kn_cpu_operand operands[3] = {out, a, b};
    size_t sizes[3] = {4, 4, 4};
    setup(&it, shape, ndim, 3, operands, sizes);
    it.inner = binary_inner;
    it.context = &context;
    run(&it, shape, ndim, KN_CPU_GRAIN_ELEMENTWISE);
}

/* ---- unary ---------------------------------------------------------------------------- */

typedef struct unary_context {
    kn_unary_op op;
    float alpha, beta;
} unary_context;

#define UNARY_LOOP(EXPR)                                                                           \
    do {                                                                                           \
        if (so == 1 && sa == 1) {                                                                  \
            for (int64_t i = 0; i < n; i++) {                                                      \
                float x = a[i];                                                                    \
                out[i] = (EXPR);                                                                   \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t i = 0; i < n; i++) {                                                      \
                float x = a[i * sa];                                                               \
                out[i * so] = (EXPR);                                                              \
            }                                                                                      \
        }                                                                                          \
    } while (0)

__attribute__((target_clones("avx512f", "avx2", "default"))) static void
unary_inner(void *arg, char **ptrs, const int64_t *strides, int64_t n)
{
    const unary_context *c = arg;
    float *out = (float *)ptrs[0];
    const float *a = (const float *)ptrs[1];
    int64_t so = strides[0] / 4, sa = strides[1] / 4;
    const float alpha = c->alpha, beta = c->beta;
    switch (c->op) {
    case KN_UNARY_COPY:
        UNARY_LOOP(x);
        break;
    case KN_UNARY_NEG:
        UNARY_LOOP(-x);
        break;
    case KN_UNARY_EXP:
        UNARY_LOOP(fast_expf(x));
        break;
    case KN_UNARY_LOG:
        UNARY_LOOP(logf(x));
        break;
    case KN_UNARY_SQRT:
        UNARY_LOOP(sqrtf(x));
        break;
    case KN_UNARY_ABS:
        UNARY_LOOP(fabsf(x));
        break;
    case KN_UNARY_SIGN:
        UNARY_LOOP(x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f));
        break;
    case KN_UNARY_RELU:
        UNARY_LOOP(x < 0.f ? 0.f : x);
        break; /* NaN stays NaN, as torch */
    case KN_UNARY_LEAKY_RELU:
        UNARY_LOOP(x < 0.f ? x * alpha : x);
        break;
    case KN_UNARY_TANH:
        UNARY_LOOP(tanhf(x));
        break;
    case KN_UNARY_SIGMOID:
        UNARY_LOOP(sigmoidf(x));
        break;
    case KN_UNARY_GELU: /* gelu.c: vector code for every stride */
    case KN_UNARY_GELU_TANH:
        kn_cpu_gelu(out, so, a, sa, n, c->op == KN_UNARY_GELU_TANH);
        break;
    case KN_UNARY_SILU:
        UNARY_LOOP(silu(x));
        break;
    case KN_UNARY_POW:
        if (alpha == 2.f)
            UNARY_LOOP(x * x);
        else if (alpha == 0.5f)
            UNARY_LOOP(sqrtf(x));
        else if (alpha == 1.f)
            UNARY_LOOP(x);
        else if (alpha == -1.f)
            UNARY_LOOP(1.f / x);
        else
            UNARY_LOOP(powf(x, alpha));
        break;
    case KN_UNARY_CLAMP:
        UNARY_LOOP(isnan(x) ? x : (x < alpha ? alpha : (x > beta ? beta : x)));
        break;
    case KN_UNARY_ADD_SCALAR:
        UNARY_LOOP(x + alpha);
        break;
    case KN_UNARY_MUL_SCALAR:
        UNARY_LOOP(x * alpha);
        break;
    case KN_UNARY_FILL:
        for (int64_t i = 0; i < n; i++) out[i * so] = alpha;
        break;
    /* ---- sequence layers (issue 12) ---- */
    case KN_UNARY_ELU: /* expm1 keeps the small negative values exact */
        UNARY_LOOP(x > 0.f ? x : alpha * expm1f(x));
        break;
    case KN_UNARY_COUNT:
        break;
    }
    (void)beta;
}

void kn_cpu_unary(kn_unary_op op, const int64_t *shape, int ndim, kn_cpu_operand out,
                  kn_cpu_operand a, float alpha, float beta)
{
    unary_context context = {op, alpha, beta};
    iteration it;
    if (op == KN_UNARY_FILL) a = out; /* no input: iterate the output twice */
    kn_cpu_operand operands[2] = {out, a};
    size_t sizes[2] = {4, 4};
    setup(&it, shape, ndim, 2, operands, sizes);
    it.inner = unary_inner;
    it.context = &context;
    /* transcendental ops do more work per element: split them sooner */
    int64_t grain = (op == KN_UNARY_COPY || op == KN_UNARY_NEG || op == KN_UNARY_RELU ||
                     op == KN_UNARY_ADD_SCALAR || op == KN_UNARY_MUL_SCALAR ||
                     op == KN_UNARY_FILL || op == KN_UNARY_ABS)
                        ? KN_CPU_GRAIN_ELEMENTWISE
                        : KN_CPU_GRAIN_ELEMENTWISE / 8;
    run(&it, shape, ndim, grain);
}

/* ---- where and copy ------------------------------------------------------------------- */

static void where_inner(void *arg, char **ptrs, const int64_t *strides, int64_t n)
{
    bool cond_is_int64 = *(const bool *)arg;
    for (int64_t i = 0; i < n; i++) {
        const char *c = ptrs[1] + i * strides[1];
        bool take_a = cond_is_int64 ? *(const int64_t *)c != 0 : *(const float *)c != 0.f;
        *(float *)(ptrs[0] + i * strides[0]) = take_a ? *(const float *)(ptrs[2] + i * strides[2])
                                                      : *(const float *)(ptrs[3] + i * strides[3]);
    }
}

void kn_cpu_where(const int64_t *shape, int ndim, kn_cpu_operand out, kn_cpu_operand cond,
                  bool cond_is_int64, kn_cpu_operand a, kn_cpu_operand b)
{
    iteration it;
    kn_cpu_operand operands[4] = {out, cond, a, b};
    size_t sizes[4] = {4, cond_is_int64 ? 8 : 4, 4, 4};
    setup(&it, shape, ndim, 4, operands, sizes);
    it.inner = where_inner;
    it.context = &cond_is_int64;
    run(&it, shape, ndim, KN_CPU_GRAIN_ELEMENTWISE);
}

static void copy_inner(void *arg, char **ptrs, const int64_t *strides, int64_t n)
{
    size_t size = *(const size_t *)arg;
    if (strides[0] == (int64_t)size && strides[1] == (int64_t)size) {
        memcpy(ptrs[0], ptrs[1], (size_t)n * size);
    } else if (size == 4) {
        for (int64_t i = 0; i < n; i++)
            *(float *)(ptrs[0] + i * strides[0]) = *(const float *)(ptrs[1] + i * strides[1]);
    } else {
        for (int64_t i = 0; i < n; i++)
            memcpy(ptrs[0] + i * strides[0], ptrs[1] + i * strides[1], size);
    }
}

void kn_cpu_copy(const int64_t *shape, int ndim, size_t elem_size, kn_cpu_operand out,
                 kn_cpu_operand in)
{
    iteration it;
    kn_cpu_operand operands[2] = {out, in};
    size_t sizes[2] = {elem_size, elem_size};
    setup(&it, shape, ndim, 2, operands, sizes);
    it.inner = copy_inner;
    it.context = &elem_size;
    run(&it, shape, ndim, KN_CPU_GRAIN_ELEMENTWISE);
}

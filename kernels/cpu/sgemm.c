/*
 * sgemm.c — the engine's own float GEMM: micro-kernels for AVX-512, AVX2 and plain C
 * (chosen once from the CPU), operand packing, and the blocked driver that cuts C into
 * tiles and runs them on the engine's scheduler (parallel.c).
 *
 * Why not OpenBLAS for these: its threads are a second pool fighting the engine's for
 * the same cores (they spin in sched_yield while the engine's workers wait), its results
 * change with how a product is split between threads (so a job's numbers would depend
 * on how many other jobs share the machine), and the kernel it picks is whatever
 * OPENBLAS_CORETYPE says, not what the CPU has. Here every element of C is one chain of
 * fused multiply-adds in k order (kn_cpu_ukernel.h): any tiling, any thread count, the
 * same bits. On an AVX-512 core the 8 x 32 kernel runs at the FMA units' peak (~64
 * FLOP a cycle) when its operands are in L1.
 *
 * Blocking (BLIS's loop order): k in blocks of KC; per tile of C, a KC x NR panel of B
 * stays in L1 while it meets every MR-row panel of an MC x KC block of A kept in L2.
 */
#include "kn_cpu.h"
#include "kn_cpu_linalg.h"
#include "kn_cpu_ukernel.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define KC 256        /* k steps per block */
#define MC_PANELS 16  /* MR-row panels per block of A */
#define NC_MAX 512    /* columns of B packed at once, per task */
#define DOT_MAX_M 256 /* A·Bᵀ with fewer rows runs as dot products (see below) */
#define PARALLEL_WORK                                                                              \
    (1 << 20) /* multiply-adds (~8 us on one core) under which a product                           \
               * stays on one thread: below, waking a helper costs more */

/* ---- micro-kernels ------------------------------------------------------------------ */

#define UK_INLINE static inline __attribute__((always_inline))

/* The body shared by every instruction set: VT is a GCC vector of VW floats, the tile is
 * MR x (NV * VW). acc += a * b contracts to one FMA where the target has it. */
/* The tile's store, shared by both kernels: acc into c (or added to it), whole vectors
 * for a full tile, through a local copy for a partial one. */
#define UKERNEL_STORE(VT, VW, MR, NV)                                                              \
    if (m == MR && n == NV * VW) {                                                                 \
        for (int i = 0; i < MR; i++)                                                               \
            for (int j = 0; j < NV; j++) {                                                         \
                float *p = c + i * ldc + j * VW;                                                   \
                VT v = acc[i][j];                                                                  \
                if (accumulate) {                                                                  \
                    VT old;                                                                        \
                    memcpy(&old, p, sizeof(VT));                                                   \
                    v += old;                                                                      \
                }                                                                                  \
                memcpy(p, &v, sizeof(VT));                                                         \
            }                                                                                      \
        return;                                                                                    \
    }                                                                                              \
    float tile[MR][NV * VW];                                                                       \
    memcpy(tile, acc, sizeof tile);                                                                \
    for (int i = 0; i < m; i++)                                                                    \
        for (int j = 0; j < n; j++)                                                                \
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i][j] : tile[i][j];

/* The body shared by every instruction set: VT is a GCC vector of VW floats, the tile is
 * MR x (NV * VW). acc += a * b contracts to one FMA where the target has it. */
#define UKERNEL_BODY(VT, VW, MR, NV)                                                               \
    VT acc[MR][NV];                                                                                \
    for (int i = 0; i < MR; i++)                                                                   \
        for (int j = 0; j < NV; j++) acc[i][j] = (VT){0};                                          \
    for (int64_t k = 0; k < kc; k++) {                                                             \
        const float *bk = b + boff[k], *ak = a + k * MR;                                           \
        VT bv[NV];                                                                                 \
        for (int j = 0; j < NV; j++) memcpy(&bv[j], bk + j * VW, sizeof(VT));                      \
        for (int i = 0; i < MR; i++)                                                               \
            for (int j = 0; j < NV; j++) acc[i][j] += ak[i] * bv[j];                               \
    }                                                                                              \
    UKERNEL_STORE(VT, VW, MR, NV)

/* The row-pointer form: A's rows are a + aoff[i], read along k in segments (a
 * convolution's shifted input rows), B a packed panel. */
#define UKERNEL_ROWS_BODY(VT, VW, MR, NV)                                                          \
    VT acc[MR][NV];                                                                                \
    const float *ar[MR];                                                                           \
    for (int i = 0; i < MR; i++) ar[i] = a + aoff[i < m ? i : 0];                                  \
    for (int i = 0; i < MR; i++)                                                                   \
        for (int j = 0; j < NV; j++) acc[i][j] = (VT){0};                                          \
    for (int64_t s = 0; s < segs; s++) {                                                           \
        for (int64_t k = 0; k < len; k++) {                                                        \
            const float *bk = b + k * (NV * VW);                                                   \
            VT bv[NV];                                                                             \
            for (int j = 0; j < NV; j++) memcpy(&bv[j], bk + j * VW, sizeof(VT));                  \
            for (int i = 0; i < MR; i++)                                                           \
                for (int j = 0; j < NV; j++) acc[i][j] += ar[i][k] * bv[j];                        \
        }                                                                                          \
        b += len * (NV * VW);                                                                      \
        for (int i = 0; i < MR; i++) ar[i] += stride;                                              \
    }                                                                                              \
    UKERNEL_STORE(VT, VW, MR, NV)

/* The pixel-row form (kn_cpu_pixels_fn): positions along x, channels along the vector. */
#define UKERNEL_PIXELS_BODY(VT, VW, PR, NV)                                                        \
    VT acc[PR][NV];                                                                                \
    for (int i = 0; i < PR; i++)                                                                   \
        for (int j = 0; j < NV; j++) acc[i][j] = (VT){0};                                          \
    for (int64_t k = 0; k < kc; k++) {                                                             \
        const float *xk = x + xoff[k], *wk = w + k * (NV * VW);                                    \
        VT wv[NV];                                                                                 \
        for (int j = 0; j < NV; j++) memcpy(&wv[j], wk + j * VW, sizeof(VT));                      \
        for (int i = 0; i < PR; i++)                                                               \
            for (int j = 0; j < NV; j++) acc[i][j] += xk[i] * wv[j];                               \
    }                                                                                              \
    for (int i = 0; i < m; i++)                                                                    \
        for (int j = 0; j < NV; j++) memcpy(c + i * ldc + j * VW, &acc[i][j], sizeof(VT));

#define UKERNEL_PIXELS_ARGS                                                                        \
    int64_t kc, const float *w, const float *x, const int32_t *xoff, float *c, int64_t ldc, int m

#define UKERNEL_ARGS                                                                               \
    int64_t kc, const float *a, const float *b, const int32_t *boff, float *c, int64_t ldc, int m, \
        int n, bool accumulate
#define UKERNEL_ROWS_ARGS                                                                          \
    int64_t segs, int64_t len, int64_t stride, const float *a, const int32_t *aoff,                \
        const float *b, float *c, int64_t ldc, int m, int n, bool accumulate

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));

/* one line per kernel */
/* clang-format off */
#if defined(__x86_64__) || defined(__i386__)
#define AVX512 __attribute__((target("avx512f,fma")))
#define AVX2 __attribute__((target("avx2,fma")))
AVX512 static void uk_avx512(UKERNEL_ARGS) { UKERNEL_BODY(v16f, 16, 8, 2) }
AVX512 static void uk_rows_avx512(UKERNEL_ROWS_ARGS) { UKERNEL_ROWS_BODY(v16f, 16, 8, 2) }
AVX512 static void uk_rows_narrow_avx512(UKERNEL_ROWS_ARGS) { UKERNEL_ROWS_BODY(v16f, 16, 12, 1) }
AVX512 static void uk_pixels32_avx512(UKERNEL_PIXELS_ARGS) { UKERNEL_PIXELS_BODY(v16f, 16, 14, 2) }
AVX2 static void uk_avx2(UKERNEL_ARGS) { UKERNEL_BODY(v8f, 8, 6, 2) }
AVX2 static void uk_rows_avx2(UKERNEL_ROWS_ARGS) { UKERNEL_ROWS_BODY(v8f, 8, 6, 2) }
#endif
static void uk_generic(UKERNEL_ARGS) { UKERNEL_BODY(v8f, 8, 4, 1) }
static void uk_rows_generic(UKERNEL_ROWS_ARGS) { UKERNEL_ROWS_BODY(v8f, 8, 4, 1) }
/* clang-format on */
#pragma GCC diagnostic pop

static const kn_cpu_ukernel KERNELS[] = {
#if defined(__x86_64__) || defined(__i386__)
    {8, 32, uk_avx512, uk_rows_avx512, 12, 16, uk_rows_narrow_avx512, 14, 32, uk_pixels32_avx512,
     "avx512"},
    {6, 16, uk_avx2, uk_rows_avx2, 6, 16, uk_rows_avx2, 0, 0, NULL, "avx2"},
#endif
    {4, 8, uk_generic, uk_rows_generic, 4, 8, uk_rows_generic, 0, 0, NULL, "generic"},
};

static const kn_cpu_ukernel *chosen;

static void choose_kernel(void)
{
    const char *force = getenv("KN_GEMM_ISA");
    int count = (int)(sizeof KERNELS / sizeof KERNELS[0]);
    for (int i = 0; i < count; i++) {
        const kn_cpu_ukernel *k = &KERNELS[i];
        if (force && *force && strcmp(force, k->name)) continue;
#if defined(__x86_64__) || defined(__i386__)
        if (!strcmp(k->name, "avx512") && !__builtin_cpu_supports("avx512f")) continue;
        if (!strcmp(k->name, "avx2") &&
            !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
            continue;
#endif
        chosen = k;
        return;
    }
    chosen = &KERNELS[count - 1]; /* an unknown KN_GEMM_ISA: the portable one */
}

const kn_cpu_ukernel *kn_cpu_ukernel_get(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, choose_kernel);
    return chosen;
}

/* ---- per-thread scratch ------------------------------------------------------------- */

typedef struct scratch {
    float *p[KN_CPU_SCRATCH_SLOTS];
    int64_t cap[KN_CPU_SCRATCH_SLOTS];
} scratch;

static _Thread_local scratch *my_scratch;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void free_scratch(void *arg)
{
    scratch *s = arg;
    for (int i = 0; i < KN_CPU_SCRATCH_SLOTS; i++) free(s->p[i]);
    free(s);
}

static void make_scratch_key(void)
{
    pthread_key_create(&scratch_key, free_scratch);
}

float *kn_cpu_scratch(int slot, int64_t floats)
{
    if (!my_scratch) {
        pthread_once(&scratch_once, make_scratch_key);
        my_scratch = calloc(1, sizeof *my_scratch);
        if (!my_scratch) return NULL;
        pthread_setspecific(scratch_key, my_scratch);
    }
    scratch *s = my_scratch;
    if (floats < 16) floats = 16;
    if (s->cap[slot] < floats) {
        free(s->p[slot]);
        size_t bytes = (sizeof(float) * (size_t)floats + 63) & ~(size_t)63;
        s->p[slot] = aligned_alloc(64, bytes);
        s->cap[slot] = s->p[slot] ? floats : 0;
    }
    return s->p[slot];
}

/* ---- packing ------------------------------------------------------------------------ */

void kn_cpu_pack_a(const kn_cpu_ukernel *uk, const float *a, int64_t rs, int64_t cs, int m,
                   int64_t kc, float alpha, float *dst)
{
    int mr = uk->mr;
    if (cs == 1) { /* rows contiguous in k: read along them */
        for (int i = 0; i < m; i++) {
            const float *row = a + i * rs;
            for (int64_t k = 0; k < kc; k++) dst[k * mr + i] = alpha * row[k];
        }
    } else {
        for (int64_t k = 0; k < kc; k++)
            for (int i = 0; i < m; i++) dst[k * mr + i] = alpha * a[i * rs + k * cs];
    }
    if (m < mr)
        for (int64_t k = 0; k < kc; k++)
            for (int i = m; i < mr; i++) dst[k * mr + i] = 0.f;
}

/* B(k, j) = b[k*rs + j*cs] for k < kc, j < n (<= NR) into dst[k*NR + j], zero-padded. */
static void pack_b(int nr, const float *b, int64_t rs, int64_t cs, int n, int64_t kc, float *dst)
{
    if (cs == 1 && n == nr) {
        for (int64_t k = 0; k < kc; k++)
            memcpy(dst + k * nr, b + k * rs, sizeof(float) * (size_t)nr);
        return;
    }
    if (cs == 1) {
        for (int64_t k = 0; k < kc; k++) {
            memcpy(dst + k * nr, b + k * rs, sizeof(float) * (size_t)n);
            memset(dst + k * nr + n, 0, sizeof(float) * (size_t)(nr - n));
        }
        return;
    }
    for (int j = 0; j < n; j++) { /* B transposed: read along the stored rows */
        const float *col = b + j * cs;
        for (int64_t k = 0; k < kc; k++) dst[k * nr + j] = col[k * rs];
    }
    for (int j = n; j < nr; j++)
        for (int64_t k = 0; k < kc; k++) dst[k * nr + j] = 0.f;
}

/* ---- A·Bᵀ with both operands contiguous along k: dot products ------------------------
 * Packing B for the outer-product kernel would transpose it (one scattered store per
 * element: as slow as the product itself when m is a batch of 64), so this layout
 * (linear's forward, x·Wᵀ) runs 4 x 4 dot products at a time along k instead: 16 vector
 * accumulators, each summed across its lanes in a fixed tree at the end. No packing, and
 * still one fixed order per element. From DOT_MAX_M rows on, the transpose is paid once
 * for many row panels and the lane sums (16 trees per 4 x 4 block, as many scalar adds
 * as the block's FMAs when k is 128) dominate instead, so those products pack: the GPT's
 * x·Wᵀ at [768, 128] x [128, 512] took 1.7 ms as dots, 0.47 ms packed (2 threads,
 * bench_layers gpt.ffn1). The choice depends on the shape only, never on the threads. */

#define DOT_BODY(VT, VW)                                                                           \
    VT acc[KN_CPU_DOT_MR][KN_CPU_DOT_NR];                                                          \
    for (int i = 0; i < KN_CPU_DOT_MR; i++)                                                        \
        for (int j = 0; j < KN_CPU_DOT_NR; j++) acc[i][j] = (VT){0};                               \
    int64_t k0 = 0;                                                                                \
    for (; k0 + VW <= k; k0 += VW) {                                                               \
        VT av[KN_CPU_DOT_MR], bv[KN_CPU_DOT_NR];                                                   \
        for (int i = 0; i < KN_CPU_DOT_MR; i++) memcpy(&av[i], ar[i] + k0, sizeof(VT));            \
        for (int j = 0; j < KN_CPU_DOT_NR; j++) memcpy(&bv[j], br[j] + k0, sizeof(VT));            \
        for (int i = 0; i < KN_CPU_DOT_MR; i++)                                                    \
            for (int j = 0; j < KN_CPU_DOT_NR; j++) acc[i][j] += av[i] * bv[j];                    \
    }                                                                                              \
    if (k0 < k) { /* the tail, zero-padded to a whole vector */                                    \
        VT av[KN_CPU_DOT_MR], bv[KN_CPU_DOT_NR];                                                   \
        size_t tail = sizeof(float) * (size_t)(k - k0);                                            \
        for (int i = 0; i < KN_CPU_DOT_MR; i++) {                                                  \
            av[i] = (VT){0};                                                                       \
            memcpy(&av[i], ar[i] + k0, tail);                                                      \
        }                                                                                          \
        for (int j = 0; j < KN_CPU_DOT_NR; j++) {                                                  \
            bv[j] = (VT){0};                                                                       \
            memcpy(&bv[j], br[j] + k0, tail);                                                      \
        }                                                                                          \
        for (int i = 0; i < KN_CPU_DOT_MR; i++)                                                    \
            for (int j = 0; j < KN_CPU_DOT_NR; j++) acc[i][j] += av[i] * bv[j];                    \
    }                                                                                              \
    for (int i = 0; i < m; i++)                                                                    \
        for (int j = 0; j < n; j++) {                                                              \
            float lanes[VW];                                                                       \
            memcpy(lanes, &acc[i][j], sizeof lanes);                                               \
            for (int w = VW / 2; w >= 1; w /= 2)                                                   \
                for (int l = 0; l < w; l++) lanes[l] += lanes[l + w];                              \
            float v = alpha * lanes[0];                                                            \
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + v : v;                                  \
        }

#define DOT_ARGS                                                                                   \
    int64_t k, const float *const *ar, const float *const *br, float alpha, float *c, int64_t ldc, \
        int m, int n, bool accumulate

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
/* clang-format off */
#if defined(__x86_64__) || defined(__i386__)
AVX512 static void dot_avx512(DOT_ARGS) { DOT_BODY(v16f, 16) }
AVX2 static void dot_avx2(DOT_ARGS) { DOT_BODY(v8f, 8) }
#endif
static void dot_generic(DOT_ARGS) { DOT_BODY(v8f, 8) }
/* clang-format on */
#pragma GCC diagnostic pop

kn_cpu_dot_fn kn_cpu_dot_kernel(void)
{
    const kn_cpu_ukernel *uk = kn_cpu_ukernel_get();
#if defined(__x86_64__) || defined(__i386__)
    if (!strcmp(uk->name, "avx512")) return dot_avx512;
    if (!strcmp(uk->name, "avx2")) return dot_avx2;
#endif
    return dot_generic;
}

/* ---- the driver --------------------------------------------------------------------- */

typedef struct gemm_plan {
    const kn_cpu_ukernel *uk;
    kn_cpu_dot_fn dot; /* set: the A·Bᵀ dot-product path */
    int64_t m, n, k;
    const float *a, *b;
    int64_t lda, ldb;
    int64_t a_rs, a_cs, b_rs, b_cs; /* A(i, k) = a[i*a_rs + k*a_cs], likewise B(k, j) */
    float alpha;
    bool accumulate; /* C += alpha A B (beta 1) rather than C = alpha A B */
    float *c;
    int64_t ldc;
    int64_t panels_m, panels_n, kblocks;
    float *apack, *bpack;              /* every panel packed once (NULL: each tile packs its own) */
    int64_t tile_pm, tile_pn, tiles_n; /* a task's block of C, in panels */
    int32_t boff[KC];                  /* k * NR: the steps of a packed panel */
} gemm_plan;

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* Where panel ip (of A) or jp (of B) of k block kb lives in the shared packs. */
static float *a_panel(const gemm_plan *p, int64_t kb, int64_t ip)
{
    return p->apack + (kb * p->panels_m + ip) * KC * p->uk->mr;
}

static float *b_panel(const gemm_plan *p, int64_t kb, int64_t jp)
{
    return p->bpack + (kb * p->panels_n + jp) * KC * p->uk->nr;
}

static void pack_a_panel(const gemm_plan *p, int64_t kb, int64_t ip, float *dst)
{
    int mr = p->uk->mr;
    int64_t i = ip * mr, k0 = kb * KC;
    kn_cpu_pack_a(p->uk, p->a + i * p->a_rs + k0 * p->a_cs, p->a_rs, p->a_cs,
                  (int)min64(p->m - i, mr), min64(p->k - k0, KC), p->alpha, dst);
}

static void pack_b_panel(const gemm_plan *p, int64_t kb, int64_t jp, float *dst)
{
    int nr = p->uk->nr;
    int64_t j = jp * nr, k0 = kb * KC;
    pack_b(nr, p->b + k0 * p->b_rs + j * p->b_cs, p->b_rs, p->b_cs, (int)min64(p->n - j, nr),
           min64(p->k - k0, KC), dst);
}

/* Packing as tasks: every (k block, panel of A or of B) once. */
static void pack_tasks(void *context, int64_t begin, int64_t end)
{
    const gemm_plan *p = context;
    int64_t per_block = p->panels_m + p->panels_n;
    for (int64_t t = begin; t < end; t++) {
        int64_t kb = t / per_block, r = t % per_block;
        if (r < p->panels_m)
            pack_a_panel(p, kb, r, a_panel(p, kb, r));
        else
            pack_b_panel(p, kb, r - p->panels_m, b_panel(p, kb, r - p->panels_m));
    }
}

/* One tile of C: panels [ip0, ip1) x [jp0, jp1), every k block in order. */
static void gemm_tile(const gemm_plan *p, int64_t ip0, int64_t ip1, int64_t jp0, int64_t jp1)
{
    const kn_cpu_ukernel *uk = p->uk;
    int mr = uk->mr, nr = uk->nr;
    bool shared = p->apack != NULL;
    float *abuf = shared ? NULL : kn_cpu_scratch(KN_CPU_SCRATCH_GEMM_A, KC * mr * MC_PANELS);
    float *bbuf = shared ? NULL : kn_cpu_scratch(KN_CPU_SCRATCH_GEMM_B, KC * nr);
    float apanel[KC * 8], bpanel[KC * 32]; /* out of memory: one panel at a time */
    for (int64_t kb = 0; kb < p->kblocks; kb++) {
        int64_t kc = min64(p->k - kb * KC, KC);
        bool acc = p->accumulate || kb > 0;
        for (int64_t ib = ip0; ib < ip1; ib += MC_PANELS) { /* a block of A, kept in L2 */
            int64_t ie = min64(ib + MC_PANELS, ip1);
            if (abuf)
                for (int64_t ip = ib; ip < ie; ip++)
                    pack_a_panel(p, kb, ip, abuf + (ip - ib) * KC * mr);
            for (int64_t jp = jp0; jp < jp1; jp++) { /* a panel of B, kept in L1 */
                const float *bp = shared ? b_panel(p, kb, jp) : bbuf ? bbuf : bpanel;
                if (!shared) pack_b_panel(p, kb, jp, (float *)bp);
                int64_t j = jp * nr;
                int nj = (int)min64(p->n - j, nr);
                for (int64_t ip = ib; ip < ie; ip++) {
                    const float *ap = shared ? a_panel(p, kb, ip)
                                      : abuf ? abuf + (ip - ib) * KC * mr
                                             : apanel;
                    if (!shared && !abuf) pack_a_panel(p, kb, ip, apanel);
                    int64_t i = ip * mr;
                    uk->fn(kc, ap, bp, p->boff, p->c + i * p->ldc + j, p->ldc,
                           (int)min64(p->m - i, mr), nj, acc);
                }
            }
        }
    }
}

/* One tile of C by dot products: rows [i0, i1) x columns [j0, j1) in 4 x 4 blocks (the
 * rows past a partial block repeat its last row and are not stored). */
static void dot_tile(const gemm_plan *p, int64_t i0, int64_t i1, int64_t j0, int64_t j1)
{
    for (int64_t i = i0; i < i1; i += KN_CPU_DOT_MR)
        for (int64_t j = j0; j < j1; j += KN_CPU_DOT_NR) {
            int m = (int)min64(i1 - i, KN_CPU_DOT_MR), n = (int)min64(j1 - j, KN_CPU_DOT_NR);
            const float *ar[KN_CPU_DOT_MR], *br[KN_CPU_DOT_NR];
            for (int r = 0; r < KN_CPU_DOT_MR; r++)
                ar[r] = p->a + (i + (r < m ? r : m - 1)) * p->lda;
            for (int r = 0; r < KN_CPU_DOT_NR; r++)
                br[r] = p->b + (j + (r < n ? r : n - 1)) * p->ldb;
            p->dot(p->k, ar, br, p->alpha, p->c + i * p->ldc + j, p->ldc, m, n, p->accumulate);
        }
}

static void gemm_tasks(void *context, int64_t begin, int64_t end)
{
    const gemm_plan *p = context;
    for (int64_t t = begin; t < end; t++) {
        int64_t ip0 = (t / p->tiles_n) * p->tile_pm, jp0 = (t % p->tiles_n) * p->tile_pn;
        int64_t ip1 = min64(ip0 + p->tile_pm, p->panels_m);
        int64_t jp1 = min64(jp0 + p->tile_pn, p->panels_n);
        if (p->dot)
            dot_tile(p, ip0 * KN_CPU_DOT_MR, min64(ip1 * KN_CPU_DOT_MR, p->m), jp0 * KN_CPU_DOT_NR,
                     min64(jp1 * KN_CPU_DOT_NR, p->n));
        else
            gemm_tile(p, ip0, ip1, jp0, jp1);
    }
}

/* Packs of at most this many floats are made once and shared by the tiles; above, each
 * tile packs its own (the repeats are small beside such a product). */
#define SHARED_PACK_FLOATS ((int64_t)4 << 20)

void kn_cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, bool accumulate,
                  float *c, int64_t ldc)
{
    const kn_cpu_ukernel *uk = kn_cpu_ukernel_get();
    gemm_plan plan = {.uk = uk,
                      .m = m,
                      .n = n,
                      .k = k,
                      .a = a,
                      .b = b,
                      .lda = lda,
                      .ldb = ldb,
                      .a_rs = trans_a ? 1 : lda,
                      .a_cs = trans_a ? lda : 1,
                      .b_rs = trans_b ? 1 : ldb,
                      .b_cs = trans_b ? ldb : 1,
                      .alpha = alpha,
                      .accumulate = accumulate,
                      .c = c,
                      .ldc = ldc};
    gemm_plan *p = &plan;
    int mr = uk->mr, nr = uk->nr;
    if (!trans_a && trans_b && k >= 16 && m < DOT_MAX_M) {
        p->dot = kn_cpu_dot_kernel();
        mr = KN_CPU_DOT_MR;
        nr = KN_CPU_DOT_NR;
    }
    p->panels_m = ceil_div(m, mr);
    p->panels_n = ceil_div(n, nr);
    p->kblocks = ceil_div(k, KC);
    /* tiles: at most NC_MAX columns and a few blocks of A; cut further (in whole panels)
     * until every thread of the share has two */
    int64_t tile_pm = min64(p->panels_m, 4 * MC_PANELS * (p->dot ? 2 : 1));
    int64_t tile_pn = min64(p->panels_n, NC_MAX / nr);
    int share = m * n * k >= PARALLEL_WORK ? kn_cpu_current_share() : 1;
    while (share > 1 &&
           ceil_div(p->panels_m, tile_pm) * ceil_div(p->panels_n, tile_pn) < 2 * share) {
        if (tile_pn >= 2 && (tile_pn * nr >= tile_pm * mr || tile_pm < 2))
            tile_pn = ceil_div(tile_pn, 2);
        else if (tile_pm >= 2)
            tile_pm = ceil_div(tile_pm, 2);
        else
            break;
    }
    p->tile_pm = tile_pm;
    p->tile_pn = tile_pn;
    p->tiles_n = ceil_div(p->panels_n, tile_pn);
    int64_t tasks = ceil_div(p->panels_m, tile_pm) * p->tiles_n;
    if (!p->dot) {
        for (int i = 0; i < KC; i++) p->boff[i] = i * nr;
        int64_t a_floats = p->kblocks * p->panels_m * KC * mr;
        int64_t b_floats = p->kblocks * p->panels_n * KC * nr;
        if (tasks > 1 && a_floats + b_floats <= SHARED_PACK_FLOATS) {
            p->apack = kn_cpu_scratch(KN_CPU_SCRATCH_GEMM_SHARED, a_floats + b_floats);
            if (p->apack) {
                p->bpack = p->apack + a_floats;
                int64_t items = p->kblocks * (p->panels_m + p->panels_n);
                kn_cpu_parallel_for(items, 4, pack_tasks, p);
            }
        }
    }
    if (tasks > 1)
        kn_cpu_parallel_for(tasks, 1, gemm_tasks, p);
    else
        gemm_tasks(p, 0, 1);
}

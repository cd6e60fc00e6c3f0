/*
 * test_sgemm.c — the engine's GEMM (kernels/cpu/sgemm.c) through kn_cpu_gemm: every
 * transpose combination, alpha and beta, edge sizes around the micro-kernels' tiles
 * and k blocks, against a double-precision reference; the same bits for 1 to 4 threads
 * (and with another thread computing at the same time); and each instruction set's
 * kernels (KN_GEMM_ISA; Criterion runs each test in its own process, so the choice made
 * at the first product is the test's).
 */
#include "kn_cpu.h"
#include "kn_cpu_linalg.h"
#include "kn_cpu_ukernel.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static float *random_floats(int64_t n, unsigned seed)
{
    float *v = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = (float)((seed >> 8) & 0xffff) / 32768.f - 1.f;
    }
    return v;
}

typedef struct product {
    bool ta, tb;
    int64_t m, n, k, lda, ldb, ldc;
    float alpha, beta;
    float *a, *b, *c0; /* c0: C before the product */
} product;

static product make(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                    unsigned seed)
{
    product p = {ta, tb, m, n, k, 0, 0, 0, alpha, beta, NULL, NULL, NULL};
    p.lda = (ta ? m : k) + 3; /* row strides wider than the rows */
    p.ldb = (tb ? k : n) + 1;
    p.ldc = n + 2;
    p.a = random_floats((ta ? k : m) * p.lda, seed);
    p.b = random_floats((tb ? n : k) * p.ldb, seed + 1);
    p.c0 = random_floats(m * p.ldc, seed + 2);
    return p;
}

static void release(product *p)
{
    free(p->a);
    free(p->b);
    free(p->c0);
}

static float *run(const product *p)
{
    float *c = malloc(sizeof(float) * (size_t)(p->m * p->ldc > 0 ? p->m * p->ldc : 1));
    memcpy(c, p->c0, sizeof(float) * (size_t)(p->m * p->ldc));
    kn_cpu_gemm(p->ta, p->tb, p->m, p->n, p->k, p->alpha, p->a, p->lda, p->b, p->ldb, p->beta, c,
                p->ldc);
    return c;
}

static void check_against_reference(const product *p)
{
    float *c = run(p);
    for (int64_t i = 0; i < p->m; i++)
        for (int64_t j = 0; j < p->n; j++) {
            double sum = 0, mag = 0;
            for (int64_t k = 0; k < p->k; k++) {
                double x = p->ta ? p->a[k * p->lda + i] : p->a[i * p->lda + k];
                double y = p->tb ? p->b[j * p->ldb + k] : p->b[k * p->ldb + j];
                sum += x * y;
                mag += fabs(x * y);
            }
            double want = p->alpha * sum + (p->beta != 0 ? p->beta * p->c0[i * p->ldc + j] : 0);
            double got = c[i * p->ldc + j];
            cr_assert(fabs(got - want) <= 1e-5 * (fabs(p->alpha) * mag + 1),
                      "%c%c %lldx%lldx%lld alpha %g beta %g: C[%lld, %lld] = %.8g, want %.8g",
                      p->ta ? 'T' : 'N', p->tb ? 'T' : 'N', (long long)p->m, (long long)p->n,
                      (long long)p->k, p->alpha, p->beta, (long long)i, (long long)j, got, want);
        }
    /* the padding between rows of C is never written */
    for (int64_t i = 0; i < p->m; i++)
        for (int64_t j = p->n; j < p->ldc; j++)
            cr_assert_eq(memcmp(&c[i * p->ldc + j], &p->c0[i * p->ldc + j], sizeof(float)), 0);
    free(c);
}

/* Sizes around the tiles (8 x 32, 6 x 16, 4 x 8, 4 x 4 dots), the 256-step k block and
 * the 256 rows from which A·Bᵀ packs instead of running dots (255 x 9 x 40 by dots,
 * 256 x 9 x 40 packed; 768 x 65 x 128: the GPT's lm_head). */
static const int64_t SIZES[][3] = {{1, 1, 1},     {3, 5, 7},     {8, 32, 16},   {9, 33, 17},
                                   {17, 65, 255}, {16, 31, 256}, {13, 47, 257}, {64, 128, 600},
                                   {130, 70, 40}, {5, 300, 3},   {300, 2, 33},  {64, 10, 128},
                                   {255, 9, 40},  {256, 9, 40},  {768, 65, 128}};

static void check_all_layouts(void)
{
    for (size_t s = 0; s < sizeof SIZES / sizeof *SIZES; s++)
        for (int t = 0; t < 4; t++) {
            product p = make(t & 1, t & 2, SIZES[s][0], SIZES[s][1], SIZES[s][2], 1.f, 0.f,
                             (unsigned)(s * 4 + t));
            check_against_reference(&p);
            release(&p);
        }
}

Test(sgemm, matches_reference_every_layout)
{
    kn_cpu_set_num_threads(2);
    check_all_layouts();
}

Test(sgemm, alpha_beta_and_empty_k)
{
    const float alphas[] = {1.f, -0.5f, 2.f}, betas[] = {0.f, 1.f, 0.25f};
    for (int t = 0; t < 4; t++)
        for (int ai = 0; ai < 3; ai++)
            for (int bi = 0; bi < 3; bi++) {
                product p = make(t & 1, t & 2, 37, 41, 300, alphas[ai], betas[bi],
                                 (unsigned)(t * 9 + ai * 3 + bi));
                check_against_reference(&p);
                release(&p);
            }
    /* k == 0: beta C; beta 0 ignores NaN in C */
    product p = make(false, false, 4, 5, 0, 1.f, 0.5f, 3);
    check_against_reference(&p);
    p.c0[0] = NAN;
    p.beta = 0.f;
    float *c = run(&p);
    cr_assert_eq(c[0], 0.f);
    free(c);
    release(&p);
    /* beta 0 ignores NaN in C with k > 0 too */
    p = make(false, true, 9, 9, 20, 1.f, 0.f, 5);
    for (int64_t i = 0; i < 9 * p.ldc; i++) p.c0[i] = NAN;
    check_against_reference(&p);
    release(&p);
}

static bool same_bits_for_threads(product *p)
{
    kn_cpu_set_num_threads(1);
    float *want = run(p);
    bool same = true;
    for (int t = 2; t <= 4; t++) {
        kn_cpu_set_num_threads(t);
        float *got = run(p);
        same &= memcmp(got, want, sizeof(float) * (size_t)(p->m * p->ldc)) == 0;
        free(got);
    }
    free(want);
    return same;
}

Test(sgemm, same_bits_for_any_thread_count)
{
    const int64_t shapes[][3] = {{64, 128, 1568}, {64, 1568, 128}, {128, 1568, 64},
                                 {64, 256, 784},  {256, 784, 64},  {200, 300, 513}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int t = 0; t < 4; t++) {
            product p = make(t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], 1.f,
                             t == 3 ? 1.f : 0.f, (unsigned)(100 + s * 4 + t));
            cr_assert(same_bits_for_threads(&p),
                      "%c%c %lldx%lldx%lld differs between 1 and 2-4 threads", t & 1 ? 'T' : 'N',
                      t & 2 ? 'T' : 'N', (long long)shapes[s][0], (long long)shapes[s][1],
                      (long long)shapes[s][2]);
            release(&p);
        }
}

static void *products_forever(void *arg)
{
    int *stop = arg;
    product p = make(false, false, 96, 96, 96, 1.f, 0.f, 77);
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) free(run(&p));
    release(&p);
    return NULL;
}

Test(sgemm, same_bits_while_another_thread_computes)
{
    product p = make(false, true, 64, 300, 700, 1.f, 0.f, 9);
    kn_cpu_set_num_threads(2);
    float *alone = run(&p);
    int stop = 0;
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, products_forever, &stop), 0);
    for (int i = 0; i < 20; i++) {
        float *shared = run(&p);
        cr_assert_eq(memcmp(shared, alone, sizeof(float) * (size_t)(p.m * p.ldc)), 0);
        free(shared);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(thread, NULL);
    free(alone);
    release(&p);
}

Test(sgemm, avx2_kernels)
{
    setenv("KN_GEMM_ISA", "avx2", 1);
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        cr_skip_test("this CPU has no AVX2 + FMA");
    cr_assert_str_eq(kn_cpu_ukernel_get()->name, "avx2");
    check_all_layouts();
}

Test(sgemm, generic_kernels)
{
    setenv("KN_GEMM_ISA", "generic", 1);
    cr_assert_str_eq(kn_cpu_ukernel_get()->name, "generic");
    check_all_layouts();
}

Test(sgemm, an_unknown_isa_falls_back_to_the_portable_kernels)
{
    setenv("KN_GEMM_ISA", "sse9", 1);
    cr_assert_str_eq(kn_cpu_ukernel_get()->name, "generic");
}

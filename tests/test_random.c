/*
 * test_random.c — generators: the same numbers as torch 1.13's CPU generator for
 * uniform/normal/bernoulli/randperm (expected values printed by /usr/bin/python3 torch),
 * state save/restore, statistics, and errors on bad arguments and bad state blobs.
 */
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT_CLOSE(t, want, rtol)                                                                \
    do {                                                                                           \
        char msg__[256];                                                                           \
        kn_tensor *t__ = (t);                                                                      \
        cr_assert_not_null(t__, "%s", kn_last_error());                                            \
        cr_assert(kn_test_close(t__, (want), (int64_t)(sizeof(want) / sizeof(float)), (rtol),      \
                                1e-6, msg__, sizeof msg__),                                        \
                  "%s", msg__);                                                                    \
    } while (0)

Test(random, rand_matches_torch_manual_seed)
{
    kn_scope_begin();
    /* torch.manual_seed(42); torch.rand(8) */
    static const float want[] = {0.8822692632675171f, 0.9150039553642273f, 0.38286375999450684f,
                                 0.9593056440353394f, 0.3904482126235962f, 0.600895345211029f,
                                 0.2565724849700928f, 0.7936413288116455f};
    kn_manual_seed(42);
    ASSERT_CLOSE(kn_rand(KN_SHAPE(8), NULL), want, 0);
    cr_assert_eq(kn_generator_initial_seed(NULL), 42);
    kn_scope_end();
}

Test(random, uniform_range_matches_torch)
{
    kn_scope_begin();
    /* torch.manual_seed(0); torch.empty(6).uniform_(-2, 3) */
    static const float want[] = {0.48128294944763184f, 1.841109037399292f,    -1.5576128959655762f,
                                 -1.3398475646972656f, -0.46288591623306274f, 1.170393466949463f};
    kn_generator *g = kn_generator_new(0);
    kn_tensor *t = kn_empty(KN_SHAPE(6), KN_FLOAT32);
    cr_assert_eq(kn_uniform_(t, -2, 3, g), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(t, want, 0);
    kn_generator_free(g);
    kn_scope_end();
}

Test(random, large_seed_and_default_generator)
{
    kn_scope_begin();
    /* torch.manual_seed(2**40 + 5); torch.rand(3): mt19937 takes the low 32 bits */
    static const float want[] = {0.8302518725395203f, 0.12611091136932373f, 0.9074696898460388f};
    kn_manual_seed((1ULL << 40) + 5);
    ASSERT_CLOSE(kn_rand(KN_SHAPE(3), NULL), want, 0);
    cr_assert_eq(kn_generator_initial_seed(kn_default_generator()), (1ULL << 40) + 5);
    /* torch.manual_seed(67280421310721); torch.rand(4): libtorch's default seed (Python's
     * torch reseeds its default generator at import, so compare against an explicit seed) */
    static const float fresh[] = {0.267295241355896f, 0.8725283145904541f, 0.3352888226509094f,
                                  0.4030158519744873f};
    kn_manual_seed(67280421310721ULL);
    ASSERT_CLOSE(kn_rand(KN_SHAPE(4), NULL), fresh, 0);
    cr_assert_eq(kn_generator_initial_seed(NULL), 67280421310721ULL);
    kn_scope_end();
}

Test(random, next_u32_is_mt19937)
{
    kn_generator *g = kn_generator_new(5489);
    cr_assert_eq(kn_generator_next_u32(g), 3499211612u); /* std::mt19937's first output */
    kn_generator_seed(g, 42);
    cr_assert_eq(kn_generator_next_u32(g), 1608637542u);
    kn_generator_free(g);
}

Test(random, non_contiguous_fill_in_memory_order)
{
    kn_scope_begin();
    /* torch.manual_seed(0); x = torch.empty(4, 3).t(); x.uniform_() */
    static const float want[] = {0.49625658988952637f, 0.13203048706054688f, 0.4900934100151062f,
                                 0.6323062777519226f,  0.7682217955589294f,  0.30742281675338745f,
                                 0.8964447379112244f,  0.3488934636116028f,  0.08847743272781372f,
                                 0.6340786814689636f,  0.455627977848053f,   0.40171730518341064f};
    kn_tensor *x = kn_transpose(kn_empty(KN_SHAPE(4, 3), KN_FLOAT32), 0, 1);
    kn_manual_seed(0);
    cr_assert_eq(kn_uniform_(x, 0, 1, NULL), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(x, want, 0);
    kn_scope_end();
}

Test(random, randn_small_matches_torch_scalar_path)
{
    kn_scope_begin();
    /* torch.manual_seed(0); torch.randn(3) */
    static const float want[] = {1.5409960746765137f, -0.293428897857666f, -2.1787893772125244f};
    kn_manual_seed(0);
    ASSERT_CLOSE(kn_randn(KN_SHAPE(3), NULL), want, 1e-6);
    /* torch.randn(1), torch.randn(1), torch.rand(1): the second uses the cached sample */
    kn_manual_seed(0);
    static const float a[] = {1.5409960746765137f}, b[] = {-0.293428897857666f},
                       c[] = {0.30742281675338745f};
    ASSERT_CLOSE(kn_randn(KN_SHAPE(1), NULL), a, 1e-6);
    ASSERT_CLOSE(kn_randn(KN_SHAPE(1), NULL), b, 1e-6);
    ASSERT_CLOSE(kn_rand(KN_SHAPE(1), NULL), c, 0);
    kn_scope_end();
}

Test(random, randn_large_matches_torch_vector_path)
{
    kn_scope_begin();
    /* torch.manual_seed(0); torch.randn(17): blocks of 16, last block recomputed */
    static const float want17[] = {-1.1258398294448853f, -1.6959311962127686f, 0.5666506290435791f,
                                   0.7935083508491516f,  0.5988394618034363f,  -1.5550950765609741f,
                                   -0.3413603901863098f, 1.85300612449646f,    0.46809640526771545f,
                                   -0.5854975581169128f, -0.1733967512845993f, 0.18347793817520142f,
                                   1.3893661499023438f,  1.586334228515625f,   0.946298360824585f,
                                   -0.843676745891571f,  0.9318265914916992f};
    kn_manual_seed(0);
    ASSERT_CLOSE(kn_randn(KN_SHAPE(17), NULL), want17, 1e-5);
    /* torch.manual_seed(7); torch.randn(2, 10) */
    static const float want20[] = {
        -0.8201345205307007f, 0.39563116431236267f, 0.8989084959030151f,   -1.3884038925170898f,
        0.19844505190849304f, 0.7820726633071899f,  1.0391076803207397f,   -0.7245107293128967f,
        -0.8489086031913757f, -1.2169294357299805f, -0.08102158457040787f, 1.3614851236343384f,
        -2.0614778995513916f, 0.6741006970405579f,  -1.3233457803726196f,  -1.3597689867019653f,
        -0.866701602935791f,  -0.5640066862106323f, -2.056462526321411f,   -0.35672253370285034f};
    kn_manual_seed(7);
    ASSERT_CLOSE(kn_randn(KN_SHAPE(2, 10), NULL), want20, 1e-5);
    kn_scope_end();
}

Test(random, bernoulli_and_randperm_match_torch)
{
    kn_scope_begin();
    /* torch.manual_seed(0); torch.empty(10).bernoulli_(0.3) */
    static const float want[] = {0, 0, 0, 0, 0, 0, 1, 0, 0, 1};
    kn_tensor *t = kn_empty(KN_SHAPE(10), KN_FLOAT32);
    kn_manual_seed(0);
    cr_assert_eq(kn_bernoulli_(t, 0.3, NULL), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(t, want, 0);
    /* torch.manual_seed(0); torch.empty(5, dtype=torch.int64).bernoulli_(0.5) */
    static const float want_i[] = {0, 0, 1, 0, 0};
    kn_tensor *ti = kn_empty(KN_SHAPE(5), KN_INT64);
    kn_manual_seed(0);
    cr_assert_eq(kn_bernoulli_(ti, 0.5, NULL), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(ti, want_i, 0);
    /* torch.manual_seed(0); torch.randperm(10) */
    static const float perm[] = {4, 1, 7, 5, 3, 9, 0, 8, 6, 2};
    kn_manual_seed(0);
    kn_tensor *p = kn_randperm(10, NULL);
    cr_assert_eq(p->dtype, KN_INT64);
    ASSERT_CLOSE(p, perm, 0);
    kn_scope_end();
}

Test(random, state_save_restore_reproduces_sequence)
{
    kn_scope_begin();
    kn_generator *g = kn_generator_new(123);
    kn_randn(KN_SHAPE(5), g); /* leaves a cached normal sample in the state */
    size_t size = kn_generator_state_size();
    cr_assert_gt(size, 2496);
    void *state = malloc(size);
    kn_generator_get_state(g, state);
    float first[40], second[40];
    cr_assert_eq(kn_copy_to_floats(kn_randn(KN_SHAPE(3), g), first), KN_OK);
    cr_assert_eq(kn_copy_to_floats(kn_rand(KN_SHAPE(37), g), first + 3), KN_OK);
    kn_generator *h = kn_generator_new(999);
    cr_assert_eq(kn_generator_set_state(h, state, size), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_generator_initial_seed(h), 123);
    cr_assert_eq(kn_copy_to_floats(kn_randn(KN_SHAPE(3), h), second), KN_OK);
    cr_assert_eq(kn_copy_to_floats(kn_rand(KN_SHAPE(37), h), second + 3), KN_OK);
    cr_assert_eq(memcmp(first, second, sizeof first), 0);
    free(state);
    kn_generator_free(g);
    kn_generator_free(h);
    kn_scope_end();
}

Test(random, bad_state_blob_is_an_error)
{
    kn_generator *g = kn_generator_new(1);
    size_t size = kn_generator_state_size();
    unsigned char *state = malloc(size);
    kn_generator_get_state(g, state);
    uint32_t before = kn_generator_next_u32(g);
    kn_generator_seed(g, 1);

    cr_assert_eq(kn_generator_set_state(g, state, size - 1), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "bytes"), "%s", kn_last_error());
    cr_assert_eq(kn_generator_set_state(g, NULL, size), KN_ERR_NULL);
    state[0] ^= 0xff;
    cr_assert_eq(kn_generator_set_state(g, state, size), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "magic"), "%s", kn_last_error());
    state[0] ^= 0xff;
    unsigned char saved[4];
    memcpy(saved, state + 16 + 4 * 624, 4);
    memset(state + 16 + 4 * 624, 0xff, 4); /* position out of range */
    cr_assert_eq(kn_generator_set_state(g, state, size), KN_ERR_VALUE);
    memcpy(state + 16 + 4 * 624, saved, 4);
    unsigned char *zero = malloc(size);
    memcpy(zero, state, size);
    memset(zero + 16, 0, 4 * 624);
    cr_assert_eq(kn_generator_set_state(g, zero, size), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "zero"), "%s", kn_last_error());
    /* the generator is untouched by the failures, and a good blob still works */
    cr_assert_eq(kn_generator_next_u32(g), before);
    cr_assert_eq(kn_generator_set_state(g, state, size), KN_OK);
    cr_assert_eq(kn_generator_next_u32(g), before);
    free(zero);
    free(state);
    kn_generator_free(g);
}

static void moments(kn_tensor *t, double *mean, double *var)
{
    int64_t n = kn_numel(t);
    float *data = malloc(sizeof(float) * (size_t)n);
    cr_assert_eq(kn_copy_to_floats(t, data), KN_OK);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += data[i], s2 += (double)data[i] * data[i];
    *mean = s / (double)n;
    *var = s2 / (double)n - *mean * *mean;
    free(data);
}

Test(random, normal_and_bernoulli_statistics)
{
    kn_scope_begin();
    kn_generator *g = kn_generator_new(2024);
    double mean, var;
    kn_tensor *t = kn_empty(KN_SHAPE(200000), KN_FLOAT32);
    cr_assert_eq(kn_normal_(t, 3.0, 2.0, g), KN_OK);
    moments(t, &mean, &var);
    cr_assert(fabs(mean - 3.0) < 0.03 && fabs(var - 4.0) < 0.08, "mean %g var %g", mean, var);
    /* the scalar path (non-contiguous) has the same distribution */
    kn_tensor *s = kn_slice(kn_empty(KN_SHAPE(100000), KN_FLOAT32), 0, 0, 100000, 2);
    cr_assert_eq(kn_normal_(s, -1.0, 0.5, g), KN_OK, "%s", kn_last_error());
    moments(s, &mean, &var);
    cr_assert(fabs(mean + 1.0) < 0.02 && fabs(var - 0.25) < 0.01, "mean %g var %g", mean, var);
    cr_assert_eq(kn_bernoulli_(t, 0.25, g), KN_OK);
    moments(t, &mean, &var);
    cr_assert(fabs(mean - 0.25) < 0.01, "mean %g", mean);
    cr_assert_eq(kn_uniform_(t, -1, 1, g), KN_OK);
    moments(t, &mean, &var);
    cr_assert(fabs(mean) < 0.01 && fabs(var - 1.0 / 3) < 0.01, "mean %g var %g", mean, var);
    kn_generator_free(g);
    kn_scope_end();
}

Test(random, randperm_is_a_permutation)
{
    kn_scope_begin();
    kn_generator *g = kn_generator_new(5);
    for (int64_t n = 0; n < 300; n += 37) {
        kn_tensor *p = kn_randperm(n, g);
        cr_assert_not_null(p, "%s", kn_last_error());
        cr_assert_eq(kn_numel(p), n);
        char *seen = calloc((size_t)n + 1, 1);
        const int64_t *d = kn_data_i64(p);
        for (int64_t i = 0; i < n; i++) {
            cr_assert(d[i] >= 0 && d[i] < n);
            cr_assert(!seen[d[i]], "%lld twice", (long long)d[i]);
            seen[d[i]] = 1;
        }
        free(seen);
    }
    kn_generator_free(g);
    kn_scope_end();
}

Test(random, bad_arguments_are_errors)
{
    kn_scope_begin();
    kn_tensor *t = kn_empty(KN_SHAPE(4), KN_FLOAT32);
    cr_assert_eq(kn_uniform_(t, 2, 1, NULL), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "uniform_"), "%s", kn_last_error());
    cr_assert_eq(kn_normal_(t, 0, -1, NULL), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "std"), "%s", kn_last_error());
    cr_assert_eq(kn_bernoulli_(t, 1.5, NULL), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "1.5"), "%s", kn_last_error());
    kn_tensor *i = kn_empty(KN_SHAPE(2, 3), KN_INT64);
    cr_assert_eq(kn_uniform_(i, 0, 1, NULL), KN_ERR_DTYPE);
    cr_assert(strstr(kn_last_error(), "[2, 3]"), "%s", kn_last_error());
    cr_assert_null(kn_randperm(-3, NULL));
    cr_assert(strstr(kn_last_error(), "-3"), "%s", kn_last_error());
    cr_assert_null(kn_rand(KN_SHAPE(2, -1), NULL));
    kn_clear_error();
    cr_assert_neq(kn_normal_(NULL, 0, 1, NULL), KN_OK);
    kn_scope_end();
}

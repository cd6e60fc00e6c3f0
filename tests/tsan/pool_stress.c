/*
 * pool_stress.c — the engine's scheduler (kernels/cpu/parallel.c) under ThreadSanitizer:
 * several callers at once on a few thread counts, regions of every size from one index
 * to thousands (so some run inline, some wake workers, some are claimed from others'
 * runs), nested regions inline, each index checked to run exactly once. Built with
 * -fsanitize=thread from parallel.c alone (CMakeLists.txt, test tsan_pool); a data race
 * makes TSan fail the run (halt_on_error), a lost or repeated index makes it exit 1.
 * parallel.c alone, not the engine: the engine's target_clones ifunc resolvers run during
 * relocation, before TSan's runtime is set up, and crash it (gdb: kn_cpu_gelu[resolver]).
 */
#include "kn_cpu.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

enum { MAX_N = 4096, REGIONS = 1500 };

typedef struct region_hits {
    int hits[MAX_N];
    int nested_sum;
} region_hits;

static void mark(void *context, int64_t begin, int64_t end)
{
    region_hits *r = context;
    for (int64_t i = begin; i < end; i++) __atomic_add_fetch(&r->hits[i], 1, __ATOMIC_RELAXED);
}

static void count_one(void *context, int64_t begin, int64_t end)
{
    region_hits *r = context;
    __atomic_add_fetch(&r->nested_sum, (int)(end - begin), __ATOMIC_RELAXED);
}

/* Marks its range and runs a nested region (inline) of 3 per index. */
static void mark_and_nest(void *context, int64_t begin, int64_t end)
{
    mark(context, begin, end);
    for (int64_t i = begin; i < end; i++) kn_cpu_parallel_for(3, 1, count_one, context);
}

static void *caller(void *arg)
{
    long id = (long)arg;
    region_hits *r = malloc(sizeof *r);
    if (!r) return (void *)1;
    for (int k = 0; k < REGIONS; k++) {
        int64_t n = 1 + (k * 37 + id * 11) % MAX_N, grain = 1 + k % 50;
        bool nest = k % 7 == 0;
        for (int64_t i = 0; i < n; i++) r->hits[i] = 0;
        r->nested_sum = 0;
        kn_cpu_parallel_for(n, grain, nest ? mark_and_nest : mark, r);
        for (int64_t i = 0; i < n; i++)
            if (r->hits[i] != 1) {
                fprintf(stderr,
                        "caller %ld, region %d (n %lld, grain %lld): index %lld ran %d times\n", id,
                        k, (long long)n, (long long)grain, (long long)i, r->hits[i]);
                free(r);
                return (void *)1;
            }
        if (nest && r->nested_sum != 3 * n) {
            fprintf(stderr, "caller %ld, region %d: nested regions ran %d of %lld indices\n", id, k,
                    r->nested_sum, (long long)(3 * n));
            free(r);
            return (void *)1;
        }
    }
    free(r);
    return NULL;
}

int main(void)
{
    static const int configs[][2] = {{2, 1}, {2, 2}, {3, 2}, {4, 3}}; /* threads, callers */
    for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++) {
        kn_cpu_set_num_threads(configs[c][0]);
        pthread_t threads[4];
        int callers = configs[c][1], failed = 0;
        for (long i = 0; i < callers; i++)
            if (pthread_create(&threads[i], NULL, caller, (void *)i)) return 1;
        for (int i = 0; i < callers; i++) {
            void *result;
            pthread_join(threads[i], &result);
            failed |= result != NULL;
        }
        if (failed) return 1;
        printf("%d threads, %d callers: every index once\n", configs[c][0], callers);
    }
    return 0;
}

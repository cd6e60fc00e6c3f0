/*
 * test_parallel.c — the engine's scheduler (kernels/cpu/parallel.c): every index of a
 * range runs exactly once for any length, grain and thread count; nested regions run
 * inline; several threads running regions at once all finish, each getting its share
 * of the cores (one thread each when callers fill the cores, the share cap obeyed), and
 * a caller left alone gets every core back once the others have been idle a while; a
 * small region wakes no sleeping worker, a large one wakes at most the workers its share
 * lacks, each thread takes its own run of a region's parts first (so regions of one size
 * give each thread the same memory), and ops give the same bits whether their regions ran
 * inline or shared.
 */
#include "kn_cpu.h"
#include "kn.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct marks {
    int *hits;
    int64_t n;
} marks;

static void mark_range(void *context, int64_t begin, int64_t end)
{
    marks *m = context;
    for (int64_t i = begin; i < end; i++) __atomic_add_fetch(&m->hits[i], 1, __ATOMIC_RELAXED);
}

static void check_once(int64_t n, int64_t grain)
{
    marks m = {calloc((size_t)(n > 0 ? n : 1), sizeof(int)), n};
    kn_cpu_parallel_for(n, grain, mark_range, &m);
    for (int64_t i = 0; i < n; i++)
        cr_assert_eq(m.hits[i], 1, "n=%lld grain=%lld: index %lld ran %d times", (long long)n,
                     (long long)grain, (long long)i, m.hits[i]);
    free(m.hits);
}

Test(parallel, every_index_once)
{
    const int64_t lengths[] = {0, 1, 2, 3, 7, 64, 1000, 4097, 100003};
    const int64_t grains[] = {1, 2, 3, 100, 1 << 20};
    for (int t = 1; t <= 5; t++) {
        kn_cpu_set_num_threads(t);
        for (size_t i = 0; i < sizeof lengths / sizeof *lengths; i++)
            for (size_t g = 0; g < sizeof grains / sizeof *grains; g++)
                check_once(lengths[i], grains[g]);
    }
}

/* ---- nesting -------------------------------------------------------------------------- */

static void inner_range(void *context, int64_t begin, int64_t end)
{
    int64_t *sum = context;
    for (int64_t i = begin; i < end; i++) __atomic_add_fetch(sum, i, __ATOMIC_RELAXED);
}

static void outer_range(void *context, int64_t begin, int64_t end)
{
    for (int64_t i = begin; i < end; i++) {
        int64_t sum = 0;
        kn_cpu_parallel_for(1000, 1, inner_range, &sum); /* runs inline */
        cr_assert_eq(sum, 999 * 1000 / 2);
        cr_assert_eq(kn_cpu_current_share(), 1, "a nested region gets one thread");
        __atomic_add_fetch((int64_t *)context, 1, __ATOMIC_RELAXED);
    }
}

Test(parallel, nested_regions_run_inline)
{
    kn_cpu_set_num_threads(3);
    int64_t done = 0;
    kn_cpu_parallel_for(64, 1, outer_range, &done);
    cr_assert_eq(done, 64);
}

/* ---- several callers ------------------------------------------------------------------ */

/* Records which threads ran parts of a region (by address of a thread-local). */
static _Thread_local char thread_tag;

typedef struct distinct {
    const void *seen[64];
    int count;
    pthread_mutex_t lock;
} distinct;

static void note_thread(void *context, int64_t begin, int64_t end)
{
    distinct *d = context;
    volatile double x = 0; /* a little work so helpers have time to join */
    for (int64_t i = begin; i < end; i++)
        for (int k = 0; k < 2000; k++) x += (double)k;
    pthread_mutex_lock(&d->lock);
    bool known = false;
    for (int i = 0; i < d->count; i++) known |= d->seen[i] == &thread_tag;
    if (!known && d->count < 64) d->seen[d->count++] = &thread_tag;
    pthread_mutex_unlock(&d->lock);
}

/* The most threads seen in one region over a few tries. */
static int threads_in_region(void)
{
    int most = 0;
    for (int tries = 0; tries < 20; tries++) {
        distinct d = {.lock = PTHREAD_MUTEX_INITIALIZER};
        kn_cpu_parallel_for(256, 1, note_thread, &d);
        if (d.count > most) most = d.count;
    }
    return most;
}

typedef struct busy_caller {
    int64_t n; /* each region's length, grain 100 (0: 20000) */
    int stop;
    int64_t regions;
    int64_t errors;
} busy_caller;

static void sum_range(void *context, int64_t begin, int64_t end)
{
    int64_t *sum = context;
    int64_t local = 0;
    for (int64_t i = begin; i < end; i++) local += i;
    __atomic_add_fetch(sum, local, __ATOMIC_RELAXED);
}

static void *keep_computing(void *arg)
{
    busy_caller *b = arg;
    while (!__atomic_load_n(&b->stop, __ATOMIC_ACQUIRE)) {
        int64_t n = b->n ? b->n : 20000, sum = 0;
        kn_cpu_parallel_for(n, 100, sum_range, &sum);
        if (sum != (n - 1) * n / 2) b->errors++;
        b->regions++;
    }
    return NULL;
}

/* Runs count callers at once for ms milliseconds: all of them run regions, all right. */
static void run_callers(busy_caller *b, int count, int ms)
{
    pthread_t threads[8];
    for (int i = 0; i < count; i++)
        cr_assert_eq(pthread_create(&threads[i], NULL, keep_computing, &b[i]), 0);
    usleep((useconds_t)ms * 1000);
    for (int i = 0; i < count; i++) __atomic_store_n(&b[i].stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < count; i++) {
        pthread_join(threads[i], NULL);
        cr_assert_eq(b[i].errors, 0, "caller %d: %lld wrong sums", i, (long long)b[i].errors);
        cr_assert_gt(b[i].regions, 10, "caller %d ran only %lld regions", i,
                     (long long)b[i].regions);
    }
}

Test(parallel, callers_at_once_all_finish_right)
{
    kn_cpu_set_num_threads(3);
    busy_caller b[4] = {{0}};
    run_callers(b, 4, 300);
}

Test(parallel, cores_are_divided_between_callers)
{
    kn_cpu_set_num_threads(2);
    cr_assert_eq(threads_in_region(), 2, "one caller alone uses both threads");
    /* another thread computing: one thread each */
    busy_caller other = {0};
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, keep_computing, &other), 0);
    usleep(20 * 1000);
    cr_assert_eq(kn_cpu_current_share(), 1);
    cr_assert_eq(threads_in_region(), 1, "with two callers on two threads, each runs alone");
    __atomic_store_n(&other.stop, 1, __ATOMIC_RELEASE);
    pthread_join(thread, NULL);
    /* the other caller has gone: both threads again once it has been idle 50 ms */
    usleep(120 * 1000);
    cr_assert_eq(kn_cpu_current_share(), 2);
    cr_assert_eq(threads_in_region(), 2);
}

Test(parallel, more_cores_are_split_evenly)
{
    kn_cpu_set_num_threads(4);
    busy_caller other = {0};
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, keep_computing, &other), 0);
    usleep(20 * 1000);
    cr_assert_eq(kn_cpu_current_share(), 2, "4 threads, 2 callers: 2 each");
    __atomic_store_n(&other.stop, 1, __ATOMIC_RELEASE);
    pthread_join(thread, NULL);
}

Test(parallel, the_share_caps_a_caller)
{
    kn_cpu_set_num_threads(3);
    cr_assert_eq(kn_get_thread_share(), 0);
    kn_set_thread_share(1);
    cr_assert_eq(kn_get_thread_share(), 1);
    cr_assert_eq(kn_cpu_current_share(), 1);
    cr_assert_eq(threads_in_region(), 1);
    kn_set_thread_share(2);
    cr_assert_eq(kn_cpu_current_share(), 2);
    cr_assert_leq(threads_in_region(), 2);
    kn_set_thread_share(0);
    cr_assert_eq(kn_cpu_current_share(), 3);
    kn_set_thread_share(-4); /* <= 0: no cap */
    cr_assert_eq(kn_get_thread_share(), 0);
}

/* Threads that come and go (each one region, then exit) give their slots back: many
 * more of them than the scheduler has slots all still run their regions. */
static void *one_region(void *arg)
{
    int64_t *sum = arg;
    kn_cpu_parallel_for(10000, 10, sum_range, sum);
    return NULL;
}

Test(parallel, exited_callers_give_their_slot_back)
{
    kn_cpu_set_num_threads(2);
    for (int i = 0; i < 200; i++) {
        int64_t sum = 0;
        pthread_t thread;
        cr_assert_eq(pthread_create(&thread, NULL, one_region, &sum), 0);
        pthread_join(thread, NULL);
        cr_assert_eq(sum, (int64_t)9999 * 10000 / 2);
    }
}

/* ---- waking workers ------------------------------------------------------------------- */

static uint64_t wakes_now(void)
{
    kn_cpu_pool_counts counts;
    kn_cpu_pool_counts_get(&counts);
    return counts.wakes;
}

/* A region of a few grains wakes nobody: once the workers have gone to sleep (they spin
 * well under a millisecond), it runs on the caller alone, every index once. */
Test(parallel, a_small_region_wakes_no_worker)
{
    kn_cpu_set_num_threads(2);
    int alone = 0;
    for (int tries = 0; tries < 20; tries++) {
        usleep(20 * 1000); /* the worker spins out and sleeps */
        uint64_t before = wakes_now();
        distinct d = {.lock = PTHREAD_MUTEX_INITIALIZER};
        kn_cpu_parallel_for(3, 1, note_thread, &d); /* 3 grains */
        cr_assert_eq(wakes_now(), before, "a 3-grain region woke a sleeping worker");
        alone += d.count == 1;
        check_once(3 * 1000, 1000);
        cr_assert_eq(wakes_now(), before, "a 3-grain region woke a sleeping worker");
    }
    cr_assert_gt(alone, 0, "a small region never ran on the caller alone");
}

/* A large region after the workers slept wakes them (at most share - 1 per region: each
 * worker once), and they help. */
Test(parallel, a_large_region_wakes_its_share)
{
    kn_cpu_set_num_threads(3);
    int helped = 0;
    for (int tries = 0; tries < 10; tries++) {
        usleep(20 * 1000);
        uint64_t before = wakes_now();
        distinct d = {.lock = PTHREAD_MUTEX_INITIALIZER};
        kn_cpu_parallel_for(2560, 1, note_thread, &d); /* some milliseconds */
        uint64_t woken = wakes_now() - before;
        cr_assert_leq(woken, 2, "one region of a 3-thread share woke %llu workers",
                      (unsigned long long)woken);
        helped += d.count > 1;
    }
    cr_assert_gt(helped, 0, "large regions after a sleep never got a helper");
}

/* ---- homes: each thread takes its own run of parts first -------------------------- */

enum { HOME_PARTS = 12 };

typedef struct part_owners {
    pthread_t thread[HOME_PARTS]; /* who ran each part */
} part_owners;

static void note_owner(void *context, int64_t begin, int64_t end)
{
    part_owners *o = context;
    volatile double x = 1;
    for (int i = 0; i < 20000; i++) x = x * 1.0000001 + 1e-9; /* ~20 us: helpers join */
    for (int64_t i = begin; i < end; i++) o->thread[i] = pthread_self();
}

/* True when the parts of run [first, first + run) that `who` ran (is_caller: the caller's,
 * else the other threads') come before every part it did not run. */
static bool ran_a_prefix(const part_owners *o, int first, int run, bool is_caller)
{
    bool gap = false;
    for (int j = first; j < first + run; j++) {
        bool mine = pthread_equal(o->thread[j], pthread_self()) == is_caller;
        if (mine && gap) return false;
        gap = gap || !mine;
    }
    return true;
}

/* The parts are dealt out in one contiguous run per thread of the share (the caller's
 * first), and a thread takes its own run from the front, others' from the back. So the
 * caller's parts in its own run are a prefix of it, and with 2 threads the worker's parts
 * in its run too. One shared ticket, as before, dealt the parts in arrival order (caller
 * 0, worker 1, caller 2, ...) and failed this. Two regions of the same size then give
 * each thread the same memory. */
Test(parallel, each_thread_takes_its_own_run_first)
{
    for (int threads = 2; threads <= 3; threads++) {
        kn_cpu_set_num_threads(threads);
        int run = 4, helpers_own_first = 0; /* parts per thread, as parallel.c cuts them */
        for (int region = 0; region < 100; region++) {
            part_owners o;
            memset(&o, 0, sizeof o);
            /* grain 1 and 4 parts per thread: each part is one index */
            kn_cpu_parallel_for(run * threads, 1, note_owner, &o);
            cr_assert(ran_a_prefix(&o, 0, run, true),
                      "%d threads, region %d: the caller's parts of its own run are not a prefix",
                      threads, region);
            if (threads == 2)
                cr_assert(ran_a_prefix(&o, run, run, false),
                          "2 threads, region %d: the worker's parts of its run are not a prefix",
                          region);
            for (int r = 1; r < threads; r++)
                helpers_own_first += !pthread_equal(o.thread[r * run], pthread_self());
        }
        cr_assert_gt(helpers_own_first, 0, "%d threads: no worker ever ran its own run", threads);
    }
}

/* Two callers at once, one of small regions (3 grains: they wake nobody) and one of
 * large ones, the one worker between them: both finish with the right sums. */
Test(parallel, two_callers_of_small_and_large_regions_finish_right)
{
    kn_cpu_set_num_threads(2);
    busy_caller b[2] = {{.n = 300}, {0}};
    run_callers(b, 2, 200);
}

/* ---- same bits ------------------------------------------------------------------------ */

/* Ops whose regions are small (run inline) or large (shared) give the same bits at 1, 2
 * and 3 threads: exp elementwise, softmax over rows and a full sum, at sizes from below
 * one grain to many. */
Test(parallel, ops_give_the_same_bits_for_any_thread_count)
{
    const int64_t rows[] = {1, 40, 300, 1100, 5000};
    for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
        int64_t shape[2] = {rows[r], 100};
        float *first[3] = {NULL, NULL, NULL};
        int64_t count = rows[r] * 100 + rows[r] * 100 + 1;
        for (int t = 1; t <= 3; t++) {
            kn_cpu_set_num_threads(t);
            kn_scope_begin();
            kn_generator *gen = kn_generator_new(7);
            kn_tensor *x = kn_randn(shape, 2, gen);
            kn_tensor *outs[3] = {kn_exp(x), kn_softmax(x, 1), kn_sum_all(x)};
            float *all = malloc((size_t)count * sizeof(float)), *at = all;
            for (int o = 0; o < 3; o++) {
                int64_t n = o == 2 ? 1 : rows[r] * 100;
                memcpy(at, kn_data_f32(outs[o]), (size_t)n * sizeof(float));
                at += n;
            }
            kn_generator_free(gen);
            kn_scope_end();
            if (t == 1) {
                first[0] = all;
                continue;
            }
            cr_assert_eq(memcmp(all, first[0], (size_t)count * sizeof(float)), 0,
                         "rows=%lld: %d threads differ from 1", (long long)rows[r], t);
            free(all);
        }
        free(first[0]);
    }
}

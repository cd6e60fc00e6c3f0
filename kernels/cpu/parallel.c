/*
 * parallel.c — the engine's small thread pool: kn_cpu_parallel_for splits a range over
 * the calling thread and (threads - 1) workers. Workers spin briefly after each job
 * before sleeping on a condition variable, so back-to-back ops of a training step pay
 * a wake-up only when the pool has been idle. One parallel region runs at a time;
 * a call made while the pool is busy (another thread, or nested) runs inline.
 */
#include "kn_cpu.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 64
#define SPIN_ITERATIONS 4000 /* ~100 us of pause on this machine: covers the gap between ops */

typedef struct pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_mutex_t region; /* held by the thread running a parallel region */
    int threads;            /* including the caller */
    int started;            /* workers running */
    /* the current job */
    kn_cpu_range_fn fn;
    void *context;
    int64_t n, chunk;
    int parts;
    unsigned generation; /* bumped per job; workers wait for a change */
    int remaining;       /* parts not finished yet */
} pool;

static pool the_pool = {PTHREAD_MUTEX_INITIALIZER,
                        PTHREAD_COND_INITIALIZER,
                        PTHREAD_MUTEX_INITIALIZER,
                        0,
                        0,
                        NULL,
                        NULL,
                        0,
                        0,
                        0,
                        0,
                        0};
static _Thread_local int worker_index = -1; /* >= 1 on workers */

static void run_part(pool *p, int part)
{
    int64_t begin = (int64_t)part * p->chunk;
    int64_t end = begin + p->chunk < p->n ? begin + p->chunk : p->n;
    if (begin < end) p->fn(p->context, begin, end);
}

static void *worker_main(void *arg)
{
    pool *p = &the_pool;
    worker_index = (int)(intptr_t)arg;
    unsigned seen = 0;
    for (;;) {
        unsigned generation;
        int spins = 0;
        while ((generation = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE)) == seen &&
               spins < SPIN_ITERATIONS) {
            __builtin_ia32_pause();
            spins++;
        }
        if (generation == seen) {
            pthread_mutex_lock(&p->lock);
            while ((generation = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE)) == seen)
                pthread_cond_wait(&p->wake, &p->lock);
            pthread_mutex_unlock(&p->lock);
        }
        seen = generation;
        if (worker_index < p->parts) run_part(p, worker_index);
        __atomic_sub_fetch(&p->remaining, 1, __ATOMIC_ACQ_REL);
    }
    return NULL;
}

static int default_threads(void)
{
    const char *env = getenv("KN_NUM_THREADS");
    if (env && atoi(env) > 0) return atoi(env);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 0 ? (int)cores : 1;
}

int kn_cpu_get_num_threads(void)
{
    if (the_pool.threads == 0) the_pool.threads = default_threads();
    return the_pool.threads;
}

void kn_cpu_set_num_threads(int n)
{
    pthread_mutex_lock(&the_pool.region);
    int wanted = n > 0 ? n : default_threads();
    the_pool.threads = wanted > MAX_THREADS ? MAX_THREADS : wanted;
    pthread_mutex_unlock(&the_pool.region);
}

/* Starts workers up to threads - 1; called with the region held. */
static void ensure_workers(pool *p)
{
    while (p->started < p->threads - 1) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed =
            pthread_create(&thread, &attr, worker_main, (void *)(intptr_t)(p->started + 1));
        pthread_attr_destroy(&attr);
        if (failed) break;
        p->started++;
    }
}

void kn_cpu_parallel_for(int64_t n, int64_t grain, kn_cpu_range_fn fn, void *context)
{
    if (n <= 0) return;
    pool *p = &the_pool;
    int threads = kn_cpu_get_num_threads();
    if (grain < 1) grain = 1;
    if (threads <= 1 || n < 2 * grain || worker_index >= 0 || pthread_mutex_trylock(&p->region)) {
        fn(context, 0, n);
        return;
    }
    ensure_workers(p);
    int parts = p->started + 1;
    if ((int64_t)parts > n / grain) parts = (int)(n / grain);
    if (parts < 2) {
        pthread_mutex_unlock(&p->region);
        fn(context, 0, n);
        return;
    }
    p->fn = fn;
    p->context = context;
    p->n = n;
    p->chunk = (n + parts - 1) / parts;
    p->parts = parts;
    __atomic_store_n(&p->remaining, p->started, __ATOMIC_RELEASE);
    pthread_mutex_lock(&p->lock);
    __atomic_add_fetch(&p->generation, 1, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    worker_index = 0;
    run_part(p, 0);
    worker_index = -1;
    while (__atomic_load_n(&p->remaining, __ATOMIC_ACQUIRE) > 0) __builtin_ia32_pause();
    pthread_mutex_unlock(&p->region);
}

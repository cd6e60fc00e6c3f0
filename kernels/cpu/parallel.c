/*
 * parallel.c — the engine's one scheduler for every core. A process has one pool of
 * worker threads (threads - 1 of them); any thread that calls kn_cpu_parallel_for is a
 * "caller" and runs a region with the help of as many workers as its share allows.
 *
 * Shares: a caller that ran a region within the last ACTIVE_WINDOW_NS is active (it is
 * using a core: its own). The cores are divided between the active callers: with T
 * threads and A active callers each region gets T / A threads (the first T % A callers
 * by slot one more), its own included, and never more than the caller's cap
 * (kn_cpu_set_thread_share; kilnd's --threads-per-worker). So two training jobs on a
 * 2-core machine run one thread each instead of taking turns with both, and one job alone
 * gets both cores back within ACTIVE_WINDOW_NS of the other one finishing.
 *
 * A region is cut into parts (a few per thread, never smaller than the grain) that the
 * caller and its helpers claim one at a time: a helper that wakes late finds less to do
 * instead of holding the caller up, and a caller whose helpers are all busy elsewhere
 * just runs every part itself. Kernels must not depend on how a range is cut (results
 * are the same bits for any thread count); reductions cut their work into tasks of their
 * own.
 *
 * Homes: the parts are dealt out in contiguous runs, one run per thread of the share
 * (the caller's first, then one per worker by its index), and each thread takes its own
 * run from the front before it takes what is left of another's from the back. So when
 * two regions of the same size follow each other (relu then its backward, the steps of
 * batch norm, Adam's passes) each thread works on the same range of memory both times
 * and finds it in its own cache. Claiming from one shared ticket dealt the parts out in
 * the order the threads happened to arrive, and a part whose data the other core had just
 * written ran 2.5x slower (a relu forward and backward over 3 MB at 2 threads: 120 us
 * with the same halves, 310 us with them swapped, on the 2-core dev VM).
 *
 * Waiting: idle workers spin briefly (the gap between two ops of a training step) and
 * then sleep on a futex of their own, and only spin while some core is free of callers:
 * when every core has an active caller, no worker takes cycles from them. A region wakes
 * at most the sleeping workers its share still lacks after the spinning ones, and each
 * sleeping worker once: the caller that flips its word from asleep to awake makes the
 * one FUTEX_WAKE, so regions that follow while it is on its way make no system call.
 * A small region (fewer than WAKE_GRAINS grains) wakes nobody: waking a worker costs
 * the caller a system call and the worker arrives later than the caller finishes such a
 * region alone (tens of microseconds on a VM, where a wake-up is an interrupt), so it
 * runs on the caller and on workers already awake. A caller whose parts are all claimed
 * spins for the last ones briefly, then sleeps until the last helper wakes it. A call
 * made inside a region (nested, or from a worker) runs inline.
 */
#define _GNU_SOURCE
#include "kn_cpu.h"

#include <linux/futex.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define MAX_CALLERS 64
#define PARTS_PER_THREAD 4          /* parts a helper may take over from a late or preempted one */
#define SPIN_ITERATIONS 4000        /* ~75 us of pause: covers the gap between two ops */
#define WAKE_GRAINS 4               /* grains of work below which a region wakes nobody */
#define ACTIVE_WINDOW_NS 50000000LL /* 50 ms without a region: the caller is idle */
#define MAX_PARTS 0xfff0            /* parts fit a home's 16-bit bounds */
#define CLOSED 1                    /* a ticket's state while its region is set up */

/* One run of a region's parts: its generation (32 bits), the next part its owner takes
 * from the front (16) and the end, lowered by others taking from the back (16), in one
 * word so that a claim is one compare-and-swap. A line each: owners claim at once. */
typedef struct home {
    uint64_t word;
    char pad[64 - sizeof(uint64_t)];
} home;

#define HOME(gen, next, end) (((uint64_t)(gen) << 32) | ((uint64_t)(next) << 16) | (uint64_t)(end))
#define HOME_GEN(w) ((uint32_t)((w) >> 32))
#define HOME_NEXT(w) ((int)(((w) >> 16) & 0xffff))
#define HOME_END(w) ((int)((w)&0xffff))

/* One caller's slot: its current region and whether it is active. The ticket packs the
 * region's generation (32 bits), whether it is CLOSED (16) and the helpers that joined
 * (16), so joining and telling regions apart is one compare-and-swap. */
typedef struct caller {
    uint64_t ticket;
    kn_cpu_range_fn fn;
    void *context;
    int64_t n, chunk;
    int parts, max_helpers, homes;
    int helper_ran;    /* a helper ran a part of the current region */
    uint32_t done;     /* parts finished (futex word the caller may sleep on) */
    uint32_t sleeping; /* the caller sleeps on done */
    int used;          /* the slot belongs to a live thread */
    int in_region;
    int64_t last_ns;            /* end of the caller's last region */
    kn_cpu_pool_counts counts;  /* written by this caller only, read by kn_cpu_pool_counts_get */
    home homes_of[MAX_THREADS]; /* the current region's runs, [0, homes) */
} caller;

/* A worker's futex word, one cache line each: 1 from when it goes to sleep until a
 * caller (or the worker itself, finding work) flips it back to 0. */
typedef struct worker {
    uint32_t asleep;
    char pad[64 - sizeof(uint32_t)];
} worker;

typedef struct pool {
    pthread_mutex_t start_lock; /* starting workers */
    int threads;                /* T: the cores the engine may use, callers included */
    int started;                /* workers running */
    uint32_t seq;               /* bumped when a region is published (spinning workers watch it) */
    int spinning;               /* workers awake without a region: they join the next one */
    int active;                 /* active callers at the last region start */
    caller callers[MAX_CALLERS];
    worker workers[MAX_THREADS];
} pool;

static pool the_pool = {.start_lock = PTHREAD_MUTEX_INITIALIZER};
static _Thread_local int inside = 0;       /* running a part, or a worker: nest inline */
static _Thread_local caller *my_slot;      /* this thread's caller slot, once it has one */
static _Thread_local int thread_share = 0; /* this thread's cap; 0: a fair share */
static pthread_key_t slot_key;
static pthread_once_t slot_key_once = PTHREAD_ONCE_INIT;

#define TICKET(gen, state, joined) (((uint64_t)(gen) << 32) | ((uint64_t)(state) << 16) | (joined))
#define TICKET_GEN(t) ((uint32_t)((t) >> 32))
#define TICKET_STATE(t) ((int)(((t) >> 16) & 0xffff))
#define TICKET_JOINED(t) ((int)((t)&0xffff))

static void futex_wait(uint32_t *word, uint32_t expected)
{
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(uint32_t *word, int count)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Adds to one of a caller's counts (only its caller writes it; kn_cpu_pool_counts_get reads). */
static void count(uint64_t *counter, int add)
{
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + (uint64_t)add,
                     __ATOMIC_RELAXED);
}

/* Runs a part and counts it done. Every field is read before the count: once the last
 * part is counted the caller may set up its next region in them. */
static void run_part(caller *c, int part)
{
    int64_t begin = (int64_t)part * c->chunk;
    int64_t end = begin + c->chunk < c->n ? begin + c->chunk : c->n;
    uint32_t parts = (uint32_t)__atomic_load_n(&c->parts, __ATOMIC_RELAXED);
    if (begin < end) c->fn(c->context, begin, end);
    if (__atomic_add_fetch(&c->done, 1, __ATOMIC_SEQ_CST) == parts &&
        __atomic_load_n(&c->sleeping, __ATOMIC_SEQ_CST))
        futex_wake(&c->done, 1);
}

/* Claims a part of generation gen for the thread whose run is home `own`: the next of its
 * own run, else the last of another's. -1 when there is nothing (left) to take. A home
 * word of another generation means the region is over (a new one is set up only after
 * every part of the last was done), so nothing stale is ever claimed. */
static int claim(caller *c, uint32_t gen, int own)
{
    int homes = __atomic_load_n(&c->homes, __ATOMIC_RELAXED);
    for (int k = 0; k < homes; k++) {
        home *h = &c->homes_of[(own + k) % homes];
        uint64_t w = __atomic_load_n(&h->word, __ATOMIC_ACQUIRE);
        for (;;) {
            if (HOME_GEN(w) != gen) return -1;
            int next = HOME_NEXT(w), end = HOME_END(w);
            if (next >= end) break;
            uint64_t want = k == 0 ? HOME(gen, next + 1, end) : HOME(gen, next, end - 1);
            if (__atomic_compare_exchange_n(&h->word, &w, want, true, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                return k == 0 ? next : end - 1;
        }
    }
    return -1;
}

/* Joins caller c's current region as one of its helpers, within max_helpers; its
 * generation, or 0 when it takes no helper (closed, full or over). */
static uint32_t join(caller *c)
{
    uint64_t t = __atomic_load_n(&c->ticket, __ATOMIC_ACQUIRE);
    for (;;) {
        uint32_t gen = TICKET_GEN(t);
        /* max_helpers of generation gen: written before its ticket was stored */
        if (TICKET_STATE(t) == CLOSED ||
            TICKET_JOINED(t) >= __atomic_load_n(&c->max_helpers, __ATOMIC_RELAXED))
            return 0;
        if (__atomic_compare_exchange_n(&c->ticket, &t, TICKET(gen, 0, TICKET_JOINED(t) + 1), true,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return gen;
    }
}

/* Worker `index`'s work on caller c's region: join, then take parts (its own run first)
 * until none are left. */
static bool help(caller *c, int index)
{
    uint32_t gen = join(c);
    if (!gen) return false;
    int homes = __atomic_load_n(&c->homes, __ATOMIC_RELAXED);
    int own = homes > 1 ? 1 + index % (homes - 1) : 0;
    int part = claim(c, gen, own);
    if (part < 0) return false;
    __atomic_store_n(&c->helper_ran, 1, __ATOMIC_RELAXED);
    do run_part(c, part);
    while ((part = claim(c, gen, own)) >= 0);
    return true;
}

/* Whether caller c's region generation gen has a part nobody took yet. */
static bool has_parts(caller *c, uint32_t gen)
{
    int homes = __atomic_load_n(&c->homes, __ATOMIC_RELAXED);
    for (int i = 0; i < homes; i++) {
        uint64_t w = __atomic_load_n(&c->homes_of[i].word, __ATOMIC_ACQUIRE);
        if (HOME_GEN(w) != gen) return false;
        if (HOME_NEXT(w) < HOME_END(w)) return true;
    }
    return false;
}

/* Some region that still takes a helper, or NULL. */
static caller *find_region(pool *p)
{
    for (int i = 0; i < MAX_CALLERS; i++) {
        caller *c = &p->callers[i];
        if (!__atomic_load_n(&c->in_region, __ATOMIC_ACQUIRE)) continue;
        uint64_t t = __atomic_load_n(&c->ticket, __ATOMIC_ACQUIRE);
        if (TICKET_STATE(t) != CLOSED &&
            TICKET_JOINED(t) < __atomic_load_n(&c->max_helpers, __ATOMIC_RELAXED) &&
            has_parts(c, TICKET_GEN(t)))
            return c;
    }
    return NULL;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pool *p = &the_pool;
    inside = 1;
    for (;;) {
        uint32_t seen = __atomic_load_n(&p->seq, __ATOMIC_SEQ_CST);
        caller *c = find_region(p);
        if (c) {
            help(c, (int)(w - p->workers));
            continue;
        }
        /* spin only while some core has no active caller: otherwise the spin takes
         * cycles from a caller that is computing */
        __atomic_add_fetch(&p->spinning, 1, __ATOMIC_SEQ_CST);
        int spins = 0;
        while (__atomic_load_n(&p->seq, __ATOMIC_ACQUIRE) == seen && spins < SPIN_ITERATIONS &&
               __atomic_load_n(&p->active, __ATOMIC_RELAXED) <
                   __atomic_load_n(&p->threads, __ATOMIC_RELAXED)) {
            __builtin_ia32_pause();
            spins++;
        }
        __atomic_sub_fetch(&p->spinning, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&p->seq, __ATOMIC_ACQUIRE) != seen) continue;
        /* asleep first, then look again: a caller bumps seq before it reads the words,
         * so either it sees this one asleep or this worker sees its seq */
        __atomic_store_n(&w->asleep, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&p->seq, __ATOMIC_SEQ_CST) != seen) {
            /* take it back, unless a caller already did (then its wake is spurious) */
            uint32_t one = 1;
            __atomic_compare_exchange_n(&w->asleep, &one, 0, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_RELAXED);
            continue;
        }
        while (__atomic_load_n(&w->asleep, __ATOMIC_SEQ_CST)) futex_wait(&w->asleep, 1);
    }
    return NULL;
}

/* Wakes up to wanted sleeping workers, each with one FUTEX_WAKE; returns how many. */
static int wake_workers(pool *p, int wanted)
{
    int started = __atomic_load_n(&p->started, __ATOMIC_ACQUIRE), woken = 0;
    for (int i = 0; i < started && woken < wanted; i++) {
        worker *w = &p->workers[i];
        uint32_t one = 1;
        if (__atomic_load_n(&w->asleep, __ATOMIC_SEQ_CST) &&
            __atomic_compare_exchange_n(&w->asleep, &one, 0, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_RELAXED)) {
            futex_wake(&w->asleep, 1);
            woken++;
        }
    }
    return woken;
}

static int default_threads(void)
{
    const char *env = getenv("KN_NUM_THREADS");
    if (env && atoi(env) > 0) return atoi(env) > MAX_THREADS ? MAX_THREADS : atoi(env);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) return 1;
    return cores > MAX_THREADS ? MAX_THREADS : (int)cores;
}

int kn_cpu_get_num_threads(void)
{
    int t = __atomic_load_n(&the_pool.threads, __ATOMIC_ACQUIRE);
    if (t == 0) {
        int zero = 0;
        t = default_threads();
        if (!__atomic_compare_exchange_n(&the_pool.threads, &zero, t, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            t = zero;
    }
    return t;
}

void kn_cpu_set_num_threads(int n)
{
    int wanted = n > 0 ? n : default_threads();
    __atomic_store_n(&the_pool.threads, wanted > MAX_THREADS ? MAX_THREADS : wanted,
                     __ATOMIC_RELEASE);
}

void kn_cpu_set_thread_share(int n)
{
    thread_share = n > 0 ? n : 0;
}

int kn_cpu_get_thread_share(void)
{
    return thread_share;
}

/* Starts workers up to threads - 1. */
static void ensure_workers(pool *p, int threads)
{
    if (__atomic_load_n(&p->started, __ATOMIC_ACQUIRE) >= threads - 1) return;
    pthread_mutex_lock(&p->start_lock);
    while (p->started < threads - 1) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attr, worker_main, &p->workers[p->started]);
        pthread_attr_destroy(&attr);
        if (failed) break;
        __atomic_add_fetch(&p->started, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&p->start_lock);
}

static void release_slot(void *slot)
{
    caller *c = slot;
    __atomic_store_n(&c->last_ns, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&c->used, 0, __ATOMIC_RELEASE);
}

static void make_slot_key(void)
{
    pthread_key_create(&slot_key, release_slot);
}

/* This thread's caller slot, taken on its first region and given back when it exits;
 * NULL when all MAX_CALLERS slots are taken (then its regions run inline). */
static caller *slot(pool *p)
{
    if (my_slot) return my_slot;
    pthread_once(&slot_key_once, make_slot_key);
    for (int i = 0; i < MAX_CALLERS; i++) {
        int free_slot = 0;
        if (__atomic_compare_exchange_n(&p->callers[i].used, &free_slot, 1, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            my_slot = &p->callers[i];
            pthread_setspecific(slot_key, my_slot);
            return my_slot;
        }
    }
    return NULL;
}

/* Threads this caller's region may use now, its own included: its part of the cores
 * among the active callers, capped by its share setting. Counts the active callers. */
static int fair_share(pool *p, caller *self, int threads, int64_t now)
{
    int active = 0, rank = 0;
    for (int i = 0; i < MAX_CALLERS; i++) {
        caller *c = &p->callers[i];
        if (c == self) {
            rank = active++;
            continue;
        }
        if (!__atomic_load_n(&c->used, __ATOMIC_ACQUIRE)) continue;
        if (__atomic_load_n(&c->in_region, __ATOMIC_ACQUIRE) ||
            now - __atomic_load_n(&c->last_ns, __ATOMIC_RELAXED) < ACTIVE_WINDOW_NS)
            active++;
    }
    __atomic_store_n(&p->active, active, __ATOMIC_RELAXED);
    int share = threads / active + (rank < threads % active ? 1 : 0);
    if (thread_share > 0 && share > thread_share) share = thread_share;
    return share > 0 ? share : 1;
}

void kn_cpu_pool_counts_get(kn_cpu_pool_counts *out)
{
    *out = (kn_cpu_pool_counts){0};
    for (int i = 0; i < MAX_CALLERS; i++) {
        const kn_cpu_pool_counts *c = &the_pool.callers[i].counts;
        out->regions += __atomic_load_n(&c->regions, __ATOMIC_RELAXED);
        out->helped += __atomic_load_n(&c->helped, __ATOMIC_RELAXED);
        out->wakes += __atomic_load_n(&c->wakes, __ATOMIC_RELAXED);
    }
}

int kn_cpu_current_share(void)
{
    pool *p = &the_pool;
    int threads = kn_cpu_get_num_threads();
    if (inside || threads <= 1) return 1;
    caller *self = slot(p);
    if (!self) return 1;
    return fair_share(p, self, threads, now_ns());
}

/* Waits until every part of the caller's region is done. */
static void wait_done(caller *c)
{
    uint32_t parts = (uint32_t)c->parts;
    for (int spins = 0; spins < SPIN_ITERATIONS; spins++) {
        if (__atomic_load_n(&c->done, __ATOMIC_ACQUIRE) == parts) return;
        __builtin_ia32_pause();
    }
    __atomic_store_n(&c->sleeping, 1, __ATOMIC_SEQ_CST);
    uint32_t done;
    while ((done = __atomic_load_n(&c->done, __ATOMIC_SEQ_CST)) != parts)
        futex_wait(&c->done, done);
}

void kn_cpu_parallel_for(int64_t n, int64_t grain, kn_cpu_range_fn fn, void *context)
{
    if (n <= 0) return;
    pool *p = &the_pool;
    int threads = kn_cpu_get_num_threads();
    if (grain < 1) grain = 1;
    caller *c = inside ? NULL : slot(p);
    if (!c) { /* nested, or no slot left */
        fn(context, 0, n);
        return;
    }
    int64_t now = now_ns();
    int share = threads > 1 ? fair_share(p, c, threads, now) : 1;
    int64_t parts = n / grain;
    if (parts > (int64_t)share * PARTS_PER_THREAD) parts = (int64_t)share * PARTS_PER_THREAD;
    if (parts > MAX_PARTS) parts = MAX_PARTS;
    inside = 1;
    if (share < 2 || parts < 2) {
        __atomic_store_n(&c->in_region, 1, __ATOMIC_RELEASE);
        fn(context, 0, n);
    } else {
        ensure_workers(p, threads);
        /* close the ticket while the fields are rewritten, so that no helper joins a
         * region half set up; one that joined the last region cannot claim a part of this
         * one either, as the home words carry the new generation */
        uint32_t gen = TICKET_GEN(__atomic_load_n(&c->ticket, __ATOMIC_RELAXED)) + 1;
        if (gen == 0) gen = 1; /* 0 is join's "no region" */
        __atomic_store_n(&c->ticket, TICKET(gen, CLOSED, 0), __ATOMIC_SEQ_CST);
        c->fn = fn;
        c->context = context;
        c->n = n;
        c->chunk = (n + parts - 1) / parts;
        parts = (n + c->chunk - 1) / c->chunk;
        int homes = parts < share ? (int)parts : share;
        __atomic_store_n(&c->parts, (int)parts, __ATOMIC_RELAXED);
        __atomic_store_n(&c->max_helpers, share - 1, __ATOMIC_RELAXED);
        __atomic_store_n(&c->homes, homes, __ATOMIC_RELAXED);
        __atomic_store_n(&c->helper_ran, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&c->done, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&c->sleeping, 0, __ATOMIC_RELAXED);
        for (int h = 0; h < homes; h++)
            __atomic_store_n(&c->homes_of[h].word,
                             HOME(gen, h * parts / homes, (h + 1) * parts / homes),
                             __ATOMIC_RELEASE);
        __atomic_store_n(&c->ticket, TICKET(gen, 0, 0), __ATOMIC_RELEASE);
        __atomic_store_n(&c->in_region, 1, __ATOMIC_RELEASE);
        __atomic_add_fetch(&p->seq, 1, __ATOMIC_SEQ_CST);
        /* spinning workers come by themselves; only a region worth the wait wakes more */
        int wanted = share - 1 - __atomic_load_n(&p->spinning, __ATOMIC_SEQ_CST);
        if (wanted > 0 && n / grain >= WAKE_GRAINS)
            count(&c->counts.wakes, wake_workers(p, wanted));
        int part;
        while ((part = claim(c, gen, 0)) >= 0) run_part(c, part);
        wait_done(c);
        if (__atomic_load_n(&c->helper_ran, __ATOMIC_RELAXED)) count(&c->counts.helped, 1);
    }
    count(&c->counts.regions, 1);
    inside = 0;
    __atomic_store_n(&c->last_ns, now_ns(), __ATOMIC_RELAXED);
    __atomic_store_n(&c->in_region, 0, __ATOMIC_RELEASE);
}

/*
 * worker.c — kilnd's job workers: config.workers threads, each owning one device from
 * config.devices (cycled; "auto" means cuda:0 when it is available, else the CPU). A
 * worker sleeps on a condition variable, woken by ksrv_workers_notify and every few
 * seconds, claims the best queued job meant for its device from the store
 * (kstore_job_claim: BEGIN IMMEDIATE, so two workers never take the same job) and runs
 * it (job_runner.c). Which jobs each worker is meant for is decided once, when the pool
 * starts, from the devices of the whole pool (worker.h says the rule).
 *
 * Stopping sets a flag the trainer's step callback sees: the running job checkpoints
 * and returns, staying "running" in the store so the next start requeues and resumes
 * it. The engine's default generator is shared by all workers (see job_runner.c); its
 * cores are divided between the jobs computing at the time, each worker's capped by
 * --threads-per-worker (kn_set_thread_share, per thread).
 */
#define _GNU_SOURCE /* pthread_timedjoin_np */
#include "job_runner.h"
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IDLE_WAKE_SECONDS 2
#define MAX_WORKERS 64

typedef struct worker {
    struct ksrv_workers *pool;
    int index;
    kn_device device;
    char device_name[32];
    const char *accepts[KSRV_ACCEPTS_MAX]; /* literals or the pool's device names */
    int n_accepts;
    pthread_t thread;
    bool started;
} worker;

struct ksrv_workers {
    ksrv_server *server;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    uint64_t generation; /* bumped by notify: a worker that saw it change claims again */
    volatile int stopping;
    int busy; /* atomic */
    int n;
    worker *items;
    const char *pool_accepts[MAX_WORKERS + 3]; /* what some worker is meant for */
    int n_pool_accepts;
};

static bool is_gpu(const char *device)
{
    return strncmp(device, "cuda", 4) == 0;
}

static bool pool_has(const char *const *devices, int n, bool gpu)
{
    for (int i = 0; i < n; i++)
        if (is_gpu(devices[i]) == gpu) return true;
    return false;
}

int ksrv_worker_accepts(const char *const *devices, int n, int index,
                        const char *out[KSRV_ACCEPTS_MAX])
{
    if (!devices || index < 0 || index >= n) return 0;
    const char *own = devices[index];
    int k = 0;
    if (is_gpu(own)) {
        out[k++] = own;
        out[k++] = "cuda";
        out[k++] = "auto";
        /* with no CPU worker, CPU jobs would otherwise wait forever */
        if (!pool_has(devices, n, false)) out[k++] = "cpu";
    } else {
        out[k++] = "cpu";
        /* where a GPU worker exists, "auto" and "cuda" are its: the CPU would run them
         * slower, or fail them, while the GPU sits idle */
        if (!pool_has(devices, n, true)) {
            out[k++] = "auto";
            out[k++] = "cuda";
        }
    }
    return k;
}

static bool listed(const char *const *list, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(list[i], name)) return true;
    return false;
}

int ksrv_pool_accepts(const char *const *devices, int n, const char **out)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        const char *mine[KSRV_ACCEPTS_MAX];
        int m = ksrv_worker_accepts(devices, n, i, mine);
        for (int j = 0; j < m; j++)
            if (!listed(out, k, mine[j])) out[k++] = mine[j];
    }
    return k;
}

/* Each worker's accept list and the pool's, from the resolved device names. */
static void plan_claims(ksrv_workers *pool)
{
    const char *names[MAX_WORKERS];
    for (int i = 0; i < pool->n; i++) names[i] = pool->items[i].device_name;
    pool->n_pool_accepts = ksrv_pool_accepts(names, pool->n, pool->pool_accepts);
    for (int i = 0; i < pool->n; i++) {
        worker *w = &pool->items[i];
        w->n_accepts = ksrv_worker_accepts(names, pool->n, i, w->accepts);
        char list[160] = "";
        for (int j = 0; j < w->n_accepts; j++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "",
                     w->accepts[j]);
        ksrv_log(KSRV_LOG_DEBUG, "worker %d on %s: claims jobs for %s, or for no worker's device",
                 i, w->device_name, list);
    }
}

static struct timespec deadline_in(clockid_t clock, double seconds)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(seconds * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    ksrv_workers *pool = w->pool;
    ksrv_server *server = pool->server;
    ksrv_log(KSRV_LOG_DEBUG, "worker %d: started on %s", w->index, w->device_name);
    /* this thread's jobs use at most this many of the engine's cores (0: an equal share
     * with the other jobs computing at the time; kernels/cpu/parallel.c) */
    kn_set_thread_share(server->config.threads_per_worker);
    while (!pool->stopping) {
        pthread_mutex_lock(&pool->lock);
        uint64_t seen = pool->generation;
        pthread_mutex_unlock(&pool->lock);

        kstore *store = ksrv_thread_store(server);
        kstore_job job;
        memset(&job, 0, sizeof job);
        kstore_claim_filter filter = {w->accepts, w->n_accepts, pool->pool_accepts,
                                      pool->n_pool_accepts};
        kstore_status s =
            store ? kstore_job_claim(store, w->device_name, &filter, &job) : KSTORE_ERROR;
        if (s == KSTORE_OK) {
            __atomic_add_fetch(&pool->busy, 1, __ATOMIC_RELAXED);
            ksrv_log(KSRV_LOG_INFO, "job %s: running on %s (worker %d)", job.id, w->device_name,
                     w->index);
            ksrv_job_run(server, store, &job, w->device, &pool->stopping);
            __atomic_sub_fetch(&pool->busy, 1, __ATOMIC_RELAXED);
            kstore_job_free(&job);
            continue; /* there may be more */
        }
        if (s != KSTORE_NOT_FOUND && store)
            ksrv_log(KSRV_LOG_WARN, "worker %d: claiming a job: %s", w->index,
                     kstore_last_error(store));
        pthread_mutex_lock(&pool->lock);
        struct timespec until = deadline_in(CLOCK_MONOTONIC, IDLE_WAKE_SECONDS);
        while (!pool->stopping && pool->generation == seen) {
            if (pthread_cond_timedwait(&pool->wake, &pool->lock, &until) == ETIMEDOUT) break;
        }
        pthread_mutex_unlock(&pool->lock);
    }
    ksrv_log(KSRV_LOG_DEBUG, "worker %d: stopped", w->index);
    return NULL;
}

/* The i-th device of a comma-separated list, cycled. */
static bool nth_device(const char *list, int i, char *out, size_t size)
{
    char copy[128];
    snprintf(copy, sizeof copy, "%s", list && list[0] ? list : "cpu");
    char *names[32];
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok && n < 32; tok = strtok_r(NULL, ", ", &save))
        names[n++] = tok;
    if (n == 0) return false;
    snprintf(out, size, "%s", names[i % n]);
    return true;
}

static void free_pool(ksrv_workers *pool)
{
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    free(pool->items);
    free(pool);
}

static char *error_text(const char *fmt, const char *a, const char *b)
{
    char buf[512];
    snprintf(buf, sizeof buf, fmt, a, b);
    return strdup(buf);
}

ksrv_workers *ksrv_workers_start(ksrv_server *server, char **error)
{
    *error = NULL;
    int n = server->config.workers;
    if (n < 1 || n > MAX_WORKERS) {
        char count[16];
        snprintf(count, sizeof count, "%d", n);
        *error = error_text("--workers: expected 1 to 64, got %s%s", count, "");
        return NULL;
    }
    ksrv_workers *pool = calloc(1, sizeof *pool);
    worker *items = calloc((size_t)n, sizeof *items);
    if (!pool || !items) {
        free(pool);
        free(items);
        *error = strdup("out of memory");
        return NULL;
    }
    pool->server = server;
    pool->items = items;
    pool->n = n;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&pool->wake, &attr);
    pthread_condattr_destroy(&attr);

    for (int i = 0; i < n; i++) {
        worker *w = &items[i];
        w->pool = pool;
        w->index = i;
        char name[32];
        if (!nth_device(server->config.devices, i, name, sizeof name)) {
            *error = error_text("--devices: no device in \"%s\"%s", server->config.devices, "");
            break;
        }
        if (!strcmp(name, "auto")) {
            kn_device cuda = {KN_DEVICE_CUDA, 0};
            w->device = kn_device_available(cuda) ? cuda : kn_cpu();
        } else if (kn_device_parse(name, &w->device) != KN_OK) {
            *error =
                error_text("--devices: expected cpu, cuda, cuda:N or auto, got \"%s\"%s", name, "");
            break;
        } else if (!kn_device_available(w->device)) {
            *error = error_text("--devices: %s is not available on this machine%s", name, "");
            break;
        }
        kn_device_str(w->device, w->device_name, sizeof w->device_name);
    }
    if (*error) {
        free_pool(pool);
        return NULL;
    }
    plan_claims(pool);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&items[i].thread, NULL, worker_main, &items[i]) != 0) {
            *error = strdup("could not start a worker thread");
            ksrv_workers_stop(pool, 10);
            return NULL;
        }
        items[i].started = true;
    }
    ksrv_log(KSRV_LOG_INFO, "%d worker%s on %s", n, n == 1 ? "" : "s",
             server->config.devices[0] ? server->config.devices : "cpu");
    return pool;
}

void ksrv_workers_notify(ksrv_workers *pool)
{
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
}

void ksrv_workers_stop(ksrv_workers *pool, double timeout_seconds)
{
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    struct timespec until = deadline_in(CLOCK_REALTIME, timeout_seconds);
    for (int i = 0; i < pool->n; i++) {
        if (!pool->items[i].started) continue;
        if (pthread_timedjoin_np(pool->items[i].thread, NULL, &until) != 0) {
            /* the thread still uses the pool: waiting longer is the only safe choice */
            ksrv_log(KSRV_LOG_WARN, "worker %d: still busy after %.0f s, waiting for it", i,
                     timeout_seconds);
            pthread_join(pool->items[i].thread, NULL);
        }
    }
    free_pool(pool);
}

int ksrv_workers_busy(ksrv_workers *pool)
{
    return pool ? __atomic_load_n(&pool->busy, __ATOMIC_RELAXED) : 0;
}

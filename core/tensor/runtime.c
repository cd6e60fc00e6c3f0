/*
 * runtime.c — the engine's settings: how many cores its scheduler uses (process-wide)
 * and the calling thread's share of them, and whether CUDA products may use TF32 (per
 * thread).
 */
#include "kn_internal.h"

void kn_set_num_threads(int n)
{
    kn_cpu_set_num_threads(n);
}

int kn_get_num_threads(void)
{
    return kn_cpu_get_num_threads();
}

void kn_set_thread_share(int n)
{
    kn_cpu_set_thread_share(n);
}

int kn_get_thread_share(void)
{
    return kn_cpu_get_thread_share();
}

/* Per thread, not per process: kilnd runs one job per worker thread, and one job's
 * choice must not change another's numbers. */
static _Thread_local bool allow_tf32;

void kn_set_allow_tf32(bool allow)
{
    allow_tf32 = allow;
}

bool kn_get_allow_tf32(void)
{
    return allow_tf32;
}

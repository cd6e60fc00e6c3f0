/*
 * worker.h — which queued jobs each of kilnd's workers claims (server/worker.c): pure
 * functions of the pool's device names, so that the rule is tested without a GPU.
 *
 * A job asks for a device (its spec's "device", stored as the job's requested_device:
 * "cpu", "auto", "cuda", "cuda:N"); a worker owns one ("cpu" or "cuda:N", as resolved
 * from --devices before the pool starts). A worker is meant for:
 *   on cpu:    "cpu"; "auto" and "cuda" too when no worker of the pool owns a GPU;
 *   on cuda:N: "cuda:N", "cuda" and "auto"; "cpu" too when no worker is on the CPU.
 * Several workers on one device are meant for the same jobs. A job no worker is meant
 * for (cuda:3 when no worker owns cuda:3) is every worker's: the one that claims it runs
 * it where it asked, or fails it with device_unavailable, rather than leaving it queued
 * forever. A pool of CPU workers therefore takes every job.
 */
#ifndef KSRV_WORKER_H
#define KSRV_WORKER_H

#define KSRV_ACCEPTS_MAX 4

/* The requested devices the worker on devices[index] is meant for, into out (string
 * literals, or devices[index] itself), for a pool whose n workers own devices[0..n).
 * Returns how many; 0 when index is out of range. */
int ksrv_worker_accepts(const char *const *devices, int n, int index,
                        const char *out[KSRV_ACCEPTS_MAX]);

/* Every requested device some worker of the pool is meant for, each once, into out
 * (room for n + 3 entries: cpu, auto, cuda and one cuda:N per worker). Returns how many.
 * A job asking for anything else is every worker's (kstore_claim_filter.pool). */
int ksrv_pool_accepts(const char *const *devices, int n, const char **out);

#endif

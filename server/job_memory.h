/*
 * job_memory.h — how much memory a job may use on this server, and whether a job fits
 * (server/job_memory.c). Checked when a job is submitted (400 insufficient_memory) and
 * again before a worker builds its model (the job fails with out_of_memory): Linux lends
 * memory it does not have, so a job too big for the machine would not fail cleanly at
 * its first allocation but get kilnd killed when it touched the pages — and then again
 * after every restart, as the job resumed.
 */
#ifndef KSRV_JOB_MEMORY_H
#define KSRV_JOB_MEMORY_H

#include "ksrv.h"

#include "kapi.h"

/* The bytes one job may use: --max-job-memory when set, else 80% of the smaller of this
 * machine's memory and its cgroup's limit (a container's). */
int64_t ksrv_job_memory_limit(const ksrv_config *config);

/* What a job needs, in bytes (an estimate, float32 throughout). */
typedef struct ksrv_job_memory {
    int64_t state;       /* parameters, gradients, optimizer state (host: parameters only
                          * for a job on a GPU, built on the host then moved) */
    int64_t activations; /* kept for backward at batch_size, or an evaluation batch */
    int64_t data;        /* the training samples as float32 (train_samples known) */
    int64_t total;
} ksrv_job_memory;

/* train_samples < 0: unknown (no data term). on_gpu: the job trains on a GPU, so only
 * what stays on the host counts. */
ksrv_job_memory ksrv_job_memory_needed(const kapi_job_spec *job, const kapi_model_spec *model,
                                       int64_t train_samples, bool on_gpu);

/* Whether need fits limit; false with a message for the user (and *path, the field to
 * blame: "batch_size" when the model and data alone fit, else "model"). */
bool ksrv_job_fits_memory(ksrv_job_memory need, int64_t limit, const kapi_job_spec *job,
                          char *message, size_t size, const char **path);

#endif

/*
 * job_runner.h — one claimed job run to its end by a worker thread (server/job_runner.c),
 * shared with the worker pool (server/worker.c).
 */
#ifndef KSRV_JOB_RUNNER_H
#define KSRV_JOB_RUNNER_H

#include "ksrv.h"

#include "kn.h"

/* How a run ended, as far as the worker pool cares. */
typedef enum {
    KSRV_RUN_FINISHED, /* a terminal state (succeeded, failed, canceled) was written */
    KSRV_RUN_PAUSED,   /* checkpointed and marked paused */
    KSRV_RUN_STOPPED,  /* the server is stopping: checkpointed, left "running" */
} ksrv_run_outcome;

/* Runs job (claimed: state running) on worker_device to completion, a pause, a cancel
 * or until *stopping becomes non-zero. Every outcome is written to store. */
ksrv_run_outcome ksrv_job_run(ksrv_server *server, kstore *store, const kstore_job *job,
                              kn_device worker_device, volatile int *stopping);

#endif

/*
 * dist_launch.h — kilnd's distributed jobs (server/dist_launch.c): where they may run,
 * the submission checks, and one job run as ranks of `kiln train` started through mpirun
 * and supervised (events of rank 0 into the job runner's callbacks, cancel and pause
 * passed to every rank, a dead rank failing the job or restarting it from its last
 * checkpoint, no rank outliving kilnd).
 */
#ifndef KSRV_DIST_LAUNCH_H
#define KSRV_DIST_LAUNCH_H

#include "ksrv.h"

#include "kapi.h"
#include "kn_train.h"

/* From ksrv_start: checks --hostfile (a host it cannot reach refuses the start) and finds
 * the ranks' program and mpirun (without them distributed jobs are refused at submission,
 * saying why). NULL, or a malloc'd message. */
char *ksrv_dist_start(ksrv_server *server);
void ksrv_dist_stop(ksrv_server *server);

/* Whether this server can run spec's "distributed" part: MPI and mpirun here, no more
 * processes than slots (the hostfile's, or a slot per core, or per GPU for a job with a
 * GPU per process). False with a 400 naming the field. Jobs without it pass. */
bool ksrv_dist_check(ksrv_server *server, const kapi_job_spec *spec, ksrv_response *response);

typedef enum {
    KSRV_DIST_SUCCEEDED,
    KSRV_DIST_CANCELED,
    KSRV_DIST_PAUSED,   /* rank 0 checkpointed: the job resumes there */
    KSRV_DIST_SHUTDOWN, /* kilnd is stopping: left running, resumed at the next start */
    KSRV_DIST_FAILED,
} ksrv_dist_end;

typedef struct ksrv_dist_job {
    ksrv_server *server;
    kstore *store;
    const kstore_job *job;
    const kapi_job_spec *spec;
    /* The job as `kiln train` reads it (ksrv_dist_rank_spec), borrowed; each launch adds
     * resume_from, the job's latest checkpoint. */
    const cJSON *rank_spec;
    /* The job runner's: rank 0's steps, evaluations and checkpoints go through them as
     * if the trainer ran here (checkpoints with trainer NULL: rank 0 wrote the file). */
    const kn_train_callbacks *callbacks;
    volatile int *stopping;
} ksrv_dist_job;

typedef struct ksrv_dist_result {
    ksrv_dist_end end;
    int64_t steps;
    double samples_per_second;
    bool has_test;       /* rank 0 evaluated the test set apart from validation */
    kn_eval_result test; /* its loss and the task's metrics (no confusion matrix) */
    char code[48];       /* failed: non_finite_loss, out_of_memory, data_error, rank_failed */
    char message[1024];  /* failed: which rank, how it ended and what it said */
    int64_t step;        /* failed: the last step reported, -1 */
} ksrv_dist_result;

/* Runs the job to its end (relaunching after a rank's death, up to max_restarts). */
void ksrv_dist_run(const ksrv_dist_job *job, ksrv_dist_result *result);

/* The stored job as `kiln train` reads it: the model inline (model_json: the stored
 * model's spec, when the job names one), the dataset's files by path, the server's
 * checkpoint period when the job sets none. NULL with error set. */
cJSON *ksrv_dist_rank_spec(const char *job_spec_json, const char *model_json,
                           const kapi_data_source *train, const kapi_data_source *test,
                           int checkpoint_every_steps, char *error, size_t error_size);

#endif

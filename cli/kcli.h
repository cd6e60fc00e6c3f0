/*
 * kcli.h — what the files of the kiln command line share: options, the job set-up
 * (spec, model, data) used by train/eval/predict, and the progress reporter that the
 * trainer's callbacks drive.
 */
#ifndef KCLI_H
#define KCLI_H

#include "kapi.h"
#include "kn_train.h"

#include <cJSON.h>

#include <stdbool.h>
#include <stdio.h>

/* Exit codes: 0 success, 1 a runtime error, 2 a usage or spec error. */
#define KCLI_EXIT_RUNTIME 1
#define KCLI_EXIT_SPEC 2

typedef struct kcli_options {
    bool json;
    bool quiet;
    const char *out_dir;
    const char *input;    /* predict */
    int64_t limit;        /* predict: at most this many samples (0: all) */
    int threads;          /* 0: KILN_NUM_THREADS or every core */
    int64_t log_every;    /* plain progress lines every N steps */
    int processes;        /* train --processes N: N ranks through mpirun (dist.c) */
    const char *hostfile; /* train --hostfile F */
    bool events;          /* train --events: --json plus a line per step and checkpoint */
    bool tty;             /* draw the progress bar although stderr is a pipe (a rank) */
    /* generate: --prompt, --max-new-tokens, --temperature, --top-k, --seed as given (NULL
     * when absent), --greedy, --no-cache */
    const char *generate_values[5];
    bool greedy, no_cache;
} kcli_options;

/* Why a run was asked to stop: Ctrl-C or SIGUSR1 (save a checkpoint, as --out says),
 * SIGUSR2 (a cancel: nothing saved). */
#define KCLI_STOP_SAVE 1
#define KCLI_STOP_CANCEL 2

/* A job ready to run: the spec, the model built and on its device, the data loaded,
 * scaled, normalised and shaped as the model's input. */
typedef struct kcli_job {
    kapi_job_spec *spec;
    const kapi_model_spec *model_spec; /* spec->model or model_owned */
    kapi_model_spec *model_owned;      /* a model referenced by file */
    kn_module *model;
    kn_device device;
    kn_dataset *train, *test, *validation; /* any may be NULL */
    kapi_preprocessing preprocessing;      /* what the data got (train) or gets (eval, predict) */
} kcli_job;

/* Reads and validates the job (errors printed as "path: message"), builds the model.
 * Data is loaded when want_train/want_test, checked against the model and the task; with
 * want_train every split is preprocessed (job->preprocessing), otherwise the test data is
 * raw until kcli_job_apply_preprocessing. Returns 0 or an exit code. */
int kcli_job_open(kcli_job *job, const char *path, bool want_train, bool want_test);
void kcli_job_close(kcli_job *job);
/* job->preprocessing for a weights file: the one it carries, else the job's (normalize
 * "auto" measured again on the training data). 0 or an exit code. */
int kcli_job_preprocessing(kcli_job *job, const char *weights);
/* Scales and normalises ds in place with job->preprocessing. */
int kcli_job_apply_preprocessing(const kcli_job *job, kn_dataset *ds, const char *what);
/* Loads src as the job's task takes it, labels optional, fitted to the model's input. */
int kcli_job_load_unlabeled(kcli_job *job, const kapi_data_source *src, const char *what,
                            kn_dataset **out);
/* Prints kapi errors as "path: message" lines on stderr. */
void kcli_print_errors(const kapi_errors *errors);

/* An evaluation's metrics (kapi_eval_metrics) into o as prefix + name, or as text
 * ("accuracy 0.9012, precision ..."). */
void kcli_metrics_json(cJSON *o, const char *prefix, const kn_eval_result *r);
void kcli_metrics_text(char *out, size_t size, const kn_eval_result *r);

int kcli_train(const char *job_path, const kcli_options *options);

/* ---- distributed runs (dist.c) --------------------------------------------------------- */
/* kiln train --processes N: checks the job and the hosts, runs mpirun with this program's
 * train and the same options (less --processes and --hostfile), waits; returns the exit
 * code. */
int kcli_train_launch(const char *job_path, const kcli_options *options);

/* This process as a rank of a run started by mpirun (kn_dist_launched()). */
typedef struct kcli_rank {
    struct kn_dist *dist; /* NULL: not a rank */
    int rank, world;
} kcli_rank;
/* The device of a rank of a job with one GPU per process: cuda:<local rank>. */
bool kcli_rank_device(const kapi_job_spec *spec, kn_device *device);
/* Joins the job's communicator (after kcli_job_open): sets the job's train.dist, makes
 * ranks other than 0 quiet, and routes SIGUSR1/SIGUSR2 to *stop. Returns an exit code. */
int kcli_rank_join(kcli_rank *rank, kcli_job *job, kcli_options *options, volatile int *stop);
/* After an agreed stop: rank 0's reason (KCLI_STOP_*), the same on every rank. */
int kcli_rank_agree_stop(kcli_rank *rank, int stop);
/* Leaves the job: a failing rank (rc not 0 or 130) takes every rank down with it. */
void kcli_rank_leave(kcli_rank *rank, int rc);
int kcli_eval(const char *checkpoint, const char *job_path, const kcli_options *options);
int kcli_predict(const char *checkpoint, const char *job_path, const kcli_options *options);
int kcli_validate(const char *path, const kcli_options *options);
/* kiln generate (generate.c, issue 12) */
int kcli_generate(const char *checkpoint, const char *job_path, const kcli_options *options);

/* ---- the progress bar (progress_bar.c) ---------------------------------------------- */
typedef struct kcli_bar {
    FILE *out;
    bool tty;  /* a terminal: one line redrawn in place */
    bool open; /* a bar is on screen */
    double last_draw;
} kcli_bar;

typedef struct kcli_bar_state {
    const char *label; /* "running", "epoch", ... (may be NULL) */
    int64_t step, total;
    int64_t epoch, epochs; /* epoch counted from 0; epochs 0: unknown; epoch < 0: none */
    double loss;           /* NaN: none yet */
    double samples_per_second, eta_seconds; /* eta < 0: unknown */
    const char *note;                       /* appended, e.g. "(skipped)" */
} kcli_bar_state;

/* enabled false (--quiet) never draws. */
void kcli_bar_init(kcli_bar *bar, FILE *out, bool enabled);
/* Redraws the bar on a terminal (throttled unless force); nothing elsewhere. */
void kcli_bar_draw(kcli_bar *bar, const kcli_bar_state *state, bool force);
/* A plain line (ends a drawn bar first): for logs and pipes. */
void kcli_bar_line(kcli_bar *bar, const kcli_bar_state *state);
/* Ends a drawn bar's line. */
void kcli_bar_end(kcli_bar *bar);
/* "1:02:03", "2:03", or "?" for unknown. */
void kcli_format_duration(double seconds, char *out, size_t size);

/* ---- progress (progress.c) ---------------------------------------------------------- */
typedef struct kcli_progress {
    const kcli_options *options;
    kcli_bar bar;       /* stderr */
    int64_t first_step; /* the step the run started at (resumed runs) */
    double start;       /* seconds */
    volatile int *interrupted;
    kn_trainer *trainer; /* for checkpoints */
    int64_t checkpoints_written;
} kcli_progress;

void kcli_progress_init(kcli_progress *p, const kcli_options *options, kn_trainer *trainer,
                        volatile int *interrupted);
kn_train_callbacks kcli_progress_callbacks(kcli_progress *p);
/* --events: {"event": "checkpoint", "step", "path"} on stdout. */
void kcli_print_checkpoint_event(int64_t step, const char *path);
/* Ends the progress bar line, if one is drawn. */
void kcli_progress_finish(kcli_progress *p);
/* "DIR/name", malloc'd. */
char *kcli_join(const char *dir, const char *name);
double kcli_now(void);

#endif

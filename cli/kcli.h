/*
 * kcli.h — what the files of the kiln command line share: options, the job set-up
 * (spec, model, data) used by train/eval/predict, and the progress reporter that the
 * trainer's callbacks drive.
 */
#ifndef KCLI_H
#define KCLI_H

#include "kapi.h"
#include "kn_train.h"

#include <stdbool.h>

/* Exit codes: 0 success, 1 a runtime error, 2 a usage or spec error. */
#define KCLI_EXIT_RUNTIME 1
#define KCLI_EXIT_SPEC 2

typedef struct kcli_options {
    bool json;
    bool quiet;
    const char *out_dir;
    const char *input; /* predict */
    int64_t limit;     /* predict: at most this many samples (0: all) */
    int threads;       /* 0: KILN_NUM_THREADS or every core */
    int64_t log_every; /* plain progress lines every N steps */
    /* generate: --prompt, --max-new-tokens, --temperature, --top-k, --seed as given (NULL
     * when absent), --greedy, --no-cache */
    const char *generate_values[5];
    bool greedy, no_cache;
} kcli_options;

/* A job ready to run: the spec, the model built and on its device, the data loaded,
 * scaled, normalised and shaped as the model's input. */
typedef struct kcli_job {
    kapi_job_spec *spec;
    const kapi_model_spec *model_spec; /* spec->model or model_owned */
    kapi_model_spec *model_owned;      /* a model referenced by file */
    kn_module *model;
    kn_device device;
    kn_dataset *train, *test, *validation; /* any may be NULL */
} kcli_job;

/* Reads and validates the job (errors printed as "path: message"), builds the model.
 * Data is loaded when want_train/want_test. Returns 0 or an exit code. */
int kcli_job_open(kcli_job *job, const char *path, bool want_train, bool want_test);
void kcli_job_close(kcli_job *job);
/* Scales/normalises as the job says and reshapes samples to the model's input_shape. */
int kcli_prepare_dataset(const kcli_job *job, kn_dataset *ds, const char *what);
/* Prints kapi errors as "path: message" lines on stderr. */
void kcli_print_errors(const kapi_errors *errors);

int kcli_train(const char *job_path, const kcli_options *options);
int kcli_eval(const char *checkpoint, const char *job_path, const kcli_options *options);
int kcli_predict(const char *checkpoint, const char *job_path, const kcli_options *options);
int kcli_validate(const char *path, const kcli_options *options);
/* kiln generate (generate.c, issue 12); its value flags, in generate_values' order */
extern const char *const KCLI_GENERATE_FLAGS[5];
int kcli_generate(const char *checkpoint, const char *job_path, const kcli_options *options);

/* ---- progress (progress.c) ---------------------------------------------------------- */
typedef struct kcli_progress {
    const kcli_options *options;
    bool tty;           /* stderr is a terminal: one line redrawn with \r */
    bool line_open;     /* a progress bar is on screen */
    int64_t first_step; /* the step the run started at (resumed runs) */
    double start;       /* seconds */
    double last_draw;
    volatile int *interrupted;
    kn_trainer *trainer; /* for checkpoints */
    int64_t checkpoints_written;
} kcli_progress;

void kcli_progress_init(kcli_progress *p, const kcli_options *options, kn_trainer *trainer,
                        volatile int *interrupted);
kn_train_callbacks kcli_progress_callbacks(kcli_progress *p);
/* Ends the progress bar line, if one is drawn. */
void kcli_progress_finish(kcli_progress *p);
/* "DIR/name", malloc'd. */
char *kcli_join(const char *dir, const char *name);
double kcli_now(void);

#endif

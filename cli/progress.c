/*
 * progress.c — what `kiln train` shows while the trainer runs: the progress bar
 * (progress_bar.c) on a terminal, otherwise a plain line every N steps; evaluations as text or,
 * with --json, one JSON object each on stdout; checkpoints written to --out DIR every
 * checkpoint_every_steps.
 */
#include "kcli.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double kcli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

char *kcli_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = malloc(n);
    if (path)
        snprintf(path, n, "%s%s%s", dir, dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", name);
    return path;
}

void kcli_progress_init(kcli_progress *p, const kcli_options *options, kn_trainer *trainer,
                        volatile int *interrupted)
{
    memset(p, 0, sizeof *p);
    p->options = options;
    kcli_bar_init(&p->bar, stderr, !options->quiet);
    /* a rank's stderr is mpirun's pipe: the launcher says whether it ends on a terminal */
    if (options->tty && !options->quiet) p->bar.tty = true;
    p->first_step = kn_trainer_step(trainer);
    p->start = kcli_now();
    p->trainer = trainer;
    p->interrupted = interrupted;
}

void kcli_progress_finish(kcli_progress *p)
{
    kcli_bar_end(&p->bar);
}

/* --events: one JSON object per step on stdout (what kilnd reads from its ranks). */
static void print_step_event(const kn_step_info *info)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "step");
    cJSON_AddNumberToObject(o, "step", (double)info->step);
    cJSON_AddNumberToObject(o, "total_steps", (double)info->total_steps);
    cJSON_AddNumberToObject(o, "epoch", (double)info->epoch);
    cJSON_AddNumberToObject(o, "batch_in_epoch", (double)info->batch_in_epoch);
    cJSON_AddNumberToObject(o, "batches_per_epoch", (double)info->batches_per_epoch);
    /* a non-finite loss has no JSON number: null, and "skipped" says why */
    if (isfinite(info->loss))
        cJSON_AddNumberToObject(o, "loss", info->loss);
    else
        cJSON_AddStringToObject(o, "loss",
                                isnan(info->loss) ? "NaN"
                                : info->loss > 0  ? "Infinity"
                                                  : "-Infinity");
    cJSON_AddNumberToObject(o, "lr", info->lr);
    cJSON_AddNumberToObject(o, "samples_per_second", info->samples_per_second);
    cJSON_AddNumberToObject(o, "elapsed_seconds", info->elapsed_seconds);
    cJSON_AddBoolToObject(o, "skipped", info->skipped);
    cJSON_AddNumberToObject(o, "world_size", info->world_size);
    if (info->rank_samples_per_second) {
        cJSON *ranks = cJSON_AddArrayToObject(o, "rank_samples_per_second");
        for (int r = 0; r < info->world_size; r++)
            cJSON_AddItemToArray(ranks, cJSON_CreateNumber(info->rank_samples_per_second[r]));
        cJSON_AddNumberToObject(o, "communication_seconds", info->communication_seconds);
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text) printf("%s\n", text);
    free(text);
    fflush(stdout);
}

static kn_status on_step(void *context, const kn_step_info *info)
{
    kcli_progress *p = context;
    if (p->options->events) print_step_event(info);
    if (p->interrupted && *p->interrupted)
        return KN_ERR_VALUE; /* the caller reports the interruption */
    if (p->options->quiet) return KN_OK;
    bool last = info->step >= info->total_steps;
    int64_t done = info->step - p->first_step;
    double now = kcli_now();
    kcli_bar_state s = {
        .label = "train",
        .step = info->step,
        .total = info->total_steps,
        .epoch = info->epoch,
        .epochs = info->batches_per_epoch > 0
                      ? (info->total_steps + info->batches_per_epoch - 1) / info->batches_per_epoch
                      : 0,
        .loss = info->loss,
        .samples_per_second = info->samples_per_second,
        .eta_seconds =
            done > 0 ? (now - p->start) / (double)done * (double)(info->total_steps - info->step)
                     : -1,
        .note = info->skipped ? "(non-finite, skipped)" : NULL};
    if (p->bar.tty)
        kcli_bar_draw(&p->bar, &s, last);
    else if (p->options->log_every > 0 &&
             (info->step % p->options->log_every == 0 || last || info->skipped))
        kcli_bar_line(&p->bar, &s);
    return KN_OK;
}

static kn_status on_eval(void *context, const kn_eval_result *r)
{
    kcli_progress *p = context;
    if (p->options->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "event", "eval");
        cJSON_AddNumberToObject(o, "step", (double)r->step);
        cJSON_AddNumberToObject(o, "epoch", (double)r->epoch);
        cJSON_AddNumberToObject(o, "loss", r->loss);
        kcli_metrics_json(o, "", r);
        cJSON_AddNumberToObject(o, "count", (double)r->count);
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (text) printf("%s\n", text);
        free(text);
        fflush(stdout);
    } else if (!p->options->quiet) {
        kcli_progress_finish(p);
        char metrics[256];
        kcli_metrics_text(metrics, sizeof metrics, r);
        fprintf(stderr, "eval  epoch %lld step %lld: loss %.4f, %s (%lld samples)\n",
                (long long)r->epoch + 1, (long long)r->step, r->loss, metrics, (long long)r->count);
    }
    return KN_OK;
}

static kn_status on_checkpoint(void *context, kn_trainer *trainer, int64_t step)
{
    kcli_progress *p = context;
    if (!p->options->out_dir) return KN_OK;
    char name[64];
    snprintf(name, sizeof name, "checkpoint-%lld.safetensors", (long long)step);
    char *path = kcli_join(p->options->out_dir, name);
    if (!path) return KN_ERR_MEMORY;
    kn_status st = kn_trainer_save_checkpoint(trainer, path); /* every rank: a collective */
    if (st == KN_OK) {
        p->checkpoints_written++;
        if (!p->options->quiet && !p->bar.tty && !p->options->events)
            fprintf(stderr, "checkpoint %s\n", path);
        if (p->options->events) kcli_print_checkpoint_event(step, path);
    }
    free(path);
    return st;
}

void kcli_print_checkpoint_event(int64_t step, const char *path)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "checkpoint");
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddStringToObject(o, "path", path);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text) printf("%s\n", text);
    free(text);
    fflush(stdout);
}

kn_train_callbacks kcli_progress_callbacks(kcli_progress *p)
{
    kn_train_callbacks cb = {
        .context = p, .on_step = on_step, .on_eval = on_eval, .on_checkpoint = on_checkpoint};
    return cb;
}

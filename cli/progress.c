/*
 * progress.c — what `kiln train` shows while the trainer runs: on a terminal a single
 * progress line redrawn with \r (epoch, step/total, loss, samples/s, ETA), otherwise a
 * plain line every N steps; evaluations as text or, with --json, one JSON object each
 * on stdout; checkpoints written to --out DIR every checkpoint_every_steps.
 */
#include "kcli.h"

#include <cJSON.h>
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
    p->tty = isatty(STDERR_FILENO) && !options->quiet;
    p->first_step = kn_trainer_step(trainer);
    p->start = kcli_now();
    p->trainer = trainer;
    p->interrupted = interrupted;
}

/* "1:02:03" or "2:03". */
static void format_duration(double seconds, char *buf, size_t size)
{
    if (!(seconds >= 0) || seconds > 1e7) {
        snprintf(buf, size, "?");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

void kcli_progress_finish(kcli_progress *p)
{
    if (p->line_open) {
        fputc('\n', stderr);
        fflush(stderr);
        p->line_open = false;
    }
}

static kn_status on_step(void *context, const kn_step_info *info)
{
    kcli_progress *p = context;
    if (p->interrupted && *p->interrupted)
        return KN_ERR_VALUE; /* the caller reports the interruption */
    if (p->options->quiet) return KN_OK;
    bool last = info->step >= info->total_steps;
    int64_t epochs =
        info->batches_per_epoch > 0
            ? (info->total_steps + info->batches_per_epoch - 1) / info->batches_per_epoch
            : 1;
    double now = kcli_now();
    int64_t done = info->step - p->first_step;
    double eta =
        done > 0 ? (now - p->start) / (double)done * (double)(info->total_steps - info->step) : -1;
    char eta_text[32];
    format_duration(eta, eta_text, sizeof eta_text);
    if (p->tty) {
        if (!last && now - p->last_draw < 0.1) return KN_OK;
        p->last_draw = now;
        int width = 24;
        int filled = info->total_steps > 0
                         ? (int)((double)width * (double)info->step / (double)info->total_steps)
                         : 0;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
        bar[width] = '\0';
        fprintf(stderr,
                "\r\033[Kepoch %lld/%lld [%s] %lld/%lld loss %.4f %.0f samples/s "
                "ETA %s%s",
                (long long)info->epoch + 1, (long long)epochs, bar, (long long)info->step,
                (long long)info->total_steps, info->loss, info->samples_per_second, eta_text,
                info->skipped ? " (skipped)" : "");
        fflush(stderr);
        p->line_open = true;
    } else if (p->options->log_every > 0 &&
               (info->step % p->options->log_every == 0 || last || info->skipped)) {
        fprintf(stderr,
                "epoch %lld/%lld step %lld/%lld loss %.4f lr %.3g %.0f samples/s "
                "ETA %s%s\n",
                (long long)info->epoch + 1, (long long)epochs, (long long)info->step,
                (long long)info->total_steps, info->loss, info->lr, info->samples_per_second,
                eta_text, info->skipped ? " (non-finite, skipped)" : "");
        fflush(stderr);
    }
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
    kn_status st = kn_trainer_save_checkpoint(trainer, path);
    if (st == KN_OK) {
        p->checkpoints_written++;
        if (!p->options->quiet && !p->tty) fprintf(stderr, "checkpoint %s\n", path);
    }
    free(path);
    return st;
}

kn_train_callbacks kcli_progress_callbacks(kcli_progress *p)
{
    kn_train_callbacks cb = {
        .context = p, .on_step = on_step, .on_eval = on_eval, .on_checkpoint = on_checkpoint};
    return cb;
}

/*
 * progress_bar.c — the one progress display of the kiln command: `kiln train` (driven by
 * the trainer's callbacks, progress.c) and `kiln submit --follow` (driven by the server's
 * answers, client_jobs.c) draw the same bar. On a terminal one line is redrawn in place
 * (at most 10 times a second, the last state always); elsewhere (logs, pipes, CI) a plain
 * line is printed when the caller asks, so logs stay readable.
 *
 *   running [############..................]  40% step 400/1000 epoch 2/5 loss 0.4213
 *           1234 samples/s ETA 0:12
 */
#include "kcli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define BAR_WIDTH 30
#define REDRAW_SECONDS 0.1

void kcli_format_duration(double seconds, char *out, size_t size)
{
    if (!(seconds >= 0) || seconds > 1e7) {
        snprintf(out, size, "?");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(out, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(out, size, "%ld:%02ld", s / 60, s % 60);
}

void kcli_bar_init(kcli_bar *bar, FILE *out, bool enabled)
{
    memset(bar, 0, sizeof *bar);
    bar->out = out;
    bar->tty = enabled && isatty(fileno(out));
    bar->last_draw = -1;
}

/* The text after the bar: step, epoch, loss, rate, ETA. */
static void describe(const kcli_bar_state *s, char *out, size_t size)
{
    char eta[32], epoch[48] = "", loss[48] = "";
    kcli_format_duration(s->eta_seconds, eta, sizeof eta);
    if (s->epochs > 0)
        snprintf(epoch, sizeof epoch, " epoch %lld/%lld", (long long)s->epoch + 1,
                 (long long)s->epochs);
    else if (s->epoch >= 0)
        snprintf(epoch, sizeof epoch, " epoch %lld", (long long)s->epoch + 1);
    if (!isnan(s->loss)) snprintf(loss, sizeof loss, " loss %.4f", s->loss);
    snprintf(out, size, "step %lld/%lld%s%s %.0f samples/s ETA %s%s%s", (long long)s->step,
             (long long)s->total, epoch, loss, s->samples_per_second, eta,
             s->note && s->note[0] ? " " : "", s->note ? s->note : "");
}

void kcli_bar_draw(kcli_bar *bar, const kcli_bar_state *s, bool force)
{
    double now = kcli_now();
    if (!bar->tty) return;
    if (!force && bar->last_draw >= 0 && now - bar->last_draw < REDRAW_SECONDS) return;
    bar->last_draw = now;
    double fraction = s->total > 0 ? (double)s->step / (double)s->total : 0;
    if (fraction > 1) fraction = 1;
    int filled = (int)(fraction * BAR_WIDTH);
    char cells[BAR_WIDTH + 1], text[256];
    for (int i = 0; i < BAR_WIDTH; i++) cells[i] = i < filled ? '#' : '.';
    cells[BAR_WIDTH] = '\0';
    describe(s, text, sizeof text);
    fprintf(bar->out, "\r\033[K%s [%s] %3.0f%% %s", s->label ? s->label : "", cells, 100 * fraction,
            text);
    fflush(bar->out);
    bar->open = true;
}

void kcli_bar_line(kcli_bar *bar, const kcli_bar_state *s)
{
    char text[256];
    describe(s, text, sizeof text);
    kcli_bar_end(bar);
    fprintf(bar->out, "%s%s%s\n", s->label ? s->label : "", s->label ? " " : "", text);
    fflush(bar->out);
}

void kcli_bar_end(kcli_bar *bar)
{
    if (!bar->open) return;
    fputc('\n', bar->out);
    fflush(bar->out);
    bar->open = false;
}

/*
 * bench_rnn.c — nn.LSTM and nn.GRU, Kiln beside PyTorch in one run: forward alone (no
 * grad) and forward + backward (input and every parameter), for a one-layer LSTM and GRU
 * and a two-layer bidirectional LSTM. Kiln and PyTorch (bench/bench_rnn_torch.py run by
 * /usr/bin/python3, same shapes, same thread count) take turns for several rounds and
 * each figure is the median over the rounds, so other load hits both sides alike.
 *
 * Usage: bench_rnn [--threads N] [--rounds R] [--quick] [--no-torch]
 * Run from the repository root (or set KILN_SOURCE_DIR) so the Python script is found.
 */
#include "kn.h"
#include "kn_nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_timing.h"

enum { N_CASES = 6, MAX_ROUNDS = 15 };

static int quick;

/* The cases: the same list as bench_rnn_torch.py's CASES. */
static const struct {
    const char *name;
    bool lstm, backward;
    int64_t batch, steps, input, hidden, layers;
    bool bidirectional;
} CASES[N_CASES] = {
    {"lstm_fwd", true, false, 32, 64, 64, 128, 1, false},
    {"lstm_fwd_bwd", true, true, 32, 64, 64, 128, 1, false},
    {"gru_fwd", false, false, 32, 64, 64, 128, 1, false},
    {"gru_fwd_bwd", false, true, 32, 64, 64, 128, 1, false},
    {"lstm2_bidir_fwd", true, false, 16, 50, 32, 64, 2, true},
    {"lstm2_bidir_fwd_bwd", true, true, 16, 50, 32, 64, 2, true},
};

typedef struct bench_case {
    kn_module *m;
    kn_tensor *x, *grad;
    bool backward;
} bench_case;

static bool run(const bench_case *c)
{
    kn_scope_begin();
    if (!c->backward) kn_no_grad_begin();
    kn_tensor *y = kn_module_forward(c->m, c->x);
    bool ok = y != NULL;
    if (c->backward) {
        kn_module_zero_grad(c->m);
        kn_zero_grad(c->x);
        ok = ok && kn_backward(y, c->grad, false) == KN_OK;
    } else {
        kn_no_grad_end();
    }
    kn_scope_end();
    return ok;
}

static bool run_case(void *context)
{
    return run(context);
}

/* Median microseconds per iteration (same method as bench_rnn_torch.py), or -1. */
static double measure(const bench_case *c)
{
    return bench_measure(run_case, (void *)c, quick ? 0.05 : 0.2, quick ? 0.05 : 0.2,
                         quick ? 3 : 5);
}

static double kiln_case(int i)
{
    kn_manual_seed(0);
    kn_module *m = CASES[i].lstm ? kn_lstm_new(CASES[i].input, CASES[i].hidden, CASES[i].layers,
                                               CASES[i].bidirectional, NULL)
                                 : kn_gru_new(CASES[i].input, CASES[i].hidden, CASES[i].layers,
                                              CASES[i].bidirectional, NULL);
    int64_t D = CASES[i].bidirectional ? 2 : 1;
    bench_case c = {
        .m = m,
        .x = kn_randn((int64_t[]){CASES[i].batch, CASES[i].steps, CASES[i].input}, 3, NULL),
        .grad = kn_randn((int64_t[]){CASES[i].batch, CASES[i].steps, D * CASES[i].hidden}, 3, NULL),
        .backward = CASES[i].backward,
    };
    if (c.backward) kn_set_requires_grad(c.x, true);
    double us = m ? measure(&c) : -1;
    if (us < 0) fprintf(stderr, "bench_rnn: %s failed: %s\n", CASES[i].name, kn_last_error());
    kn_release(c.x);
    kn_release(c.grad);
    kn_module_free(m);
    return us;
}

/* One round of PyTorch's side: fills us[] by name; false when it could not run. */
static bool torch_round(int threads, double *us)
{
    const char *dir = getenv("KILN_SOURCE_DIR");
    char command[512];
    snprintf(command, sizeof command, "/usr/bin/python3 %s/bench/bench_rnn_torch.py --threads %d%s",
             dir ? dir : ".", threads, quick ? " --quick" : "");
    FILE *pipe = popen(command, "r");
    if (!pipe) return false;
    char name[64];
    double value;
    int found = 0;
    while (fscanf(pipe, "%63s %lf", name, &value) == 2)
        for (int i = 0; i < N_CASES; i++)
            if (!strcmp(name, CASES[i].name)) us[i] = value, found++;
    return pclose(pipe) == 0 && found == N_CASES;
}

int main(int argc, char **argv)
{
    int threads = 2, rounds = 3;
    bool torch = true;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--no-torch"))
            torch = false;
        else {
            fprintf(stderr, "usage: bench_rnn [--threads N] [--rounds R] [--quick] [--no-torch]\n");
            return 2;
        }
    }
    if (rounds < 1 || rounds > MAX_ROUNDS) rounds = 3;
    kn_set_num_threads(threads);
    double kiln[N_CASES][MAX_ROUNDS], py[N_CASES][MAX_ROUNDS];
    int n_py = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < N_CASES; i++) kiln[i][r] = kiln_case(i);
        double us[N_CASES] = {0};
        if (torch && torch_round(threads, us)) {
            for (int i = 0; i < N_CASES; i++) py[i][n_py] = us[i];
            n_py++;
        }
    }
    printf("%-22s %12s %12s %10s   (median of %d rounds, %d threads)\n", "case", "kiln ms",
           "pytorch ms", "kiln/pyt", rounds, threads);
    for (int i = 0; i < N_CASES; i++) {
        double k = bench_median(kiln[i], rounds) / 1e3;
        if (n_py) {
            double p = bench_median(py[i], n_py) / 1e3;
            printf("%-22s %12.3f %12.3f %9.2fx\n", CASES[i].name, k, p, p / k);
        } else {
            printf("%-22s %12.3f %12s\n", CASES[i].name, k, "-");
        }
    }
    printf("kiln/pyt is a speed ratio: above 1, Kiln is faster.\n");
    return 0;
}

/*
 * test_cuda_sequence.c — issue 12's data on the trainer's CUDA side (train_cuda.c): int64
 * token inputs and labels per position staged through the pinned buffers by their sample
 * bytes, and the captured step with labels per position. With a device: a tagger over
 * int64 tokens (embedding, positional embedding, MLP per position) trains to the CPU's
 * per-step losses and parameters; a float sequence model with labels [N, T] is captured
 * and replayed with the eager run's losses, and with ignored positions (-100) its
 * batches run eagerly (a replay's loss would count them) with the same losses again.
 * Without a device every test skips, saying why.
 */
#define KN_TEST_CUDA_EVERY_TEST
#include "kn_test_cuda.h"

#include "kn_nn.h"
#include "kn_train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#define SEQ 8
#define VOCAB 12
#define STEPS 40

typedef struct run_log {
    int64_t steps;
    double loss[STEPS];
} run_log;

static kn_status log_step(void *context, const kn_step_info *info)
{
    run_log *log = context;
    if (info->step <= STEPS) log->loss[info->step - 1] = info->loss;
    log->steps = info->step;
    return KN_OK;
}

static void run(kn_module *m, const kn_dataset *ds, bool graph, run_log *log,
                kn_train_summary *summary)
{
    kn_train_config c = kn_train_config_defaults();
    c.batch_size = 16;
    c.max_steps = STEPS;
    c.optimizer.lr = 0.01;
    c.cuda_graph = graph;
    kn_trainer *t = kn_trainer_new(m, &c);
    cr_assert_not_null(t, "%s", kn_last_error());
    kn_train_callbacks cb = {.context = log, .on_step = log_step};
    cr_assert_eq(kn_trainer_run(t, ds, NULL, &cb, summary), KN_OK, "%s", kn_last_error());
    kn_trainer_free(t);
}

static void same_losses(const run_log *a, const run_log *b, double rtol)
{
    cr_assert_eq(a->steps, b->steps);
    for (int64_t i = 0; i < a->steps; i++)
        cr_assert(fabs(a->loss[i] - b->loss[i]) <= rtol * fabs(b->loss[i]) + 1e-7,
                  "step %lld: loss %.9g vs %.9g", (long long)i + 1, a->loss[i], b->loss[i]);
}

static void same_parameters(kn_module *a, kn_module *b, double tol)
{
    int na = 0, nb = 0;
    kn_named_tensor *pa = kn_module_parameters(a, &na), *pb = kn_module_parameters(b, &nb);
    cr_assert_eq(na, nb);
    for (int i = 0; i < na; i++)
        kn_test_assert_close_cuda(pa[i].name, pa[i].tensor, pb[i].tensor, tol, tol);
    free(pa);
    free(pb);
}

/* n token sequences (int64 [n, SEQ]) labelled per position (3 token + t) % VOCAB, the
 * first position ignored when asked. */
static kn_dataset *tokens(int64_t n, bool ignore_first)
{
    kn_scope_begin();
    kn_tensor *x = kn_empty(KN_SHAPE(n, SEQ), KN_INT64), *y = kn_empty(KN_SHAPE(n, SEQ), KN_INT64);
    for (int64_t i = 0; i < n * SEQ; i++) {
        int64_t token = (i * 7 + i / 5) % VOCAB, t = i % SEQ;
        kn_data_i64(x)[i] = token;
        kn_data_i64(y)[i] = ignore_first && t == 0 ? -100 : (3 * token + t) % VOCAB;
    }
    kn_dataset *ds = kn_dataset_new(x, y);
    cr_assert_not_null(ds, "%s", kn_last_error());
    kn_scope_end();
    return ds;
}

static kn_module *tagger(uint64_t seed, bool embedding)
{
    kn_generator *g = kn_generator_new(seed);
    kn_module *m = kn_sequential_new();
    if (embedding) kn_sequential_append(m, kn_embedding_new(VOCAB, 16, g));
    kn_sequential_append(m, kn_positional_embedding_new(SEQ, 16, g));
    kn_sequential_append(m, kn_linear_new(16, 32, true, g));
    kn_sequential_append(m, kn_elu_new(1.0));
    kn_sequential_append(m, kn_linear_new(32, VOCAB, true, g));
    kn_generator_free(g);
    return m;
}

Test(cuda_sequence, token_training_matches_the_cpu)
{
    kn_test_need_cuda();
    kn_dataset *ds = tokens(16 * 5 + 7, true); /* a partial batch each epoch */
    kn_module *cpu = tagger(3, true), *gpu = tagger(3, true);
    cr_assert_eq(kn_module_to(gpu, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    static run_log on_cpu, on_gpu;
    kn_train_summary s_cpu, s_gpu;
    run(cpu, ds, false, &on_cpu, &s_cpu);
    run(gpu, ds, true, &on_gpu, &s_gpu); /* an embedding keeps it eager */
    cr_assert(strstr(s_gpu.cuda_note, "Embedding"), "%s", s_gpu.cuda_note);
    same_losses(&on_gpu, &on_cpu, 1e-4);
    same_parameters(cpu, gpu, 1e-4);
    kn_module_free(cpu);
    kn_module_free(gpu);
    kn_dataset_free(ds);
}

/* float inputs [N, SEQ, 16] (the embedded tokens) for the capturable part of the tagger */
static kn_dataset *embedded(const kn_dataset *tok, uint64_t seed)
{
    kn_scope_begin();
    kn_generator *g = kn_generator_new(seed);
    kn_tensor *table = kn_randn(KN_SHAPE(VOCAB, 16), g);
    kn_generator_free(g);
    kn_tensor *x = kn_embedding(table, tok->inputs);
    kn_dataset *ds = kn_dataset_new(x, tok->labels);
    cr_assert_not_null(ds, "%s", kn_last_error());
    kn_scope_end();
    return ds;
}

static void graph_case(bool ignore_first, bool expect_replays)
{
    kn_dataset *tok = tokens(16 * 6, ignore_first), *ds = embedded(tok, 4);
    kn_module *on = tagger(5, false), *off = tagger(5, false);
    cr_assert_eq(kn_module_to(on, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_module_to(off, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    static run_log log_on, log_off;
    kn_train_summary s_on, s_off;
    run(on, ds, true, &log_on, &s_on);
    run(off, ds, false, &log_off, &s_off);
    if (expect_replays)
        cr_assert_gt(s_on.graph_steps, 0, "%s", s_on.cuda_note);
    else
        cr_assert_eq(s_on.graph_steps, 0, "%s", s_on.cuda_note);
    same_losses(&log_on, &log_off, 1e-5);
    same_parameters(on, off, 1e-5);
    kn_module_free(on);
    kn_module_free(off);
    kn_dataset_free(ds);
    kn_dataset_free(tok);
}

Test(cuda_sequence, labels_per_position_replay_from_a_graph)
{
    kn_test_need_cuda();
    graph_case(false, true);
}

Test(cuda_sequence, ignored_positions_run_eagerly)
{
    kn_test_need_cuda();
    graph_case(true, false);
}

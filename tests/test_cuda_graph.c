/*
 * test_cuda_graph.c — the trainer's CUDA side (core/train/train_cuda.c): pinned staging and the
 * captured training step ("cuda_graph"). With a device: the Fashion-MNIST-shaped MLP and
 * CNN on synthetic data train to the same per-step losses and parameters with the graph
 * on and off (Adam, SGD with momentum and a step schedule, clipping, an epoch whose last
 * batch is partial), device memory stays flat over 1,000 replays, and a capture that
 * fails falls back to eager steps with the same results. Everywhere: the job-spec field,
 * the CPU ignoring it, and the refusals while a capture is marked.
 *
 * Tolerances: losses and parameters 1e-5 relative (the graph replays the eager step's
 * kernels with the same arguments, so they agree bit for bit in practice).
 */
#include "kapi.h"
#include "kn_cuda.h"
#include "kn_internal.h"
#include "kn_nn.h"
#include "kn_train.h"
#include "kn_train_internal.h"
#include "kn_test_cuda.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STEPS_LOGGED 4096

/* ---- models and data ---------------------------------------------------------------- */

static kn_module *mlp(uint64_t seed)
{
    kn_generator *g = kn_generator_new(seed);
    kn_module *m = kn_sequential_new();
    kn_sequential_append(m, kn_flatten_new(1, -1));
    kn_sequential_append(m, kn_linear_new(784, 256, true, g));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_linear_new(256, 128, true, g));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_linear_new(128, 10, true, g));
    kn_generator_free(g);
    return m;
}

static kn_module *cnn(uint64_t seed)
{
    kn_generator *g = kn_generator_new(seed);
    kn_conv2d_args pad1 = {.stride = {1, 1}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    kn_pool2d_args pool = {.kernel_size = {2, 2}};
    kn_module *m = kn_sequential_new();
    kn_sequential_append(m, kn_conv2d_new(1, 16, (const int[]){3, 3}, pad1, true, g));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_max_pool2d_new(pool));
    kn_sequential_append(m, kn_conv2d_new(16, 32, (const int[]){3, 3}, pad1, true, g));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_max_pool2d_new(pool));
    kn_sequential_append(m, kn_flatten_new(1, -1));
    kn_sequential_append(m, kn_linear_new(32 * 7 * 7, 128, true, g));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_linear_new(128, 10, true, g));
    kn_generator_free(g);
    return m;
}

/* count synthetic 28x28 images in [0, 1) with labels 0..9 (the caller frees it). */
static kn_dataset *fmnist_like(int64_t count, uint64_t seed)
{
    kn_scope_begin();
    kn_generator *g = kn_generator_new(seed);
    kn_tensor *x = kn_rand(KN_SHAPE(count, 1, 28, 28), g);
    kn_tensor *y = kn_empty(KN_SHAPE(count), KN_INT64);
    for (int64_t i = 0; i < count; i++) kn_data_i64(y)[i] = (i * 7 + 3) % 10;
    kn_generator_free(g);
    kn_dataset *ds = kn_dataset_new(x, y);
    cr_assert_not_null(ds, "%s", kn_last_error());
    kn_scope_end();
    return ds;
}

/* ---- a run ------------------------------------------------------------------------------- */

typedef struct run_log {
    int64_t steps;
    double loss[MAX_STEPS_LOGGED];
    kn_alloc_stats at_step[2]; /* device memory at steps 100 and the last */
    int64_t watch_from, last;
} run_log;

static kn_status log_step(void *context, const kn_step_info *info)
{
    run_log *log = context;
    if (info->step <= MAX_STEPS_LOGGED) log->loss[info->step - 1] = info->loss;
    log->steps = info->step;
    if (log->watch_from > 0 && (info->step == log->watch_from || info->step == log->last)) {
        kn_status st = kn_cuda_synchronize(0);
        if (st == KN_OK)
            st = kn_cuda_get_alloc_stats(0, &log->at_step[info->step == log->watch_from ? 0 : 1]);
        return st;
    }
    return KN_OK;
}

/* Trains model (already on its device) on ds with config c; fills log and summary. */
static void run(kn_module *model, const kn_dataset *ds, const kn_train_config *c, run_log *log,
                kn_train_summary *summary)
{
    kn_trainer *t = kn_trainer_new(model, c);
    cr_assert_not_null(t, "%s", kn_last_error());
    kn_train_callbacks cb = {.context = log, .on_step = log_step};
    kn_status st = kn_trainer_run(t, ds, NULL, &cb, summary);
    cr_assert_eq(st, KN_OK, "%s", kn_last_error());
    kn_trainer_free(t);
}

/* Every parameter of a within rtol of b's (both copied to the cpu). */
static void assert_same_parameters(kn_module *a, kn_module *b, double rtol)
{
    int na = 0, nb = 0;
    kn_named_tensor *pa = kn_module_parameters(a, &na), *pb = kn_module_parameters(b, &nb);
    cr_assert_eq(na, nb);
    kn_scope_begin();
    for (int i = 0; i < na; i++) {
        kn_tensor *x = kn_contiguous(kn_to(pa[i].tensor, kn_cpu()));
        kn_tensor *y = kn_contiguous(kn_to(pb[i].tensor, kn_cpu()));
        cr_assert(x && y, "%s: %s", pa[i].name, kn_last_error());
        const float *u = kn_data_f32(x), *v = kn_data_f32(y);
        for (int64_t j = 0; j < kn_numel(x); j++)
            cr_assert(fabs((double)u[j] - (double)v[j]) <= rtol * fabs((double)u[j]) + 1e-7,
                      "%s[%lld]: %.9g (graph) vs %.9g (eager)", pa[i].name, (long long)j, u[j],
                      v[j]);
    }
    kn_scope_end();
    free(pa);
    free(pb);
}

static void assert_same_losses(const run_log *graph, const run_log *eager, double rtol)
{
    cr_assert_eq(graph->steps, eager->steps);
    for (int64_t i = 0; i < graph->steps && i < MAX_STEPS_LOGGED; i++)
        cr_assert(fabs(graph->loss[i] - eager->loss[i]) <= rtol * fabs(eager->loss[i]),
                  "step %lld: loss %.9g (graph) vs %.9g (eager)", (long long)i + 1, graph->loss[i],
                  eager->loss[i]);
}

/* The same recipe with the graph on and off, from the same initial weights: the same
 * losses and parameters, and the graph replayed (*graph_steps of them). */
static void graph_matches_eager(kn_module *(*make)(uint64_t), const kn_dataset *ds,
                                kn_train_config c, int64_t *graph_steps)
{
    kn_module *on = make(7), *off = make(7);
    cr_assert_eq(kn_module_to(on, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_module_to(off, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    static run_log log_on, log_off;
    memset(&log_on, 0, sizeof log_on);
    memset(&log_off, 0, sizeof log_off);
    kn_train_summary s_on, s_off;
    c.cuda_graph = true;
    run(on, ds, &c, &log_on, &s_on);
    c.cuda_graph = false;
    run(off, ds, &c, &log_off, &s_off);
    cr_assert_eq(s_off.graph_steps, 0);
    cr_assert(strstr(s_on.cuda_note, "captured"), "%s", s_on.cuda_note);
    cr_assert_gt(s_on.graph_steps, 0, "%s", s_on.cuda_note);
    assert_same_losses(&log_on, &log_off, 1e-5);
    assert_same_parameters(on, off, 1e-5);
    *graph_steps = s_on.graph_steps;
    kn_module_free(on);
    kn_module_free(off);
}

/* ---- with a device ---------------------------------------------------------------------- */

/* 5 full batches of 64 and one of 17 per epoch: warm-up 2, capture at 3, replays after;
 * the partial batches run eagerly between replays. */
#define PARTIAL_COUNT (64 * 5 + 17)

Test(cuda_graph, mlp_adam_same_losses_and_parameters_with_a_partial_batch)
{
    kn_test_need_cuda();
    kn_dataset *ds = fmnist_like(PARTIAL_COUNT, 1);
    kn_train_config c = kn_train_config_defaults(); /* Adam 1e-3, batch 64, shuffle */
    c.epochs = 3;
    int64_t replays = 0;
    graph_matches_eager(mlp, ds, c, &replays);
    /* 3 epochs x 5 full batches, less the 2 warm-up steps */
    cr_assert_eq(replays, 3 * 5 - 2);
    kn_dataset_free(ds);
}

Test(cuda_graph, cnn_adam_same_losses_and_parameters_with_a_partial_batch)
{
    kn_test_need_cuda();
    kn_dataset *ds = fmnist_like(PARTIAL_COUNT, 2);
    kn_train_config c = kn_train_config_defaults();
    c.epochs = 2;
    int64_t replays = 0;
    graph_matches_eager(cnn, ds, c, &replays);
    cr_assert_eq(replays, 2 * 5 - 2);
    kn_dataset_free(ds);
}

Test(cuda_graph, sgd_momentum_with_a_step_schedule_and_clipping)
{
    kn_test_need_cuda();
    kn_dataset *ds = fmnist_like(PARTIAL_COUNT, 3);
    kn_train_config c = kn_train_config_defaults();
    c.optimizer = kn_optimizer_defaults(KN_OPTIM_SGD);
    c.optimizer.lr = 0.05;
    c.optimizer.momentum = 0.9;
    c.lr_schedule = kn_lr_schedule_defaults(KN_LR_STEP);
    c.lr_schedule.step_size = 4;
    c.lr_schedule.gamma = 0.5;
    c.epochs = 2;
    int64_t replays = 0;
    graph_matches_eager(mlp, ds, c, &replays);
    c.grad_clip_norm = 0.5; /* clipping reads the gradients after the replay */
    graph_matches_eager(cnn, ds, c, &replays);
    kn_dataset_free(ds);
}

Test(cuda_graph, device_memory_stays_flat_over_1000_replays)
{
    kn_test_need_cuda();
    kn_dataset *ds = fmnist_like(64 * 16, 4);
    kn_module *m = mlp(5);
    cr_assert_eq(kn_module_to(m, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    kn_train_config c = kn_train_config_defaults();
    c.cuda_graph = true;
    c.max_steps = 1100;
    static run_log log;
    memset(&log, 0, sizeof log);
    log.watch_from = 100;
    log.last = 1100;
    kn_train_summary s;
    run(m, ds, &c, &log, &s);
    cr_assert_eq(s.graph_steps, 1100 - 2, "%s", s.cuda_note);
    cr_assert_eq(log.at_step[1].bytes_in_use, log.at_step[0].bytes_in_use,
                 "%llu bytes in use at step 100, %llu at step 1100",
                 (unsigned long long)log.at_step[0].bytes_in_use,
                 (unsigned long long)log.at_step[1].bytes_in_use);
    cr_assert_eq(log.at_step[1].system_allocs, log.at_step[0].system_allocs,
                 "cudaMalloc was called between steps 100 and 1100");
    kn_module_free(m);
    kn_dataset_free(ds);
}

Test(cuda_graph, a_failed_capture_falls_back_to_eager_steps)
{
    kn_test_need_cuda();
    kn_dataset *ds = fmnist_like(PARTIAL_COUNT, 6);
    kn_train_config c = kn_train_config_defaults();
    c.epochs = 2;
    kn_module *on = mlp(8), *off = mlp(8);
    cr_assert_eq(kn_module_to(on, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_module_to(off, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    static run_log log_on, log_off;
    kn_train_summary s_on, s_off;
    kn__train_cuda_test_fail_capture = true;
    c.cuda_graph = true;
    run(on, ds, &c, &log_on, &s_on);
    kn__train_cuda_test_fail_capture = false;
    cr_assert_eq(s_on.graph_steps, 0);
    cr_assert(strstr(s_on.cuda_note, "capture failed") &&
                  strstr(s_on.cuda_note, "not allowed while a CUDA graph is captured"),
              "%s", s_on.cuda_note);
    c.cuda_graph = false;
    run(off, ds, &c, &log_off, &s_off);
    assert_same_losses(&log_on, &log_off, 1e-5);
    assert_same_parameters(on, off, 1e-5);
    /* the device is usable after the failed capture */
    cr_assert_eq(kn_cuda_synchronize(0), KN_OK, "%s", kn_last_error());
    kn_module_free(on);
    kn_module_free(off);
    kn_dataset_free(ds);
}

Test(cuda_graph, dropout_models_are_not_captured)
{
    kn_test_need_cuda();
    kn_dataset *ds = fmnist_like(64 * 4, 9);
    kn_generator *g = kn_generator_new(1);
    kn_module *m = kn_sequential_new();
    kn_sequential_append(m, kn_flatten_new(1, -1));
    kn_sequential_append(m, kn_linear_new(784, 32, true, g));
    kn_sequential_append(m, kn_dropout_new(0.5));
    kn_sequential_append(m, kn_linear_new(32, 10, true, g));
    kn_generator_free(g);
    cr_assert_eq(kn_module_to(m, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    kn_train_config c = kn_train_config_defaults();
    c.cuda_graph = true;
    static run_log log;
    kn_train_summary s;
    run(m, ds, &c, &log, &s);
    cr_assert_eq(s.graph_steps, 0);
    cr_assert(strstr(s.cuda_note, "Dropout"), "%s", s.cuda_note);
    kn_module_free(m);
    kn_dataset_free(ds);
}

/* ---- everywhere ----------------------------------------------------------------------------- */

Test(cuda_graph, the_cpu_ignores_cuda_graph)
{
    kn_dataset *ds = fmnist_like(64 * 3 + 5, 10);
    kn_module *on = mlp(11), *off = mlp(11);
    kn_train_config c = kn_train_config_defaults();
    c.max_steps = 6;
    static run_log log_on, log_off;
    kn_train_summary s_on, s_off;
    c.cuda_graph = true;
    run(on, ds, &c, &log_on, &s_on);
    c.cuda_graph = false;
    run(off, ds, &c, &log_off, &s_off);
    cr_assert_eq(s_on.graph_steps, 0);
    cr_assert_str_empty(s_on.cuda_note);
    assert_same_losses(&log_on, &log_off, 0);
    assert_same_parameters(on, off, 0);
    kn_module_free(on);
    kn_module_free(off);
    kn_dataset_free(ds);
}

Test(cuda_graph, job_spec_field)
{
    const char *base = "{\"model\": {\"input_shape\": [1, 28, 28], \"layers\": [{\"type\": "
                       "\"flatten\"}, {\"type\": \"linear\", \"out_features\": 10}]}, \"data\": "
                       "{\"dataset\": \"fmnist\"}%s}";
    const char *cases[] = {"", ", \"cuda_graph\": true", ", \"cuda_graph\": false"};
    const bool expect[] = {false, true, false};
    for (int i = 0; i < 3; i++) {
        char json[512];
        snprintf(json, sizeof json, base, cases[i]);
        kapi_errors errors = {0};
        kapi_job_spec *job =
            kapi_job_spec_parse(json, strlen(json), (kapi_job_parse_options){0}, &errors);
        cr_assert_not_null(job, "case %d: %s", i, kn_last_error());
        cr_assert_eq(job->train.cuda_graph, expect[i], "case %d", i);
        kapi_job_spec_free(job);
        kapi_errors_free(&errors);
    }
}

Test(cuda_graph, a_marked_capture_refuses_host_waits)
{
    kn_scope_begin();
    kn_tensor *x = kn_ones(KN_SHAPE(2), KN_FLOAT32);
    kn__cuda_capture_mark(true);
    cr_assert(kn__cuda_capturing());
    kn_tensor *moved = kn_to(x, kn_test_cuda0);
    kn_status sync = kn_cuda_synchronize(0);
    kn__cuda_capture_mark(false);
    cr_assert_null(moved);
    cr_assert_eq(sync, KN_ERR_DEVICE);
    cr_assert(strstr(kn_last_error(), "not allowed while a CUDA graph is captured"), "%s",
              kn_last_error());
    cr_assert_not(kn__cuda_capturing());
    /* the same tensor on the cpu is untouched by the mark */
    cr_assert_not_null(kn_to(x, kn_cpu()));
    kn_scope_end();
}

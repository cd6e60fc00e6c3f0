/*
 * job_memory.c — the per-job memory budget and the estimate a job is held to (see
 * job_memory.h for why). The estimate counts float32 tensors: parameters, gradients and
 * optimizer state, the activations one training step keeps for backward (or one
 * evaluation batch, if larger), and the training samples once loaded.
 */
#include "job_memory.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The first number in a file, or -1 (absent, "max", unreadable). */
static int64_t read_limit(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long long value = -1;
    if (fscanf(f, "%lld", &value) != 1) value = -1;
    fclose(f);
    return value;
}

int64_t ksrv_job_memory_limit(const ksrv_config *config)
{
    if (config->max_job_memory > 0) return (int64_t)config->max_job_memory;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    int64_t machine = pages > 0 && page > 0 ? (int64_t)pages * page : (int64_t)1 << 32;
    /* in a container the cgroup's limit is what the kernel enforces (v2, then v1; v1
     * says "unlimited" with a number near 2^63) */
    const char *cgroups[] = {"/sys/fs/cgroup/memory.max",
                             "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    for (size_t i = 0; i < sizeof cgroups / sizeof cgroups[0]; i++) {
        int64_t limit = read_limit(cgroups[i]);
        if (limit > 0 && limit < machine) machine = limit;
    }
    /* the rest: kilnd itself, its caches, the page cache, other jobs' peaks */
    return machine / 5 * 4;
}

static int64_t numel(const int64_t *shape, int ndim)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* Optimizer state tensors per parameter. */
static int64_t optimizer_states(const kn_optimizer_options *o)
{
    switch (o->kind) {
    case KN_OPTIM_ADAM:
    case KN_OPTIM_ADAMW:
        return o->amsgrad ? 3 : 2;
    case KN_OPTIM_RMSPROP:
        return 1 + (o->momentum > 0) + o->centered;
    default:
        return o->momentum > 0;
    }
}

/* An evaluation batch under no_grad keeps one layer's input and output at a time. */
static int64_t evaluation_activations(const kapi_model_spec *model, int64_t batch)
{
    int64_t in = numel(model->input_shape, model->input_ndim), widest = in;
    for (int i = 0; i < model->n_layers; i++) {
        int64_t out = numel(model->layers[i].out_shape, model->layers[i].out_ndim);
        if (out > widest) widest = out;
    }
    return 4 * batch * (in + 2 * widest);
}

ksrv_job_memory ksrv_job_memory_needed(const kapi_job_spec *job, const kapi_model_spec *model,
                                       int64_t train_samples, bool on_gpu)
{
    ksrv_job_memory need = {0};
    const kn_train_config *train = &job->train;
    int64_t parameters = 4 * model->parameter_count;
    if (on_gpu) {
        need.state = parameters; /* built here, then moved; the rest lives on the GPU */
    } else {
        need.state = parameters * (2 + optimizer_states(&train->optimizer));
        /* that estimate with SGD counts 3 copies of the parameters: the rest is activations */
        int64_t training =
            kapi_model_training_memory(model, train->batch_size, KN_OPTIM_SGD) - 3 * parameters;
        int64_t eval_batch = train->eval_batch_size > 0 ? train->eval_batch_size : 1000;
        int64_t evaluation = evaluation_activations(model, eval_batch);
        need.activations = training > evaluation ? training : evaluation;
    }
    if (train_samples > 0)
        need.data = 4 * train_samples * numel(model->input_shape, model->input_ndim);
    need.total = need.state + need.activations + need.data;
    return need;
}

/* bytes as "12.3 GiB", "456.7 MiB" or "89.0 KiB" */
static const char *human(int64_t bytes, char out[32])
{
    if (bytes >= (int64_t)1 << 30)
        snprintf(out, 32, "%.1f GiB", (double)bytes / (1 << 30));
    else if (bytes >= (int64_t)1 << 20)
        snprintf(out, 32, "%.1f MiB", (double)bytes / (1 << 20));
    else
        snprintf(out, 32, "%.1f KiB", (double)bytes / (1 << 10));
    return out;
}

bool ksrv_job_fits_memory(ksrv_job_memory need, int64_t limit, const kapi_job_spec *job,
                          char *message, size_t size, const char **path)
{
    if (need.total <= limit) return true;
    char total[32], state[32], activations[32], data[32], budget[32];
    char parts[256];
    int n = snprintf(parts, sizeof parts, "parameters, gradients and optimizer state %s",
                     human(need.state, state));
    if (need.activations > 0 && n > 0 && (size_t)n < sizeof parts)
        n += snprintf(parts + n, sizeof parts - (size_t)n,
                      ", activations at batch_size %" PRId64 " or in an evaluation batch %s",
                      job->train.batch_size, human(need.activations, activations));
    if (need.data > 0 && n > 0 && (size_t)n < sizeof parts)
        snprintf(parts + n, sizeof parts - (size_t)n, ", training data %s", human(need.data, data));
    snprintf(message, size,
             "the job needs about %s (%s) but a job may use %s on this server "
             "(--max-job-memory): use a smaller model or batch_size",
             human(need.total, total), parts, human(limit, budget));
    *path = need.state + need.data <= limit ? "batch_size" : "model";
    return false;
}

/*
 * ops_norm.c — kn_layer_norm and kn_batch_norm: shape checks, the fused forward through
 * kernels/cpu/norm.c (saving the statistics), the running-statistics update of batch
 * norm, and the fused analytic backward for input, weight and bias.
 *
 * On a CUDA device the same steps run in the module's kernels (kernels/cuda/norm.cu,
 * through the training table): batch norm's running statistics are updated on the
 * device, so a training step never waits for the GPU here.
 */
#include "kn_internal.h"
#include "kn_cuda.h"
#include "../kernels/cpu/kn_cpu_norm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A float32 vector for the CUDA module: data pointer and stride of dim 0 (NULL-safe). */
static kn_cuda_fvec fvec(kn_tensor *t)
{
    kn_cuda_fvec v = {NULL, 0};
    if (t) {
        v.ptr = kn__data_ptr(t);
        v.stride = t->ndim > 0 ? t->strides[0] : 0;
    }
    return v;
}

static bool is_cuda(const kn_tensor *t)
{
    return t->device.type == KN_DEVICE_CUDA;
}

static float *f32(kn_tensor *t)
{
    return t ? (float *)kn__data_ptr(t) : NULL;
}

static void release_all(kn_tensor **ts, int n)
{
    for (int i = 0; i < n; i++) kn_release(ts[i]);
}

/* ---- layer norm ------------------------------------------------------------------------- */

/* saved: x (contiguous), weight, mean, rstd; iargs: rows, cols */
static kn_status layer_norm_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *x = node->saved[0], *weight = node->saved[1];
    kn_tensor *mean = node->saved[2], *rstd = node->saved[3];
    int64_t rows = node->iargs[0], cols = node->iargs[1];
    kn_tensor *dy = kn__contiguous_raw(grad);
    kn_tensor *weight_d = weight ? kn__contiguous_raw(weight) : NULL;
    if (!dy || (weight && !weight_d)) {
        kn_release(dy);
        kn_release(weight_d);
        return kn_last_status();
    }
    kn_tensor *dx = NULL, *dw = NULL, *db = NULL;
    if (node->inputs[0].needs_grad) dx = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device);
    if (node->inputs[1].needs_grad)
        dw = kn__empty_raw(node->inputs[1].shape, node->inputs[1].ndim, KN_FLOAT32, x->device);
    if (node->inputs[2].needs_grad)
        db = kn__empty_raw(node->inputs[2].shape, node->inputs[2].ndim, KN_FLOAT32, x->device);
    bool failed = (node->inputs[0].needs_grad && !dx) || (node->inputs[1].needs_grad && !dw) ||
                  (node->inputs[2].needs_grad && !db);
    if (!failed && is_cuda(x)) {
        const kn_cuda_train *t = kn__cuda_train(x->device, "layer_norm backward");
        failed = !t || kn__cuda_error(t->layer_norm_backward(
                           x->device.index, f32(dy), f32(x), f32(mean), f32(rstd), f32(weight_d),
                           f32(dx), f32(dw), f32(db), rows, cols)) != KN_OK;
    } else if (!failed &&
               !kn_cpu_layer_norm_backward(f32(dy), f32(x), f32(mean), f32(rstd), f32(weight_d),
                                           f32(dx), f32(dw), f32(db), rows, cols)) {
        failed = true;
        kn__error(KN_ERR_MEMORY, "layer_norm backward: out of memory for the per-block sums");
    }
    kn_release(dy);
    kn_release(weight_d);
    if (failed) {
        kn_tensor *all[3] = {dx, dw, db};
        release_all(all, 3);
        return kn_last_status();
    }
    grads[0] = kn__result(dx);
    grads[1] = kn__result(dw);
    grads[2] = kn__result(db);
    return KN_OK;
}

static bool check_param(const char *op, const char *what, const kn_tensor *p, const int64_t *shape,
                        int ndim, const kn_tensor *x)
{
    if (!p) return true;
    if (!kn__check_float(op, p)) return false;
    bool same = p->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = p->shape[d] == shape[d];
    if (!same)
        kn__error(KN_ERR_SHAPE,
                  "%s: %s of shape %s does not match the expected shape %s (input %s)", op, what,
                  kn__shape(p), kn__shape_of(shape, ndim), kn__shape(x));
    return same;
}

kn_tensor *kn_layer_norm(kn_tensor *x, int normalized_ndim, kn_tensor *weight, kn_tensor *bias,
                         double eps)
{
    kn_tensor *present[3] = {x};
    int count = 1;
    if (weight) present[count++] = weight;
    if (bias) present[count++] = bias;
    if (!kn__check_inputs("layer_norm", present, count) || !kn__check_float("layer_norm", x))
        return NULL;
    const kn_cuda_train *cuda = NULL;
    if (is_cuda(x) && !(cuda = kn__cuda_train(x->device, "layer_norm"))) return NULL;
    if (normalized_ndim < 1 || normalized_ndim > x->ndim)
        return kn__error_null(KN_ERR_DIM,
                              "layer_norm: normalized_ndim %d is out of range for input of shape "
                              "%s (expected 1..%d)",
                              normalized_ndim, kn__shape(x), x->ndim);
    const int64_t *norm_shape = x->shape + (x->ndim - normalized_ndim);
    if (!check_param("layer_norm", "weight", weight, norm_shape, normalized_ndim, x) ||
        !check_param("layer_norm", "bias", bias, norm_shape, normalized_ndim, x))
        return NULL;
    int64_t cols = 1;
    for (int d = 0; d < normalized_ndim; d++) cols *= norm_shape[d];
    int64_t rows = cols ? kn_numel(x) / cols : 0;

    kn_tensor *xd = kn__contiguous_raw(x);
    kn_tensor *wd = weight ? kn__contiguous_raw(weight) : NULL;
    kn_tensor *bd = bias ? kn__contiguous_raw(bias) : NULL;
    kn_tensor *out = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device);
    kn_tensor *mean = kn__empty_raw(&rows, 1, KN_FLOAT32, x->device);
    kn_tensor *rstd = kn__empty_raw(&rows, 1, KN_FLOAT32, x->device);
    kn_tensor *all[6] = {xd, wd, bd, out, mean, rstd};
    if (!xd || (weight && !wd) || (bias && !bd) || !out || !mean || !rstd) {
        release_all(all, 6);
        return NULL;
    }
    if (cols > 0 && cuda) {
        if (kn__cuda_error(cuda->layer_norm_forward(x->device.index, f32(xd), f32(wd), f32(bd),
                                                    f32(out), f32(mean), f32(rstd), rows, cols,
                                                    (float)eps)) != KN_OK) {
            release_all(all, 6);
            return NULL;
        }
    } else if (cols > 0) {
        kn_cpu_layer_norm_forward(f32(xd), f32(wd), f32(bd), f32(out), f32(mean), f32(rstd), rows,
                                  cols, (float)eps);
    }
    kn_tensor *inputs[3] = {x, weight, bias};
    if (kn__needs_grad(inputs, 3)) {
        kn_node *node = kn__node_new("layer_norm", layer_norm_backward, inputs, 3);
        if (!node) {
            release_all(all, 6);
            return NULL;
        }
        kn__node_save(node, xd);
        kn__node_save(node, weight);
        kn__node_save(node, mean);
        kn__node_save(node, rstd);
        node->iargs[0] = rows;
        node->iargs[1] = cols;
        kn__node_attach(out, node);
    }
    all[3] = NULL; /* out is the result */
    release_all(all, 6);
    return kn__result(out);
}

/* ---- batch norm ------------------------------------------------------------------------- */

typedef struct bn_dims {
    int64_t n, c, s;
} bn_dims;

/* Synchronised batch norm (kn__set_bn_sync): the statistics of the global batch. */
static _Thread_local const kn__bn_sync *bn_sync;

void kn__set_bn_sync(const kn__bn_sync *sync)
{
    bn_sync = sync;
}

/* saved: x (contiguous), weight, mean, rstd (per channel: batch stats when training,
 * running stats in eval); iargs: n, c, s, training */
static kn_status batch_norm_backward_cuda(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *x = node->saved[0], *weight = node->saved[1];
    int64_t n = node->iargs[0], c = node->iargs[1], s = node->iargs[2];
    int64_t shape[1] = {c};
    const kn_cuda_train *t = kn__cuda_train(x->device, "batch_norm backward");
    if (!t) return kn_last_status();
    kn_tensor *dy = kn__contiguous_raw(grad);
    kn_tensor *dx =
        node->inputs[0].needs_grad ? kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device) : NULL;
    kn_tensor *dw =
        node->inputs[1].needs_grad ? kn__empty_raw(shape, 1, KN_FLOAT32, x->device) : NULL;
    kn_tensor *db =
        node->inputs[2].needs_grad ? kn__empty_raw(shape, 1, KN_FLOAT32, x->device) : NULL;
    kn_status status = KN_OK;
    if (!dy || (node->inputs[0].needs_grad && !dx) || (node->inputs[1].needs_grad && !dw) ||
        (node->inputs[2].needs_grad && !db))
        status = kn_last_status();
    else
        status = kn__cuda_error(t->batch_norm_backward(
            x->device.index, f32(dy), f32(x), f32(node->saved[2]), f32(node->saved[3]),
            fvec(weight), n, c, s, node->iargs[3] != 0, f32(dx), f32(dw), f32(db)));
    kn_release(dy);
    if (status != KN_OK) {
        kn_tensor *all[3] = {dx, dw, db};
        release_all(all, 3);
        return status;
    }
    grads[0] = kn__result(dx);
    grads[1] = kn__result(dw);
    grads[2] = kn__result(db);
    return KN_OK;
}

static kn_status batch_norm_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    if (is_cuda(node->saved[0])) return batch_norm_backward_cuda(node, grad, grads);
    kn_tensor *x = node->saved[0], *weight = node->saved[1];
    const float *mean = f32(node->saved[2]), *rstd = f32(node->saved[3]);
    int64_t n = node->iargs[0], c = node->iargs[1], s = node->iargs[2];
    bool training = node->iargs[3] != 0;
    kn_tensor *dy = kn__contiguous_raw(grad);
    double *sums = malloc(sizeof(double) * 2 * (size_t)(c ? c : 1));
    float *coef = malloc(sizeof(float) * 3 * (size_t)(c ? c : 1));
    kn_tensor *dx = NULL, *dw = NULL, *db = NULL;
    kn_status status = KN_OK;
    if (!dy || !sums || !coef) {
        status =
            dy ? kn__error(KN_ERR_MEMORY, "batch_norm backward: out of memory") : kn_last_status();
        goto done;
    }
    double *sum_dy = sums, *sum_dyx = sums + c;
    if (n * s > 0)
        kn_cpu_batch_norm_grad_sums(f32(dy), f32(x), mean, n, c, s, sum_dy, sum_dyx);
    else
        for (int64_t ch = 0; ch < 2 * c; ch++) sums[ch] = 0;
    /* synchronised statistics (iargs[4]: the global count) came from every rank's batch */
    int64_t global_count = node->iargs[4];
    if (global_count > 0 && !bn_sync) {
        status = kn__error(KN_ERR_VALUE, "batch_norm backward: its statistics were synchronised "
                                         "over the ranks, but no distributed run is active");
        goto done;
    }
    if (node->inputs[1].needs_grad || node->inputs[2].needs_grad) {
        int64_t shape[1] = {c};
        dw = node->inputs[1].needs_grad ? kn__empty_raw(shape, 1, KN_FLOAT32, x->device) : NULL;
        db = node->inputs[2].needs_grad ? kn__empty_raw(shape, 1, KN_FLOAT32, x->device) : NULL;
        if ((node->inputs[1].needs_grad && !dw) || (node->inputs[2].needs_grad && !db)) {
            status = kn_last_status();
            goto done;
        }
        /* this rank's share: the ranks' gradients are averaged afterwards, as every
         * parameter's are (SyncBatchNorm does the same) */
        for (int64_t ch = 0; ch < c; ch++) {
            if (dw) f32(dw)[ch] = (float)(sum_dyx[ch] * rstd[ch]);
            if (db) f32(db)[ch] = (float)sum_dy[ch];
        }
    }
    if (global_count > 0 && node->inputs[0].needs_grad &&
        (status = bn_sync->grad_sums(bn_sync->context, c, sum_dy, sum_dyx)) != KN_OK)
        goto done;
    if (node->inputs[0].needs_grad) {
        dx = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device);
        if (!dx) {
            status = kn_last_status();
            goto done;
        }
        /* dx = p*dy + q*(x-mean) + r per channel. Training: the batch statistics depend on
         * x, so dx = w*rstd*(dy - mean(dy) - (x-mean)*rstd^2*mean(dy*(x-mean)));
         * eval: w*rstd*dy. */
        float *p = coef, *q = coef + c, *r = coef + 2 * c;
        const float *w = weight ? f32(weight) : NULL;
        int64_t wstride = weight ? weight->strides[0] : 0;
        double count = global_count > 0 ? (double)global_count : (double)(n * s);
        for (int64_t ch = 0; ch < c; ch++) {
            double scale = (w ? w[ch * wstride] : 1.0) * rstd[ch];
            p[ch] = (float)scale;
            q[ch] = training ? (float)(-scale * rstd[ch] * rstd[ch] * sum_dyx[ch] / count) : 0.f;
            r[ch] = training ? (float)(-scale * sum_dy[ch] / count) : 0.f;
        }
        if (n * s > 0)
            kn_cpu_batch_norm_affine(f32(dy), training ? f32(x) : NULL, p, q, mean, r, f32(dx), n,
                                     c, s);
    }
done:
    kn_release(dy);
    free(sums);
    free(coef);
    if (status != KN_OK) {
        kn_tensor *all[3] = {dx, dw, db};
        release_all(all, 3);
        return status;
    }
    grads[0] = kn__result(dx);
    grads[1] = kn__result(dw);
    grads[2] = kn__result(db);
    return KN_OK;
}

static bool check_channel_vector(const char *what, const kn_tensor *t, const kn_tensor *x)
{
    if (!t) return true;
    if (!kn__check_float("batch_norm", t)) return false;
    if (t->ndim == 1 && t->shape[0] == x->shape[1]) return true;
    kn__error(KN_ERR_SHAPE,
              "batch_norm: %s of shape %s does not match the %lld channels of input %s "
              "(expected [%lld])",
              what, kn__shape(t), (long long)x->shape[1], kn__shape(x), (long long)x->shape[1]);
    return false;
}

/* running = (1 - momentum) * running + momentum * batch, the variance unbiased (over
 * count values: the batch's, or the global batch's when synchronised). */
static void update_running(kn_tensor *running_mean, kn_tensor *running_var, const double *mean,
                           const double *var, bn_dims dims, double count, double momentum)
{
    double unbias = count > 1 ? count / (count - 1) : NAN;
    if (running_mean) {
        float *rm = f32(running_mean);
        for (int64_t ch = 0; ch < dims.c; ch++) {
            float *slot = rm + ch * running_mean->strides[0];
            *slot = (float)((1 - momentum) * *slot + momentum * mean[ch]);
        }
    }
    if (running_var) {
        float *rv = f32(running_var);
        for (int64_t ch = 0; ch < dims.c; ch++) {
            float *slot = rv + ch * running_var->strides[0];
            *slot = (float)((1 - momentum) * *slot + momentum * var[ch] * unbias);
        }
    }
}

/* The history of out = all[1] (all: xd, out, mean_t, rstd_t, released here). */
static kn_tensor *batch_norm_finish(kn_tensor *x, kn_tensor *weight, kn_tensor *bias, bool training,
                                    bn_dims dims, int64_t global_count, kn_tensor **all)
{
    kn_tensor *out = all[1];
    kn_tensor *inputs[3] = {x, weight, bias};
    if (kn__needs_grad(inputs, 3)) {
        kn_node *node = kn__node_new("batch_norm", batch_norm_backward, inputs, 3);
        if (!node) {
            release_all(all, 4);
            return NULL;
        }
        kn__node_save(node, all[0]);
        kn__node_save(node, weight);
        kn__node_save(node, all[2]);
        kn__node_save(node, all[3]);
        node->iargs[0] = dims.n;
        node->iargs[1] = dims.c;
        node->iargs[2] = dims.s;
        node->iargs[3] = training;
        node->iargs[4] = global_count; /* 0: this rank's batch alone */
        kn__node_attach(out, node);
    }
    all[1] = NULL; /* out is the result */
    release_all(all, 4);
    return kn__result(out);
}

/* kn_batch_norm on a CUDA device, the inputs checked: statistics, output and the running
 * statistics' update all in the module. */
static kn_tensor *batch_norm_cuda(const kn_cuda_train *cuda, kn_tensor *x, kn_tensor *running_mean,
                                  kn_tensor *running_var, kn_tensor *weight, kn_tensor *bias,
                                  bool training, double momentum, double eps, bn_dims dims)
{
    int64_t cshape[1] = {dims.c};
    kn_tensor *all[4] = {kn__contiguous_raw(x),
                         kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device),
                         kn__empty_raw(cshape, 1, KN_FLOAT32, x->device),
                         kn__empty_raw(cshape, 1, KN_FLOAT32, x->device)};
    if (!all[0] || !all[1] || !all[2] || !all[3] ||
        kn__cuda_error(cuda->batch_norm_forward(x->device.index, f32(all[0]), dims.n, dims.c,
                                                dims.s, training, momentum, eps, fvec(running_mean),
                                                fvec(running_var), fvec(weight), fvec(bias),
                                                f32(all[1]), f32(all[2]), f32(all[3]))) != KN_OK) {
        release_all(all, 4);
        return NULL;
    }
    return batch_norm_finish(x, weight, bias, training, dims, 0, all);
}

kn_tensor *kn_batch_norm(kn_tensor *x, kn_tensor *running_mean, kn_tensor *running_var,
                         kn_tensor *weight, kn_tensor *bias, bool training, double momentum,
                         double eps)
{
    kn_tensor *optional[4] = {running_mean, running_var, weight, bias};
    kn_tensor *present[5] = {x};
    int count = 1;
    for (int i = 0; i < 4; i++)
        if (optional[i]) present[count++] = optional[i];
    if (!kn__check_inputs("batch_norm", present, count) || !kn__check_float("batch_norm", x))
        return NULL;
    const kn_cuda_train *cuda = NULL;
    if (is_cuda(x) && !(cuda = kn__cuda_train(x->device, "batch_norm"))) return NULL;
    if (x->ndim < 2)
        return kn__error_null(KN_ERR_SHAPE,
                              "batch_norm: expected an input of shape [N, C, ...] with at least 2 "
                              "dims, got %s",
                              kn__shape(x));
    if (!check_channel_vector("running_mean", running_mean, x) ||
        !check_channel_vector("running_var", running_var, x) ||
        !check_channel_vector("weight", weight, x) || !check_channel_vector("bias", bias, x))
        return NULL;
    bn_dims dims = {x->shape[0], x->shape[1], 1};
    for (int d = 2; d < x->ndim; d++) dims.s *= x->shape[d];
    if (training && dims.n * dims.s == 1)
        return kn__error_null(KN_ERR_VALUE,
                              "batch_norm: Expected more than 1 value per channel when training, "
                              "got input size %s",
                              kn__shape(x));
    if (!training && (!running_mean || !running_var))
        return kn__error_null(KN_ERR_VALUE,
                              "batch_norm: running_mean and running_var must be given in "
                              "evaluation mode (input %s)",
                              kn__shape(x));

    if (cuda && training && bn_sync)
        return kn__error_null(KN_ERR_DEVICE,
                              "batch_norm: sync_batch_norm runs on the cpu only in this version "
                              "(input on a CUDA device); turn it off to keep per-rank statistics");
    if (cuda)
        return batch_norm_cuda(cuda, x, running_mean, running_var, weight, bias, training, momentum,
                               eps, dims);
    int64_t c = dims.c;
    int64_t cshape[1] = {c};
    kn_tensor *xd = kn__contiguous_raw(x);
    kn_tensor *out = kn__empty_raw(x->shape, x->ndim, KN_FLOAT32, x->device);
    kn_tensor *mean_t = kn__empty_raw(cshape, 1, KN_FLOAT32, x->device);
    kn_tensor *rstd_t = kn__empty_raw(cshape, 1, KN_FLOAT32, x->device);
    double *stats = malloc(sizeof(double) * 2 * (size_t)(c ? c : 1));
    float *coef = malloc(sizeof(float) * 2 * (size_t)(c ? c : 1));
    kn_tensor *all[4] = {xd, out, mean_t, rstd_t};
    if (!xd || !out || !mean_t || !rstd_t || !stats || !coef) {
        if (xd && out && mean_t && rstd_t)
            kn__error(KN_ERR_MEMORY, "batch_norm: out of memory for input %s", kn__shape(x));
        release_all(all, 4);
        free(stats);
        free(coef);
        return NULL;
    }
    double *mean = stats, *var = stats + c;
    bool empty = dims.n * dims.s == 0;
    double values = (double)(dims.n * dims.s);
    int64_t global_count = 0;
    if (training) {
        if (!empty)
            kn_cpu_batch_norm_stats(f32(xd), dims.n, c, dims.s, mean, var);
        else
            for (int64_t ch = 0; ch < c; ch++) mean[ch] = var[ch] = NAN;
        if (bn_sync) { /* every rank's batch: the global mean and variance */
            if (bn_sync->stats(bn_sync->context, c, &values, mean, var) != KN_OK) {
                release_all(all, 4);
                free(stats);
                free(coef);
                return NULL;
            }
            global_count = (int64_t)values;
            empty = false;
        }
    } else {
        for (int64_t ch = 0; ch < c; ch++) {
            mean[ch] = f32(running_mean)[ch * running_mean->strides[0]];
            var[ch] = f32(running_var)[ch * running_var->strides[0]];
        }
    }
    /* y = scale * (x - mean) + b, scale = w * rstd */
    float *scale = coef, *shift = coef + c;
    for (int64_t ch = 0; ch < c; ch++) {
        double rs = 1.0 / sqrt(var[ch] + eps);
        double w = weight ? f32(weight)[ch * weight->strides[0]] : 1.0;
        double b = bias ? f32(bias)[ch * bias->strides[0]] : 0.0;
        f32(mean_t)[ch] = (float)mean[ch];
        f32(rstd_t)[ch] = (float)rs;
        scale[ch] = (float)(w * rs);
        shift[ch] = (float)b;
    }
    if (dims.n * dims.s > 0)
        kn_cpu_batch_norm_affine(NULL, f32(xd), NULL, scale, f32(mean_t), shift, f32(out), dims.n,
                                 c, dims.s);
    if (training && !empty)
        update_running(running_mean, running_var, mean, var, dims, values, momentum);
    free(stats);
    free(coef);

    return batch_norm_finish(x, weight, bias, training, dims, global_count, all);
}

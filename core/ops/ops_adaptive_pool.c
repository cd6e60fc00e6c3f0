/*
 * ops_adaptive_pool.c — kn_adaptive_avg_pool2d, forward and backward. Output cell i
 * covers input rows floor(i*H/oh) .. ceil((i+1)*H/oh) (exclusive), PyTorch's start/end
 * rule, so windows may overlap or differ in size when H is not a multiple of oh.
 * When they do not (H a multiple of oh and W of ow: the ResNet's 14x14 -> 7x7), the op is
 * avg_pool2d with kernel = stride = H/oh, W/ow, and runs as kernels/cpu/pool.c's, parallel
 * over planes: the same sums in the same order and the same divisor, so the same bits.
 * On a CUDA device the module's kernels (kernels/cuda/conv.cu) do the same.
 */
#include "kn_internal.h"
#include "kn_cuda.h"
#include "../kernels/cpu/kn_cpu_linalg.h"

#include <string.h>

/* PyTorch's start_index / end_index (aten/src/ATen/native/AdaptivePooling.h). */
static int64_t window_start(int64_t i, int64_t out, int64_t in)
{
    return (i * in) / out;
}

static int64_t window_end(int64_t i, int64_t out, int64_t in)
{
    return ((i + 1) * in + out - 1) / out;
}

typedef struct {
    int64_t planes, h, w, oh, ow;
} plane_dims;

/* Windows of one size that tile the plane: the average pool of that kernel and stride
 * into *g. */
static bool uniform_windows(const plane_dims *d, kn_cpu_pool_geometry *g)
{
    if (d->h % d->oh || d->w % d->ow) return false;
    int64_t kh = d->h / d->oh, kw = d->w / d->ow;
    *g = (kn_cpu_pool_geometry){.planes = d->planes,
                                .height = d->h,
                                .width = d->w,
                                .out_h = d->oh,
                                .out_w = d->ow,
                                .kernel_h = kh,
                                .kernel_w = kw,
                                .stride_h = kh,
                                .stride_w = kw,
                                .dilation_h = 1,
                                .dilation_w = 1};
    return true;
}

static void pool_forward(const plane_dims *d, const float *x, float *y)
{
    kn_cpu_pool_geometry g;
    if (uniform_windows(d, &g)) {
        kn_cpu_avg_pool2d(&g, x, y);
        return;
    }
    for (int64_t p = 0; p < d->planes; p++) {
        const float *xp = x + p * d->h * d->w;
        float *yp = y + p * d->oh * d->ow;
        for (int64_t i = 0; i < d->oh; i++) {
            int64_t h0 = window_start(i, d->oh, d->h), h1 = window_end(i, d->oh, d->h);
            for (int64_t j = 0; j < d->ow; j++) {
                int64_t w0 = window_start(j, d->ow, d->w), w1 = window_end(j, d->ow, d->w);
                float sum = 0.f;
                for (int64_t r = h0; r < h1; r++)
                    for (int64_t c = w0; c < w1; c++) sum += xp[r * d->w + c];
                yp[i * d->ow + j] = sum / (float)((h1 - h0) * (w1 - w0));
            }
        }
    }
}

/* Each output gradient is spread evenly over its window (windows may overlap). */
static void pool_backward(const plane_dims *d, const float *gy, float *gx)
{
    kn_cpu_pool_geometry g;
    if (uniform_windows(d, &g)) {
        kn_cpu_avg_pool2d_backward(&g, gy, gx);
        return;
    }
    if (d->planes * d->h * d->w == 0) return;
    memset(gx, 0, sizeof(float) * (size_t)(d->planes * d->h * d->w));
    for (int64_t p = 0; p < d->planes; p++) {
        float *gp = gx + p * d->h * d->w;
        const float *gyp = gy + p * d->oh * d->ow;
        for (int64_t i = 0; i < d->oh; i++) {
            int64_t h0 = window_start(i, d->oh, d->h), h1 = window_end(i, d->oh, d->h);
            for (int64_t j = 0; j < d->ow; j++) {
                int64_t w0 = window_start(j, d->ow, d->w), w1 = window_end(j, d->ow, d->w);
                float g = gyp[i * d->ow + j] / (float)((h1 - h0) * (w1 - w0));
                for (int64_t r = h0; r < h1; r++)
                    for (int64_t c = w0; c < w1; c++) gp[r * d->w + c] += g;
            }
        }
    }
}

static plane_dims dims_of(const int64_t *shape, int ndim, int64_t oh, int64_t ow)
{
    plane_dims d = {1, shape[ndim - 2], shape[ndim - 1], oh, ow};
    for (int i = 0; i < ndim - 2; i++) d.planes *= shape[i];
    return d;
}

/* iargs: output height, width */
static kn_status adaptive_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_node_input *in = &node->inputs[0];
    plane_dims d = dims_of(in->shape, in->ndim, node->iargs[0], node->iargs[1]);
    kn_tensor *gd = kn__result(kn__contiguous_raw(grad));
    kn_tensor *gx = kn__result(kn__empty_raw(in->shape, in->ndim, KN_FLOAT32, grad->device));
    if (!gd || !gx) return kn_last_status();
    if (grad->device.type != KN_DEVICE_CPU) {
        const kn_cuda_conv_backend *be =
            kn__cuda_conv(grad->device, "adaptive_avg_pool2d backward");
        if (!be) return kn_last_status();
        kn_status status = kn__cuda_error(
            be->adaptive_avg_pool2d_backward(grad->device.index, d.planes, d.h, d.w, d.oh, d.ow,
                                             kn__data_ptr(gd), kn__data_ptr(gx)));
        if (status != KN_OK) return status;
    } else {
        pool_backward(&d, kn__data_ptr(gd), kn__data_ptr(gx));
    }
    grads[0] = gx;
    return KN_OK;
}

kn_tensor *kn_adaptive_avg_pool2d(kn_tensor *x, int output_height, int output_width)
{
    if (!kn__check_inputs("adaptive_avg_pool2d", &x, 1) ||
        !kn__check_float("adaptive_avg_pool2d", x))
        return NULL;
    if (x->ndim != 3 && x->ndim != 4)
        return kn__error_null(KN_ERR_SHAPE,
                              "adaptive_avg_pool2d: expected a 3-D [C, H, W] or 4-D [N, C, H, W] "
                              "input, got %s",
                              kn__shape(x));
    for (int d = 1; d < x->ndim; d++)
        if (x->shape[d] == 0)
            return kn__error_null(KN_ERR_SHAPE,
                                  "adaptive_avg_pool2d: expected non-zero sizes for the non-batch "
                                  "dims, got input %s",
                                  kn__shape(x));
    if (output_height <= 0 || output_width <= 0)
        return kn__error_null(KN_ERR_VALUE,
                              "adaptive_avg_pool2d: output size must be positive, got (%d, %d)",
                              output_height, output_width);

    int64_t shape[4];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[x->ndim - 2] = output_height;
    shape[x->ndim - 1] = output_width;
    plane_dims d = dims_of(x->shape, x->ndim, output_height, output_width);
    bool on_cuda = x->device.type != KN_DEVICE_CPU;
    const kn_cuda_conv_backend *be =
        on_cuda ? kn__cuda_conv(x->device, "adaptive_avg_pool2d") : NULL;
    if (on_cuda && !be) return NULL;
    kn_tensor *xd = kn__contiguous_raw(x);
    kn_tensor *out = kn__empty_raw(shape, x->ndim, KN_FLOAT32, x->device);
    bool ok = xd && out;
    if (ok && on_cuda)
        ok = kn__cuda_error(be->adaptive_avg_pool2d(x->device.index, d.planes, d.h, d.w, d.oh, d.ow,
                                                    kn__data_ptr(xd), kn__data_ptr(out))) == KN_OK;
    else if (ok && kn_numel(out) > 0)
        pool_forward(&d, kn__data_ptr(xd), kn__data_ptr(out));
    kn_release(xd);
    if (!ok) {
        kn_release(out);
        return NULL;
    }
    if (kn__needs_grad(&x, 1)) {
        kn_node *node = kn__node_new("adaptive_avg_pool2d", adaptive_backward, &x, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        node->iargs[0] = output_height;
        node->iargs[1] = output_width;
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/*
 * ops_conv.c — kn_conv2d (with stride, padding, dilation and groups) and 2-D max /
 * average pooling, forward and backward: shapes, errors and autograd here, the
 * arithmetic in the kernels. On the CPU, kernels/cpu/conv.c picks the method per layer:
 * a direct convolution that reads the padded image in place of unfolded columns
 * (stride 1, dilation 1, one group: conv_direct.c), else im2col + GEMM image by image.
 *
 * max_pool2d with a 2x2 window and stride 2 (no padding, no clipped window) takes the
 * AVX-512 fast path of pool.c, which records each max as a byte (its place in the
 * window) in place of an int64 index; node->iargs[14] says which form was saved.
 *
 * On a CUDA device the same ops run on the module's kernels (kernels/cuda/conv.cu):
 * convolution unfolds chunks of images at once (at most CUDA_COL_BYTES of columns) and
 * runs one strided-batched cuBLAS GEMM per group; backward transposes the output
 * gradient to [O, images*L] so the weight gradient and the column gradient are one
 * GEMM per group and chunk. Pooling always keeps int64 indices there.
 */
#include "kn_internal.h"
#include "kn_cuda.h"
#include "../kernels/cpu/kn_cpu_linalg.h"

#include <string.h>

typedef struct conv_plan {
    kn_cpu_conv_geometry g;
    int64_t n, c, o, groups, cg, og, k, l; /* k = cg*kH*kW columns rows per group */
} conv_plan;

/* Sets the error and evaluates to false. */
#define FAIL(...) (kn__error(__VA_ARGS__), false)

static int or_default(int value, int fallback)
{
    return value ? value : fallback;
}

static bool conv_setup(kn_tensor *x, kn_tensor *w, kn_tensor *bias, kn_conv2d_args args,
                       conv_plan *p)
{
    if (x->ndim != 4)
        return FAIL(KN_ERR_SHAPE, "conv2d: expected a 4-D input [N, C, H, W], got %s",
                    kn__shape(x));
    if (w->ndim != 4)
        return FAIL(KN_ERR_SHAPE, "conv2d: expected a 4-D weight [O, C/groups, kH, kW], got %s",
                    kn__shape(w));
    int stride[2], pad[2], dil[2], groups = or_default(args.groups, 1);
    for (int i = 0; i < 2; i++) {
        stride[i] = or_default(args.stride[i], 1);
        dil[i] = or_default(args.dilation[i], 1);
        pad[i] = args.padding[i];
        if (stride[i] < 0 || dil[i] < 0 || pad[i] < 0)
            return FAIL(KN_ERR_VALUE,
                        "conv2d: stride (%d, %d), padding (%d, %d) and dilation (%d, %d) "
                        "must not be negative",
                        args.stride[0], args.stride[1], args.padding[0], args.padding[1],
                        args.dilation[0], args.dilation[1]);
    }
    if (groups < 0) return FAIL(KN_ERR_VALUE, "conv2d: groups must be positive, got %d", groups);
    int64_t c = x->shape[1], o = w->shape[0];
    if (c % groups || o % groups)
        return FAIL(KN_ERR_VALUE,
                    "conv2d: groups=%d must divide both the input channels (%lld, input "
                    "%s) and the output channels (%lld, weight %s)",
                    groups, (long long)c, kn__shape(x), (long long)o, kn__shape(w));
    if (w->shape[1] * groups != c)
        return FAIL(KN_ERR_SHAPE,
                    "conv2d: input %s has %lld channels but weight %s expects %lld "
                    "(%lld per group x groups=%d)",
                    kn__shape(x), (long long)c, kn__shape(w), (long long)(w->shape[1] * groups),
                    (long long)w->shape[1], groups);
    if (bias && (bias->ndim != 1 || bias->shape[0] != o))
        return FAIL(KN_ERR_SHAPE, "conv2d: bias %s does not match weight %s (expected [%lld])",
                    kn__shape(bias), kn__shape(w), (long long)o);
    kn_cpu_conv_geometry *g = &p->g;
    *g = (kn_cpu_conv_geometry){.channels = c,
                                .height = x->shape[2],
                                .width = x->shape[3],
                                .kernel_h = w->shape[2],
                                .kernel_w = w->shape[3],
                                .stride_h = stride[0],
                                .stride_w = stride[1],
                                .pad_h = pad[0],
                                .pad_w = pad[1],
                                .dilation_h = dil[0],
                                .dilation_w = dil[1]};
    int64_t eff_h = (g->kernel_h - 1) * dil[0] + 1, eff_w = (g->kernel_w - 1) * dil[1] + 1;
    int64_t in_h = g->height + 2 * pad[0], in_w = g->width + 2 * pad[1];
    if (eff_h > in_h || eff_w > in_w)
        return FAIL(KN_ERR_SHAPE,
                    "conv2d: kernel %lldx%lld (%lldx%lld with dilation) is larger than "
                    "the padded input %lldx%lld (input %s, padding (%d, %d))",
                    (long long)g->kernel_h, (long long)g->kernel_w, (long long)eff_h,
                    (long long)eff_w, (long long)in_h, (long long)in_w, kn__shape(x), pad[0],
                    pad[1]);
    g->out_h = (in_h - eff_h) / stride[0] + 1;
    g->out_w = (in_w - eff_w) / stride[1] + 1;
    p->n = x->shape[0];
    p->c = c;
    p->o = o;
    p->groups = groups;
    p->cg = c / groups;
    p->og = o / groups;
    p->k = p->cg * g->kernel_h * g->kernel_w;
    p->l = g->out_h * g->out_w;
    return true;
}

/* ---- convolution on the CPU: kernels/cpu/conv.c picks the method per layer ---------- */

static bool conv_forward(const conv_plan *p, const float *x, const float *w, const float *bias,
                         float *out, float *padded)
{
    if (kn_cpu_conv2d_forward(&p->g, p->n, p->o, p->groups, x, w, bias, out, padded)) return true;
    return FAIL(KN_ERR_MEMORY, "conv2d: out of memory for the convolution's work buffers");
}

static bool conv_backward_buffers(const conv_plan *p, const float *x, const float *padded,
                                  const float *w, const float *gout, float *gx, float *gw,
                                  float *gb)
{
    if (kn_cpu_conv2d_backward(&p->g, p->n, p->o, p->groups, x, padded, w, gout, gx, gw, gb))
        return true;
    return FAIL(KN_ERR_MEMORY, "conv2d backward: out of memory for the work buffers");
}

/* ---- convolution on a CUDA device ------------------------------------------------- */

#define CUDA_COL_BYTES ((size_t)256 << 20)

/* Images per chunk: as many as keep one column buffer within CUDA_COL_BYTES. */
static int64_t cuda_chunk(const conv_plan *p)
{
    int64_t per_image = p->c * p->g.kernel_h * p->g.kernel_w * p->l;
    int64_t chunk = (int64_t)(CUDA_COL_BYTES / sizeof(float)) / (per_image > 0 ? per_image : 1);
    if (chunk > p->n) chunk = p->n;
    return chunk > 0 ? chunk : 1;
}

/* A scratch float buffer on device (a tensor of the open scope), or NULL (error set). */
static float *cuda_scratch(kn_device device, int64_t floats)
{
    if (floats < 1) floats = 1;
    kn_tensor *t = kn__result(kn__empty_raw(&floats, 1, KN_FLOAT32, device));
    return t ? kn__data_ptr(t) : NULL;
}

static bool conv_forward_cuda(const conv_plan *p, kn_device dev, const float *x, const float *w,
                              const float *bias, float *out)
{
    const kn_cuda_conv_backend *be = kn__cuda_conv(dev, "conv2d");
    if (!be) return false;
    if (p->n == 0 || p->o == 0 || p->l == 0) return true;
    int64_t shape[3] = {p->n, p->o, p->l};
    if (bias) { /* out[n, o, :] = bias[o], then the GEMMs add to it */
        kn_cpu_operand o = {out, {p->o * p->l, p->l, 1}}, b = {(void *)bias, {0, 1, 0}};
        if (kn__kernel_copy(dev, shape, 3, sizeof(float), o, b) != KN_OK) return false;
    }
    int64_t chunk = cuda_chunk(p), rows = p->c * p->g.kernel_h * p->g.kernel_w;
    int64_t image = p->c * p->g.height * p->g.width;
    kn_scope_begin();
    float *col = cuda_scratch(dev, rows * chunk * p->l);
    bool ok = col != NULL;
    for (int64_t i0 = 0; ok && i0 < p->n; i0 += chunk) {
        int64_t count = p->n - i0 < chunk ? p->n - i0 : chunk, ld = count * p->l;
        ok = kn__cuda_error(be->im2col(dev.index, &p->g, x + i0 * image, count, col, ld)) == KN_OK;
        for (int64_t gi = 0; ok && gi < p->groups; gi++) /* out_g = W_g · col_g, per image */
            ok = kn__kernel_sgemm(dev, false, false, p->og, p->l, p->k, 1.f, w + gi * p->og * p->k,
                                  p->k, 0, col + gi * p->k * ld, ld, p->l, bias ? 1.f : 0.f,
                                  out + i0 * p->o * p->l + gi * p->og * p->l, p->l, p->o * p->l,
                                  count) == KN_OK;
    }
    kn_scope_end();
    return ok;
}

static bool cuda_zero(kn_device dev, float *p, int64_t n)
{
    float zero = 0.f;
    kn_cpu_operand dst = {p, {1}};
    return n <= 0 || kn__kernel_fill(dev, &n, 1, sizeof(float), dst, &zero) == KN_OK;
}

/* gx, gw and gb (each optional) from gout [N, O, L] (contiguous) on a CUDA device. */
static bool conv_backward_cuda(const conv_plan *p, kn_device dev, const float *x, const float *w,
                               kn_tensor *gout, float *gx, float *gw, float *gb)
{
    const kn_cuda_conv_backend *be = kn__cuda_conv(dev, "conv2d backward");
    if (!be) return false;
    int64_t rows = p->c * p->g.kernel_h * p->g.kernel_w, image = p->c * p->g.height * p->g.width;
    bool ok = true;
    kn_scope_begin();
    if (gb) { /* gb[o] = sum over n and l of gout[n, o, l] */
        int64_t ones[4] = {1, p->o, 1, 1};
        kn_tensor *sum = kn__device_sum_to_shape(gout, ones, 4); /* in the scope */
        kn_cpu_operand dst = {gb, {1}}, src = {sum ? kn__data_ptr(sum) : NULL, {1}};
        ok = sum && kn__kernel_copy(dev, &p->o, 1, sizeof(float), dst, src) == KN_OK;
    }
    bool empty = p->n == 0 || p->l == 0; /* no products: zero gradients */
    if (ok && gw && empty) ok = cuda_zero(dev, gw, p->o * p->k);
    if (ok && gx && empty) ok = cuda_zero(dev, gx, p->n * image);
    if (!ok || (!gx && !gw) || empty) {
        kn_scope_end();
        return ok;
    }
    const float *g = kn__data_ptr(gout);
    int64_t chunk = cuda_chunk(p);
    float *col = gw ? cuda_scratch(dev, rows * chunk * p->l) : NULL;
    float *dcol = gx ? cuda_scratch(dev, rows * chunk * p->l) : NULL;
    float *gt = cuda_scratch(dev, p->o * chunk * p->l);
    ok = (!gw || col) && (!gx || dcol) && gt;
    for (int64_t i0 = 0; ok && i0 < p->n; i0 += chunk) {
        int64_t count = p->n - i0 < chunk ? p->n - i0 : chunk, ld = count * p->l;
        /* gt[o, i*L + l] = gout[i0 + i, o, l] */
        int64_t shape[3] = {count, p->o, p->l};
        kn_cpu_operand dst = {gt, {p->l, ld, 1}};
        kn_cpu_operand src = {(void *)(g + i0 * p->o * p->l), {p->o * p->l, p->l, 1}};
        ok = kn__kernel_copy(dev, shape, 3, sizeof(float), dst, src) == KN_OK;
        if (ok && gw) { /* gW_g (+)= gt_g · col_gᵀ */
            ok = kn__cuda_error(be->im2col(dev.index, &p->g, x + i0 * image, count, col, ld)) ==
                 KN_OK;
            for (int64_t gi = 0; ok && gi < p->groups; gi++)
                ok = kn__kernel_sgemm(dev, false, true, p->og, p->k, ld, 1.f, gt + gi * p->og * ld,
                                      ld, 0, col + gi * p->k * ld, ld, 0, i0 == 0 ? 0.f : 1.f,
                                      gw + gi * p->og * p->k, p->k, 0, 1) == KN_OK;
        }
        if (ok && gx) { /* dcol_g = W_gᵀ · gt_g, folded back into the images */
            for (int64_t gi = 0; ok && gi < p->groups; gi++)
                ok = kn__kernel_sgemm(dev, true, false, p->k, ld, p->og, 1.f, w + gi * p->og * p->k,
                                      p->k, 0, gt + gi * p->og * ld, ld, 0, 0.f,
                                      dcol + gi * p->k * ld, ld, 0, 1) == KN_OK;
            if (ok)
                ok = kn__cuda_error(
                         be->col2im(dev.index, &p->g, dcol, ld, count, gx + i0 * image)) == KN_OK;
        }
    }
    kn_scope_end();
    return ok;
}

static void plan_to_node(const conv_plan *p, kn_node *node)
{
    const kn_cpu_conv_geometry *g = &p->g;
    int64_t values[] = {g->stride_h,   g->stride_w,   g->pad_h, g->pad_w,
                        g->dilation_h, g->dilation_w, p->groups};
    memcpy(node->iargs, values, sizeof values);
}

static kn_conv2d_args args_from_node(const kn_node *node)
{
    return (kn_conv2d_args){{(int)node->iargs[0], (int)node->iargs[1]},
                            {(int)node->iargs[2], (int)node->iargs[3]},
                            {(int)node->iargs[4], (int)node->iargs[5]},
                            (int)node->iargs[6]};
}

/* The forward's padded copy of x for the weight gradient (kernels/cpu/conv_direct.c
 * pads each image as it goes; keeping them spares the backward a second pass over x):
 * only on the CPU, for the direct kernels, when the weight needs a gradient, and only
 * as long as the graph keeps x. NULL when not wanted, or when there is no memory for it:
 * a saving, not a need (the backward then pads x itself), so the op goes on without. */
static kn_tensor *padded_copy(const conv_plan *p, kn_tensor *x, kn_tensor *w)
{
    if (x->device.type != KN_DEVICE_CPU || !kn_cpu_conv_direct_ok(&p->g, p->groups) || p->n < 1 ||
        !kn__needs_grad(&w, 1))
        return NULL;
    int64_t floats = p->n * kn_cpu_conv_direct_padded_floats(&p->g);
    kn_tensor *t = kn__empty_raw(&floats, 1, KN_FLOAT32, x->device);
    if (!t) kn_clear_error();
    return t;
}

/* grads of x, w (saved[0], saved[1]) and the bias input from the gradient of the
 * convolution's output; padded: the forward's padded x (NULL: none kept). */
static kn_status conv_grads(kn_node *node, kn_tensor *grad, kn_tensor *padded, kn_tensor **grads)
{
    kn_tensor *x = node->saved[0], *w = node->saved[1];
    conv_plan p;
    if (!conv_setup(x, w, NULL, args_from_node(node), &p)) return kn_last_status();
    bool need_x = node->inputs[0].needs_grad, need_w = node->inputs[1].needs_grad;
    bool need_b = node->n_inputs > 2 && node->inputs[2].needs_grad;
    kn_tensor *xd = kn__result(kn__contiguous_raw(x)), *wd = kn__result(kn__contiguous_raw(w));
    kn_tensor *gd = kn__result(kn__contiguous_raw(grad));
    if (!xd || !wd || !gd) return kn_last_status();
    kn_tensor *gx = need_x ? kn__result(kn__empty_raw(x->shape, 4, KN_FLOAT32, x->device)) : NULL;
    kn_tensor *gw = need_w ? kn__result(kn__empty_raw(w->shape, 4, KN_FLOAT32, w->device)) : NULL;
    kn_tensor *gb = need_b ? kn__result(kn__empty_raw(&p.o, 1, KN_FLOAT32, w->device)) : NULL;
    if ((need_x && !gx) || (need_w && !gw) || (need_b && !gb)) return kn_last_status();
    if (grad->device.type != KN_DEVICE_CPU) {
        if (!conv_backward_cuda(&p, grad->device, kn__data_ptr(xd), kn__data_ptr(wd), gd,
                                gx ? kn__data_ptr(gx) : NULL, gw ? kn__data_ptr(gw) : NULL,
                                gb ? kn__data_ptr(gb) : NULL))
            return kn_last_status();
    } else if (!conv_backward_buffers(&p, kn__data_ptr(xd), padded ? kn__data_ptr(padded) : NULL,
                                      kn__data_ptr(wd), kn__data_ptr(gd),
                                      gx ? kn__data_ptr(gx) : NULL, gw ? kn__data_ptr(gw) : NULL,
                                      gb ? kn__data_ptr(gb) : NULL))
        return kn_last_status();
    grads[0] = gx;
    grads[1] = gw;
    if (need_b) grads[2] = gb;
    return KN_OK;
}

static kn_status conv2d_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    return conv_grads(node, grad, node->saved[2], grads);
}

kn_tensor *kn_conv2d(kn_tensor *x, kn_tensor *weight, kn_tensor *bias, kn_conv2d_args args)
{
    kn_tensor *inputs[3] = {x, weight, bias};
    int n_inputs = bias ? 3 : 2;
    if (!kn__check_inputs("conv2d", inputs, n_inputs)) return NULL;
    if (!kn__check_float("conv2d", x) || !kn__check_float("conv2d", weight) ||
        (bias && !kn__check_float("conv2d", bias)))
        return NULL;
    conv_plan p;
    if (!conv_setup(x, weight, bias, args, &p)) return NULL;
    if (x->device.type != KN_DEVICE_CPU && !kn__cuda_conv(x->device, "conv2d")) return NULL;
    int64_t shape[4] = {p.n, p.o, p.g.out_h, p.g.out_w};
    kn_tensor *out = kn__empty_raw(shape, 4, KN_FLOAT32, x->device);
    kn_tensor *xd = kn__contiguous_raw(x), *wd = kn__contiguous_raw(weight);
    kn_tensor *bd = bias ? kn__contiguous_raw(bias) : NULL;
    kn_tensor *padded = padded_copy(&p, x, weight);
    bool ok = out && xd && wd && (!bias || bd);
    if (ok && x->device.type != KN_DEVICE_CPU)
        ok = conv_forward_cuda(&p, x->device, kn__data_ptr(xd), kn__data_ptr(wd),
                               bd ? kn__data_ptr(bd) : NULL, kn__data_ptr(out));
    else if (ok)
        ok = conv_forward(&p, kn__data_ptr(xd), kn__data_ptr(wd), bd ? kn__data_ptr(bd) : NULL,
                          kn__data_ptr(out), padded ? kn__data_ptr(padded) : NULL);
    kn_release(xd);
    kn_release(wd);
    kn_release(bd);
    bool grad = kn__needs_grad(inputs, n_inputs);
    kn_node *node = ok && grad ? kn__node_new("conv2d", conv2d_backward, inputs, n_inputs) : NULL;
    if (!ok || (grad && !node)) {
        kn_release(out);
        kn_release(padded);
        return NULL;
    }
    if (node) {
        plan_to_node(&p, node);
        kn__node_save(node, x);
        kn__node_save(node, weight);
        kn__node_save(node, padded); /* NULL when none was kept */
        kn__node_attach(out, node);
    }
    kn_release(padded);
    return kn__result(out);
}

/* ---- pooling --------------------------------------------------------------------- */

/* PyTorch's pooling_output_shape: floor (or ceil) division, and in ceil mode the last
 * window must start inside the input or left padding. */
static int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil,
                             bool ceil_mode)
{
    int64_t num = in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
    int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
    if (ceil_mode && (out - 1) * stride >= in + pad) out--;
    return out;
}

static bool pool_setup(const char *op, kn_tensor *x, kn_pool2d_args args, bool is_max,
                       kn_cpu_pool_geometry *g)
{
    if (x->ndim != 3 && x->ndim != 4)
        return FAIL(KN_ERR_SHAPE, "%s: expected a 3-D [C, H, W] or 4-D [N, C, H, W] input, got %s",
                    op, kn__shape(x));
    int k[2], s[2], pad[2], dil[2];
    for (int i = 0; i < 2; i++) {
        k[i] = args.kernel_size[i];
        s[i] = or_default(args.stride[i], k[i]);
        pad[i] = args.padding[i];
        dil[i] = is_max ? or_default(args.dilation[i], 1) : 1;
    }
    if (k[0] <= 0 || k[1] <= 0 || s[0] <= 0 || s[1] <= 0 || dil[0] <= 0 || dil[1] <= 0)
        return FAIL(KN_ERR_VALUE,
                    "%s: kernel_size (%d, %d), stride (%d, %d) and dilation (%d, %d) must be "
                    "positive",
                    op, k[0], k[1], s[0], s[1], dil[0], dil[1]);
    if (pad[0] < 0 || pad[1] < 0 || pad[0] > k[0] / 2 || pad[1] > k[1] / 2)
        return FAIL(KN_ERR_VALUE,
                    "%s: padding (%d, %d) must be between 0 and half the kernel size (%d, %d)", op,
                    pad[0], pad[1], k[0], k[1]);
    int64_t h = x->shape[x->ndim - 2], w = x->shape[x->ndim - 1];
    *g = (kn_cpu_pool_geometry){
        .planes = kn_numel(x) / (h * w > 0 ? h * w : 1),
        .height = h,
        .width = w,
        .out_h = pool_out_size(h, k[0], pad[0], s[0], dil[0], args.ceil_mode),
        .out_w = pool_out_size(w, k[1], pad[1], s[1], dil[1], args.ceil_mode),
        .kernel_h = k[0],
        .kernel_w = k[1],
        .stride_h = s[0],
        .stride_w = s[1],
        .pad_h = pad[0],
        .pad_w = pad[1],
        .dilation_h = dil[0],
        .dilation_w = dil[1],
        .exclude_padding = args.exclude_padding_from_count};
    if (g->out_h < 1 || g->out_w < 1)
        return FAIL(KN_ERR_SHAPE,
                    "%s: input %s is too small for kernel (%d, %d) with padding (%d, %d) and "
                    "dilation (%d, %d): output would be %lldx%lld",
                    op, kn__shape(x), k[0], k[1], pad[0], pad[1], dil[0], dil[1],
                    (long long)g->out_h, (long long)g->out_w);
    return true;
}

static void geometry_to_node(const kn_cpu_pool_geometry *g, kn_node *node)
{
    int64_t values[] = {g->planes,   g->height,     g->width,      g->out_h,          g->out_w,
                        g->kernel_h, g->kernel_w,   g->stride_h,   g->stride_w,       g->pad_h,
                        g->pad_w,    g->dilation_h, g->dilation_w, g->exclude_padding};
    memcpy(node->iargs, values, sizeof values);
}

static kn_cpu_pool_geometry geometry_from_node(const kn_node *node)
{
    const int64_t *v = node->iargs;
    return (kn_cpu_pool_geometry){v[0], v[1], v[2], v[3],  v[4],  v[5],  v[6],
                                  v[7], v[8], v[9], v[10], v[11], v[12], v[13] != 0};
}

static kn_tensor *pool_output(kn_tensor *x, const kn_cpu_pool_geometry *g, kn_dtype dtype)
{
    int64_t shape[4];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[x->ndim - 2] = g->out_h;
    shape[x->ndim - 1] = g->out_w;
    return kn__empty_raw(shape, x->ndim, dtype, x->device);
}

static kn_status max_pool2d_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_cpu_pool_geometry g = geometry_from_node(node);
    kn_node_input *in = &node->inputs[0];
    kn_tensor *gd = kn__result(kn__contiguous_raw(grad));
    kn_tensor *gx = kn__result(kn__empty_raw(in->shape, in->ndim, KN_FLOAT32, grad->device));
    if (!gd || !gx) return kn_last_status();
    if (grad->device.type != KN_DEVICE_CPU) {
        const kn_cuda_conv_backend *be = kn__cuda_conv(grad->device, "max_pool2d backward");
        if (!be) return kn_last_status();
        kn_status status =
            kn__cuda_error(be->max_pool2d_backward(grad->device.index, &g, kn__data_ptr(gd),
                                                   kn__data_ptr(node->saved[0]), kn__data_ptr(gx)));
        if (status != KN_OK) return status;
    } else if (node->iargs[14])
        kn_cpu_max_pool2d_2x2_backward(&g, kn__data_ptr(gd), kn__data_ptr(node->saved[0]),
                                       kn__data_ptr(gx));
    else
        kn_cpu_max_pool2d_backward(&g, kn__data_ptr(gd), kn__data_ptr(node->saved[0]),
                                   kn__data_ptr(gx));
    grads[0] = gx;
    return KN_OK;
}

kn_tensor *kn_max_pool2d(kn_tensor *x, kn_pool2d_args args)
{
    kn_cpu_pool_geometry g;
    if (!kn__check_inputs("max_pool2d", &x, 1) || !kn__check_float("max_pool2d", x) ||
        !pool_setup("max_pool2d", x, args, true, &g))
        return NULL;
    /* 2x2 stride 2 keeps each max's place in its window as one byte (packed eight to an
     * int64 element of a tensor only backward reads) rather than an int64 index. */
    bool on_cuda = x->device.type != KN_DEVICE_CPU;
    bool two_by_two = !on_cuda && kn_cpu_max_pool2d_is_2x2(&g);
    const kn_cuda_conv_backend *be = on_cuda ? kn__cuda_conv(x->device, "max_pool2d") : NULL;
    if (on_cuda && !be) return NULL; /* before any allocation: nothing to release */
    kn_tensor *xd = kn__contiguous_raw(x), *out = pool_output(x, &g, KN_FLOAT32);
    int64_t packed = (g.planes * g.out_h * g.out_w + 7) / 8;
    kn_tensor *indices =
        two_by_two ? kn__empty_raw(&packed, 1, KN_INT64, x->device) : pool_output(x, &g, KN_INT64);
    bool ok = xd && out && indices;
    if (ok && on_cuda)
        ok = kn__cuda_error(be->max_pool2d(x->device.index, &g, kn__data_ptr(xd), kn__data_ptr(out),
                                           kn__data_ptr(indices))) == KN_OK;
    else if (ok && two_by_two)
        kn_cpu_max_pool2d_2x2(&g, kn__data_ptr(xd), kn__data_ptr(out), kn__data_ptr(indices));
    else if (ok)
        kn_cpu_max_pool2d(&g, kn__data_ptr(xd), kn__data_ptr(out), kn__data_ptr(indices));
    kn_release(xd);
    if (!ok) {
        kn_release(out);
        kn_release(indices);
        return NULL;
    }
    if (kn__needs_grad(&x, 1)) {
        kn_node *node = kn__node_new("max_pool2d", max_pool2d_backward, &x, 1);
        if (!node) {
            kn_release(out);
            kn_release(indices);
            return NULL;
        }
        geometry_to_node(&g, node);
        node->iargs[14] = two_by_two;
        kn__node_save(node, indices);
        kn__node_attach(out, node);
    }
    kn_release(indices);
    return kn__result(out);
}

static kn_status avg_pool2d_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_cpu_pool_geometry g = geometry_from_node(node);
    kn_node_input *in = &node->inputs[0];
    kn_tensor *gd = kn__result(kn__contiguous_raw(grad));
    kn_tensor *gx = kn__result(kn__empty_raw(in->shape, in->ndim, KN_FLOAT32, grad->device));
    if (!gd || !gx) return kn_last_status();
    if (grad->device.type != KN_DEVICE_CPU) {
        const kn_cuda_conv_backend *be = kn__cuda_conv(grad->device, "avg_pool2d backward");
        if (!be) return kn_last_status();
        kn_status status = kn__cuda_error(
            be->avg_pool2d_backward(grad->device.index, &g, kn__data_ptr(gd), kn__data_ptr(gx)));
        if (status != KN_OK) return status;
    } else {
        kn_cpu_avg_pool2d_backward(&g, kn__data_ptr(gd), kn__data_ptr(gx));
    }
    grads[0] = gx;
    return KN_OK;
}

kn_tensor *kn_avg_pool2d(kn_tensor *x, kn_pool2d_args args)
{
    kn_cpu_pool_geometry g;
    if (!kn__check_inputs("avg_pool2d", &x, 1) || !kn__check_float("avg_pool2d", x) ||
        !pool_setup("avg_pool2d", x, args, false, &g))
        return NULL;
    bool on_cuda = x->device.type != KN_DEVICE_CPU;
    const kn_cuda_conv_backend *be = on_cuda ? kn__cuda_conv(x->device, "avg_pool2d") : NULL;
    if (on_cuda && !be) return NULL;
    kn_tensor *xd = kn__contiguous_raw(x), *out = pool_output(x, &g, KN_FLOAT32);
    bool ok = xd && out;
    if (ok && on_cuda)
        ok = kn__cuda_error(
                 be->avg_pool2d(x->device.index, &g, kn__data_ptr(xd), kn__data_ptr(out))) == KN_OK;
    else if (ok)
        kn_cpu_avg_pool2d(&g, kn__data_ptr(xd), kn__data_ptr(out));
    kn_release(xd);
    if (!ok) {
        kn_release(out);
        return NULL;
    }
    if (kn__needs_grad(&x, 1)) {
        kn_node *node = kn__node_new("avg_pool2d", avg_pool2d_backward, &x, 1);
        if (!node) {
            kn_release(out);
            return NULL;
        }
        geometry_to_node(&g, node);
        kn__node_attach(out, node);
    }
    return kn__result(out);
}

/* ---- conv2d, relu and a 2x2 max_pool2d as one op ----------------------------------------
 * A CNN's conv -> relu -> pool, fused where the convolution takes the direct kernels:
 * relu and the pool run on each image's sums while they are in the cache (the
 * epilogue of kernels/cpu/conv_direct.c), so neither the convolution's output nor the
 * relu's is ever written out. Values and gradients are bit for bit the three ops': the
 * same sums, kn_relu's expression, pool.c's 2x2 kernels. Backward: the pooled gradient
 * where the pooled output is > 0 (where relu passed it: relu's backward), spread to the
 * maxima by the 2x2 pool backward, then the convolution's backward. Without the pool,
 * conv -> relu alone saves the relu's pass and its output. */

/* The geometry of a 2x2, stride-2 max pool over planes of h x w with out_h x out_w out. */
static kn_cpu_pool_geometry two_by_two(int64_t planes, int64_t h, int64_t w, int64_t out_h,
                                       int64_t out_w)
{
    return (kn_cpu_pool_geometry){.planes = planes,
                                  .height = h,
                                  .width = w,
                                  .out_h = out_h,
                                  .out_w = out_w,
                                  .kernel_h = 2,
                                  .kernel_w = 2,
                                  .stride_h = 2,
                                  .stride_w = 2,
                                  .dilation_h = 1,
                                  .dilation_w = 1};
}

/* The 2x2 pool of kn_max_pool2d's fast path over [n, o, h, w], or false. */
static bool pool_2x2(const kn_pool2d_args *a, int64_t planes, int64_t h, int64_t w,
                     kn_cpu_pool_geometry *g)
{
    if (a->kernel_size[0] != 2 || a->kernel_size[1] != 2 || a->padding[0] || a->padding[1] ||
        or_default(a->stride[0], 2) != 2 || or_default(a->stride[1], 2) != 2 ||
        or_default(a->dilation[0], 1) != 1 || or_default(a->dilation[1], 1) != 1)
        return false;
    *g = two_by_two(planes, h, w, pool_out_size(h, 2, 0, 2, 1, a->ceil_mode),
                    pool_out_size(w, 2, 0, 2, 1, a->ceil_mode));
    return g->out_h >= 1 && g->out_w >= 1 && kn_cpu_max_pool2d_is_2x2(g);
}

/* Whether kn__conv2d_relu_pool runs fused for these inputs (else it runs the three ops);
 * sets no error. */
static bool fusable(kn_tensor *x, kn_tensor *w, kn_tensor *b, kn_conv2d_args args,
                    const kn_pool2d_args *pool, conv_plan *p, kn_cpu_pool_geometry *g)
{
    if (!x || !w || x->device.type != KN_DEVICE_CPU || w->device.type != KN_DEVICE_CPU ||
        x->dtype != KN_FLOAT32 || w->dtype != KN_FLOAT32 ||
        (b && (b->device.type != KN_DEVICE_CPU || b->dtype != KN_FLOAT32)))
        return false;
    kn_tensor *inputs[3] = {x, w, b};
    if (!kn__check_inputs("conv2d", inputs, b ? 3 : 2)) return false;
    /* an error set here is set again, the same, by the three ops that run instead */
    if (!conv_setup(x, w, b, args, p) || !kn_cpu_conv_direct_ok(&p->g, p->groups) || p->n < 1)
        return false;
    return !pool || pool_2x2(pool, p->n * p->o, p->g.out_h, p->g.out_w, g);
}

bool kn__conv2d_relu_pool_fusable(kn_tensor *x, kn_tensor *w, kn_tensor *b, kn_conv2d_args args,
                                  const kn_pool2d_args *pool)
{
    conv_plan p;
    kn_cpu_pool_geometry g;
    return fusable(x, w, b, args, pool, &p, &g);
}

/* The dense gradient the 2x2 pool's backward writes (for a bias without its weight). */
static kn_tensor *pool_backward_dense(const kn_node *node, kn_tensor *pooled_grad)
{
    kn_tensor *y = node->saved[2];
    kn_cpu_pool_geometry pg =
        two_by_two(node->iargs[8], node->iargs[9], node->iargs[10], y->shape[2], y->shape[3]);
    int64_t shape[4] = {y->shape[0], y->shape[1], pg.height, pg.width};
    kn_tensor *dense = kn__result(kn__empty_raw(shape, 4, KN_FLOAT32, y->device));
    if (dense)
        kn_cpu_max_pool2d_2x2_backward(&pg, kn__data_ptr(pooled_grad), kn__data_ptr(node->saved[3]),
                                       kn__data_ptr(dense));
    return dense;
}

static kn_status conv2d_relu_pool_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    kn_tensor *y = node->saved[2]; /* the op's output: pooled, or relu'd */
    kn_tensor *gd = kn__result(kn__contiguous_raw(grad));
    kn_tensor *masked = kn__result(kn__empty_raw(y->shape, y->ndim, KN_FLOAT32, y->device));
    if (!gd || !masked) return kn_last_status();
    int64_t n = kn_numel(y);
    kn_cpu_operand out = {kn__data_ptr(masked), {1}}, g = {kn__data_ptr(gd), {1}};
    kn_cpu_operand saved = {kn__data_ptr(y), {1}};
    kn_cpu_binary(KN_BINARY_RELU_BACKWARD, &n, 1, out, g, saved, 0.f, 0.f); /* relu's */
    if (!node->iargs[7]) return conv_grads(node, masked, node->saved[4], grads);
    bool need_x = node->inputs[0].needs_grad, need_w = node->inputs[1].needs_grad;
    bool need_b = node->n_inputs > 2 && node->inputs[2].needs_grad;
    if (need_b && !need_w) { /* the bias's sum is over the dense gradient: make it */
        kn_tensor *dense = pool_backward_dense(node, masked);
        return dense ? conv_grads(node, dense, node->saved[4], grads) : kn_last_status();
    }
    /* the convolution's backward reads the pooled gradient and the maxima's places in
     * place of the dense gradient (3/4 zeros) the pool's backward would write */
    kn_tensor *x = node->saved[0], *w = node->saved[1];
    conv_plan p;
    if (!conv_setup(x, w, NULL, args_from_node(node), &p)) return kn_last_status();
    kn_tensor *xd = kn__result(kn__contiguous_raw(x)), *wd = kn__result(kn__contiguous_raw(w));
    kn_tensor *gx = need_x ? kn__result(kn__empty_raw(x->shape, 4, KN_FLOAT32, x->device)) : NULL;
    kn_tensor *gw = need_w ? kn__result(kn__empty_raw(w->shape, 4, KN_FLOAT32, w->device)) : NULL;
    kn_tensor *gb = need_b ? kn__result(kn__empty_raw(&p.o, 1, KN_FLOAT32, w->device)) : NULL;
    if (!xd || !wd || (need_x && !gx) || (need_w && !gw) || (need_b && !gb))
        return kn_last_status();
    kn_cpu_conv_planes planes = {.pooled = kn__data_ptr(masked),
                                 .which = kn__data_ptr(node->saved[3]),
                                 .pooled_h = y->shape[2],
                                 .pooled_w = y->shape[3]};
    if ((gw &&
         !kn_cpu_conv_direct_backward_weight(
             &p.g, p.n, p.o, kn__data_ptr(xd), node->saved[4] ? kn__data_ptr(node->saved[4]) : NULL,
             &planes, kn__data_ptr(gw), gb ? kn__data_ptr(gb) : NULL)) ||
        (gx && !kn_cpu_conv_direct_backward_input(&p.g, p.n, p.o, &planes, kn__data_ptr(wd),
                                                  kn__data_ptr(gx))))
        return kn__error(KN_ERR_MEMORY, "conv2d backward: out of memory for the work buffers");
    grads[0] = gx;
    grads[1] = gw;
    if (need_b) grads[2] = gb;
    return KN_OK;
}

kn_tensor *kn__conv2d_relu_pool(kn_tensor *x, kn_tensor *weight, kn_tensor *bias,
                                kn_conv2d_args args, const kn_pool2d_args *pool)
{
    conv_plan p;
    kn_cpu_pool_geometry g;
    if (!fusable(x, weight, bias, args, pool, &p, &g)) { /* the three ops, errors and all */
        kn_tensor *y = kn_relu(kn_conv2d(x, weight, bias, args));
        return pool ? kn_max_pool2d(y, *pool) : y;
    }
    kn_tensor *inputs[3] = {x, weight, bias};
    int n_inputs = bias ? 3 : 2;
    int64_t shape[4] = {p.n, p.o, pool ? g.out_h : p.g.out_h, pool ? g.out_w : p.g.out_w};
    /* kn_max_pool2d's byte form; g is set only with a pool (conv -> relu reads none) */
    int64_t packed = pool ? (p.n * p.o * g.out_h * g.out_w + 7) / 8 : 0;
    kn_tensor *out = kn__empty_raw(shape, 4, KN_FLOAT32, x->device);
    kn_tensor *which = pool ? kn__empty_raw(&packed, 1, KN_INT64, x->device) : NULL;
    kn_tensor *xd = kn__contiguous_raw(x), *wd = kn__contiguous_raw(weight);
    kn_tensor *bd = bias ? kn__contiguous_raw(bias) : NULL;
    kn_tensor *padded = padded_copy(&p, x, weight);
    bool ok = out && xd && wd && (!bias || bd) && (!pool || which);
    if (ok) {
        kn_cpu_conv_epilogue e = {.relu = true,
                                  .pool = pool ? &g : NULL,
                                  .pooled = pool ? kn__data_ptr(out) : NULL,
                                  .which = pool ? kn__data_ptr(which) : NULL};
        ok = kn_cpu_conv_direct_forward(
                 &p.g, p.n, p.o, kn__data_ptr(xd), kn__data_ptr(wd), bd ? kn__data_ptr(bd) : NULL,
                 &e, pool ? NULL : kn__data_ptr(out), padded ? kn__data_ptr(padded) : NULL) ||
             FAIL(KN_ERR_MEMORY, "conv2d: out of memory for the convolution's work buffers");
    }
    kn_release(xd);
    kn_release(wd);
    kn_release(bd);
    bool grad = kn__needs_grad(inputs, n_inputs);
    kn_node *node = ok && grad ? kn__node_new(pool ? "conv2d_relu_max_pool2d" : "conv2d_relu",
                                              conv2d_relu_pool_backward, inputs, n_inputs)
                               : NULL;
    if (!ok || (grad && !node)) {
        kn_release(out);
        kn_release(which);
        kn_release(padded);
        return NULL;
    }
    if (node) {
        plan_to_node(&p, node);
        node->iargs[7] = pool != NULL;
        node->iargs[8] = g.planes;
        node->iargs[9] = p.g.out_h;
        node->iargs[10] = p.g.out_w;
        kn__node_save(node, x);
        kn__node_save(node, weight);
        kn__node_save(node, out);
        kn__node_save(node, which);
        kn__node_save(node, padded); /* NULL when none was kept */
        kn__node_attach(out, node);
    }
    kn_release(which);
    kn_release(padded);
    return kn__result(out);
}

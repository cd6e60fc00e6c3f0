/*
 * test_cuda_cudatrain.c — training on the CUDA device: layer norm and batch norm
 * (forward, backward, running statistics), dropout's masks, the optimizers' fused steps,
 * gradient clipping, modules moved with kn_module_to, a few training steps of an MLP and
 * a CNN against the CPU, and device memory staying flat over 1,000 steps. Without a
 * device those tests skip, saying why; what every machine checks is that these ops
 * refuse CUDA tensors cleanly when no device is there.
 *
 * Tolerances: norms rtol 1e-4 / atol 1e-5 (sums in another order); dropout masks exact;
 * optimizer steps rtol 1e-6 / atol 1e-7 (the same float operations, bit for bit in
 * practice); training steps 1e-4 on every parameter.
 */
#include "kn_internal.h"
#include "kn_nn.h"
#include "kn_optim.h"
#include "kn_test.h"
#include "kn_test_cuda.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- everywhere ---------------------------------------------------------------------- */

static void assert_unavailable(const char *what, const char *op)
{
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE, "%s: %s", what, kn_last_error());
    cr_assert(strstr(kn_last_error(), op), "%s: %s", what, kn_last_error());
    cr_assert(strstr(kn_last_error(), "cuda:0 is not available"), "%s: %s", what, kn_last_error());
}

Test(cudatrain, training_ops_fail_cleanly_without_a_device)
{
    if (kn_cuda_device_count() > 0) cr_skip_test("a CUDA device is present");
    kn_scope_begin();
    kn_tensor *x = kn_test_fake_cuda(kn_ones(KN_SHAPE(4, 3), KN_FLOAT32));
    kn_tensor *c = kn_test_fake_cuda(kn_ones(KN_SHAPE(3), KN_FLOAT32));
    cr_assert_null(kn_layer_norm(x, 1, NULL, NULL, 1e-5));
    assert_unavailable("layer_norm", "layer_norm");
    cr_assert_null(kn_batch_norm(x, c, c, c, c, true, 0.1, 1e-5));
    assert_unavailable("batch_norm", "batch_norm");
    cr_assert_null(kn_dropout(x, 0.5, true, NULL));
    assert_unavailable("dropout", "dropout");
    /* the identity cases touch nothing, as on the cpu */
    cr_assert_eq(kn_dropout(x, 0.5, false, NULL), x);
    /* a cuda tensor next to a cpu one: both devices named */
    cr_assert_null(kn_layer_norm(x, 1, kn_ones(KN_SHAPE(3), KN_FLOAT32), NULL, 1e-5));
    cr_assert(strstr(kn_last_error(), "cpu") && strstr(kn_last_error(), "cuda:0"), "%s",
              kn_last_error());

    /* optimizers take parameters on available devices only */
    kn_tensor *p = kn_set_requires_grad(kn_test_fake_cuda(kn_ones(KN_SHAPE(2), KN_FLOAT32)), true);
    cr_assert_null(kn_optimizer_new(&p, 1, kn_optimizer_defaults(KN_OPTIM_ADAM)));
    cr_assert(strstr(kn_last_error(), "available device"), "%s", kn_last_error());

    /* clipping refuses, and the finiteness check skips, gradients it cannot read */
    kn_tensor *q = kn_ones(KN_SHAPE(2), KN_FLOAT32);
    q->grad = kn_retain(kn_test_fake_cuda(kn_ones(KN_SHAPE(2), KN_FLOAT32)));
    double norm = 0;
    cr_assert_neq(kn_clip_grad_norm(&q, 1, 1.0, &norm), KN_OK);
    cr_assert(strstr(kn_last_error(), "cuda:0"), "%s", kn_last_error());
    cr_assert(isnan(norm));
    cr_assert(kn_grads_finite(&q, 1));
    kn_scope_end();
}

Test(cudatrain, module_to_the_cpu_keeps_the_batch_count_and_names)
{
    kn_module *bn = kn_batch_norm2d_new(3, 1e-5, 0.1, true, true);
    cr_assert_not_null(bn);
    cr_assert_eq(kn_module_to(bn, kn_cpu()), KN_OK);
    int n = 0;
    kn_named_tensor *s = kn_module_state_dict(bn, &n);
    cr_assert_eq(n, 5);
    bool found = false;
    for (int i = 0; i < n; i++)
        if (!strcmp(s[i].name, "num_batches_tracked")) found = s[i].tensor->dtype == KN_INT64;
    cr_assert(found);
    free(s);
    kn_module_free(bn);
}

/* ---- with a device: CUDA against the CPU -------------------------------------------- */

/* Leaves on each device holding the same values. */
static void twin(kn_tensor *host, kn_tensor **cpu, kn_tensor **gpu)
{
    *cpu = kn_set_requires_grad(kn_clone(host), true);
    *gpu = kn_set_requires_grad(kn_to(host, kn_test_cuda0), true);
    cr_assert_not_null(*gpu, "%s", kn_last_error());
}

/* loss = sum(y * r) for a fixed random r, so every output gets its own gradient. */
static void backward_weighted(kn_tensor *y, kn_tensor *r)
{
    kn_tensor *w = kn_device_equal(y->device, r->device) ? r : kn_to(r, y->device);
    cr_assert_eq(kn_backward(kn_sum_all(kn_mul(y, w)), NULL, false), KN_OK, "%s", kn_last_error());
}

Test(cudatrain, layer_norm_matches_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    const int64_t shapes[][3] = {{4, 5, 7}, {3, 1, 1000}, {2, 600, 3}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        kn_tensor *xc, *xg, *wc, *wg, *bc, *bg;
        twin(kn_test_randn(shapes[k], 3, 1 + k), &xc, &xg);
        twin(kn_test_randn(shapes[k] + 2, 1, 11 + k), &wc, &wg);
        twin(kn_test_randn(shapes[k] + 2, 1, 21 + k), &bc, &bg);
        kn_tensor *yc = kn_layer_norm(xc, 1, wc, bc, 1e-5);
        kn_tensor *yg = kn_layer_norm(xg, 1, wg, bg, 1e-5);
        kn_test_assert_close_cuda("layer_norm", yc, yg, 1e-4, 1e-5);
        kn_tensor *r = kn_test_randn(shapes[k], 3, 31 + k);
        backward_weighted(yc, r);
        backward_weighted(yg, r);
        kn_test_assert_close_cuda("layer_norm dx", xc->grad, xg->grad, 1e-4, 1e-4);
        kn_test_assert_close_cuda("layer_norm dweight", wc->grad, wg->grad, 1e-4, 1e-4);
        kn_test_assert_close_cuda("layer_norm dbias", bc->grad, bg->grad, 1e-4, 1e-4);
        /* without affine parameters */
        kn_test_assert_close_cuda("layer_norm (no affine)", kn_layer_norm(xc, 2, NULL, NULL, 1e-5),
                                  kn_layer_norm(xg, 2, NULL, NULL, 1e-5), 1e-4, 1e-5);
    }
    kn_scope_end();
}

static void batch_norm_case(const int64_t *shape, int ndim, uint64_t seed)
{
    int64_t c = shape[1];
    kn_tensor *xc, *xg, *wc, *wg, *bc, *bg;
    twin(kn_add_scalar(kn_test_randn(shape, ndim, seed), 3.0), &xc, &xg);
    twin(kn_test_randn(&c, 1, seed + 1), &wc, &wg);
    twin(kn_test_randn(&c, 1, seed + 2), &bc, &bg);
    kn_tensor *rm_c = kn_test_randn(&c, 1, seed + 3),
              *rv_c = kn_add_scalar(kn_rand(&c, 1, NULL), 0.5);
    kn_tensor *rm_g = kn_to(rm_c, kn_test_cuda0), *rv_g = kn_to(rv_c, kn_test_cuda0);
    /* training: batch statistics, running statistics updated on the device */
    kn_tensor *yc = kn_batch_norm(xc, rm_c, rv_c, wc, bc, true, 0.1, 1e-5);
    kn_tensor *yg = kn_batch_norm(xg, rm_g, rv_g, wg, bg, true, 0.1, 1e-5);
    kn_test_assert_close_cuda("batch_norm", yc, yg, 1e-4, 1e-5);
    kn_test_assert_close_cuda("batch_norm running_mean", rm_c, rm_g, 1e-5, 1e-6);
    kn_test_assert_close_cuda("batch_norm running_var", rv_c, rv_g, 1e-5, 1e-6);
    kn_tensor *r = kn_test_randn(shape, ndim, seed + 4);
    backward_weighted(yc, r);
    backward_weighted(yg, r);
    kn_test_assert_close_cuda("batch_norm dx", xc->grad, xg->grad, 1e-4, 1e-4);
    kn_test_assert_close_cuda("batch_norm dweight", wc->grad, wg->grad, 1e-4, 1e-4);
    kn_test_assert_close_cuda("batch_norm dbias", bc->grad, bg->grad, 1e-4, 1e-4);
    /* eval: the running statistics */
    kn_zero_grad(xc);
    kn_zero_grad(xg);
    yc = kn_batch_norm(xc, rm_c, rv_c, wc, bc, false, 0.1, 1e-5);
    yg = kn_batch_norm(xg, rm_g, rv_g, wg, bg, false, 0.1, 1e-5);
    kn_test_assert_close_cuda("batch_norm eval", yc, yg, 1e-4, 1e-5);
    backward_weighted(yc, r);
    backward_weighted(yg, r);
    kn_test_assert_close_cuda("batch_norm eval dx", xc->grad, xg->grad, 1e-4, 1e-4);
}

Test(cudatrain, batch_norm_matches_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    batch_norm_case((const int64_t[]){8, 6}, 2, 100);
    batch_norm_case((const int64_t[]){4, 3, 5, 5}, 4, 200);
    batch_norm_case((const int64_t[]){2, 70, 9}, 3, 300);
    kn_scope_end();
}

Test(cudatrain, dropout_masks_are_the_same_on_both_devices)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *x = kn_add_scalar(kn_rand(KN_SHAPE(17, 33), NULL), 0.5); /* no zeros */
    kn_tensor *xc, *xg;
    twin(x, &xc, &xg);
    kn_generator *gc = kn_generator_new(7), *gg = kn_generator_new(7);
    kn_tensor *yc = kn_dropout(xc, 0.3, true, gc);
    kn_tensor *yg = kn_dropout(xg, 0.3, true, gg);
    kn_test_assert_close_cuda("dropout", yc, yg, 0, 0);
    /* the generators moved alike */
    kn_tensor *nc = kn_rand(KN_SHAPE(4), gc), *ng = kn_rand(KN_SHAPE(4), gg);
    for (int64_t i = 0; i < 4; i++)
        cr_assert_eq(kn_data_f32(nc)[i], kn_data_f32(ng)[i], "generator draws differ");
    kn_generator_free(gc);
    kn_generator_free(gg);
    kn_tensor *r = kn_test_randn(KN_SHAPE(17, 33), 5);
    backward_weighted(yc, r);
    backward_weighted(yg, r);
    kn_test_assert_close_cuda("dropout dx", xc->grad, xg->grad, 0, 0);
    kn_scope_end();
}

/* n steps of the optimizer on a CPU and a CUDA copy of one parameter of ndim (1 or 2)
 * dimensions, same gradients. */
static void optimizer_case_nd(const char *what, kn_optimizer_options o, int ndim)
{
    const int64_t shape[2] = {37, 129};
    const int64_t *s = ndim == 2 ? shape : (const int64_t[]){37 * 129};
    kn_tensor *pc, *pg;
    twin(kn_test_randn(s, ndim, 40), &pc, &pg);
    kn_optimizer *oc = kn_optimizer_new(&pc, 1, o), *og = kn_optimizer_new(&pg, 1, o);
    cr_assert(oc && og, "%s: %s", what, kn_last_error());
    for (int step = 0; step < 4; step++) {
        kn_tensor *g = kn_test_randn(s, ndim, 50 + step);
        kn_zero_grad(pc);
        kn_zero_grad(pg);
        pc->grad = kn_retain(kn_clone(g));
        pg->grad = kn_retain(kn_to(g, kn_test_cuda0));
        cr_assert_eq(kn_optimizer_step(oc), KN_OK, "%s: %s", what, kn_last_error());
        cr_assert_eq(kn_optimizer_step(og), KN_OK, "%s: %s", what, kn_last_error());
    }
    kn_test_assert_close_cuda(what, pc, pg, 1e-6, 1e-7);
    /* the state too (on the parameter's device) */
    int nc = 0, ng = 0;
    kn_optimizer_state_entry *ec = kn_optimizer_state(oc, &nc), *eg = kn_optimizer_state(og, &ng);
    cr_assert_eq(nc, ng);
    for (int i = 0; i < nc; i++)
        if (ec[i].tensor->dtype == KN_FLOAT32)
            kn_test_assert_close_cuda(ec[i].name, ec[i].tensor, eg[i].tensor, 1e-6, 1e-7);
    /* and the CPU's state loads into the CUDA optimizer */
    cr_assert_eq(kn_optimizer_load_state(og, ec, nc), KN_OK, "%s", kn_last_error());
    free(ec);
    free(eg);
    kn_optimizer_free(oc);
    kn_optimizer_free(og);
}

static void optimizer_case(const char *what, kn_optimizer_options o)
{
    optimizer_case_nd(what, o, 2);
}

Test(cudatrain, optimizer_steps_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_optimizer_options o = kn_optimizer_defaults(KN_OPTIM_SGD);
    o.lr = 0.1;
    optimizer_case("sgd", o);
    o.momentum = 0.9, o.dampening = 0.1, o.weight_decay = 0.01;
    optimizer_case("sgd momentum", o);
    o.dampening = 0, o.nesterov = true;
    optimizer_case("sgd nesterov", o);
    o = kn_optimizer_defaults(KN_OPTIM_ADAM);
    optimizer_case("adam", o);
    o.weight_decay = 0.05, o.amsgrad = true;
    optimizer_case("adam amsgrad wd", o);
    o = kn_optimizer_defaults(KN_OPTIM_ADAMW);
    optimizer_case("adamw", o);
    o.amsgrad = true;
    optimizer_case("adamw amsgrad", o);
    o = kn_optimizer_defaults(KN_OPTIM_RMSPROP);
    optimizer_case("rmsprop", o);
    o.centered = true, o.momentum = 0.5, o.weight_decay = 0.01;
    optimizer_case("rmsprop centered momentum", o);
    /* decay on matrices only: a 2-D parameter decays, a 1-D one does not, on both devices */
    o = kn_optimizer_defaults(KN_OPTIM_ADAMW);
    o.weight_decay = 0.1, o.weight_decay_params = KN_DECAY_MATRICES;
    optimizer_case_nd("adamw matrices 2-D", o, 2);
    optimizer_case_nd("adamw matrices 1-D", o, 1);
    o = kn_optimizer_defaults(KN_OPTIM_SGD);
    o.weight_decay = 0.1, o.momentum = 0.9, o.weight_decay_params = KN_DECAY_MATRICES;
    optimizer_case_nd("sgd matrices 1-D", o, 1);
    kn_scope_end();
}

Test(cudatrain, clip_grad_norm_and_finiteness_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_tensor *pc[2], *pg[2];
    const int64_t sizes[2] = {1000, 300001};
    for (int i = 0; i < 2; i++) {
        twin(kn_test_randn(&sizes[i], 1, 60 + i), &pc[i], &pg[i]);
        kn_tensor *g = kn_test_randn(&sizes[i], 1, 70 + i);
        pc[i]->grad = kn_retain(kn_clone(g));
        pg[i]->grad = kn_retain(kn_to(g, kn_test_cuda0));
    }
    double nc = 0, ng = 0;
    cr_assert_eq(kn_clip_grad_norm(pc, 2, 1.0, &nc), KN_OK);
    cr_assert_eq(kn_clip_grad_norm(pg, 2, 1.0, &ng), KN_OK, "%s", kn_last_error());
    cr_assert(fabs(nc - ng) <= 1e-5 * nc, "norm %.9g on the cpu, %.9g on cuda", nc, ng);
    for (int i = 0; i < 2; i++)
        kn_test_assert_close_cuda("clipped grad", pc[i]->grad, pg[i]->grad, 1e-5, 1e-8);
    cr_assert(kn_grads_finite(pg, 2));
    cr_assert_eq(kn_fill_(kn_select(pg[1]->grad, 0, 123456), NAN), KN_OK);
    cr_assert(!kn_grads_finite(pg, 2));
    kn_scope_end();
}

/* ---- training ------------------------------------------------------------------------- */

static kn_module *mlp(uint64_t seed)
{
    kn_generator *g = kn_generator_new(seed);
    kn_module *m = kn_sequential_new();
    kn_sequential_append(m, kn_linear_new(20, 32, true, g));
    kn_sequential_append(m, kn_layer_norm_new((const int64_t[]){32}, 1, 1e-5, true));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_batch_norm1d_new(32, 1e-5, 0.1, true, true));
    kn_sequential_append(m, kn_linear_new(32, 5, true, g));
    kn_generator_free(g);
    return m;
}

static kn_module *cnn(uint64_t seed)
{
    kn_generator *g = kn_generator_new(seed);
    kn_module *m = kn_sequential_new();
    kn_sequential_append(m, kn_conv2d_new(1, 4, (const int[]){3, 3}, (kn_conv2d_args){0}, true, g));
    kn_sequential_append(m, kn_batch_norm2d_new(4, 1e-5, 0.1, true, true));
    kn_sequential_append(m, kn_relu_new());
    kn_sequential_append(m, kn_max_pool2d_new((kn_pool2d_args){.kernel_size = {2, 2}}));
    kn_sequential_append(m, kn_flatten_new(1, -1));
    kn_sequential_append(m, kn_linear_new(4 * 4 * 4, 5, true, g));
    kn_generator_free(g);
    return m;
}

/* steps of Adam with clipping on m (on its device), batches from fixed seeds. */
static void train(kn_module *m, kn_device device, const int64_t *xshape, int xndim, int steps)
{
    int n = 0;
    kn_named_tensor *named = kn_module_parameters(m, &n);
    kn_tensor **params = malloc(sizeof *params * (size_t)n);
    for (int i = 0; i < n; i++) params[i] = named[i].tensor;
    kn_optimizer_options o = kn_optimizer_defaults(KN_OPTIM_ADAM);
    o.lr = 0.01;
    kn_optimizer *opt = kn_optimizer_new(params, n, o);
    cr_assert_not_null(opt, "%s", kn_last_error());
    for (int s = 0; s < steps; s++) {
        kn_scope_begin();
        kn_tensor *x = kn_to(kn_test_randn(xshape, xndim, 1000 + (uint64_t)(s % 7)), device);
        kn_tensor *y = kn_full(KN_SHAPE(xshape[0]), 0, KN_INT64);
        for (int64_t i = 0; i < xshape[0]; i++) kn_data_i64(y)[i] = (i * 3 + s) % 5;
        y = kn_to(y, device);
        kn_tensor *loss = kn_cross_entropy(kn_module_forward(m, x), y, KN_REDUCTION_MEAN,
                                           KN_DEFAULT_IGNORE_INDEX, 0.0);
        cr_assert_not_null(loss, "step %d: %s", s, kn_last_error());
        kn_optimizer_zero_grad(opt);
        cr_assert_eq(kn_backward(loss, NULL, false), KN_OK, "%s", kn_last_error());
        cr_assert(kn_grads_finite(params, n));
        cr_assert_eq(kn_clip_grad_norm(params, n, 5.0, NULL), KN_OK, "%s", kn_last_error());
        cr_assert_eq(kn_optimizer_step(opt), KN_OK, "%s", kn_last_error());
        kn_scope_end();
    }
    kn_optimizer_free(opt);
    free(params);
    free(named);
}

static void compare_models(kn_module *cpu, kn_module *gpu)
{
    int nc = 0, ng = 0;
    kn_named_tensor *sc = kn_module_state_dict(cpu, &nc), *sg = kn_module_state_dict(gpu, &ng);
    cr_assert_eq(nc, ng);
    for (int i = 0; i < nc; i++) {
        cr_assert_str_eq(sc[i].name, sg[i].name);
        if (strstr(sg[i].name, "num_batches_tracked") || sg[i].tensor->dtype != KN_FLOAT32) {
            cr_assert_eq(kn_item_i64(sc[i].tensor), kn_item_i64(sg[i].tensor));
            continue;
        }
        cr_assert_eq(sg[i].tensor->requires_grad, sc[i].tensor->requires_grad, "%s", sg[i].name);
        kn_test_assert_close_cuda(sg[i].name, sc[i].tensor, sg[i].tensor, 1e-4, 1e-4);
    }
    free(sc);
    free(sg);
}

static void train_both(kn_module *(*make)(uint64_t), const int64_t *xshape, int xndim)
{
    kn_module *mc = make(9), *mg = make(9);
    cr_assert_eq(kn_module_to(mg, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    train(mc, kn_cpu(), xshape, xndim, 5);
    train(mg, kn_test_cuda0, xshape, xndim, 5);
    compare_models(mc, mg);
    /* eval mode: the running statistics on the device */
    kn_module_train(mc, false);
    kn_module_train(mg, false);
    kn_scope_begin();
    kn_tensor *x = kn_test_randn(xshape, xndim, 77);
    kn_test_assert_close_cuda("eval forward", kn_module_forward(mc, x),
                              kn_module_forward(mg, kn_to(x, kn_test_cuda0)), 1e-4, 1e-4);
    kn_scope_end();
    kn_module_free(mc);
    kn_module_free(mg);
}

Test(cudatrain, mlp_training_steps_match_the_cpu)
{
    kn_test_need_cuda();
    train_both(mlp, (const int64_t[]){16, 20}, 2);
}

Test(cudatrain, cnn_training_steps_match_the_cpu)
{
    kn_test_need_cuda();
    train_both(cnn, (const int64_t[]){8, 1, 10, 10}, 4);
}

Test(cudatrain, device_memory_stays_flat_over_1000_steps)
{
    kn_test_need_cuda();
    kn_module *m = mlp(3);
    cr_assert_eq(kn_module_to(m, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    const int64_t xshape[2] = {32, 20};
    train(m, kn_test_cuda0, xshape, 2, 10);
    cr_assert_eq(kn_cuda_synchronize(0), KN_OK);
    kn_alloc_stats before, after;
    cr_assert_eq(kn_cuda_get_alloc_stats(0, &before), KN_OK);
    train(m, kn_test_cuda0, xshape, 2, 1000);
    cr_assert_eq(kn_cuda_synchronize(0), KN_OK);
    cr_assert_eq(kn_cuda_get_alloc_stats(0, &after), KN_OK);
    /* the optimizer's state is made anew by each train(): the same sizes again */
    cr_assert_eq(after.bytes_in_use, before.bytes_in_use, "%llu bytes in use, then %llu",
                 (unsigned long long)before.bytes_in_use, (unsigned long long)after.bytes_in_use);
    kn_module_free(m);
}

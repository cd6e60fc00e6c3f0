/*
 * test_autograd.c — the graph engine: accumulation, broadcasting reduction, no_grad,
 * detach, retain_graph, backward twice, deep graphs, scopes and leaks; a leaf's first
 * gradient adopted as its .grad when nothing else can see it, copied otherwise.
 */
#include "kn_internal.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

Test(autograd, mul_add_backward)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){1, 2, 3}, KN_SHAPE(3)), true);
    kn_tensor *y = kn_set_requires_grad(kn_from_floats((float[]){4, 5, 6}, KN_SHAPE(3)), true);
    /* z = sum(x * y + x) -> dz/dx = y + 1, dz/dy = x */
    kn_tensor *z = kn_sum_all(kn_add(kn_mul(x, y), x));
    cr_assert_not_null(z, "%s", kn_last_error());
    cr_assert_eq(kn_backward(z, NULL, false), KN_OK, "%s", kn_last_error());
    char msg[256];
    cr_assert(kn_test_close(x->grad, (float[]){5, 6, 7}, 3, 0, 0, msg, sizeof msg), "%s", msg);
    cr_assert(kn_test_close(y->grad, (float[]){1, 2, 3}, 3, 0, 0, msg, sizeof msg), "%s", msg);
    kn_scope_end();
}

Test(autograd, gradients_accumulate_until_zero_grad)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){1, 2}, KN_SHAPE(2)), true);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(kn_backward(kn_sum_all(kn_mul_scalar(x, 2)), NULL, false), KN_OK);
    char msg[256];
    cr_assert(kn_test_close(x->grad, (float[]){6, 6}, 2, 0, 0, msg, sizeof msg), "%s", msg);
    kn_zero_grad(x);
    cr_assert_null(x->grad);
    kn_scope_end();
}

Test(autograd, broadcast_gradient_is_reduced_to_input_shape)
{
    kn_scope_begin();
    kn_tensor *a = kn_set_requires_grad(kn_ones(KN_SHAPE(2, 3), KN_FLOAT32), true);
    kn_tensor *b = kn_set_requires_grad(kn_from_floats((float[]){1, 2, 3}, KN_SHAPE(3)), true);
    kn_tensor *c = kn_set_requires_grad(kn_full(KN_SHAPE(2, 1), 2.0, KN_FLOAT32), true);
    cr_assert_eq(kn_backward(kn_sum_all(kn_mul(kn_add(a, b), c)), NULL, false), KN_OK, "%s",
                 kn_last_error());
    char msg[256];
    cr_assert(kn_test_close(b->grad, (float[]){4, 4, 4}, 3, 0, 0, msg, sizeof msg), "%s", msg);
    cr_assert_eq(c->grad->ndim, 2);
    cr_assert(kn_test_close(c->grad, (float[]){9, 9}, 2, 0, 0, msg, sizeof msg), "%s", msg);
    kn_scope_end();
}

Test(autograd, no_grad_and_detach_record_nothing)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_ones(KN_SHAPE(2), KN_FLOAT32), true);
    kn_no_grad_begin();
    kn_tensor *y = kn_mul(x, x);
    kn_no_grad_end();
    cr_assert(!y->requires_grad);
    cr_assert_null(y->grad_fn);
    kn_tensor *d = kn_detach(kn_mul(x, x));
    cr_assert(!d->requires_grad);
    cr_assert_neq(kn_backward(kn_sum_all(d), NULL, false), KN_OK);
    cr_assert(strstr(kn_last_error(), "does not require grad"), "%s", kn_last_error());
    kn_scope_end();
}

Test(autograd, second_backward_through_freed_graph_is_an_error)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){3}, KN_SHAPE(1)), true);
    kn_tensor *z = kn_sum_all(kn_mul(x, x));
    cr_assert_eq(kn_backward(z, NULL, true), KN_OK);
    cr_assert_eq(kn_backward(z, NULL, false), KN_OK); /* retained: fine */
    cr_assert_float_eq(kn_item(x->grad), 12.f, 1e-6);
    cr_assert_eq(kn_backward(z, NULL, false), KN_ERR_AUTOGRAD);
    cr_assert(strstr(kn_last_error(), "second time"), "%s", kn_last_error());
    kn_scope_end();
}

Test(autograd, non_scalar_backward_needs_a_gradient)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_ones(KN_SHAPE(2, 2), KN_FLOAT32), true);
    kn_tensor *y = kn_mul_scalar(x, 3);
    cr_assert_eq(kn_backward(y, NULL, false), KN_ERR_SHAPE);
    cr_assert(strstr(kn_last_error(), "[2, 2]"), "%s", kn_last_error());
    cr_assert_eq(kn_backward(y, kn_ones(KN_SHAPE(2, 2), KN_FLOAT32), false), KN_OK);
    cr_assert_float_eq(kn_item(kn_sum_all(x->grad)), 12.f, 1e-6);
    kn_scope_end();
}

Test(autograd, graph_100000_ops_deep)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){1}, KN_SHAPE(1)), true);
    kn_tensor *y = kn_retain(x);
    for (int i = 0; i < 100000; i++) {
        kn_tensor *next = kn_add_scalar(y, 0.0); /* inside the scope: scope owns it */
        kn_retain(next);
        kn_release(y);
        y = next;
    }
    cr_assert_eq(kn_backward(kn_sum_all(y), NULL, false), KN_OK, "%s", kn_last_error());
    cr_assert_float_eq(kn_item(x->grad), 1.f, 1e-6);
    kn_release(y);
    kn_scope_end();
}

Test(autograd, leaf_in_place_is_refused)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_ones(KN_SHAPE(2), KN_FLOAT32), true);
    cr_assert_eq(kn_add_(x, x, 1.0), KN_ERR_AUTOGRAD);
    kn_no_grad_begin();
    cr_assert_eq(kn_add_(x, x, 1.0), KN_OK);
    kn_no_grad_end();
    kn_scope_end();
}

Test(autograd, retain_grad_on_a_non_leaf)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){2}, KN_SHAPE(1)), true);
    kn_tensor *y = kn_mul(x, x);
    cr_assert_eq(kn_retain_grad(y), KN_OK);
    cr_assert_eq(kn_backward(kn_sum_all(kn_mul_scalar(y, 3)), NULL, false), KN_OK);
    cr_assert_float_eq(kn_item(y->grad), 3.f, 1e-6);
    cr_assert_float_eq(kn_item(x->grad), 12.f, 1e-6);
    kn_scope_end();
}

/* ---- a leaf's first gradient: adopted or copied ----------------------------------------- */

static uint64_t allocations(void)
{
    kn_alloc_stats s = kn_get_alloc_stats();
    return s.system_allocs + s.cache_hits;
}

/* Allocations made by backward(relu(x), g): the relu's graph is recorded before the count
 * starts, so only the backward's own allocations are counted. */
static uint64_t backward_allocations(kn_tensor *x, kn_tensor *g)
{
    kn_scope_begin();
    kn_tensor *y = kn_relu(x);
    uint64_t before = allocations();
    cr_assert_eq(kn_backward(y, g, false), KN_OK, "%s", kn_last_error());
    uint64_t used = allocations() - before;
    kn_scope_end();
    return used;
}

/* As PyTorch's AccumulateGrad: the relu backward's fresh gradient becomes x's .grad, so a
 * backward into an empty .grad allocates no more than one that adds into an existing .grad
 * (the old engine copied it into a new tensor: three allocations more, handle, storage and
 * data). */
Test(autograd, first_gradient_of_a_leaf_is_adopted_not_copied)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_seq(KN_SHAPE(4, 1000), 1), true);
    kn_tensor *g = kn_test_seq(KN_SHAPE(4, 1000), 2);
    uint64_t into_empty = backward_allocations(x, g);
    cr_assert_not_null(x->grad);
    uint64_t into_existing = backward_allocations(x, g);
    cr_assert_eq(into_empty, into_existing,
                 "first backward allocated %llu times, an accumulating one %llu",
                 (unsigned long long)into_empty, (unsigned long long)into_existing);
    /* the values: twice relu's gradient */
    kn_tensor *want = kn_mul_scalar(kn_mul(g, kn_gt(x, kn_test_scalar(0.f))), 2.0);
    cr_assert_eq(kn_item(kn_sum_all(kn_abs(kn_sub(x->grad, want)))), 0.f);
    cr_assert_eq(x->grad->refcount, 1, "only x holds its .grad");
    kn_scope_end();
}

/* .grad and the gradient given to backward (or another leaf's .grad) are different memory. */
static void assert_separate(kn_tensor *grad, kn_tensor *other)
{
    cr_assert_not_null(grad);
    cr_assert_neq(grad, other);
    cr_assert_neq(grad->storage, other->storage);
    float before = kn_item(kn_sum_all(other));
    kn_no_grad_begin();
    cr_assert_eq(kn_fill_(grad, 100.0), KN_OK, "%s", kn_last_error());
    kn_no_grad_end();
    cr_assert_eq(kn_item(kn_sum_all(other)), before, "changing .grad changed another tensor");
}

/* Identity backwards hand the caller's gradient through unchanged: .grad must still be a
 * copy of it, for a backward on the leaf itself, add_scalar, add (both terms), a view and
 * contiguous. */
Test(autograd, gradient_given_to_backward_is_never_aliased_by_grad)
{
    kn_scope_begin();
    int64_t shape[2] = {3, 4};
    for (int form = 0; form < 5; form++) {
        kn_tensor *x = kn_set_requires_grad(kn_test_seq(shape, 2, 1), true);
        kn_tensor *w = kn_set_requires_grad(kn_test_seq(shape, 2, 2), true);
        kn_tensor *g = kn_test_seq(shape, 2, 3);
        kn_tensor *y = form == 0   ? x
                       : form == 1 ? kn_add_scalar(x, 0.0)
                       : form == 2 ? kn_add(x, w)
                       : form == 3 ? kn_view(x, shape, 2)
                                   : kn_contiguous(x);
        cr_assert_not_null(y, "form %d: %s", form, kn_last_error());
        cr_assert_eq(kn_backward(y, g, false), KN_OK, "form %d: %s", form, kn_last_error());
        char msg[256];
        cr_assert(kn_test_close(x->grad, kn_data_f32(g), 12, 0, 0, msg, sizeof msg), "form %d: %s",
                  form, msg);
        if (form == 2) {
            assert_separate(w->grad, g);
            assert_separate(x->grad, w->grad);
        }
        assert_separate(x->grad, g);
    }
    kn_scope_end();
}

/* x + x: both terms get the caller's gradient; x.grad is their sum, g stays as it was. */
Test(autograd, leaf_used_twice_accumulates_both_gradients)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){1, -2, 3}, KN_SHAPE(3)), true);
    kn_tensor *g = kn_from_floats((float[]){1, 2, 3}, KN_SHAPE(3));
    cr_assert_eq(kn_backward(kn_add(x, x), g, false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(x->grad, {2, 4, 6});
    KN_ASSERT_CLOSE(g, {1, 2, 3});
    /* x * x: two fresh gradients, the first adopted, the second added to it */
    kn_zero_grad(x);
    cr_assert_eq(kn_backward(kn_mul(x, x), g, false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(x->grad, {2, -8, 18});
    /* relu(x) twice into one sum, and a second backward adds to the adopted .grad */
    kn_zero_grad(x);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(kn_backward(kn_add(kn_relu(x), kn_relu(x)), g, false), KN_OK, "%s",
                     kn_last_error());
    KN_ASSERT_CLOSE(x->grad, {4, 0, 12});
    KN_ASSERT_CLOSE(g, {1, 2, 3});
    kn_scope_end();
}

/* A non-leaf that retains its grad gets a copy of the gradient the engine routes on, and
 * the leaf behind an identity backward gets its own. */
Test(autograd, retained_grad_and_leaf_grad_are_separate)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){1, 2}, KN_SHAPE(2)), true);
    kn_tensor *y = kn_add_scalar(x, 1.0);
    cr_assert_eq(kn_retain_grad(y), KN_OK);
    cr_assert_eq(kn_backward(kn_sum_all(kn_mul_scalar(y, 3)), NULL, false), KN_OK, "%s",
                 kn_last_error());
    KN_ASSERT_CLOSE(y->grad, {3, 3});
    KN_ASSERT_CLOSE(x->grad, {3, 3});
    assert_separate(x->grad, y->grad);
    KN_ASSERT_CLOSE(y->grad, {3, 3});
    kn_scope_end();
}

/* An op whose backward gives one fresh tensor to its first two inputs: input 0 (a leaf)
 * must not adopt it, since input 1's node receives it too and a later in-place add into
 * the leaf's .grad would change what that node reads. */
static kn_status shared_backward(kn_node *node, kn_tensor *grad, kn_tensor **grads)
{
    (void)node;
    grads[0] = grads[1] = kn_mul_scalar(grad, 1.0);
    grads[2] = kn_mul_scalar(grad, 1.0);
    return grads[0] && grads[2] ? KN_OK : kn_last_status();
}

static kn_tensor *shared_gradient_op(kn_tensor *a, kn_tensor *b, kn_tensor *c)
{
    kn_tensor *inputs[3] = {a, b, c};
    kn_tensor *out = kn__empty_raw(a->shape, a->ndim, KN_FLOAT32, a->device);
    cr_assert_not_null(out);
    cr_assert_eq(kn_fill_(out, 0.0), KN_OK);
    kn__node_attach(out, kn__node_new("shared", shared_backward, inputs, 3));
    return kn__result(out);
}

Test(autograd, gradient_given_to_two_inputs_is_not_adopted)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){1, 1}, KN_SHAPE(2)), true);
    kn_tensor *w = kn_set_requires_grad(kn_from_floats((float[]){1, 1}, KN_SHAPE(2)), true);
    /* shared(x, 3w, 2x): after shared's backward the engine runs 2x's node (its last
     * input: added into x.grad in place) before 3w's, which reads what shared gave x */
    kn_tensor *out = shared_gradient_op(x, kn_mul_scalar(w, 3.0), kn_mul_scalar(x, 2.0));
    cr_assert_eq(kn_backward(kn_sum_all(out), NULL, false), KN_OK, "%s", kn_last_error());
    KN_ASSERT_CLOSE(x->grad, {3, 3});
    KN_ASSERT_CLOSE(w->grad, {3, 3});
    kn_scope_end();
}

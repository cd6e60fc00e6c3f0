/*
 * test_autograd.c — the graph engine: accumulation, broadcasting reduction, no_grad,
 * detach, retain_graph, backward twice, deep graphs, scopes and leaks.
 */
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

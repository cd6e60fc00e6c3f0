/*
 * test_tensor.c — tensor handles: creation, dtypes, element access, devices, scopes
 * and reference counts, the caching allocator and the thread pool.
 */
#include "kn_internal.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

Test(tensor, creation_and_metadata)
{
    kn_scope_begin();
    kn_tensor *t = kn_zeros(KN_SHAPE(2, 3, 4), KN_FLOAT32);
    cr_assert_eq(t->ndim, 3);
    cr_assert_eq(kn_numel(t), 24);
    cr_assert_eq(t->strides[0], 12);
    cr_assert_eq(t->strides[2], 1);
    cr_assert(kn_is_contiguous(t));
    cr_assert_eq(t->device.type, KN_DEVICE_CPU);
    cr_assert(!t->requires_grad);
    cr_assert_float_eq(kn_item(kn_sum_all(kn_ones(KN_SHAPE(3, 3), KN_FLOAT32))), 9.f, 0);
    kn_tensor *s = kn_scalar(2.5f);
    cr_assert_eq(s->ndim, 0);
    cr_assert_float_eq(kn_item(s), 2.5f, 0);
    kn_tensor *r = kn_arange(5);
    cr_assert_eq(r->dtype, KN_INT64);
    cr_assert_eq(kn_data_i64(r)[4], 4);
    kn_tensor *f = kn_full(KN_SHAPE(2), 7, KN_INT64);
    cr_assert_eq(kn_item_i64(kn_select(f, 0, 1)), 7);
    kn_scope_end();
}

Test(tensor, bad_shapes_are_errors_not_crashes)
{
    kn_scope_begin();
    cr_assert_null(kn_zeros(KN_SHAPE(2, -3), KN_FLOAT32));
    cr_assert(strstr(kn_last_error(), "[2, -3]"), "%s", kn_last_error());
    cr_assert_null(kn_empty(KN_SHAPE(1, 2, 3, 4, 5, 6, 7, 8, 9), KN_FLOAT32));
    cr_assert(strstr(kn_last_error(), "rank 9"), "%s", kn_last_error());
    cr_assert_null(kn_empty(KN_SHAPE(1ll << 40, 1ll << 30), KN_FLOAT32));
    cr_assert_eq(kn_last_status(), KN_ERR_MEMORY);
    cr_assert_null(kn_empty(KN_SHAPE(1ll << 36), KN_FLOAT32)); /* 256 GiB: allocation fails */
    cr_assert_eq(kn_last_status(), KN_ERR_MEMORY, "%s", kn_last_error());
    cr_assert(strstr(kn_last_error(), "[68719476736]"), "%s", kn_last_error());
    cr_assert(isnan(kn_item(kn_ones(KN_SHAPE(2), KN_FLOAT32))));
    cr_assert(strstr(kn_last_error(), "2 elements"), "%s", kn_last_error());
    kn_scope_end();
}

Test(tensor, null_inputs_chain_without_overwriting_the_first_error)
{
    kn_scope_begin();
    kn_tensor *a = kn_ones(KN_SHAPE(2, 3), KN_FLOAT32), *b = kn_ones(KN_SHAPE(4), KN_FLOAT32);
    kn_tensor *r = kn_exp(kn_mul(kn_add(a, b), a));
    cr_assert_null(r);
    cr_assert_eq(kn_last_status(), KN_ERR_SHAPE);
    cr_assert(strstr(kn_last_error(), "add"), "%s", kn_last_error());
    cr_assert(strstr(kn_last_error(), "[2, 3]") && strstr(kn_last_error(), "[4]"), "%s",
              kn_last_error());
    kn_scope_end();
}

Test(tensor, dtype_errors_name_the_dtype)
{
    kn_scope_begin();
    kn_tensor *i = kn_arange(3);
    cr_assert_null(kn_exp(i));
    cr_assert(strstr(kn_last_error(), "int64"), "%s", kn_last_error());
    cr_assert_null(kn_set_requires_grad(i, true));
    cr_assert_eq(kn_last_status(), KN_ERR_DTYPE);
    kn_scope_end();
}

Test(tensor, devices)
{
    kn_device d;
    cr_assert_eq(kn_device_parse("cpu", &d), KN_OK);
    cr_assert_eq(d.type, KN_DEVICE_CPU);
    cr_assert_eq(kn_device_parse("cuda:1", &d), KN_OK);
    cr_assert_eq(d.type, KN_DEVICE_CUDA);
    cr_assert_eq(d.index, 1);
    cr_assert_eq(kn_device_parse("tpu", &d), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "\"tpu\""), "%s", kn_last_error());
    cr_assert_eq(kn_device_parse("cuda:x", &d), KN_ERR_VALUE);
    kn_scope_begin();
    kn_tensor *t = kn_ones(KN_SHAPE(2), KN_FLOAT32);
    kn_tensor *same = kn_to(t, kn_cpu());
    cr_assert_eq(same, t); /* already there: the same tensor, one more reference */
    cr_assert_null(kn_to(t, (kn_device){KN_DEVICE_CUDA, 0}));
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE);
    cr_assert(strstr(kn_last_error(), "cuda:0"), "%s", kn_last_error());
    kn_scope_end();
}

Test(tensor, op_on_mismatched_devices_names_both)
{
    kn_scope_begin();
    kn_tensor *a = kn_ones(KN_SHAPE(2), KN_FLOAT32);
    /* No GPU here: fake a handle that claims to live on cuda:0 to exercise the check.
     * Ops refuse it before touching its data. */
    kn_tensor *b = kn_autorelease(kn__view_raw(a, a->shape, a->strides, a->ndim, 0));
    b->device = (kn_device){KN_DEVICE_CUDA, 0};
    cr_assert_null(kn_add(a, b));
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE);
    cr_assert(strstr(kn_last_error(), "cpu") && strstr(kn_last_error(), "cuda:0"), "%s",
              kn_last_error());
    cr_assert_null(kn_matmul(b, a));
    cr_assert_eq(kn_last_status(), KN_ERR_DEVICE, "%s", kn_last_error());
    kn_scope_end();
}

Test(tensor, scopes_release_temporaries_and_escape_keeps_one)
{
    kn_tensor *kept;
    kn_scope_begin();
    kn_tensor *a = kn_ones(KN_SHAPE(4), KN_FLOAT32);
    kn_scope_begin();
    kn_tensor *b = kn_add(kn_mul(a, a), a);
    cr_assert_eq(kn_scope_depth(), 2);
    kept = kn_scope_escape(b); /* now owned by the outer scope */
    cr_assert_eq(kn_scope_depth(), 1);
    cr_assert_eq(kept->refcount, 1);
    kn_retain(kept); /* and one reference of our own */
    kn_scope_end();
    cr_assert_eq(kn_scope_depth(), 0);
    kn_tensor *sum = kn_sum_all(kept); /* no scope: we own the sum */
    cr_assert_float_eq(kn_item(sum), 8.f, 0);
    kn_release(sum);
    kn_release(kept);
}

Test(tensor, no_scope_means_caller_owns)
{
    kn_tensor *a = kn_ones(KN_SHAPE(3), KN_FLOAT32);
    kn_tensor *b = kn_mul_scalar(a, 2);
    cr_assert_eq(a->refcount, 1);
    cr_assert_float_eq(kn_data_f32(b)[2], 2.f, 0);
    kn_release(b);
    kn_release(a);
}

Test(tensor, steady_loop_stops_calling_malloc)
{
    if (getenv("KN_ALLOC_CACHE")) cr_skip_test("caching turned off by KN_ALLOC_CACHE");
#ifdef KN_SANITIZE
    cr_skip_test("caching allocator is off under sanitizers");
#endif
    kn_tensor *w = kn_set_requires_grad(kn_ones(KN_SHAPE(64, 32), KN_FLOAT32), true);
    kn_tensor *x = kn_ones(KN_SHAPE(16, 32), KN_FLOAT32);
    uint64_t before = 0;
    for (int step = 0; step < 5; step++) {
        if (step == 2) before = kn_get_alloc_stats().system_allocs;
        kn_scope_begin();
        kn_tensor *loss = kn_mean_all(kn_relu(kn_linear(x, w, NULL)));
        cr_assert_eq(kn_backward(loss, NULL, false), KN_OK, "%s", kn_last_error());
        kn_zero_grad(w);
        kn_scope_end();
    }
    cr_assert_eq(kn_get_alloc_stats().system_allocs, before,
                 "steps 3-5 reached the system allocator");
    cr_assert_gt(kn_get_alloc_stats().cache_hits, 0);
    kn_release(w);
    kn_release(x);
    kn_empty_cache();
    cr_assert_eq(kn_get_alloc_stats().bytes_cached, 0);
}

static void fill_range(void *context, int64_t begin, int64_t end)
{
    int *hits = context;
    for (int64_t i = begin; i < end; i++) __atomic_add_fetch(&hits[i], 1, __ATOMIC_RELAXED);
}

Test(tensor, parallel_for_covers_each_index_once)
{
    static int hits[1 << 18];
    kn_set_num_threads(2);
    for (int round = 0; round < 50; round++) {
        memset(hits, 0, sizeof hits);
        kn_cpu_parallel_for(1 << 18, 1000, fill_range, hits);
        for (int i = 0; i < (1 << 18); i++)
            cr_assert_eq(hits[i], 1, "index %d hit %d times", i, hits[i]);
    }
    kn_set_num_threads(1);
    memset(hits, 0, sizeof hits);
    kn_cpu_parallel_for(1000, 1, fill_range, hits);
    cr_assert_eq(hits[999], 1);
    kn_set_num_threads(0);
    cr_assert_geq(kn_get_num_threads(), 1);
}

Test(tensor, large_elementwise_matches_serial)
{
    kn_scope_begin();
    int64_t n = 1 << 20;
    kn_tensor *a = kn_test_uniform(KN_SHAPE(n), -2, 2, 1);
    kn_tensor *b = kn_test_uniform(KN_SHAPE(n), -2, 2, 2);
    kn_tensor *c = kn_add(a, b);
    float *pa = kn_data_f32(a), *pb = kn_data_f32(b), *pc = kn_data_f32(c);
    for (int64_t i = 0; i < n; i++) cr_assert_eq(pc[i], pa[i] + pb[i]);
    kn_tensor *e = kn_exp(a);
    float *pe = kn_data_f32(e);
    for (int64_t i = 0; i < n; i += 97)
        cr_assert(fabsf(pe[i] - expf(pa[i])) <= 3e-7f * expf(pa[i]), "exp(%g)", pa[i]);
    kn_scope_end();
}

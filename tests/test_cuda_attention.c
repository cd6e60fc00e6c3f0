/*
 * test_cuda_attention.c — the attention family on the CUDA device against the CPU:
 * scaled_dot_product_attention with dropout (the same hash, so the same weights dropped
 * for a seed), long causal sequences with padding, the packed op, a transformer layer's
 * training step, and incremental decoding with the cache on the device. Without a device
 * those skip, saying why; what every machine checks is that the ops refuse CUDA tensors
 * cleanly when no device is there.
 *
 * Tolerances: rtol 1e-4 / atol 1e-5 (sums over keys and head dims in other orders).
 */
#include "kn_internal.h"
#include "kn_nn.h"
#include "kn_test.h"
#include "kn_test_cuda.h"

#include <criterion/criterion.h>
#include <string.h>

#define TOL 1e-4, 1e-5

Test(cudaattention, ops_fail_cleanly_without_a_device)
{
    if (kn_cuda_device_count() > 0) cr_skip_test("a CUDA device is present");
    kn_scope_begin();
    kn_tensor *q = kn_test_fake_cuda(kn_ones(KN_SHAPE(1, 2, 3, 4), KN_FLOAT32));
    cr_assert_null(kn_scaled_dot_product_attention(q, q, q, NULL));
    cr_assert(strstr(kn_last_error(), "scaled_dot_product_attention: device cuda:0 is not "
                                      "available"),
              "%s", kn_last_error());
    kn_tensor *qkv = kn_test_fake_cuda(kn_ones(KN_SHAPE(1, 3, 12), KN_FLOAT32));
    cr_assert_null(kn_attention_qkv(qkv, 2, NULL));
    cr_assert(strstr(kn_last_error(), "attention_qkv: device cuda:0 is not available"), "%s",
              kn_last_error());
    kn_scope_end();
}

static kn_tensor *on_cuda(kn_tensor *t)
{
    kn_tensor *c = kn_to(t, kn_test_cuda0);
    cr_assert_not_null(c, "%s", kn_last_error());
    return kn_set_requires_grad(kn_detach(c), true);
}

/* Forward and every gradient on both devices, the same dropout seed on both. */
static void compare(const char *what, int64_t n, int64_t h, int64_t l, int64_t s, int64_t e,
                    kn_attention_args args, bool padded)
{
    kn_tensor *cpu[3] = {kn_test_randn((int64_t[]){n, h, l, e}, 4, 1),
                         kn_test_randn((int64_t[]){n, h, s, e}, 4, 2),
                         kn_test_randn((int64_t[]){n, h, s, e}, 4, 3)};
    kn_tensor *gpu[3];
    for (int i = 0; i < 3; i++) {
        gpu[i] = on_cuda(cpu[i]);
        kn_set_requires_grad(cpu[i], true);
    }
    kn_tensor *pad = NULL;
    if (padded) {
        pad = kn_zeros((int64_t[]){n, s}, 2, KN_INT64);
        for (int64_t b = 0; b < n; b++) kn_data_i64(pad)[b * s + (b * 7) % s] = 1;
    }
    kn_generator *gen = kn_generator_new(5);
    kn_tensor *g = kn_test_randn((int64_t[]){n, h, l, e}, 4, 4);
    args.generator = gen;
    args.key_padding_mask = pad;
    kn_tensor *y_cpu = kn_scaled_dot_product_attention(cpu[0], cpu[1], cpu[2], &args);
    cr_assert_eq(kn_backward(y_cpu, g, false), KN_OK, "%s", kn_last_error());
    kn_generator_seed(gen, 5);
    args.key_padding_mask = pad ? kn_to(pad, kn_test_cuda0) : NULL;
    kn_tensor *y_gpu = kn_scaled_dot_product_attention(gpu[0], gpu[1], gpu[2], &args);
    cr_assert_eq(kn_backward(y_gpu, kn_to(g, kn_test_cuda0), false), KN_OK, "%s", kn_last_error());
    kn_test_assert_close_cuda(what, y_cpu, y_gpu, TOL);
    const char *names[3] = {"grad q", "grad k", "grad v"};
    for (int i = 0; i < 3; i++)
        kn_test_assert_close_cuda(names[i], kn_grad(cpu[i]), kn_grad(gpu[i]), TOL);
    kn_generator_free(gen);
}

Test(cudaattention, sdpa_matches_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    compare("plain", 2, 3, 17, 33, 8, (kn_attention_args){0}, false);
    compare("causal, padded, 2 key tiles", 2, 2, 100, 100, 20,
            (kn_attention_args){.is_causal = true}, true);
    compare("dropout", 1, 4, 40, 40, 16, (kn_attention_args){.dropout_p = 0.3}, false);
    compare("decoding offset", 3, 2, 1, 57, 32,
            (kn_attention_args){.is_causal = true, .causal_offset = 56}, false);
    kn_scope_end();
}

Test(cudaattention, a_transformer_layer_step_and_decoding_match_the_cpu)
{
    kn_test_need_cuda();
    kn_scope_begin();
    kn_transformer_encoder_layer_options o = {.d_model = 32,
                                              .nhead = 4,
                                              .dim_feedforward = 64,
                                              .activation = KN_TRANSFORMER_GELU,
                                              .layer_norm_eps = 1e-5,
                                              .batch_first = true,
                                              .norm_first = true,
                                              .is_causal = true};
    kn_manual_seed(3);
    kn_module *cpu = kn_transformer_encoder_layer_new(&o, NULL);
    kn_manual_seed(3);
    kn_module *gpu = kn_transformer_encoder_layer_new(&o, NULL);
    cr_assert_eq(kn_module_to(gpu, kn_test_cuda0), KN_OK, "%s", kn_last_error());
    kn_tensor *x = kn_test_randn(KN_SHAPE(2, 24, 32), 6);
    kn_tensor *y_cpu = kn_module_forward(cpu, x);
    kn_tensor *y_gpu = kn_module_forward(gpu, kn_to(x, kn_test_cuda0));
    kn_test_assert_close_cuda("layer output", y_cpu, y_gpu, TOL);
    cr_assert_eq(kn_backward(kn_sum_all(y_cpu), NULL, false), KN_OK);
    cr_assert_eq(kn_backward(kn_sum_all(y_gpu), NULL, false), KN_OK, "%s", kn_last_error());
    int n;
    kn_named_tensor *pc = kn_module_parameters(cpu, &n), *pg = kn_module_parameters(gpu, &n);
    for (int i = 0; i < n; i++)
        kn_test_assert_close_cuda(pc[i].name, kn_grad(pc[i].tensor), kn_grad(pg[i].tensor), TOL);
    free(pc);
    free(pg);
    /* decoding on the device: prefill 20, then 4 single steps */
    kn_module_train(gpu, false);
    kn_kv_cache *cache = kn_kv_cache_new(gpu, 24);
    kn_tensor *xg = kn_to(x, kn_test_cuda0);
    kn_tensor *full = kn_module_forward(gpu, xg);
    kn_test_assert_close_cuda("prefill", kn_narrow(full, 1, 0, 20),
                              kn_module_forward_incremental(gpu, cache, kn_narrow(xg, 1, 0, 20)),
                              TOL);
    for (int64_t i = 20; i < 24; i++)
        kn_test_assert_close_cuda("step", kn_narrow(full, 1, i, 1),
                                  kn_module_forward_incremental(gpu, cache, kn_narrow(xg, 1, i, 1)),
                                  TOL);
    kn_kv_cache_free(cache);
    kn_module_free(cpu);
    kn_module_free(gpu);
    kn_scope_end();
}

/*
 * kn_test_spec.h — a model spec the test needs parsed: kn_test_parse_model fails the test
 * with every error of the spec when it does not parse. One copy for the tests that build
 * models from JSON (test_graph, test_rnn, the sequence tests, kn_test_server.h's
 * kn_test_build_model). Header-only: it uses Criterion's assertions.
 */
#ifndef KN_TEST_SPEC_H
#define KN_TEST_SPEC_H

#include "kapi.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* The parsed spec of json (the caller frees it with kapi_model_spec_free); a spec that
 * does not parse fails the test, its errors the message. */
static __attribute__((unused)) kapi_model_spec *kn_test_parse_model(const char *json)
{
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(json, strlen(json), &errors);
    char *text = kapi_errors_to_text(&errors);
    cr_assert_not_null(spec, "%s", text ? text : "");
    free(text);
    kapi_errors_free(&errors);
    return spec;
}

#endif

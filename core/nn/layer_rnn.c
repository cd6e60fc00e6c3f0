/*
 * layer_rnn.c — the recurrent layers: LSTM and GRU, as torch's nn.LSTM and nn.GRU
 * (parameters weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} and their
 * _reverse twins, in torch's order and with torch's initialisation), stacked from the
 * one-layer ops kn_lstm and kn_gru (core/ops/ops_rnn.c).
 *
 * Kiln's data is batch-first, so batch_first defaults to true here; a module made in C
 * with batch_first false takes torch's [T, N, features] as torch does, but a spec
 * cannot say so (its per-sample shape is [T, features]). Kiln adds one argument of its
 * own, output: "sequence" (torch's output, every step's hidden state) or "last" (the
 * final hidden state of the last layer, both directions: what a sequence classifier
 * feeds to its head).
 */
#include "nn_internal.h"

#include <math.h>

/* ---- lstm, gru: nn.LSTM / nn.GRU(input_size, hidden_size, num_layers=1, bias=True,
 * batch_first=True (torch: False), dropout=0.0, bidirectional=False), output="sequence"
 * x [N, T, input_size] -> [N, T, D * hidden_size] ("sequence") or [N, D * hidden_size]
 * ("last"), D = 2 when bidirectional. Per layer k and direction: weight_ih_l{k}
 * [G, input of layer k], weight_hh_l{k} [G, hidden_size], bias_ih_l{k}, bias_hh_l{k}
 * [G]; G = 4 * hidden_size (LSTM) or 3 * hidden_size (GRU); the input of layer k > 0 is
 * D * hidden_size wide. */

#define RNN_MAX_LAYERS 1000

static const char *const RNN_OUTPUTS[] = {"sequence", "last", NULL};

static const kn_layer_arg RNN_ARGS[] = {
    KN_ARG_SIZE_OF(rnn, input_size, KN_ARG_INFERRED),
    KN_ARG_SIZE_OF(rnn, hidden_size, KN_ARG_REQUIRED),
    KN_ARG_INT_OF(rnn, num_layers, .def = 1, .min = 1, .max = RNN_MAX_LAYERS),
    KN_ARG_BOOL_OF(rnn, bias, true),
    KN_ARG_BOOL_OF(rnn, batch_first, true),
    KN_ARG_NUMBER_OF(rnn, dropout, .def = 0, .min = 0, .max = 1),
    KN_ARG_BOOL_OF(rnn, bidirectional, false),
    KN_ARG_CHOICE_OF(rnn, output, RNN_OUTPUTS, .def = KN_RNN_OUTPUT_SEQUENCE),
    {0},
};

static int gates_of(kn_module_kind kind)
{
    return kind == KN_MODULE_LSTM ? 4 : 3;
}

static int directions(const kn_rnn_options *o)
{
    return o->bidirectional ? 2 : 1;
}

/* The tensors of layer k, direction d: registered in that order, 4 (2 without bias) a
 * direction, so they are found by place rather than by name. */
static kn_rnn_weights weights_of(const kn_module *m, int64_t k, int d)
{
    const kn_rnn_options *o = &m->options.rnn;
    int per = o->bias ? 4 : 2;
    const kn_module_tensor *t = &m->tensors[(k * directions(o) + d) * per];
    kn_rnn_weights w = {t[0].tensor, t[1].tensor, NULL, NULL};
    if (o->bias) {
        w.b_ih = t[2].tensor;
        w.b_hh = t[3].tensor;
    }
    return w;
}

static kn_status rnn_init(kn_module *m, kn_generator *gen)
{
    const kn_rnn_options *o = &m->options.rnn;
    KN__CHECK_POSITIVE(m, "input_size", o->input_size);
    KN__CHECK_POSITIVE(m, "hidden_size", o->hidden_size);
    KN__CHECK_POSITIVE(m, "num_layers", o->num_layers);
    if (o->num_layers > RNN_MAX_LAYERS)
        return kn__error(KN_ERR_VALUE, "%s: num_layers must be at most %d, got %lld", m->type_name,
                         RNN_MAX_LAYERS, (long long)o->num_layers);
    if (!(o->dropout >= 0 && o->dropout <= 1))
        return kn__error(KN_ERR_VALUE,
                         "%s: dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed, got %g",
                         m->type_name, o->dropout);
    if (o->output != KN_RNN_OUTPUT_SEQUENCE && o->output != KN_RNN_OUTPUT_LAST)
        return kn__error(KN_ERR_VALUE, "%s: output must be sequence (0) or last (1), got %d",
                         m->type_name, o->output);
    int64_t H = o->hidden_size, G = gates_of(m->kind) * H;
    for (int64_t k = 0; k < o->num_layers; k++) {
        int64_t in = k == 0 ? o->input_size : directions(o) * H;
        for (int d = 0; d < directions(o); d++) {
            const char *suffix = d ? "_reverse" : "";
            char name[48];
            snprintf(name, sizeof name, "weight_ih_l%lld%s", (long long)k, suffix);
            if (!kn__module_parameter(m, name, (int64_t[]){G, in}, 2, 0.0)) return kn_last_status();
            snprintf(name, sizeof name, "weight_hh_l%lld%s", (long long)k, suffix);
            if (!kn__module_parameter(m, name, (int64_t[]){G, H}, 2, 0.0)) return kn_last_status();
            if (!o->bias) continue;
            snprintf(name, sizeof name, "bias_ih_l%lld%s", (long long)k, suffix);
            if (!kn__module_parameter(m, name, &G, 1, 0.0)) return kn_last_status();
            snprintf(name, sizeof name, "bias_hh_l%lld%s", (long long)k, suffix);
            if (!kn__module_parameter(m, name, &G, 1, 0.0)) return kn_last_status();
        }
    }
    /* torch's RNNBase.reset_parameters: every parameter, in registration order */
    double stdv = 1.0 / sqrt((double)H);
    for (int i = 0; i < m->n_tensors; i++)
        if (kn_init_uniform_(m->tensors[i].tensor, -stdv, stdv, gen) != KN_OK)
            return kn_last_status();
    return KN_OK;
}

static bool rnn_shape(kn_layer_shape *s)
{
    kn_rnn_options *o = &s->options->rnn;
    const kn_layer_io *in = &s->inputs[0];
    if (!o->batch_first)
        return kn__shape_fail(s, "batch_first",
                              "expected true: Kiln's sequences are batch-first, [N, sequence, "
                              "features] (false would mean torch's [sequence, N, features], a "
                              "layout a spec's data never has)");
    if (in->ndim != 2)
        return kn__shape_fail(s, NULL, "expects a [sequence, features] input, got %s%s",
                              kn__shape_of(in->shape, in->ndim),
                              in->ndim == 1 ? " — give each step a features dim (input_shape "
                                              "[T, 1]) or put an embedding first; an lstm or "
                                              "gru before it must hand on its \"sequence\""
                                            : "");
    if (!kn__shape_infer(s, "input_size", &o->input_size, in->shape[1])) return false;
    int64_t D = directions(o), H = o->hidden_size, G = gates_of(s->type->kind) * H;
    double count = 0;
    for (int64_t k = 0; k < o->num_layers; k++) {
        double width = k == 0 ? (double)o->input_size : (double)(D * H);
        count += (double)D * ((double)G * (width + (double)H) + (o->bias ? 2.0 * (double)G : 0));
    }
    if (count > 9e15) /* beyond exact integers in a double, and far beyond any model */
        return kn__shape_fail(s, "hidden_size", "%lld with %lld layers would make %.3g parameters",
                              (long long)H, (long long)o->num_layers, count);
    s->parameter_count = (int64_t)count;
    if (o->output == KN_RNN_OUTPUT_LAST) {
        s->output.shape[0] = D * H;
        s->output.ndim = 1;
    } else {
        s->output.shape[1] = D * H;
    }
    return true;
}

/* The final hidden state of each direction of y [N, T, D * H], side by side: the forward
 * direction's at step T-1, the reverse direction's at step 0 (torch's h_n[-D:]). */
static kn_tensor *last_states(kn_tensor *y, int64_t hidden, int D)
{
    int64_t T = y->shape[1];
    kn_tensor *forward = kn_select(kn_narrow(y, 2, 0, hidden), 1, T - 1);
    if (D == 1) return forward;
    kn_tensor *parts[2] = {forward, kn_select(kn_narrow(y, 2, hidden, hidden), 1, 0)};
    return kn_cat(parts, 2, 1);
}

static kn_tensor *rnn_forward(kn_module *m, kn_tensor *const *inputs, int n)
{
    (void)n;
    const kn_rnn_options *o = &m->options.rnn;
    kn_tensor *x = inputs[0];
    if (x->ndim != 2 && x->ndim != 3)
        return kn__error_null(KN_ERR_SHAPE,
                              "%s: expected a 3-D [N, sequence, features] (or an unbatched 2-D) "
                              "input, got %s",
                              m->type_name, kn__shape(x));
    if (x->shape[x->ndim - 1] != o->input_size)
        return kn__error_null(KN_ERR_SHAPE,
                              "%s: input.size(-1) must be equal to input_size. Expected %lld, "
                              "got %lld (input %s)",
                              m->type_name, (long long)o->input_size,
                              (long long)x->shape[x->ndim - 1], kn__shape(x));
    bool batched = x->ndim == 3;
    /* the ops take [N, T, features]: an unbatched input is a batch of one, torch's
     * [T, N, features] a view */
    if (!batched)
        x = kn_unsqueeze(x, 0);
    else if (!o->batch_first)
        x = kn_transpose(x, 0, 1);
    int D = directions(o);
    for (int64_t k = 0; x && k < o->num_layers; k++) {
        kn_tensor *out[2] = {NULL, NULL};
        for (int d = 0; d < D; d++)
            out[d] = m->kind == KN_MODULE_LSTM ? kn_lstm(x, NULL, NULL, weights_of(m, k, d), d == 1)
                                               : kn_gru(x, NULL, weights_of(m, k, d), d == 1);
        x = D == 2 ? kn_cat(out, 2, 2) : out[0];
        /* torch: dropout on the outputs of every layer but the last, in training */
        if (x && k + 1 < o->num_layers && o->dropout > 0 && m->training)
            x = kn_dropout(x, o->dropout, true, m->dropout_generator);
    }
    if (!x) return NULL;
    if (o->output == KN_RNN_OUTPUT_LAST) {
        x = last_states(x, o->hidden_size, D);
        return batched ? x : kn_squeeze(x, 0);
    }
    if (!batched) return kn_squeeze(x, 0);
    return o->batch_first ? x : kn_transpose(x, 0, 1);
}

static void rnn_describe(const kn_module *m, char *buf, size_t size)
{
    const kn_rnn_options *o = &m->options.rnn;
    kn__repr_add(buf, size, "%lld, %lld", (long long)o->input_size, (long long)o->hidden_size);
    if (o->num_layers != 1) kn__repr_add(buf, size, ", num_layers=%lld", (long long)o->num_layers);
    if (!o->bias) kn__repr_add(buf, size, ", bias=False");
    if (o->batch_first) kn__repr_add(buf, size, ", batch_first=True");
    if (o->dropout != 0) kn__repr_add(buf, size, ", dropout=%g", o->dropout);
    if (o->bidirectional) kn__repr_add(buf, size, ", bidirectional=True");
    if (o->output == KN_RNN_OUTPUT_LAST) kn__repr_add(buf, size, ", output='last'");
}

/* Dropout between layers draws its mask on the cpu; everything else stays on the device. */
static const char *lstm_host_bound(const kn_module *m)
{
    const kn_rnn_options *o = &m->options.rnn;
    return o->dropout > 0 && o->num_layers > 1 ? "LSTM draws its dropout mask on the cpu" : NULL;
}

static const char *gru_host_bound(const kn_module *m)
{
    const kn_rnn_options *o = &m->options.rnn;
    return o->dropout > 0 && o->num_layers > 1 ? "GRU draws its dropout mask on the cpu" : NULL;
}

const kn_layer_type kn__layer_lstm = {
    .kind = KN_MODULE_LSTM,
    .name = "lstm",
    .torch_name = "LSTM",
    .args = RNN_ARGS,
    .flags = KN_LAYER_RANDOM,
    .host_bound_if = lstm_host_bound,
    .init = rnn_init,
    .shape = rnn_shape,
    .forward = rnn_forward,
    .describe = rnn_describe,
};

const kn_layer_type kn__layer_gru = {
    .kind = KN_MODULE_GRU,
    .name = "gru",
    .torch_name = "GRU",
    .args = RNN_ARGS,
    .flags = KN_LAYER_RANDOM,
    .host_bound_if = gru_host_bound,
    .init = rnn_init,
    .shape = rnn_shape,
    .forward = rnn_forward,
    .describe = rnn_describe,
};

static kn_module *rnn_new(kn_module_kind kind, int64_t input_size, int64_t hidden_size,
                          int64_t num_layers, bool bidirectional, kn_generator *gen)
{
    kn_layer_options o;
    kn_layer_defaults(kind, &o);
    o.rnn.input_size = input_size;
    o.rnn.hidden_size = hidden_size;
    o.rnn.num_layers = num_layers;
    o.rnn.bidirectional = bidirectional;
    return kn_module_new(kind, &o, gen);
}

kn_module *kn_lstm_new(int64_t input_size, int64_t hidden_size, int64_t num_layers,
                       bool bidirectional, kn_generator *gen)
{
    return rnn_new(KN_MODULE_LSTM, input_size, hidden_size, num_layers, bidirectional, gen);
}

kn_module *kn_gru_new(int64_t input_size, int64_t hidden_size, int64_t num_layers,
                      bool bidirectional, kn_generator *gen)
{
    return rnn_new(KN_MODULE_GRU, input_size, hidden_size, num_layers, bidirectional, gen);
}

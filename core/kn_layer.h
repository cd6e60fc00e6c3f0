/*
 * kn_layer.h — the layer table: one row (kn_layer_type) per kind of layer, read by
 * everything that handles layers, so that a kind is defined in one place.
 *
 *   kn_module_new, kn_module_forward, kn_module_describe   init, forward, describe
 *   kn_module_output_shape, api/model_shape.c              shape (kn_layer_infer)
 *   api/model_spec.c                                       name and args: field names,
 *                                                          types, defaults, ranges
 *   train/train_cuda.c (CUDA-graph capture)                capturable, host_bound
 *   docs/model-spec.md (checked by tests/test_layers.c)    name and args
 *
 * A row says what PyTorch's class says: the layer's arguments (torch's names, types,
 * defaults; the spec's ranges), how its output shape follows from its inputs, how it
 * registers and initialises its parameters, and what its forward computes. The rows live
 * beside their code in core/nn/layer_*.c; the table (core/nn/layers.c) lists them by
 * kind, from the X-list KN_LAYER_KINDS in kn_nn.h. docs/adding-a-layer.md is the
 * checklist for a new one.
 *
 * Shapes here are per sample, without the batch dim, as a spec's input_shape is.
 */
#ifndef KN_LAYER_H
#define KN_LAYER_H

#include "kn_nn.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- arguments ------------------------------------------------------------------------ */

typedef enum {
    KN_ARG_INT,    /* int64_t: a JSON integer in [min, max] */
    KN_ARG_NUMBER, /* double: a finite number in [min, max] (ends open by flags) */
    KN_ARG_BOOL,   /* bool */
    KN_ARG_PAIR,   /* int[2]: an integer or an [h, w] pair of them, as torch's _pair */
    KN_ARG_INTS,   /* kn_int_list: an integer or a list of 1 to KN_MAX_DIMS - 1 of them */
    KN_ARG_CHOICE, /* int: the index in choices of the string given */
} kn_arg_type;

enum {
    KN_ARG_REQUIRED = 1 << 0, /* no default: the spec must give it */
    KN_ARG_INFERRED = 1 << 1, /* default 0 (INTS: empty) means "from the input": the
                                 shape rule fills it, and a given value must agree */
    KN_ARG_MIN_OPEN = 1 << 2, /* NUMBER: min itself is out of range */
    KN_ARG_MAX_OPEN = 1 << 3, /* NUMBER: max itself is out of range */
};

/* One argument of a layer: a field of kn_layer_options, described for the spec parser
 * (api/model_spec.c reads it generically), the defaults and the docs. */
typedef struct kn_layer_arg {
    const char *name; /* torch's argument name, and the options field's: "out_features" */
    kn_arg_type type;
    size_t offset;   /* of the field in kn_layer_options */
    unsigned flags;  /* KN_ARG_* */
    double def;      /* default of an optional INT, NUMBER, BOOL (0 or 1), PAIR (both),
                        CHOICE (the index) */
    double min, max; /* INT, PAIR and INTS items: integers in [min, max]; NUMBER: bounds */
    const char *const *choices; /* CHOICE: the strings accepted, NULL-terminated */
    const char *default_from;   /* PAIR: an absent value copies this argument (a pool's
                                   stride is its kernel_size, as torch's None means) */
    const char *expected;       /* a REQUIRED argument's "required field missing:
                                   expected ..." when not the type's own description */
} kn_layer_arg;

/* The most arguments one layer takes (nn.TransformerEncoderLayer has 8). */
#define KN_LAYER_MAX_ARGS 32

/* Spec limits on sizes (features, channels, input dims) and windows (kernel_size,
 * stride, padding, dilation, output_size). */
#define KN_ARG_MAX_SIZE 100000000
#define KN_ARG_MAX_WINDOW 100000

/* Descriptor makers: the field named as the argument, its type checked at compile time
 * (a subtraction of pointers to different types does not compile). */
#define KN__ARG_AT(member, field, ctype)                                                           \
    offsetof(kn_layer_options, member.field) +                                                     \
        0 * sizeof(&((kn_layer_options *)0)->member.field - (__typeof__(ctype) *)0)
#define KN_ARG_INT_OF(member, field, ...)                                                          \
    {                                                                                              \
        .name = #field, .type = KN_ARG_INT, .offset = KN__ARG_AT(member, field, int64_t),          \
        __VA_ARGS__                                                                                \
    }
#define KN_ARG_NUMBER_OF(member, field, ...)                                                       \
    {                                                                                              \
        .name = #field, .type = KN_ARG_NUMBER, .offset = KN__ARG_AT(member, field, double),        \
        __VA_ARGS__                                                                                \
    }
#define KN_ARG_BOOL_OF(member, field, default_)                                                    \
    {                                                                                              \
        .name = #field, .type = KN_ARG_BOOL, .offset = KN__ARG_AT(member, field, bool),            \
        .def = (default_)                                                                          \
    }
#define KN_ARG_PAIR_OF(member, field, ...)                                                         \
    {                                                                                              \
        .name = #field, .type = KN_ARG_PAIR, .offset = KN__ARG_AT(member, field, int[2]),          \
        .max = KN_ARG_MAX_WINDOW, __VA_ARGS__                                                      \
    }
#define KN_ARG_INTS_OF(member, field, ...)                                                         \
    {                                                                                              \
        .name = #field, .type = KN_ARG_INTS, .offset = KN__ARG_AT(member, field, kn_int_list),     \
        __VA_ARGS__                                                                                \
    }
#define KN_ARG_CHOICE_OF(member, field, choices_, ...)                                             \
    {                                                                                              \
        .name = #field, .type = KN_ARG_CHOICE, .offset = KN__ARG_AT(member, field, int),           \
        .choices = (choices_), __VA_ARGS__                                                         \
    }
/* A size: a positive integer up to KN_ARG_MAX_SIZE. */
#define KN_ARG_SIZE_OF(member, field, flags_)                                                      \
    KN_ARG_INT_OF(member, field, .flags = (flags_), .min = 1, .max = KN_ARG_MAX_SIZE)
/* `inplace`: accepted as torch's modules take it, no effect. */
#define KN_ARG_INPLACE_OF(member) KN_ARG_BOOL_OF(member, inplace, false)

/* ---- shapes --------------------------------------------------------------------------- */

/* One input or output of a layer for one sample: shape without the batch dim, dtype. */
typedef struct kn_layer_io {
    int64_t shape[KN_MAX_DIMS];
    int ndim;
    kn_dtype dtype;
} kn_layer_io;

/* What a shape rule is given and what it says. */
typedef struct kn_layer_shape {
    const struct kn_layer_type *type;
    kn_layer_options *options; /* KN_ARG_INFERRED arguments at 0 are filled in here */
    const kn_layer_io *inputs;
    int n_inputs;
    kn_layer_io output;      /* preset to the first input's shape, float32 */
    int64_t parameter_count; /* what the layer's parameters will count */
    int64_t buffer_bytes;    /* what its buffers will take (running statistics) */
    /* issue 12: float32 elements per sample its ops keep for backward besides its output
     * and its input (group_norm's normalised values), for the training-memory estimate */
    int64_t saved_elements;
    /* when the input does not fit: the argument at fault (NULL: the layer itself) and
     * the message. A message about the layer starts with a verb ("expects a 1-D input,
     * got [32, 7, 7]"): a spec error prefixes the type, "layers[7]: linear expects ..." */
    const char *field;
    char message[400];
} kn_layer_shape;

/* Fills s->output, parameter_count, buffer_bytes from s->type, options and inputs, or
 * returns false with field and message set. Checks the inputs' count and dtypes (a
 * layer of float inputs given int64 indices, or the reverse) before the row's rule. */
bool kn_layer_infer(kn_layer_shape *s);

/* ---- the row -------------------------------------------------------------------------- */

enum {
    KN_LAYER_CONTAINER = 1 << 0, /* holds other modules (Sequential): not a spec layer */
    /* ---- attention (issue 12) ---- */
    /* the shape rule checks its inputs' dtypes itself (attention takes float sequences
     * and an int64 key-padding mask): kn_layer_infer does not require input_dtype */
    KN_LAYER_OWN_DTYPES = 1 << 1,
    /* draws from m->dropout_generator when training, as Dropout does (attention's dropout
     * on its weights): the trainer lends it the run's generator */
    KN_LAYER_RANDOM = 1 << 2,
};

typedef struct kn_layer_type {
    kn_module_kind kind;
    const char *name;           /* the spec's type and kn_module_kind_name: "linear" */
    const char *torch_name;     /* torch.nn's class: "Linear" (the repr, error messages) */
    const kn_layer_arg *args;   /* in torch's order, ended by {NULL}; NULL: none */
    unsigned flags;             /* KN_LAYER_* */
    kn_dtype input_dtype;       /* of its inputs: KN_FLOAT32 (0), or KN_INT64 (indices) */
    int min_inputs, max_inputs; /* how many inputs forward takes; 0, 0 means exactly 1 */

    /* CUDA-graph capture (train/train_cuda.c): a training step through this layer can
     * be captured when its CUDA forward and backward never wait for or read from the
     * host. capturable says so; otherwise host_bound says why ("BatchNorm counts batches
     * on the cpu"). host_bound_if, when set, decides per module instead (dropout: only
     * p > 0 draws its mask on the cpu). A row that says nothing is not captured. */
    bool capturable;
    const char *host_bound;
    const char *(*host_bound_if)(const kn_module *m);

    /* Checks m->options (errors in torch's words: "Linear: in_features must be
     * positive, got 0"), normalises them, registers parameters, buffers and children in
     * PyTorch's order and draws their initial values from gen as PyTorch's
     * reset_parameters does. NULL: nothing to check or register. */
    kn_status (*init)(kn_module *m, kn_generator *gen);
    /* The output for s->inputs; see kn_layer_shape. NULL: the output is the input. */
    bool (*shape)(kn_layer_shape *s);
    /* The forward pass on n inputs (with the batch dim); the result belongs to the open
     * scope. */
    kn_tensor *(*forward)(kn_module *m, kn_tensor *const *inputs, int n);
    /* torch's extra_repr: "in_features=3, out_features=4, bias=True" (children are
     * listed by kn_module_describe). NULL: nothing. */
    void (*describe)(const kn_module *m, char *buf, size_t size);
} kn_layer_type;

/* The row of kind, or NULL for a kind out of range. */
const kn_layer_type *kn_layer_of(kn_module_kind kind);
/* The row whose name is name, or NULL. */
const kn_layer_type *kn_layer_find(const char *name);
/* Rows by index, 0 <= i < KN_MODULE_KIND_COUNT, in the order of KN_LAYER_KINDS. */
const kn_layer_type *kn_layer_at(int i);
/* An argument of row by name, or NULL. */
const kn_layer_arg *kn_layer_arg_find(const kn_layer_type *row, const char *name);
/* Why a CUDA graph cannot capture a training step through m or its children (the first
 * reason found), or NULL when it can. */
const char *kn_layer_host_bound(const kn_module *m);

#ifdef __cplusplus
}
#endif
#endif

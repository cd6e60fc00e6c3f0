/*
 * ops_sequence_loss.c — the class-index losses with the classes on the last dim, as a
 * language model's logits [N, T, V] against targets [N, T] (nanoGPT's
 * F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=...)): the scores
 * are viewed as [M, V] rows, the targets as [M], and ops_loss.c's fused cross entropy
 * (or nll) does the rest, ignore_index and label smoothing included; reduction none is
 * viewed back to the targets' shape. torch's F.cross_entropy keeps the classes in dim 1
 * ([N, V, T]); kn_cross_entropy does that, this is the other layout.
 */
#include "kn_internal.h"

#include <string.h>

typedef kn_tensor *(*class_loss_fn)(kn_tensor *scores, kn_tensor *target, kn_reduction reduction,
                                    int64_t ignore_index, double label_smoothing);

/* Checks that target's shape is the scores' without the last dim. */
static bool check_shapes(const char *op, const kn_tensor *scores, const kn_tensor *target)
{
    if (!kn__check_float(op, scores) || !kn__check_int64(op, target, "target")) return false;
    bool fits = scores->ndim >= 1 && target->ndim == scores->ndim - 1;
    for (int d = 0; fits && d < target->ndim; d++) fits = target->shape[d] == scores->shape[d];
    if (fits) return true;
    if (scores->ndim < 1)
        kn__error(KN_ERR_SHAPE, "%s: expected scores [..., classes], got a 0-d tensor", op);
    else
        kn__error(KN_ERR_SHAPE,
                  "%s: target of shape %s does not match scores of shape %s (classes on the last "
                  "dim: expected target shape %s)",
                  op, kn__shape(target), kn__shape(scores),
                  kn__shape_of(scores->shape, scores->ndim - 1));
    return false;
}

static kn_tensor *last_dim_loss(const char *op, class_loss_fn loss, kn_tensor *scores,
                                kn_tensor *target, kn_reduction reduction, int64_t ignore_index,
                                double label_smoothing)
{
    kn_tensor *inputs[2] = {scores, target};
    if (!kn__check_inputs(op, inputs, 2) || !check_shapes(op, scores, target)) return NULL;
    /* [V] against [] is already the unbatched form the fused losses take */
    if (scores->ndim <= 2) return loss(scores, target, reduction, ignore_index, label_smoothing);
    int64_t rows = kn_numel(target), classes = scores->shape[scores->ndim - 1];
    kn_scope_begin();
    kn_tensor *out = loss(kn_reshape(scores, (int64_t[]){rows, classes}, 2),
                          kn_reshape(target, &rows, 1), reduction, ignore_index, label_smoothing);
    if (out && reduction == KN_REDUCTION_NONE) out = kn_reshape(out, target->shape, target->ndim);
    if (!out) {
        kn_scope_end(); /* the error stays set */
        return NULL;
    }
    return kn_scope_escape(out);
}

kn_tensor *kn_sequence_cross_entropy(kn_tensor *logits, kn_tensor *target, kn_reduction reduction,
                                     int64_t ignore_index, double label_smoothing)
{
    return last_dim_loss("sequence_cross_entropy", kn_cross_entropy, logits, target, reduction,
                         ignore_index, label_smoothing);
}

static kn_tensor *nll(kn_tensor *log_probs, kn_tensor *target, kn_reduction reduction,
                      int64_t ignore_index, double label_smoothing)
{
    (void)label_smoothing;
    return kn_nll_loss(log_probs, target, reduction, ignore_index);
}

kn_tensor *kn_sequence_nll_loss(kn_tensor *log_probs, kn_tensor *target, kn_reduction reduction,
                                int64_t ignore_index)
{
    return last_dim_loss("sequence_nll_loss", nll, log_probs, target, reduction, ignore_index, 0.0);
}

// Classification losses (PyTorch's cross_entropy / nll_loss). Scores are viewed as [n, c, d]: n samples, c classes,
// d trailing positions (1 for the usual [n, c]); labels are [n, d]. A position is counted unless its label equals
// ignore_index; counted labels must lie in [0, c). Functions return the flat position ([n * d]) of the first label out
// of range, or -1 when all are valid.
#pragma once
#include <cstdint>

namespace gv::cpu {

struct LossShape {
  int64_t n = 0, c = 0, d = 1;
  bool has_ignore = false;
  int64_t ignore_index = 0;
};

// Per-position loss -w[label] * log_softmax(scores)[label] and weight w[label] (0 at ignored positions) into
// position_loss[n * d] and position_weight[n * d] (double); log_prob [n, c, d] (may be null) gets log_softmax(scores).
// weights [c] may be null (all 1). Only one row of classes is live at a time: no [n, c] temporary.
template <typename T, typename L>
int64_t softmax_cross_entropy(const T* scores, const L* labels, const T* weights, const LossShape& s,
                              double* position_loss, double* position_weight, T* log_prob);

// dscores [n, c, d] = coef * (softmax - onehot(label)) + (dlog_prob - softmax * sum(dlog_prob)), where
// coef = dloss[position] (or dloss[0] when !dloss_per_position) * scale * w[label], 0 at ignored positions.
// dloss and dlog_prob may be null (no gradient reached that output).
template <typename T, typename L>
int64_t softmax_cross_entropy_backward(const T* scores, const L* labels, const T* weights, const LossShape& s,
                                       const T* dloss, bool dloss_per_position, double scale, const T* dlog_prob,
                                       T* dscores);

// Per-position -w[label] * input[label] and w[label] (see softmax_cross_entropy); input [n, c, d] holds log-probs.
template <typename T, typename L>
int64_t nll_loss(const T* input, const L* labels, const T* weights, const LossShape& s, double* position_loss,
                 double* position_weight);

// dinput [n, c, d]: -coef at each counted label, 0 elsewhere (coef as in softmax_cross_entropy_backward).
template <typename T, typename L>
int64_t nll_loss_backward(const L* labels, const T* weights, const LossShape& s, const T* dloss,
                          bool dloss_per_position, double scale, T* dinput);

// Sum of w[label] (or the count) over counted positions: the denominator of reduction "mean".
template <typename T, typename L>
double loss_weight_total(const L* labels, const T* weights, const LossShape& s);

}  // namespace gv::cpu

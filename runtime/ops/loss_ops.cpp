// SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss with PyTorch's semantics (reduction none/sum/mean,
// ignore_index, optional class weights; "mean" divides by the summed weight of the counted positions, and is 0 when
// every position is ignored, where PyTorch gives NaN). Their fused gradient ops (domain galvatron) produce the score
// gradient directly: the only [N, C] tensor they write is that gradient.
#include <vector>

#include "kernels/cpu/loss.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

enum class Reduction { kNone, kSum, kMean };

bool parse_reduction(const Attributes& a, Reduction& r) {
  const std::string s = a.get_string("reduction", "mean");
  if (s == "none") r = Reduction::kNone;
  else if (s == "sum") r = Reduction::kSum;
  else if (s == "mean") r = Reduction::kMean;
  else return false;
  return true;
}

// Validates scores [N, C, d...] (input si), labels [N, d...] (li) and weights [C] (wi, optional); sets the reduction.
Status check_loss_inputs(const InferContext& ctx, int si, int li, int wi, Reduction& red) {
  if (!parse_reduction(ctx.attrs(), red)) {
    return ctx.fail("reduction '" + ctx.attrs().get_string("reduction", "") + "' is not none, sum or mean");
  }
  GV_RETURN_IF_ERROR(expect_float(ctx, si, "scores"));
  const Shape& s = ctx.shape(si);
  if (s.size() < 2) return ctx.fail("scores must be [N, C, d...], got " + shape_str(s));
  if (!is_index(ctx.dtype(li))) return ctx.fail("labels must be int32 or int64");
  Shape expect = s;
  expect.erase(expect.begin() + 1);
  if (ctx.shape(li) != expect) {
    return ctx.fail("labels " + shape_str(ctx.shape(li)) + " must have shape " + shape_str(expect) + " for scores " +
                    shape_str(s));
  }
  if (ctx.has_input(wi) && (ctx.dtype(wi) != ctx.dtype(si) || ctx.shape(wi) != Shape{s[1]})) {
    return ctx.fail("weights must be " + std::string(dtype_name(ctx.dtype(si))) + " [" + std::to_string(s[1]) + "]");
  }
  return Status::ok();
}

cpu::LossShape loss_shape(const Node& node, const Shape& scores) {
  cpu::LossShape s;
  s.n = scores[0];
  s.c = scores[1];
  s.d = dims_product(scores, 2, static_cast<int64_t>(scores.size()));
  s.has_ignore = node.attrs.has("ignore_index");
  s.ignore_index = node.attrs.get_int("ignore_index", 0);
  return s;
}

Status bad_label(const KernelContext& ctx, const TensorRef& labels, int64_t pos, const cpu::LossShape& s) {
  int64_t v = labels.dtype == DType::kInt32 ? labels.as<int32_t>()[pos] : labels.as<int64_t>()[pos];
  return ctx.fail("label " + std::to_string(v) + " at position " + std::to_string(pos) + " is outside [0, " +
                  std::to_string(s.c) + ")" +
                  (s.has_ignore ? " and is not ignore_index " + std::to_string(s.ignore_index) : ""));
}

// Reduces the per-position losses into the loss output.
template <typename T>
void write_loss(Reduction red, const std::vector<double>& loss, const std::vector<double>& weight, T* out) {
  if (red == Reduction::kNone) {
    for (size_t i = 0; i < loss.size(); ++i) out[i] = static_cast<T>(loss[i]);
    return;
  }
  double sum = 0.0, total = 0.0;
  for (size_t i = 0; i < loss.size(); ++i) sum += loss[i], total += weight[i];
  *out = static_cast<T>(red == Reduction::kSum ? sum : (total > 0.0 ? sum / total : 0.0));
}

// The gradient multiplier of the loss output: 1/total weight for "mean".
template <typename T, typename L>
double grad_scale(Reduction red, const L* labels, const T* weights, const cpu::LossShape& s) {
  if (red != Reduction::kMean) return 1.0;
  const double total = cpu::loss_weight_total(labels, weights, s);
  return total > 0.0 ? 1.0 / total : 0.0;
}

template <typename T>
const T* optional_input(const KernelContext& ctx, int i) {
  return ctx.has_input(i) ? ctx.inputs[i].as<T>() : nullptr;
}

// ---- SoftmaxCrossEntropyLoss(scores, labels, weights?) -> (loss, log_prob?) ----

Status infer_sce(InferContext& ctx) {
  Reduction red;
  GV_RETURN_IF_ERROR(check_loss_inputs(ctx, 0, 1, 2, red));
  ctx.set_output(0, ctx.dtype(0), red == Reduction::kNone ? ctx.shape(1) : Shape{});
  if (ctx.num_outputs() > 1) ctx.set_output(1, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

Status sce_cpu(KernelContext& ctx) {
  const TensorRef &scores = ctx.inputs[0], &labels = ctx.inputs[1];
  Reduction red;
  parse_reduction(ctx.attrs(), red);
  const cpu::LossShape s = loss_shape(*ctx.node, scores.shape);
  std::vector<double> loss(s.n * s.d), weight(s.n * s.d);
  int64_t bad = -1;
  Status st = dispatch_float(scores.dtype, ctx, [&](auto t_tag) {
    using T = decltype(t_tag);
    T* log_prob = ctx.outputs.size() > 1 ? ctx.outputs[1].as<T>() : nullptr;
    Status inner = dispatch_index(labels.dtype, ctx, [&](auto l_tag) {
      using L = decltype(l_tag);
      bad = cpu::softmax_cross_entropy(scores.as<T>(), labels.as<L>(), optional_input<T>(ctx, 2), s, loss.data(),
                                       weight.data(), log_prob);
    });
    if (inner.is_ok() && bad < 0) write_loss(red, loss, weight, ctx.outputs[0].as<T>());
  });
  GV_RETURN_IF_ERROR(st);
  return bad >= 0 ? bad_label(ctx, labels, bad, s) : Status::ok();
}

// SoftmaxCrossEntropyLossGrad(dLoss?, scores, labels, weights?, dLogProb?) -> dScores; attrs reduction, ignore_index.
Status infer_sce_grad(InferContext& ctx) {
  Reduction red;
  GV_RETURN_IF_ERROR(check_loss_inputs(ctx, 1, 2, 3, red));
  if (ctx.has_input(4) && ctx.shape(4) != ctx.shape(1)) return ctx.fail("dLogProb must match scores");
  ctx.set_output(0, ctx.dtype(1), ctx.shape(1));
  return Status::ok();
}

Status sce_grad_cpu(KernelContext& ctx) {
  const TensorRef &scores = ctx.inputs[1], &labels = ctx.inputs[2];
  Reduction red;
  parse_reduction(ctx.attrs(), red);
  const cpu::LossShape s = loss_shape(*ctx.node, scores.shape);
  int64_t bad = -1;
  GV_RETURN_IF_ERROR(dispatch_float(scores.dtype, ctx, [&](auto t_tag) {
    using T = decltype(t_tag);
    (void)dispatch_index(labels.dtype, ctx, [&](auto l_tag) {
      using L = decltype(l_tag);
      const T* w = optional_input<T>(ctx, 3);
      bad = cpu::softmax_cross_entropy_backward(scores.as<T>(), labels.as<L>(), w, s, optional_input<T>(ctx, 0),
                                                red == Reduction::kNone, grad_scale(red, labels.as<L>(), w, s),
                                                optional_input<T>(ctx, 4), ctx.outputs[0].as<T>());
    });
  }));
  return bad >= 0 ? bad_label(ctx, labels, bad, s) : Status::ok();
}

Attributes loss_grad_attrs(const GradBuilder& gb) {
  Attributes a;
  a.set_string("reduction", gb.attrs().get_string("reduction", "mean"));
  if (gb.attrs().has("ignore_index")) a.set_int("ignore_index", gb.attrs().get_int("ignore_index", 0));
  return a;
}

Status sce_grad(GradBuilder& gb) {
  const ValueId dlog_prob = gb.num_outputs() > 1 ? gb.grad_output(1) : kNoValue;
  gb.set_grad_input(0, gb.emit1("SoftmaxCrossEntropyLossGrad",
                                {gb.grad_output(0), gb.input(0), gb.input(1), gb.input(2), dlog_prob},
                                loss_grad_attrs(gb), kGalvatronDomain));
  return Status::ok();
}

// ---- NegativeLogLikelihoodLoss(input, target, weight?) -> loss ----

Status infer_nll(InferContext& ctx) {
  Reduction red;
  GV_RETURN_IF_ERROR(check_loss_inputs(ctx, 0, 1, 2, red));
  ctx.set_output(0, ctx.dtype(0), red == Reduction::kNone ? ctx.shape(1) : Shape{});
  return Status::ok();
}

Status nll_cpu(KernelContext& ctx) {
  const TensorRef &input = ctx.inputs[0], &labels = ctx.inputs[1];
  Reduction red;
  parse_reduction(ctx.attrs(), red);
  const cpu::LossShape s = loss_shape(*ctx.node, input.shape);
  std::vector<double> loss(s.n * s.d), weight(s.n * s.d);
  int64_t bad = -1;
  GV_RETURN_IF_ERROR(dispatch_float(input.dtype, ctx, [&](auto t_tag) {
    using T = decltype(t_tag);
    Status inner = dispatch_index(labels.dtype, ctx, [&](auto l_tag) {
      using L = decltype(l_tag);
      bad = cpu::nll_loss(input.as<T>(), labels.as<L>(), optional_input<T>(ctx, 2), s, loss.data(), weight.data());
    });
    if (inner.is_ok() && bad < 0) write_loss(red, loss, weight, ctx.outputs[0].as<T>());
  }));
  return bad >= 0 ? bad_label(ctx, labels, bad, s) : Status::ok();
}

// NegativeLogLikelihoodLossGrad(dLoss, target, weight?) -> dInput; attrs reduction, ignore_index, shape (input's).
Status infer_nll_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(expect_float(ctx, 0, "dLoss"));
  const Shape shape = ctx.attrs().get_ints("shape");
  Reduction red;
  if (!parse_reduction(ctx.attrs(), red)) return ctx.fail("bad reduction");
  if (shape.size() < 2 || !is_index(ctx.dtype(1))) return ctx.fail("needs attr shape [N, C, d...] and int labels");
  Shape expect = shape;
  expect.erase(expect.begin() + 1);
  if (ctx.shape(1) != expect) return ctx.fail("target must have shape " + shape_str(expect));
  ctx.set_output(0, ctx.dtype(0), shape);
  return Status::ok();
}

Status nll_grad_cpu(KernelContext& ctx) {
  const TensorRef& labels = ctx.inputs[1];
  Reduction red;
  parse_reduction(ctx.attrs(), red);
  const cpu::LossShape s = loss_shape(*ctx.node, ctx.outputs[0].shape);
  int64_t bad = -1;
  GV_RETURN_IF_ERROR(dispatch_float(ctx.inputs[0].dtype, ctx, [&](auto t_tag) {
    using T = decltype(t_tag);
    (void)dispatch_index(labels.dtype, ctx, [&](auto l_tag) {
      using L = decltype(l_tag);
      const T* w = optional_input<T>(ctx, 2);
      bad = cpu::nll_loss_backward(labels.as<L>(), w, s, ctx.inputs[0].as<T>(), red == Reduction::kNone,
                                   grad_scale(red, labels.as<L>(), w, s), ctx.outputs[0].as<T>());
    });
  }));
  return bad >= 0 ? bad_label(ctx, labels, bad, s) : Status::ok();
}

Status nll_grad(GradBuilder& gb) {
  Attributes a = loss_grad_attrs(gb);
  a.set_ints("shape", gb.shape(gb.input(0)));
  gb.set_grad_input(0, gb.emit1("NegativeLogLikelihoodLossGrad", {gb.grad_output(0), gb.input(1), gb.input(2)}, a,
                                kGalvatronDomain));
  return Status::ok();
}

}  // namespace

void register_loss_ops(OpRegistry& r) {
  OpSchema sce = make_schema("", "SoftmaxCrossEntropyLoss", 2, 3, 1, 2, infer_sce, sce_cpu,
                             "(scores [N,C,d..], labels [N,d..], weights?) -> (loss, log_prob?); PyTorch cross_entropy");
  sce.grad = sce_grad;
  sce.nondiff_inputs = {1, 2};
  r.add(sce);
  OpSchema nll = make_schema("", "NegativeLogLikelihoodLoss", 2, 3, 1, 1, infer_nll, nll_cpu,
                             "(input [N,C,d..], target [N,d..], weight?) -> loss; PyTorch nll_loss");
  nll.grad = nll_grad;
  nll.nondiff_inputs = {1, 2};
  r.add(nll);
  r.add(make_schema(kGalvatronDomain, "SoftmaxCrossEntropyLossGrad", 3, 5, 1, 1, infer_sce_grad, sce_grad_cpu,
                    "(dLoss?, scores, labels, weights?, dLogProb?) -> dScores, softmax recomputed per row"));
  r.add(make_schema(kGalvatronDomain, "NegativeLogLikelihoodLossGrad", 2, 3, 1, 1, infer_nll_grad, nll_grad_cpu,
                    "(dLoss, target, weight?) -> dInput (attr shape)"));
}

}  // namespace gv::math

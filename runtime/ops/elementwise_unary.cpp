// Unary math ops: Neg Abs Sign Sqrt Reciprocal Exp Log Cos Sin Floor Ceil Round, the predicates IsNaN IsInf Not,
// and Clip. Activations are in elementwise_activation.cpp.
#include <limits>

#include "runtime/ops/elementwise_common.h"

namespace gv::elementwise {
namespace {

using cpu::UnaryOp;

// ---- backward rules (G: output gradient, X: input, Y: output) ----

// -G
Status grad_neg(GradBuilder& b) {
  b.set_grad_input(0, b.emit1("Neg", {b.grad_output(0)}));
  return b.status();
}

// G * sign(X)
Status grad_abs(GradBuilder& b) {
  b.set_grad_input(0, b.emit1("Mul", {b.grad_output(0), b.emit1("Sign", {b.input(0)})}));
  return b.status();
}

// G / (2 Y)
Status grad_sqrt(GradBuilder& b) {
  ValueId half_g = b.emit1("Mul", {b.grad_output(0), scalar_like(b, b.output(0), 0.5)});
  b.set_grad_input(0, b.emit1("Div", {half_g, b.output(0)}));
  return b.status();
}

// d(1/x) = -1/x^2 = -Y^2
Status grad_reciprocal(GradBuilder& b) {
  ValueId y = b.output(0);
  ValueId gy2 = b.emit1("Mul", {b.grad_output(0), b.emit1("Mul", {y, y})});
  b.set_grad_input(0, b.emit1("Neg", {gy2}));
  return b.status();
}

// G * Y
Status grad_exp(GradBuilder& b) {
  b.set_grad_input(0, b.emit1("Mul", {b.grad_output(0), b.output(0)}));
  return b.status();
}

// G / X
Status grad_log(GradBuilder& b) {
  b.set_grad_input(0, b.emit1("Div", {b.grad_output(0), b.input(0)}));
  return b.status();
}

// -G * sin(X)
Status grad_cos(GradBuilder& b) {
  ValueId g_sin = b.emit1("Mul", {b.grad_output(0), b.emit1("Sin", {b.input(0)})});
  b.set_grad_input(0, b.emit1("Neg", {g_sin}));
  return b.status();
}

// G * cos(X)
Status grad_sin(GradBuilder& b) {
  b.set_grad_input(0, b.emit1("Mul", {b.grad_output(0), b.emit1("Cos", {b.input(0)})}));
  return b.status();
}

// The gradient passes where X was not clipped (Y == X, bounds included, as PyTorch's clamp); min and max are
// listed as non-differentiable.
Status grad_clip(GradBuilder& b) {
  ValueId kept = b.emit1("Equal", {b.input(0), b.output(0)});
  b.set_grad_input(0, b.emit1("Where", {kept, b.grad_output(0), scalar_like(b, b.grad_output(0), 0.0)}));
  return b.status();
}

// ---- predicates ----

Status infer_predicate(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, kFloatTypes));
  ctx.set_output(0, DType::kBool, ctx.shape(0));
  return Status::ok();
}

Status is_nan_kernel(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  return visit_float(ctx, x.dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::is_nan<T>(x.as<T>(), ctx.outputs[0].as<uint8_t>(), x.numel());
    return Status::ok();
  });
}

Status is_inf_kernel(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const bool neg = ctx.attrs().get_int("detect_negative", 1) != 0;
  const bool pos = ctx.attrs().get_int("detect_positive", 1) != 0;
  return visit_float(ctx, x.dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::is_inf<T>(x.as<T>(), ctx.outputs[0].as<uint8_t>(), x.numel(), neg, pos);
    return Status::ok();
  });
}

Status not_kernel(KernelContext& ctx) {
  cpu::logical_not(ctx.inputs[0].as<uint8_t>(), ctx.outputs[0].as<uint8_t>(), ctx.inputs[0].numel());
  return Status::ok();
}

// ---- Clip(X, [min], [max]): the bounds are optional scalar inputs of X's dtype ----

Status infer_clip(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, kNumericTypes));
  for (int i = 1; i < 3; ++i) {
    if (!ctx.has_input(i)) continue;
    GV_RETURN_IF_ERROR(check_same_dtype(ctx, 0, i));
    GV_RETURN_IF_ERROR(check_scalar(ctx, i, i == 1 ? "min" : "max"));
  }
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

Status clip_kernel(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  return visit_numeric(ctx, x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Lim = std::numeric_limits<T>;
    const T lo = ctx.has_input(1) ? *ctx.inputs[1].as<T>() : (Lim::has_infinity ? -Lim::infinity() : Lim::lowest());
    const T hi = ctx.has_input(2) ? *ctx.inputs[2].as<T>() : (Lim::has_infinity ? Lim::infinity() : Lim::max());
    cpu::clip<T>(x.as<T>(), ctx.outputs[0].as<T>(), x.numel(), lo, hi);
    return Status::ok();
  });
}

}  // namespace

void register_unary_math_ops(OpRegistry& r) {
  r.add(unary_schema<UnaryOp::kNeg, kSignedTypes>("Neg", grad_neg, "y = -x"));
  r.add(unary_schema<UnaryOp::kAbs, kNumericTypes>("Abs", grad_abs, "y = |x|"));
  r.add(unary_schema<UnaryOp::kSign, kNumericTypes>("Sign", nullptr, "y = -1, 0 or 1 by the sign of x"));
  r.add(unary_schema<UnaryOp::kSqrt, kFloatTypes>("Sqrt", grad_sqrt, "y = sqrt(x)"));
  r.add(unary_schema<UnaryOp::kReciprocal, kFloatTypes>("Reciprocal", grad_reciprocal, "y = 1 / x"));
  r.add(unary_schema<UnaryOp::kExp, kFloatTypes>("Exp", grad_exp, "y = e^x"));
  r.add(unary_schema<UnaryOp::kLog, kFloatTypes>("Log", grad_log, "y = ln(x)"));
  r.add(unary_schema<UnaryOp::kCos, kFloatTypes>("Cos", grad_cos, "y = cos(x)"));
  r.add(unary_schema<UnaryOp::kSin, kFloatTypes>("Sin", grad_sin, "y = sin(x)"));
  r.add(unary_schema<UnaryOp::kFloor, kFloatTypes>("Floor", nullptr, "y = floor(x)"));
  r.add(unary_schema<UnaryOp::kCeil, kFloatTypes>("Ceil", nullptr, "y = ceil(x)"));
  r.add(unary_schema<UnaryOp::kRound, kFloatTypes>("Round", nullptr, "y = x rounded to nearest, halves to even"));

  r.add(make_schema("IsNaN", 1, 1, infer_predicate, with_half_as_float<is_nan_kernel>, nullptr,
                    "y = isnan(x), as bool"));
  r.add(make_schema("IsInf", 1, 1, infer_predicate, with_half_as_float<is_inf_kernel>, nullptr,
                    "y = isinf(x) for the signs selected by detect_negative/detect_positive, as bool"));
  r.add(make_schema("Not", 1, 1, infer_unary<kBoolType>, not_kernel, nullptr, "y = !x over bool"));

  OpSchema clip = make_schema("Clip", 1, 3, infer_clip, with_half_as_float<clip_kernel>, grad_clip,
                              "y = min(max(x, min), max) with optional scalar bounds");
  clip.nondiff_inputs = {1, 2};
  r.add(std::move(clip));
}

}  // namespace gv::elementwise

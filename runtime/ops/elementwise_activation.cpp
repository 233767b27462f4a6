// Activation ops: Relu LeakyRelu Sigmoid Tanh Erf Gelu Softplus HardSigmoid, and the fused gradient ops of the
// transformer activations (domain "galvatron"): SigmoidGrad TanhGrad ErfGrad GeluGrad. Each fused op is one pass
// over dY and one saved tensor where the decomposed rule would be 3 to 8 full-size ops (GELU exported before
// opset 20 is Div/Erf/Add/Mul/Mul, so ErfGrad is on the hot path of such models too).
#include "runtime/ops/elementwise_common.h"

namespace gv::elementwise {
namespace {

using cpu::ActivationGrad;
using cpu::UnaryOp;

Status check_gelu_approximate(const InferContext& ctx) {
  const std::string a = ctx.attrs().get_string("approximate", "none");
  if (a == "none" || a == "tanh") return Status::ok();
  return ctx.fail("attribute approximate must be \"none\" or \"tanh\", got \"" + a + "\"");
}

Status infer_gelu(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_gelu_approximate(ctx));
  return infer_unary<kFloatTypes>(ctx);
}

Status gelu_kernel(KernelContext& ctx) {
  if (ctx.attrs().get_string("approximate", "none") == "tanh") return unary_kernel<UnaryOp::kGeluTanh>(ctx);
  return unary_kernel<UnaryOp::kGelu>(ctx);
}

// ---- backward rules (G: output gradient, X: input, Y: output) ----

// G where Y > 0
Status grad_relu(GradBuilder& b) {
  ValueId zero = scalar_like(b, b.output(0), 0.0);
  ValueId pos = b.emit1("Greater", {b.output(0), zero});
  b.set_grad_input(0, b.emit1("Where", {pos, b.grad_output(0), zero}));
  return b.status();
}

// G where X > 0, alpha G elsewhere
Status grad_leaky_relu(GradBuilder& b) {
  ValueId g = b.grad_output(0);
  ValueId pos = b.emit1("Greater", {b.input(0), scalar_like(b, b.input(0), 0.0)});
  ValueId scaled = b.emit1("Mul", {g, scalar_like(b, g, b.attrs().get_float("alpha", 0.01f))});
  b.set_grad_input(0, b.emit1("Where", {pos, g, scaled}));
  return b.status();
}

// alpha G where 0 < Y < 1 (the linear part), 0 where clamped
Status grad_hard_sigmoid(GradBuilder& b) {
  ValueId y = b.output(0), g = b.grad_output(0);
  ValueId above = b.emit1("Greater", {y, scalar_like(b, y, 0.0)});
  ValueId below = b.emit1("Less", {y, scalar_like(b, y, 1.0)});
  ValueId linear = b.emit1("And", {above, below});
  ValueId scaled = b.emit1("Mul", {g, scalar_like(b, g, b.attrs().get_float("alpha", 0.2f))});
  b.set_grad_input(0, b.emit1("Where", {linear, scaled, scalar_like(b, g, 0.0)}));
  return b.status();
}

// G * sigmoid(X)
Status grad_softplus(GradBuilder& b) {
  b.set_grad_input(0, b.emit1("Mul", {b.grad_output(0), b.emit1("Sigmoid", {b.input(0)})}));
  return b.status();
}

// The fused rules: <Op>Grad(G, Y) or <Op>Grad(G, X).
template <bool kFromOutput>
Status grad_fused(GradBuilder& b) {
  const std::string op = b.node().op_type + "Grad";
  Attributes a;
  if (b.node().op_type == "Gelu") a.set_string("approximate", b.attrs().get_string("approximate", "none"));
  ValueId saved = kFromOutput ? b.output(0) : b.input(0);
  b.set_grad_input(0, b.emit1(op, {b.grad_output(0), saved}, a, kGalvatronDomain));
  return b.status();
}

// ---- fused gradient ops: dX = <Op>Grad(dY, saved), saved = Y or X of the forward op, same shape as dY ----

// The saved tensor may also be bfloat16 with a float32 dY (a galvatron Linear that writes its pre-activation in bf16,
// runtime/bf16_operands.cpp); dX is float32 then.
Status infer_activation_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, kFloatTypes));
  if (!(ctx.dtype(0) == DType::kFloat32 && ctx.dtype(1) == DType::kBFloat16)) {
    GV_RETURN_IF_ERROR(check_same_dtype(ctx, 0, 1));
  }
  if (ctx.shape(0) != ctx.shape(1)) {
    return ctx.fail("dY " + shape_str(ctx.shape(0)) + " and the saved tensor " + shape_str(ctx.shape(1)) +
                    " must have the same shape");
  }
  if (ctx.node().op_type == "GeluGrad") GV_RETURN_IF_ERROR(check_gelu_approximate(ctx));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

template <ActivationGrad Op>
Status activation_grad_kernel(KernelContext& ctx) {
  ActivationGrad op = Op;
  if (op == ActivationGrad::kGelu && ctx.attrs().get_string("approximate", "none") == "tanh") {
    op = ActivationGrad::kGeluTanh;
  }
  const TensorRef& dy = ctx.inputs[0];
  if (ctx.inputs[1].dtype == DType::kBFloat16 && dy.dtype == DType::kFloat32) {
    Tensor wide = Tensor::uninitialized(DType::kFloat32, ctx.inputs[1].shape);
    convert_elements(ctx.inputs[1].data, DType::kBFloat16, wide.data(), DType::kFloat32, wide.numel());
    cpu::activation_grad<float>(op, dy.as<float>(), wide.data_as<float>(), ctx.outputs[0].as<float>(), dy.numel());
    return Status::ok();
  }
  return visit_float(ctx, dy.dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::activation_grad<T>(op, dy.as<T>(), ctx.inputs[1].as<T>(), ctx.outputs[0].as<T>(), dy.numel());
    return Status::ok();
  });
}

template <ActivationGrad Op>
OpSchema activation_grad_schema(const char* name, const char* doc) {
  OpSchema s = make_schema(name, 2, 2, infer_activation_grad, with_half_as_float<activation_grad_kernel<Op>>,
                           nullptr, doc);
  s.domain = kGalvatronDomain;
  return s;
}

}  // namespace

void register_activation_ops(OpRegistry& r) {
  r.add(unary_schema<UnaryOp::kRelu, kSignedTypes>("Relu", grad_relu, "y = max(x, 0)"));
  r.add(unary_schema<UnaryOp::kLeakyRelu, kFloatTypes>("LeakyRelu", grad_leaky_relu,
                                                       "y = x < 0 ? alpha x : x (alpha = 0.01)"));
  r.add(unary_schema<UnaryOp::kSigmoid, kFloatTypes>("Sigmoid", grad_fused<true>, "y = 1 / (1 + e^-x)"));
  r.add(unary_schema<UnaryOp::kTanh, kFloatTypes>("Tanh", grad_fused<true>, "y = tanh(x)"));
  r.add(unary_schema<UnaryOp::kErf, kFloatTypes>("Erf", grad_fused<false>, "y = erf(x)"));
  r.add(unary_schema<UnaryOp::kSoftplus, kFloatTypes>("Softplus", grad_softplus, "y = ln(1 + e^x)"));
  r.add(unary_schema<UnaryOp::kHardSigmoid, kFloatTypes>("HardSigmoid", grad_hard_sigmoid,
                                                         "y = max(0, min(1, alpha x + beta)) (0.2, 0.5)"));
  r.add(make_schema("Gelu", 1, 1, infer_gelu, with_half_as_float<gelu_kernel>, grad_fused<false>,
                    "y = x Phi(x); approximate = none (erf) | tanh"));

  r.add(activation_grad_schema<ActivationGrad::kSigmoid>("SigmoidGrad", "dX = dY * Y * (1 - Y), Y = Sigmoid(X)"));
  r.add(activation_grad_schema<ActivationGrad::kTanh>("TanhGrad", "dX = dY * (1 - Y^2), Y = Tanh(X)"));
  r.add(activation_grad_schema<ActivationGrad::kErf>("ErfGrad", "dX = dY * 2/sqrt(pi) * exp(-X^2)"));
  r.add(activation_grad_schema<ActivationGrad::kGelu>("GeluGrad", "dX = dY * Gelu'(X); approximate = none | tanh"));
}

}  // namespace gv::elementwise

// Broadcasting binary ops: Add Sub Mul Div Pow Mod, the comparisons Equal Less LessOrEqual Greater GreaterOrEqual,
// and the logic ops And Or Xor. Operands broadcast numpy-style; both have the same dtype except Pow's exponent.
#include "kernels/cpu/broadcast.h"
#include "runtime/ops/elementwise_common.h"

namespace gv::elementwise {
namespace {

using cpu::BinaryOp;
using cpu::CompareOp;

// Output dtype: the inputs' (Arithmetic) or bool (comparisons, logic).
template <TypeSet Allowed, bool kBoolOutput>
Status infer_binary(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, Allowed));
  GV_RETURN_IF_ERROR(check_same_dtype(ctx, 0, 1));
  Shape out;
  GV_RETURN_IF_ERROR(broadcast_inputs(ctx, 0, 2, &out));
  ctx.set_output(0, kBoolOutput ? DType::kBool : ctx.dtype(0), std::move(out));
  return Status::ok();
}

cpu::BroadcastPlan binary_plan(const KernelContext& ctx) {
  return cpu::make_broadcast_plan(ctx.outputs[0].shape, {ctx.inputs[0].shape, ctx.inputs[1].shape});
}

Status run_binary(KernelContext& ctx, BinaryOp op) {
  const cpu::BroadcastPlan plan = binary_plan(ctx);
  return visit_numeric(ctx, ctx.inputs[0].dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::binary<T>(op, ctx.inputs[0].as<T>(), ctx.inputs[1].as<T>(), ctx.outputs[0].as<T>(), plan);
    return Status::ok();
  });
}

template <BinaryOp Op>
Status binary_kernel(KernelContext& ctx) {
  return run_binary(ctx, Op);
}

template <CompareOp Op>
Status compare_kernel(KernelContext& ctx) {
  const cpu::BroadcastPlan plan = binary_plan(ctx);
  return visit_numeric(ctx, ctx.inputs[0].dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::compare<T>(Op, ctx.inputs[0].as<T>(), ctx.inputs[1].as<T>(), ctx.outputs[0].as<uint8_t>(), plan);
    return Status::ok();
  });
}

// ---- Mod: fmod = 0 takes the divisor's sign (numpy.mod), fmod = 1 the dividend's (C fmod) ----

Status infer_mod(InferContext& ctx) {
  const int64_t fmod = ctx.attrs().get_int("fmod", 0);
  if (fmod != 0 && fmod != 1) return ctx.fail("attribute fmod must be 0 or 1, got " + std::to_string(fmod));
  return infer_binary<kNumericTypes, false>(ctx);
}

Status mod_kernel(KernelContext& ctx) {
  return run_binary(ctx, ctx.attrs().get_int("fmod", 0) ? BinaryOp::kFMod : BinaryOp::kMod);
}

// ---- Pow(X, Y): Y may have another numeric dtype; the output has X's ----

constexpr TypeSet kPowBaseTypes = kFloatTypes | type_bit(DType::kInt64) | type_bit(DType::kInt32);

Status infer_pow(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, kPowBaseTypes));
  GV_RETURN_IF_ERROR(check_dtype(ctx, 1, kNumericTypes));
  Shape out;
  GV_RETURN_IF_ERROR(broadcast_inputs(ctx, 0, 2, &out));
  ctx.set_output(0, ctx.dtype(0), std::move(out));
  return Status::ok();
}

template <typename TB>
Status run_pow(KernelContext& ctx, const cpu::BroadcastPlan& plan) {
  return visit_numeric(ctx, ctx.inputs[1].dtype, [&](auto tag) {
    using TE = decltype(tag);
    cpu::power<TB, TE>(ctx.inputs[0].as<TB>(), ctx.inputs[1].as<TE>(), ctx.outputs[0].as<TB>(), plan);
    return Status::ok();
  });
}

Status pow_kernel(KernelContext& ctx) {
  const cpu::BroadcastPlan plan = binary_plan(ctx);
  switch (ctx.inputs[0].dtype) {
    case DType::kFloat32: return run_pow<float>(ctx, plan);
    case DType::kFloat64: return run_pow<double>(ctx, plan);
    case DType::kInt64: return run_pow<int64_t>(ctx, plan);
    case DType::kInt32: return run_pow<int32_t>(ctx, plan);
    default: return ctx.fail(std::string("no CPU kernel for base dtype ") + dtype_name(ctx.inputs[0].dtype));
  }
}

// ---- backward rules (G: output gradient, A B: inputs, Y: output); gradients are summed down to each input's
// shape where it was broadcast ----

Status grad_add(GradBuilder& b) {
  for (int i = 0; i < 2; ++i) {
    if (b.needs_grad(i)) b.set_grad_input(i, reduce_to_input(b, b.grad_output(0), i));
  }
  return b.status();
}

Status grad_sub(GradBuilder& b) {
  if (b.needs_grad(0)) b.set_grad_input(0, reduce_to_input(b, b.grad_output(0), 0));
  if (b.needs_grad(1)) b.set_grad_input(1, b.emit1("Neg", {reduce_to_input(b, b.grad_output(0), 1)}));
  return b.status();
}

// dA = G B, dB = G A
Status grad_mul(GradBuilder& b) {
  for (int i = 0; i < 2; ++i) {
    if (b.needs_grad(i)) b.set_grad_input(i, reduce_to_input(b, b.emit1("Mul", {b.grad_output(0), b.input(1 - i)}), i));
  }
  return b.status();
}

// dA = G / B, dB = -G A / B^2 = -(G Y) / B
Status grad_div(GradBuilder& b) {
  ValueId g = b.grad_output(0), bv = b.input(1);
  if (b.needs_grad(0)) b.set_grad_input(0, reduce_to_input(b, b.emit1("Div", {g, bv}), 0));
  if (b.needs_grad(1)) {
    ValueId gy_b = b.emit1("Div", {b.emit1("Mul", {g, b.output(0)}), bv});
    b.set_grad_input(1, b.emit1("Neg", {reduce_to_input(b, gy_b, 1)}));
  }
  return b.status();
}

ValueId cast_to(GradBuilder& b, ValueId v, DType to) {
  if (b.dtype(v) == to) return v;
  Attributes a;
  a.set_int("to", static_cast<int64_t>(to));
  return b.emit1("Cast", {v}, a);
}

// dA = G B A^(B-1); dB = G Y ln(A), 0 where A == 0 (as PyTorch, so that 0^b with b > 0 gives no NaN).
Status grad_pow(GradBuilder& b) {
  ValueId g = b.grad_output(0), a = b.input(0), e = b.input(1);
  const DType t = b.dtype(a);
  if (b.needs_grad(0)) {
    ValueId da;
    if (b.graph().is_constant(e) && shape_numel(b.shape(e)) == 1) {
      // A constant exponent (x^2, x^3, x^0.5 in exported graphs): the derivative with constants folded in.
      const double k = b.graph().value(e).data.scalar_f64(0);
      if (k == 1.0) da = g;
      else if (k == 2.0) da = b.emit1("Mul", {g, b.emit1("Mul", {a, b.scalar(t, 2.0)})});
      else da = b.emit1("Mul", {g, b.emit1("Mul", {b.emit1("Pow", {a, b.scalar(t, k - 1.0)}), b.scalar(t, k)})});
    } else {
      ValueId ec = cast_to(b, e, t);
      ValueId pow_m1 = b.emit1("Pow", {a, b.emit1("Sub", {ec, b.scalar(t, 1.0)})});
      da = b.emit1("Mul", {g, b.emit1("Mul", {ec, pow_m1})});
    }
    b.set_grad_input(0, reduce_to_input(b, da, 0));
  }
  if (b.needs_grad(1)) {
    ValueId zero = b.scalar(t, 0.0);
    ValueId gy_log = b.emit1("Mul", {b.emit1("Mul", {g, b.output(0)}), b.emit1("Log", {a})});
    ValueId de = b.emit1("Where", {b.emit1("Equal", {a, zero}), zero, gy_log});
    b.set_grad_input(1, cast_to(b, reduce_to_input(b, de, 1), b.dtype(e)));
  }
  return b.status();
}

template <TypeSet Allowed, BinaryOp Op>
OpSchema arithmetic_schema(const char* name, GradFn grad, const char* doc) {
  return make_schema(name, 2, 2, infer_binary<Allowed, false>, with_half_as_float<binary_kernel<Op>>, grad, doc);
}

template <TypeSet Allowed, CompareOp Op>
OpSchema compare_schema(const char* name, const char* doc) {
  return make_schema(name, 2, 2, infer_binary<Allowed, true>, with_half_as_float<compare_kernel<Op>>, nullptr, doc);
}

}  // namespace

void register_binary_ops(OpRegistry& r) {
  r.add(arithmetic_schema<kNumericTypes, BinaryOp::kAdd>("Add", grad_add, "C = A + B (broadcasting)"));
  r.add(arithmetic_schema<kNumericTypes, BinaryOp::kSub>("Sub", grad_sub, "C = A - B (broadcasting)"));
  r.add(arithmetic_schema<kNumericTypes, BinaryOp::kMul>("Mul", grad_mul, "C = A * B (broadcasting)"));
  r.add(arithmetic_schema<kNumericTypes, BinaryOp::kDiv>(
      "Div", grad_div, "C = A / B (broadcasting; integers truncate toward zero, x / 0 = 0)"));
  r.add(make_schema("Mod", 2, 2, infer_mod, with_half_as_float<mod_kernel>, nullptr,
                    "C = A mod B: sign of B (fmod = 0) or of A (fmod = 1)"));
  r.add(make_schema("Pow", 2, 2, infer_pow, with_half_as_float<pow_kernel>, grad_pow,
                    "Z = X ^ Y (broadcasting; Y of any numeric dtype, Z of X's)"));

  r.add(compare_schema<kAllTypes, CompareOp::kEqual>("Equal", "C = A == B, as bool"));
  r.add(compare_schema<kNumericTypes, CompareOp::kLess>("Less", "C = A < B, as bool"));
  r.add(compare_schema<kNumericTypes, CompareOp::kLessOrEqual>("LessOrEqual", "C = A <= B, as bool"));
  r.add(compare_schema<kNumericTypes, CompareOp::kGreater>("Greater", "C = A > B, as bool"));
  r.add(compare_schema<kNumericTypes, CompareOp::kGreaterOrEqual>("GreaterOrEqual", "C = A >= B, as bool"));
  r.add(compare_schema<kBoolType, CompareOp::kAnd>("And", "C = A && B over bool"));
  r.add(compare_schema<kBoolType, CompareOp::kOr>("Or", "C = A || B over bool"));
  r.add(compare_schema<kBoolType, CompareOp::kXor>("Xor", "C = A != B over bool"));
}

}  // namespace gv::elementwise

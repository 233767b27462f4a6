// Ops over several broadcast inputs: Max Min Sum Mean (1..N inputs of one dtype) and Where(cond, X, Y).
#include <cstring>

#include "kernels/cpu/broadcast.h"
#include "runtime/ops/elementwise_common.h"

namespace gv::elementwise {
namespace {

using cpu::BinaryOp;

constexpr int kMaxVariadicInputs = 1 << 20;

template <TypeSet Allowed>
Status infer_variadic(InferContext& ctx) {
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) return ctx.fail("input " + std::to_string(i) + " is missing");
    GV_RETURN_IF_ERROR(check_dtype(ctx, i, Allowed));
    GV_RETURN_IF_ERROR(check_same_dtype(ctx, 0, i));
  }
  Shape out;
  GV_RETURN_IF_ERROR(broadcast_inputs(ctx, 0, ctx.num_inputs(), &out));
  ctx.set_output(0, ctx.dtype(0), std::move(out));
  return Status::ok();
}

// out = in0 op in1 op ... op in_{n-1}, folded left; each step broadcasts onto the full output shape, and from the
// third input on the output is read back in place (it has the output's shape, so element i reads element i).
Status run_variadic(KernelContext& ctx, BinaryOp op) {
  const TensorRef& out = ctx.outputs[0];
  const size_t n = ctx.inputs.size();
  if (n == 1) {
    std::memcpy(out.data, ctx.inputs[0].data, out.nbytes());
    return Status::ok();
  }
  return visit_numeric(ctx, out.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = out.as<T>();
    cpu::binary<T>(op, ctx.inputs[0].as<T>(), ctx.inputs[1].as<T>(), o,
                   cpu::make_broadcast_plan(out.shape, {ctx.inputs[0].shape, ctx.inputs[1].shape}));
    for (size_t k = 2; k < n; ++k) {
      const cpu::BroadcastPlan plan = cpu::make_broadcast_plan(out.shape, {out.shape, ctx.inputs[k].shape});
      cpu::binary<T>(op, o, ctx.inputs[k].as<T>(), o, plan);
    }
    return Status::ok();
  });
}

template <BinaryOp Op>
Status variadic_kernel(KernelContext& ctx) {
  return run_variadic(ctx, Op);
}

Status mean_kernel(KernelContext& ctx) {
  GV_RETURN_IF_ERROR(run_variadic(ctx, BinaryOp::kAdd));
  const TensorRef& out = ctx.outputs[0];
  return visit_float(ctx, out.dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::scale<T>(out.as<T>(), out.numel(), 1.0 / static_cast<double>(ctx.inputs.size()));
    return Status::ok();
  });
}

// ---- Where(cond, X, Y) ----

Status infer_where(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, kBoolType));
  GV_RETURN_IF_ERROR(check_same_dtype(ctx, 1, 2));
  Shape out;
  GV_RETURN_IF_ERROR(broadcast_inputs(ctx, 0, 3, &out));
  ctx.set_output(0, ctx.dtype(1), std::move(out));
  return Status::ok();
}

// Moves elements as bits, so every dtype runs without conversion.
Status where_kernel(KernelContext& ctx) {
  const TensorRef& c = ctx.inputs[0];
  const TensorRef& x = ctx.inputs[1];
  const TensorRef& y = ctx.inputs[2];
  const TensorRef& out = ctx.outputs[0];
  const cpu::BroadcastPlan plan = cpu::make_broadcast_plan(out.shape, {c.shape, x.shape, y.shape});
  const uint8_t* cond = c.as<uint8_t>();
  switch (dtype_size(out.dtype)) {
    case 1: cpu::where(cond, x.as<uint8_t>(), y.as<uint8_t>(), out.as<uint8_t>(), plan); break;
    case 2: cpu::where(cond, x.as<uint16_t>(), y.as<uint16_t>(), out.as<uint16_t>(), plan); break;
    case 4: cpu::where(cond, x.as<uint32_t>(), y.as<uint32_t>(), out.as<uint32_t>(), plan); break;
    case 8: cpu::where(cond, x.as<uint64_t>(), y.as<uint64_t>(), out.as<uint64_t>(), plan); break;
    default: return ctx.fail(std::string("no CPU kernel for dtype ") + dtype_name(out.dtype));
  }
  return Status::ok();
}

// ---- backward rules (G: output gradient, Y: output) ----

// Each input gets G where it equals the output (on ties every tied input gets the full gradient).
Status grad_max_min(GradBuilder& b) {
  ValueId g = b.grad_output(0);
  ValueId zero = scalar_like(b, g, 0.0);
  for (int i = 0; i < b.num_inputs(); ++i) {
    if (!b.needs_grad(i)) continue;
    if (b.num_inputs() == 1) {
      b.set_grad_input(i, g);
      continue;
    }
    ValueId chosen = b.emit1("Equal", {b.input(i), b.output(0)});
    b.set_grad_input(i, reduce_to_input(b, b.emit1("Where", {chosen, g, zero}), i));
  }
  return b.status();
}

Status grad_sum(GradBuilder& b) {
  for (int i = 0; i < b.num_inputs(); ++i) {
    if (b.needs_grad(i)) b.set_grad_input(i, reduce_to_input(b, b.grad_output(0), i));
  }
  return b.status();
}

Status grad_mean(GradBuilder& b) {
  ValueId g = b.grad_output(0);
  ValueId scaled = b.emit1("Mul", {g, scalar_like(b, g, 1.0 / b.num_inputs())});
  for (int i = 0; i < b.num_inputs(); ++i) {
    if (b.needs_grad(i)) b.set_grad_input(i, reduce_to_input(b, scaled, i));
  }
  return b.status();
}

// dX = G where cond, dY = G elsewhere; cond is not differentiable.
Status grad_where(GradBuilder& b) {
  ValueId g = b.grad_output(0), c = b.input(0);
  ValueId zero = scalar_like(b, g, 0.0);
  if (b.needs_grad(1)) b.set_grad_input(1, reduce_to_input(b, b.emit1("Where", {c, g, zero}), 1));
  if (b.needs_grad(2)) b.set_grad_input(2, reduce_to_input(b, b.emit1("Where", {c, zero, g}), 2));
  return b.status();
}

template <TypeSet Allowed, KernelFn Kernel>
OpSchema variadic_schema(const char* name, GradFn grad, const char* doc) {
  return make_schema(name, 1, kMaxVariadicInputs, infer_variadic<Allowed>, with_half_as_float<Kernel>, grad, doc);
}

}  // namespace

void register_variadic_ops(OpRegistry& r) {
  r.add(variadic_schema<kNumericTypes, variadic_kernel<BinaryOp::kMax>>(
      "Max", grad_max_min, "elementwise maximum of 1..N broadcast inputs (NaN wins)"));
  r.add(variadic_schema<kNumericTypes, variadic_kernel<BinaryOp::kMin>>(
      "Min", grad_max_min, "elementwise minimum of 1..N broadcast inputs (NaN wins)"));
  r.add(variadic_schema<kNumericTypes, variadic_kernel<BinaryOp::kAdd>>("Sum", grad_sum,
                                                                        "sum of 1..N broadcast inputs"));
  r.add(variadic_schema<kFloatTypes, mean_kernel>("Mean", grad_mean, "mean of 1..N broadcast inputs"));

  OpSchema where = make_schema("Where", 3, 3, infer_where, where_kernel, grad_where,
                               "out = cond ? X : Y (broadcasting over the three inputs)");
  where.nondiff_inputs = {0};
  r.add(std::move(where));
}

}  // namespace gv::elementwise

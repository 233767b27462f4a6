// Shared glue of the elementwise op family (runtime/ops/elementwise_*.cpp): dtype sets and checks, broadcast shape
// inference, dispatch from a DType to the C++ element type of the CPU kernels, and the float16/bfloat16 fallback.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/cpu/elementwise.h"
#include "runtime/autograd.h"
#include "runtime/op_registry.h"

namespace gv::elementwise {

// A set of dtypes, as a bit mask over DType values.
using TypeSet = uint32_t;
constexpr TypeSet type_bit(DType t) { return TypeSet(1) << static_cast<int>(t); }
constexpr TypeSet kFloatTypes = type_bit(DType::kFloat32) | type_bit(DType::kFloat64) | type_bit(DType::kFloat16) |
                                type_bit(DType::kBFloat16);
constexpr TypeSet kSignedIntTypes = type_bit(DType::kInt64) | type_bit(DType::kInt32) | type_bit(DType::kInt8);
constexpr TypeSet kIntTypes = kSignedIntTypes | type_bit(DType::kUInt8);
constexpr TypeSet kSignedTypes = kFloatTypes | kSignedIntTypes;
constexpr TypeSet kNumericTypes = kFloatTypes | kIntTypes;
constexpr TypeSet kBoolType = type_bit(DType::kBool);
constexpr TypeSet kAllTypes = kNumericTypes | kBoolType;

// "float32, float64, ..." for error messages.
std::string type_set_str(TypeSet s);
// Fails unless input i's dtype is in `allowed`.
Status check_dtype(const InferContext& ctx, int i, TypeSet allowed);
// Fails unless inputs i and j have the same dtype.
Status check_same_dtype(const InferContext& ctx, int i, int j);
// The numpy broadcast of the shapes of the present inputs [first, last); fails naming the shapes.
Status broadcast_inputs(const InferContext& ctx, int first, int last, Shape* out);
// Fails unless input i holds exactly one element (Clip's bounds).
Status check_scalar(const InferContext& ctx, int i, const char* what);

// Calls f(T{}) with the kernels' element type of dtype t: float, double, int64_t, int32_t, int8_t, uint8_t (bool is
// uint8_t). float16/bfloat16 are not computable here; wrap the kernel in with_half_as_float.
template <typename F>
Status visit_numeric(const KernelContext& ctx, DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kInt64: return f(int64_t{});
    case DType::kInt32: return f(int32_t{});
    case DType::kInt8: return f(int8_t{});
    case DType::kUInt8:
    case DType::kBool: return f(uint8_t{});
    default: return ctx.fail(std::string("no CPU kernel for dtype ") + dtype_name(t));
  }
}

// As visit_numeric, for the float-only kernels.
template <typename F>
Status visit_float(const KernelContext& ctx, DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    default: return ctx.fail(std::string("no CPU kernel for dtype ") + dtype_name(t));
  }
}

// Runs `kernel` with every float16/bfloat16 input and output converted to float32 (the kernels compute in float32
// and the results are rounded back).
Status run_in_float32(KernelContext& ctx, KernelFn kernel);
bool has_half_operand(const KernelContext& ctx);
template <KernelFn F>
Status with_half_as_float(KernelContext& ctx) {
  return has_half_operand(ctx) ? run_in_float32(ctx, F) : F(ctx);
}

// Shape and dtype inference of a unary op: output = input 0's dtype and shape, dtype checked against Allowed.
template <TypeSet Allowed>
Status infer_unary(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, Allowed));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

// The CPU kernel of a unary op y = op(x); float16/bfloat16 go through with_half_as_float.
template <cpu::UnaryOp Op>
Status unary_kernel(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const TensorRef& y = ctx.outputs[0];
  cpu::UnaryParams p;
  if constexpr (Op == cpu::UnaryOp::kLeakyRelu) p.alpha = ctx.attrs().get_float("alpha", 0.01f);
  if constexpr (Op == cpu::UnaryOp::kHardSigmoid) {
    p.alpha = ctx.attrs().get_float("alpha", 0.2f);
    p.beta = ctx.attrs().get_float("beta", 0.5f);
  }
  return visit_numeric(ctx, x.dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::unary<T>(Op, x.as<T>(), y.as<T>(), x.numel(), p);
    return Status::ok();
  });
}

// A default-domain schema with one output.
OpSchema make_schema(const std::string& name, int min_inputs, int max_inputs, InferFn infer, KernelFn cpu,
                     GradFn grad, std::string doc);

// The schema of a unary op: y = Op(x) for dtypes in Allowed, x's shape and dtype.
template <cpu::UnaryOp Op, TypeSet Allowed>
OpSchema unary_schema(const char* name, GradFn grad, const char* doc) {
  return make_schema(name, 1, 1, infer_unary<Allowed>, with_half_as_float<unary_kernel<Op>>, grad, doc);
}

// Backward helpers. The gradient of input i, summed down to the input's shape where it was broadcast. The shape is
// copied: emitting nodes grows the graph's value list, which would leave a reference into it dangling.
inline ValueId reduce_to_input(GradBuilder& b, ValueId g, int i) {
  const Shape target = b.shape(b.input(i));
  return b.sum_to_shape(g, target);
}
// A rank-0 constant of the dtype of value v.
inline ValueId scalar_like(GradBuilder& b, ValueId v, double x) { return b.scalar(b.dtype(v), x); }

// The family's parts, called by register_elementwise_ops.
void register_unary_math_ops(OpRegistry& r);       // elementwise_unary.cpp
void register_activation_ops(OpRegistry& r);       // elementwise_activation.cpp
void register_binary_ops(OpRegistry& r);           // elementwise_binary.cpp
void register_variadic_ops(OpRegistry& r);         // elementwise_variadic.cpp
void register_cast_ops(OpRegistry& r);             // elementwise_cast.cpp

}  // namespace gv::elementwise

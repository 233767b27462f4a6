// Cast, CastLike and Identity: dtype conversions between every dtype of kernels/dtype.h, and a copy.
#include <algorithm>
#include <cstring>

#include "runtime/ops/elementwise_common.h"

namespace gv::elementwise {
namespace {

// Cast(X) to = ONNX TensorProto.DataType; `saturate` (opset 19, float8 only) does not apply to our dtypes.
Status infer_cast(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, kAllTypes));
  const Attribute* to = ctx.attrs().find("to");
  if (!to) return ctx.fail("attribute 'to' is required");
  const DType t = dtype_from_onnx(static_cast<int32_t>(to->i));
  if (t == DType::kUndefined) {
    return ctx.fail("cannot cast to ONNX data type " + std::to_string(to->i) + "; supported: " +
                    type_set_str(kAllTypes));
  }
  ctx.set_output(0, t, ctx.shape(0));
  return Status::ok();
}

// CastLike(X, target): to target's dtype.
Status infer_cast_like(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_dtype(ctx, 0, kAllTypes));
  GV_RETURN_IF_ERROR(check_dtype(ctx, 1, kAllTypes));
  ctx.set_output(0, ctx.dtype(1), ctx.shape(0));
  return Status::ok();
}

// Converts in chunks, in parallel for large tensors (activations cast to and from float16/bfloat16 in every step).
Status cast_kernel(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const TensorRef& y = ctx.outputs[0];
  const int64_t n = x.numel();
  const size_t in_size = dtype_size(x.dtype), out_size = dtype_size(y.dtype);
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for if (n > cpu::kParallelThreshold) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    convert_elements(static_cast<const uint8_t*>(x.data) + begin * in_size, x.dtype,
                     static_cast<uint8_t*>(y.data) + begin * out_size, y.dtype, len);
  }
  return Status::ok();
}

Status infer_identity(InferContext& ctx) {
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

Status identity_kernel(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  if (ctx.outputs[0].data != x.data) std::memcpy(ctx.outputs[0].data, x.data, x.nbytes());
  return Status::ok();
}

// The gradient is cast back to the input's dtype (float -> float casts; the others carry no gradient).
Status grad_cast(GradBuilder& b) {
  ValueId g = b.grad_output(0);
  const DType in = b.dtype(b.input(0));
  if (g == kNoValue || !b.needs_grad(0) || !dtype_is_float(in)) return b.status();
  if (b.dtype(g) == in) {
    b.set_grad_input(0, g);
    return b.status();
  }
  Attributes a;
  a.set_int("to", static_cast<int64_t>(in));
  b.set_grad_input(0, b.emit1("Cast", {g}, a));
  return b.status();
}

Status grad_identity(GradBuilder& b) {
  if (b.needs_grad(0)) b.set_grad_input(0, b.grad_output(0));
  return b.status();
}

}  // namespace

void register_cast_ops(OpRegistry& r) {
  r.add(make_schema("Cast", 1, 1, infer_cast, cast_kernel, grad_cast, "Y = X converted to dtype `to`"));
  OpSchema like = make_schema("CastLike", 2, 2, infer_cast_like, cast_kernel, grad_cast,
                              "Y = X converted to the dtype of target_type");
  like.nondiff_inputs = {1};
  r.add(std::move(like));
  OpSchema identity = make_schema("Identity", 1, 1, infer_identity, identity_kernel, grad_identity, "Y = X");
  identity.view = true;
  r.add(std::move(identity));
}

}  // namespace gv::elementwise

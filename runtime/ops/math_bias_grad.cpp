// galvatron BiasGrad: a layer's bias gradient, the sums of dY [..., N] over all its leading dims -> [N] (keepdims = 1:
// [1, ..., 1, N], ReduceSum's keepdims shape, so that it can stand in for the ReduceSum it replaces). dY float32 or
// bfloat16 (the shared bf16 copy of an output gradient that the layer's products read: runtime/bf16_operands.cpp
// sends the bias sum to the copy too, so the float32 gradient may be written in bf16 by its producer), or float64;
// the result float32 (float64 for float64). Backward-only: not differentiable.
#include <vector>

#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

Status infer_bias_grad(InferContext& ctx) {
  const DType t = ctx.dtype(0);
  if (t != DType::kFloat32 && t != DType::kBFloat16 && t != DType::kFloat64) {
    return ctx.fail(std::string("dY must be float32, bfloat16 or float64, got ") + dtype_name(t));
  }
  if (ctx.shape(0).empty()) return ctx.fail("dY must have rank >= 1");
  Shape out = {ctx.shape(0).back()};
  if (ctx.attrs().get_int("keepdims", 0) != 0) {
    out.assign(ctx.shape(0).size(), 1);
    out.back() = ctx.shape(0).back();
  }
  ctx.set_output(0, t == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32, out);
  return Status::ok();
}

Status bias_grad_cpu(KernelContext& ctx) {
  bias_grad_sums_cpu(ctx.inputs[0], ctx.outputs[0]);
  return Status::ok();
}

}  // namespace

void bias_grad_sums_cpu(const TensorRef& dy, const TensorRef& out) {
  const int64_t n = dy.shape.back(), rows = n > 0 ? dy.numel() / n : 0;
  std::vector<double> sums(static_cast<size_t>(n), 0.0);
#pragma omp parallel for if (rows * n > 32768) schedule(static)
  for (int64_t c = 0; c < n; ++c) {
    double s = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r * n + c;
      switch (dy.dtype) {
        case DType::kFloat32: s += dy.as<float>()[i]; break;
        case DType::kFloat64: s += dy.as<double>()[i]; break;
        default: s += bf16_to_float(static_cast<const uint16_t*>(dy.data)[i]); break;
      }
    }
    sums[c] = s;
  }
  if (out.dtype == DType::kFloat64) {
    for (int64_t c = 0; c < n; ++c) out.as<double>()[c] = sums[c];
  } else {
    for (int64_t c = 0; c < n; ++c) out.as<float>()[c] = static_cast<float>(sums[c]);
  }
}

void register_bias_grad_ops(OpRegistry& r) {
  r.add(make_schema(kGalvatronDomain, "BiasGrad", 1, 1, 1, 1, infer_bias_grad, bias_grad_cpu,
                    "dBias [N] (keepdims: [1, .., 1, N]) = sums of dY [..., N] over its leading dims (float32 / bf16 / float64)"));
}

}  // namespace gv::math

// galvatron SkipLayerNormalization(X, Skip, Scale, B?) -> (Y, Mean?, InvStdDev?, Sum?): the residual add and the
// LayerNormalization that follows it in a pre-norm transformer layer, as one op (the shape of ONNX Runtime's
// com.microsoft SkipLayerNormalization, without its extra bias input):
//   Sum = X + Skip          float32; X float32 or bfloat16 (the branch's output), Skip float32 (the residual stream);
//                           with attr sum_dtype 16 (a residual stream kept in bf16, runtime/bf16_residual_stream.cpp)
//                           Skip float32 or bfloat16 and Sum rounded to bfloat16, which the norm then reads
//   Y   = LayerNorm(Sum)    over the last axis, as ONNX LayerNormalization (epsilon, stash_type 1), written in
//                           float32 or, with attr out_dtype 16, rounded to bfloat16
//   Mean, InvStdDev         the row statistics (float32, X's shape with the last axis 1)
// galvatron SkipRMSNormalization(X, Skip, Scale) -> (Y, Sum?): the same for RMSNormalization (Llama's pre-norm
// layers): Sum = X + Skip, Y = RMSNorm(Sum) over the last axis (epsilon, out_dtype); no statistics (the RMS backward
// recomputes its one).
// Made after autograd by runtime/fuse_skip_norm.cpp (the backward already reads Sum, Mean and InvStdDev as the
// norm's input and statistics), so without a gradient rule. Both take sum_dtype.
#include <vector>

#include "kernels/cpu/norm.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

// X, Skip, the axis and stash_type, Scale (and B: inputs 2 .. last_param), out_dtype and sum_dtype, as both skip ops
// take them; Y's and Sum's dtypes into *y and *sum.
Status check_skip_norm(const InferContext& ctx, int last_param, DType* y, DType* sum) {
  const DType xt = ctx.dtype(0);
  if (xt != DType::kFloat32 && xt != DType::kBFloat16) return ctx.fail("X must be float32 or bfloat16");
  const Shape& x = ctx.shape(0);
  if (x.empty()) return ctx.fail("X must have rank >= 1");
  const int64_t sum_type = ctx.attrs().get_int("sum_dtype", 1);
  if (sum_type != 1 && sum_type != 16) return ctx.fail("sum_dtype must be 1 (float32) or 16 (bfloat16)");
  *sum = sum_type == 16 ? DType::kBFloat16 : DType::kFloat32;
  const bool skip_ok = ctx.dtype(1) == DType::kFloat32 || (sum_type == 16 && ctx.dtype(1) == DType::kBFloat16);
  if (!skip_ok || ctx.shape(1) != x) {
    return ctx.fail(std::string("Skip must be float32") + (sum_type == 16 ? " or bfloat16" : "") + " of X's shape " +
                    shape_str(x) + ", got " + dtype_name(ctx.dtype(1)) + " " + shape_str(ctx.shape(1)));
  }
  const int64_t axis = ctx.attrs().get_int("axis", -1);
  if (axis != -1 && axis != static_cast<int64_t>(x.size()) - 1) return ctx.fail("only the last axis is normalized");
  if (ctx.attrs().get_int("stash_type", 1) != 1) return ctx.fail("stash_type must be 1 (float32)");
  const Shape cols{x.back()};
  for (int i = 2; i <= last_param; ++i) {
    if (!ctx.has_input(i)) continue;
    if (ctx.dtype(i) != DType::kFloat32 || shape_numel(ctx.shape(i)) != x.back()) {
      return ctx.fail(std::string(i == 2 ? "Scale" : "B") + " must be float32 of the normalized shape " +
                      shape_str(cols) + ", got " + shape_str(ctx.shape(i)));
    }
  }
  const int64_t out = ctx.attrs().get_int("out_dtype", 1);
  if (out != 1 && out != 16) return ctx.fail("out_dtype must be 1 (float32) or 16 (bfloat16)");
  *y = out == 16 ? DType::kBFloat16 : DType::kFloat32;
  return Status::ok();
}

Status infer_skip_layer_norm(InferContext& ctx) {
  DType yt, st;
  GV_RETURN_IF_ERROR(check_skip_norm(ctx, 3, &yt, &st));
  const Shape& x = ctx.shape(0);
  Shape stats = x;
  stats.back() = 1;
  ctx.set_output(0, yt, x);
  if (ctx.num_outputs() > 1) ctx.set_output(1, DType::kFloat32, stats);
  if (ctx.num_outputs() > 2) ctx.set_output(2, DType::kFloat32, stats);
  if (ctx.num_outputs() > 3) ctx.set_output(3, st, x);
  return Status::ok();
}

Status infer_skip_rms_norm(InferContext& ctx) {
  DType yt, st;
  GV_RETURN_IF_ERROR(check_skip_norm(ctx, 2, &yt, &st));
  ctx.set_output(0, yt, ctx.shape(0));
  if (ctx.num_outputs() > 1) ctx.set_output(1, st, ctx.shape(0));
  return Status::ok();
}

// Sum in float32 (X and Skip widened first; rounded to bfloat16 with sum_dtype 16) into output `sum_output` (or
// scratch), then `norm` of it into Y in float32, rounded when Y is bfloat16.
template <typename Norm>
Status skip_norm_cpu(KernelContext& ctx, size_t sum_output, Norm norm) {
  const TensorRef &x = ctx.inputs[0], &skip = ctx.inputs[1];
  const int64_t n = x.numel(), cols = x.shape.back(), rows = cols > 0 ? n / cols : 0;
  const bool has_sum = ctx.outputs.size() > sum_output && ctx.outputs[sum_output].data;
  const bool sum16 = ctx.attrs().get_int("sum_dtype", 1) == 16;
  std::vector<float> own_sum(has_sum && !sum16 ? 0 : static_cast<size_t>(n));
  float* sum = has_sum && !sum16 ? ctx.outputs[sum_output].as<float>() : own_sum.data();
  convert_elements(x.data, x.dtype, sum, DType::kFloat32, n);
  if (skip.dtype == DType::kFloat32) {
    const float* s = skip.as<float>();
    for (int64_t i = 0; i < n; ++i) sum[i] += s[i];
  } else {
    const auto* s = static_cast<const uint16_t*>(skip.data);
    for (int64_t i = 0; i < n; ++i) sum[i] += bf16_to_float(s[i]);
  }
  if (sum16) {
    for (int64_t i = 0; i < n; ++i) sum[i] = bf16_to_float(float_to_bf16(sum[i]));
    if (has_sum) convert_elements(sum, DType::kFloat32, ctx.outputs[sum_output].data, DType::kBFloat16, n);
  }
  const TensorRef& y = ctx.outputs[0];
  std::vector<float> wide(y.dtype == DType::kBFloat16 ? static_cast<size_t>(n) : 0);
  norm(sum, wide.empty() ? y.as<float>() : wide.data(), rows, cols, ctx.attrs().get_double("epsilon", 1e-5));
  if (!wide.empty()) convert_elements(wide.data(), DType::kFloat32, y.data, y.dtype, n);
  return Status::ok();
}

Status skip_layer_norm_cpu(KernelContext& ctx) {
  const size_t n_out = ctx.outputs.size();
  auto stat = [&](size_t i) { return n_out > i ? ctx.outputs[i].as<float>() : nullptr; };
  return skip_norm_cpu(ctx, 3, [&](const float* sum, float* y, int64_t rows, int64_t cols, double eps) {
    cpu::layer_norm<float, float>(sum, ctx.inputs[2].as<float>(),
                                  ctx.has_input(3) ? ctx.inputs[3].as<float>() : nullptr, y, stat(1), stat(2), rows,
                                  cols, eps);
  });
}

Status skip_rms_norm_cpu(KernelContext& ctx) {
  return skip_norm_cpu(ctx, 1, [&](const float* sum, float* y, int64_t rows, int64_t cols, double eps) {
    cpu::rms_norm<float>(sum, ctx.inputs[2].as<float>(), y, rows, cols, eps);
  });
}

}  // namespace

void register_skip_norm_ops(OpRegistry& r) {
  r.add(make_schema(kGalvatronDomain, "SkipLayerNormalization", 3, 4, 1, 4, infer_skip_layer_norm, skip_layer_norm_cpu,
                    "(X, Skip, Scale, B?) -> (Y = LayerNorm(X + Skip), Mean?, InvStdDev?, Sum = X + Skip) over the "
                    "last axis; epsilon, out_dtype (1 float32, 16 bfloat16 Y), sum_dtype (16: Sum in bfloat16)"));
  r.add(make_schema(kGalvatronDomain, "SkipRMSNormalization", 3, 3, 1, 2, infer_skip_rms_norm, skip_rms_norm_cpu,
                    "(X, Skip, Scale) -> (Y = RMSNorm(X + Skip), Sum = X + Skip) over the last axis; epsilon, "
                    "out_dtype (1 float32, 16 bfloat16 Y), sum_dtype (16: Sum in bfloat16)"));
}

}  // namespace gv::math

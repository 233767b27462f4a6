// galvatron GeluGradMatMul: the backward product into a GELU's output with the GELU's gradient and its layer's bias
// gradient fused in: dP = Gelu'(Pre) * (X @ op(W)), dBias = the column sums of dP. It replaces FusedMatMul ->
// GeluGrad -> (bf16 Cast, ReduceSum) in a training graph (runtime/fuse_gelu_grad_product.cpp) so that the CUDA
// backend runs it as one cuBLASLt product with a DGELU epilogue writing dP in bf16, then one column-sum pass: no
// float32 dH, no separate GELU-gradient and Cast passes.
//
// Inputs: X [..., K] (the gradient of the next product's output), W [K, N] (or [N, K] with transB = 1), Pre [..., N]
// (the GELU's input, a Linear's PreAct), whose leading dims may group X's rows differently (a Reshape between the
// product and the GELU: GPT-2's Gemm). X, W and Pre float32 or bfloat16 in any combination.
// Attributes: transB (0/1), approximate = "tanh" | "none" (erf), out_dtype (ONNX type of dP: 1 float32, the default,
// or 16 bfloat16).
// Outputs: dP (Pre's shape); dBias [N] float32 (optional). The CPU computes in float32 and rounds dP once; dBias sums the
// float32 dP (in double). Backward-only: not differentiable.
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

bool mixed_type(DType t) { return t == DType::kFloat32 || t == DType::kBFloat16; }

struct Dims {
  int64_t rows = 0, k = 0, n = 0;
  bool tb = false, tanh = false;
};

// Empty on success, else the reason.
std::string dims_of(const Node& node, const Shape& x, const Shape& w, const Shape& pre, Dims& d) {
  d.tb = node.attrs.get_int("transB", 0) != 0;
  const std::string approx = node.attrs.get_string("approximate", "none");
  if (approx != "none" && approx != "tanh") return "approximate must be none or tanh, got '" + approx + "'";
  d.tanh = approx == "tanh";
  const std::string err = linear_product_dims(x, w, d.tb, d.rows, d.k, d.n);
  if (!err.empty()) return err;
  if (pre.empty() || pre.back() != d.n || shape_numel(pre) != d.rows * d.n) {
    return "Pre " + shape_str(pre) + " must have " + std::to_string(d.n) + " columns and " + std::to_string(d.rows) +
           " rows in all (the product's)";
  }
  return "";
}

Status infer_gelu_grad_matmul(InferContext& ctx) {
  for (int i = 0; i < 3; ++i) {
    if (!mixed_type(ctx.dtype(i))) {
      return ctx.fail("input " + std::to_string(i) + " must be float32 or bfloat16, got " + dtype_name(ctx.dtype(i)));
    }
  }
  const int64_t code = ctx.attrs().get_int("out_dtype", 1);
  if (code != 1 && code != 16) return ctx.fail("out_dtype must be 1 (float32) or 16 (bfloat16)");
  Dims d;
  const std::string err = dims_of(ctx.node(), ctx.shape(0), ctx.shape(1), ctx.shape(2), d);
  if (!err.empty()) return ctx.fail(err);
  ctx.set_output(0, code == 16 ? DType::kBFloat16 : DType::kFloat32, ctx.shape(2));
  if (ctx.num_outputs() > 1) ctx.set_output(1, DType::kFloat32, {d.n});
  return Status::ok();
}

// A float32 copy of a tensor (or the tensor itself), kept alive in `keep`.
const float* widened(const TensorRef& t, std::vector<Tensor>& keep) {
  if (t.dtype == DType::kFloat32) return t.as<float>();
  keep.push_back(Tensor::uninitialized(DType::kFloat32, t.shape));
  convert_elements(t.data, t.dtype, keep.back().data(), DType::kFloat32, t.numel());
  return keep.back().data_as<float>();
}

Status gelu_grad_matmul_cpu(KernelContext& ctx) {
  Dims d;
  const std::string err = dims_of(*ctx.node, ctx.inputs[0].shape, ctx.inputs[1].shape, ctx.inputs[2].shape, d);
  if (!err.empty()) return ctx.fail(err);
  std::vector<Tensor> keep;
  const float* x = widened(ctx.inputs[0], keep);
  const float* w = widened(ctx.inputs[1], keep);
  const float* pre = widened(ctx.inputs[2], keep);
  const TensorRef& dp = ctx.outputs[0];
  Tensor dp32 = dp.dtype == DType::kFloat32 ? Tensor() : Tensor::uninitialized(DType::kFloat32, dp.shape);
  float* out = dp.dtype == DType::kFloat32 ? dp.as<float>() : dp32.data_as<float>();
  cpu::gemm<float>(false, d.tb, d.rows, d.n, d.k, 1.0, x, w, 0.0, out);
  cpu::activation_grad<float>(d.tanh ? cpu::ActivationGrad::kGeluTanh : cpu::ActivationGrad::kGelu, out, pre, out,
                              d.rows * d.n);
  if (ctx.outputs.size() > 1 && ctx.outputs[1].data) {
    float* db = ctx.outputs[1].as<float>();
#pragma omp parallel for if (d.rows * d.n > cpu::kParallelThreshold) schedule(static)
    for (int64_t c = 0; c < d.n; ++c) {
      double s = 0.0;
      for (int64_t r = 0; r < d.rows; ++r) s += out[r * d.n + c];
      db[c] = static_cast<float>(s);
    }
  }
  if (dp.dtype != DType::kFloat32) convert_elements(out, DType::kFloat32, dp.data, dp.dtype, dp.numel());
  return Status::ok();
}

}  // namespace

void register_gelu_grad_product_ops(OpRegistry& r) {
  OpSchema s = make_schema(kGalvatronDomain, "GeluGradMatMul", 3, 3, 1, 2, infer_gelu_grad_matmul,
                           gelu_grad_matmul_cpu,
                           "dP = Gelu'(Pre) * (X @ op(W)), dBias = column sums of dP (backward-only; approximate "
                           "tanh | none, out_dtype 1 | 16)");
  r.add(std::move(s));
}

}  // namespace gv::math

// galvatron Linear: a layer's product with its bias and activation, Y = act(X @ op(W) + bias), one node so that the
// CUDA backend runs it as one cuBLASLt product with a bias / GELU epilogue (runtime/fuse_linear.cpp forms it from
// MatMul -> Add -> Gelu chains and from MatMul(X, Transpose(W))).
//
// Inputs: X [..., K] (rank >= 2), W [K, N] (or [N, K] with transB = 1), bias [N] (optional), Residual [..., N]
// (optional: added to the result, the transformer's residual connection Y = R + X @ op(W) + bias, which the CUDA
// backend adds in cuBLASLt's epilogue; only without an activation, float32 results; runtime/fuse_residual_add.cpp).
// X and W may be float32 or bfloat16 in any combination (shared bf16 operands, runtime/bf16_operands.h); bias,
// residual and results are float32. All float64 (gradient checks) gives float64.
// Attributes: transB (0/1), activation = "none" | "gelu" (erf) | "gelu_tanh", out_dtype (ONNX data type of the
// outputs: 1 float32, the default, or 16 bfloat16: computed in float32 and rounded, for a Linear whose output only
// products read; runtime/bf16_operands.cpp sets it).
// Outputs: Y [..., N]; with an activation, PreAct [..., N] = X @ op(W) + bias, which the backward reads.
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

bool operand_type(DType t) { return t == DType::kFloat32 || t == DType::kBFloat16; }

struct LinearDims {
  int64_t rows = 0, k = 0, n = 0;
  bool tb = false;
  std::string activation;
};

// Empty on success, else the reason.
std::string linear_dims(const Node& node, const Shape& x, const Shape& w, const Shape* bias, LinearDims& d) {
  d.tb = node.attrs.get_int("transB", 0) != 0;
  d.activation = node.attrs.get_string("activation", "none");
  if (d.activation != "none" && d.activation != "gelu" && d.activation != "gelu_tanh") {
    return "activation must be none, gelu or gelu_tanh, got '" + d.activation + "'";
  }
  const std::string err = linear_product_dims(x, w, d.tb, d.rows, d.k, d.n);
  if (!err.empty()) return err;
  if (bias && (bias->size() != 1 || (*bias)[0] != d.n)) {
    return "bias must be [" + std::to_string(d.n) + "], got " + shape_str(*bias);
  }
  return "";
}

Status infer_linear(InferContext& ctx) {
  const bool has_bias = ctx.has_input(2);
  const bool has_residual = ctx.has_input(3);
  const bool f64 = ctx.dtype(0) == DType::kFloat64 && ctx.dtype(1) == DType::kFloat64 &&
                   (!has_bias || ctx.dtype(2) == DType::kFloat64) && (!has_residual || ctx.dtype(3) == DType::kFloat64);
  if (!f64 && (!operand_type(ctx.dtype(0)) || !operand_type(ctx.dtype(1)))) {
    return ctx.fail(std::string("X and W must be float32 or bfloat16 (or both float64), got ") +
                    dtype_name(ctx.dtype(0)) + " and " + dtype_name(ctx.dtype(1)));
  }
  if (!f64 && has_bias && ctx.dtype(2) != DType::kFloat32) return ctx.fail("bias must be float32");
  const int64_t out_code = ctx.attrs().get_int("out_dtype", 1);
  if (out_code != 1 && out_code != 16) return ctx.fail("out_dtype must be 1 (float32) or 16 (bfloat16)");
  if (f64 && out_code != 1) return ctx.fail("float64 operands give float64 results (no out_dtype)");
  const DType out_type = f64 ? DType::kFloat64 : out_code == 16 ? DType::kBFloat16 : DType::kFloat32;
  LinearDims d;
  const Shape bias = has_bias ? ctx.shape(2) : Shape{};
  std::string err = linear_dims(ctx.node(), ctx.shape(0), ctx.shape(1), has_bias ? &bias : nullptr, d);
  if (!err.empty()) return ctx.fail(err);
  Shape out = ctx.shape(0);
  out.back() = d.n;
  if (has_residual) {
    if (d.activation != "none") return ctx.fail("a Residual input needs activation none");
    if (out_type == DType::kBFloat16) return ctx.fail("a Residual input needs float32 results (out_dtype 1)");
    if (!f64 && ctx.dtype(3) != DType::kFloat32) return ctx.fail("Residual must be float32");
    if (ctx.shape(3) != out) return ctx.fail("Residual must be " + shape_str(out) + ", got " + shape_str(ctx.shape(3)));
  }
  ctx.set_output(0, out_type, out);
  if (d.activation != "none") ctx.set_output(1, out_type, out);
  return Status::ok();
}

// A float32 view of an operand: the tensor itself, or a widened copy kept in `keep`.
const float* as_float(const TensorRef& t, std::vector<Tensor>& keep) {
  if (t.dtype == DType::kFloat32) return t.as<float>();
  keep.push_back(Tensor::uninitialized(DType::kFloat32, t.shape));
  convert_elements(t.data, t.dtype, keep.back().data(), DType::kFloat32, t.numel());
  return keep.back().data_as<float>();
}

template <typename T>
void add_residual(const T* r, T* y, int64_t n) {
#pragma omp parallel for if (n > cpu::kParallelThreshold) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += r[i];
}

template <typename T>
void linear_forward(const LinearDims& d, const T* x, const T* w, const T* bias, T* pre, T* y) {
  cpu::gemm<T>(false, d.tb, d.rows, d.n, d.k, 1.0, x, w, 0.0, pre);
  if (bias) {
#pragma omp parallel for if (d.rows * d.n > cpu::kParallelThreshold) schedule(static)
    for (int64_t r = 0; r < d.rows; ++r) {
      T* row = pre + r * d.n;
      for (int64_t c = 0; c < d.n; ++c) row[c] += bias[c];
    }
  }
  if (y != pre) {
    cpu::unary<T>(d.activation == "gelu" ? cpu::UnaryOp::kGelu : cpu::UnaryOp::kGeluTanh, pre, y, d.rows * d.n);
  }
}

Status linear_cpu(KernelContext& ctx) {
  LinearDims d;
  const bool has_bias = ctx.has_input(2);
  std::string err = linear_dims(*ctx.node, ctx.inputs[0].shape, ctx.inputs[1].shape,
                                has_bias ? &ctx.inputs[2].shape : nullptr, d);
  if (!err.empty()) return ctx.fail(err);
  const bool act = d.activation != "none";
  const TensorRef& y = ctx.outputs[0];
  const TensorRef& pre = act ? ctx.outputs[1] : ctx.outputs[0];
  // The residual is added after the bias, as the Add it replaces did: (X @ op(W) + bias) + R.
  const bool has_residual = ctx.has_input(3);
  if (y.dtype == DType::kFloat64) {
    linear_forward<double>(d, ctx.inputs[0].as<double>(), ctx.inputs[1].as<double>(),
                           has_bias ? ctx.inputs[2].as<double>() : nullptr, pre.as<double>(), y.as<double>());
    if (has_residual) add_residual(ctx.inputs[3].as<double>(), y.as<double>(), y.numel());
    return Status::ok();
  }
  std::vector<Tensor> keep;
  const float* x = as_float(ctx.inputs[0], keep);
  const float* w = as_float(ctx.inputs[1], keep);
  const float* bias = has_bias ? ctx.inputs[2].as<float>() : nullptr;
  if (y.dtype == DType::kFloat32) {
    linear_forward<float>(d, x, w, bias, pre.as<float>(), y.as<float>());
    if (has_residual) add_residual(ctx.inputs[3].as<float>(), y.as<float>(), y.numel());
    return Status::ok();
  }
  // bfloat16 outputs: float32 results rounded once.
  Tensor pre32 = Tensor::uninitialized(DType::kFloat32, pre.shape);
  Tensor y32 = act ? Tensor::uninitialized(DType::kFloat32, y.shape) : pre32;
  linear_forward<float>(d, x, w, bias, pre32.data_as<float>(), y32.data_as<float>());
  convert_elements(y32.data(), DType::kFloat32, y.data, y.dtype, y.numel());
  if (act) convert_elements(pre32.data(), DType::kFloat32, pre.data, pre.dtype, pre.numel());
  return Status::ok();
}

// dP = dY * act'(PreAct) (+ PreAct's own gradient); dX = dP @ op(W)^T, dW = the products' transpose, dbias = the
// column sums of dP: the nodes autograd would have emitted for MatMul, Add and Gelu.
Status linear_grad(GradBuilder& gb) {
  const ValueId x = gb.input(0), w = gb.input(1), bias = gb.input(2), residual = gb.input(3);
  const Shape xs = gb.shape(x);
  LinearDims d;
  const Shape bias_shape = bias != kNoValue ? gb.shape(bias) : Shape{};
  std::string err = linear_dims(gb.node(), xs, gb.shape(w), bias != kNoValue ? &bias_shape : nullptr, d);
  if (!err.empty()) return internal_error("node '" + gb.node().name + "' (Linear): " + err);
  ValueId dp = gb.grad_output(0);
  if (d.activation != "none" && dp != kNoValue) {
    Attributes a;
    a.set_string("approximate", d.activation == "gelu_tanh" ? "tanh" : "none");
    dp = gb.emit1("GeluGrad", {dp, gb.output(1)}, a, kGalvatronDomain);
  }
  if (d.activation != "none" && gb.node().outputs.size() > 1 && gb.grad_output(1) != kNoValue) {
    dp = dp == kNoValue ? gb.grad_output(1) : gb.emit1("Add", {dp, gb.grad_output(1)});
  }
  if (dp == kNoValue) return gb.status();
  // The residual's gradient is Y's (no activation with a residual).
  if (residual != kNoValue && gb.needs_grad(3)) gb.set_grad_input(3, dp);
  // The products read X and dP in their own shapes (no reshaped views), so that shared bf16 copies of X and dP
  // (runtime/bf16_operands.h) serve the forward and both backward products alike. dW sums over X's leading dims.
  auto product = [&](ValueId a, ValueId b, bool ta, bool tb, bool sum_batch) {
    Attributes at;
    at.set_int("transA", ta);
    at.set_int("transB", tb);
    if (sum_batch) at.set_ints("out_batch", {});
    return gb.emit1("FusedMatMul", {a, b}, at, kGalvatronDomain);
  };
  // dX [.., K] = dP [.., N] @ op(W)^T (W [K, N] read transposed, W [N, K] as it is; broadcast over the batch).
  if (gb.needs_grad(0)) gb.set_grad_input(0, product(dp, w, false, !d.tb, false));
  if (gb.needs_grad(1)) {
    gb.set_grad_input(1, d.tb ? product(dp, x, true, false, true) : product(x, dp, true, false, true));
  }
  if (bias != kNoValue && gb.needs_grad(2)) gb.set_grad_input(2, gb.sum_to_shape(dp, {d.n}));
  return gb.status();
}

// Y in bf16 (out_dtype 16) for the copy the products read: not with a Residual (its sum stays float32), and PreAct,
// which turns bf16 too, only where GeluGrad alone reads it (as its saved input, as PyTorch's autocast keeps it).
bool bf16_outputs_allowed(const Graph& g, const Node& n) {
  if (n.inputs.size() > 3) return false;
  if (n.outputs.size() < 2 || n.outputs[1] == kNoValue) return true;
  const ValueId pre = n.outputs[1];
  for (ValueId o : g.outputs)
    if (o == pre) return false;
  for (const Node& m : g.nodes) {
    for (size_t i = 0; i < m.inputs.size(); ++i) {
      if (m.inputs[i] == pre && !(m.op_type == "GeluGrad" && m.domain == kGalvatronDomain && i == 1)) return false;
    }
  }
  return true;
}

}  // namespace

void register_linear_ops(OpRegistry& r) {
  OpSchema s = make_schema(kGalvatronDomain, "Linear", 2, 4, 1, 2, infer_linear, linear_cpu,
                           "Y = act(X @ op(W) + bias) (+ Residual without act), act none | gelu | gelu_tanh; PreAct "
                           "second output with act");
  s.grad = linear_grad;
  s.bf16_outputs.copies = {0};
  s.bf16_outputs.companions = {1};
  s.bf16_outputs.allowed = bf16_outputs_allowed;
  r.add(std::move(s));
}

}  // namespace gv::math

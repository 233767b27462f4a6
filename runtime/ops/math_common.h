// Shared helpers of the math op family (runtime/ops/math_*.cpp, norm_*, reduce_*, loss_*): registration entry
// points of each file, axis and broadcasting helpers, and dtype dispatch.
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/op_registry.h"

namespace gv::math {

void register_matmul_ops(OpRegistry& r);   // math_matmul.cpp: MatMul, Gemm, galvatron FusedMatMul
void register_softmax_ops(OpRegistry& r);  // math_softmax.cpp: Softmax, LogSoftmax and their grads
void register_dropout_ops(OpRegistry& r);  // math_dropout.cpp: Dropout, DropoutGrad
void register_norm_ops(OpRegistry& r);     // norm_ops.cpp: LayerNormalization, RMSNormalization and their grads
void register_skip_norm_ops(OpRegistry& r);  // norm_skip_ops.cpp: galvatron SkipLayerNormalization (add + LayerNorm)
void register_reduce_ops(OpRegistry& r);   // reduce_ops.cpp: Reduce*, ArgMax, ArgMin, ReduceGrad
void register_loss_ops(OpRegistry& r);     // loss_ops.cpp: SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss, grads
// linear_cross_entropy_ops.cpp: galvatron LinearCrossEntropy (head product + loss in chunks) and its grad
void register_linear_cross_entropy_ops(OpRegistry& r);
void register_linear_ops(OpRegistry& r);  // math_linear.cpp: galvatron Linear (product + bias + activation)
// math_gelu_grad_product.cpp: galvatron GeluGradMatMul (backward product + GELU gradient + bias gradient)
void register_gelu_grad_product_ops(OpRegistry& r);
void register_bias_grad_ops(OpRegistry& r);  // math_bias_grad.cpp: galvatron BiasGrad (column sums, bf16 input)
void register_silu_mul_ops(OpRegistry& r);   // math_silu_mul.cpp: galvatron SiluMul (SwiGLU's gate) and its grad
void register_rotary_embedding_ops(OpRegistry& r);  // math_rotary_embedding.cpp: RotaryEmbedding (opset 23)
// BiasGrad's CPU computation (math_bias_grad.cpp): out[c] = the sums of dy [..., N]'s column c over its leading dims,
// in double, in row order; out float32 (float64 for float64 dy) of N elements. For ops that output a bias gradient.
void bias_grad_sums_cpu(const TensorRef& dy, const TensorRef& out);

// The product X [..., K] (rank >= 2) @ op(W), W [K, N] (or [N, K] with tb), as rows x K times K x N (rows = X's
// elements / K): galvatron Linear and GeluGradMatMul. Empty on success, else the reason.
inline std::string linear_product_dims(const Shape& x, const Shape& w, bool tb, int64_t& rows, int64_t& k,
                                       int64_t& n) {
  if (x.size() < 2) return "X must have rank >= 2, got " + shape_str(x);
  if (w.size() != 2) return "W must be a matrix, got " + shape_str(w);
  k = x.back();
  rows = shape_numel(x) / std::max<int64_t>(k, 1);
  const int64_t wk = tb ? w[1] : w[0];
  n = tb ? w[0] : w[1];
  if (wk != k) {
    return "X " + shape_str(x) + " has " + std::to_string(k) + " columns but W " + shape_str(w) +
           (tb ? " (transB)" : "") + " has " + std::to_string(wk) + " rows";
  }
  return "";
}

// Resolves a possibly negative axis in place; false when it is outside [-rank, rank).
inline bool normalize_axis(int64_t& axis, int64_t rank) {
  if (axis < -rank || axis >= rank) return false;
  if (axis < 0) axis += rank;
  return true;
}

// Product of shape[begin, end).
inline int64_t dims_product(const Shape& s, int64_t begin, int64_t end) {
  int64_t p = 1;
  for (int64_t i = begin; i < end; ++i) p *= s[i];
  return p;
}

// Numpy broadcasting of two shapes; false when they are incompatible.
inline bool broadcast_shapes(const Shape& a, const Shape& b, Shape& out) {
  const size_t rank = std::max(a.size(), b.size());
  out.assign(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) return false;
    out[i] = da == 1 ? db : da;
  }
  return true;
}

inline bool is_float(DType t) { return t == DType::kFloat32 || t == DType::kFloat64; }
inline bool is_index(DType t) { return t == DType::kInt32 || t == DType::kInt64; }

// Fails unless input i is float32 or float64.
inline Status expect_float(const InferContext& ctx, int i, const char* what) {
  if (is_float(ctx.dtype(i))) return Status::ok();
  return ctx.fail(std::string(what) + " must be float32 or float64, got " + dtype_name(ctx.dtype(i)));
}

// Calls f(T{}) with T the C++ type of t (float, double), or fails naming the dtype.
template <typename F>
Status dispatch_float(DType t, const KernelContext& ctx, F&& f) {
  switch (t) {
    case DType::kFloat32: f(float{}); return Status::ok();
    case DType::kFloat64: f(double{}); return Status::ok();
    default: return ctx.fail(std::string("unsupported dtype ") + dtype_name(t) + " (expected float32 or float64)");
  }
}
// Same over float, double, int32 and int64.
template <typename F>
Status dispatch_numeric(DType t, const KernelContext& ctx, F&& f) {
  switch (t) {
    case DType::kInt32: f(int32_t{}); return Status::ok();
    case DType::kInt64: f(int64_t{}); return Status::ok();
    default: return dispatch_float(t, ctx, std::forward<F>(f));
  }
}
// Same over the label types int32 and int64.
template <typename F>
Status dispatch_index(DType t, const KernelContext& ctx, F&& f) {
  switch (t) {
    case DType::kInt32: f(int32_t{}); return Status::ok();
    case DType::kInt64: f(int64_t{}); return Status::ok();
    default: return ctx.fail(std::string("unsupported index dtype ") + dtype_name(t) + " (expected int32 or int64)");
  }
}

// Attribute out_dtype of the ops that can write their result in bf16 for products (SiluMul, SiluMulGrad, the norms'
// galvatron twins): when present, 1 (float32) or 16 (bfloat16) into *out; absent, *out is left as it is.
inline Status read_out_dtype(const InferContext& ctx, DType* out) {
  if (!ctx.attrs().has("out_dtype")) return Status::ok();
  const int64_t code = ctx.attrs().get_int("out_dtype", 0);
  if (code != static_cast<int64_t>(DType::kFloat32) && code != static_cast<int64_t>(DType::kBFloat16)) {
    return ctx.fail("attribute out_dtype must be 1 (float32) or 16 (bfloat16), got " + std::to_string(code));
  }
  *out = static_cast<DType>(code);
  return Status::ok();
}

// A schema with the fields every entry sets.
inline OpSchema make_schema(const std::string& domain, const std::string& name, int min_in, int max_in, int min_out,
                            int max_out, InferFn infer, KernelFn cpu, const std::string& doc) {
  OpSchema s;
  s.domain = domain;
  s.name = name;
  s.min_inputs = min_in;
  s.max_inputs = max_in;
  s.min_outputs = min_out;
  s.max_outputs = max_out;
  s.infer = infer;
  s.cpu = cpu;
  s.doc = doc;
  return s;
}

// Reads a scalar input of any float dtype (ratio) on the host.
inline double read_scalar_f64(const TensorRef& t) {
  switch (t.dtype) {
    case DType::kFloat32: return *t.as<float>();
    case DType::kFloat64: return *t.as<double>();
    case DType::kBool:
    case DType::kUInt8: return *t.as<uint8_t>();
    case DType::kInt64: return static_cast<double>(*t.as<int64_t>());
    case DType::kInt32: return *t.as<int32_t>();
    default: {
      double v = 0.0;
      convert_elements(t.data, t.dtype, &v, DType::kFloat64, 1);
      return v;
    }
  }
}

}  // namespace gv::math

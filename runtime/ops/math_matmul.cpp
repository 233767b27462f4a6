// MatMul (numpy batched broadcasting, 1-D operands), Gemm, and the galvatron FusedMatMul used by their backward rules.
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/optimizer.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

// MatMul operands split into batch shapes and matrix sizes. A 1-D A is a [1, k] row, a 1-D B a [k, 1] column.
struct MatMulDims {
  Shape a_batch, b_batch, batch;  // batch: the broadcast of a_batch and b_batch
  int64_t m = 1, n = 1, k = 1;
  bool a_vec = false, b_vec = false;
  Shape out_shape() const {
    Shape s = batch;
    if (!a_vec) s.push_back(m);
    if (!b_vec) s.push_back(n);
    return s;
  }
};

// Empty on success, else the reason.
std::string matmul_dims(const Shape& a, const Shape& b, MatMulDims& d) {
  if (a.empty() || b.empty()) return "operands must have rank >= 1, got " + shape_str(a) + " and " + shape_str(b);
  d.a_vec = a.size() == 1;
  d.b_vec = b.size() == 1;
  d.a_batch = d.a_vec ? Shape{} : Shape(a.begin(), a.end() - 2);
  d.b_batch = d.b_vec ? Shape{} : Shape(b.begin(), b.end() - 2);
  d.m = d.a_vec ? 1 : a[a.size() - 2];
  d.k = a.back();
  const int64_t kb = d.b_vec ? b[0] : b[b.size() - 2];
  d.n = d.b_vec ? 1 : b.back();
  if (d.k != kb) {
    return "inner dimensions differ: A " + shape_str(a) + " has " + std::to_string(d.k) + " columns, B " +
           shape_str(b) + " has " + std::to_string(kb) + " rows";
  }
  if (!broadcast_shapes(d.a_batch, d.b_batch, d.batch)) {
    return "batch dimensions of A " + shape_str(a) + " and B " + shape_str(b) + " do not broadcast";
  }
  return "";
}

// Index of each broadcast batch element into an operand batch (right-aligned; size-1 dims repeat).
std::vector<int64_t> batch_index(const Shape& batch, const Shape& operand) {
  const int64_t count = shape_numel(batch);
  const size_t rank = batch.size(), off = rank - operand.size();
  std::vector<int64_t> out(static_cast<size_t>(count));
  std::vector<int64_t> idx(rank, 0);
  for (int64_t i = 0; i < count; ++i) {
    int64_t flat = 0;
    for (size_t d = off; d < rank; ++d) flat = flat * operand[d - off] + (operand[d - off] == 1 ? 0 : idx[d]);
    out[i] = flat;
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < batch[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

bool is_identity(const std::vector<int64_t>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<int64_t>(i)) return false;
  return true;
}

// The product list for C[c_batch] from A[a_batch] and B[b_batch] over the broadcast `batch`; c_batch is `batch` or a
// shape it sums to. Folds the batch into one BLAS call where the memory layout allows it.
cpu::MatMulBatch plan_products(const Shape& a_batch, const Shape& b_batch, const Shape& batch, const Shape& c_batch,
                               int64_t m, int64_t n, int64_t k, bool ta, bool tb, double alpha) {
  cpu::MatMulBatch p;
  p.m = m, p.n = n, p.k = k, p.trans_a = ta, p.trans_b = tb, p.alpha = alpha;
  p.a_index = batch_index(batch, a_batch);
  p.b_index = batch_index(batch, b_batch);
  p.c_index = batch_index(batch, c_batch);
  p.c_count = shape_numel(c_batch);
  const int64_t count = static_cast<int64_t>(p.c_index.size());
  if (count <= 1) return p;
  const bool a_full = is_identity(p.a_index), b_single = shape_numel(b_batch) == 1;
  if (!ta && a_full && b_single && is_identity(p.c_index)) {
    // [batch, m, k] @ [k, n]: the batch of A stacks into one [batch * m, k] matrix.
    p.m *= count;
  } else if (ta && !tb && a_full && is_identity(p.b_index) && p.c_count == 1) {
    // sum_b A_b^T @ B_b with A [batch, k, m] and B [batch, k, n]: one product over the stacked k.
    p.k *= count;
  } else {
    return p;
  }
  p.a_index = p.b_index = p.c_index = {0};
  p.c_count = 1;
  return p;
}

Status run_products(KernelContext& ctx, const cpu::MatMulBatch& p) {
  const TensorRef &a = ctx.inputs[0], &b = ctx.inputs[1];
  return dispatch_numeric(a.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::matmul(a.as<T>(), b.as<T>(), ctx.outputs[0].as<T>(), p);
  });
}

Status check_operand_types(const InferContext& ctx) {
  const DType t = ctx.dtype(0);
  if (!is_float(t) && !is_index(t)) {
    return ctx.fail(std::string("unsupported dtype ") + dtype_name(t) + " (expected float32, float64, int32, int64)");
  }
  if (ctx.dtype(1) != t) {
    return ctx.fail(std::string("A is ") + dtype_name(t) + " but B is " + dtype_name(ctx.dtype(1)));
  }
  return Status::ok();
}

// ---- MatMul ----

Status infer_matmul(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_operand_types(ctx));
  MatMulDims d;
  std::string err = matmul_dims(ctx.shape(0), ctx.shape(1), d);
  if (!err.empty()) return ctx.fail(err);
  ctx.set_output(0, ctx.dtype(0), d.out_shape());
  return Status::ok();
}

Status matmul_cpu(KernelContext& ctx) {
  MatMulDims d;
  std::string err = matmul_dims(ctx.inputs[0].shape, ctx.inputs[1].shape, d);
  if (!err.empty()) return ctx.fail(err);
  return run_products(ctx, plan_products(d.a_batch, d.b_batch, d.batch, d.batch, d.m, d.n, d.k, false, false, 1.0));
}

Attributes fused_attrs(bool ta, bool tb, double alpha, const Shape* out_batch) {
  Attributes a;
  a.set_int("transA", ta);
  a.set_int("transB", tb);
  if (alpha != 1.0) a.set_float("alpha", alpha);
  if (out_batch) a.set_ints("out_batch", *out_batch);
  return a;
}

// dA = dY @ B^T and dB = A^T @ dY on the 2-D views (1-D operands reshaped), summed over the batch dims each operand
// was broadcast along (FusedMatMul's out_batch).
Status matmul_grad(GradBuilder& gb) {
  const ValueId a = gb.input(0), b = gb.input(1);
  const Shape as = gb.shape(a), bs = gb.shape(b);
  MatMulDims d;
  std::string err = matmul_dims(as, bs, d);
  if (!err.empty()) return internal_error("node '" + gb.node().name + "' (MatMul): " + err);
  Shape a2 = d.a_batch, b2 = d.b_batch, y2 = d.batch;
  a2.insert(a2.end(), {d.m, d.k});
  b2.insert(b2.end(), {d.k, d.n});
  y2.insert(y2.end(), {d.m, d.n});
  const ValueId dy = gb.reshape(gb.grad_output(0), y2);
  if (gb.needs_grad(0)) {
    ValueId da = gb.emit1("FusedMatMul", {dy, gb.reshape(b, b2)}, fused_attrs(false, true, 1.0, &d.a_batch),
                          kGalvatronDomain);
    gb.set_grad_input(0, gb.reshape(da, as));
  }
  if (gb.needs_grad(1)) {
    ValueId db = gb.emit1("FusedMatMul", {gb.reshape(a, a2), dy}, fused_attrs(true, false, 1.0, &d.b_batch),
                          kGalvatronDomain);
    gb.set_grad_input(1, gb.reshape(db, bs));
  }
  return Status::ok();
}

// ---- FusedMatMul (galvatron): Y = alpha * op(A) @ op(B), batched with broadcasting, optionally summed ----
// Attributes: transA, transB, alpha, out_batch (ints: the output's batch shape, a shape the broadcast batch sums to;
// default: the broadcast batch). Operands have rank >= 2.

struct FusedDims {
  Shape a_batch, b_batch, batch, out_batch;
  int64_t m, n, k;
  bool ta, tb;
};

std::string fused_dims(const Node& node, const Shape& a, const Shape& b, FusedDims& d) {
  if (a.size() < 2 || b.size() < 2) return "operands must have rank >= 2, got " + shape_str(a) + " and " + shape_str(b);
  d.ta = node.attrs.get_int("transA", 0) != 0;
  d.tb = node.attrs.get_int("transB", 0) != 0;
  const int64_t ar = a[a.size() - 2], ac = a.back(), br = b[b.size() - 2], bc = b.back();
  d.m = d.ta ? ac : ar;
  d.k = d.ta ? ar : ac;
  d.n = d.tb ? br : bc;
  const int64_t kb = d.tb ? bc : br;
  if (d.k != kb) return "inner dimensions differ: op(A) has " + std::to_string(d.k) + ", op(B) " + std::to_string(kb);
  d.a_batch.assign(a.begin(), a.end() - 2);
  d.b_batch.assign(b.begin(), b.end() - 2);
  if (!broadcast_shapes(d.a_batch, d.b_batch, d.batch)) return "batch dimensions do not broadcast";
  d.out_batch = node.attrs.has("out_batch") ? node.attrs.get_ints("out_batch") : d.batch;
  if (d.out_batch.size() > d.batch.size()) return "out_batch " + shape_str(d.out_batch) + " has too many dimensions";
  const size_t off = d.batch.size() - d.out_batch.size();
  for (size_t i = 0; i < d.out_batch.size(); ++i) {
    if (d.out_batch[i] != 1 && d.out_batch[i] != d.batch[i + off]) {
      return "batch " + shape_str(d.batch) + " cannot be summed to out_batch " + shape_str(d.out_batch);
    }
  }
  return "";
}

// Mixed precision (runtime/bf16_operands.cpp): float32 and bfloat16 operands in any combination, the result in
// attr out_dtype (ONNX data type; default: the operands' dtype when they agree, else float32). Otherwise MatMul's
// rules (both operands of one dtype).
bool mixed_float(DType t) { return t == DType::kFloat32 || t == DType::kBFloat16; }

Expected<DType> fused_out_dtype(const Node& node, DType a, DType b) {
  if (mixed_float(a) && mixed_float(b)) {
    if (node.attrs.has("out_dtype")) {
      const DType t = dtype_from_onnx(static_cast<int32_t>(node.attrs.get_int("out_dtype", 0)));
      if (!mixed_float(t)) return invalid_argument("out_dtype must be float32 or bfloat16");
      return t;
    }
    return a == b ? a : DType::kFloat32;
  }
  return a;
}

Status infer_fused_matmul(InferContext& ctx) {
  const bool mixed = mixed_float(ctx.dtype(0)) && mixed_float(ctx.dtype(1));
  if (!mixed) GV_RETURN_IF_ERROR(check_operand_types(ctx));
  FusedDims d;
  std::string err = fused_dims(ctx.node(), ctx.shape(0), ctx.shape(1), d);
  if (!err.empty()) return ctx.fail(err);
  Expected<DType> out_dtype = fused_out_dtype(ctx.node(), ctx.dtype(0), ctx.dtype(1));
  if (!out_dtype) return ctx.fail(out_dtype.status().message());
  Shape out = d.out_batch;
  out.insert(out.end(), {d.m, d.n});
  ctx.set_output(0, *out_dtype, out);
  return Status::ok();
}

Status fused_matmul_cpu(KernelContext& ctx) {
  FusedDims d;
  std::string err = fused_dims(*ctx.node, ctx.inputs[0].shape, ctx.inputs[1].shape, d);
  if (!err.empty()) return ctx.fail(err);
  const double alpha = ctx.attrs().get_double("alpha", 1.0);
  const cpu::MatMulBatch p = plan_products(d.a_batch, d.b_batch, d.batch, d.out_batch, d.m, d.n, d.k, d.ta, d.tb, alpha);
  const DType out = ctx.outputs[0].dtype;
  if (ctx.inputs[0].dtype == out && ctx.inputs[1].dtype == out && out != DType::kBFloat16) return run_products(ctx, p);
  // Mixed precision: the reference computes in float32 on widened operands (bf16 -> float32 is exact), then rounds
  // the result to out_dtype.
  KernelContext wide = ctx;
  std::vector<Tensor> keep;
  for (int i = 0; i < 2; ++i) {
    if (ctx.inputs[i].dtype == DType::kFloat32) continue;
    keep.push_back(Tensor::uninitialized(DType::kFloat32, ctx.inputs[i].shape));
    convert_elements(ctx.inputs[i].data, ctx.inputs[i].dtype, keep.back().data(), DType::kFloat32,
                     ctx.inputs[i].numel());
    wide.inputs[i] = keep.back().ref();
  }
  if (out != DType::kFloat32) {
    keep.push_back(Tensor::uninitialized(DType::kFloat32, ctx.outputs[0].shape));
    wide.outputs[0] = keep.back().ref();
  }
  GV_RETURN_IF_ERROR(run_products(wide, p));
  if (out != DType::kFloat32) {
    convert_elements(wide.outputs[0].data, DType::kFloat32, ctx.outputs[0].data, out, ctx.outputs[0].numel());
  }
  return Status::ok();
}

// ---- MatMulAccumulate (galvatron): Acc += alpha * op(A) @ op(B), in place ----
// FusedMatMul's operands and attributes with a float32 accumulator as input 0 instead of an output: gradient
// accumulation over micro-batches folded into the weight-gradient product (runtime/training_graph.cpp), so that the
// product adds into the persistent buffer (cuBLAS's beta = 1) instead of writing a gradient that AccumulateGrad then
// reads and adds. The accumulator holds as many elements as FusedMatMul's output would (the parameter's shape).

Status infer_matmul_accumulate(InferContext& ctx) {
  if (ctx.dtype(0) != DType::kFloat32) return ctx.fail("the accumulator (input 0) must be float32");
  if (!mixed_float(ctx.dtype(1)) || !mixed_float(ctx.dtype(2))) return ctx.fail("operands must be float32 or bfloat16");
  FusedDims d;
  std::string err = fused_dims(ctx.node(), ctx.shape(1), ctx.shape(2), d);
  if (!err.empty()) return ctx.fail(err);
  const int64_t product = shape_numel(d.out_batch) * d.m * d.n;
  if (shape_numel(ctx.shape(0)) != product) {
    return ctx.fail("the accumulator " + shape_str(ctx.shape(0)) + " does not hold the product's " +
                    std::to_string(product) + " elements");
  }
  return Status::ok();
}

// The reference: FusedMatMul into a float32 temporary, then the addition (so it equals FusedMatMul + AccumulateGrad
// bit for bit).
Status matmul_accumulate_cpu(KernelContext& ctx) {
  FusedDims d;
  std::string err = fused_dims(*ctx.node, ctx.inputs[1].shape, ctx.inputs[2].shape, d);
  if (!err.empty()) return ctx.fail(err);
  Shape out = d.out_batch;
  out.insert(out.end(), {d.m, d.n});
  Tensor product = Tensor::uninitialized(DType::kFloat32, out);
  KernelContext sub = ctx;
  sub.inputs = {ctx.inputs[1], ctx.inputs[2]};
  sub.host_inputs.clear();
  sub.outputs = {product.ref()};
  GV_RETURN_IF_ERROR(fused_matmul_cpu(sub));
  cpu::accumulate(ctx.inputs[0].as<float>(), product.data_as<float>(), product.numel());
  return Status::ok();
}

// ---- Gemm: Y[M, N] = alpha * op(A) @ op(B) + beta * C, C unidirectionally broadcast to [M, N] ----

struct GemmDims {
  int64_t m, n, k;
  bool ta, tb;
};

std::string gemm_dims(const Node& node, const Shape& a, const Shape& b, const Shape* c, GemmDims& d) {
  if (a.size() != 2 || b.size() != 2) return "A and B must be 2-D, got " + shape_str(a) + " and " + shape_str(b);
  d.ta = node.attrs.get_int("transA", 0) != 0;
  d.tb = node.attrs.get_int("transB", 0) != 0;
  d.m = d.ta ? a[1] : a[0];
  d.k = d.ta ? a[0] : a[1];
  d.n = d.tb ? b[0] : b[1];
  const int64_t kb = d.tb ? b[1] : b[0];
  if (d.k != kb) {
    return "inner dimensions differ: op(A) is [" + std::to_string(d.m) + "," + std::to_string(d.k) + "], op(B) is [" +
           std::to_string(kb) + "," + std::to_string(d.n) + "]";
  }
  if (c) {
    Shape out;
    if (c->size() > 2 || !broadcast_shapes(*c, {d.m, d.n}, out) || out != Shape{d.m, d.n}) {
      return "C " + shape_str(*c) + " does not broadcast to [" + std::to_string(d.m) + "," + std::to_string(d.n) + "]";
    }
  }
  return "";
}

Status infer_gemm(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_operand_types(ctx));
  if (ctx.has_input(2) && ctx.dtype(2) != ctx.dtype(0)) return ctx.fail("C's dtype differs from A's");
  GemmDims d;
  std::string err = gemm_dims(ctx.node(), ctx.shape(0), ctx.shape(1), ctx.has_input(2) ? &ctx.shape(2) : nullptr, d);
  if (!err.empty()) return ctx.fail(err);
  ctx.set_output(0, ctx.dtype(0), {d.m, d.n});
  return Status::ok();
}

Status gemm_cpu(KernelContext& ctx) {
  const TensorRef &a = ctx.inputs[0], &b = ctx.inputs[1];
  const bool has_c = ctx.has_input(2);
  GemmDims d;
  std::string err = gemm_dims(*ctx.node, a.shape, b.shape, has_c ? &ctx.inputs[2].shape : nullptr, d);
  if (!err.empty()) return ctx.fail(err);
  const double alpha = ctx.attrs().get_double("alpha", 1.0);
  const double beta = has_c ? ctx.attrs().get_double("beta", 1.0) : 0.0;
  return dispatch_numeric(a.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    T* y = ctx.outputs[0].as<T>();
    if (beta != 0.0) {  // Y = beta * broadcast(C), then the product accumulates into it
      const TensorRef& c = ctx.inputs[2];
      const int64_t cr = c.rank() == 2 ? c.shape[0] : 1, cc = c.rank() >= 1 ? c.shape.back() : 1;
      const T* cd = c.as<T>();
      const T bt = static_cast<T>(beta);
      for (int64_t i = 0; i < d.m; ++i)
        for (int64_t j = 0; j < d.n; ++j) y[i * d.n + j] = bt * cd[(cr == 1 ? 0 : i) * cc + (cc == 1 ? 0 : j)];
    }
    cpu::gemm<T>(d.ta, d.tb, d.m, d.n, d.k, alpha, a.as<T>(), b.as<T>(), beta != 0.0 ? 1.0 : 0.0, y);
  });
}

Status gemm_grad(GradBuilder& gb) {
  const ValueId a = gb.input(0), b = gb.input(1), c = gb.input(2), dy = gb.grad_output(0);
  const bool ta = gb.attrs().get_int("transA", 0) != 0, tb = gb.attrs().get_int("transB", 0) != 0;
  const double alpha = gb.attrs().get_double("alpha", 1.0), beta = gb.attrs().get_double("beta", 1.0);
  if (gb.needs_grad(0)) {  // dA = alpha * dY @ op(B)^T, stored transposed when transA
    ValueId da = ta ? gb.emit1("FusedMatMul", {b, dy}, fused_attrs(tb, true, alpha, nullptr), kGalvatronDomain)
                    : gb.emit1("FusedMatMul", {dy, b}, fused_attrs(false, !tb, alpha, nullptr), kGalvatronDomain);
    gb.set_grad_input(0, da);
  }
  if (gb.needs_grad(1)) {  // dB = alpha * op(A)^T @ dY, stored transposed when transB
    ValueId db = tb ? gb.emit1("FusedMatMul", {dy, a}, fused_attrs(true, ta, alpha, nullptr), kGalvatronDomain)
                    : gb.emit1("FusedMatMul", {a, dy}, fused_attrs(!ta, false, alpha, nullptr), kGalvatronDomain);
    gb.set_grad_input(1, db);
  }
  if (c != kNoValue && gb.needs_grad(2)) {
    ValueId dc = gb.sum_to_shape(dy, gb.shape(c));
    if (beta != 1.0) dc = gb.emit1("Mul", {dc, gb.scalar(gb.dtype(c), beta)});
    gb.set_grad_input(2, dc);
  }
  return Status::ok();
}

}  // namespace

void register_matmul_ops(OpRegistry& r) {
  OpSchema mm = make_schema("", "MatMul", 2, 2, 1, 1, infer_matmul, matmul_cpu,
                            "numpy matmul: batched with broadcasting, 1-D operands (BLAS for float types)");
  mm.grad = matmul_grad;
  r.add(mm);

  OpSchema gemm = make_schema("", "Gemm", 2, 3, 1, 1, infer_gemm, gemm_cpu,
                              "Y = alpha * op(A) @ op(B) + beta * C (transA, transB; C broadcast to [M, N])");
  gemm.grad = gemm_grad;
  r.add(gemm);

  r.add(make_schema(kGalvatronDomain, "FusedMatMul", 2, 2, 1, 1, infer_fused_matmul, fused_matmul_cpu,
                    "alpha * op(A) @ op(B), batched with broadcasting, batch summed to attr out_batch (backward)"));
  OpSchema acc =
      make_schema(kGalvatronDomain, "MatMulAccumulate", 3, 3, 0, 0, infer_matmul_accumulate, matmul_accumulate_cpu,
                  "Acc += alpha * op(A) @ op(B) in place (inputs Acc, A, B; FusedMatMul's attributes): a "
                  "weight gradient's product adding into its accumulator over micro-batches");
  acc.writes_first_input_only = true;
  r.add(acc);
}

}  // namespace gv::math

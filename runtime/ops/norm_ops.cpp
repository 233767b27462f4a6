// LayerNormalization (opset 17) and RMSNormalization (opset 23) over the trailing axes [axis, rank), and their fused
// gradient ops LayerNormalizationGrad and RMSNormalizationGrad (domain galvatron).
// The statistics outputs Mean and InvStdDev are stored in the stash type (float32 or float64), widened to float64 when
// X is float64. Scale and B must hold exactly the normalized shape (leading 1s allowed).
#include <algorithm>
#include <vector>

#include "kernels/cpu/broadcast.h"
#include "kernels/cpu/norm.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

struct NormView {
  int64_t axis, rows, cols;
};

Status norm_view(const InferContext& ctx, int x_input, NormView& v) {
  const Shape& x = ctx.shape(x_input);
  v.axis = ctx.attrs().get_int("axis", -1);
  if (x.empty()) return ctx.fail("X must have rank >= 1");
  if (!normalize_axis(v.axis, static_cast<int64_t>(x.size()))) {
    return ctx.fail("axis " + std::to_string(v.axis) + " is out of range for X " + shape_str(x));
  }
  v.rows = dims_product(x, 0, v.axis);
  v.cols = dims_product(x, v.axis, static_cast<int64_t>(x.size()));
  return Status::ok();
}

NormView kernel_view(const KernelContext& ctx, const TensorRef& x) {
  int64_t axis = ctx.attrs().get_int("axis", -1);
  normalize_axis(axis, x.rank());  // validated by inference
  return {axis, dims_product(x.shape, 0, axis), dims_product(x.shape, axis, x.rank())};
}

// Fails unless input i has X's dtype (or `want`) and holds the normalized shape x[axis:] (leading 1s allowed).
Status check_param(const InferContext& ctx, int i, const char* name, int x_input, int64_t axis,
                   DType want = DType::kUndefined) {
  const Shape& x = ctx.shape(x_input);
  const Shape norm(x.begin() + axis, x.end());
  Shape out, p = ctx.shape(i);
  if (want == DType::kUndefined && ctx.dtype(i) != ctx.dtype(x_input)) {
    return ctx.fail(std::string(name) + "'s dtype differs from X's");
  }
  if (want != DType::kUndefined && ctx.dtype(i) != want) {
    return ctx.fail(std::string(name) + " must be " + dtype_name(want) + ", got " + dtype_name(ctx.dtype(i)));
  }
  while (p.size() > norm.size() && p[0] == 1) p.erase(p.begin());
  if (shape_numel(p) != shape_numel(norm) || !broadcast_shapes(p, norm, out) || out != norm) {
    return ctx.fail(std::string(name) + " " + shape_str(ctx.shape(i)) + " must have the normalized shape " + shape_str(norm) +
                    " (X " + shape_str(x) + ", axis " + std::to_string(axis) + ")");
  }
  return Status::ok();
}

// The statistics type: stash_type (1 float32, 11 float64), widened to X's type.
Status stats_dtype(const InferContext& ctx, DType x, DType& u) {
  const int64_t stash = ctx.attrs().get_int("stash_type", 1);
  if (stash != 1 && stash != 11) {
    return ctx.fail("stash_type " + std::to_string(stash) + " is not supported (1: float32, 11: float64)");
  }
  u = (stash == 11 || x == DType::kFloat64) ? DType::kFloat64 : DType::kFloat32;
  return Status::ok();
}

// Calls f(T{}, U{}) for the (X, statistics) type pairs the kernels are built for.
template <typename F>
Status dispatch_norm(DType t, DType u, const KernelContext& ctx, F&& f) {
  if (t == DType::kFloat32 && u == DType::kFloat32) f(float{}, float{});
  else if (t == DType::kFloat32 && u == DType::kFloat64) f(float{}, double{});
  else if (t == DType::kFloat64 && u == DType::kFloat64) f(double{}, double{});
  else return ctx.fail(std::string("unsupported dtypes ") + dtype_name(t) + " / " + dtype_name(u));
  return Status::ok();
}

template <typename P>
P* data_or_null(const KernelContext& ctx, int i) {
  return ctx.has_input(i) ? ctx.inputs[i].as<P>() : nullptr;
}

// The galvatron twins of LayerNormalization and RMSNormalization: Y's dtype from attribute out_dtype (1 float32, 16
// bfloat16 from a float32 X) into *y; the ONNX ops keep X's.
Status twin_out_dtype(const InferContext& ctx, DType* y) {
  if (ctx.node().domain != kGalvatronDomain) return Status::ok();
  DType out = *y;
  GV_RETURN_IF_ERROR(read_out_dtype(ctx, &out));
  if (out == DType::kBFloat16 && *y != DType::kFloat32) return ctx.fail("out_dtype 16 needs a float32 X");
  *y = out == DType::kBFloat16 ? out : *y;
  return Status::ok();
}

// ---- LayerNormalization(X, Scale, B?) -> (Y, Mean?, InvStdDev?) ----

Status infer_layer_norm(InferContext& ctx) {
  GV_RETURN_IF_ERROR(expect_float(ctx, 0, "X"));
  NormView v;
  GV_RETURN_IF_ERROR(norm_view(ctx, 0, v));
  GV_RETURN_IF_ERROR(check_param(ctx, 1, "Scale", 0, v.axis));
  if (ctx.has_input(2)) GV_RETURN_IF_ERROR(check_param(ctx, 2, "B", 0, v.axis));
  DType u;
  GV_RETURN_IF_ERROR(stats_dtype(ctx, ctx.dtype(0), u));
  Shape stats = ctx.shape(0);
  for (size_t i = v.axis; i < stats.size(); ++i) stats[i] = 1;
  DType y = ctx.dtype(0);
  GV_RETURN_IF_ERROR(twin_out_dtype(ctx, &y));
  ctx.set_output(0, y, ctx.shape(0));
  for (int i = 1; i < ctx.num_outputs(); ++i) ctx.set_output(i, u, stats);
  return Status::ok();
}

// Y in bfloat16 (galvatron LayerNormalization, out_dtype 16): computed in float32, then rounded.
Status layer_norm_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const NormView v = kernel_view(ctx, x);
  const double eps = ctx.attrs().get_double("epsilon", 1e-5);
  const int n_out = static_cast<int>(ctx.outputs.size());
  const DType u = n_out > 1 ? ctx.outputs[1].dtype : x.dtype;
  return dispatch_norm(x.dtype, u, ctx, [&](auto t_tag, auto u_tag) {
    using T = decltype(t_tag);
    using U = decltype(u_tag);
    const TensorRef& y = ctx.outputs[0];
    std::vector<T> wide(y.dtype == DType::kBFloat16 ? static_cast<size_t>(y.numel()) : 0);
    cpu::layer_norm<T, U>(x.as<T>(), ctx.inputs[1].as<T>(), data_or_null<T>(ctx, 2),
                          wide.empty() ? y.as<T>() : wide.data(), n_out > 1 ? ctx.outputs[1].as<U>() : nullptr,
                          n_out > 2 ? ctx.outputs[2].as<U>() : nullptr, v.rows, v.cols, eps);
    if (!wide.empty()) convert_elements(wide.data(), x.dtype, y.data, y.dtype, y.numel());
  });
}

// LayerNormalizationGrad(dY?, X, Scale, Mean?, InvStdDev?, dMean?, dInvStdDev?, Addend?)
//   -> (dX, dScale, dBias, dXBf16?, dXBf16Sums?).
// Uses the saved statistics when given, else recomputes them (attr epsilon). Addend (X's shape) is added to dX: X's
// other gradient contributions (the residual stream's), which a separate Add summed before
// (runtime/fuse_residual_add.cpp). dXBf16 is dX rounded to bf16 (float32 X), and dXBf16Sums its column sums over
// every leading axis ([1, .., 1, N], BiasGrad's keepdims shape; the normalized axis must be the last): the shared bf16
// copy that the products before the norm read and the bias gradient taken from it, which a Cast and a BiasGrad made
// before (runtime/fuse_norm_grad_outputs.cpp).
// A residual stream kept in bf16 (runtime/bf16_residual_stream.cpp): X may be bfloat16, the gradient still computed
// in float32 (Scale, the statistics and dX float32; dY float32, or bfloat16 as the products before give it) from the
// widened values, and Addend bfloat16 too. dX is skippable: with no buffer (nothing reads it) only the bf16 copy is
// written.
Status infer_layer_norm_grad(InferContext& ctx) {
  const bool x16 = ctx.dtype(1) == DType::kBFloat16;
  if (!x16) GV_RETURN_IF_ERROR(expect_float(ctx, 1, "X"));
  const DType c = x16 ? DType::kFloat32 : ctx.dtype(1);  // the computation's type
  NormView v;
  GV_RETURN_IF_ERROR(norm_view(ctx, 1, v));
  GV_RETURN_IF_ERROR(check_param(ctx, 2, "Scale", 1, v.axis, c));
  const bool dy_ok = ctx.dtype(0) == c || (x16 && ctx.dtype(0) == DType::kBFloat16);
  if (ctx.has_input(0) && (ctx.shape(0) != ctx.shape(1) || !dy_ok)) {
    return ctx.fail("dY must be " + std::string(dtype_name(c)) + (x16 ? " or bfloat16" : "") + " of X's shape " +
                    shape_str(ctx.shape(1)));
  }
  for (int i = 3; i < 7; ++i) {
    if (ctx.has_input(i) && shape_numel(ctx.shape(i)) != v.rows) return ctx.fail("statistics must have one value per row");
  }
  if (ctx.has_input(7) && (ctx.shape(7) != ctx.shape(1) ||
                           (ctx.dtype(7) != c && !(c == DType::kFloat32 && ctx.dtype(7) == DType::kBFloat16)))) {
    return ctx.fail("Addend must match X " + shape_str(ctx.shape(1)) + " (" + dtype_name(c) + ", or bfloat16)");
  }
  ctx.set_output(0, c, ctx.shape(1));
  for (int i = 1; i < std::min(ctx.num_outputs(), 3); ++i) ctx.set_output(i, c, ctx.shape(2));
  if (ctx.num_outputs() > 3) {
    if (c != DType::kFloat32) return ctx.fail("dXBf16 needs a float32 X");
    ctx.set_output(3, DType::kBFloat16, ctx.shape(1));
  }
  if (ctx.num_outputs() > 4) {
    if (v.axis != static_cast<int64_t>(ctx.shape(1).size()) - 1) {
      return ctx.fail("dXBf16Sums needs the normalized axis to be the last (axis " + std::to_string(v.axis) + ")");
    }
    Shape sums(ctx.shape(1).size(), 1);
    sums.back() = ctx.shape(1).back();
    ctx.set_output(4, DType::kFloat32, sums);
  }
  return Status::ok();
}

// A bf16 input widened to float32 into *wide (and the ref pointed there); other refs unchanged.
void widen_bf16(TensorRef& t, std::vector<float>* wide) {
  if (!t.data || t.dtype != DType::kBFloat16) return;
  wide->resize(static_cast<size_t>(t.numel()));
  convert_elements(t.data, DType::kBFloat16, wide->data(), DType::kFloat32, t.numel());
  t.data = wide->data();
  t.dtype = DType::kFloat32;
}

// The norm gradients of a bf16 residual stream on the CPU: when one of `stream` (dY, X, Addend) is bf16 or dX (output
// 0) has no buffer, runs `kernel` on a copy of the context with those inputs widened to float32 and dX in scratch
// (a copy: callers such as the CUDA backend's host fallback copy the inputs back) and returns true, its status in *st.
template <typename Kernel>
bool run_widened(KernelContext& ctx, std::initializer_list<size_t> stream, Kernel kernel, Status* st) {
  auto bf16_in = [&](size_t i) {
    return ctx.inputs.size() > i && ctx.inputs[i].data && ctx.inputs[i].dtype == DType::kBFloat16;
  };
  bool any = !ctx.outputs[0].data;
  for (size_t i : stream) any = any || bf16_in(i);
  if (!any) return false;
  KernelContext wide = ctx;
  std::vector<std::vector<float>> widened(stream.size());
  size_t k = 0;
  for (size_t i : stream) {
    if (bf16_in(i)) widen_bf16(wide.inputs[i], &widened[k]);
    ++k;
  }
  std::vector<float> own_dx;
  if (!wide.outputs[0].data) {
    own_dx.resize(static_cast<size_t>(wide.outputs[0].numel()));
    wide.outputs[0].data = own_dx.data();
  }
  *st = kernel(wide);
  return true;
}

Status layer_norm_grad_cpu(KernelContext& ctx) {
  Status widened;
  if (run_widened(ctx, {0, 1, 7}, layer_norm_grad_cpu, &widened)) return widened;
  const TensorRef& x = ctx.inputs[1];
  const NormView v = kernel_view(ctx, x);
  DType u = DType::kFloat64;
  for (int i = 3; i < 7; ++i) {
    if (ctx.has_input(i)) u = ctx.inputs[i].dtype;
  }
  if (x.dtype == DType::kFloat64) u = DType::kFloat64;
  const int n_out = static_cast<int>(ctx.outputs.size());
  const Status st = dispatch_norm(x.dtype, u, ctx, [&](auto t_tag, auto u_tag) {
    using T = decltype(t_tag);
    using U = decltype(u_tag);
    const U* mean = data_or_null<U>(ctx, 3);
    const U* inv_std = data_or_null<U>(ctx, 4);
    std::vector<U> m, is;
    if (!mean || !inv_std) {
      m.resize(v.rows);
      is.resize(v.rows);
      cpu::layer_norm_stats<T, U>(x.as<T>(), m.data(), is.data(), v.rows, v.cols,
                                  ctx.attrs().get_double("epsilon", 1e-5));
      mean = m.data();
      inv_std = is.data();
    }
    cpu::layer_norm_backward<T, U>(data_or_null<T>(ctx, 0), x.as<T>(), ctx.inputs[2].as<T>(), mean, inv_std,
                                   data_or_null<U>(ctx, 5), data_or_null<U>(ctx, 6), ctx.outputs[0].as<T>(),
                                   n_out > 1 ? ctx.outputs[1].as<T>() : nullptr,
                                   n_out > 2 ? ctx.outputs[2].as<T>() : nullptr, v.rows, v.cols);
    if (const T* add = data_or_null<T>(ctx, 7)) {
      T* dx = ctx.outputs[0].as<T>();
      const int64_t n = ctx.outputs[0].numel();
#pragma omp parallel for if (n > cpu::kParallelThreshold) schedule(static)
      for (int64_t i = 0; i < n; ++i) dx[i] += add[i];
    }
  });
  const bool want_copy = n_out > 3 && ctx.outputs[3].data, want_sums = n_out > 4 && ctx.outputs[4].data;
  if (!st.is_ok() || (!want_copy && !want_sums)) return st;
  // The bf16 copy, and its column sums in double in row order (as Cast and BiasGrad compute them).
  const TensorRef& dx = ctx.outputs[0];
  std::vector<uint16_t> own(want_copy ? 0 : static_cast<size_t>(dx.numel()));
  auto* c16 = want_copy ? static_cast<uint16_t*>(ctx.outputs[3].data) : own.data();
  convert_elements(dx.data, dx.dtype, c16, DType::kBFloat16, dx.numel());
  if (!want_sums) return st;
  float* sums = ctx.outputs[4].as<float>();
#pragma omp parallel for if (v.rows * v.cols > 32768) schedule(static)
  for (int64_t c = 0; c < v.cols; ++c) {
    double s = 0.0;
    for (int64_t r = 0; r < v.rows; ++r) s += bf16_to_float(c16[r * v.cols + c]);
    sums[c] = static_cast<float>(s);
  }
  return st;
}

Status layer_norm_grad(GradBuilder& gb) {
  Attributes a;
  a.set_int("axis", gb.attrs().get_int("axis", -1));
  a.set_float("epsilon", gb.attrs().get_double("epsilon", 1e-5));
  const int n_out = gb.num_outputs();
  // Saved statistics only as a pair; the gradients reaching them must match their dtype, so they come with them.
  const bool saved = n_out >= 3;
  const ValueId mean = saved ? gb.output(1) : kNoValue, inv_std = saved ? gb.output(2) : kNoValue;
  const ValueId dmean = saved ? gb.grad_output(1) : kNoValue, dinv_std = saved ? gb.grad_output(2) : kNoValue;
  if (!saved && n_out == 2 && gb.grad_output(1) != kNoValue) {
    return unsupported("node '" + gb.node().name + "' (LayerNormalization): gradient through the Mean output needs "
                       "the InvStdDev output too");
  }
  auto g = gb.emit("LayerNormalizationGrad",
                   {gb.grad_output(0), gb.input(0), gb.input(1), mean, inv_std, dmean, dinv_std}, a, 3,
                   kGalvatronDomain);
  if (g.empty()) return Status::ok();
  if (gb.needs_grad(0)) gb.set_grad_input(0, g[0]);
  if (gb.needs_grad(1)) gb.set_grad_input(1, g[1]);
  if (gb.input(2) != kNoValue && gb.needs_grad(2)) gb.set_grad_input(2, gb.reshape(g[2], gb.shape(gb.input(2))));
  return Status::ok();
}

// ---- RMSNormalization(X, scale) -> Y = X / sqrt(mean(X^2) + epsilon) * scale ----

Status infer_rms_norm(InferContext& ctx) {
  GV_RETURN_IF_ERROR(expect_float(ctx, 0, "X"));
  NormView v;
  GV_RETURN_IF_ERROR(norm_view(ctx, 0, v));
  GV_RETURN_IF_ERROR(check_param(ctx, 1, "scale", 0, v.axis));
  DType u;
  GV_RETURN_IF_ERROR(stats_dtype(ctx, ctx.dtype(0), u));
  DType y = ctx.dtype(0);
  GV_RETURN_IF_ERROR(twin_out_dtype(ctx, &y));
  ctx.set_output(0, y, ctx.shape(0));
  return Status::ok();
}

// Y in bfloat16 (galvatron RMSNormalization, out_dtype 16): computed in float32, then rounded.
Status rms_norm_cpu(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &y = ctx.outputs[0];
  const NormView v = kernel_view(ctx, x);
  const double eps = ctx.attrs().get_double("epsilon", 1e-5);
  return dispatch_float(x.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> wide(y.dtype == DType::kBFloat16 ? static_cast<size_t>(y.numel()) : 0);
    cpu::rms_norm<T>(x.as<T>(), ctx.inputs[1].as<T>(), wide.empty() ? y.as<T>() : wide.data(), v.rows, v.cols, eps);
    if (!wide.empty()) convert_elements(wide.data(), x.dtype, y.data, y.dtype, y.numel());
  });
}

// RMSNormalizationGrad(dY, X, scale, Addend?) -> (dX + Addend, dscale?, dXBf16?); the statistic is recomputed from X.
// Addend (X's shape and type): X's other gradient contributions (the residual stream's), which a separate Add summed
// before (runtime/fuse_residual_add.cpp). dXBf16 (float32 X): dX rounded to bf16, the shared copy the products before
// the norm read, which a Cast made before (runtime/fuse_norm_grad_outputs.cpp). A residual stream kept in bf16
// (runtime/bf16_residual_stream.cpp): X, Addend and dY may be bfloat16, computed in float32 from their widenings as
// LayerNormalizationGrad does, and dX is skippable.
Status infer_rms_norm_grad(InferContext& ctx) {
  const bool x16 = ctx.dtype(1) == DType::kBFloat16;
  if (!x16) GV_RETURN_IF_ERROR(expect_float(ctx, 1, "X"));
  const DType c = x16 ? DType::kFloat32 : ctx.dtype(1);
  NormView v;
  GV_RETURN_IF_ERROR(norm_view(ctx, 1, v));
  GV_RETURN_IF_ERROR(check_param(ctx, 2, "scale", 1, v.axis, c));
  auto stream_ok = [&](int i) { return ctx.dtype(i) == c || (x16 && ctx.dtype(i) == DType::kBFloat16); };
  if (ctx.shape(0) != ctx.shape(1) || !stream_ok(0)) return ctx.fail("dY must match X");
  if (ctx.has_input(3) && (ctx.shape(3) != ctx.shape(1) || !stream_ok(3))) {
    return ctx.fail("Addend must match X " + shape_str(ctx.shape(1)));
  }
  ctx.set_output(0, c, ctx.shape(1));
  if (ctx.num_outputs() > 1) ctx.set_output(1, c, ctx.shape(2));
  if (ctx.num_outputs() > 2) {
    if (c != DType::kFloat32) return ctx.fail("dXBf16 needs a float32 X");
    ctx.set_output(2, DType::kBFloat16, ctx.shape(1));
  }
  return Status::ok();
}

Status rms_norm_grad_cpu(KernelContext& ctx) {
  Status widened;
  if (run_widened(ctx, {0, 1, 3}, rms_norm_grad_cpu, &widened)) return widened;
  const TensorRef& x = ctx.inputs[1];
  const NormView v = kernel_view(ctx, x);
  const double eps = ctx.attrs().get_double("epsilon", 1e-5);
  return dispatch_float(x.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    T* dx = ctx.outputs[0].as<T>();
    cpu::rms_norm_backward<T>(ctx.inputs[0].as<T>(), x.as<T>(), ctx.inputs[2].as<T>(), dx,
                              ctx.outputs.size() > 1 ? ctx.outputs[1].as<T>() : nullptr, v.rows, v.cols, eps);
    if (ctx.has_input(3)) {
      const T* addend = ctx.inputs[3].as<T>();
      for (int64_t i = 0; i < x.numel(); ++i) dx[i] += addend[i];
    }
    if (ctx.outputs.size() > 2 && ctx.outputs[2].data) {
      convert_elements(dx, x.dtype, ctx.outputs[2].data, DType::kBFloat16, x.numel());
    }
  });
}

Status rms_norm_grad(GradBuilder& gb) {
  Attributes a;
  a.set_int("axis", gb.attrs().get_int("axis", -1));
  a.set_float("epsilon", gb.attrs().get_double("epsilon", 1e-5));
  auto g = gb.emit("RMSNormalizationGrad", {gb.grad_output(0), gb.input(0), gb.input(1)}, a, 2, kGalvatronDomain);
  if (g.empty()) return Status::ok();
  if (gb.needs_grad(0)) gb.set_grad_input(0, g[0]);
  if (gb.needs_grad(1)) gb.set_grad_input(1, g[1]);
  return Status::ok();
}

}  // namespace

void register_norm_ops(OpRegistry& r) {
  OpSchema ln = make_schema("", "LayerNormalization", 2, 3, 1, 3, infer_layer_norm, layer_norm_cpu,
                            "(X, Scale, B?) -> (Y, Mean?, InvStdDev?) over axes [axis, rank); epsilon, stash_type");
  ln.grad = layer_norm_grad;
  ln.bf16_outputs.copies = {0};
  ln.bf16_outputs.twin = kGalvatronDomain;
  r.add(ln);
  // The same op writing Y in bfloat16 (attr out_dtype 16), for a Y only products read (runtime/bf16_operands.cpp);
  // formed after autograd, so without a gradient rule.
  OpSchema ln16 = make_schema(kGalvatronDomain, "LayerNormalization", 2, 3, 1, 3, infer_layer_norm, layer_norm_cpu,
                              "ONNX LayerNormalization with attr out_dtype (1 float32, 16 bfloat16: Y rounded)");
  ln16.bf16_outputs.copies = {0};
  r.add(ln16);
  OpSchema rms = make_schema("", "RMSNormalization", 2, 2, 1, 1, infer_rms_norm, rms_norm_cpu,
                             "(X, scale) -> X / sqrt(mean(X^2) + epsilon) * scale over axes [axis, rank)");
  rms.grad = rms_norm_grad;
  rms.bf16_outputs.copies = {0};
  rms.bf16_outputs.twin = kGalvatronDomain;
  r.add(rms);
  OpSchema ln_grad =
      make_schema(kGalvatronDomain, "LayerNormalizationGrad", 3, 8, 1, 5, infer_layer_norm_grad, layer_norm_grad_cpu,
                  "(dY?, X, Scale, Mean?, InvStdDev?, dMean?, dInvStdDev?, Addend?) -> (dX + Addend, "
                  "dScale, dBias, dXBf16?, dXBf16Sums?); X and Addend float32 or bfloat16");
  ln_grad.skippable_outputs = {0};  // a bf16 residual stream reads only dXBf16
  r.add(ln_grad);
  OpSchema rms16 = make_schema(kGalvatronDomain, "RMSNormalization", 2, 2, 1, 1, infer_rms_norm, rms_norm_cpu,
                               "ONNX RMSNormalization with attr out_dtype (1 float32, 16 bfloat16: Y rounded)");
  rms16.bf16_outputs.copies = {0};
  r.add(rms16);
  OpSchema rms_grad =
      make_schema(kGalvatronDomain, "RMSNormalizationGrad", 3, 4, 1, 3, infer_rms_norm_grad, rms_norm_grad_cpu,
                  "(dY, X, scale, Addend?) -> (dX + Addend, dscale?, dXBf16?); X, Addend and dY float32 "
                  "or bfloat16");
  rms_grad.skippable_outputs = {0};  // a bf16 residual stream reads only dXBf16
  r.add(rms_grad);
}

}  // namespace gv::math

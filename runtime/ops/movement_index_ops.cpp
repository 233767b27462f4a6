// Index-driven ops: Gather, GatherElements, GatherND and the scatters ScatterND, ScatterElements, plus the galvatron
// gradient ops GatherGrad and GatherNDGrad (scatter-adds into zeros; duplicate indices add up). Out-of-range
// indices are errors naming the index, never out-of-bounds reads.
#include <algorithm>
#include <cstring>

#include "kernels/cpu/gather.h"
#include "kernels/cpu/scatter.h"
#include "runtime/ops/movement_common.h"

namespace gv::movement {
namespace {

Status unsupported_dtype(const KernelContext& ctx, DType t) {
  return ctx.fail("unsupported dtype " + std::string(dtype_name(t)));
}

Status check_index_dtype(const InferContext& ctx, int input) {
  if (!is_index_dtype(ctx.dtype(input))) {
    return ctx.fail("indices must be int32 or int64, got " + std::string(dtype_name(ctx.dtype(input))));
  }
  return Status::ok();
}

// Fails naming the first index outside [-bound, bound) of `idx`.
Status check_indices(const KernelContext& ctx, const TensorRef& idx, int64_t bound, int64_t axis) {
  int64_t bad = -1, value = 0;
  dispatch_index(idx.dtype, [&](auto tag) {
    using I = decltype(tag);
    bad = cpu::find_bad_index(idx.as<I>(), idx.numel(), bound);
    if (bad >= 0) value = static_cast<int64_t>(idx.as<I>()[bad]);
  });
  if (bad < 0) return Status::ok();
  return ctx.fail("index " + std::to_string(value) + " at position " + std::to_string(bad) +
                  " is out of range for axis " + std::to_string(axis) + " of size " + std::to_string(bound));
}

// Fails naming the first index tuple (rows of k) outside the dims it indexes.
Status check_tuples(const KernelContext& ctx, const TensorRef& idx, const cpu::GatherNDShape& s) {
  int64_t bad = -1;
  std::vector<int64_t> tuple;
  dispatch_index(idx.dtype, [&](auto tag) {
    using I = decltype(tag);
    bad = cpu::find_bad_tuple(idx.as<I>(), s.batch * s.n_tuples, s.k, s.index_dims);
    for (int m = 0; bad >= 0 && m < s.k; ++m) tuple.push_back(static_cast<int64_t>(idx.as<I>()[bad * s.k + m]));
  });
  if (bad < 0) return Status::ok();
  return ctx.fail("index tuple " + ints_str(tuple) + " at position " + std::to_string(bad) +
                  " is out of range for dims " + ints_str(std::vector<int64_t>(s.index_dims, s.index_dims + s.k)));
}

// Runs a typed kernel over (element type, index type): the unsigned type of the element size for kernels that move
// elements (kBySize), the arithmetic type for kernels that add. Compile-time, so that only instantiated kernels are
// referenced.
template <bool kBySize, typename F>
bool dispatch_gather(DType index, DType data, F&& f) {
  bool ok = false;
  dispatch_index(index, [&](auto itag) {
    auto call = [&](auto ttag) { f(ttag, itag); };
    if constexpr (kBySize)
      ok = dispatch_by_size(dtype_size(data), call);
    else
      ok = dispatch_arith(data, call);
  });
  return ok;
}

// ---- Gather, GatherGrad ----------------------------------------------------------------------------------------

// Gather's output: data[:axis] + indices + data[axis+1:].
Shape gather_shape(const Shape& data, int64_t axis, const Shape& idx) {
  Shape out(data.begin(), data.begin() + axis);
  out.insert(out.end(), idx.begin(), idx.end());
  out.insert(out.end(), data.begin() + axis + 1, data.end());
  return out;
}

Status infer_gather(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  GV_RETURN_IF_ERROR(check_index_dtype(ctx, 1));
  if (ctx.rank(0) == 0) return ctx.fail("data must have rank >= 1");
  int64_t axis = ctx.attrs().get_int("axis", 0);
  GV_RETURN_IF_ERROR(check_axis(ctx, axis, ctx.rank(0)));
  // Constant indices (position ids, fixed selections) are checked now, so a bad model fails at import.
  if (const Tensor* idx = ctx.constant(1)) {
    const int64_t bound = ctx.shape(0)[axis];
    for (int64_t i = 0; i < idx->numel(); ++i) {
      const int64_t v = idx->scalar_i64(i);
      if (v < -bound || v >= bound) {
        return ctx.fail("index " + std::to_string(v) + " at position " + std::to_string(i) +
                        " is out of range for axis " + std::to_string(axis) + " of size " + std::to_string(bound));
      }
    }
  }
  ctx.set_output(0, ctx.dtype(0), gather_shape(ctx.shape(0), axis, ctx.shape(1)));
  return Status::ok();
}

// [outer, axis_dim, inner] view of a tensor around `axis`.
void split_around(const Shape& s, int64_t axis, int64_t& outer, int64_t& inner) {
  outer = inner = 1;
  for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d) (d < axis ? outer : inner) *= d == axis ? 1 : s[d];
}

Status gather_cpu(KernelContext& ctx) {
  const TensorRef& data = ctx.inputs[0];
  const TensorRef& idx = ctx.inputs[1];
  int64_t axis = ctx.attrs().get_int("axis", 0);
  normalize_axis(axis, data.rank());
  GV_RETURN_IF_ERROR(check_indices(ctx, idx, data.shape[axis], axis));
  int64_t outer, inner;
  split_around(data.shape, axis, outer, inner);
  bool ok = dispatch_gather<true>(idx.dtype, data.dtype, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    cpu::gather(data.as<T>(), idx.as<I>(), ctx.outputs[0].as<T>(), outer, data.shape[axis], idx.numel(), inner);
  });
  return ok ? Status::ok() : unsupported_dtype(ctx, data.dtype);
}

Status gather_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  const Shape& data = gb.shape(gb.input(0));
  int64_t axis = gb.attrs().get_int("axis", 0);
  normalize_axis(axis, static_cast<int64_t>(data.size()));
  Attributes a;
  a.set_int("axis", axis);
  a.set_ints("shape", data);
  // padding_idx is not ONNX: the importer may set it on an embedding lookup to reproduce PyTorch's
  // Embedding(padding_idx), whose padding row receives no gradient from the lookup.
  if (gb.attrs().has("padding_idx")) a.set_int("padding_idx", gb.attrs().get_int("padding_idx", -1));
  gb.set_grad_input(0, gb.emit1("GatherGrad", {gb.grad_output(0), gb.input(1)}, a, kGalvatronDomain));
  return Status::ok();
}

// GatherGrad(grad, indices) attrs axis, shape (Gather's data shape), optional padding_idx: zeros of `shape`, grad rows
// added at indices, except at index padding_idx (negative values count from the end).
// GatherGradAdd(Base, grad, indices) -> Base + GatherGrad(grad, indices) (attrs axis, padding_idx; Base has Gather's
// data shape): Base copied, then the rows added, without GatherGrad's zeroed tensor. runtime/fuse_gather_grad_add.cpp
// forms it after autograd from Add(GatherGrad(grad, indices), Base): a tied embedding's two gradient contributions.

// Both ops' checks of grad (input g) and indices (input i) against the data shape `shape`; sets output 0.
Status infer_gather_grad_rows(InferContext& ctx, const Shape& shape, int g, int i) {
  GV_RETURN_IF_ERROR(check_index_dtype(ctx, i));
  int64_t axis = ctx.attrs().get_int("axis", 0);
  GV_RETURN_IF_ERROR(check_axis(ctx, axis, static_cast<int64_t>(shape.size())));
  if (ctx.attrs().has("padding_idx")) {
    int64_t pad = ctx.attrs().get_int("padding_idx", -1);
    if (!normalize_axis(pad, shape[axis])) {
      return ctx.fail("padding_idx " + std::to_string(pad) + " is out of range for axis " + std::to_string(axis) +
                      " of size " + std::to_string(shape[axis]));
    }
  }
  const Shape expected = gather_shape(shape, axis, ctx.shape(i));
  if (ctx.shape(g) != expected) {
    return ctx.fail("gradient " + shape_str(ctx.shape(g)) + " does not match Gather's output " + shape_str(expected));
  }
  ctx.set_output(0, ctx.dtype(g), shape);
  return Status::ok();
}

Status infer_gather_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  return infer_gather_grad_rows(ctx, ctx.attrs().get_ints("shape"), 0, 1);
}

Status infer_gather_grad_add(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 3));
  if (ctx.dtype(1) != ctx.dtype(0)) return ctx.fail("grad's dtype differs from Base's");
  return infer_gather_grad_rows(ctx, ctx.shape(0), 1, 2);
}

// out = zeros (GatherGrad) or as it is (GatherGradAdd, after copying Base in), then g's rows added at idx.
Status add_gather_grad_rows(KernelContext& ctx, const TensorRef& g, const TensorRef& idx, const TensorRef& out,
                            bool zero_first) {
  int64_t axis = ctx.attrs().get_int("axis", 0);
  normalize_axis(axis, out.rank());
  GV_RETURN_IF_ERROR(check_indices(ctx, idx, out.shape[axis], axis));
  int64_t outer, inner;
  split_around(out.shape, axis, outer, inner);
  const int64_t skip = gather_grad_skip_row(ctx.attrs(), out.shape[axis]);
  bool ok = dispatch_gather<false>(idx.dtype, g.dtype, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    if (zero_first) {
      cpu::gather_grad(g.as<T>(), idx.as<I>(), out.as<T>(), outer, out.shape[axis], idx.numel(), inner, skip);
    } else {
      cpu::gather_grad_add(g.as<T>(), idx.as<I>(), out.as<T>(), outer, out.shape[axis], idx.numel(), inner, skip);
    }
  });
  return ok ? Status::ok() : unsupported_dtype(ctx, g.dtype);
}

Status gather_grad_cpu(KernelContext& ctx) {
  if (is_half(ctx.inputs[0].dtype)) return run_widened(ctx, gather_grad_cpu);
  return add_gather_grad_rows(ctx, ctx.inputs[0], ctx.inputs[1], ctx.outputs[0], true);
}

Status gather_grad_add_cpu(KernelContext& ctx) {
  const TensorRef& out = ctx.outputs[0];
  std::memcpy(out.data, ctx.inputs[0].data, out.nbytes());
  return add_gather_grad_rows(ctx, ctx.inputs[1], ctx.inputs[2], out, false);
}

// ---- GatherElements, ScatterElements ---------------------------------------------------------------------------

// indices (and updates) must have data's rank and fit inside it off the axis.
Status check_elements_shapes(const InferContext& ctx, int64_t axis, const Shape& idx) {
  const Shape& data = ctx.shape(0);
  bool ok = idx.size() == data.size();
  for (size_t d = 0; ok && d < idx.size(); ++d) ok = static_cast<int64_t>(d) == axis || idx[d] <= data[d];
  if (!ok) {
    return ctx.fail("indices " + shape_str(idx) + " must have the rank of data " + shape_str(data) +
                    " and no larger dims off axis " + std::to_string(axis));
  }
  return Status::ok();
}

Status infer_gather_elements(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  GV_RETURN_IF_ERROR(check_index_dtype(ctx, 1));
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (ctx.rank(0) == 0) return ctx.fail("data must have rank >= 1");
  GV_RETURN_IF_ERROR(check_axis(ctx, axis, ctx.rank(0)));
  GV_RETURN_IF_ERROR(check_elements_shapes(ctx, axis, ctx.shape(1)));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(1));
  return Status::ok();
}

Status gather_elements_cpu(KernelContext& ctx) {
  const TensorRef& data = ctx.inputs[0];
  const TensorRef& idx = ctx.inputs[1];
  int64_t axis = ctx.attrs().get_int("axis", 0);
  normalize_axis(axis, data.rank());
  GV_RETURN_IF_ERROR(check_indices(ctx, idx, data.shape[axis], axis));
  bool ok = dispatch_gather<true>(idx.dtype, data.dtype, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    cpu::gather_elements(data.as<T>(), data.shape.data(), idx.as<I>(), ctx.outputs[0].as<T>(), idx.shape.data(),
                         data.rank(), static_cast<int>(axis));
  });
  return ok ? Status::ok() : unsupported_dtype(ctx, data.dtype);
}

Status gather_elements_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  const ValueId data = gb.input(0);
  Attributes a;
  a.set_int("axis", gb.attrs().get_int("axis", 0));
  a.set_string("reduction", "add");
  const ValueId zeros = emit_zeros(gb, gb.dtype(data), gb.shape(data));
  gb.set_grad_input(0, gb.emit1("ScatterElements", {zeros, gb.input(1), gb.grad_output(0)}, a));
  return Status::ok();
}

bool parse_reduction(const std::string& s, cpu::ScatterReduction& r) {
  if (s == "none")
    r = cpu::ScatterReduction::kNone;
  else if (s == "add")
    r = cpu::ScatterReduction::kAdd;
  else if (s == "mul")
    r = cpu::ScatterReduction::kMul;
  else if (s == "max")
    r = cpu::ScatterReduction::kMax;
  else if (s == "min")
    r = cpu::ScatterReduction::kMin;
  else
    return false;
  return true;
}

// Shared checks of ScatterND and ScatterElements: dtypes and the reduction attribute.
Status check_scatter(const InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_index_dtype(ctx, 1));
  if (ctx.dtype(2) != ctx.dtype(0)) return ctx.fail("updates and data differ in dtype");
  cpu::ScatterReduction r;
  const std::string red = ctx.attrs().get_string("reduction", "none");
  if (!parse_reduction(red, r)) return ctx.fail("reduction '" + red + "' is not one of none, add, mul, max, min");
  return Status::ok();
}

Status infer_scatter_elements(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 3));
  GV_RETURN_IF_ERROR(check_scatter(ctx));
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (ctx.rank(0) == 0) return ctx.fail("data must have rank >= 1");
  GV_RETURN_IF_ERROR(check_axis(ctx, axis, ctx.rank(0)));
  GV_RETURN_IF_ERROR(check_elements_shapes(ctx, axis, ctx.shape(1)));
  if (ctx.shape(2) != ctx.shape(1)) {
    return ctx.fail("updates " + shape_str(ctx.shape(2)) + " must have the shape of indices " +
                    shape_str(ctx.shape(1)));
  }
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

Status scatter_elements_cpu(KernelContext& ctx) {
  const TensorRef& data = ctx.inputs[0];
  const TensorRef& idx = ctx.inputs[1];
  cpu::ScatterReduction red;
  parse_reduction(ctx.attrs().get_string("reduction", "none"), red);
  const bool by_size = red == cpu::ScatterReduction::kNone;
  if (!by_size && is_half(data.dtype)) return run_widened(ctx, scatter_elements_cpu);
  int64_t axis = ctx.attrs().get_int("axis", 0);
  normalize_axis(axis, data.rank());
  GV_RETURN_IF_ERROR(check_indices(ctx, idx, data.shape[axis], axis));
  auto kernel = [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    cpu::scatter_elements(data.as<T>(), data.shape.data(), idx.as<I>(), ctx.inputs[2].as<T>(), idx.shape.data(),
                          data.rank(), static_cast<int>(axis), ctx.outputs[0].as<T>(), red);
  };
  // Replacing moves bytes (any dtype); reductions need the arithmetic type.
  bool ok = by_size ? dispatch_gather<true>(idx.dtype, data.dtype, kernel)
                    : dispatch_gather<false>(idx.dtype, data.dtype, kernel);
  return ok ? Status::ok() : unsupported_dtype(ctx, data.dtype);
}

// ---- GatherND, GatherNDGrad, ScatterND -------------------------------------------------------------------------

// GatherND's output: indices[:-1] + data[batch_dims + k:], after checking the shapes.
Status gather_nd_shape(const InferContext& ctx, const Shape& data, const Shape& idx, int64_t b, Shape& out) {
  const int64_t r = static_cast<int64_t>(data.size()), q = static_cast<int64_t>(idx.size());
  if (q < 1 || b < 0 || b >= std::min(r, q)) {
    return ctx.fail("batch_dims " + std::to_string(b) + " must be below the ranks of data " + shape_str(data) +
                    " and indices " + shape_str(idx));
  }
  const int64_t k = idx.back();
  if (k < 1 || k > r - b) {
    return ctx.fail("indices' last dim " + std::to_string(k) + " must lie in 1.." + std::to_string(r - b));
  }
  for (int64_t d = 0; d < b; ++d) {
    if (idx[d] != data[d])
      return ctx.fail("batch dims of indices " + shape_str(idx) + " and data " + shape_str(data) + " differ");
  }
  out.assign(idx.begin(), idx.end() - 1);
  out.insert(out.end(), data.begin() + b + k, data.end());
  return Status::ok();
}

cpu::GatherNDShape nd_shape(const Shape& data, const Shape& idx, int64_t b) {
  cpu::GatherNDShape s;
  s.k = static_cast<int>(idx.back());
  for (int64_t d = 0; d < b; ++d) s.batch *= data[d];
  s.n_tuples = 1;
  for (size_t d = b; d + 1 < idx.size(); ++d) s.n_tuples *= idx[d];
  s.index_dims = data.data() + b;
  for (size_t d = b + s.k; d < data.size(); ++d) s.slice *= data[d];
  return s;
}

Status infer_gather_nd(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  GV_RETURN_IF_ERROR(check_index_dtype(ctx, 1));
  Shape out;
  GV_RETURN_IF_ERROR(gather_nd_shape(ctx, ctx.shape(0), ctx.shape(1), ctx.attrs().get_int("batch_dims", 0), out));
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

Status gather_nd_cpu(KernelContext& ctx) {
  const TensorRef& data = ctx.inputs[0];
  const TensorRef& idx = ctx.inputs[1];
  const cpu::GatherNDShape s = nd_shape(data.shape, idx.shape, ctx.attrs().get_int("batch_dims", 0));
  GV_RETURN_IF_ERROR(check_tuples(ctx, idx, s));
  bool ok = dispatch_gather<true>(idx.dtype, data.dtype, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    cpu::gather_nd(data.as<T>(), idx.as<I>(), ctx.outputs[0].as<T>(), s);
  });
  return ok ? Status::ok() : unsupported_dtype(ctx, data.dtype);
}

Status gather_nd_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  Attributes a;
  a.set_int("batch_dims", gb.attrs().get_int("batch_dims", 0));
  a.set_ints("shape", gb.shape(gb.input(0)));
  gb.set_grad_input(0, gb.emit1("GatherNDGrad", {gb.grad_output(0), gb.input(1)}, a, kGalvatronDomain));
  return Status::ok();
}

// GatherNDGrad(grad, indices) attrs batch_dims, shape (GatherND's data shape): zeros of `shape`, slices added.
Status infer_gather_nd_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  GV_RETURN_IF_ERROR(check_index_dtype(ctx, 1));
  const Shape shape = ctx.attrs().get_ints("shape");
  Shape expected;
  GV_RETURN_IF_ERROR(gather_nd_shape(ctx, shape, ctx.shape(1), ctx.attrs().get_int("batch_dims", 0), expected));
  if (ctx.shape(0) != expected) {
    return ctx.fail("gradient " + shape_str(ctx.shape(0)) + " does not match GatherND's output " + shape_str(expected));
  }
  ctx.set_output(0, ctx.dtype(0), shape);
  return Status::ok();
}

Status gather_nd_grad_cpu(KernelContext& ctx) {
  const TensorRef& g = ctx.inputs[0];
  const TensorRef& idx = ctx.inputs[1];
  const TensorRef& out = ctx.outputs[0];
  if (is_half(g.dtype)) return run_widened(ctx, gather_nd_grad_cpu);
  const cpu::GatherNDShape s = nd_shape(out.shape, idx.shape, ctx.attrs().get_int("batch_dims", 0));
  GV_RETURN_IF_ERROR(check_tuples(ctx, idx, s));
  bool ok = dispatch_gather<false>(idx.dtype, g.dtype, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    cpu::gather_nd_grad(g.as<T>(), idx.as<I>(), out.as<T>(), s);
  });
  return ok ? Status::ok() : unsupported_dtype(ctx, g.dtype);
}

Status infer_scatter_nd(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 3));
  GV_RETURN_IF_ERROR(check_scatter(ctx));
  Shape expected;
  const Shape& data = ctx.shape(0);
  if (data.empty()) return ctx.fail("data must have rank >= 1");
  GV_RETURN_IF_ERROR(gather_nd_shape(ctx, data, ctx.shape(1), 0, expected));
  if (ctx.shape(2) != expected) {
    return ctx.fail("updates " + shape_str(ctx.shape(2)) + " must have shape " + shape_str(expected) +
                    " (indices[:-1] + data[k:])");
  }
  ctx.set_output(0, ctx.dtype(0), data);
  return Status::ok();
}

Status scatter_nd_cpu(KernelContext& ctx) {
  const TensorRef& data = ctx.inputs[0];
  const TensorRef& idx = ctx.inputs[1];
  cpu::ScatterReduction red;
  parse_reduction(ctx.attrs().get_string("reduction", "none"), red);
  const bool by_size = red == cpu::ScatterReduction::kNone;
  if (!by_size && is_half(data.dtype)) return run_widened(ctx, scatter_nd_cpu);
  const cpu::GatherNDShape s = nd_shape(data.shape, idx.shape, 0);
  GV_RETURN_IF_ERROR(check_tuples(ctx, idx, s));
  auto kernel = [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    cpu::scatter_nd(data.as<T>(), idx.as<I>(), ctx.inputs[2].as<T>(), ctx.outputs[0].as<T>(), s, red);
  };
  bool ok = by_size ? dispatch_gather<true>(idx.dtype, data.dtype, kernel)
                    : dispatch_gather<false>(idx.dtype, data.dtype, kernel);
  return ok ? Status::ok() : unsupported_dtype(ctx, data.dtype);
}

// Scatter backward (reductions none and add): updates receive the output gradient at their positions (the gather);
// data receives it everywhere, except, for none, where updates overwrote it.
Status scatter_grad(GradBuilder& gb, const char* gather_op) {
  const std::string red = gb.attrs().get_string("reduction", "none");
  if (red != "none" && red != "add") {
    return unsupported("node '" + gb.node().name + "' (" + gb.node().op_type +
                       "): the backward pass supports reduction none and add only, not '" + red + "'");
  }
  const ValueId g = gb.grad_output(0), idx = gb.input(1), updates = gb.input(2);
  Attributes a;
  if (gb.node().op_type == "ScatterElements") a.set_int("axis", gb.attrs().get_int("axis", 0));
  if (gb.needs_grad(0)) {
    if (red == "add") {
      gb.set_grad_input(0, g);
    } else {
      const ValueId zeros = emit_zeros(gb, gb.dtype(updates), gb.shape(updates));
      gb.set_grad_input(0, gb.emit1(gb.node().op_type, {g, idx, zeros}, a));
    }
  }
  if (gb.needs_grad(2)) gb.set_grad_input(2, gb.emit1(gather_op, {g, idx}, a));
  return Status::ok();
}
Status scatter_nd_grad(GradBuilder& gb) { return scatter_grad(gb, "GatherND"); }
Status scatter_elements_grad(GradBuilder& gb) { return scatter_grad(gb, "GatherElements"); }

}  // namespace

void register_index_ops(OpRegistry& r) {
  r.add(make_op("Gather", 2, 2, infer_gather, gather_cpu, gather_grad, {1},
                "takes slices of data at indices along axis"));
  OpSchema gg = make_op("GatherGrad", 2, 2, infer_gather_grad, gather_grad_cpu, nullptr, {},
                        "Gather's gradient: zeros of attr shape with grad rows added at indices along axis");
  gg.domain = kGalvatronDomain;
  r.add(gg);
  OpSchema gga = make_op("GatherGradAdd", 3, 3, infer_gather_grad_add, gather_grad_add_cpu, nullptr, {},
                         "(Base, grad, indices) -> Base + GatherGrad(grad, indices) (a tied embedding's gradient sum); "
                         "formed after autograd");
  gga.domain = kGalvatronDomain;
  r.add(gga);
  r.add(make_op("GatherElements", 2, 2, infer_gather_elements, gather_elements_cpu, gather_elements_grad, {1},
                "out[i] = data[i with axis coordinate replaced by indices[i]]"));
  r.add(make_op("GatherND", 2, 2, infer_gather_nd, gather_nd_cpu, gather_nd_grad, {1},
                "slices of data at index tuples (batch_dims)"));
  OpSchema gndg = make_op("GatherNDGrad", 2, 2, infer_gather_nd_grad, gather_nd_grad_cpu, nullptr, {},
                          "GatherND's gradient: zeros of attr shape with grad slices added at index tuples");
  gndg.domain = kGalvatronDomain;
  r.add(gndg);
  r.add(make_op("ScatterND", 3, 3, infer_scatter_nd, scatter_nd_cpu, scatter_nd_grad, {1},
                "copy of data with slices at index tuples replaced or combined (reduction none/add/mul/max/min)"));
  r.add(make_op("ScatterElements", 3, 3, infer_scatter_elements, scatter_elements_cpu, scatter_elements_grad, {1},
                "copy of data with elements at indices along axis replaced or combined (reduction)"));
}

}  // namespace gv::movement

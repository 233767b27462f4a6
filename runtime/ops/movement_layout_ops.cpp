// Ops that rearrange whole tensors through strided copies: Transpose, Concat, Split, Expand, Tile; plus Trilu and
// CumSum, which keep the shape and work along fixed axes.
#include <numeric>

#include "kernels/cpu/movement.h"
#include "runtime/ops/movement_common.h"

namespace gv::movement {
namespace {

Status unsupported_dtype(const KernelContext& ctx, DType t) {
  return ctx.fail("unsupported dtype " + std::string(dtype_name(t)));
}

// ---- Transpose -------------------------------------------------------------------------------------------------

std::vector<int64_t> transpose_perm(const Attributes& attrs, int64_t rank) {
  std::vector<int64_t> perm = attrs.get_ints("perm");
  if (!attrs.has("perm")) {
    for (int64_t d = rank - 1; d >= 0; --d) perm.push_back(d);
  }
  return perm;
}

Status infer_transpose(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  const Shape& in = ctx.shape(0);
  const std::vector<int64_t> perm = transpose_perm(ctx.attrs(), ctx.rank(0));
  std::vector<char> used(in.size(), 0);
  bool ok = perm.size() == in.size();
  for (size_t i = 0; ok && i < perm.size(); ++i) {
    ok = perm[i] >= 0 && perm[i] < ctx.rank(0) && !used[perm[i]];
    if (ok) used[perm[i]] = 1;
  }
  if (!ok)
    return ctx.fail("perm " + ints_str(perm) + " is not a permutation of the input's " + std::to_string(in.size()) +
                    " axes");
  Shape out(in.size());
  for (size_t i = 0; i < perm.size(); ++i) out[i] = in[perm[i]];
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

Status transpose_cpu(KernelContext& ctx) {
  const TensorRef& in = ctx.inputs[0];
  const TensorRef& out = ctx.outputs[0];
  const std::vector<int64_t> perm = transpose_perm(ctx.attrs(), in.rank());
  const Shape in_strides = shape_strides(in.shape);
  Shape src_strides(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) src_strides[i] = in_strides[perm[i]];
  if (!copy_box(in.dtype, in.data, src_strides, out.data, shape_strides(out.shape), out.shape)) {
    return unsupported_dtype(ctx, in.dtype);
  }
  return Status::ok();
}

Status transpose_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  const std::vector<int64_t> perm = transpose_perm(gb.attrs(), static_cast<int64_t>(gb.shape(gb.input(0)).size()));
  std::vector<int64_t> inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[perm[i]] = static_cast<int64_t>(i);
  Attributes a;
  a.set_ints("perm", inverse);
  gb.set_grad_input(0, gb.emit1("Transpose", {gb.grad_output(0)}, a));
  return Status::ok();
}

// ---- Concat, Split ---------------------------------------------------------------------------------------------

Status infer_concat(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, ctx.num_inputs()));
  if (!ctx.attrs().has("axis")) return ctx.fail("attribute 'axis' is required");
  Shape out = ctx.shape(0);
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (out.empty()) return ctx.fail("inputs must have rank >= 1");
  GV_RETURN_IF_ERROR(check_axis(ctx, axis, ctx.rank(0)));
  for (int i = 1; i < ctx.num_inputs(); ++i) {
    const Shape& s = ctx.shape(i);
    if (ctx.dtype(i) != ctx.dtype(0)) return ctx.fail("inputs 0 and " + std::to_string(i) + " differ in dtype");
    bool ok = s.size() == out.size();
    for (size_t d = 0; ok && d < s.size(); ++d) ok = static_cast<int64_t>(d) == axis || s[d] == out[d];
    if (!ok) {
      return ctx.fail("input " + std::to_string(i) + " " + shape_str(s) + " does not match input 0 " +
                      shape_str(ctx.shape(0)) + " off axis " + std::to_string(axis));
    }
    out[axis] += s[axis];
  }
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

// Concat and Split move [outer, len_k * inner] blocks between the parts and the [outer, total * inner] whole.
struct Blocks {
  int64_t outer = 1, inner = 1, total = 0;
};
Blocks blocks_of(const Shape& whole, int64_t axis) {
  Blocks b;
  for (int64_t d = 0; d < static_cast<int64_t>(whole.size()); ++d) {
    if (d < axis) b.outer *= whole[d];
    if (d > axis) b.inner *= whole[d];
  }
  b.total = whole[axis];
  return b;
}

// Copies part <-> whole, where the part covers [offset, offset + len) of the axis.
bool move_block(DType dt, const Blocks& b, int64_t offset, int64_t len, const void* src, void* dst, bool to_whole) {
  const int64_t row = len * b.inner, esize = static_cast<int64_t>(dtype_size(dt));
  const Shape dims = {b.outer, row}, part_strides = {row, 1}, whole_strides = {b.total * b.inner, 1};
  if (to_whole) {
    return copy_box(dt, src, part_strides, static_cast<uint8_t*>(dst) + offset * b.inner * esize, whole_strides, dims);
  }
  return copy_box(dt, static_cast<const uint8_t*>(src) + offset * b.inner * esize, whole_strides, dst, part_strides,
                  dims);
}

Status concat_cpu(KernelContext& ctx) {
  const TensorRef& out = ctx.outputs[0];
  int64_t axis = ctx.attrs().get_int("axis", 0);
  normalize_axis(axis, out.rank());
  const Blocks b = blocks_of(out.shape, axis);
  int64_t offset = 0;
  for (const TensorRef& in : ctx.inputs) {
    if (!move_block(out.dtype, b, offset, in.shape[axis], in.data, out.data, true))
      return unsupported_dtype(ctx, out.dtype);
    offset += in.shape[axis];
  }
  return Status::ok();
}

Status concat_grad(GradBuilder& gb) {
  int64_t axis = gb.attrs().get_int("axis", 0);
  const int64_t rank = static_cast<int64_t>(gb.shape(gb.input(0)).size());
  normalize_axis(axis, rank);
  std::vector<int64_t> sizes;
  for (int i = 0; i < gb.num_inputs(); ++i) sizes.push_back(gb.shape(gb.input(i))[axis]);
  Attributes a;
  a.set_int("axis", axis);
  std::vector<ValueId> parts = gb.emit("Split", {gb.grad_output(0), gb.constant_i64(sizes)}, a, gb.num_inputs());
  for (int i = 0; i < static_cast<int>(parts.size()); ++i) {
    if (gb.needs_grad(i)) gb.set_grad_input(i, parts[i]);
  }
  return Status::ok();
}

Status infer_split(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  const Shape& in = ctx.shape(0);
  int64_t axis = ctx.attrs().get_int("axis", 0);
  GV_RETURN_IF_ERROR(check_axis(ctx, axis, ctx.rank(0)));
  const int64_t dim = in[axis], n = ctx.num_outputs();
  std::vector<int64_t> sizes;
  if (ctx.has_input(1)) {
    GV_RETURN_IF_ERROR(constant_ints(ctx, 1, "split", sizes));
  } else if (ctx.attrs().has("split")) {  // before opset 13
    sizes = ctx.attrs().get_ints("split");
  } else if (ctx.opset() >= 18 && ctx.attrs().has("num_outputs")) {
    // Opset 18: chunks of ceil(dim / num_outputs), the last one smaller.
    if (ctx.attrs().get_int("num_outputs", 0) != n) {
      return ctx.fail("num_outputs " + std::to_string(ctx.attrs().get_int("num_outputs", 0)) + " but the node has " +
                      std::to_string(n) + " outputs");
    }
    const int64_t chunk = (dim + n - 1) / n;
    sizes.assign(n, chunk);
    sizes.back() = dim - chunk * (n - 1);
    if (sizes.back() < 0) {
      return ctx.fail("cannot split dim " + std::to_string(dim) + " into " + std::to_string(n) + " chunks of " +
                      std::to_string(chunk));
    }
  } else {
    if (dim % n != 0) {
      return ctx.fail("dim " + std::to_string(dim) + " of axis " + std::to_string(axis) +
                      " does not split evenly into " + std::to_string(n) + " outputs; give the split sizes");
    }
    sizes.assign(n, dim / n);
  }
  if (static_cast<int64_t>(sizes.size()) != n) {
    return ctx.fail("split " + ints_str(sizes) + " has " + std::to_string(sizes.size()) + " sizes but the node has " +
                    std::to_string(n) + " outputs");
  }
  int64_t sum = 0;
  for (int64_t s : sizes) {
    if (s < 0) return ctx.fail("split " + ints_str(sizes) + " has a negative size");
    sum += s;
  }
  if (sum != dim) {
    return ctx.fail("split " + ints_str(sizes) + " sums to " + std::to_string(sum) + ", but axis " +
                    std::to_string(axis) + " has size " + std::to_string(dim));
  }
  for (int i = 0; i < n; ++i) {
    Shape s = in;
    s[axis] = sizes[i];
    ctx.set_output(i, ctx.dtype(0), s);
  }
  return Status::ok();
}

Status split_cpu(KernelContext& ctx) {
  const TensorRef& in = ctx.inputs[0];
  int64_t axis = ctx.attrs().get_int("axis", 0);
  normalize_axis(axis, in.rank());
  const Blocks b = blocks_of(in.shape, axis);
  int64_t offset = 0;
  for (const TensorRef& out : ctx.outputs) {
    const int64_t len = out.shape[axis];
    if (out.data && !move_block(in.dtype, b, offset, len, in.data, out.data, false))
      return unsupported_dtype(ctx, in.dtype);
    offset += len;
  }
  return Status::ok();
}

Status split_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  std::vector<ValueId> parts;
  for (int i = 0; i < gb.num_outputs(); ++i) {
    ValueId g = gb.grad_output(i);
    const ValueId o = gb.output(i);
    parts.push_back(g != kNoValue ? g : emit_zeros(gb, gb.dtype(o), gb.shape(o)));
  }
  int64_t axis = gb.attrs().get_int("axis", 0);
  normalize_axis(axis, static_cast<int64_t>(gb.shape(gb.input(0)).size()));
  Attributes a;
  a.set_int("axis", axis);
  gb.set_grad_input(0, parts.size() == 1 ? parts[0] : gb.emit1("Concat", parts, a));
  return Status::ok();
}

// ---- Expand, Tile ----------------------------------------------------------------------------------------------

Status infer_expand(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  std::vector<int64_t> shape;
  GV_RETURN_IF_ERROR(constant_ints(ctx, 1, "shape", shape));
  const Shape& in = ctx.shape(0);
  const size_t rank = std::max(in.size(), shape.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t a = i + in.size() >= rank ? in[i + in.size() - rank] : 1;
    const int64_t b = i + shape.size() >= rank ? shape[i + shape.size() - rank] : 1;
    if (a != b && a != 1 && b != 1) {
      return ctx.fail("cannot broadcast input " + shape_str(in) + " to shape " + ints_str(shape));
    }
    out[i] = a == 1 ? b : a;
  }
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

Status expand_cpu(KernelContext& ctx) {
  const TensorRef& in = ctx.inputs[0];
  const TensorRef& out = ctx.outputs[0];
  const Shape in_strides = shape_strides(in.shape);
  const size_t lead = out.shape.size() - in.shape.size();
  Shape src_strides(out.shape.size(), 0);  // 0 on broadcast dims: the same source element repeats
  for (size_t d = lead; d < out.shape.size(); ++d) {
    if (in.shape[d - lead] != 1) src_strides[d] = in_strides[d - lead];
  }
  if (!copy_box(in.dtype, in.data, src_strides, out.data, shape_strides(out.shape), out.shape)) {
    return unsupported_dtype(ctx, in.dtype);
  }
  return Status::ok();
}

Status expand_grad(GradBuilder& gb) {
  if (gb.needs_grad(0)) gb.set_grad_input(0, gb.sum_to_shape(gb.grad_output(0), gb.shape(gb.input(0))));
  return Status::ok();
}

Status infer_tile(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  std::vector<int64_t> repeats;
  GV_RETURN_IF_ERROR(constant_ints(ctx, 1, "repeats", repeats));
  Shape out = ctx.shape(0);
  if (repeats.size() != out.size()) {
    return ctx.fail("repeats " + ints_str(repeats) + " must have one entry per input dim " + shape_str(out));
  }
  for (size_t d = 0; d < out.size(); ++d) {
    if (repeats[d] < 0) return ctx.fail("repeats " + ints_str(repeats) + " has a negative entry");
    out[d] *= repeats[d];
  }
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

// Tile's output [r0*d0, r1*d1, ..] is, in memory, the [r0, d0, r1, d1, ..] broadcast of the input.
Shape tiled_dims(const Shape& in, const Shape& out) {
  Shape dims;
  for (size_t d = 0; d < in.size(); ++d) {
    dims.push_back(in[d] ? out[d] / in[d] : 0);
    dims.push_back(in[d]);
  }
  return dims;
}

Status tile_cpu(KernelContext& ctx) {
  const TensorRef& in = ctx.inputs[0];
  const TensorRef& out = ctx.outputs[0];
  if (out.numel() == 0) return Status::ok();
  const Shape dims = tiled_dims(in.shape, out.shape);
  const Shape in_strides = shape_strides(in.shape);
  Shape src_strides(dims.size(), 0);
  for (size_t d = 0; d < in.shape.size(); ++d) src_strides[2 * d + 1] = in_strides[d];
  if (!copy_box(in.dtype, in.data, src_strides, out.data, shape_strides(dims), dims))
    return unsupported_dtype(ctx, in.dtype);
  return Status::ok();
}

Status tile_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  const Shape& in = gb.shape(gb.input(0));
  const Shape& out = gb.shape(gb.output(0));
  if (in == out) {
    gb.set_grad_input(0, gb.grad_output(0));
    return Status::ok();
  }
  std::vector<int64_t> axes;
  for (size_t d = 0; d < in.size(); ++d) axes.push_back(static_cast<int64_t>(2 * d));
  Attributes a;
  a.set_int("keepdims", 0);
  ValueId g = gb.reshape(gb.grad_output(0), tiled_dims(in, out));
  gb.set_grad_input(0, gb.emit1("ReduceSum", {g, gb.constant_i64(axes)}, a));
  return Status::ok();
}

// ---- Trilu, CumSum ---------------------------------------------------------------------------------------------

Status infer_same_shape(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

Status infer_trilu(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  if (ctx.rank(0) < 2) return ctx.fail("input must have rank >= 2, got " + shape_str(ctx.shape(0)));
  if (ctx.has_input(1) && (shape_numel(ctx.shape(1)) != 1 || !is_index_dtype(ctx.dtype(1)))) {
    return ctx.fail("k must be an int64 scalar");
  }
  return infer_same_shape(ctx);
}

Status trilu_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const int64_t k = ctx.has_input(1) ? read_int_input(ctx.inputs[1]) : 0;
  const bool upper = ctx.attrs().get_int("upper", 1) != 0;
  const int r = x.rank();
  const int64_t rows = x.shape[r - 2], cols = x.shape[r - 1];
  const int64_t batch = rows * cols != 0 ? x.numel() / (rows * cols) : 0;
  bool ok = dispatch_by_size(dtype_size(x.dtype), [&](auto tag) {
    using T = decltype(tag);
    cpu::trilu(x.as<T>(), ctx.outputs[0].as<T>(), batch, rows, cols, k, upper);
  });
  return ok ? Status::ok() : unsupported_dtype(ctx, x.dtype);
}

Status trilu_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  std::vector<ValueId> ins = {gb.grad_output(0)};
  if (gb.input(1) != kNoValue) ins.push_back(gb.input(1));
  gb.set_grad_input(0, gb.emit1("Trilu", ins, gb.attrs()));
  return Status::ok();
}

Status infer_cumsum(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  if (shape_numel(ctx.shape(1)) != 1 || !is_index_dtype(ctx.dtype(1))) {
    return ctx.fail("axis must be an int64 or int32 scalar, got " + std::string(dtype_name(ctx.dtype(1))) + " " +
                    shape_str(ctx.shape(1)));
  }
  if (const Tensor* a = ctx.constant(1)) {
    int64_t axis = a->scalar_i64();
    GV_RETURN_IF_ERROR(check_axis(ctx, axis, ctx.rank(0)));
  }
  return infer_same_shape(ctx);
}

Status cumsum_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  if (is_half(x.dtype)) return run_widened(ctx, cumsum_cpu);
  int64_t axis = read_int_input(ctx.inputs[1]);
  if (!normalize_axis(axis, x.rank())) {
    return ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(x.rank()));
  }
  const Blocks b = blocks_of(x.shape, axis);
  const bool exclusive = ctx.attrs().get_int("exclusive", 0) != 0, reverse = ctx.attrs().get_int("reverse", 0) != 0;
  bool ok = dispatch_arith(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::cumsum(x.as<T>(), ctx.outputs[0].as<T>(), b.outer, b.total, b.inner, exclusive, reverse);
  });
  return ok ? Status::ok() : unsupported_dtype(ctx, x.dtype);
}

// y_i = sum_{j <= i} x_j, so dx_j = sum_{i >= j} g_i: the same scan run the other way (exclusive stays exclusive).
Status cumsum_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  Attributes a = gb.attrs();
  a.set_int("reverse", gb.attrs().get_int("reverse", 0) ? 0 : 1);
  gb.set_grad_input(0, gb.emit1("CumSum", {gb.grad_output(0), gb.input(1)}, a));
  return Status::ok();
}

}  // namespace

void register_layout_ops(OpRegistry& r) {
  r.add(make_op("Transpose", 1, 1, infer_transpose, transpose_cpu, transpose_grad, {},
                "permutes axes (perm attribute, reversed by default)"));
  r.add(make_op("Concat", 1, 1 << 16, infer_concat, concat_cpu, concat_grad, {}, "joins inputs along axis"));
  OpSchema split = make_op("Split", 1, 2, infer_split, split_cpu, split_grad, {1},
                           "cuts along axis: split sizes input, num_outputs (opset 18) or equal parts");
  split.max_outputs = 1 << 16;
  r.add(split);
  r.add(make_op("Expand", 2, 2, infer_expand, expand_cpu, expand_grad, {1},
                "broadcasts to a constant shape (bidirectional, numpy rules)"));
  r.add(make_op("Tile", 2, 2, infer_tile, tile_cpu, tile_grad, {1}, "repeats the input along each axis"));
  r.add(make_op("Trilu", 1, 2, infer_trilu, trilu_cpu, trilu_grad, {1},
                "keeps the upper (upper=1) or lower triangle of the last two dims, offset by k"));
  r.add(make_op("CumSum", 2, 2, infer_cumsum, cumsum_cpu, cumsum_grad, {1},
                "running sum along an axis (exclusive, reverse)"));
}

}  // namespace gv::movement

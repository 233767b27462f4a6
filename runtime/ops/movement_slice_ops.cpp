// Slice and Pad, two views of one idea: a box of the input placed in a box of the output. Slice's gradient is the
// galvatron op SliceGrad (the gradient written into a zero tensor at the sliced positions); constant Pad's gradient is
// Pad with the pads negated, which crops.
#include <algorithm>
#include <cstring>

#include "kernels/cpu/movement.h"
#include "runtime/ops/movement_common.h"

namespace gv::movement {
namespace {

// ---- Slice, SliceGrad ------------------------------------------------------------------------------------------

Status infer_slice(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 3));
  std::vector<int64_t> starts, ends, axes, steps;
  GV_RETURN_IF_ERROR(constant_ints(ctx, 1, "starts", starts));
  GV_RETURN_IF_ERROR(constant_ints(ctx, 2, "ends", ends));
  if (ctx.has_input(3)) GV_RETURN_IF_ERROR(constant_ints(ctx, 3, "axes", axes));
  if (ctx.has_input(4)) GV_RETURN_IF_ERROR(constant_ints(ctx, 4, "steps", steps));
  SliceBox box;
  std::string err = normalize_slice(ctx.shape(0), starts, ends, axes, steps, box);
  if (!err.empty()) return ctx.fail(err + " (input " + shape_str(ctx.shape(0)) + ")");
  ctx.set_output(0, ctx.dtype(0), box.out_shape);
  return Status::ok();
}

// Byte pointer to element `offset` of a buffer.
inline const void* at(const void* p, int64_t offset, DType t) {
  return static_cast<const uint8_t*>(p) + offset * static_cast<int64_t>(dtype_size(t));
}
inline void* at(void* p, int64_t offset, DType t) {
  return static_cast<uint8_t*>(p) + offset * static_cast<int64_t>(dtype_size(t));
}

Status slice_cpu(KernelContext& ctx) {
  const TensorRef& in = ctx.inputs[0];
  const TensorRef& out = ctx.outputs[0];
  if (out.numel() == 0) return Status::ok();
  auto ints = [&](int i) { return ctx.has_input(i) ? read_ints(ctx.inputs[i]) : std::vector<int64_t>{}; };
  SliceBox box;
  std::string err = normalize_slice(in.shape, ints(1), ints(2), ints(3), ints(4), box);
  if (!err.empty()) return ctx.fail(err);
  const Shape in_strides = shape_strides(in.shape);
  Shape src_strides(in_strides.size());
  int64_t offset = 0;
  for (size_t d = 0; d < in_strides.size(); ++d) {
    offset += box.starts[d] * in_strides[d];
    src_strides[d] = box.steps[d] * in_strides[d];
  }
  if (!copy_box(in.dtype, at(in.data, offset, in.dtype), src_strides, out.data, shape_strides(out.shape), out.shape)) {
    return ctx.fail("unsupported dtype " + std::string(dtype_name(in.dtype)));
  }
  return Status::ok();
}

Status slice_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  std::vector<std::vector<int64_t>> ints(5);
  for (int i = 1; i < 5; ++i) {
    const ValueId v = gb.input(i);
    if (v == kNoValue) continue;
    if (!gb.graph().is_constant(v))
      return internal_error("Slice backward: input " + std::to_string(i) + " is not constant");
    ints[i] = gb.graph().value(v).data.to_i64_vector();
  }
  const Shape& in_shape = gb.shape(gb.input(0));
  SliceBox box;
  std::string err = normalize_slice(in_shape, ints[1], ints[2], ints[3], ints[4], box);
  if (!err.empty()) return internal_error("Slice backward: " + err);
  Attributes a;
  a.set_ints("shape", in_shape);
  a.set_ints("starts", box.starts);
  a.set_ints("steps", box.steps);
  gb.set_grad_input(0, gb.emit1("SliceGrad", {gb.grad_output(0)}, a, kGalvatronDomain));
  return Status::ok();
}

// SliceGrad(grad) attrs shape, starts, steps (one per dim, normalized): zeros of `shape` with
// out[starts + i * steps] = grad[i].
Status infer_slice_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  const Shape shape = ctx.attrs().get_ints("shape");
  const std::vector<int64_t> starts = ctx.attrs().get_ints("starts"), steps = ctx.attrs().get_ints("steps");
  const Shape& g = ctx.shape(0);
  if (shape.size() != g.size() || starts.size() != g.size() || steps.size() != g.size()) {
    return ctx.fail("attributes shape, starts and steps need one entry per gradient dim " + shape_str(g));
  }
  for (size_t d = 0; d < g.size(); ++d) {
    if (g[d] == 0) continue;
    const int64_t last = starts[d] + (g[d] - 1) * steps[d];
    if (starts[d] < 0 || starts[d] >= shape[d] || last < 0 || last >= shape[d]) {
      return ctx.fail("slice of dim " + std::to_string(d) + " (start " + std::to_string(starts[d]) + ", step " +
                      std::to_string(steps[d]) + ", " + std::to_string(g[d]) + " elements) leaves " + shape_str(shape));
    }
  }
  ctx.set_output(0, ctx.dtype(0), shape);
  return Status::ok();
}

Status slice_grad_cpu(KernelContext& ctx) {
  const TensorRef& g = ctx.inputs[0];
  const TensorRef& out = ctx.outputs[0];
  std::memset(out.data, 0, out.nbytes());
  if (g.numel() == 0) return Status::ok();
  const std::vector<int64_t> starts = ctx.attrs().get_ints("starts"), steps = ctx.attrs().get_ints("steps");
  const Shape out_strides = shape_strides(out.shape);
  Shape dst_strides(out_strides.size());
  int64_t offset = 0;
  for (size_t d = 0; d < out_strides.size(); ++d) {
    offset += starts[d] * out_strides[d];
    dst_strides[d] = steps[d] * out_strides[d];
  }
  if (!copy_box(g.dtype, g.data, shape_strides(g.shape), at(out.data, offset, g.dtype), dst_strides, g.shape)) {
    return ctx.fail("unsupported dtype " + std::string(dtype_name(g.dtype)));
  }
  return Status::ok();
}

// ---- Pad -------------------------------------------------------------------------------------------------------

// Pad amounts per input dim (negative ones crop), from pads [x1_begin, x2_begin, .., x1_end, x2_end] over `axes`
// (all dims when empty, opset 18 input).
struct PadSpec {
  std::vector<int64_t> begin, end;
};
std::string pad_spec(const Shape& in, const std::vector<int64_t>& pads, std::vector<int64_t> axes, PadSpec& spec) {
  const int64_t rank = static_cast<int64_t>(in.size());
  if (axes.empty()) {
    for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
  }
  if (pads.size() != 2 * axes.size()) {
    return "pads " + ints_str(pads) + " must hold 2 entries per padded axis (" + std::to_string(axes.size()) + ")";
  }
  spec.begin.assign(rank, 0);
  spec.end.assign(rank, 0);
  for (size_t i = 0; i < axes.size(); ++i) {
    int64_t a = axes[i];
    if (!normalize_axis(a, rank))
      return "axis " + std::to_string(axes[i]) + " is out of range for rank " + std::to_string(rank);
    spec.begin[a] = pads[i];
    spec.end[a] = pads[i + axes.size()];
  }
  return "";
}

Status infer_pad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  std::vector<int64_t> pads, axes;
  if (ctx.has_input(1)) {
    GV_RETURN_IF_ERROR(constant_ints(ctx, 1, "pads", pads));
  } else if (ctx.attrs().has("pads")) {  // before opset 11
    pads = ctx.attrs().get_ints("pads");
  } else {
    return ctx.fail("input 'pads' is required");
  }
  if (ctx.has_input(3)) GV_RETURN_IF_ERROR(constant_ints(ctx, 3, "axes", axes));
  const std::string mode = ctx.attrs().get_string("mode", "constant");
  if (mode != "constant" && mode != "reflect" && mode != "edge" && mode != "wrap") {
    return ctx.fail("mode '" + mode + "' is not one of constant, reflect, edge, wrap");
  }
  if (ctx.has_input(2) && (ctx.dtype(2) != ctx.dtype(0) || shape_numel(ctx.shape(2)) != 1)) {
    return ctx.fail("constant_value must be one element of the input's dtype " + std::string(dtype_name(ctx.dtype(0))));
  }
  PadSpec spec;
  std::string err = pad_spec(ctx.shape(0), pads, axes, spec);
  if (!err.empty()) return ctx.fail(err);
  Shape out = ctx.shape(0);
  for (size_t d = 0; d < out.size(); ++d) {
    const int64_t n = out[d];
    out[d] += spec.begin[d] + spec.end[d];
    if (out[d] < 0) return ctx.fail("pads " + ints_str(pads) + " crop more than dim " + std::to_string(d) + " holds");
    if (mode != "constant" && n == 0 && out[d] > 0) return ctx.fail("mode '" + mode + "' cannot pad an empty dim");
  }
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

// Source index of output position j along one dim of size n, for the modes that read the input everywhere.
int64_t pad_source(int64_t j, int64_t begin, int64_t n, const std::string& mode) {
  const int64_t i = j - begin;
  if (mode == "edge") return std::clamp<int64_t>(i, 0, n - 1);
  if (mode == "wrap") return ((i % n) + n) % n;
  if (n == 1) return 0;  // reflect
  const int64_t period = 2 * (n - 1);
  const int64_t m = ((i % period) + period) % period;
  return m < n ? m : period - m;
}

Status pad_cpu(KernelContext& ctx) {
  const TensorRef& in = ctx.inputs[0];
  const TensorRef& out = ctx.outputs[0];
  PadSpec spec;
  std::string err = pad_spec(in.shape, ctx.has_input(1) ? read_ints(ctx.inputs[1]) : ctx.attrs().get_ints("pads"),
                             ctx.has_input(3) ? read_ints(ctx.inputs[3]) : std::vector<int64_t>{}, spec);
  if (!err.empty()) return ctx.fail(err);
  const std::string mode = ctx.attrs().get_string("mode", "constant");
  const int rank = in.rank();
  bool ok = true;
  if (mode == "constant") {
    // Fill with the pad value, then copy the part of the input that survives cropping into place.
    ok = dispatch_by_size(dtype_size(in.dtype), [&](auto tag) {
      using T = decltype(tag);
      T value{};
      if (ctx.has_input(2)) std::memcpy(&value, ctx.inputs[2].data, sizeof(T));
      cpu::fill(out.as<T>(), value, out.numel());
    });
    const Shape in_strides = shape_strides(in.shape), out_strides = shape_strides(out.shape);
    Shape dims(rank);
    int64_t src_off = 0, dst_off = 0;
    for (int d = 0; d < rank; ++d) {
      const int64_t crop_begin = std::max<int64_t>(0, -spec.begin[d]), crop_end = std::max<int64_t>(0, -spec.end[d]);
      dims[d] = in.shape[d] - crop_begin - crop_end;
      if (dims[d] <= 0) return Status::ok();
      src_off += crop_begin * in_strides[d];
      dst_off += std::max<int64_t>(0, spec.begin[d]) * out_strides[d];
    }
    if (ok)
      ok = copy_box(in.dtype, at(in.data, src_off, in.dtype), in_strides, at(out.data, dst_off, in.dtype), out_strides,
                    dims);
  } else {
    if (out.numel() == 0) return Status::ok();
    std::vector<std::vector<int64_t>> maps(rank);
    std::vector<const int64_t*> map_ptrs(rank);
    for (int d = 0; d < rank; ++d) {
      for (int64_t j = 0; j < out.shape[d]; ++j) maps[d].push_back(pad_source(j, spec.begin[d], in.shape[d], mode));
      map_ptrs[d] = maps[d].data();
    }
    ok = dispatch_by_size(dtype_size(in.dtype), [&](auto tag) {
      using T = decltype(tag);
      cpu::indexed_copy(in.as<T>(), in.shape.data(), out.as<T>(), out.shape.data(), rank, map_ptrs.data());
    });
  }
  return ok ? Status::ok() : ctx.fail("unsupported dtype " + std::string(dtype_name(in.dtype)));
}

// Pad's output is the input shifted by `begin` among constants, so the gradient is the output gradient shifted back:
// Pad with negated pads, which crops the padding away (and pads with zeros where the forward cropped).
Status pad_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0)) return Status::ok();
  const std::string mode = gb.attrs().get_string("mode", "constant");
  if (mode != "constant") {
    return unsupported("node '" + gb.node().name + "' (Pad): the backward pass supports mode 'constant' only, not '" +
                       mode + "'");
  }
  auto ints = [&](int i) {
    const ValueId v = gb.input(i);
    return v != kNoValue && gb.graph().is_constant(v) ? gb.graph().value(v).data.to_i64_vector()
                                                      : std::vector<int64_t>{};
  };
  PadSpec spec;
  std::string err =
      pad_spec(gb.shape(gb.input(0)), gb.input(1) != kNoValue ? ints(1) : gb.attrs().get_ints("pads"), ints(3), spec);
  if (!err.empty()) return internal_error("Pad backward: " + err);
  std::vector<int64_t> negated;
  for (int64_t b : spec.begin) negated.push_back(-b);
  for (int64_t e : spec.end) negated.push_back(-e);
  Attributes a;
  a.set_string("mode", "constant");
  gb.set_grad_input(0, gb.emit1("Pad", {gb.grad_output(0), gb.constant_i64(negated)}, a));
  return Status::ok();
}

}  // namespace

void register_slice_ops(OpRegistry& r) {
  r.add(make_op("Slice", 3, 5, infer_slice, slice_cpu, slice_grad, {1, 2, 3, 4},
                "strided box of the input: constant starts, ends, axes, steps (negative steps, clamping)"));
  OpSchema grad = make_op("SliceGrad", 1, 1, infer_slice_grad, slice_grad_cpu, nullptr, {},
                          "Slice's gradient: zeros of attr shape with the gradient at starts + i * steps");
  grad.domain = kGalvatronDomain;
  r.add(grad);
  r.add(make_op("Pad", 1, 4, infer_pad, pad_cpu, pad_grad, {1, 2, 3},
                "pads (or crops, when negative) with a constant, or reflect / edge / wrap"));
}

}  // namespace gv::movement

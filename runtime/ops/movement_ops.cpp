// The movement op family: ops that reshape, reorder, select or combine elements without arithmetic on them (plus
// CumSum, Range and the scatter reductions). Entries live in movement_shape_ops.cpp, movement_layout_ops.cpp,
// movement_slice_ops.cpp and movement_index_ops.cpp; this file holds their shared helpers and the registration.
#include <algorithm>
#include <cstring>

#include "kernels/cpu/movement.h"
#include "runtime/ops/all_ops.h"
#include "runtime/ops/movement_common.h"

namespace gv {
namespace movement {

std::string ints_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

Status check_axis(const InferContext& ctx, int64_t& axis, int64_t rank, const std::string& what) {
  const int64_t given = axis;
  if (!normalize_axis(axis, rank)) {
    return ctx.fail(what + " " + std::to_string(given) + " is out of range for rank " + std::to_string(rank) +
                    " (expected " + std::to_string(-rank) + ".." + std::to_string(rank - 1) + ")");
  }
  return Status::ok();
}

Status require_inputs(const InferContext& ctx, int n) {
  for (int i = 0; i < n; ++i) {
    if (!ctx.has_input(i)) return ctx.fail("input " + std::to_string(i) + " is required but missing");
  }
  return Status::ok();
}

Status constant_ints(const InferContext& ctx, int input, const std::string& what, std::vector<int64_t>& out) {
  if (!ctx.has_input(input)) return ctx.fail("input " + std::to_string(input) + " ('" + what + "') is required");
  const Tensor* t = ctx.constant(input);
  if (!t) {
    return ctx.fail("input " + std::to_string(input) + " ('" + what +
                    "') must be a constant after shape folding, but it is computed at run time");
  }
  if (t->dtype() != DType::kInt64 && t->dtype() != DType::kInt32) {
    return ctx.fail("input '" + what + "' must be int64 or int32, got " + dtype_name(t->dtype()));
  }
  if (t->rank() > 1) return ctx.fail("input '" + what + "' must be a scalar or 1-D, got " + shape_str(t->shape()));
  out = t->to_i64_vector();
  return Status::ok();
}

int64_t read_int_input(const TensorRef& t) {
  if (t.dtype == DType::kInt32) return *t.as<int32_t>();
  return *t.as<int64_t>();
}

std::vector<int64_t> read_ints(const TensorRef& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = t.dtype == DType::kInt32 ? t.as<int32_t>()[i] : t.as<int64_t>()[i];
  return v;
}

Status run_widened(KernelContext& ctx, KernelFn kernel) {
  KernelContext wide = ctx;
  std::vector<Tensor> keep;  // owns the widened buffers while the kernel runs
  for (TensorRef& in : wide.inputs) {
    if (!in.data || !is_half(in.dtype)) continue;
    Tensor t(DType::kFloat32, in.shape);
    convert_elements(in.data, in.dtype, t.data(), DType::kFloat32, t.numel());
    in = t.ref();
    keep.push_back(t);
  }
  std::vector<std::pair<size_t, Tensor>> outs;
  for (size_t i = 0; i < wide.outputs.size(); ++i) {
    if (!wide.outputs[i].data || !is_half(wide.outputs[i].dtype)) continue;
    Tensor t(DType::kFloat32, wide.outputs[i].shape);
    wide.outputs[i] = t.ref();
    outs.emplace_back(i, t);
  }
  GV_RETURN_IF_ERROR(kernel(wide));
  for (auto& [i, t] : outs) {
    convert_elements(t.data(), DType::kFloat32, ctx.outputs[i].data, ctx.outputs[i].dtype, t.numel());
  }
  return Status::ok();
}

bool copy_box(DType dtype, const void* src, const Shape& src_strides, void* dst, const Shape& dst_strides,
              const Shape& dims) {
  return dispatch_by_size(dtype_size(dtype), [&](auto tag) {
    using T = decltype(tag);
    cpu::strided_copy(static_cast<const T*>(src), src_strides.data(), static_cast<T*>(dst), dst_strides.data(),
                      dims.data(), static_cast<int>(dims.size()));
  });
}

Status copy_kernel(KernelContext& ctx) {
  const TensorRef& in = ctx.inputs[0];
  const TensorRef& out = ctx.outputs[0];
  if (in.nbytes() != out.nbytes()) return ctx.fail("input and output sizes differ");
  if (out.nbytes() && in.data != out.data) std::memcpy(out.data, in.data, out.nbytes());
  return Status::ok();
}

Status reshape_back_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0) || gb.grad_output(0) == kNoValue) return Status::ok();
  gb.set_grad_input(0, gb.reshape(gb.grad_output(0), gb.shape(gb.input(0))));
  return Status::ok();
}

Tensor one_element(DType dtype, double v) { return Tensor::scalar(dtype, v).reshaped({1}); }

ValueId emit_zeros(GradBuilder& gb, DType dtype, const Shape& shape) {
  Attributes a;
  a.set_tensor("value", one_element(dtype, 0.0));
  return gb.emit1("ConstantOfShape", {gb.constant_i64(shape)}, a);
}

std::string normalize_slice(const Shape& in_shape, const std::vector<int64_t>& starts, const std::vector<int64_t>& ends,
                            std::vector<int64_t> axes, std::vector<int64_t> steps, SliceBox& box) {
  const int64_t rank = static_cast<int64_t>(in_shape.size());
  if (starts.size() != ends.size()) {
    return "starts " + ints_str(starts) + " and ends " + ints_str(ends) + " differ in length";
  }
  const size_t n = starts.size();
  if (axes.empty()) {
    for (size_t i = 0; i < n; ++i) axes.push_back(static_cast<int64_t>(i));
  }
  if (steps.empty()) steps.assign(n, 1);
  if (axes.size() != n || steps.size() != n) {
    return "starts, ends, axes " + ints_str(axes) + " and steps " + ints_str(steps) + " must have equal lengths";
  }
  box.starts.assign(rank, 0);
  box.steps.assign(rank, 1);
  box.out_shape = in_shape;
  std::vector<char> seen(rank, 0);
  for (size_t i = 0; i < n; ++i) {
    int64_t axis = axes[i];
    if (!normalize_axis(axis, rank))
      return "axis " + std::to_string(axes[i]) + " is out of range for rank " + std::to_string(rank);
    if (seen[axis]) return "axis " + std::to_string(axes[i]) + " appears twice in axes " + ints_str(axes);
    seen[axis] = 1;
    const int64_t step = steps[i], dim = in_shape[axis];
    if (step == 0) return "steps must not be 0";
    if (step == INT64_MIN) return "step " + std::to_string(step) + " is out of range";
    int64_t start = starts[i], end = ends[i];
    if (start < 0) start += dim;
    if (end < 0) end += dim;
    int64_t count = 0;
    if (dim == 0) {
      start = 0;
    } else if (step > 0) {
      start = std::clamp<int64_t>(start, 0, dim);
      end = std::clamp<int64_t>(end, 0, dim);
      count = end > start ? (end - start + step - 1) / step : 0;
    } else {
      start = std::clamp<int64_t>(start, 0, dim - 1);
      end = std::clamp<int64_t>(end, -1, dim - 1);
      count = start > end ? (start - end - step - 1) / -step : 0;
    }
    box.starts[axis] = count ? start : 0;
    box.steps[axis] = step;
    box.out_shape[axis] = count;
  }
  return "";
}

}  // namespace movement

void register_movement_ops(OpRegistry& r) {
  movement::register_shape_ops(r);
  movement::register_layout_ops(r);
  movement::register_slice_ops(r);
  movement::register_index_ops(r);
}

}  // namespace gv

// Ops that change only the shape (Reshape, Flatten, Squeeze, Unsqueeze, Identity) and ops whose output is known from
// shapes and attributes alone (Shape, Size, Constant, ConstantOfShape, Range). The latter fold to constants at import
// time whenever their inputs are constant; their CPU kernels serve folding itself and graphs built by hand.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/movement.h"
#include "runtime/ops/movement_common.h"

namespace gv::movement {
namespace {

// ---- Reshape, Flatten, Squeeze, Unsqueeze, Identity: a byte copy with a new shape --------------------------------

Status infer_reshape(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 2));
  std::vector<int64_t> spec;
  GV_RETURN_IF_ERROR(constant_ints(ctx, 1, "shape", spec));
  const Shape& in = ctx.shape(0);
  // allowzero (opset 14+): a 0 in the shape is a zero-size dim rather than "copy the input's dim".
  const bool allowzero = ctx.opset() >= 14 && ctx.attrs().get_int("allowzero", 0) != 0;
  Shape out(spec.size());
  int infer_at = -1;
  bool has_zero = false;
  int64_t known = 1;
  for (size_t i = 0; i < spec.size(); ++i) {
    int64_t v = spec[i];
    if (v == -1) {
      if (infer_at >= 0) return ctx.fail("shape " + ints_str(spec) + " has more than one -1");
      infer_at = static_cast<int>(i);
      continue;
    }
    if (v == 0 && !allowzero) {
      if (i >= in.size()) {
        return ctx.fail("shape " + ints_str(spec) + " has 0 at position " + std::to_string(i) +
                        " (copy the input dim) but the input " + shape_str(in) + " has no such dim");
      }
      v = in[i];
    } else if (v < 0) {
      return ctx.fail("shape " + ints_str(spec) + " has the invalid dim " + std::to_string(v));
    }
    has_zero = has_zero || spec[i] == 0;
    out[i] = v;
    known *= v;
  }
  const int64_t numel = shape_numel(in);
  if (infer_at >= 0) {
    if (allowzero && has_zero) return ctx.fail("with allowzero=1 the shape may not hold both 0 and -1");
    if (known == 0 || numel % known != 0) {
      return ctx.fail("cannot reshape " + shape_str(in) + " (" + std::to_string(numel) + " elements) to " +
                      ints_str(spec));
    }
    out[infer_at] = numel / known;
  } else if (known != numel) {
    return ctx.fail("cannot reshape " + shape_str(in) + " (" + std::to_string(numel) + " elements) to " +
                    shape_str(out) + " (" + std::to_string(known) + " elements)");
  }
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

Status infer_flatten(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  const Shape& in = ctx.shape(0);
  const int64_t rank = static_cast<int64_t>(in.size());
  int64_t axis = ctx.attrs().get_int("axis", 1);
  // Flatten accepts axis == rank (everything goes to the first dim).
  if (axis < -rank || axis > rank) {
    return ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  }
  if (axis < 0) axis += rank;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < rank; ++d) (d < axis ? outer : inner) *= in[d];
  ctx.set_output(0, ctx.dtype(0), {outer, inner});
  return Status::ok();
}

// Squeeze and Unsqueeze take axes as an input from opset 13, as an attribute before.
Status read_axes(const InferContext& ctx, std::vector<int64_t>& axes, bool& given) {
  given = true;
  if (ctx.has_input(1)) return constant_ints(ctx, 1, "axes", axes);
  if (ctx.attrs().has("axes")) {
    axes = ctx.attrs().get_ints("axes");
    return Status::ok();
  }
  given = false;
  return Status::ok();
}

Status infer_squeeze(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  const Shape& in = ctx.shape(0);
  const int64_t rank = static_cast<int64_t>(in.size());
  std::vector<int64_t> axes;
  bool given = false;
  GV_RETURN_IF_ERROR(read_axes(ctx, axes, given));
  std::vector<char> drop(rank, 0);
  if (!given) {
    for (int64_t d = 0; d < rank; ++d) drop[d] = in[d] == 1;
  }
  for (int64_t a : axes) {
    GV_RETURN_IF_ERROR(check_axis(ctx, a, rank));
    if (in[a] != 1) {
      return ctx.fail("cannot squeeze axis " + std::to_string(a) + " of size " + std::to_string(in[a]) + " (input " +
                      shape_str(in) + ")");
    }
    drop[a] = 1;
  }
  Shape out;
  for (int64_t d = 0; d < rank; ++d) {
    if (!drop[d]) out.push_back(in[d]);
  }
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

Status infer_unsqueeze(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  const Shape& in = ctx.shape(0);
  std::vector<int64_t> axes;
  bool given = false;
  GV_RETURN_IF_ERROR(read_axes(ctx, axes, given));
  if (!given) return ctx.fail("axes are required");
  const int64_t out_rank = static_cast<int64_t>(in.size() + axes.size());
  std::vector<char> is_new(out_rank, 0);
  for (int64_t a : axes) {
    GV_RETURN_IF_ERROR(check_axis(ctx, a, out_rank));
    if (is_new[a]) return ctx.fail("axes " + ints_str(axes) + " name output axis " + std::to_string(a) + " twice");
    is_new[a] = 1;
  }
  Shape out(out_rank, 1);
  size_t next = 0;
  for (int64_t d = 0; d < out_rank; ++d) {
    if (!is_new[d]) out[d] = in[next++];
  }
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

Status infer_identity(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

Status identity_grad(GradBuilder& gb) {
  if (gb.needs_grad(0)) gb.set_grad_input(0, gb.grad_output(0));
  return Status::ok();
}

// ---- Shape, Size -----------------------------------------------------------------------------------------------

// Shape's [start, end) dims (opset 15 attributes), clamped into [0, rank].
void shape_range(const Attributes& attrs, int64_t rank, int64_t& start, int64_t& end) {
  start = attrs.get_int("start", 0);
  end = attrs.get_int("end", rank);
  if (start < 0) start += rank;
  if (end < 0) end += rank;
  start = std::clamp<int64_t>(start, 0, rank);
  end = std::clamp<int64_t>(end, 0, rank);
  if (end < start) end = start;
}

Status infer_shape(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  int64_t start, end;
  shape_range(ctx.attrs(), ctx.rank(0), start, end);
  ctx.set_output(0, DType::kInt64, {end - start});
  return Status::ok();
}

Status shape_cpu(KernelContext& ctx) {
  const Shape& in = ctx.inputs[0].shape;
  int64_t start, end;
  shape_range(ctx.attrs(), static_cast<int64_t>(in.size()), start, end);
  int64_t* out = ctx.outputs[0].as<int64_t>();
  for (int64_t d = start; d < end; ++d) out[d - start] = in[d];
  return Status::ok();
}

Status infer_size(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  ctx.set_output(0, DType::kInt64, {});
  return Status::ok();
}

Status size_cpu(KernelContext& ctx) {
  *ctx.outputs[0].as<int64_t>() = ctx.inputs[0].numel();
  return Status::ok();
}

// ---- Constant, ConstantOfShape ---------------------------------------------------------------------------------

// The tensor a Constant node holds: exactly one of value (tensor), value_float(s), value_int(s).
std::string constant_value(const Attributes& attrs, Tensor& out) {
  int count = 0;
  for (const auto& kv : attrs.all()) {
    const std::string& name = kv.first;
    const Attribute& a = kv.second;
    if (name == "value") {
      if (a.kind != Attribute::Kind::kTensor) return "attribute 'value' must be a tensor";
      out = a.t;
    } else if (name == "value_float") {
      out = Tensor::from_f32({a.f}, {});
    } else if (name == "value_floats") {
      out = Tensor::from_f32(a.floats, {static_cast<int64_t>(a.floats.size())});
    } else if (name == "value_int") {
      out = Tensor::from_i64({a.i}, {});
    } else if (name == "value_ints") {
      out = Tensor::from_i64(a.ints, {static_cast<int64_t>(a.ints.size())});
    } else if (name == "value_string" || name == "value_strings" || name == "sparse_value") {
      return "attribute '" + name + "' is not supported (string and sparse tensors are not)";
    } else {
      continue;
    }
    ++count;
  }
  if (count != 1) return "exactly one value attribute (value, value_float(s), value_int(s)) must be set";
  if (!out.defined()) return "attribute 'value' holds a tensor of an unsupported dtype";
  return "";
}

Status infer_constant(InferContext& ctx) {
  Tensor t;
  std::string err = constant_value(ctx.attrs(), t);
  if (!err.empty()) return ctx.fail(err);
  ctx.set_output(0, t.dtype(), t.shape());
  return Status::ok();
}

Status constant_cpu(KernelContext& ctx) {
  Tensor t;
  std::string err = constant_value(ctx.attrs(), t);
  if (!err.empty()) return ctx.fail(err);
  if (t.nbytes() != ctx.outputs[0].nbytes()) return ctx.fail("output size differs from the value attribute");
  if (t.nbytes()) std::memcpy(ctx.outputs[0].data, t.data(), t.nbytes());
  return Status::ok();
}

// ConstantOfShape's fill value: attribute 'value' (a one-element tensor), float32 0 by default.
std::string fill_value(const Attributes& attrs, Tensor& out) {
  const Tensor* v = attrs.get_tensor("value");
  if (!v) {
    out = Tensor::scalar(DType::kFloat32, 0.0);
    return attrs.has("value") ? "attribute 'value' must be a tensor" : "";
  }
  if (v->numel() != 1) return "attribute 'value' must hold exactly one element, got " + shape_str(v->shape());
  out = *v;
  return "";
}

Status infer_constant_of_shape(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 1));
  std::vector<int64_t> shape;
  GV_RETURN_IF_ERROR(constant_ints(ctx, 0, "shape", shape));
  for (int64_t d : shape) {
    if (d < 0) return ctx.fail("shape " + ints_str(shape) + " has a negative dim");
  }
  Tensor v;
  std::string err = fill_value(ctx.attrs(), v);
  if (!err.empty()) return ctx.fail(err);
  ctx.set_output(0, v.dtype(), shape);
  return Status::ok();
}

Status constant_of_shape_cpu(KernelContext& ctx) {
  Tensor v;
  std::string err = fill_value(ctx.attrs(), v);
  if (!err.empty()) return ctx.fail(err);
  const TensorRef& out = ctx.outputs[0];
  bool ok = dispatch_by_size(dtype_size(out.dtype), [&](auto tag) {
    using T = decltype(tag);
    T value;
    std::memcpy(&value, v.data(), sizeof(T));
    cpu::fill(out.as<T>(), value, out.numel());
  });
  return ok ? Status::ok() : ctx.fail("unsupported dtype " + std::string(dtype_name(out.dtype)));
}

// ---- Range -----------------------------------------------------------------------------------------------------

Status infer_range(InferContext& ctx) {
  GV_RETURN_IF_ERROR(require_inputs(ctx, 3));
  const DType dt = ctx.dtype(0);
  const char* names[3] = {"start", "limit", "delta"};
  const Tensor* v[3];
  for (int i = 0; i < 3; ++i) {
    if (ctx.dtype(i) != dt) return ctx.fail("start, limit and delta must have one dtype");
    if (shape_numel(ctx.shape(i)) != 1) {
      return ctx.fail(std::string(names[i]) + " must be a scalar, got " + shape_str(ctx.shape(i)));
    }
    v[i] = ctx.constant(i);
    if (!v[i]) {
      return ctx.fail(std::string("input '") + names[i] +
                      "' must be a constant after shape folding, since it "
                      "decides the output's length");
    }
  }
  int64_t n = 0;
  if (dt == DType::kInt32 || dt == DType::kInt64) {
    const int64_t start = v[0]->scalar_i64(), limit = v[1]->scalar_i64(), delta = v[2]->scalar_i64();
    if (delta == 0) return ctx.fail("delta must not be 0");
    const int64_t span = limit - start;
    if (delta > 0)
      n = span > 0 ? (span + delta - 1) / delta : 0;
    else
      n = span < 0 ? (-span - delta - 1) / -delta : 0;
  } else if (dt == DType::kFloat32 || dt == DType::kFloat64) {
    const double start = v[0]->scalar_f64(), limit = v[1]->scalar_f64(), delta = v[2]->scalar_f64();
    const double count = std::ceil((limit - start) / delta);
    if (!std::isfinite(count) || count > 1e15) {
      return ctx.fail("start " + std::to_string(start) + ", limit " + std::to_string(limit) + " and delta " +
                      std::to_string(delta) + " do not give a finite length");
    }
    n = std::max<int64_t>(0, static_cast<int64_t>(count));
  } else {
    return ctx.fail("unsupported dtype " + std::string(dtype_name(dt)) + " (float32, float64, int32, int64)");
  }
  ctx.set_output(0, dt, {n});
  return Status::ok();
}

Status range_cpu(KernelContext& ctx) {
  const TensorRef& out = ctx.outputs[0];
  bool ok = dispatch_arith(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    cpu::range(out.as<T>(), *ctx.inputs[0].as<T>(), *ctx.inputs[2].as<T>(), out.numel());
  });
  return ok ? Status::ok() : ctx.fail("unsupported dtype " + std::string(dtype_name(out.dtype)));
}

}  // namespace

// Marks an op whose output is its input's bytes (OpSchema::view).
static OpSchema view_op(OpSchema s) {
  s.view = true;
  return s;
}

void register_shape_ops(OpRegistry& r) {
  r.add(view_op(make_op("Reshape", 2, 2, infer_reshape, copy_kernel, reshape_back_grad, {1},
                        "new shape from a constant shape input (0 copies a dim, -1 is inferred; allowzero from opset 14)")));
  r.add(view_op(make_op("Flatten", 1, 1, infer_flatten, copy_kernel, reshape_back_grad, {},
                        "2-D view: dims before axis and from axis on")));
  r.add(view_op(make_op("Squeeze", 1, 2, infer_squeeze, copy_kernel, reshape_back_grad, {1},
                        "removes size-1 dims (axes input from opset 13)")));
  r.add(view_op(make_op("Unsqueeze", 1, 2, infer_unsqueeze, copy_kernel, reshape_back_grad, {1},
                        "inserts size-1 dims (axes input from opset 13)")));
  // Identity may also be registered by another family; keep the first entry.
  if (!r.find("", "Identity")) {
    r.add(view_op(make_op("Identity", 1, 1, infer_identity, copy_kernel, identity_grad, {}, "copy of the input")));
  }
  r.add(make_op("Shape", 1, 1, infer_shape, shape_cpu, nullptr, {}, "the input's dims [start, end) as int64"));
  r.add(make_op("Size", 1, 1, infer_size, size_cpu, nullptr, {}, "the input's element count as an int64 scalar"));
  r.add(make_op("Constant", 0, 0, infer_constant, constant_cpu, nullptr, {},
                "the tensor of its value / value_float(s) / value_int(s) attribute"));
  r.add(make_op("ConstantOfShape", 1, 1, infer_constant_of_shape, constant_of_shape_cpu, nullptr, {},
                "a tensor of a constant shape filled with attribute value (default 0.0f)"));
  r.add(make_op("Range", 3, 3, infer_range, range_cpu, nullptr, {},
                "start, start+delta, ... below limit (constant inputs)"));
}

}  // namespace gv::movement

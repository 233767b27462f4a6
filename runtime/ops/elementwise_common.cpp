#include "runtime/ops/elementwise_common.h"

#include "kernels/cpu/broadcast.h"

namespace gv::elementwise {
namespace {

bool is_half(DType t) { return t == DType::kFloat16 || t == DType::kBFloat16; }

}  // namespace

std::string type_set_str(TypeSet s) {
  static const DType kOrder[] = {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16, DType::kInt64,
                                 DType::kInt32,   DType::kInt8,    DType::kUInt8,   DType::kBool};
  std::string r;
  for (DType t : kOrder) {
    if (!(s & type_bit(t))) continue;
    if (!r.empty()) r += ", ";
    r += dtype_name(t);
  }
  return r;
}

Status check_dtype(const InferContext& ctx, int i, TypeSet allowed) {
  const DType t = ctx.dtype(i);
  if (allowed & type_bit(t)) return Status::ok();
  return ctx.fail("input " + std::to_string(i) + " has dtype " + dtype_name(t) + "; supported: " +
                  type_set_str(allowed));
}

Status check_same_dtype(const InferContext& ctx, int i, int j) {
  if (ctx.dtype(i) == ctx.dtype(j)) return Status::ok();
  return ctx.fail("inputs " + std::to_string(i) + " and " + std::to_string(j) + " must have the same dtype, got " +
                  dtype_name(ctx.dtype(i)) + " and " + dtype_name(ctx.dtype(j)) + " (insert a Cast)");
}

Status broadcast_inputs(const InferContext& ctx, int first, int last, Shape* out) {
  Shape s;
  bool any = false;
  std::string shapes;
  for (int i = first; i < last; ++i) {
    if (!ctx.has_input(i)) continue;
    shapes += (shapes.empty() ? "" : ", ") + shape_str(ctx.shape(i));
    if (!any) {
      s = ctx.shape(i);
      any = true;
    } else if (!cpu::broadcast_shape(s, ctx.shape(i), &s)) {
      return ctx.fail("input shapes " + shapes +
                      " cannot be broadcast together (aligned from the right, sizes must be equal or 1)");
    }
  }
  *out = std::move(s);
  return Status::ok();
}

Status check_scalar(const InferContext& ctx, int i, const char* what) {
  if (shape_numel(ctx.shape(i)) == 1) return Status::ok();
  return ctx.fail(std::string(what) + " (input " + std::to_string(i) + ") must be a scalar, got shape " +
                  shape_str(ctx.shape(i)));
}

bool has_half_operand(const KernelContext& ctx) {
  for (const TensorRef& t : ctx.inputs) {
    if (t.data && is_half(t.dtype)) return true;
  }
  for (const TensorRef& t : ctx.outputs) {
    if (t.data && is_half(t.dtype)) return true;
  }
  return false;
}

Status run_in_float32(KernelContext& ctx, KernelFn kernel) {
  KernelContext f32 = ctx;
  std::vector<Tensor> buffers;  // keeps the float32 copies alive
  buffers.reserve(ctx.inputs.size() + ctx.outputs.size());
  for (TensorRef& t : f32.inputs) {
    if (!t.data || !is_half(t.dtype)) continue;
    buffers.emplace_back(DType::kFloat32, t.shape);
    convert_elements(t.data, t.dtype, buffers.back().data(), DType::kFloat32, t.numel());
    t = buffers.back().ref();
  }
  for (TensorRef& t : f32.outputs) {
    if (!t.data || !is_half(t.dtype)) continue;
    buffers.emplace_back(DType::kFloat32, t.shape);
    t = buffers.back().ref();
  }
  GV_RETURN_IF_ERROR(kernel(f32));
  for (size_t i = 0; i < ctx.outputs.size(); ++i) {
    const TensorRef& dst = ctx.outputs[i];
    if (!dst.data || !is_half(dst.dtype)) continue;
    convert_elements(f32.outputs[i].data, DType::kFloat32, dst.data, dst.dtype, dst.numel());
  }
  return Status::ok();
}

OpSchema make_schema(const std::string& name, int min_inputs, int max_inputs, InferFn infer, KernelFn cpu,
                     GradFn grad, std::string doc) {
  OpSchema s;
  s.name = name;
  s.min_inputs = min_inputs;
  s.max_inputs = max_inputs;
  s.infer = infer;
  s.cpu = cpu;
  s.grad = grad;
  s.doc = std::move(doc);
  return s;
}

}  // namespace gv::elementwise

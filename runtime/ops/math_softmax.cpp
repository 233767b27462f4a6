// Softmax and LogSoftmax (opset >= 13: along one axis, default -1) and their fused gradient ops SoftmaxGrad and
// LogSoftmaxGrad (domain galvatron), which read the forward output rather than recomputing it.
#include "kernels/cpu/softmax.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

// x viewed as [outer, n, inner] around the axis.
struct AxisView {
  int64_t outer, n, inner;
};
AxisView axis_view(const Shape& s, int64_t axis) {
  return {dims_product(s, 0, axis), s[axis], dims_product(s, axis + 1, static_cast<int64_t>(s.size()))};
}

Status resolve_axis(const InferContext& ctx, int64_t& axis) {
  axis = ctx.attrs().get_int("axis", -1);
  if (ctx.rank(0) == 0) return ctx.fail("input must have rank >= 1");
  if (!normalize_axis(axis, ctx.rank(0))) {
    return ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(ctx.rank(0)));
  }
  return Status::ok();
}

Status infer_softmax(InferContext& ctx) {
  GV_RETURN_IF_ERROR(expect_float(ctx, 0, "input"));
  int64_t axis;
  GV_RETURN_IF_ERROR(resolve_axis(ctx, axis));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

template <bool kLog>
Status softmax_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  int64_t axis = ctx.attrs().get_int("axis", -1);
  if (!normalize_axis(axis, x.rank())) return ctx.fail("axis out of range");
  const AxisView v = axis_view(x.shape, axis);
  return dispatch_float(x.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::softmax(x.as<T>(), ctx.outputs[0].as<T>(), v.outer, v.n, v.inner, kLog);
  });
}

// SoftmaxGrad / LogSoftmaxGrad (dY, Y) -> dX, attribute axis.
Status infer_softmax_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(expect_float(ctx, 0, "dY"));
  if (ctx.shape(0) != ctx.shape(1) || ctx.dtype(0) != ctx.dtype(1)) {
    return ctx.fail("dY " + shape_str(ctx.shape(0)) + " and Y " + shape_str(ctx.shape(1)) + " differ");
  }
  int64_t axis;
  GV_RETURN_IF_ERROR(resolve_axis(ctx, axis));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

template <bool kLog>
Status softmax_grad_cpu(KernelContext& ctx) {
  const TensorRef &dy = ctx.inputs[0], &y = ctx.inputs[1];
  int64_t axis = ctx.attrs().get_int("axis", -1);
  if (!normalize_axis(axis, y.rank())) return ctx.fail("axis out of range");
  const AxisView v = axis_view(y.shape, axis);
  return dispatch_float(y.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::softmax_backward(dy.as<T>(), y.as<T>(), ctx.outputs[0].as<T>(), v.outer, v.n, v.inner, kLog);
  });
}

template <bool kLog>
Status softmax_grad(GradBuilder& gb) {
  Attributes a;
  a.set_int("axis", gb.attrs().get_int("axis", -1));
  gb.set_grad_input(0, gb.emit1(kLog ? "LogSoftmaxGrad" : "SoftmaxGrad", {gb.grad_output(0), gb.output(0)}, a,
                                kGalvatronDomain));
  return Status::ok();
}

}  // namespace

void register_softmax_ops(OpRegistry& r) {
  OpSchema sm = make_schema("", "Softmax", 1, 1, 1, 1, infer_softmax, softmax_cpu<false>,
                            "softmax along attr axis (default -1), max-subtracted");
  sm.grad = softmax_grad<false>;
  r.add(sm);
  OpSchema lsm = make_schema("", "LogSoftmax", 1, 1, 1, 1, infer_softmax, softmax_cpu<true>,
                             "log-softmax along attr axis (default -1), max-subtracted");
  lsm.grad = softmax_grad<true>;
  r.add(lsm);
  r.add(make_schema(kGalvatronDomain, "SoftmaxGrad", 2, 2, 1, 1, infer_softmax_grad, softmax_grad_cpu<false>,
                    "(dY, Y) -> dX = Y * (dY - sum(dY * Y, axis))"));
  r.add(make_schema(kGalvatronDomain, "LogSoftmaxGrad", 2, 2, 1, 1, infer_softmax_grad, softmax_grad_cpu<true>,
                    "(dY, Y) -> dX = dY - exp(Y) * sum(dY, axis)"));
}

}  // namespace gv::math

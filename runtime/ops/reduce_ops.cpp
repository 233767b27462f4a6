// Reduce* ops (keepdims, noop_with_empty_axes; axes move from attribute to input at opset 13 for ReduceSum and 18 for
// the others), ArgMax/ArgMin, and ReduceGrad (domain galvatron), the single fused backward of all reductions.
#include "kernels/cpu/reduce.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

using cpu::ReduceKind;

// Opset from which a reduction reads its axes from input 1 instead of the `axes` attribute.
constexpr int axes_input_opset(ReduceKind k) { return k == ReduceKind::kSum ? 13 : 18; }
// Reductions also defined on integer tensors.
constexpr bool allows_integers(ReduceKind k) {
  return k != ReduceKind::kL2 && k != ReduceKind::kLogSum && k != ReduceKind::kLogSumExp;
}

// Reduced-axis flags of a Reduce* node: from the axes attribute before axes_input_opset, else from the axes input
// (`input_axes`, null when omitted). Empty axes reduce everything unless noop_with_empty_axes. Empty on success.
std::string resolve_axes(const Node& node, ReduceKind kind, int64_t rank, const std::vector<int64_t>* input_axes,
                         std::vector<bool>& reduced) {
  const bool from_input = node.opset >= axes_input_opset(kind);
  std::vector<int64_t> axes = from_input ? (input_axes ? *input_axes : std::vector<int64_t>{})
                                         : node.attrs.get_ints("axes");
  reduced.assign(static_cast<size_t>(rank), false);
  if (axes.empty()) {
    if (!(from_input && node.attrs.get_int("noop_with_empty_axes", 0) != 0)) reduced.assign(rank, true);
    return "";
  }
  for (int64_t a : axes) {
    int64_t b = a;
    if (!normalize_axis(b, rank)) return "axis " + std::to_string(a) + " is out of range for rank " + std::to_string(rank);
    if (reduced[b]) return "axis " + std::to_string(a) + " is repeated";
    reduced[b] = true;
  }
  return "";
}

Shape reduced_shape(const Shape& in, const std::vector<bool>& reduced, bool keepdims) {
  Shape out;
  for (size_t d = 0; d < in.size(); ++d) {
    if (!reduced[d]) out.push_back(in[d]);
    else if (keepdims) out.push_back(1);
  }
  return out;
}

template <ReduceKind K>
Status infer_reduce(InferContext& ctx) {
  const DType t = ctx.dtype(0);
  if (!is_float(t) && !(allows_integers(K) && is_index(t))) {
    return ctx.fail(std::string("unsupported dtype ") + dtype_name(t));
  }
  std::vector<int64_t> axes;
  if (ctx.has_input(1)) {
    if (ctx.opset() < axes_input_opset(K)) {
      return ctx.fail("takes axes as an attribute before opset " + std::to_string(axes_input_opset(K)) +
                      ", but the node (opset " + std::to_string(ctx.opset()) + ") has an axes input");
    }
    const Tensor* c = ctx.constant(1);
    if (!c) return ctx.fail("the axes input must be a constant (output shapes are static)");
    if (ctx.dtype(1) != DType::kInt64) return ctx.fail("axes must be int64");
    axes = c->to_i64_vector();
  }
  std::vector<bool> reduced;
  std::string err = resolve_axes(ctx.node(), K, ctx.rank(0), ctx.has_input(1) ? &axes : nullptr, reduced);
  if (!err.empty()) return ctx.fail(err);
  ctx.set_output(0, t, reduced_shape(ctx.shape(0), reduced, ctx.attrs().get_int("keepdims", 1) != 0));
  return Status::ok();
}

template <ReduceKind K>
Status reduce_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  std::vector<int64_t> axes;
  if (ctx.has_input(1)) {
    const int64_t* a = ctx.inputs[1].as<int64_t>();
    axes.assign(a, a + ctx.inputs[1].numel());
  }
  std::vector<bool> reduced;
  std::string err = resolve_axes(*ctx.node, K, x.rank(), ctx.has_input(1) ? &axes : nullptr, reduced);
  if (!err.empty()) return ctx.fail(err);
  const cpu::ReduceLayout layout = cpu::make_reduce_layout(x.shape, reduced);
  if constexpr (allows_integers(K)) {
    return dispatch_numeric(x.dtype, ctx, [&](auto tag) {
      using T = decltype(tag);
      cpu::reduce(x.as<T>(), ctx.outputs[0].as<T>(), layout, K);
    });
  } else {
    return dispatch_float(x.dtype, ctx, [&](auto tag) {
      using T = decltype(tag);
      cpu::reduce(x.as<T>(), ctx.outputs[0].as<T>(), layout, K);
    });
  }
}

// ---- ReduceGrad(dY, X?, Y?) -> dX; attributes kind (the forward op type), axes (reduced axes), shape (X's) ----

struct KindName {
  const char* name;
  ReduceKind kind;
};
constexpr KindName kKinds[] = {
    {"ReduceSum", ReduceKind::kSum},         {"ReduceMean", ReduceKind::kMean},
    {"ReduceMax", ReduceKind::kMax},         {"ReduceMin", ReduceKind::kMin},
    {"ReduceProd", ReduceKind::kProd},       {"ReduceL1", ReduceKind::kL1},
    {"ReduceL2", ReduceKind::kL2},           {"ReduceSumSquare", ReduceKind::kSumSquare},
    {"ReduceLogSum", ReduceKind::kLogSum},   {"ReduceLogSumExp", ReduceKind::kLogSumExp},
};

bool kind_from_name(const std::string& name, ReduceKind& k) {
  for (const KindName& kn : kKinds) {
    if (name == kn.name) {
      k = kn.kind;
      return true;
    }
  }
  return false;
}
const char* kind_name(ReduceKind k) {
  for (const KindName& kn : kKinds)
    if (kn.kind == k) return kn.name;
  return "?";
}

constexpr bool grad_reads_x(ReduceKind k) {
  return k != ReduceKind::kSum && k != ReduceKind::kMean && k != ReduceKind::kLogSum;
}
constexpr bool grad_reads_y(ReduceKind k) {
  return k == ReduceKind::kL2 || k == ReduceKind::kLogSum || k == ReduceKind::kLogSumExp || k == ReduceKind::kMax ||
         k == ReduceKind::kMin;
}

std::string reduce_grad_layout(const Node& node, ReduceKind& kind, Shape& shape, std::vector<bool>& reduced) {
  if (!kind_from_name(node.attrs.get_string("kind", ""), kind)) return "unknown kind '" + node.attrs.get_string("kind", "") + "'";
  shape = node.attrs.get_ints("shape");
  reduced.assign(shape.size(), false);
  for (int64_t a : node.attrs.get_ints("axes")) {
    if (a < 0 || a >= static_cast<int64_t>(shape.size())) return "axis out of range";
    reduced[a] = true;
  }
  return "";
}

Status infer_reduce_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(expect_float(ctx, 0, "dY"));
  ReduceKind kind;
  Shape shape;
  std::vector<bool> reduced;
  std::string err = reduce_grad_layout(ctx.node(), kind, shape, reduced);
  if (!err.empty()) return ctx.fail(err);
  if (shape_numel(ctx.shape(0)) != shape_numel(reduced_shape(shape, reduced, true))) {
    return ctx.fail("dY " + shape_str(ctx.shape(0)) + " does not match the reduction of " + shape_str(shape));
  }
  if (grad_reads_x(kind) && (!ctx.has_input(1) || ctx.shape(1) != shape)) return ctx.fail("needs X " + shape_str(shape));
  if (grad_reads_y(kind) && (!ctx.has_input(2) || shape_numel(ctx.shape(2)) != shape_numel(ctx.shape(0)))) {
    return ctx.fail("needs the forward output Y");
  }
  ctx.set_output(0, ctx.dtype(0), shape);
  return Status::ok();
}

Status reduce_grad_cpu(KernelContext& ctx) {
  ReduceKind kind;
  Shape shape;
  std::vector<bool> reduced;
  std::string err = reduce_grad_layout(*ctx.node, kind, shape, reduced);
  if (!err.empty()) return ctx.fail(err);
  const cpu::ReduceLayout layout = cpu::make_reduce_layout(shape, reduced);
  return dispatch_float(ctx.inputs[0].dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    const T* x = ctx.has_input(1) ? ctx.inputs[1].as<T>() : nullptr;
    const T* y = ctx.has_input(2) ? ctx.inputs[2].as<T>() : nullptr;
    cpu::reduce_backward(ctx.inputs[0].as<T>(), x, y, ctx.outputs[0].as<T>(), layout, kind);
  });
}

template <ReduceKind K>
Status reduce_grad(GradBuilder& gb) {
  const ValueId x = gb.input(0), axes_in = gb.input(1);
  std::vector<int64_t> axes;
  if (axes_in != kNoValue) axes = gb.graph().value(axes_in).data.to_i64_vector();  // a constant (inference checked)
  std::vector<bool> reduced;
  const Shape& xs = gb.shape(x);
  std::string err = resolve_axes(gb.node(), K, static_cast<int64_t>(xs.size()), axes_in != kNoValue ? &axes : nullptr,
                                 reduced);
  if (!err.empty()) return internal_error("node '" + gb.node().name + "' (" + gb.node().op_type + "): " + err);
  std::vector<int64_t> list;
  for (size_t d = 0; d < reduced.size(); ++d)
    if (reduced[d]) list.push_back(static_cast<int64_t>(d));
  Attributes a;
  a.set_string("kind", kind_name(K));
  a.set_ints("axes", list);
  a.set_ints("shape", xs);
  gb.set_grad_input(0, gb.emit1("ReduceGrad",
                                {gb.grad_output(0), grad_reads_x(K) ? x : kNoValue,
                                 grad_reads_y(K) ? gb.output(0) : kNoValue},
                                a, kGalvatronDomain));
  return Status::ok();
}

// ---- ArgMax / ArgMin: axis (default 0), keepdims, select_last_index; int64 output ----

Status infer_arg(InferContext& ctx) {
  const DType t = ctx.dtype(0);
  if (!is_float(t) && !is_index(t)) return ctx.fail(std::string("unsupported dtype ") + dtype_name(t));
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (!normalize_axis(axis, ctx.rank(0))) {
    return ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(ctx.rank(0)));
  }
  std::vector<bool> reduced(ctx.rank(0), false);
  reduced[axis] = true;
  ctx.set_output(0, DType::kInt64, reduced_shape(ctx.shape(0), reduced, ctx.attrs().get_int("keepdims", 1) != 0));
  return Status::ok();
}

template <bool kMax>
Status arg_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (!normalize_axis(axis, x.rank())) return ctx.fail("axis out of range");
  const bool last = ctx.attrs().get_int("select_last_index", 0) != 0;
  return dispatch_numeric(x.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::arg_reduce(x.as<T>(), ctx.outputs[0].as<int64_t>(), dims_product(x.shape, 0, axis), x.shape[axis],
                    dims_product(x.shape, axis + 1, x.rank()), kMax, last);
  });
}

template <ReduceKind K>
void add_reduce(OpRegistry& r, const char* doc) {
  OpSchema s = make_schema("", kind_name(K), 1, 2, 1, 1, infer_reduce<K>, reduce_cpu<K>, doc);
  s.grad = reduce_grad<K>;
  s.nondiff_inputs = {1};
  r.add(s);
}

}  // namespace

void register_reduce_ops(OpRegistry& r) {
  add_reduce<ReduceKind::kSum>(r, "sum over axes (input from opset 13)");
  add_reduce<ReduceKind::kMean>(r, "mean over axes (input from opset 18)");
  add_reduce<ReduceKind::kMax>(r, "max over axes; gradient split between tied maxima");
  add_reduce<ReduceKind::kMin>(r, "min over axes; gradient split between tied minima");
  add_reduce<ReduceKind::kProd>(r, "product over axes");
  add_reduce<ReduceKind::kL1>(r, "sum of |x| over axes");
  add_reduce<ReduceKind::kL2>(r, "sqrt(sum of x^2) over axes");
  add_reduce<ReduceKind::kSumSquare>(r, "sum of x^2 over axes");
  add_reduce<ReduceKind::kLogSum>(r, "log(sum) over axes");
  add_reduce<ReduceKind::kLogSumExp>(r, "log(sum(exp)) over axes, max-subtracted");
  r.add(make_schema("", "ArgMax", 1, 1, 1, 1, infer_arg, arg_cpu<true>, "index of the max along axis (int64)"));
  r.add(make_schema("", "ArgMin", 1, 1, 1, 1, infer_arg, arg_cpu<false>, "index of the min along axis (int64)"));
  r.add(make_schema(kGalvatronDomain, "ReduceGrad", 1, 3, 1, 1, infer_reduce_grad, reduce_grad_cpu,
                    "(dY, X?, Y?) -> dX of any Reduce* (attrs kind, axes, shape)"));
}

}  // namespace gv::math

// Dropout (opset >= 12 form: optional ratio and training_mode inputs; outputs output and optional mask) and its
// gradient op DropoutGrad (domain galvatron). Outside training mode Dropout is the identity with an all-true mask.
// In training mode the mask comes from a counter-based generator keyed by (KernelContext::rng_seed, rng_counter, hash
// of the node name): the same (seed, counter) gives the same mask, and the backward can regenerate it.
#include <cstring>

#include "kernels/cpu/dropout.h"
#include "kernels/cpu/random.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

constexpr double kDefaultRatio = 0.5;

// Validates the optional ratio (input `ri`) and training_mode (input `ti`) scalars.
Status check_mode_inputs(const InferContext& ctx, int ri, int ti) {
  if (ctx.has_input(ri)) {
    if (!dtype_is_float(ctx.dtype(ri)) || shape_numel(ctx.shape(ri)) != 1) {
      return ctx.fail("ratio must be a float scalar, got " + std::string(dtype_name(ctx.dtype(ri))) + " " +
                      shape_str(ctx.shape(ri)));
    }
    if (const Tensor* c = ctx.constant(ri)) {
      const double r = c->scalar_f64(0);
      if (!(r >= 0.0 && r <= 1.0)) return ctx.fail("ratio " + std::to_string(r) + " is outside [0, 1]");
    }
  }
  if (ctx.has_input(ti) && (ctx.dtype(ti) != DType::kBool || shape_numel(ctx.shape(ti)) != 1)) {
    return ctx.fail("training_mode must be a bool scalar, got " + std::string(dtype_name(ctx.dtype(ti))) + " " +
                    shape_str(ctx.shape(ti)));
  }
  return Status::ok();
}

// Reads ratio and training_mode at run time (they may be graph inputs).
Status read_mode(const KernelContext& ctx, int ri, int ti, double& ratio, bool& training) {
  ratio = ctx.has_input(ri) ? read_scalar_f64(ctx.inputs[ri]) : kDefaultRatio;
  training = ctx.has_input(ti) && *ctx.inputs[ti].as<uint8_t>() != 0;
  if (training && !(ratio >= 0.0 && ratio <= 1.0)) return ctx.fail("ratio " + std::to_string(ratio) + " is outside [0, 1]");
  return Status::ok();
}

Status infer_dropout(InferContext& ctx) {
  GV_RETURN_IF_ERROR(expect_float(ctx, 0, "data"));
  GV_RETURN_IF_ERROR(check_mode_inputs(ctx, 1, 2));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  if (ctx.num_outputs() > 1) ctx.set_output(1, DType::kBool, ctx.shape(0));
  return Status::ok();
}

Status dropout_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  double ratio;
  bool training;
  GV_RETURN_IF_ERROR(read_mode(ctx, 1, 2, ratio, training));
  uint8_t* mask = ctx.outputs.size() > 1 ? ctx.outputs[1].as<uint8_t>() : nullptr;
  if (!training || ratio == 0.0) {
    std::memcpy(ctx.outputs[0].data, x.data, x.nbytes());
    if (mask) std::memset(mask, 1, x.numel());
    return Status::ok();
  }
  const uint64_t key = cpu::random_key(ctx.rng_seed, ctx.rng_counter, cpu::hash_name(ctx.node->name));
  return dispatch_float(x.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::dropout_forward(x.as<T>(), ctx.outputs[0].as<T>(), mask, x.numel(), ratio, key);
  });
}

// DropoutGrad(dY, mask?, ratio?, training_mode?) -> dX; attribute `stream`: the forward node's name hash, used to
// regenerate the mask when the forward node has no mask output.
Status infer_dropout_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(expect_float(ctx, 0, "dY"));
  if (ctx.has_input(1) && (ctx.dtype(1) != DType::kBool || ctx.shape(1) != ctx.shape(0))) {
    return ctx.fail("mask must be bool " + shape_str(ctx.shape(0)));
  }
  GV_RETURN_IF_ERROR(check_mode_inputs(ctx, 2, 3));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

Status dropout_grad_cpu(KernelContext& ctx) {
  const TensorRef& dy = ctx.inputs[0];
  double ratio;
  bool training;
  GV_RETURN_IF_ERROR(read_mode(ctx, 2, 3, ratio, training));
  if (!training || ratio == 0.0) {
    std::memcpy(ctx.outputs[0].data, dy.data, dy.nbytes());
    return Status::ok();
  }
  const uint8_t* mask = ctx.has_input(1) ? ctx.inputs[1].as<uint8_t>() : nullptr;
  const uint64_t stream = static_cast<uint64_t>(ctx.attrs().get_int("stream", 0));
  const uint64_t key = cpu::random_key(ctx.rng_seed, ctx.rng_counter, stream);
  return dispatch_float(dy.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::dropout_backward(dy.as<T>(), mask, ctx.outputs[0].as<T>(), dy.numel(), ratio, key);
  });
}

// dX = dY * mask / (1 - ratio) in training mode, else dY.
Status dropout_grad(GradBuilder& gb) {
  const ValueId training = gb.input(2);
  bool maybe_training = training != kNoValue;
  if (maybe_training && gb.graph().is_constant(training)) {
    maybe_training = gb.graph().value(training).data.scalar_f64(0) != 0.0;
  }
  if (!maybe_training) {
    gb.set_grad_input(0, gb.grad_output(0));
    return Status::ok();
  }
  Attributes a;
  a.set_int("stream", static_cast<int64_t>(cpu::hash_name(gb.node().name)));
  const ValueId mask = gb.num_outputs() > 1 ? gb.output(1) : kNoValue;
  gb.set_grad_input(0, gb.emit1("DropoutGrad", {gb.grad_output(0), mask, gb.input(1), training}, a, kGalvatronDomain));
  return Status::ok();
}

}  // namespace

void register_dropout_ops(OpRegistry& r) {
  OpSchema d = make_schema("", "Dropout", 1, 3, 1, 2, infer_dropout, dropout_cpu,
                           "(data, ratio?, training_mode?) -> (output, mask?); identity unless training_mode");
  d.grad = dropout_grad;
  d.nondiff_inputs = {1, 2};
  r.add(d);
  r.add(make_schema(kGalvatronDomain, "DropoutGrad", 1, 4, 1, 1, infer_dropout_grad, dropout_grad_cpu,
                    "(dY, mask?, ratio?, training_mode?) -> dY * mask / (1 - ratio); mask regenerated when absent"));
}

}  // namespace gv::math

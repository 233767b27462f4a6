// The project's training ops (domain "galvatron"): gradient accumulation, global gradient norm, and the optimizers.
// They update persistent buffers (ValueKind::kState, parameters) in place and have no outputs, except GradNorm.
// One static plan holds forward, backward and these nodes; see runtime/training_graph.h.
#include <cmath>
#include <cstring>

#include "kernels/cpu/optimizer.h"
#include "runtime/communicator.h"
#include "runtime/op_registry.h"
#include "runtime/ops/all_ops.h"

namespace gv {
namespace {

Status infer_nothing(InferContext& ctx) {
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    if (ctx.has_input(i) && i < 2 && ctx.dtype(i) != ctx.dtype(0)) return ctx.fail("input dtypes differ");
  }
  if (ctx.num_inputs() >= 2 && ctx.has_input(1) && ctx.shape(0) != ctx.shape(1)) {
    return ctx.fail("buffer " + shape_str(ctx.shape(0)) + " and gradient " + shape_str(ctx.shape(1)) + " differ");
  }
  return Status::ok();
}

// AccumulateGrad(acc, grad): acc += grad.
Status accumulate_cpu(KernelContext& ctx) {
  const TensorRef& acc = ctx.inputs[0];
  const TensorRef& g = ctx.inputs[1];
  if (acc.dtype == DType::kFloat32) cpu::accumulate(acc.as<float>(), g.as<float>(), acc.numel());
  else if (acc.dtype == DType::kFloat64) cpu::accumulate(acc.as<double>(), g.as<double>(), acc.numel());
  else return ctx.fail("unsupported dtype");
  return Status::ok();
}

// GradNorm(g_1, ..., g_n) -> sqrt(sum of squares) * scale, as a float32 scalar.
Status infer_grad_norm(InferContext& ctx) {
  ctx.set_output(0, DType::kFloat32, {});
  return Status::ok();
}

Status grad_norm_cpu(KernelContext& ctx) {
  double s = 0.0;
  for (const TensorRef& t : ctx.inputs) {
    if (t.dtype == DType::kFloat32) s += cpu::sum_squares(t.as<float>(), t.numel());
    else if (t.dtype == DType::kFloat64) s += cpu::sum_squares(t.as<double>(), t.numel());
    else return ctx.fail("unsupported dtype");
  }
  double scale = ctx.attrs().get_double("scale", 1.0);
  *ctx.outputs[0].as<float>() = static_cast<float>(std::sqrt(s) * scale);
  return Status::ok();
}

// The gradient multiplier: 1/micro-batches, times PyTorch's clip_grad_norm_ coefficient when clipping is on.
double effective_grad_scale(const KernelContext& ctx, int norm_input) {
  double scale = ctx.attrs().get_double("grad_scale", 1.0);
  double max_norm = ctx.attrs().get_double("max_norm", 0.0);
  if (max_norm > 0 && ctx.has_input(norm_input)) {
    double norm = *ctx.inputs[norm_input].as<float>();
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) scale *= coef;
  }
  return scale;
}

void zero_if_asked(const KernelContext& ctx, const TensorRef& grad) {
  if (ctx.attrs().get_int("zero_grad", 0)) std::memset(grad.data, 0, grad.nbytes());
}

// AdamW(param, grad, m, v, lr, step, [grad_norm]); attrs beta1 beta2 epsilon weight_decay grad_scale max_norm zero_grad.
Status adamw_cpu(KernelContext& ctx) {
  const TensorRef& p = ctx.inputs[0];
  cpu::AdamWParams a;
  a.lr = ctx.inputs[4].dtype == DType::kFloat64 ? *ctx.inputs[4].as<double>() : *ctx.inputs[4].as<float>();
  a.step = *ctx.inputs[5].as<int64_t>();
  a.beta1 = ctx.attrs().get_double("beta1", 0.9);
  a.beta2 = ctx.attrs().get_double("beta2", 0.999);
  a.eps = ctx.attrs().get_double("epsilon", 1e-8);
  a.weight_decay = ctx.attrs().get_double("weight_decay", 0.01);
  a.grad_scale = effective_grad_scale(ctx, 6);
  if (p.dtype == DType::kFloat32) {
    cpu::adamw_update(p.as<float>(), ctx.inputs[1].as<float>(), ctx.inputs[2].as<float>(), ctx.inputs[3].as<float>(),
                      p.numel(), a);
  } else if (p.dtype == DType::kFloat64) {
    cpu::adamw_update(p.as<double>(), ctx.inputs[1].as<double>(), ctx.inputs[2].as<double>(),
                      ctx.inputs[3].as<double>(), p.numel(), a);
  } else {
    return ctx.fail("unsupported dtype");
  }
  zero_if_asked(ctx, ctx.inputs[1]);
  return Status::ok();
}

// SGD(param, grad, momentum_buffer, lr, step, [grad_norm]); attrs momentum dampening nesterov weight_decay ...
Status sgd_cpu(KernelContext& ctx) {
  const TensorRef& p = ctx.inputs[0];
  cpu::SgdParams s;
  s.lr = ctx.inputs[3].dtype == DType::kFloat64 ? *ctx.inputs[3].as<double>() : *ctx.inputs[3].as<float>();
  s.step = *ctx.inputs[4].as<int64_t>();
  s.momentum = ctx.attrs().get_double("momentum", 0.0);
  s.dampening = ctx.attrs().get_double("dampening", 0.0);
  s.nesterov = ctx.attrs().get_int("nesterov", 0) != 0;
  s.weight_decay = ctx.attrs().get_double("weight_decay", 0.0);
  s.grad_scale = effective_grad_scale(ctx, 5);
  if (p.dtype == DType::kFloat32) {
    cpu::sgd_update(p.as<float>(), ctx.inputs[1].as<float>(), ctx.inputs[2].as<float>(), p.numel(), s);
  } else if (p.dtype == DType::kFloat64) {
    cpu::sgd_update(p.as<double>(), ctx.inputs[1].as<double>(), ctx.inputs[2].as<double>(), p.numel(), s);
  } else {
    return ctx.fail("unsupported dtype");
  }
  zero_if_asked(ctx, ctx.inputs[1]);
  return Status::ok();
}

// AllReduce(grad): grad = mean of grad over the ranks of the executor's communicator, in place (data parallelism).
// Without a communicator (a single process) it leaves the buffer as it is.
Status all_reduce_cpu(KernelContext& ctx) {
  const TensorRef& g = ctx.inputs[0];
  if (g.dtype != DType::kFloat32 && g.dtype != DType::kFloat64) return ctx.fail("unsupported dtype");
  if (!ctx.comm) return Status::ok();
  Status st = ctx.comm->all_reduce(g.data, static_cast<size_t>(g.numel()), g.dtype, ReduceOp::kAvg);
  return st.is_ok() ? st : ctx.fail(st.message());
}

}  // namespace

// An op of the galvatron domain that updates buffers in place and has no outputs.
static OpSchema in_place_op(const char* name, int min_inputs, int max_inputs, KernelFn cpu, const char* doc) {
  OpSchema s;
  s.domain = kGalvatronDomain;
  s.name = name;
  s.min_inputs = min_inputs;
  s.max_inputs = max_inputs;
  s.min_outputs = s.max_outputs = 0;
  s.infer = infer_nothing;
  s.cpu = cpu;
  s.doc = doc;
  return s;
}

void register_training_ops(OpRegistry& r) {
  r.add(in_place_op("AccumulateGrad", 2, 2, accumulate_cpu,
                    "acc += grad, in place (gradient accumulation over micro-batches)"));
  r.add(in_place_op("AllReduce", 1, 1, all_reduce_cpu,
                    "in-place mean of a gradient buffer across the ranks of the communicator (data parallelism)"));
  r.add(in_place_op("AdamW", 6, 7, adamw_cpu, "AdamW update of one parameter in place (PyTorch semantics)"));
  r.add(in_place_op("SGD", 5, 6, sgd_cpu, "SGD with momentum, update of one parameter in place (PyTorch semantics)"));

  OpSchema norm;
  norm.domain = kGalvatronDomain;
  norm.name = "GradNorm";
  norm.min_inputs = 1;
  norm.max_inputs = 1 << 20;
  norm.infer = infer_grad_norm;
  norm.cpu = grad_norm_cpu;
  norm.doc = "global L2 norm of all gradients, times attr scale";
  r.add(norm);
}

}  // namespace gv

// The project's training ops (domain "galvatron"): gradient accumulation, global gradient norm, and the optimizers.
// They update persistent buffers (ValueKind::kState, parameters) in place and have no outputs, except GradNorm.
// One static plan holds forward, backward and these nodes; see runtime/training_graph.h.
// Parallel attributes: AllReduce and GradNorm take `group` (world ranks; empty = the whole world); AdamW and SGD take
// `shard_offset` (ZeRO-2: the gradient and optimizer state cover the parameter's flat range starting there).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "kernels/cpu/optimizer.h"
#include "kernels/split_float32.h"
#include "runtime/communicator.h"
#include "runtime/op_registry.h"
#include "runtime/ops/all_ops.h"
#include "runtime/ops/math_common.h"

namespace gv {
namespace {

// A float32 parameter's gradient may be bfloat16 (a reduced bf16 gradient read by AdamW as it is).
bool grad_type_ok(DType param, DType grad) {
  return grad == param || (param == DType::kFloat32 && grad == DType::kBFloat16);
}

Status infer_nothing(InferContext& ctx) {
  if (ctx.num_inputs() >= 2 && ctx.has_input(1) && ctx.dtype(1) != ctx.dtype(0)) return ctx.fail("input dtypes differ");
  if (ctx.num_inputs() >= 2 && ctx.has_input(1) && ctx.shape(0) != ctx.shape(1)) {
    return ctx.fail("buffer " + shape_str(ctx.shape(0)) + " and gradient " + shape_str(ctx.shape(1)) + " differ");
  }
  return Status::ok();
}

// AdamW / SGD: with attr shard_offset >= 0 the gradient and the state buffers (inputs 1 .. 1 + num_state) hold the
// parameter's flat range [shard_offset, shard_offset + numel(grad)); without it their shapes equal the parameter's.
Status infer_update(InferContext& ctx, int num_state) {
  const int64_t offset = ctx.attrs().get_int("shard_offset", -1);
  if (offset < 0) return infer_nothing(ctx);
  // A float32 parameter's gradient shard may be bfloat16 (ZeRO-2's bf16 reduce-scatter), its state float32.
  if (!grad_type_ok(ctx.dtype(0), ctx.dtype(1))) return ctx.fail("input dtypes differ");
  const int64_t n = shape_numel(ctx.shape(1)), whole = shape_numel(ctx.shape(0));
  if (offset + n > whole) {
    return ctx.fail("gradient shard [" + std::to_string(offset) + ", " + std::to_string(offset + n) +
                    ") lies outside the parameter's " + std::to_string(whole) + " elements (attr shard_offset)");
  }
  for (int i = 2; i < 2 + num_state; ++i) {
    if (shape_numel(ctx.shape(i)) != n || ctx.dtype(i) != ctx.dtype(0)) {
      return ctx.fail("optimizer state input " + std::to_string(i) + " (" + dtype_name(ctx.dtype(i)) + " " +
                      shape_str(ctx.shape(i)) + ") must hold the gradient shard's " + std::to_string(n) +
                      " elements in the parameter's type (" + dtype_name(ctx.dtype(0)) + ")");
    }
  }
  return Status::ok();
}
// With attr sum_squares = 1 an update also adds the sum of squares of its unscaled gradient to a float64 scalar, its
// input `index` (the gradient norm taken inside the updates: GradNormBegin / GradNormEnd below).
bool adds_sum_squares(const Attributes& attrs) { return attrs.get_int("sum_squares", 0) != 0; }
Status infer_sum_squares_input(InferContext& ctx, int index) {
  if (!adds_sum_squares(ctx.attrs())) return Status::ok();
  if (index >= ctx.num_inputs() || !ctx.has_input(index) || ctx.dtype(index) != DType::kFloat64 ||
      !ctx.shape(index).empty()) {
    return ctx.fail("attr sum_squares = 1 needs input " + std::to_string(index) + ": a float64 scalar accumulator");
  }
  return Status::ok();
}
// A float32, bf16 (a reduced bf16 gradient: the squares of its exact widening) or float64 gradient's squares, summed
// in double (GradNorm's per-tensor sums, and the updates' with attr sum_squares).
double grad_sum_squares(const TensorRef& g) {
  if (g.dtype == DType::kFloat64) return cpu::sum_squares(g.as<double>(), g.numel());
  if (g.dtype == DType::kFloat32) return cpu::sum_squares(g.as<float>(), g.numel());
  std::vector<float> wide(static_cast<size_t>(g.numel()));  // a reduced bf16 gradient: its exact widening
  convert_elements(g.data, DType::kBFloat16, wide.data(), DType::kFloat32, g.numel());
  return cpu::sum_squares(wide.data(), g.numel());
}

// AdamW's optional input 7, ParamBf16: the parameter's persistent bfloat16 copy (the products' operand), rewritten
// from the updated float32 values (runtime/training_graph.h optimizer_bf16_copies), in the updated range. Input 8:
// the sum-of-squares accumulator (attr sum_squares).
Status infer_adamw(InferContext& ctx) {
  GV_RETURN_IF_ERROR(infer_sum_squares_input(ctx, 8));
  if (ctx.num_inputs() >= 4 && ctx.dtype(1) == DType::kBFloat16 && ctx.attrs().get_int("shard_offset", -1) < 0) {
    // bf16 gradient of a float32 parameter: the moments are the parameter's.
    if (!grad_type_ok(ctx.dtype(0), ctx.dtype(1))) return ctx.fail("a bf16 gradient needs a float32 parameter");
    for (int i = 1; i < 4; ++i) {
      if (ctx.shape(i) != ctx.shape(0)) {
        return ctx.fail("buffer " + shape_str(ctx.shape(0)) + " and input " + std::to_string(i) + " " +
                        shape_str(ctx.shape(i)) + " differ");
      }
    }
    for (int i = 2; i < 4; ++i) {
      if (ctx.dtype(i) != DType::kFloat32) return ctx.fail("the moments must be float32 beside a bf16 gradient");
    }
  } else {
    GV_RETURN_IF_ERROR(infer_update(ctx, 2));
  }
  if (ctx.has_input(9)) {
    if (!ctx.has_input(7) || ctx.attrs().get_int("shard_offset", -1) >= 0) {
      return ctx.fail("ParamLow16 (input 9) needs ParamBf16 (input 7) and a whole-parameter update (no shard_offset)");
    }
    if (ctx.dtype(9) != DType::kUInt16 || ctx.shape(9) != ctx.shape(0)) {
      return ctx.fail("ParamLow16 must be the uint16 low halves of the float32 parameter " + shape_str(ctx.shape(0)) +
                      ", got " + dtype_name(ctx.dtype(9)) + " " + shape_str(ctx.shape(9)));
    }
  }
  if (!ctx.has_input(7)) return Status::ok();
  // With shard_offset only the shard's range of ParamBf16 is rewritten (ZeRO-2 gathers the copy's ranges afterwards).
  if (ctx.dtype(0) != DType::kFloat32 || ctx.dtype(7) != DType::kBFloat16 || ctx.shape(7) != ctx.shape(0)) {
    return ctx.fail("ParamBf16 must be the bfloat16 twin of the float32 parameter " + shape_str(ctx.shape(0)) +
                    ", got " + dtype_name(ctx.dtype(7)) + " " + shape_str(ctx.shape(7)));
  }
  return Status::ok();
}

// SplitFloat32(X float32) -> (Hi bfloat16, Lo uint16): X held as two halves (kernels/split_float32.h), the form in
// which AdamW with ParamLow16 keeps a weight's float32 master (runtime/split_masters.h). Hi and Lo may lie inside X's
// buffer (Value::stored_in).
Status infer_split_float32(InferContext& ctx) {
  if (ctx.dtype(0) != DType::kFloat32)
    return ctx.fail("input must be float32, got " + std::string(dtype_name(ctx.dtype(0))));
  ctx.set_output(0, DType::kBFloat16, ctx.shape(0));
  ctx.set_output(1, DType::kUInt16, ctx.shape(0));
  return Status::ok();
}
Status split_float32_cpu(KernelContext& ctx) {
  // The halves may lie inside X's own buffer (runtime/split_masters.h): split a copy of it.
  const std::vector<float> copy(ctx.inputs[0].as<float>(), ctx.inputs[0].as<float>() + ctx.inputs[0].numel());
  const float* x = copy.data();
  uint16_t* hi = static_cast<uint16_t*>(ctx.outputs[0].data);
  uint16_t* lo = static_cast<uint16_t*>(ctx.outputs[1].data);
  for (int64_t i = 0; i < ctx.inputs[0].numel(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, 4);
    const SplitFloat32 s = split_float32(bits);
    hi[i] = s.hi;
    lo[i] = s.lo;
  }
  return Status::ok();
}
Status infer_sgd(InferContext& ctx) {
  if (ctx.dtype(1) != ctx.dtype(0)) return ctx.fail("input dtypes differ");  // no bf16 gradients
  return infer_update(ctx, 1);
}

// The communicator of a node's attr `group` (world ranks; empty: the whole world). Null for one process, where the
// group must be empty or {0}.
Expected<Communicator*> group_comm(const KernelContext& ctx) {
  const std::vector<int64_t> g = ctx.attrs().get_ints("group");
  if (!ctx.comm) {
    if (g.empty() || (g.size() == 1 && g[0] == 0)) return static_cast<Communicator*>(nullptr);
    return ctx.fail("attr group of " + std::to_string(g.size()) + " ranks needs a communicator, but this executor "
                    "runs a single process");
  }
  if (g.empty()) return ctx.comm;
  auto c = ctx.comm->group(std::vector<int>(g.begin(), g.end()));
  if (!c) return ctx.fail(c.status().message());
  return *c;
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

// GradNormBegin() -> a float64 scalar 0, the accumulator that updates with attr sum_squares = 1 add their gradients'
// squares to; GradNormEnd(sum_squares) -> sqrt(sum_squares) * attr scale as a float32 scalar: GradNorm's result
// without its own pass over the gradients (runtime/updates_in_backward.cpp), equal to it up to the order of the sums.
Status infer_grad_norm_begin(InferContext& ctx) {
  ctx.set_output(0, DType::kFloat64, {});
  return Status::ok();
}
Status grad_norm_begin_cpu(KernelContext& ctx) {
  *ctx.outputs[0].as<double>() = 0.0;
  return Status::ok();
}
Status infer_grad_norm_end(InferContext& ctx) {
  if (ctx.dtype(0) != DType::kFloat64 || !ctx.shape(0).empty()) return ctx.fail("input must be a float64 scalar");
  ctx.set_output(0, DType::kFloat32, {});
  return Status::ok();
}
Status grad_norm_end_cpu(KernelContext& ctx) {
  const double s = *ctx.inputs[0].as<double>();
  *ctx.outputs[0].as<float>() = static_cast<float>(std::sqrt(s) * ctx.attrs().get_double("scale", 1.0));
  return Status::ok();
}

// GradNorm(g_1, ..., g_n) -> sqrt(sum_i weights[i] * sum of squares of g_i) * scale, as a float32 scalar.
// attrs: weights (floats, one per input, default 1: 0 or 1/k leave out replicated copies), all_reduce (0/1: sum the
// weighted squares over attr group before the root, for gradients sharded across processes), scale.
Status infer_grad_norm(InferContext& ctx) {
  const std::vector<float> w = ctx.attrs().get_floats("weights");
  if (!w.empty() && static_cast<int>(w.size()) != ctx.num_inputs()) {
    return ctx.fail("attr weights has " + std::to_string(w.size()) + " entries for " +
                    std::to_string(ctx.num_inputs()) + " inputs (one per input)");
  }
  ctx.set_output(0, DType::kFloat32, {});
  return Status::ok();
}

Status grad_norm_cpu(KernelContext& ctx) {
  const Attribute* wa = ctx.attrs().find("weights");
  double s = 0.0;
  for (size_t i = 0; i < ctx.inputs.size(); ++i) {
    const TensorRef& t = ctx.inputs[i];
    if (t.dtype != DType::kFloat32 && t.dtype != DType::kBFloat16 && t.dtype != DType::kFloat64) {
      return ctx.fail("unsupported dtype");
    }
    const double sq = grad_sum_squares(t);
    s += wa && i < wa->floats.size() ? static_cast<double>(wa->floats[i]) * sq : sq;
  }
  if (ctx.attrs().get_int("all_reduce", 0)) {
    GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));
    if (c) {
      Status st = c->all_reduce(&s, 1, DType::kFloat64, ReduceOp::kSum);
      if (!st.is_ok()) return ctx.fail(st.message());
    }
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

// The first updated element of the parameter: attr shard_offset (ZeRO-2), or 0 for the whole parameter.
int64_t shard_offset(const KernelContext& ctx) { return std::max<int64_t>(0, ctx.attrs().get_int("shard_offset", -1)); }

// AdamW(param, grad, m, v, lr, step, [grad_norm], [param_bf16], [sum_squares], [param_low16]); attrs beta1 beta2
// epsilon weight_decay grad_scale max_norm zero_grad shard_offset. Updates numel(grad) elements of param from
// shard_offset on (the whole parameter by default); param_bf16, when given, becomes the bf16 rounding of the updated
// parameter (as a Cast would give). With param_low16 the float32 parameter is (param_bf16, param_low16), the halves of
// SplitFloat32, and input 0 is neither read nor written (runtime/split_masters.h).
Status adamw_cpu(KernelContext& ctx) {
  const TensorRef& p = ctx.inputs[0];
  const int64_t off = shard_offset(ctx), n = ctx.inputs[1].numel();
  cpu::AdamWParams a;
  a.lr = ctx.inputs[4].dtype == DType::kFloat64 ? *ctx.inputs[4].as<double>() : *ctx.inputs[4].as<float>();
  a.step = *ctx.inputs[5].as<int64_t>();
  a.beta1 = ctx.attrs().get_double("beta1", 0.9);
  a.beta2 = ctx.attrs().get_double("beta2", 0.999);
  a.eps = ctx.attrs().get_double("epsilon", 1e-8);
  a.weight_decay = ctx.attrs().get_double("weight_decay", 0.01);
  a.grad_scale = effective_grad_scale(ctx, 6);
  if (p.dtype == DType::kFloat32) {
    const float* g = ctx.inputs[1].as<float>();
    std::vector<float> wide;
    if (ctx.inputs[1].dtype == DType::kBFloat16) {  // the exact widening of a reduced bf16 gradient
      wide.resize(static_cast<size_t>(n));
      convert_elements(ctx.inputs[1].data, DType::kBFloat16, wide.data(), DType::kFloat32, n);
      g = wide.data();
    }
    if (ctx.has_input(9)) {  // the master as its two halves: joined, updated, split again
      uint16_t* hi = static_cast<uint16_t*>(ctx.inputs[7].data);
      uint16_t* lo = static_cast<uint16_t*>(ctx.inputs[9].data);
      std::vector<float> master(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = join_float32(hi[i], lo[i]);
        std::memcpy(&master[i], &bits, 4);
      }
      cpu::adamw_update(master.data(), g, ctx.inputs[2].as<float>(), ctx.inputs[3].as<float>(), n, a);
      for (int64_t i = 0; i < n; ++i) {
        uint32_t bits;
        std::memcpy(&bits, &master[i], 4);
        const SplitFloat32 sp = split_float32(bits);
        hi[i] = sp.hi;
        lo[i] = sp.lo;
      }
    } else {
      cpu::adamw_update(p.as<float>() + off, g, ctx.inputs[2].as<float>(), ctx.inputs[3].as<float>(), n, a);
    }
    if (ctx.has_input(7) && !ctx.has_input(9)) {
      convert_elements(p.as<float>() + off, DType::kFloat32, static_cast<uint16_t*>(ctx.inputs[7].data) + off,
                       DType::kBFloat16, n);
    }
  } else if (p.dtype == DType::kFloat64) {
    cpu::adamw_update(p.as<double>() + off, ctx.inputs[1].as<double>(), ctx.inputs[2].as<double>(),
                      ctx.inputs[3].as<double>(), n, a);
  } else {
    return ctx.fail("unsupported dtype");
  }
  if (adds_sum_squares(ctx.attrs())) *ctx.inputs[8].as<double>() += grad_sum_squares(ctx.inputs[1]);
  zero_if_asked(ctx, ctx.inputs[1]);
  return Status::ok();
}

// AdamWMulti(lr, step, grad_norm or omitted, param_1, grad_1, m_1, v_1, ..., param_k, grad_k, m_k, v_k
// [, sum_squares]): AdamW's update (the same attributes, no shard_offset) of k whole parameters in one node, so that a
// model's hundreds of bias and norm vectors cost one kernel launch per chunk instead of one each
// (runtime/training_graph.cpp groups them). With attr sum_squares = 1 the last input is the accumulator.
int multi_groups_end(const Attributes& attrs, int num_inputs) {
  return adds_sum_squares(attrs) ? num_inputs - 1 : num_inputs;
}
Status infer_adamw_multi(InferContext& ctx) {
  const int n = multi_groups_end(ctx.attrs(), ctx.num_inputs());
  GV_RETURN_IF_ERROR(infer_sum_squares_input(ctx, n));
  if (n < 7 || (n - 3) % 4 != 0) return ctx.fail("inputs must be lr, step, grad_norm, then four per parameter");
  if (ctx.attrs().get_int("shard_offset", -1) >= 0) return ctx.fail("shard_offset is not supported (whole parameters)");
  for (int i = 3; i < n; i += 4) {
    if (ctx.dtype(i) != DType::kFloat32 && ctx.dtype(i) != DType::kFloat64) {
      return ctx.fail("parameter input " + std::to_string(i) + " must be float32 or float64");
    }
    for (int j = 1; j < 4; ++j) {
      if (ctx.dtype(i + j) != ctx.dtype(i) || shape_numel(ctx.shape(i + j)) != shape_numel(ctx.shape(i))) {
        return ctx.fail("inputs " + std::to_string(i) + " .. " + std::to_string(i + 3) +
                        " (parameter, gradient, m, v) must have one dtype and size");
      }
    }
  }
  return Status::ok();
}

Status adamw_multi_cpu(KernelContext& ctx) {
  cpu::AdamWParams a;
  a.lr = ctx.inputs[0].dtype == DType::kFloat64 ? *ctx.inputs[0].as<double>() : *ctx.inputs[0].as<float>();
  a.step = *ctx.inputs[1].as<int64_t>();
  a.beta1 = ctx.attrs().get_double("beta1", 0.9);
  a.beta2 = ctx.attrs().get_double("beta2", 0.999);
  a.eps = ctx.attrs().get_double("epsilon", 1e-8);
  a.weight_decay = ctx.attrs().get_double("weight_decay", 0.01);
  a.grad_scale = effective_grad_scale(ctx, 2);
  const size_t end = static_cast<size_t>(multi_groups_end(ctx.attrs(), static_cast<int>(ctx.inputs.size())));
  double* sum_squares = end < ctx.inputs.size() ? ctx.inputs[end].as<double>() : nullptr;
  for (size_t i = 3; i + 3 < end; i += 4) {
    const TensorRef &p = ctx.inputs[i], &g = ctx.inputs[i + 1], &m = ctx.inputs[i + 2], &v = ctx.inputs[i + 3];
    if (sum_squares) *sum_squares += grad_sum_squares(g);
    if (p.dtype == DType::kFloat32) {
      cpu::adamw_update(p.as<float>(), g.as<float>(), m.as<float>(), v.as<float>(), p.numel(), a);
    } else {
      cpu::adamw_update(p.as<double>(), g.as<double>(), m.as<double>(), v.as<double>(), p.numel(), a);
    }
    zero_if_asked(ctx, g);
  }
  return Status::ok();
}

// SGD(param, grad, momentum_buffer, lr, step, [grad_norm]); attrs momentum dampening nesterov weight_decay ...
// shard_offset (as AdamW's).
Status sgd_cpu(KernelContext& ctx) {
  const TensorRef& p = ctx.inputs[0];
  const int64_t off = shard_offset(ctx), n = ctx.inputs[1].numel();
  cpu::SgdParams s;
  s.lr = ctx.inputs[3].dtype == DType::kFloat64 ? *ctx.inputs[3].as<double>() : *ctx.inputs[3].as<float>();
  s.step = *ctx.inputs[4].as<int64_t>();
  s.momentum = ctx.attrs().get_double("momentum", 0.0);
  s.dampening = ctx.attrs().get_double("dampening", 0.0);
  s.nesterov = ctx.attrs().get_int("nesterov", 0) != 0;
  s.weight_decay = ctx.attrs().get_double("weight_decay", 0.0);
  s.grad_scale = effective_grad_scale(ctx, 5);
  if (p.dtype == DType::kFloat32) {
    cpu::sgd_update(p.as<float>() + off, ctx.inputs[1].as<float>(), ctx.inputs[2].as<float>(), n, s);
  } else if (p.dtype == DType::kFloat64) {
    cpu::sgd_update(p.as<double>() + off, ctx.inputs[1].as<double>(), ctx.inputs[2].as<double>(), n, s);
  } else {
    return ctx.fail("unsupported dtype");
  }
  zero_if_asked(ctx, ctx.inputs[1]);
  return Status::ok();
}

// AllReduce(grad): grad = mean (attr reduction "mean", the default) or sum ("sum") of grad over attr group (world
// ranks; default the whole world), in place (data parallelism); float32, float64 or bfloat16 (bf16_grad_reduce). Without a communicator (a single process) it leaves
// the buffer as it is. Attr async = 1 (overlap_grad_sync, runtime/training_graph.h): the CUDA kernel uses
// Communicator::all_reduce_async, so the buffer is final only after the next WaitCollectives; the CPU kernel blocks
// as without it.
Status infer_all_reduce(InferContext& ctx) {
  const std::string r = ctx.attrs().get_string("reduction", "mean");
  if (r != "mean" && r != "sum") return ctx.fail("attr reduction is '" + r + "': use mean or sum");
  return infer_nothing(ctx);
}

Status all_reduce_cpu(KernelContext& ctx) {
  const TensorRef& g = ctx.inputs[0];
  if (g.dtype != DType::kFloat32 && g.dtype != DType::kFloat64 && g.dtype != DType::kBFloat16) {
    return ctx.fail(std::string("gradient of ") + dtype_name(g.dtype) + ": float32, float64 or bfloat16 only");
  }
  GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));
  if (!c) return Status::ok();
  const ReduceOp op = ctx.attrs().get_string("reduction", "mean") == "sum" ? ReduceOp::kSum : ReduceOp::kAvg;
  Status st = c->all_reduce(g.data, static_cast<size_t>(g.numel()), g.dtype, op);
  return st.is_ok() ? st : ctx.fail(st.message());
}

// WaitCollectives(buffers...): every async collective issued so far (AllReduce, ReduceScatter, GatherShardsInPlace with
// async = 1) is complete before the nodes after it run; with attr keep_pending = k, all but the last k issued (ZeRO-2's
// prefetched gathers). Its inputs are only read: they list buffers that collectives in flight still read or write, so
// that the memory planner keeps them alive until here. CPU: nothing to do (the CPU kernels block). CUDA:
// Communicator::wait_async / wait_async_but_last (runtime/cuda_parallel_ops).
// WaitUpdates(buffers...) likewise for the updates issued beside the backward (move_updates_into_backward); CUDA:
// the default stream waits for the second stream (runtime/cuda_kernels_ops.cpp).
Status nothing_cpu(KernelContext&) { return Status::ok(); }
Status infer_any(InferContext&) { return Status::ok(); }

// The inputs AdamW writes: the parameter, the moments, the bf16 copy, the sum of squares and the low halves; the
// gradient only when it zeroes it (zero_grad); never the learning rate, step or gradient norm (4-6).
bool adamw_writes_input(const Node& n, size_t i) {
  if (i == 1) return n.attrs.get_int("zero_grad", 0) != 0;
  return i < 4 || i > 6;
}
// AdamWMulti's: each group's parameter and moments (its gradient with zero_grad) and the trailing sum of squares; not
// the learning rate, step or gradient norm (0-2).
bool adamw_multi_writes_input(const Node& n, size_t i) {
  if (i < 3) return false;
  if (static_cast<int>(i) >= multi_groups_end(n.attrs, static_cast<int>(n.inputs.size()))) return true;
  return (i - 3) % 4 != 1 || n.attrs.get_int("zero_grad", 0) != 0;
}

// SGD's: the parameter and the momentum buffer, the gradient only with zero_grad; never lr, step, grad_norm (3-5).
bool sgd_writes_input(const Node& n, size_t i) {
  if (i == 1) return n.attrs.get_int("zero_grad", 0) != 0;
  return i == 0 || i == 2;
}

}  // namespace

// An op of the galvatron domain that updates buffers in place and has no outputs.
static OpSchema in_place_op(const char* name, int min_inputs, int max_inputs, KernelFn cpu, const char* doc) {
  return math::make_schema(kGalvatronDomain, name, min_inputs, max_inputs, 0, 0, infer_nothing, cpu, doc);
}

void register_training_ops(OpRegistry& r) {
  OpSchema accumulate = in_place_op("AccumulateGrad", 2, 2, accumulate_cpu,
                                    "acc += grad, in place (gradient accumulation over micro-batches)");
  accumulate.writes_first_input_only = true;
  r.add(accumulate);
  OpSchema all_reduce = in_place_op("AllReduce", 1, 1, all_reduce_cpu,
                                    "in-place mean (or sum) of a gradient buffer across a group of ranks (attrs "
                                    "group, reduction)");
  all_reduce.infer = infer_all_reduce;
  r.add(all_reduce);
  OpSchema wait = in_place_op("WaitCollectives", 0, 1 << 20, nothing_cpu,
                              "waits for the async collectives issued so far (attr async = 1) and keeps the buffers "
                              "they use (its inputs) alive until then; no-op on the CPU");
  wait.infer = infer_any;  // any buffers, of any shapes and dtypes
  wait.reads_only = true;
  r.add(wait);
  OpSchema wait_updates = in_place_op("WaitUpdates", 0, 1 << 20, nothing_cpu,
                                      "waits for the optimizer updates issued beside the backward (attr "
                                      "beside_backward = 1) and keeps the buffers they read (its inputs) alive until "
                                      "then; no-op on the CPU");
  wait_updates.infer = infer_any;
  wait_updates.reads_only = true;
  r.add(wait_updates);
  OpSchema adamw = in_place_op("AdamW", 6, 10, adamw_cpu,
                               "AdamW update of one parameter (or its flat range from shard_offset) in place; its "
                               "bf16 copy (input 7) rewritten from the result; with attr sum_squares, the gradient's "
                               "squares added to input 8; with input 9 the parameter held as (input 7, input 9)");
  adamw.infer = infer_adamw;
  adamw.writes_input = adamw_writes_input;
  r.add(adamw);
  OpSchema multi = in_place_op("AdamWMulti", 7, 3 + 4 * 1024, adamw_multi_cpu,
                               "AdamW updates of several whole parameters in place: (lr, step, grad_norm?, then "
                               "param, grad, m, v per parameter, then with attr sum_squares the accumulator)");
  multi.infer = infer_adamw_multi;
  multi.writes_input = adamw_multi_writes_input;
  r.add(multi);
  OpSchema sgd = in_place_op("SGD", 5, 6, sgd_cpu,
                             "SGD with momentum, update of one parameter (or its flat range from shard_offset) in place");
  sgd.infer = infer_sgd;
  sgd.writes_input = sgd_writes_input;
  r.add(sgd);

  r.add(math::make_schema(
      kGalvatronDomain, "GradNorm", 1, 1 << 20, 1, 1, infer_grad_norm, grad_norm_cpu,
      "global L2 norm of all gradients (weighted, optionally all-reduced over a group), times attr scale"));
  r.add(math::make_schema(kGalvatronDomain, "SplitFloat32", 1, 1, 2, 2, infer_split_float32, split_float32_cpu,
                          "a float32 as (its bfloat16 rounding, its low 16 bits): AdamW's split master weights"));
  r.add(math::make_schema(kGalvatronDomain, "GradNormBegin", 0, 0, 1, 1, infer_grad_norm_begin, grad_norm_begin_cpu,
                          "a float64 scalar 0: the sum of squares that updates with attr sum_squares = 1 add to"));
  r.add(math::make_schema(
      kGalvatronDomain, "GradNormEnd", 1, 1, 1, 1, infer_grad_norm_end, grad_norm_end_cpu,
      "sqrt(sum of squares) times attr scale: the gradient norm the updates accumulated (GradNormBegin)"));
}

}  // namespace gv

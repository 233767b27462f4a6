// galvatron LinearCrossEntropy: a language model's head product and its cross-entropy loss as one op, so that the
// [N, V] logits and their gradient never exist whole (runtime/fuse_linear_cross_entropy.cpp forms it from
// SoftmaxCrossEntropyLoss(MatMul(X, W)) chains).
//
//   LinearCrossEntropy(X [N, K], W, labels [N]) -> loss, (dX1, dW1)?
//     loss = SoftmaxCrossEntropyLoss(X @ op(W), labels) with the same reduction ("mean" or "sum") and ignore_index;
//     op(W) = W^T for trans_w = 1 (W stored [V, K], PyTorch's Linear weight / a tied embedding), W for trans_w = 0
//     (W stored [K, V]). With three outputs, also the gradients of the loss for dLoss = 1, computed from the same
//     logits while they are at hand (the training graph's form: its backward only scales them by dLoss, and nothing
//     is recomputed); they take no gradient themselves.
//   LinearCrossEntropyGrad(dLoss, X, W, labels) -> dX [N, K], dW (W's shape); same attributes.
//     Recomputes each chunk of logits, turns it into dlogits = dLoss * scale * (softmax - onehot), then
//     dX = dlogits @ op(W)^T and dW += the chunk's share.
// Optional attr chunk_rows: rows of logits per chunk (default: what fits the kernels' budget); for tests.
//
// The CPU kernels go through the rows in chunks of at most kChunkBytes of logits; the CUDA kernels
// (kernels/cuda/linear_cross_entropy.cu) do the same on the device, in bf16 under the bf16 math mode.
#include <algorithm>
#include <vector>

#include "kernels/cpu/loss.h"
#include "kernels/cpu/matmul.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

constexpr int64_t kChunkBytes = int64_t{64} << 20;

struct LceDims {
  int64_t n = 0, k = 0, v = 0;
  bool trans_w = true;
  bool mean = true;
};

// Validates X (input xi), W (xi + 1) and labels (xi + 2) and reads the sizes.
Status check_lce(const InferContext& ctx, int xi, LceDims& d) {
  const std::string red = ctx.attrs().get_string("reduction", "mean");
  if (red != "mean" && red != "sum") return ctx.fail("reduction must be mean or sum, got '" + red + "'");
  d.mean = red == "mean";
  d.trans_w = ctx.attrs().get_int("trans_w", 1) != 0;
  GV_RETURN_IF_ERROR(expect_float(ctx, xi, "X"));
  const Shape &x = ctx.shape(xi), &w = ctx.shape(xi + 1), &l = ctx.shape(xi + 2);
  if (x.size() != 2) return ctx.fail("X must be [N, K], got " + shape_str(x));
  if (ctx.dtype(xi + 1) != ctx.dtype(xi) || w.size() != 2) {
    return ctx.fail("W must be a 2-D " + std::string(dtype_name(ctx.dtype(xi))) + " matrix, got " + shape_str(w));
  }
  d.n = x[0];
  d.k = x[1];
  d.v = d.trans_w ? w[0] : w[1];
  if ((d.trans_w ? w[1] : w[0]) != d.k) {
    return ctx.fail("W " + shape_str(w) + " does not match X " + shape_str(x) +
                    (d.trans_w ? " (trans_w = 1: W is [V, K])" : " (trans_w = 0: W is [K, V])"));
  }
  if (!is_index(ctx.dtype(xi + 2)) || l != Shape{d.n}) {
    return ctx.fail("labels must be int32 or int64 [" + std::to_string(d.n) + "], got " + shape_str(l));
  }
  return Status::ok();
}

LceDims dims_of(const KernelContext& ctx, int xi) {
  LceDims d;
  d.trans_w = ctx.attrs().get_int("trans_w", 1) != 0;
  d.mean = ctx.attrs().get_string("reduction", "mean") == "mean";
  d.n = ctx.inputs[xi].shape[0];
  d.k = ctx.inputs[xi].shape[1];
  d.v = d.trans_w ? ctx.inputs[xi + 1].shape[0] : ctx.inputs[xi + 1].shape[1];
  return d;
}

cpu::LossShape chunk_shape(const KernelContext& ctx, int64_t rows, int64_t v) {
  cpu::LossShape s;
  s.n = rows;
  s.c = v;
  s.has_ignore = ctx.attrs().has("ignore_index");
  s.ignore_index = ctx.attrs().get_int("ignore_index", 0);
  return s;
}

// Rows per chunk: attr chunk_rows when set (tests), else as many as fit kChunkBytes of logits.
template <typename T>
int64_t chunk_rows(const KernelContext& ctx, const LceDims& d) {
  int64_t r = ctx.attrs().get_int("chunk_rows", 0);
  if (r <= 0) r = kChunkBytes / (static_cast<int64_t>(sizeof(T)) * std::max<int64_t>(d.v, 1));
  return std::clamp<int64_t>(r, 1, std::max<int64_t>(d.n, 1));
}

Status bad_label(const KernelContext& ctx, const TensorRef& labels, int64_t pos, int64_t v) {
  const int64_t y = labels.dtype == DType::kInt32 ? labels.as<int32_t>()[pos] : labels.as<int64_t>()[pos];
  return ctx.fail("label " + std::to_string(y) + " at position " + std::to_string(pos) + " is outside [0, " +
                  std::to_string(v) + ")" +
                  (ctx.attrs().has("ignore_index")
                       ? " and is not ignore_index " + std::to_string(ctx.attrs().get_int("ignore_index", 0))
                       : ""));
}

// The chunk loop of both ops: the loss (when `loss`), and dX, dW for the loss gradient *dloss (when dx).
template <typename T, typename L>
int64_t run_chunks(const KernelContext& ctx, const LceDims& d, const T* x, const T* w, const L* labels, T* loss,
                   const T* dloss, T* dx, T* dw) {
  const int64_t rows = chunk_rows<T>(ctx, d);
  std::vector<T> logits(static_cast<size_t>(rows * d.v)), grad(dx ? logits.size() : 0);
  std::vector<double> pos_loss(loss ? static_cast<size_t>(d.n) : 0), pos_weight(pos_loss.size());
  double scale = 1.0;
  if (dx && d.mean) {
    const double total = cpu::loss_weight_total<T, L>(labels, nullptr, chunk_shape(ctx, d.n, d.v));
    scale = total > 0.0 ? 1.0 / total : 0.0;
  }
  for (int64_t r0 = 0; r0 < d.n; r0 += rows) {
    const int64_t r = std::min(rows, d.n - r0);
    const T* xc = x + r0 * d.k;
    cpu::gemm<T>(false, d.trans_w, r, d.v, d.k, 1.0, xc, w, 0.0, logits.data());
    const cpu::LossShape s = chunk_shape(ctx, r, d.v);
    if (loss) {
      const int64_t b = cpu::softmax_cross_entropy<T, L>(logits.data(), labels + r0, nullptr, s,
                                                         pos_loss.data() + r0, pos_weight.data() + r0, nullptr);
      if (b >= 0) return r0 + b;
    }
    if (!dx) continue;
    const int64_t b = cpu::softmax_cross_entropy_backward<T, L>(logits.data(), labels + r0, nullptr, s, dloss, false,
                                                                scale, nullptr, grad.data());
    if (b >= 0) return r0 + b;
    // dX rows = dlogits @ op(W)^T; dW (+)= the chunk's dlogits^T X (trans_w) or X^T dlogits.
    cpu::gemm<T>(false, !d.trans_w, r, d.k, d.v, 1.0, grad.data(), w, 0.0, dx + r0 * d.k);
    const double beta = r0 == 0 ? 0.0 : 1.0;
    if (d.trans_w) cpu::gemm<T>(true, false, d.v, d.k, r, 1.0, grad.data(), xc, beta, dw);
    else cpu::gemm<T>(true, false, d.k, d.v, r, 1.0, xc, grad.data(), beta, dw);
  }
  if (dx && d.n == 0) std::fill(dw, dw + d.v * d.k, T(0));
  if (loss) {
    double sum = 0.0, total = 0.0;
    for (int64_t i = 0; i < d.n; ++i) sum += pos_loss[i], total += pos_weight[i];
    *loss = static_cast<T>(d.mean ? (total > 0.0 ? sum / total : 0.0) : sum);
  }
  return -1;
}

// ---- LinearCrossEntropy ----

Status infer_lce(InferContext& ctx) {
  LceDims d;
  GV_RETURN_IF_ERROR(check_lce(ctx, 0, d));
  if (ctx.num_outputs() == 2) return ctx.fail("has 2 outputs: expected the loss alone, or the loss, dX and dW");
  ctx.set_output(0, ctx.dtype(0), Shape{});
  if (ctx.num_outputs() == 3) {
    ctx.set_output(1, ctx.dtype(0), ctx.shape(0));
    ctx.set_output(2, ctx.dtype(0), ctx.shape(1));
  }
  return Status::ok();
}

Status lce_cpu(KernelContext& ctx) {
  const LceDims d = dims_of(ctx, 0);
  const TensorRef& labels = ctx.inputs[2];
  const bool grads = ctx.outputs.size() == 3;
  int64_t bad = -1;
  GV_RETURN_IF_ERROR(dispatch_float(ctx.inputs[0].dtype, ctx, [&](auto t_tag) {
    using T = decltype(t_tag);
    const T one = T(1);
    (void)dispatch_index(labels.dtype, ctx, [&](auto l_tag) {
      using L = decltype(l_tag);
      bad = run_chunks<T, L>(ctx, d, ctx.inputs[0].as<T>(), ctx.inputs[1].as<T>(), labels.as<L>(),
                             ctx.outputs[0].as<T>(), &one, grads ? ctx.outputs[1].as<T>() : nullptr,
                             grads ? ctx.outputs[2].as<T>() : nullptr);
    });
  }));
  return bad >= 0 ? bad_label(ctx, labels, bad, d.v) : Status::ok();
}

// ---- LinearCrossEntropyGrad ----

Status infer_lce_grad(InferContext& ctx) {
  LceDims d;
  GV_RETURN_IF_ERROR(check_lce(ctx, 1, d));
  if (ctx.has_input(0) && (ctx.dtype(0) != ctx.dtype(1) || !ctx.shape(0).empty())) {
    return ctx.fail("dLoss must be a scalar of X's dtype");
  }
  ctx.set_output(0, ctx.dtype(1), ctx.shape(1));
  ctx.set_output(1, ctx.dtype(1), ctx.shape(2));
  return Status::ok();
}

Status lce_grad_cpu(KernelContext& ctx) {
  const LceDims d = dims_of(ctx, 1);
  const TensorRef& labels = ctx.inputs[3];
  int64_t bad = -1;
  GV_RETURN_IF_ERROR(dispatch_float(ctx.inputs[1].dtype, ctx, [&](auto t_tag) {
    using T = decltype(t_tag);
    (void)dispatch_index(labels.dtype, ctx, [&](auto l_tag) {
      using L = decltype(l_tag);
      bad = run_chunks<T, L>(ctx, d, ctx.inputs[1].as<T>(), ctx.inputs[2].as<T>(), labels.as<L>(), nullptr,
                             ctx.has_input(0) ? ctx.inputs[0].as<T>() : nullptr, ctx.outputs[0].as<T>(),
                             ctx.outputs[1].as<T>());
    });
  }));
  return bad >= 0 ? bad_label(ctx, labels, bad, d.v) : Status::ok();
}

bool is_constant_one(const Graph& g, ValueId v) {
  const Value& val = g.value(v);
  return val.kind == ValueKind::kConstant && val.data.defined() && val.data.numel() == 1 && val.data.scalar_f64(0) == 1.0;
}

Status lce_grad(GradBuilder& gb) {
  if (gb.num_outputs() == 3) {
    // The forward's dX1, dW1 scaled by dLoss (nothing to do for the constant 1 autograd seeds the loss with).
    if (gb.grad_output(1) != kNoValue || gb.grad_output(2) != kNoValue) {
      return invalid_argument("node '" + gb.node().name + "' (galvatron::LinearCrossEntropy): its gradient outputs "
                              "are not differentiable, but the loss depends on them");
    }
    const ValueId dloss = gb.grad_output(0);
    const bool one = is_constant_one(gb.graph(), dloss);
    for (int i = 0; i < 2; ++i) {
      if (gb.needs_grad(i)) gb.set_grad_input(i, one ? gb.output(1 + i) : gb.emit1("Mul", {gb.output(1 + i), dloss}));
    }
    return gb.status();
  }
  Attributes a;
  a.set_string("reduction", gb.attrs().get_string("reduction", "mean"));
  a.set_int("trans_w", gb.attrs().get_int("trans_w", 1));
  if (gb.attrs().has("ignore_index")) a.set_int("ignore_index", gb.attrs().get_int("ignore_index", 0));
  if (gb.attrs().has("chunk_rows")) a.set_int("chunk_rows", gb.attrs().get_int("chunk_rows", 0));
  const std::vector<ValueId> g = gb.emit("LinearCrossEntropyGrad",
                                         {gb.grad_output(0), gb.input(0), gb.input(1), gb.input(2)}, a, 2,
                                         kGalvatronDomain);
  if (g.size() != 2) return gb.status();
  for (int i = 0; i < 2; ++i) {
    if (gb.needs_grad(i)) gb.set_grad_input(i, g[i]);
  }
  return Status::ok();
}

}  // namespace

void register_linear_cross_entropy_ops(OpRegistry& r) {
  OpSchema lce = make_schema(kGalvatronDomain, "LinearCrossEntropy", 3, 3, 1, 3, infer_lce, lce_cpu,
                             "(X [N,K], W [V,K] or [K,V] (trans_w), labels [N]) -> cross-entropy of X op(W), "
                             "(dX, dW for dLoss = 1)?; logits in chunks");
  lce.grad = lce_grad;
  lce.nondiff_inputs = {2};
  r.add(lce);
  r.add(make_schema(kGalvatronDomain, "LinearCrossEntropyGrad", 4, 4, 2, 2, infer_lce_grad, lce_grad_cpu,
                    "(dLoss?, X, W, labels) -> dX, dW of LinearCrossEntropy, logits recomputed in chunks"));
}

}  // namespace gv::math

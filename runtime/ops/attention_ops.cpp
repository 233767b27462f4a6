// ONNX Attention (opset 23 semantics, 4-D and 3-D forms) and its fused gradient op galvatron AttentionGrad. The IR
// pass runtime/fuse_attention.cpp writes Attention nodes for the exporters' MatMul-scale-mask-Softmax-MatMul chains
// and runtime/fuse_attention_layout.cpp turns those between head transposes into the 3-D form; files may also contain
// them directly.
//
//   Attention(Q [B, Hq, S, D], K [B, Hkv, L, D], V [B, Hkv, L, Dv], attn_mask?) -> Y [B, Hq, S, Dv]
//     attn_mask: bool keep-flags (false: the score is -inf) or an additive float mask of Q's dtype, broadcastable to
//     [B, Hq, S, L] by numpy rules. Attributes: is_causal (0), scale (1/sqrt(D)), q_num_heads / kv_num_heads (the
//     3-D form: Q [B, S, Hq * D], K [B, L, Hkv * D], V [B, L, Hkv * Dv] -> Y [B, S, Hq * Dv];
//     runtime/ops/attention_form.h), softcap (must be 0), qk_matmul_output_mode (must be 0), softmax_precision
//     (ignored: sums are in double). Inputs past_key / past_value and outputs present_key / present_value /
//     qk_matmul_output are refused: training has no KV cache.
//   galvatron AttentionWithLse(Q, K, V, attn_mask?) -> Y, LSE [B, Hq, S]: Attention that also returns each query row's
//     log-sum-exp of its masked, scaled scores (+inf for a fully masked row), so that a flash backward need not
//     recompute it. runtime/attention_lse.cpp turns Attention nodes into it where the backend keeps these statistics
//     (Backend::saves_attention_statistics: the CUDA backend in bf16).
//   galvatron AttentionGrad(Q, K, V, attn_mask or omitted, dY, Y?, LSE?) -> dQ, dK, dV; the same attributes.
//     Probabilities are recomputed from Q, K and the mask; Y and LSE, when given (AttentionWithLse's outputs), let the
//     CUDA flash kernels skip recomputing the row statistics (the CPU ignores them: the same result).
//   Q, K, V (and dY, Y, a float mask) are float32, float64 or bfloat16, all of Q's dtype, and so are Y, dQ, dK, dV;
//   LSE is float32 for bfloat16 operands. bfloat16 is computed in float32 and rounded (the CPU widens the operands):
//   the training graph keeps a Llama attention's inputs and outputs in bf16 where only the attention and products
//   read them (runtime/bf16_attention_io.cpp), as cuDNN reads and writes them.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/attention.h"
#include "runtime/ops/all_ops.h"
#include "runtime/ops/attention_form.h"
#include "runtime/ops/attention_heads.h"
#include "runtime/ops/math_common.h"

namespace gv {
namespace {

using math::dispatch_float;
using math::is_float;
using math::make_schema;

constexpr int kMask = 3;

Status check_attrs(const InferContext& ctx) {
  const Attributes& a = ctx.attrs();
  if (a.has("softcap") && a.get_float("softcap", 0.0f) != 0.0f) {
    return ctx.fail("softcap " + std::to_string(a.get_float("softcap", 0.0f)) + " is not supported (only 0)");
  }
  if (a.get_int("qk_matmul_output_mode", 0) != 0) {
    return ctx.fail("qk_matmul_output_mode " + std::to_string(a.get_int("qk_matmul_output_mode", 0)) +
                    " is not supported (only 0: no qk_matmul_output)");
  }
  return Status::ok();
}

// Validates Q, K, V and the mask of an Attention or AttentionGrad node (either form) and reads its sizes.
Status check_operands(const InferContext& ctx, AttentionForm& f) {
  GV_RETURN_IF_ERROR(check_attrs(ctx));
  const char* names[3] = {"Q", "K", "V"};
  for (int i = 0; i < 3; ++i) {
    if (!ctx.has_input(i)) return ctx.fail(std::string("input ") + names[i] + " is required");
    if (!is_float(ctx.dtype(i)) && ctx.dtype(i) != DType::kBFloat16) {
      return ctx.fail(std::string(names[i]) + " must be float32, float64 or bfloat16, got " + dtype_name(ctx.dtype(i)));
    }
    if (ctx.dtype(i) != ctx.dtype(0)) {
      return ctx.fail(std::string(names[i]) + " is " + dtype_name(ctx.dtype(i)) + " but Q is " + dtype_name(ctx.dtype(0)));
    }
  }
  const std::string err = read_attention_form(ctx.shape(0), ctx.shape(1), ctx.shape(2), ctx.attrs(), f);
  if (!err.empty()) return ctx.fail(err);
  if (ctx.has_input(kMask)) {
    const DType mt = ctx.dtype(kMask);
    if (mt != DType::kBool && mt != ctx.dtype(0)) {
      return ctx.fail(std::string("attn_mask must be bool or ") + dtype_name(ctx.dtype(0)) + " (Q's dtype), got " +
                      dtype_name(mt));
    }
    const Shape& m = ctx.shape(kMask);
    const Shape full = {f.batch, f.q_heads, f.q_len, f.kv_len};
    bool ok = m.size() <= 4;
    for (size_t i = 0; ok && i < m.size(); ++i) {
      const int64_t d = m[m.size() - 1 - i], want = full[3 - i];
      ok = d == want || d == 1;
    }
    if (!ok) return ctx.fail("attn_mask " + shape_str(m) + " does not broadcast to " + shape_str(full));
  }
  return Status::ok();
}

Status infer_attention(InferContext& ctx) {
  if (ctx.num_inputs() > 4 && (ctx.has_input(4) || (ctx.num_inputs() > 5 && ctx.has_input(5)))) {
    return ctx.fail("past_key / past_value are not supported (training has no KV cache)");
  }
  if (ctx.num_outputs() > 1) {
    return ctx.fail("outputs present_key, present_value and qk_matmul_output are not supported (only Y)");
  }
  AttentionForm f;
  GV_RETURN_IF_ERROR(check_operands(ctx, f));
  ctx.set_output(0, ctx.dtype(0), f.y_shape());
  return Status::ok();
}

// The row statistics' dtype: Q's, float32 for bfloat16 operands.
DType lse_dtype(DType q) { return q == DType::kBFloat16 ? DType::kFloat32 : q; }

Status infer_attention_with_lse(InferContext& ctx) {
  AttentionForm f;
  GV_RETURN_IF_ERROR(check_operands(ctx, f));
  ctx.set_output(0, ctx.dtype(0), f.y_shape());
  ctx.set_output(1, lse_dtype(ctx.dtype(0)), {f.batch, f.q_heads, f.q_len});
  return Status::ok();
}

Status infer_attention_grad(InferContext& ctx) {
  AttentionForm f;
  GV_RETURN_IF_ERROR(check_operands(ctx, f));
  const Shape y = f.y_shape();
  if (!ctx.has_input(4) || ctx.shape(4) != y || ctx.dtype(4) != ctx.dtype(0)) {
    return ctx.fail("dY must be " + std::string(dtype_name(ctx.dtype(0))) + " " + shape_str(y));
  }
  if (ctx.has_input(5) != ctx.has_input(6)) return ctx.fail("Y and LSE are given together or not at all");
  if (ctx.has_input(5) && (ctx.shape(5) != y || ctx.dtype(5) != ctx.dtype(0))) {
    return ctx.fail("Y must be " + std::string(dtype_name(ctx.dtype(0))) + " " + shape_str(y));
  }
  const Shape lse = {f.batch, f.q_heads, f.q_len};
  if (ctx.has_input(6) && (ctx.shape(6) != lse || ctx.dtype(6) != lse_dtype(ctx.dtype(0)))) {
    return ctx.fail("LSE must be " + std::string(dtype_name(lse_dtype(ctx.dtype(0)))) + " " + shape_str(lse));
  }
  for (int i = 0; i < 3; ++i) ctx.set_output(i, ctx.dtype(i), ctx.shape(i));
  return Status::ok();
}

// Sizes, scale and mask view of a node's operands (already validated by inference).
AttentionForm describe(const KernelContext& ctx, cpu::AttentionShape& s, cpu::AttentionMask& m) {
  AttentionForm f;
  read_attention_form(ctx.inputs[0].shape, ctx.inputs[1].shape, ctx.inputs[2].shape, ctx.attrs(), f);
  s.batch = f.batch, s.q_heads = f.q_heads, s.q_len = f.q_len, s.head_dim = f.head_dim;
  s.kv_heads = f.kv_heads, s.kv_len = f.kv_len, s.v_head_dim = f.v_head_dim;
  s.scale = f.scale;
  s.causal = f.causal;
  if (!ctx.has_input(kMask)) return f;
  const TensorRef& mask = ctx.inputs[kMask];
  m.data = mask.data;
  m.is_bool = mask.dtype == DType::kBool;
  const Shape full = {s.batch, s.q_heads, s.q_len, s.kv_len};
  const int r = static_cast<int>(mask.shape.size());
  int64_t stride = 1;
  for (int d = 3; d >= 0; --d) {
    const int md = d - (4 - r);  // the mask's own dim, right-aligned
    m.strides[d] = (md < 0 || mask.shape[md] != full[d]) ? 0 : stride;
    if (md >= 0) stride *= mask.shape[md];
  }
  return f;
}

// The forward over typed buffers, either form: the 3-D form through head-major copies.
template <typename T>
void forward(const AttentionForm& f, const cpu::AttentionShape& s, const cpu::AttentionMask& m, const T* q, const T* k,
             const T* v, T* y, T* lse) {
  if (!f.three_d) {
    cpu::attention_forward(s, q, k, v, m, y, lse);
    return;
  }
  const int64_t B = s.batch, S = s.q_len, L = s.kv_len;
  const auto q4 = heads_first(q, B, S, s.q_heads, s.head_dim);
  const auto k4 = heads_first(k, B, L, s.kv_heads, s.head_dim);
  const auto v4 = heads_first(v, B, L, s.kv_heads, s.v_head_dim);
  std::vector<T> y4(static_cast<size_t>(B * s.q_heads * S * s.v_head_dim));
  cpu::attention_forward(s, q4.data(), k4.data(), v4.data(), m, y4.data(), lse);
  sequence_first(y4.data(), B, S, s.q_heads, s.v_head_dim, y);
}

template <typename T>
void backward(const AttentionForm& f, const cpu::AttentionShape& s, const cpu::AttentionMask& m, const T* q, const T* k,
              const T* v, const T* dy, T* dq, T* dk, T* dv) {
  if (!f.three_d) {
    cpu::attention_backward(s, q, k, v, m, dy, dq, dk, dv);
    return;
  }
  const int64_t B = s.batch, S = s.q_len, L = s.kv_len;
  const auto q4 = heads_first(q, B, S, s.q_heads, s.head_dim);
  const auto k4 = heads_first(k, B, L, s.kv_heads, s.head_dim);
  const auto v4 = heads_first(v, B, L, s.kv_heads, s.v_head_dim);
  const auto dy4 = heads_first(dy, B, S, s.q_heads, s.v_head_dim);
  std::vector<T> dq4(q4.size()), dk4(k4.size()), dv4(v4.size());
  cpu::attention_backward(s, q4.data(), k4.data(), v4.data(), m, dy4.data(), dq4.data(), dk4.data(), dv4.data());
  sequence_first(dq4.data(), B, S, s.q_heads, s.head_dim, dq);
  sequence_first(dk4.data(), B, L, s.kv_heads, s.head_dim, dk);
  sequence_first(dv4.data(), B, L, s.kv_heads, s.v_head_dim, dv);
}

// bfloat16 operands: float32 copies to compute on, and the results rounded back.
std::vector<float> widened(const TensorRef& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  const auto* b = static_cast<const uint16_t*>(t.data);
  for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_float(b[i]);
  return out;
}
void round_into(const std::vector<float>& x, const TensorRef& out) {
  auto* b = static_cast<uint16_t*>(out.data);
  for (size_t i = 0; i < x.size(); ++i) b[i] = float_to_bf16(x[i]);
}
// A bfloat16 additive mask, widened (a bool mask is read as it is).
std::vector<float> widen_mask(const KernelContext& ctx, cpu::AttentionMask& m) {
  std::vector<float> mask;
  if (ctx.has_input(kMask) && !m.is_bool && ctx.inputs[kMask].dtype == DType::kBFloat16) {
    mask = widened(ctx.inputs[kMask]);
    m.data = mask.data();
  }
  return mask;
}

// Attention, and AttentionWithLse (a second output: the rows' log-sum-exp).
Status attention_cpu(KernelContext& ctx) {
  cpu::AttentionShape s;
  cpu::AttentionMask m;
  const AttentionForm f = describe(ctx, s, m);
  const TensorRef &q = ctx.inputs[0], &k = ctx.inputs[1], &v = ctx.inputs[2];
  const bool with_lse = ctx.outputs.size() > 1 && ctx.outputs[1].data != nullptr;
  if (q.dtype == DType::kBFloat16) {
    const std::vector<float> mask = widen_mask(ctx, m);
    std::vector<float> y(static_cast<size_t>(ctx.outputs[0].numel()));
    forward(f, s, m, widened(q).data(), widened(k).data(), widened(v).data(), y.data(),
            with_lse ? ctx.outputs[1].as<float>() : nullptr);
    round_into(y, ctx.outputs[0]);
    return Status::ok();
  }
  return dispatch_float(q.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    forward(f, s, m, q.as<T>(), k.as<T>(), v.as<T>(), ctx.outputs[0].as<T>(),
            with_lse ? ctx.outputs[1].as<T>() : nullptr);
  });
}

Status attention_grad_cpu(KernelContext& ctx) {
  cpu::AttentionShape s;
  cpu::AttentionMask m;
  const AttentionForm f = describe(ctx, s, m);
  const TensorRef &q = ctx.inputs[0], &k = ctx.inputs[1], &v = ctx.inputs[2], &dy = ctx.inputs[4];
  if (q.dtype == DType::kBFloat16) {
    const std::vector<float> mask = widen_mask(ctx, m);
    std::vector<float> dq(static_cast<size_t>(q.numel())), dk(static_cast<size_t>(k.numel())),
        dv(static_cast<size_t>(v.numel()));
    backward(f, s, m, widened(q).data(), widened(k).data(), widened(v).data(), widened(dy).data(), dq.data(), dk.data(),
             dv.data());
    round_into(dq, ctx.outputs[0]);
    round_into(dk, ctx.outputs[1]);
    round_into(dv, ctx.outputs[2]);
    return Status::ok();
  }
  return dispatch_float(q.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    backward(f, s, m, q.as<T>(), k.as<T>(), v.as<T>(), dy.as<T>(), ctx.outputs[0].as<T>(), ctx.outputs[1].as<T>(),
             ctx.outputs[2].as<T>());
  });
}

// dQ, dK, dV from one AttentionGrad node; the mask gets no gradient. AttentionWithLse passes its Y and LSE along
// (LSE itself takes no gradient: nothing in the forward graph reads it).
Status attention_grad(GradBuilder& gb) {
  if (gb.num_outputs() == 2 && gb.grad_output(1) != kNoValue) {
    return invalid_argument("node '" + gb.node().name +
                            "' (galvatron::AttentionWithLse): its LSE output is not differentiable, but the loss "
                            "depends on it; read the statistics only in the backward (AttentionGrad)");
  }
  std::vector<ValueId> in = {gb.input(0), gb.input(1), gb.input(2), gb.input(kMask), gb.grad_output(0)};
  if (gb.num_outputs() == 2) in.insert(in.end(), {gb.output(0), gb.output(1)});
  const std::vector<ValueId> g = gb.emit("AttentionGrad", in, gb.attrs(), 3, kGalvatronDomain);
  if (g.size() != 3) return gb.status();
  for (int i = 0; i < 3; ++i) {
    if (gb.needs_grad(i)) gb.set_grad_input(i, g[i]);
  }
  return Status::ok();
}

}  // namespace

void register_attention_ops(OpRegistry& r) {
  OpSchema att = make_schema("", "Attention", 3, 6, 1, 4, infer_attention, attention_cpu,
                             "softmax(scale * Q K^T + mask, causal) V, 4-D or 3-D form, grouped-query heads; no KV cache");
  att.grad = attention_grad;
  att.nondiff_inputs = {kMask, 4, 5};
  r.add(att);
  OpSchema lse = make_schema(kGalvatronDomain, "AttentionWithLse", 3, 4, 2, 2, infer_attention_with_lse, attention_cpu,
                             "Attention that also returns each query row's log-sum-exp [B, Hq, S] for the backward");
  lse.grad = attention_grad;
  lse.nondiff_inputs = {kMask};
  r.add(lse);
  r.add(make_schema(kGalvatronDomain, "AttentionGrad", 5, 7, 3, 3, infer_attention_grad, attention_grad_cpu,
                    "(Q, K, V, mask?, dY, Y?, LSE?) -> dQ, dK, dV of Attention, probabilities recomputed"));
}

}  // namespace gv

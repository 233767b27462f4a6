// ONNX Attention (opset 23 semantics, 4-D form) and its fused gradient op galvatron AttentionGrad. The IR pass
// runtime/fuse_attention.cpp writes Attention nodes for the exporters' MatMul-scale-mask-Softmax-MatMul chains; files
// may also contain them directly.
//
//   Attention(Q [B, Hq, S, D], K [B, Hkv, L, D], V [B, Hkv, L, Dv], attn_mask?) -> Y [B, Hq, S, Dv]
//     attn_mask: bool keep-flags (false: the score is -inf) or an additive float mask of Q's dtype, broadcastable to
//     [B, Hq, S, L] by numpy rules. Attributes: is_causal (0), scale (1/sqrt(D)), q_num_heads / kv_num_heads (3-D form
//     only, ignored), softcap (must be 0), qk_matmul_output_mode (must be 0), softmax_precision (ignored: sums are in
//     double). Inputs past_key / past_value and outputs present_key / present_value / qk_matmul_output are refused:
//     training has no KV cache.
//   galvatron AttentionGrad(Q, K, V, attn_mask or omitted, dY) -> dQ, dK, dV; the same attributes. Probabilities are
//     recomputed from Q, K and the mask (nothing of the forward pass is saved but its inputs).
#include <cmath>

#include "kernels/cpu/attention.h"
#include "runtime/ops/all_ops.h"
#include "runtime/ops/math_common.h"

namespace gv {
namespace {

using math::dispatch_float;
using math::expect_float;
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

// Validates Q, K, V and the mask of an Attention or AttentionGrad node (the 4-D form).
Status check_operands(const InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_attrs(ctx));
  const char* names[3] = {"Q", "K", "V"};
  for (int i = 0; i < 3; ++i) {
    if (!ctx.has_input(i)) return ctx.fail(std::string("input ") + names[i] + " is required");
    GV_RETURN_IF_ERROR(expect_float(ctx, i, names[i]));
    if (ctx.dtype(i) != ctx.dtype(0)) {
      return ctx.fail(std::string(names[i]) + " is " + dtype_name(ctx.dtype(i)) + " but Q is " + dtype_name(ctx.dtype(0)));
    }
    if (ctx.rank(i) != 4) {
      return ctx.fail(std::string(names[i]) + " " + shape_str(ctx.shape(i)) +
                      " must have rank 4 [batch, heads, sequence, head size] (the 3-D form is not supported)");
    }
  }
  const Shape &q = ctx.shape(0), &k = ctx.shape(1), &v = ctx.shape(2);
  if (k[0] != q[0] || v[0] != q[0]) {
    return ctx.fail("batch sizes differ: Q " + shape_str(q) + ", K " + shape_str(k) + ", V " + shape_str(v));
  }
  if (k[1] != v[1] || k[1] <= 0 || q[1] % k[1] != 0) {
    return ctx.fail("K " + shape_str(k) + " and V " + shape_str(v) + " must have the same number of heads, dividing Q's " +
                    shape_str(q));
  }
  if (k[3] != q[3]) return ctx.fail("head sizes of Q " + shape_str(q) + " and K " + shape_str(k) + " differ");
  if (v[2] != k[2]) return ctx.fail("sequence lengths of K " + shape_str(k) + " and V " + shape_str(v) + " differ");
  if (ctx.has_input(kMask)) {
    const DType mt = ctx.dtype(kMask);
    if (mt != DType::kBool && mt != ctx.dtype(0)) {
      return ctx.fail(std::string("attn_mask must be bool or ") + dtype_name(ctx.dtype(0)) + " (Q's dtype), got " +
                      dtype_name(mt));
    }
    const Shape& m = ctx.shape(kMask);
    const Shape full = {q[0], q[1], q[2], k[2]};
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
  GV_RETURN_IF_ERROR(check_operands(ctx));
  const Shape &q = ctx.shape(0), &v = ctx.shape(2);
  ctx.set_output(0, ctx.dtype(0), {q[0], q[1], q[2], v[3]});
  return Status::ok();
}

Status infer_attention_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_operands(ctx));
  const Shape &q = ctx.shape(0), &v = ctx.shape(2);
  const Shape y = {q[0], q[1], q[2], v[3]};
  if (!ctx.has_input(4) || ctx.shape(4) != y || ctx.dtype(4) != ctx.dtype(0)) {
    return ctx.fail("dY must be " + std::string(dtype_name(ctx.dtype(0))) + " " + shape_str(y));
  }
  for (int i = 0; i < 3; ++i) ctx.set_output(i, ctx.dtype(i), ctx.shape(i));
  return Status::ok();
}

// Sizes, scale and mask view of a node's operands (already validated by inference).
void describe(const KernelContext& ctx, cpu::AttentionShape& s, cpu::AttentionMask& m) {
  const Shape &q = ctx.inputs[0].shape, &k = ctx.inputs[1].shape, &v = ctx.inputs[2].shape;
  s.batch = q[0], s.q_heads = q[1], s.q_len = q[2], s.head_dim = q[3];
  s.kv_heads = k[1], s.kv_len = k[2], s.v_head_dim = v[3];
  s.scale = ctx.attrs().has("scale") ? ctx.attrs().get_float("scale", 1.0f)
                                     : static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  s.causal = ctx.attrs().get_int("is_causal", 0) != 0;
  if (!ctx.has_input(kMask)) return;
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
}

Status attention_cpu(KernelContext& ctx) {
  cpu::AttentionShape s;
  cpu::AttentionMask m;
  describe(ctx, s, m);
  const TensorRef &q = ctx.inputs[0], &k = ctx.inputs[1], &v = ctx.inputs[2];
  return dispatch_float(q.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_forward(s, q.as<T>(), k.as<T>(), v.as<T>(), m, ctx.outputs[0].as<T>());
  });
}

Status attention_grad_cpu(KernelContext& ctx) {
  cpu::AttentionShape s;
  cpu::AttentionMask m;
  describe(ctx, s, m);
  const TensorRef &q = ctx.inputs[0], &k = ctx.inputs[1], &v = ctx.inputs[2], &dy = ctx.inputs[4];
  return dispatch_float(q.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_backward(s, q.as<T>(), k.as<T>(), v.as<T>(), m, dy.as<T>(), ctx.outputs[0].as<T>(),
                            ctx.outputs[1].as<T>(), ctx.outputs[2].as<T>());
  });
}

// dQ, dK, dV from one AttentionGrad node; the mask gets no gradient.
Status attention_grad(GradBuilder& gb) {
  const std::vector<ValueId> g =
      gb.emit("AttentionGrad", {gb.input(0), gb.input(1), gb.input(2), gb.input(kMask), gb.grad_output(0)},
              gb.attrs(), 3, kGalvatronDomain);
  if (g.size() != 3) return gb.status();
  for (int i = 0; i < 3; ++i) {
    if (gb.needs_grad(i)) gb.set_grad_input(i, g[i]);
  }
  return Status::ok();
}

}  // namespace

void register_attention_ops(OpRegistry& r) {
  OpSchema att = make_schema("", "Attention", 3, 6, 1, 4, infer_attention, attention_cpu,
                             "softmax(scale * Q K^T + mask, causal) V, 4-D form, grouped-query heads; no KV cache");
  att.grad = attention_grad;
  att.nondiff_inputs = {kMask, 4, 5};
  r.add(att);
  r.add(make_schema(kGalvatronDomain, "AttentionGrad", 5, 5, 3, 3, infer_attention_grad, attention_grad_cpu,
                    "(Q, K, V, mask?, dY) -> dQ, dK, dV of Attention, probabilities recomputed"));
}

}  // namespace gv

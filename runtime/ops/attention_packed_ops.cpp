// Attention over a packed QKV tensor, so that a layer's QKV product output is read in place instead of being split
// into Q, K, V copies (and their gradients concatenated back). runtime/attention_packed.cpp forms these from
// Split -> AttentionWithLse where the backend's flash kernels read strided heads.
//
//   galvatron AttentionPacked(QKV [B, S, 3 * H * D]) -> Y [B, S, H * D], LSE [B, H, S]
//     Q, K, V are QKV's three [B, S, H * D] blocks along the last axis (ONNX Attention's 3-D form each, H query and
//     key/value heads). Attributes: num_heads (H), is_causal, scale (default 1/sqrt(D)), y_dtype (ONNX type of Y: 1
//     float32 or 16 bfloat16, computed in float32 and rounded; default float32, or float64 for float64 QKV).
//   galvatron AttentionPackedGrad(QKV, dY, Y, LSE) -> dQKV [B, S, 3 * H * D], [dQKVSums [1, 1, 3 * H * D]];
//     attribute out_dtype (ONNX type: 1 float32, the default, or 16 bfloat16: computed in float32 and rounded, for a
//     dQKV that only its bf16 copy reads; runtime/bf16_operands.cpp sets it). dQKVSums (optional): the sums of dQKV
//     (as output, so of the bf16 values when out_dtype is 16) over B and S, BiasGrad's keepdims result on it: the QKV
//     bias gradient, taken as the kernel writes dQKV (runtime/attention_grad_bias_sums.cpp).
// QKV, Y and dY may be bfloat16 (runtime/bf16_attention_io.cpp: what cuDNN's attention reads anyway); the computation
// is then float32 over the widened values, LSE float32. float64 QKV: everything float64.
// Saved padded heads (attribute saved_head_dim Dp >= D; runtime/attention_saved_heads.cpp): AttentionPacked also
// outputs QKVp bf16 [B, S, 3 * H * Dp] and Yp bf16 [B, S, H * Dp], QKV and Y rounded to bf16 with each head padded
// from D to Dp elements by zeros (the copies cuDNN's attention computes on), and AttentionPackedGrad takes them as
// inputs 4 and 5, so that its backward needs no copies of QKV and Y of its own. They are copies: the CPU kernels
// compute from QKV and Y alone.
// The CPU kernels unpack and run the 4-D reference (kernels/cpu/attention.h); the result is bit-identical to
// Split + AttentionWithLse and its gradient + Concat.
#include <algorithm>
#include <vector>

#include "kernels/cpu/attention.h"
#include "runtime/ops/all_ops.h"
#include "runtime/ops/attention_form.h"
#include "runtime/ops/attention_heads.h"
#include "runtime/ops/math_common.h"

namespace gv {
namespace {

using math::dispatch_float;
using math::make_schema;

Status check_packed(const InferContext& ctx, AttentionForm& f) {
  const DType t = ctx.dtype(0);
  if (t != DType::kFloat32 && t != DType::kFloat64 && t != DType::kBFloat16) {
    return ctx.fail(std::string("QKV must be float32, bfloat16 or float64, got ") + dtype_name(t));
  }
  const std::string err = read_packed_attention_form(ctx.shape(0), ctx.attrs(), f);
  return err.empty() ? Status::ok() : ctx.fail(err);
}

// The type the op computes in: float64 for float64 QKV, float32 otherwise.
DType compute_type(DType qkv) { return qkv == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32; }

// The dtype an ONNX type attribute asks for: 1 (the default) the compute type, 16 bfloat16 (float32 computation).
Status result_dtype(const InferContext& ctx, const char* attr, DType& out) {
  const int64_t v = ctx.attrs().get_int(attr, 1);
  if (v != 1 && v != 16) return ctx.fail(std::string(attr) + " must be 1 (float32) or 16 (bfloat16)");
  const DType c = compute_type(ctx.dtype(0));
  if (v == 16 && c != DType::kFloat32) return ctx.fail(std::string(attr) + " 16 needs float32 or bfloat16 inputs");
  out = v == 16 ? DType::kBFloat16 : c;
  return Status::ok();
}

// The saved padded heads' shapes {QKVp, Yp} when attribute saved_head_dim is set (`on`); its checks.
Status saved_heads(const InferContext& ctx, const AttentionForm& f, bool& on, Shape (&shapes)[2]) {
  const int64_t dp = ctx.attrs().get_int("saved_head_dim", 0);
  on = dp != 0;
  if (!on) return Status::ok();
  if (dp < f.head_dim) {
    return ctx.fail("saved_head_dim " + std::to_string(dp) + " is less than the head size " +
                    std::to_string(f.head_dim));
  }
  if (compute_type(ctx.dtype(0)) != DType::kFloat32) return ctx.fail("saved_head_dim needs float32 or bfloat16 QKV");
  shapes[0] = {f.batch, f.q_len, 3 * f.q_heads * dp};
  shapes[1] = {f.batch, f.q_len, f.q_heads * dp};
  return Status::ok();
}

Status infer_packed(InferContext& ctx) {
  AttentionForm f;
  GV_RETURN_IF_ERROR(check_packed(ctx, f));
  DType y;
  GV_RETURN_IF_ERROR(result_dtype(ctx, "y_dtype", y));
  bool saved = false;
  Shape padded[2];
  GV_RETURN_IF_ERROR(saved_heads(ctx, f, saved, padded));
  if (saved != (ctx.num_outputs() == 4)) {
    return ctx.fail(saved ? "saved_head_dim needs the outputs QKVp and Yp (4 outputs)"
                          : "outputs QKVp and Yp need attribute saved_head_dim");
  }
  ctx.set_output(0, y, f.y_shape());
  ctx.set_output(1, compute_type(ctx.dtype(0)), {f.batch, f.q_heads, f.q_len});
  if (saved) {
    ctx.set_output(2, DType::kBFloat16, padded[0]);
    ctx.set_output(3, DType::kBFloat16, padded[1]);
  }
  return Status::ok();
}

Status infer_packed_grad(InferContext& ctx) {
  AttentionForm f;
  GV_RETURN_IF_ERROR(check_packed(ctx, f));
  const DType c = compute_type(ctx.dtype(0));
  const Shape y = f.y_shape(), lse = {f.batch, f.q_heads, f.q_len};
  const char* names[3] = {"dY", "Y", "LSE"};
  const Shape want[3] = {y, y, lse};
  for (int i = 1; i <= 3; ++i) {
    const bool bf16_ok = i < 3 && c == DType::kFloat32;  // dY and Y may be bf16 beside float32 or bf16 QKV
    const std::string types = std::string(dtype_name(c)) + (bf16_ok ? " or bfloat16" : "");
    if (!ctx.has_input(i) || ctx.shape(i) != want[i - 1] ||
        !(ctx.dtype(i) == c || (bf16_ok && ctx.dtype(i) == DType::kBFloat16))) {
      return ctx.fail(std::string(names[i - 1]) + " must be " + types + " " + shape_str(want[i - 1]));
    }
  }
  bool saved = false;
  Shape padded[2];
  GV_RETURN_IF_ERROR(saved_heads(ctx, f, saved, padded));
  const bool given = ctx.has_input(4) || ctx.has_input(5);
  if (given && !saved) return ctx.fail("inputs QKVp and Yp need attribute saved_head_dim");
  for (int i = 4; given && i <= 5; ++i) {
    const char* name = i == 4 ? "QKVp" : "Yp";
    if (!ctx.has_input(i) || ctx.dtype(i) != DType::kBFloat16 || ctx.shape(i) != padded[i - 4]) {
      return ctx.fail(std::string(name) + " must be bfloat16 " + shape_str(padded[i - 4]));
    }
  }
  DType out;
  GV_RETURN_IF_ERROR(result_dtype(ctx, "out_dtype", out));
  ctx.set_output(0, out, ctx.shape(0));
  if (ctx.num_outputs() > 1) ctx.set_output(1, c, {1, 1, ctx.shape(0)[2]});  // BiasGrad's keepdims sums
  return Status::ok();
}

cpu::AttentionShape shape_of(const AttentionForm& f) {
  cpu::AttentionShape s;
  s.batch = f.batch, s.q_heads = f.q_heads, s.kv_heads = f.kv_heads, s.q_len = f.q_len, s.kv_len = f.kv_len;
  s.head_dim = f.head_dim, s.v_head_dim = f.v_head_dim, s.scale = f.scale, s.causal = f.causal;
  return s;
}

// t's elements as T: t's own, or a bf16 t widened into `tmp`.
template <typename T>
const T* widened(const TensorRef& t, std::vector<T>& tmp) {
  if (t.dtype != DType::kBFloat16) return t.as<T>();
  tmp.resize(static_cast<size_t>(t.numel()));
  convert_elements(t.data, t.dtype, tmp.data(), sizeof(T) == 8 ? DType::kFloat64 : DType::kFloat32, t.numel());
  return tmp.data();
}

// Writes `out` from T values computed into `wide` (when out is bf16) or straight into out: `fill` gets the pointer.
template <typename T, typename F>
void write_result(const TensorRef& out, F&& fill) {
  if (out.dtype != DType::kBFloat16) return fill(out.as<T>());
  std::vector<T> wide(static_cast<size_t>(out.numel()));
  fill(wide.data());
  convert_elements(wide.data(), sizeof(T) == 8 ? DType::kFloat64 : DType::kFloat32, out.data, out.dtype,
                   out.numel());
}

// `heads` heads of d values -> `out`'s bf16 heads of dp (rounded to nearest even, zeros in the padding).
template <typename T>
void pad_heads_bf16(const T* src, int64_t heads, int64_t d, int64_t dp, const TensorRef& out) {
  auto* dst = static_cast<uint16_t*>(out.data);
  std::vector<uint16_t> head(static_cast<size_t>(d));
  for (int64_t h = 0; h < heads; ++h) {
    convert_elements(src + h * d, sizeof(T) == 8 ? DType::kFloat64 : DType::kFloat32, head.data(), DType::kBFloat16,
                     d);
    std::copy(head.begin(), head.end(), dst + h * dp);
    std::fill(dst + h * dp + d, dst + (h + 1) * dp, uint16_t{0});
  }
}

// QKV's rows hold Q, K, V side by side: block p starts p * H * D into each row of 3 * H * D.
Status packed_cpu(KernelContext& ctx) {
  AttentionForm f;
  read_packed_attention_form(ctx.inputs[0].shape, ctx.attrs(), f);
  const cpu::AttentionShape s = shape_of(f);
  const int64_t B = f.batch, S = f.q_len, H = f.q_heads, D = f.head_dim, hd = H * D;
  return dispatch_float(compute_type(ctx.inputs[0].dtype), ctx, [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> tmp;
    const T* qkv = widened(ctx.inputs[0], tmp);
    const auto q = heads_first(qkv, B, S, H, D, 3 * hd), k = heads_first(qkv + hd, B, S, H, D, 3 * hd),
               v = heads_first(qkv + 2 * hd, B, S, H, D, 3 * hd);
    std::vector<T> y(q.size());
    cpu::attention_forward(s, q.data(), k.data(), v.data(), cpu::AttentionMask{}, y.data(), ctx.outputs[1].as<T>());
    write_result<T>(ctx.outputs[0], [&](T* out) { sequence_first(y.data(), B, S, H, D, out); });
    if (ctx.outputs.size() == 4) {
      const int64_t dp = ctx.attrs().get_int("saved_head_dim", D);
      std::vector<T> y_rows(static_cast<size_t>(B * S * hd));
      sequence_first(y.data(), B, S, H, D, y_rows.data());
      // Y's saved copy is the bf16 Y, as the output holds it when that is bf16.
      pad_heads_bf16(y_rows.data(), B * S * H, D, dp, ctx.outputs[3]);
      pad_heads_bf16(qkv, B * S * 3 * H, D, dp, ctx.outputs[2]);
    }
  });
}

Status packed_grad_cpu(KernelContext& ctx) {
  AttentionForm f;
  read_packed_attention_form(ctx.inputs[0].shape, ctx.attrs(), f);
  const cpu::AttentionShape s = shape_of(f);
  const int64_t B = f.batch, S = f.q_len, H = f.q_heads, D = f.head_dim, hd = H * D;
  return dispatch_float(compute_type(ctx.inputs[0].dtype), ctx, [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> tmp_qkv, tmp_dy;
    const T* qkv = widened(ctx.inputs[0], tmp_qkv);
    const auto q = heads_first(qkv, B, S, H, D, 3 * hd), k = heads_first(qkv + hd, B, S, H, D, 3 * hd),
               v = heads_first(qkv + 2 * hd, B, S, H, D, 3 * hd),
               dy = heads_first(widened(ctx.inputs[1], tmp_dy), B, S, H, D);
    std::vector<T> dq(q.size()), dk(q.size()), dv(q.size());
    cpu::attention_backward(s, q.data(), k.data(), v.data(), cpu::AttentionMask{}, dy.data(), dq.data(), dk.data(),
                            dv.data());
    write_result<T>(ctx.outputs[0], [&](T* out) {
      sequence_first(dq.data(), B, S, H, D, out, 3 * hd);
      sequence_first(dk.data(), B, S, H, D, out + hd, 3 * hd);
      sequence_first(dv.data(), B, S, H, D, out + 2 * hd, 3 * hd);
    });
    // dQKVSums: BiasGrad of the dQKV just written, bit for bit.
    if (ctx.outputs.size() > 1) math::bias_grad_sums_cpu(ctx.outputs[0], ctx.outputs[1]);
  });
}

Status packed_grad(GradBuilder& gb) {
  for (int i = 2; i < gb.num_outputs(); ++i) {
    if (gb.grad_output(i) != kNoValue) {
      return invalid_argument("node '" + gb.node().name + "' (galvatron::AttentionPacked): its saved padded heads "
                              "are not differentiable, but the loss depends on them");
    }
  }
  if (gb.grad_output(1) != kNoValue) {
    return invalid_argument("node '" + gb.node().name +
                            "' (galvatron::AttentionPacked): its LSE output is not differentiable, but the loss "
                            "depends on it");
  }
  if (gb.grad_output(0) == kNoValue || !gb.needs_grad(0)) return gb.status();
  gb.set_grad_input(0, gb.emit1("AttentionPackedGrad", {gb.input(0), gb.grad_output(0), gb.output(0), gb.output(1)},
                                gb.attrs(), kGalvatronDomain));
  return gb.status();
}

}  // namespace

void register_attention_packed_ops(OpRegistry& r) {
  OpSchema fwd = make_schema(kGalvatronDomain, "AttentionPacked", 1, 1, 2, 4, infer_packed, packed_cpu,
                             "Attention over packed QKV [B, S, 3 * H * D] -> Y [B, S, H * D], LSE [B, H, S], "
                             "(saved_head_dim) QKVp, Yp");
  fwd.grad = packed_grad;
  r.add(std::move(fwd));
  OpSchema grad = make_schema(kGalvatronDomain, "AttentionPackedGrad", 4, 6, 1, 2, infer_packed_grad, packed_grad_cpu,
                              "(QKV, dY, Y, LSE, QKVp?, Yp?) -> dQKV of AttentionPacked, dQKVSums? (its sums over B "
                              "and S)");
  grad.bf16_outputs.copies = {0};
  r.add(std::move(grad));
}

}  // namespace gv

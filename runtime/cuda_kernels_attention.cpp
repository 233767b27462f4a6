// The CUDA kernels of fused attention: ONNX Attention (opset 23, 4-D and 3-D forms) and galvatron AttentionGrad, glue
// from KernelContext to kernels/cuda/attention.cu's launchers. Forms these launchers do not take (past key/value,
// extra outputs, softcap, operands other than float32, a mask of another dtype or shape) go to the fallback, which
// runs the CPU kernel (and reports its errors).
#ifdef GALVATRON_HAVE_CUDA
#include <cmath>
#include <initializer_list>
#include <string>

#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "runtime/cuda_kernels.h"
#include "runtime/ops/attention_form.h"

namespace gv {
namespace {

Status launch(const KernelContext& ctx, bool ok) {
  return ok ? Status::ok() : ctx.fail(std::string("CUDA kernel failed: ") + cuda::last_error());
}

// Every one of `ts` float32, or every one bf16 (the training graph's bf16 attention I/O): *bf16 says which.
bool one_float_type(std::initializer_list<const TensorRef*> ts, bool* bf16) {
  *bf16 = (*ts.begin())->dtype == DType::kBFloat16;
  for (const TensorRef* t : ts) {
    if (t->data == nullptr || (t->rank() != 4 && t->rank() != 3) ||
        t->dtype != (*bf16 ? DType::kBFloat16 : DType::kFloat32)) {
      return false;
    }
  }
  return true;
}

// Fills d from Q, K, V in either form (runtime/ops/attention_form.h), the optional mask (input mask_index; omitted or
// empty: none) and the attributes. False: a form the CUDA kernels do not take.
// *bf16: whether Q, K, V are bf16 (else float32).
bool attention_dims(const KernelContext& ctx, int mask_index, cuda::AttentionDims& d, AttentionForm& f, bool* bf16) {
  if (ctx.inputs.size() < 3) return false;
  const TensorRef &q = ctx.inputs[0], &k = ctx.inputs[1], &v = ctx.inputs[2];
  if (!one_float_type({&q, &k, &v}, bf16)) return false;
  if (!read_attention_form(q.shape, k.shape, v.shape, ctx.attrs(), f).empty()) return false;
  d = cuda::AttentionDims{};
  d.batch = f.batch;
  d.q_heads = f.q_heads;
  d.kv_heads = f.kv_heads;
  d.q_len = f.q_len;
  d.kv_len = f.kv_len;
  d.head_dim = f.head_dim;
  d.v_head_dim = f.v_head_dim;
  d.causal = f.causal;
  d.scale = f.scale;
  d.seq_major = f.three_d;
  if (ctx.has_input(mask_index) && ctx.inputs[mask_index].numel() > 0) {
    const TensorRef& m = ctx.inputs[mask_index];
    if (m.dtype == DType::kBool || m.dtype == DType::kUInt8) d.mask_is_bool = true;
    else if (m.dtype != DType::kFloat32) return false;
    // numpy broadcasting, right-aligned, to [B, Hq, S, L]: each mask dim is 1 (stride 0) or the target's size.
    const int64_t target[4] = {d.batch, d.q_heads, d.q_len, d.kv_len};
    const int rank = m.rank();
    if (rank > 4) return false;
    int64_t stride = 1;
    for (int i = rank - 1; i >= 0; --i) {
      const int t = 4 - rank + i;
      const int64_t n = m.shape[i];
      if (n != 1 && n != target[t]) return false;
      d.mask_strides[t] = n == 1 ? 0 : stride;
      stride *= n;
    }
    d.mask = m.data;
  }
  return true;
}

// Whether every output past the first `used` is absent or empty.
bool only_outputs(const KernelContext& ctx, size_t used) {
  for (size_t i = used; i < ctx.outputs.size(); ++i)
    if (ctx.outputs[i].data && ctx.outputs[i].numel() > 0) return false;
  return true;
}

bool output_ok(const TensorRef& t, const Shape& want, DType dtype = DType::kFloat32) {
  return t.dtype == dtype && t.shape == want && (t.data != nullptr || t.numel() == 0);
}
DType io_dtype(bool bf16) { return bf16 ? DType::kBFloat16 : DType::kFloat32; }
const uint16_t* bits(const TensorRef& t) { return static_cast<const uint16_t*>(t.data); }
uint16_t* bits_out(const TensorRef& t) { return static_cast<uint16_t*>(t.data); }

// Attention(Q, K, V, [attn_mask], [past_key], [past_value]) -> Y.
Status attention_cuda(KernelContext& ctx) {
  cuda::AttentionDims d;
  AttentionForm f;
  bool bf16 = false;
  if (!attention_dims(ctx, 3, d, f, &bf16)) return cuda_fallback_kernel(ctx);
  if (ctx.has_input(4) || ctx.has_input(5) || !only_outputs(ctx, 1) || ctx.outputs.empty()) {
    return cuda_fallback_kernel(ctx);
  }
  if (ctx.attrs().get_float("softcap", 0.0f) != 0.0f) return cuda_fallback_kernel(ctx);
  const TensorRef& y = ctx.outputs[0];
  if (!output_ok(y, f.y_shape(), io_dtype(bf16))) return cuda_fallback_kernel(ctx);
  const TensorRef &q = ctx.inputs[0], &k = ctx.inputs[1], &v = ctx.inputs[2];
  if (bf16) return launch(ctx, cuda::attention_bf16(d, bits(q), bits(k), bits(v), bits_out(y)));
  return launch(ctx, cuda::attention_f32(d, q.as<float>(), k.as<float>(), v.as<float>(), y.as<float>()));
}

// galvatron AttentionWithLse(Q, K, V) -> Y, LSE: cuDNN's or the flash forward writes both; forms neither takes go to
// the fallback (the CPU kernel computes both).
Status attention_with_lse_cuda(KernelContext& ctx) {
  cuda::AttentionDims d;
  AttentionForm f;
  bool bf16 = false;
  if (!attention_dims(ctx, 3, d, f, &bf16) || ctx.outputs.size() != 2 ||
      !(cuda::cudnn_attention_separate_supported(d) || cuda::flash_attention_eligible(d, false))) {
    return cuda_fallback_kernel(ctx);
  }
  const TensorRef &y = ctx.outputs[0], &lse = ctx.outputs[1];
  if (!output_ok(y, f.y_shape(), io_dtype(bf16)) || !output_ok(lse, {f.batch, f.q_heads, f.q_len})) {
    return cuda_fallback_kernel(ctx);
  }
  const TensorRef &q = ctx.inputs[0], &k = ctx.inputs[1], &v = ctx.inputs[2];
  if (bf16) return launch(ctx, cuda::attention_bf16(d, bits(q), bits(k), bits(v), bits_out(y), lse.as<float>()));
  return launch(ctx,
                cuda::attention_f32(d, q.as<float>(), k.as<float>(), v.as<float>(), y.as<float>(), lse.as<float>()));
}

// AttentionGrad(Q, K, V, [attn_mask], dY, [Y, LSE]) -> dQ, dK, dV (overwritten); Q, K, V, dY, Y and the results all
// float32 or all bf16.
Status attention_grad_cuda(KernelContext& ctx) {
  cuda::AttentionDims d;
  AttentionForm f;
  bool bf16 = false;
  if (!attention_dims(ctx, 3, d, f, &bf16) || ctx.inputs.size() < 5 || ctx.outputs.size() != 3) {
    return cuda_fallback_kernel(ctx);
  }
  const DType t = io_dtype(bf16);
  const TensorRef& dy = ctx.inputs[4];
  if (dy.data == nullptr || dy.dtype != t || dy.shape != f.y_shape()) return cuda_fallback_kernel(ctx);
  if (ctx.attrs().get_float("softcap", 0.0f) != 0.0f) return cuda_fallback_kernel(ctx);
  const TensorRef &dq = ctx.outputs[0], &dk = ctx.outputs[1], &dv = ctx.outputs[2];
  if (!output_ok(dq, ctx.inputs[0].shape, t) || !output_ok(dk, ctx.inputs[1].shape, t) ||
      !output_ok(dv, ctx.inputs[2].shape, t)) {
    return cuda_fallback_kernel(ctx);
  }
  const TensorRef* y = nullptr;  // AttentionWithLse's outputs, when given
  const float* lse = nullptr;
  if (ctx.has_input(5) && ctx.has_input(6)) {
    const TensorRef &yt = ctx.inputs[5], &lt = ctx.inputs[6];
    if (yt.dtype == t && yt.shape == f.y_shape() && lt.dtype == DType::kFloat32 &&
        lt.shape == Shape{f.batch, f.q_heads, f.q_len}) {
      y = &yt;
      lse = lt.as<float>();
    }
  }
  const TensorRef &q = ctx.inputs[0], &k = ctx.inputs[1], &v = ctx.inputs[2];
  if (bf16) {
    return launch(ctx, cuda::attention_grad_bf16(d, bits(q), bits(k), bits(v), bits(dy), bits_out(dq), bits_out(dk),
                                                 bits_out(dv), y ? bits(*y) : nullptr, lse));
  }
  return launch(ctx,
                cuda::attention_grad_f32(d, q.as<float>(), k.as<float>(), v.as<float>(), dy.as<float>(), dq.as<float>(),
                                         dk.as<float>(), dv.as<float>(), y ? y->as<float>() : nullptr, lse));
}

// galvatron AttentionPacked / AttentionPackedGrad: the sizes from QKV [B, S, 3 * H * D] (float32 or bf16); false where
// the flash kernels do not take them (the fallback runs the CPU kernels). Where cuDNN's fused attention takes the shape
// (both directions), it runs instead of the flash kernels (kernels/cuda/cudnn_attention.cpp).
bool packed_dims(const KernelContext& ctx, bool backward, cuda::AttentionDims& d, AttentionForm& f) {
  const TensorRef& qkv = ctx.inputs[0];
  if (qkv.data == nullptr || (qkv.dtype != DType::kFloat32 && qkv.dtype != DType::kBFloat16) || qkv.rank() != 3) {
    return false;
  }
  if (!read_packed_attention_form(qkv.shape, ctx.attrs(), f).empty()) return false;
  d = cuda::AttentionDims{};
  d.batch = f.batch;
  d.q_heads = d.kv_heads = f.q_heads;
  d.q_len = d.kv_len = f.q_len;
  d.head_dim = d.v_head_dim = f.head_dim;
  d.causal = f.causal;
  d.scale = f.scale;
  d.seq_major = true;
  return cuda::flash_attention_eligible(d, backward);
}

// A float32 or bf16 tensor of the given shape (data present unless empty).
bool mixed_ok(const TensorRef& t, const Shape& want) {
  return (t.dtype == DType::kFloat32 || t.dtype == DType::kBFloat16) && t.shape == want &&
         (t.data != nullptr || t.numel() == 0);
}

cuda::MixedTensor mixed(const TensorRef& t) { return {t.data, t.dtype == DType::kBFloat16}; }

// The saved padded heads' head size (attribute saved_head_dim) where the node has them, else 0.
int64_t saved_head_dim(const KernelContext& ctx) { return ctx.attrs().get_int("saved_head_dim", 0); }

Status attention_packed_cuda(KernelContext& ctx) {
  cuda::AttentionDims d;
  AttentionForm f;
  const int64_t dp = saved_head_dim(ctx);
  if (!packed_dims(ctx, false, d, f) || ctx.outputs.size() != (dp > 0 ? 4u : 2u)) return cuda_fallback_kernel(ctx);
  const TensorRef &y = ctx.outputs[0], &lse = ctx.outputs[1];
  if (!mixed_ok(y, f.y_shape()) || !output_ok(lse, {f.batch, f.q_heads, f.q_len})) return cuda_fallback_kernel(ctx);
  const bool y_bf16 = y.dtype == DType::kBFloat16;
  auto* qkv_p = dp > 0 ? static_cast<uint16_t*>(ctx.outputs[2].data) : nullptr;
  auto* y_p = dp > 0 ? static_cast<uint16_t*>(ctx.outputs[3].data) : nullptr;
  if (cuda::cudnn_attention_supported(d, true)) {  // cuDNN's fused attention where it takes both directions
    if (dp == cuda::cudnn_padded_head_dim(f.head_dim)) {  // the saved heads are cuDNN's own operands
      return launch(ctx, cuda::cudnn_attention_packed(d, mixed(ctx.inputs[0]), y.data, y_bf16, lse.as<float>(), qkv_p,
                                                      y_p));
    }
    if (!cuda::cudnn_attention_packed(d, mixed(ctx.inputs[0]), y.data, y_bf16, lse.as<float>())) {
      return launch(ctx, false);
    }
  } else if (!cuda::flash_attention_packed(d, mixed(ctx.inputs[0]), y.data, y_bf16, lse.as<float>())) {
    return launch(ctx, false);
  }
  // Saved heads of another size than cuDNN's (or for the flash kernels): copies of QKV and of the Y just written.
  const int64_t rows = f.batch * f.q_len, H = f.q_heads, D = f.head_dim;
  return launch(ctx, dp == 0 || (cuda::pack_heads_bf16(mixed(ctx.inputs[0]), rows * 3 * H, D, dp, qkv_p) &&
                                 cuda::pack_heads_bf16(mixed(y), rows * H, D, dp, y_p)));
}

Status attention_packed_grad_cuda(KernelContext& ctx) {
  cuda::AttentionDims d;
  AttentionForm f;
  if (!packed_dims(ctx, true, d, f) || (ctx.inputs.size() != 4 && ctx.inputs.size() != 6) || ctx.outputs.size() > 2) {
    return cuda_fallback_kernel(ctx);
  }
  const TensorRef &dy = ctx.inputs[1], &y = ctx.inputs[2], &lse = ctx.inputs[3], &dqkv = ctx.outputs[0];
  const Shape ys = f.y_shape(), ls = {f.batch, f.q_heads, f.q_len};
  if (!mixed_ok(dqkv, ctx.inputs[0].shape) || !mixed_ok(dy, ys) || !mixed_ok(y, ys) || lse.dtype != DType::kFloat32 ||
      lse.shape != ls) {
    return cuda_fallback_kernel(ctx);
  }
  // dQKVSums (runtime/attention_grad_bias_sums.cpp): float32 column sums of dQKV.
  float* sums = nullptr;
  if (ctx.outputs.size() == 2) {
    if (ctx.outputs[1].dtype != DType::kFloat32) return cuda_fallback_kernel(ctx);
    sums = ctx.outputs[1].as<float>();
  }
  const bool bf16 = dqkv.dtype == DType::kBFloat16;  // out_dtype 16: the QKV product's bf16 copy of dQKV
  if (cuda::cudnn_attention_supported(d, true)) {
    // The forward's saved padded heads, where they are cuDNN's operands: no copies of QKV and Y here.
    const bool saved = ctx.has_input(4) && ctx.has_input(5) &&
                       saved_head_dim(ctx) == cuda::cudnn_padded_head_dim(f.head_dim);
    return launch(ctx, cuda::cudnn_attention_packed_grad(
                           d, mixed(ctx.inputs[0]), mixed(dy), mixed(y), lse.as<float>(), dqkv.data, bf16,
                           saved ? static_cast<const uint16_t*>(ctx.inputs[4].data) : nullptr,
                           saved ? static_cast<const uint16_t*>(ctx.inputs[5].data) : nullptr, sums));
  }
  if (!cuda::flash_attention_packed_grad(d, mixed(ctx.inputs[0]), mixed(dy), mixed(y), lse.as<float>(), dqkv.data,
                                         bf16)) {
    return launch(ctx, false);
  }
  const int64_t rows = f.batch * f.q_len, cols = dqkv.shape[2];
  return launch(ctx,
                !sums || (bf16 ? cuda::column_sums_bf16(static_cast<const uint16_t*>(dqkv.data), sums, rows, cols, 1)
                               : cuda::column_sums_f32(dqkv.as<float>(), sums, rows, cols, 1)));
}

}  // namespace

void register_cuda_attention_kernels(OpRegistry& r) {
  if (OpSchema* s = r.find_mutable(kGalvatronDomain, "AttentionPacked")) s->cuda = cuda_profiled<attention_packed_cuda>;
  if (OpSchema* s = r.find_mutable(kGalvatronDomain, "AttentionPackedGrad")) {
    s->cuda = cuda_profiled<attention_packed_grad_cuda>;
  }
  // An op whose schema is not registered (yet) keeps no CUDA kernel.
  if (OpSchema* s = r.find_mutable("", "Attention")) s->cuda = cuda_profiled<attention_cuda>;
  if (OpSchema* s = r.find_mutable(kGalvatronDomain, "AttentionGrad")) s->cuda = cuda_profiled<attention_grad_cuda>;
  if (OpSchema* s = r.find_mutable(kGalvatronDomain, "AttentionWithLse")) {
    s->cuda = cuda_profiled<attention_with_lse_cuda>;
  }
}

}  // namespace gv
#endif

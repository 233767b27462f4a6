// The CUDA kernels of the ops Llama-style models add to GPT's: galvatron SiluMul / SiluMulGrad (SwiGLU's gate), ONNX
// RotaryEmbedding, and RMSNormalization (with its galvatron twin writing Y in bf16), SkipRMSNormalization (the
// residual add in the norm's row kernel) and RMSNormalizationGrad (with the residual stream's Addend); glue from
// KernelContext to kernels/cuda/silu_mul.h, kernels/cuda/rotary.h and the norms' row kernels. Other dtypes,
// position_ids, and a RotaryEmbedding writing in place go to the fallback, which runs the CPU kernel.
#ifdef GALVATRON_HAVE_CUDA
#include <string>

#include "kernels/cuda/device.h"
#include "kernels/cuda/norm_rows.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/rotary.h"
#include "kernels/cuda/silu_mul.h"
#include "runtime/cuda_kernels.h"
#include "runtime/ops/rotary_layout.h"

namespace gv {
namespace {

Status launch(const KernelContext& ctx, bool ok) {
  return ok ? Status::ok() : ctx.fail(std::string("CUDA kernel failed: ") + cuda::last_error());
}

bool f32_or_bf16(DType t) { return t == DType::kFloat32 || t == DType::kBFloat16; }

Status silu_mul_cuda(KernelContext& ctx) {
  const TensorRef &a = ctx.inputs[0], &b = ctx.inputs[1], &y = ctx.outputs[0];
  if (!f32_or_bf16(a.dtype) || b.dtype != a.dtype || !f32_or_bf16(y.dtype)) return cuda_fallback_kernel(ctx);
  return launch(
      ctx, cuda::silu_mul(a.data, b.data, a.dtype == DType::kBFloat16, y.data, y.dtype == DType::kBFloat16, a.numel()));
}

Status silu_mul_grad_cuda(KernelContext& ctx) {
  const TensorRef &dy = ctx.inputs[0], &a = ctx.inputs[1], &b = ctx.inputs[2];
  // dY float32, or bf16 beside bf16 A and B (the down projection's dX product writing it so:
  // runtime/bf16_operands.cpp).
  const bool dy_ok = dy.dtype == DType::kFloat32 || (dy.dtype == DType::kBFloat16 && a.dtype == DType::kBFloat16);
  if (!dy_ok || !f32_or_bf16(a.dtype) || b.dtype != a.dtype || ctx.outputs.size() != 2 || !ctx.outputs[0].data ||
      !ctx.outputs[1].data || !f32_or_bf16(ctx.outputs[0].dtype) || ctx.outputs[1].dtype != ctx.outputs[0].dtype) {
    return cuda_fallback_kernel(ctx);
  }
  return launch(ctx, cuda::silu_mul_grad(dy.data, dy.dtype == DType::kBFloat16, a.data, b.data,
                                         a.dtype == DType::kBFloat16, ctx.outputs[0].data, ctx.outputs[1].data,
                                         ctx.outputs[0].dtype == DType::kBFloat16, dy.numel()));
}

Status rotary_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &y = ctx.outputs[0];
  cpu::RotaryLayout l;
  const bool tables_f32 = ctx.inputs[1].dtype == DType::kFloat32 && ctx.inputs[2].dtype == DType::kFloat32;
  if (!f32_or_bf16(x.dtype) || y.dtype != x.dtype || !tables_f32 || ctx.has_input(3) || x.data == y.data ||
      !rotary_layout(ctx.attrs(), x.shape, l).empty()) {
    return cuda_fallback_kernel(ctx);
  }
  cuda::RotaryDims d;
  d.batch = l.batch, d.seq = l.seq, d.heads = l.heads, d.head_dim = l.head_dim, d.rotary_dim = l.rotary_dim;
  d.heads_first = l.heads_first;
  d.interleaved = l.interleaved;
  return launch(ctx, cuda::rotary_embedding(x.data, ctx.inputs[1].as<float>(), ctx.inputs[2].as<float>(), y.data,
                                            x.dtype == DType::kBFloat16, d));
}

// rows x cols of a norm over axes [axis, rank).
void norm_rows_cols(const KernelContext& ctx, const TensorRef& x, int64_t& rows, int64_t& cols) {
  int64_t axis = ctx.attrs().get_int("axis", -1);
  if (axis < 0) axis += x.rank();
  cols = 1;
  for (int64_t d = axis; d < x.rank(); ++d) cols *= x.shape[d];
  rows = cols > 0 ? x.numel() / cols : 0;
}

// ONNX RMSNormalization, and galvatron RMSNormalization with Y in bf16 (out_dtype 16: the row kernels round).
Status rms_norm_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &scale = ctx.inputs[1], &y = ctx.outputs[0];
  const bool y_bf16 = y.dtype == DType::kBFloat16;
  if (x.dtype != DType::kFloat32 || scale.dtype != DType::kFloat32 || (!y_bf16 && y.dtype != DType::kFloat32)) {
    return cuda_fallback_kernel(ctx);
  }
  int64_t rows, cols;
  norm_rows_cols(ctx, x, rows, cols);
  const float eps = static_cast<float>(ctx.attrs().get_double("epsilon", 1e-5));
  if (y_bf16) {
    if (!cuda::norm_rows_eligible(rows, cols, {x.data, scale.data, y.data})) return cuda_fallback_kernel(ctx);
    return launch(ctx, cuda::norm_rows_forward(false, x.as<float>(), scale.as<float>(), nullptr, y.data, true, nullptr,
                                               nullptr, rows, cols, eps));
  }
  return launch(ctx, cuda::rms_norm_f32(x.as<float>(), scale.as<float>(), y.as<float>(), rows, cols, eps));
}

// galvatron SkipRMSNormalization(X, Skip, Scale) -> (Y, Sum): X float32 or bf16 (the branch), Y float32 or bf16, the
// rest float32; the row kernel adds the stream as it loads the row and stores Sum beside Y.
Status skip_rms_norm_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &skip = ctx.inputs[1], &scale = ctx.inputs[2], &y = ctx.outputs[0];
  const bool sum16 = ctx.outputs.size() > 1 && ctx.outputs[1].dtype == DType::kBFloat16;
  const bool skip_ok = skip.dtype == DType::kFloat32 || (sum16 && skip.dtype == DType::kBFloat16);
  if (ctx.outputs.size() < 2 || !ctx.outputs[1].data || !f32_or_bf16(x.dtype) || !f32_or_bf16(y.dtype) || !skip_ok ||
      scale.dtype != DType::kFloat32 || (sum16 && x.dtype != DType::kBFloat16)) {
    return cuda_fallback_kernel(ctx);
  }
  const TensorRef& sum = ctx.outputs[1];
  const int64_t cols = x.shape.back(), rows = cols > 0 ? x.numel() / cols : 0;
  if (rows == 0) return Status::ok();
  if (!cuda::norm_rows_eligible(rows, cols, {x.data, skip.data, sum.data, scale.data, y.data})) {
    return cuda_fallback_kernel(ctx);
  }
  const float eps = static_cast<float>(ctx.attrs().get_double("epsilon", 1e-5));
  if (sum16) {  // the residual stream in bf16 (sum_dtype 16)
    return launch(ctx, cuda::norm_rows_skip_forward_bf16_sum(
                           false, static_cast<const uint16_t*>(x.data), skip.data, skip.dtype == DType::kBFloat16,
                           static_cast<uint16_t*>(sum.data), scale.as<float>(), nullptr, y.data,
                           y.dtype == DType::kBFloat16, nullptr, nullptr, rows, cols, eps));
  }
  return launch(ctx, cuda::norm_rows_skip_forward(false, x.data, x.dtype == DType::kBFloat16, skip.as<float>(),
                                                  sum.as<float>(), scale.as<float>(), nullptr, y.data,
                                                  y.dtype == DType::kBFloat16, nullptr, nullptr, rows, cols, eps));
}

// RMSNormalizationGrad(dY, X, scale, Addend?) -> (dX + Addend, dscale?, dXBf16?).
Status rms_norm_grad_cuda(KernelContext& ctx) {
  const TensorRef &dy = ctx.inputs[0], &x = ctx.inputs[1], &scale = ctx.inputs[2], &dx = ctx.outputs[0];
  float* dscale = ctx.outputs.size() > 1 ? ctx.outputs[1].as<float>() : nullptr;
  uint16_t* dx16 = ctx.outputs.size() > 2 ? static_cast<uint16_t*>(ctx.outputs[2].data) : nullptr;
  int64_t rows, cols;
  norm_rows_cols(ctx, x, rows, cols);
  const float eps = static_cast<float>(ctx.attrs().get_double("epsilon", 1e-5));
  if (x.dtype == DType::kBFloat16) {
    // A residual stream kept in bf16: X and the addend bf16, dY float32 or bf16, dX (float32) only where it has a
    // buffer.
    const TensorRef* addend = ctx.has_input(3) ? &ctx.inputs[3] : nullptr;
    if (!f32_or_bf16(dy.dtype) || scale.dtype != DType::kFloat32 || (addend && addend->dtype != DType::kBFloat16) ||
        rows == 0 || cols != x.shape.back() ||
        !cuda::norm_rows_eligible(rows, cols,
                                  {dy.data, x.data, scale.data, dx.data, addend ? addend->data : nullptr, dx16})) {
      return cuda_fallback_kernel(ctx);
    }
    return launch(ctx, cuda::norm_rows_backward_bf16_stream(
                           false, dy.data, dy.dtype == DType::kBFloat16, static_cast<const uint16_t*>(x.data),
                           scale.as<float>(), nullptr, nullptr, static_cast<float*>(dx.data), dscale, nullptr, rows,
                           cols, eps, addend ? static_cast<const uint16_t*>(addend->data) : nullptr, dx16, nullptr));
  }
  for (const TensorRef& t : ctx.inputs)
    if (t.data && t.dtype != DType::kFloat32) return cuda_fallback_kernel(ctx);
  if (!dx.data) return cuda_fallback_kernel(ctx);
  if (dx16) {  // the row kernels write the copy as they store dX
    if (!cuda::norm_rows_eligible(
            rows, cols, {dy.data, x.data, scale.data, dx.data, ctx.has_input(3) ? ctx.inputs[3].data : nullptr}) ||
        reinterpret_cast<uintptr_t>(dx16) % 8 != 0) {
      return cuda_fallback_kernel(ctx);
    }
    return launch(ctx, cuda::norm_rows_backward(false, dy.as<float>(), x.as<float>(), scale.as<float>(), nullptr,
                                                nullptr, dx.as<float>(), dscale, nullptr, rows, cols, eps,
                                                ctx.has_input(3) ? ctx.inputs[3].as<float>() : nullptr, dx16));
  }
  if (!ctx.has_input(3)) {
    return launch(ctx, cuda::rms_norm_grad_f32(dy.as<float>(), x.as<float>(), scale.as<float>(), dx.as<float>(), dscale,
                                               rows, cols, eps));
  }
  const TensorRef& addend = ctx.inputs[3];
  if (!cuda::norm_rows_eligible(rows, cols, {dy.data, x.data, scale.data, dx.data, addend.data})) {
    return cuda_fallback_kernel(ctx);
  }
  return launch(ctx, cuda::norm_rows_backward(false, dy.as<float>(), x.as<float>(), scale.as<float>(), nullptr, nullptr,
                                              dx.as<float>(), dscale, nullptr, rows, cols, eps, addend.as<float>()));
}

}  // namespace

void register_cuda_llama_kernels(OpRegistry& r) {
  auto set = [&r](const char* domain, const char* name, KernelFn k) {
    if (OpSchema* s = r.find_mutable(domain, name)) s->cuda = k;
  };
  set(kGalvatronDomain, "SiluMul", cuda_profiled<silu_mul_cuda>);
  set(kGalvatronDomain, "SiluMulGrad", cuda_profiled<silu_mul_grad_cuda>);
  set("", "RotaryEmbedding", cuda_profiled<rotary_cuda>);
  set("", "RMSNormalization", cuda_profiled<rms_norm_cuda>);
  set(kGalvatronDomain, "RMSNormalization", cuda_profiled<rms_norm_cuda>);
  set(kGalvatronDomain, "RMSNormalizationGrad", cuda_profiled<rms_norm_grad_cuda>);
  set(kGalvatronDomain, "SkipRMSNormalization", cuda_profiled<skip_rms_norm_cuda>);
}

}  // namespace gv
#endif

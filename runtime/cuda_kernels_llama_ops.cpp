// The CUDA kernels of the ops Llama-style models add to GPT's: galvatron SiluMul / SiluMulGrad (SwiGLU's gate) and
// ONNX RotaryEmbedding, glue from KernelContext to kernels/cuda/silu_mul.h and kernels/cuda/rotary.h. Other dtypes,
// position_ids, and a RotaryEmbedding writing in place go to the fallback, which runs the CPU kernel.
#ifdef GALVATRON_HAVE_CUDA
#include <string>

#include "kernels/cuda/device.h"
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
  if (dy.dtype != DType::kFloat32 || !f32_or_bf16(a.dtype) || b.dtype != a.dtype || ctx.outputs.size() != 2 ||
      !ctx.outputs[0].data || !ctx.outputs[1].data) {
    return cuda_fallback_kernel(ctx);
  }
  return launch(ctx, cuda::silu_mul_grad(dy.as<float>(), a.data, b.data, a.dtype == DType::kBFloat16,
                                         ctx.outputs[0].as<float>(), ctx.outputs[1].as<float>(), dy.numel()));
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

}  // namespace

void register_cuda_llama_kernels(OpRegistry& r) {
  auto set = [&r](const char* domain, const char* name, KernelFn k) {
    if (OpSchema* s = r.find_mutable(domain, name)) s->cuda = k;
  };
  set(kGalvatronDomain, "SiluMul", cuda_profiled<silu_mul_cuda>);
  set(kGalvatronDomain, "SiluMulGrad", cuda_profiled<silu_mul_grad_cuda>);
  set("", "RotaryEmbedding", cuda_profiled<rotary_cuda>);
}

}  // namespace gv
#endif

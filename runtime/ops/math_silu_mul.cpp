// galvatron SiluMul(A, B) -> Y = A * sigmoid(A) * B, the gated activation of Llama-style MLPs (SwiGLU: A the gate
// product, B the up product), and its gradient SiluMulGrad(dY, A, B) -> (dA, dB). runtime/fuse_silu_mul.cpp forms
// SiluMul from the exporters' Sigmoid / Mul / Mul chain: one pass forward and one backward where the chain took three
// kernels forward and about six backward over tensors of the MLP's width.
// Attribute out_dtype (1 float32, 16 bfloat16; default A's dtype, dY's for the gradient): the dtype Y (dA and dB) is
// written in, for values only products read (runtime/bf16_operands.cpp). SiluMulGrad's A and B may be bfloat16 beside
// a float32 dY (saved that way).
#include "kernels/cpu/silu_mul.h"
#include "runtime/ops/elementwise_common.h"
#include "runtime/ops/math_common.h"

namespace gv::math {
namespace {

bool is_float_or_half(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kBFloat16 || t == DType::kFloat16;
}

Status infer_silu_mul(InferContext& ctx) {
  if (!is_float_or_half(ctx.dtype(0))) {
    return ctx.fail(std::string("A must be a floating-point tensor, got ") + dtype_name(ctx.dtype(0)));
  }
  if (ctx.dtype(1) != ctx.dtype(0) || ctx.shape(1) != ctx.shape(0)) {
    return ctx.fail("B (" + std::string(dtype_name(ctx.dtype(1))) + " " + shape_str(ctx.shape(1)) +
                    ") must have A's dtype and shape (" + dtype_name(ctx.dtype(0)) + " " + shape_str(ctx.shape(0)) +
                    ")");
  }
  DType out = ctx.dtype(0);
  GV_RETURN_IF_ERROR(read_out_dtype(ctx, &out));
  ctx.set_output(0, out, ctx.shape(0));
  return Status::ok();
}

Status silu_mul_cpu(KernelContext& ctx) {
  const TensorRef &a = ctx.inputs[0], &b = ctx.inputs[1];
  return dispatch_float(a.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::silu_mul<T>(a.as<T>(), b.as<T>(), ctx.outputs[0].as<T>(), a.numel());
  });
}

Status silu_mul_grad(GradBuilder& gb) {
  if (gb.attrs().has("out_dtype")) return invalid_argument("SiluMul with out_dtype has no gradient rule");
  auto g = gb.emit("SiluMulGrad", {gb.grad_output(0), gb.input(0), gb.input(1)}, {}, 2, kGalvatronDomain);
  if (g.empty()) return gb.status();
  if (gb.needs_grad(0)) gb.set_grad_input(0, g[0]);
  if (gb.needs_grad(1)) gb.set_grad_input(1, g[1]);
  return gb.status();
}

Status infer_silu_mul_grad(InferContext& ctx) {
  const DType t = ctx.dtype(0);
  if (!is_float_or_half(t)) return ctx.fail(std::string("dY must be floating-point, got ") + dtype_name(t));
  for (int i : {1, 2}) {
    const DType s = ctx.dtype(i);
    if (ctx.shape(i) != ctx.shape(0) || !(s == t || (t == DType::kFloat32 && s == DType::kBFloat16))) {
      return ctx.fail(std::string(i == 1 ? "A" : "B") + " (" + dtype_name(s) + " " + shape_str(ctx.shape(i)) +
                      ") must have dY's shape " + shape_str(ctx.shape(0)) + " and dtype (or bfloat16 beside float32)");
    }
  }
  DType out = t;
  GV_RETURN_IF_ERROR(read_out_dtype(ctx, &out));
  for (int o = 0; o < ctx.num_outputs(); ++o) ctx.set_output(o, out, ctx.shape(0));
  return Status::ok();
}

Status silu_mul_grad_cpu(KernelContext& ctx) {
  const TensorRef& dy = ctx.inputs[0];
  return dispatch_float(dy.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    T* db = ctx.outputs.size() > 1 ? ctx.outputs[1].as<T>() : nullptr;
    cpu::silu_mul_grad<T>(dy.as<T>(), ctx.inputs[1].as<T>(), ctx.inputs[2].as<T>(), ctx.outputs[0].as<T>(), db,
                          dy.numel());
  });
}

}  // namespace

void register_silu_mul_ops(OpRegistry& r) {
  OpSchema s = make_schema(kGalvatronDomain, "SiluMul", 2, 2, 1, 1, infer_silu_mul,
                           elementwise::with_half_as_float<silu_mul_cpu>,
                           "(A, B) -> A * sigmoid(A) * B (SwiGLU's gate); attr out_dtype (1 float32, 16 bfloat16)");
  s.grad = silu_mul_grad;
  s.bf16_outputs.copies = {0};
  r.add(s);
  OpSchema g =
      make_schema(kGalvatronDomain, "SiluMulGrad", 3, 3, 1, 2, infer_silu_mul_grad,
                  elementwise::with_half_as_float<silu_mul_grad_cpu>,
                  "(dY, A, B) -> (dA, dB) of SiluMul; A, B may be bfloat16 beside a float32 dY; attr out_dtype");
  g.bf16_outputs.copies = {0, 1};  // one out_dtype for both
  r.add(g);
}

}  // namespace gv::math

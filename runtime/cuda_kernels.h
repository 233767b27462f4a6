// The CUDA backend's kernels (CUDA builds only): native kernels registered into OpSchema::cuda, and the fallback that
// runs an op's CPU kernel on host copies of its operands for ops without one.
#pragma once
#include <string>
#include <vector>

#include "runtime/op_registry.h"

namespace gv {

// Fills OpSchema::cuda of the ops that have native CUDA kernels (runtime/cuda_kernels_*.cpp). Called once by the
// CUDA backend before its first kernel lookup.
void register_cuda_kernels(OpRegistry& r);
void register_cuda_attention_kernels(OpRegistry& r);  // Attention, AttentionGrad (cuda_kernels_attention.cpp)
void register_cuda_llama_kernels(OpRegistry& r);      // SiluMul(Grad), RotaryEmbedding (cuda_kernels_llama_ops.cpp)

// Copies the inputs to host buffers, runs the op's CPU kernel, copies the outputs back, and writes back every input
// the CPU kernel changed (the in-place training ops). Correct for every op with a CPU kernel; slow.
Status cuda_fallback_kernel(KernelContext& ctx);

// "domain::Op" (domain empty for ONNX ops) of each op the CUDA backend handed the fallback kernel so far in this
// process, sorted. With GALVATRON_VERBOSE set, the backend also prints each one once, to stderr.
std::vector<std::string> cuda_fallback_ops();
// Native kernels that ran a call on the host so far (operands of a dtype they lack): "domain::op (dtypes)".
std::vector<std::string> cuda_runtime_fallbacks();
void note_cuda_fallback(const OpSchema& schema);

// GALVATRON_CUDA_PROFILE=1: every CUDA kernel run (native or fallback) is timed with device events, per op type; the
// table (total ms, calls, share) goes to stderr when the process exits. Off by default (no events, no syncs).
bool cuda_profiling();
// Times one kernel run under `name` when profiling is on.
Status cuda_profiled_run(const std::string& name, KernelFn k, KernelContext& ctx);
// The kernel to register: F, timed under "domain::Op" when profiling is on. Collectives on the compute stream count
// their stream-0 time: an async one its launch, WaitCollectives the wait (the communication left exposed).
template <KernelFn F>
Status cuda_profiled(KernelContext& ctx) {
  if (!cuda_profiling()) return F(ctx);
  return cuda_profiled_run(ctx.node->domain + "::" + ctx.node->op_type, F, ctx);
}

// Whether matrix products may use TF32 tensor cores (default off: float32 products are exact float32). Also
// settable with GALVATRON_CUDA_TF32=1.
void set_cuda_allow_tf32(bool allow);

}  // namespace gv

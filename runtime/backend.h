// The backend interface: where buffers live and which kernel runs a node. The CPU backend is always built; the CUDA
// backend (kernels/cuda, runtime/cuda_backend.cpp) only where nvcc is found.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/op_registry.h"

namespace gv {

enum class DeviceKind { kCpu, kCuda };

// Kernels a backend recorded (Backend::record: a CUDA graph), replayed as one launch with the buffers and scalars
// they were recorded with.
class RecordedWork {
 public:
  virtual ~RecordedWork() = default;
  virtual Status replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;
  virtual Expected<void*> allocate(size_t bytes) = 0;
  virtual void release(void* ptr) = 0;
  virtual Status copy_from_host(void* dst, const void* src, size_t bytes) = 0;
  virtual Status copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual Status copy(void* dst, const void* src, size_t bytes) = 0;
  virtual Status zero(void* ptr, size_t bytes) = 0;
  // The kernel this backend runs for the op, or null when it has none.
  virtual KernelFn kernel(const OpSchema& schema) const = 0;
  // Ops ("domain::name") for which kernel() has handed out a host fallback so far (the CUDA backend: ops without a
  // native kernel, run on host copies of their operands); empty where every kernel is native.
  virtual std::vector<std::string> host_fallback_ops() const { return {}; }
  // Ops whose native kernel has handed a run's operands to the CPU so far (a dtype it lacks), as "domain::op (dtype,
  // ...)"; known only once the kernels have run.
  virtual std::vector<std::string> runtime_host_fallbacks() const { return {}; }
  virtual Status synchronize() { return Status::ok(); }
  // Records the kernels `issue` launches, without running them, for replay (the CUDA backend: a CUDA graph of its
  // compute stream). An error when this backend does not record (the CPU: `unsupported`) or when something `issue`
  // launched could not be recorded (a kernel that synchronizes with the host, a host fallback); nothing ran then.
  virtual Expected<std::unique_ptr<RecordedWork>> record(const std::function<Status()>& issue) {
    (void)issue;
    return unsupported("the " + name() + " backend does not record kernels");
  }
  // What the matrix products compute in (`--precision`): "fp32" everywhere; the CUDA backend also takes "tf32" and
  // "bf16" (tensor cores on rounded operands; storage, accumulation and master weights stay float32).
  virtual Status set_precision(const std::string& precision) {
    if (precision == "fp32") return Status::ok();
    return invalid_argument("--precision " + precision + " needs --device cuda: the " + name() +
                            " backend computes in float32 only (use --precision fp32)");
  }
  // Whether this backend's attention kernels, in the current precision, take the forward's row log-sum-exp in the
  // backward (galvatron AttentionWithLse; TrainingGraphOptions::save_attention_lse): the CUDA backend in bf16.
  virtual bool saves_attention_statistics() const { return false; }
  // Whether this backend, in the current precision, rounds product operands to bfloat16 anyway, so that the training
  // graph may hold one shared bf16 copy per operand (TrainingGraphOptions::bf16_operands): the CUDA backend in bf16.
  virtual bool shares_bf16_operands() const { return false; }
  // Whether this backend runs galvatron Linear (a product with its bias and GELU in one node) faster than the chain,
  // so that the training graph fuses them (TrainingGraphOptions::fuse_linear): the CUDA backend in bf16.
  virtual bool fuses_linear() const { return false; }
  // Whether narrow Linears of one input (grouped-query K and V products) run faster as one product over their weights'
  // Concat and a Split (TrainingGraphOptions::fuse_sibling_linears): the CUDA backend with fuses_linear.
  virtual bool fuses_sibling_linears() const { return false; }
  // Whether this backend runs galvatron GeluGradMatMul (a backward product with the GELU and bias gradients in its
  // epilogue) faster than the chain (TrainingGraphOptions::fuse_gelu_grad_product): the CUDA backend in bf16.
  virtual bool fuses_gelu_grad_product() const { return false; }
  // Whether this backend's attention kernels read Q, K, V in place from one packed QKV tensor (galvatron
  // AttentionPacked; TrainingGraphOptions::pack_attention_qkv): the CUDA backend's flash kernels.
  virtual bool packs_attention_qkv() const { return false; }
  // Whether this backend's packed attention reads and writes bfloat16 anyway, so that the training graph stores its
  // QKV, Y and dY in bf16 where only attention reads them (TrainingGraphOptions::bf16_attention_io): CUDA in bf16.
  virtual bool bf16_attention_io() const { return false; }
  // The residual stream between the norms in bf16 (TrainingGraphOptions::bf16_residual_stream): CUDA in bf16.
  virtual bool bf16_residual_stream() const { return false; }
  // Whether this backend adds a residual in a Linear's epilogue (TrainingGraphOptions::fuse_residual_add), and a
  // gradient addend in LayerNormalizationGrad's store (fuse_norm_grad_add), faster than separate Adds: the CUDA
  // backend in bf16.
  virtual bool fuses_residual_add() const { return false; }
  virtual bool fuses_norm_grad_add() const { return false; }
  // Whether LayerNormalizationGrad should write its dX's bf16 copy and that copy's bias sums itself
  // (TrainingGraphOptions::fuse_norm_grad_outputs): the CUDA backend in bf16, whose row kernel stores them as it goes.
  virtual bool fuses_norm_grad_outputs() const { return false; }
  // Whether LayerNormalization should keep its row statistics for its gradient (TrainingGraphOptions::
  // save_norm_statistics): the CUDA backend, whose latency-bound norm backward then skips two reductions per row.
  virtual bool saves_norm_statistics() const { return false; }
  // The multiple this backend pads attention heads to before computing (0: none), for packed attention to keep its
  // padded bf16 QKV and Y for the backward (TrainingGraphOptions::attention_saved_head_multiple): cuDNN's 8.
  virtual int64_t attention_saved_head_multiple() const { return 0; }
  // The ONNX type (1 float32, 16 bfloat16; 0: no) in which a Linear that adds a residual should write its plain result
  // for a galvatron SkipLayerNormalization to add the residual (TrainingGraphOptions::fuse_skip_norm): the CUDA
  // backend in bf16, whose norm row kernel adds it at bandwidth where cuBLASLt's epilogue does not.
  virtual int skip_norm_branch() const { return 0; }
  // Device bytes the kernels hold as scratch outside the executor's arena now (the CUDA kernels' grow-only buffers),
  // counted in Trainer::peak_memory_bytes.
  virtual size_t scratch_bytes() const { return 0; }
  // Whether the weights' shared bf16 copies should persist across steps, rewritten by AdamW from the updated weights
  // (TrainingGraphOptions::optimizer_bf16_copies): the CUDA backend in bf16.
  virtual bool optimizer_writes_bf16_copies() const { return false; }
  // Whether GradNorm and AdamW may read bf16 gradients (the reduced copies of --grad-reduce-dtype bf16) rather than
  // float32 widenings of them (TrainingGraphOptions::optimizer_reads_bf16_grads): both backends' kernels do.
  virtual bool reads_bf16_grads() const { return true; }
  // Whether weight gradients may be written in bf16 by their dW products (TrainingGraphOptions::bf16_weight_grads):
  // the CUDA backend in bf16.
  virtual bool bf16_weight_grads() const { return false; }
};

std::unique_ptr<Backend> make_cpu_backend();
// "cpu" or "cuda"; an error when the CUDA backend was not built or no GPU is present.
Expected<std::unique_ptr<Backend>> make_backend(const std::string& device);
bool cuda_backend_built();

}  // namespace gv

// The CUDA backend: device memory through kernels/cuda, kernels from OpSchema::cuda (runtime/cuda_kernels_*.cpp), and
// for ops without a native kernel the fallback that runs the CPU kernel on host copies. Compiled only with CUDA.
#ifdef GALVATRON_HAVE_CUDA
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "runtime/backend.h"
#include "runtime/cuda_kernels.h"

namespace gv {
namespace {

// The comparison switches below: on unless the environment variable is "0" (read when a trainer asks).
bool switched_on(const char* var) {
  const char* e = std::getenv(var);
  return !(e && std::string(e) == "0");
}

Status cuda_error(const std::string& what) { return internal_error("cuda: " + what + ": " + cuda::last_error()); }

class CudaGraph final : public RecordedWork {
 public:
  explicit CudaGraph(void* exec) : exec_(exec) {}
  ~CudaGraph() override { cuda::graph_destroy(exec_); }
  Status replay() override { return cuda::graph_replay(exec_) ? Status::ok() : cuda_error("replaying a CUDA graph"); }

 private:
  void* exec_;
};

class CudaBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string name() const override { return "cuda"; }
  Expected<void*> allocate(size_t bytes) override {
    void* p = nullptr;
    if (!cuda::malloc_device(&p, bytes ? bytes : 256)) {
      return Status(StatusCode::kOutOfMemory, "cuda: cannot allocate " + std::to_string(bytes) + " bytes");
    }
    return p;
  }
  void release(void* ptr) override { cuda::free_device(ptr); }
  Status copy_from_host(void* dst, const void* src, size_t n) override {
    return !n || cuda::memcpy_h2d(dst, src, n) ? Status::ok() : cuda_error("host to device copy");
  }
  Status copy_to_host(void* dst, const void* src, size_t n) override {
    return !n || cuda::memcpy_d2h(dst, src, n) ? Status::ok() : cuda_error("device to host copy");
  }
  Status copy(void* dst, const void* src, size_t n) override {
    return !n || cuda::memcpy_d2d(dst, src, n) ? Status::ok() : cuda_error("device copy");
  }
  Status zero(void* ptr, size_t n) override {
    return !n || cuda::memset_device(ptr, n) ? Status::ok() : cuda_error("memset");
  }
  KernelFn kernel(const OpSchema& schema) const override {
    if (schema.cuda) return schema.cuda;
    if (!schema.cpu) return nullptr;
    note_cuda_fallback(schema);
    return cuda_fallback_kernel;
  }
  std::vector<std::string> host_fallback_ops() const override { return cuda_fallback_ops(); }
  std::vector<std::string> runtime_host_fallbacks() const override { return cuda_runtime_fallbacks(); }
  size_t scratch_bytes() const override { return cuda::scratch_bytes(); }
  Status synchronize() override { return cuda::synchronize() ? Status::ok() : cuda_error("synchronize"); }
  // A CUDA graph of the compute stream. GALVATRON_CUDA_GRAPHS=0 declines (for comparisons), as does per-op profiling
  // (its events synchronize).
  Expected<std::unique_ptr<RecordedWork>> record(const std::function<Status()>& issue) override {
    if (!switched_on("GALVATRON_CUDA_GRAPHS"))
      return unsupported("CUDA graphs are switched off (GALVATRON_CUDA_GRAPHS=0)");
    if (cuda_profiling()) return unsupported("per-op profiling (GALVATRON_CUDA_PROFILE) times each kernel apart");
    if (!cuda::compute_stream()) {
      return unsupported(
          "the kernels run on the legacy stream, which cannot be captured (GALVATRON_CUDA_LEGACY_STREAM=1)");
    }
    if (!cuda::graph_record_begin()) return cuda_error("starting a CUDA graph capture");
    const Status issued = issue();
    void* graph = cuda::graph_record_end();
    if (!graph) {
      const std::string why = cuda::last_error();
      if (!issued.is_ok()) return issued.with_context("recording a CUDA graph");
      return internal_error("cuda: the step could not be recorded as a CUDA graph: " + why);
    }
    if (!issued.is_ok()) {
      cuda::graph_destroy(graph);
      return issued.with_context("recording a CUDA graph");
    }
    return std::unique_ptr<RecordedWork>(new CudaGraph(graph));
  }
  // Process-wide (the cuBLAS mode is global): the last call wins for every CUDA backend of the process.
  // GALVATRON_CUDA_TF32=1 sets "tf32" when the first CUDA backend is made.
  Status set_precision(const std::string& precision) override {
    if (precision == "fp32") cuda::set_math_mode(cuda::MathMode::kFloat32);
    else if (precision == "tf32") cuda::set_math_mode(cuda::MathMode::kTf32);
    else if (precision == "bf16") cuda::set_math_mode(cuda::MathMode::kBf16);
    else return invalid_argument("--precision must be fp32, tf32 or bf16, got '" + precision + "'");
    return Status::ok();
  }
  // The flash kernels write and read the statistics; with them switched off (GALVATRON_CUDA_FLASH=0) v1 runs, which
  // has no use for them (and AttentionWithLse would fall back to the host).
  bool saves_attention_statistics() const override {
    return cuda::math_mode() == cuda::MathMode::kBf16 && cuda::flash_attention_enabled();
  }
  // GALVATRON_CUDA_BF16_OPERANDS=0 keeps every product converting its own operands (for comparisons).
  bool shares_bf16_operands() const override {
    return cuda::math_mode() == cuda::MathMode::kBf16 && switched_on("GALVATRON_CUDA_BF16_OPERANDS");
  }
  // GALVATRON_CUDA_PACKED_QKV=0 keeps Q, K, V split (for comparisons).
  bool packs_attention_qkv() const override {
    return saves_attention_statistics() && switched_on("GALVATRON_CUDA_PACKED_QKV");
  }
  // GALVATRON_CUDA_BF16_ATTENTION_IO=0 keeps the attention's inputs and Y float32 (for comparisons).
  bool bf16_attention_io() const override {
    return packs_attention_qkv() && shares_bf16_operands() && switched_on("GALVATRON_CUDA_BF16_ATTENTION_IO");
  }
  // GALVATRON_CUDA_FUSE_LINEAR=0 keeps the products, bias adds and GELUs apart (for comparisons).
  bool fuses_linear() const override {
    return cuda::math_mode() == cuda::MathMode::kBf16 && switched_on("GALVATRON_CUDA_FUSE_LINEAR");
  }
  // GALVATRON_CUDA_FUSE_RESIDUAL=0 keeps the residual adds as Add nodes, GALVATRON_CUDA_FUSE_NORM_GRAD_ADD=0 their
  // gradient sums (for comparisons).
  // GALVATRON_CUDA_FUSE_SIBLING_LINEARS=0 keeps K's and V's products apart (for comparisons).
  bool fuses_sibling_linears() const override {
    return fuses_linear() && switched_on("GALVATRON_CUDA_FUSE_SIBLING_LINEARS");
  }
  bool fuses_residual_add() const override {
    return fuses_linear() && switched_on("GALVATRON_CUDA_FUSE_RESIDUAL");
  }
  bool fuses_norm_grad_add() const override {
    return cuda::math_mode() == cuda::MathMode::kBf16 && switched_on("GALVATRON_CUDA_FUSE_NORM_GRAD_ADD");
  }
  // GALVATRON_CUDA_FUSE_NORM_GRAD_OUTPUTS=0 keeps the Cast and BiasGrad after the LayerNorm gradients.
  bool fuses_norm_grad_outputs() const override {
    return shares_bf16_operands() && switched_on("GALVATRON_CUDA_FUSE_NORM_GRAD_OUTPUTS");
  }
  // GALVATRON_CUDA_SAVE_ATTENTION_HEADS=0 lets the attention backward pad QKV and Y again (for comparisons).
  int64_t attention_saved_head_multiple() const override {
    const bool on = packs_attention_qkv() && cuda::cudnn_attention_enabled() &&
                    switched_on("GALVATRON_CUDA_SAVE_ATTENTION_HEADS");
    return on ? cuda::cudnn_padded_head_dim(1) : 0;  // 1 rounded up: the multiple
  }
  // GALVATRON_CUDA_SKIP_NORM=0 keeps the residual add in the Linear's epilogue, =f32 has the Linear write float32
  // (for comparisons; default: bf16).
  int skip_norm_branch() const override {
    if (!fuses_residual_add()) return 0;
    const char* e = std::getenv("GALVATRON_CUDA_SKIP_NORM");
    const std::string v = e ? e : "";
    return v == "0" ? 0 : v == "f32" ? 1 : 16;
  }
  // GALVATRON_CUDA_BF16_RESIDUAL=0 keeps the residual stream between the norms float32, as PyTorch's autocast does.
  bool bf16_residual_stream() const override {
    return skip_norm_branch() == 16 && fuses_norm_grad_outputs() && switched_on("GALVATRON_CUDA_BF16_RESIDUAL");
  }
  // GALVATRON_CUDA_SAVE_NORM_STATS=0 recomputes the LayerNorm statistics in the backward (for comparisons).
  bool saves_norm_statistics() const override { return switched_on("GALVATRON_CUDA_SAVE_NORM_STATS"); }
  // GALVATRON_CUDA_ADAMW_BF16_COPIES=0 converts the weights to bf16 again every step (for comparisons).
  bool optimizer_writes_bf16_copies() const override {
    return shares_bf16_operands() && switched_on("GALVATRON_CUDA_ADAMW_BF16_COPIES");
  }
  // GALVATRON_CUDA_BF16_GRADS=0 widens the reduced bf16 gradients to float32 for the optimizer (for comparisons).
  bool reads_bf16_grads() const override {
    return switched_on("GALVATRON_CUDA_BF16_GRADS");
  }
  // GALVATRON_CUDA_BF16_WEIGHT_GRADS=0 keeps the weight gradients float32 (for comparisons).
  bool bf16_weight_grads() const override {
    return shares_bf16_operands() && switched_on("GALVATRON_CUDA_BF16_WEIGHT_GRADS");
  }
  // GALVATRON_CUDA_DGELU=0 keeps the backward product, GELU gradient, Cast and bias sum apart (for comparisons).
  bool fuses_gelu_grad_product() const override {
    return cuda::math_mode() == cuda::MathMode::kBf16 && switched_on("GALVATRON_CUDA_DGELU");
  }
};

}  // namespace

bool cuda_backend_built() { return true; }

Expected<std::unique_ptr<Backend>> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda") {
    if (cuda::device_count() == 0) return unsupported("no CUDA device is visible; use --device cpu");
    static std::once_flag once;
    std::call_once(once, [] {
      const char* tf32 = std::getenv("GALVATRON_CUDA_TF32");
      if (tf32 && std::strcmp(tf32, "1") == 0) set_cuda_allow_tf32(true);
      register_cuda_kernels(OpRegistry::global());
      void register_cuda_parallel_kernels(OpRegistry&); register_cuda_parallel_kernels(OpRegistry::global());  // runtime/cuda_parallel_ops.cpp
    });
    return std::unique_ptr<Backend>(std::make_unique<CudaBackend>());
  }
  return invalid_argument("unknown device '" + device + "' (expected cpu or cuda)");
}

}  // namespace gv
#endif

// Device helpers for the CUDA backend: memory and copies. Op kernels: the other files of this folder (ops.h).
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "kernels/cuda/device.h"
#include "kernels/cuda/lt_matmul.h"

namespace gv::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

const char* last_error() { return cudaGetErrorString(cudaGetLastError()); }

bool malloc_device(void** p, size_t bytes) { return cudaMalloc(p, bytes) == cudaSuccess; }
void free_device(void* p) { cudaFree(p); }
bool memcpy_h2d(void* d, const void* s, size_t n) { return cudaMemcpy(d, s, n, cudaMemcpyHostToDevice) == cudaSuccess; }
bool memcpy_d2h(void* d, const void* s, size_t n) { return cudaMemcpy(d, s, n, cudaMemcpyDeviceToHost) == cudaSuccess; }
bool memcpy_d2d(void* d, const void* s, size_t n) { return cudaMemcpy(d, s, n, cudaMemcpyDeviceToDevice) == cudaSuccess; }
bool memset_device(void* p, size_t n) { return cudaMemset(p, 0, n) == cudaSuccess; }
namespace {
bool g_legacy_stream = false;
}  // namespace
void use_legacy_stream() { g_legacy_stream = true; }
void* compute_stream() {
  static cudaStream_t s = [] {
    // GALVATRON_CUDA_LEGACY_STREAM=1 takes the legacy stream, =0 the created one even where use_legacy_stream()
    // asked for the legacy one (multi-process runs: for isolating their hang on it, bench/cuda_notes.md Next 9).
    const char* e = std::getenv("GALVATRON_CUDA_LEGACY_STREAM");
    const std::string env = e ? e : "";
    if (env == "1" || (g_legacy_stream && env != "0")) return static_cast<cudaStream_t>(nullptr);
    int least = 0, greatest = 0;
    cudaDeviceGetStreamPriorityRange(&least, &greatest);
    cudaStream_t x = nullptr;
    if (cudaStreamCreateWithPriority(&x, cudaStreamDefault, greatest) != cudaSuccess) {
      cudaGetLastError();
      return static_cast<cudaStream_t>(nullptr);  // the legacy stream: everything still runs, nothing is captured
    }
    return x;
  }();
  return s;
}
namespace {
cudaStream_t cs() { return static_cast<cudaStream_t>(compute_stream()); }
}  // namespace
bool memcpy_d2d_async(void* d, const void* s, size_t n) {
  return cudaMemcpyAsync(d, s, n, cudaMemcpyDeviceToDevice, cs()) == cudaSuccess;
}
bool memset_async(void* p, size_t n) { return cudaMemsetAsync(p, 0, n, cs()) == cudaSuccess; }
void* event_record() {
  cudaEvent_t e = nullptr;
  if (cudaEventCreate(&e) != cudaSuccess) return nullptr;
  cudaEventRecord(e, cs());
  return e;
}
float event_elapsed_ms(void* start, void* stop) {
  float ms = 0.0f;
  cudaEventSynchronize(static_cast<cudaEvent_t>(stop));
  if (cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(stop)) != cudaSuccess) return 0;
  return ms;
}
void event_destroy(void* e) { cudaEventDestroy(static_cast<cudaEvent_t>(e)); }
bool synchronize() { return cudaDeviceSynchronize() == cudaSuccess; }

namespace {
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr;
  bool ok = false;
  SideStream() {
    int least = 0, greatest = 0;
    cudaDeviceGetStreamPriorityRange(&least, &greatest);
    ok = cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking, least) == cudaSuccess &&
         cudaEventCreateWithFlags(&fork, cudaEventDisableTiming) == cudaSuccess &&
         cudaEventCreateWithFlags(&join, cudaEventDisableTiming) == cudaSuccess;
  }
};
SideStream& side() {
  static SideStream s;  // one device per process
  return s;
}
}  // namespace

void* side_stream_fork() {
  SideStream& s = side();
  if (!s.ok || cudaEventRecord(s.fork, cs()) != cudaSuccess ||
      cudaStreamWaitEvent(s.stream, s.fork, 0) != cudaSuccess) {
    return nullptr;
  }
  return s.stream;
}
int side_stream_max_blocks() {
  static const int n = [] {
    const char* e = std::getenv("GALVATRON_CUDA_SIDE_BLOCKS");
    return e ? std::atoi(e) : 0;
  }();
  return n;
}
bool side_stream_join() {
  SideStream& s = side();
  return s.ok && cudaEventRecord(s.join, s.stream) == cudaSuccess &&
         cudaStreamWaitEvent(cs(), s.join, 0) == cudaSuccess;
}

bool graph_record_begin() {
  settle_product_tuning();
  return cs() && cudaStreamBeginCapture(cs(), cudaStreamCaptureModeThreadLocal) == cudaSuccess;
}
void* graph_record_end() {
  cudaGraph_t graph = nullptr;
  const cudaError_t rc = cudaStreamEndCapture(cs(), &graph);
  cudaGraphExec_t exec = nullptr;
  const bool ok = rc == cudaSuccess && graph && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  if (graph) cudaGraphDestroy(graph);
  if (!ok) return nullptr;  // the caller reads last_error(), which clears it
  return exec;
}
bool graph_replay(void* graph) { return cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), cs()) == cudaSuccess; }
void graph_destroy(void* graph) { cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)); }

}  // namespace gv::cuda

// Device helpers for the CUDA backend: memory and copies. Op kernels: the other files of this folder (ops.h).
#include <cuda_runtime.h>

#include <cstdlib>

#include "kernels/cuda/device.h"

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
bool memcpy_d2d_async(void* d, const void* s, size_t n) {
  return cudaMemcpyAsync(d, s, n, cudaMemcpyDeviceToDevice, 0) == cudaSuccess;
}
bool memset_async(void* p, size_t n) { return cudaMemsetAsync(p, 0, n, 0) == cudaSuccess; }
void* event_record() {
  cudaEvent_t e = nullptr;
  if (cudaEventCreate(&e) != cudaSuccess) return nullptr;
  cudaEventRecord(e, 0);
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
    ok = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess &&
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
  if (!s.ok || cudaEventRecord(s.fork, 0) != cudaSuccess || cudaStreamWaitEvent(s.stream, s.fork, 0) != cudaSuccess) {
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
  return s.ok && cudaEventRecord(s.join, s.stream) == cudaSuccess && cudaStreamWaitEvent(0, s.join, 0) == cudaSuccess;
}

}  // namespace gv::cuda

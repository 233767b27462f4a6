// Device helpers for the CUDA backend: memory and copies. Op kernels: the other files of this folder (ops.h).
#include <cuda_runtime.h>

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
bool synchronize() { return cudaDeviceSynchronize() == cudaSuccess; }

}  // namespace gv::cuda

// GrowBuffer: a grow-only device buffer for a launcher's temporaries, one per use site. Growing frees the old buffer
// first; cudaFree synchronizes the device, so the work that read it has finished. Never freed (the buffers live in
// function or file statics and would outlive the CUDA context at exit). Host code, for .cu and .cpp launchers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace gv::cuda {

class GrowBuffer {
 public:
  // At least `bytes` of device memory, or nullptr (the CUDA error cleared) when it cannot be had.
  void* get(size_t bytes) {
    if (bytes <= have_) return data_;
    if (data_) cudaFree(data_);
    data_ = nullptr;
    have_ = 0;
    if (cudaMalloc(&data_, bytes) != cudaSuccess) {
      data_ = nullptr;
      cudaGetLastError();
      return nullptr;
    }
    have_ = bytes;
    return data_;
  }
  template <typename T>
  T* get_as(size_t count) {
    return static_cast<T*>(get(sizeof(T) * count));
  }

 private:
  void* data_ = nullptr;
  size_t have_ = 0;
};

}  // namespace gv::cuda

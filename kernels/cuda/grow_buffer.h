// GrowBuffer: a grow-only device buffer for a launcher's temporaries, one per use site. Growing frees the old buffer
// first; cudaFree synchronizes the device, so the work that read it has finished. Never freed (the buffers live in
// function or file statics and would outlive the CUDA context at exit). Host code, for .cu and .cpp launchers.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>

namespace gv::cuda {

// Bytes held by every GrowBuffer of the process (the kernels' scratch; ops.h scratch_bytes()).
inline std::atomic<size_t>& grow_buffer_total() {
  static std::atomic<size_t> total{0};
  return total;
}

class GrowBuffer {
 public:
  // At least `bytes` of device memory, or nullptr (the CUDA error cleared) when it cannot be had. Growing allocates
  // exactly `bytes`, or with `slack` a quarter more and at least `floor` bytes (fewer regrowths when sizes creep up).
  void* get(size_t bytes, bool slack = false, size_t floor = 0) {
    if (bytes <= have_) return data_;
    if (data_) cudaFree(data_);
    grow_buffer_total() -= have_;
    data_ = nullptr;
    have_ = 0;
    size_t want = slack ? bytes + bytes / 4 : bytes;
    if (want < floor) want = floor;
    if (cudaMalloc(&data_, want) != cudaSuccess) {
      data_ = nullptr;
      cudaGetLastError();
      return nullptr;
    }
    have_ = want;
    grow_buffer_total() += want;
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

// Dropout kernels over flat tensors of n elements. Element i is kept when uniform01(key, i) >= ratio, and kept values
// are scaled by 1/(1-ratio) (all dropped, output zero, when ratio >= 1).
#pragma once
#include <cstdint>

namespace gv::cpu {

// y[n] = keep ? x * scale : 0; mask[n] (bytes, may be null) = keep.
template <typename T>
void dropout_forward(const T* x, T* y, uint8_t* mask, int64_t n, double ratio, uint64_t key);

// dx[n] = keep ? dy * scale : 0, with keep read from mask[n], or regenerated from `key` when mask is null.
template <typename T>
void dropout_backward(const T* dy, const uint8_t* mask, T* dx, int64_t n, double ratio, uint64_t key);

}  // namespace gv::cpu

// The 3-D (sequence-major) attention layout [B, S, H * D] <-> the 4-D reference's [B, H, S, D], for the CPU kernels
// of Attention's 3-D form (runtime/ops/attention_ops.cpp) and of packed QKV (runtime/ops/attention_packed_ops.cpp).
// Rows of the sequence-major side are `row` elements apart (H * D, or 3 * H * D inside a packed QKV tensor).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace gv {

template <typename T>
std::vector<T> heads_first(const T* x, int64_t B, int64_t S, int64_t H, int64_t D, int64_t row = -1) {
  if (row < 0) row = H * D;
  std::vector<T> y(static_cast<size_t>(B * S * H * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        std::copy_n(x + (b * S + s) * row + h * D, D, y.data() + ((b * H + h) * S + s) * D);
  return y;
}

template <typename T>
void sequence_first(const T* x, int64_t B, int64_t S, int64_t H, int64_t D, T* y, int64_t row = -1) {
  if (row < 0) row = H * D;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < S; ++s)
        std::copy_n(x + ((b * H + h) * S + s) * D, D, y + (b * S + s) * row + h * D);
}

}  // namespace gv

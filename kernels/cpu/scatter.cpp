#include "kernels/cpu/scatter.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace gv::cpu {
namespace {

constexpr int64_t kParallelElems = 1 << 15;
constexpr int64_t kColumnChunk = 256;

template <typename T>
inline void combine(T& dst, T v, ScatterReduction r) {
  switch (r) {
    case ScatterReduction::kNone: dst = v; break;
    case ScatterReduction::kAdd: dst = static_cast<T>(dst + v); break;
    case ScatterReduction::kMul: dst = static_cast<T>(dst * v); break;
    case ScatterReduction::kMax: dst = std::max(dst, v); break;
    case ScatterReduction::kMin: dst = std::min(dst, v); break;
  }
}

template <typename Idx>
inline int64_t wrap(Idx i, int64_t bound) {
  const int64_t v = static_cast<int64_t>(i);
  return v < 0 ? v + bound : v;
}

}  // namespace

template <typename T, typename Idx>
void scatter_nd(const T* data, const Idx* idx, const T* updates, T* out, const GatherNDShape& s,
                ScatterReduction reduction) {
  std::vector<int64_t> strides(s.k, s.slice);
  for (int m = s.k - 2; m >= 0; --m) strides[m] = strides[m + 1] * s.index_dims[m + 1];
  const int64_t total = s.k ? strides[0] * s.index_dims[0] : s.slice;
  std::memcpy(out, data, static_cast<size_t>(total) * sizeof(T));
  auto offset = [&](int64_t t) {
    int64_t off = 0;
    for (int m = 0; m < s.k; ++m) off += wrap(idx[t * s.k + m], s.index_dims[m]) * strides[m];
    return off;
  };
  // Updates apply in tuple order (the last write wins for duplicates); threads split the slice columns.
  const int64_t chunks = (s.slice + kColumnChunk - 1) / kColumnChunk;
#pragma omp parallel for if (s.n_tuples * s.slice > kParallelElems) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t c0 = c * kColumnChunk, c1 = std::min(s.slice, c0 + kColumnChunk);
    for (int64_t t = 0; t < s.n_tuples; ++t) {
      T* d = out + offset(t);
      const T* u = updates + t * s.slice;
      if (reduction == ScatterReduction::kNone) {
        std::memcpy(d + c0, u + c0, static_cast<size_t>(c1 - c0) * sizeof(T));
      } else {
        for (int64_t i = c0; i < c1; ++i) combine(d[i], u[i], reduction);
      }
    }
  }
}

template <typename T, typename Idx>
void scatter_elements(const T* data, const int64_t* data_dims, const Idx* idx, const T* updates,
                      const int64_t* idx_dims, int rank, int axis, T* out, ScatterReduction reduction) {
  std::vector<int64_t> data_strides(rank, 1);
  int64_t total = 1, n = 1;
  for (int d = rank - 2; d >= 0; --d) data_strides[d] = data_strides[d + 1] * data_dims[d + 1];
  for (int d = 0; d < rank; ++d) {
    total *= data_dims[d];
    n *= idx_dims[d];
  }
  std::memcpy(out, data, static_cast<size_t>(total) * sizeof(T));
  // Serial: several updates may hit one element, and their order is part of the result.
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, off = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t c = rem % idx_dims[d];
      rem /= idx_dims[d];
      off += (d == axis ? wrap(idx[i], data_dims[axis]) : c) * data_strides[d];
    }
    combine(out[off], updates[i], reduction);
  }
}

#define GV_SCATTER(T, Idx)                                                                                             \
  template void scatter_nd<T, Idx>(const T*, const Idx*, const T*, T*, const GatherNDShape&, ScatterReduction);        \
  template void scatter_elements<T, Idx>(const T*, const int64_t*, const Idx*, const T*, const int64_t*, int, int, T*, \
                                         ScatterReduction);
#define GV_SCATTER_ALL(Idx) \
  GV_SCATTER(uint8_t, Idx)  \
  GV_SCATTER(uint16_t, Idx) \
  GV_SCATTER(uint32_t, Idx) \
  GV_SCATTER(uint64_t, Idx) \
  GV_SCATTER(float, Idx)    \
  GV_SCATTER(double, Idx)   \
  GV_SCATTER(int8_t, Idx)   \
  GV_SCATTER(int32_t, Idx)  \
  GV_SCATTER(int64_t, Idx)
GV_SCATTER_ALL(int32_t)
GV_SCATTER_ALL(int64_t)
#undef GV_SCATTER_ALL
#undef GV_SCATTER

}  // namespace gv::cpu

#include "kernels/cpu/movement.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace gv::cpu {
namespace {

// Below this many elements a kernel runs on one thread: forking costs more than it saves.
constexpr int64_t kParallelElems = 1 << 15;
// Long innermost rows are cut into chunks of this many elements so that a single row still spreads over threads.
constexpr int64_t kChunk = 4096;
// Side of the square tiles of a transpose.
constexpr int64_t kTile = 32;

}  // namespace

template <typename T>
void strided_copy(const T* src, const int64_t* src_strides, T* dst, const int64_t* dst_strides, const int64_t* dims,
                  int rank) {
  // Drop size-1 dims and merge a dim into the previous one when both buffers step over it contiguously.
  std::vector<int64_t> d, ss, ds;
  for (int i = 0; i < rank; ++i) {
    if (dims[i] == 0) return;
    if (dims[i] == 1) continue;
    if (!d.empty() && ss.back() == src_strides[i] * dims[i] && ds.back() == dst_strides[i] * dims[i]) {
      d.back() *= dims[i];
      ss.back() = src_strides[i];
      ds.back() = dst_strides[i];
      continue;
    }
    d.push_back(dims[i]);
    ss.push_back(src_strides[i]);
    ds.push_back(dst_strides[i]);
  }
  if (d.empty()) {
    dst[0] = src[0];
    return;
  }
  const int r = static_cast<int>(d.size());
  const int64_t n = d[r - 1], s_in = ss[r - 1], s_out = ds[r - 1];
  int64_t rows = 1;
  for (int i = 0; i < r - 1; ++i) rows *= d[i];
  // A transpose: the innermost dim is strided in src while another dim is contiguous there. Copy in square tiles so
  // that each src cache line is used for a whole tile row instead of once.
  int tile_dim = -1;
  for (int i = 0; i < r - 1 && s_in != 1 && s_out == 1; ++i) {
    if (ss[i] == 1) tile_dim = i;
  }
  if (tile_dim >= 0) {
    const int64_t m = d[tile_dim], m_out = ds[tile_dim];
    const int64_t outer = rows / m;
    const int64_t tiles_m = (m + kTile - 1) / kTile, tiles_n = (n + kTile - 1) / kTile;
#pragma omp parallel for collapse(2) if (rows * n > kParallelElems) schedule(static)
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t t = 0; t < tiles_m * tiles_n; ++t) {
        int64_t src_off = 0, dst_off = 0, rem = o;
        for (int i = r - 2; i >= 0; --i) {
          if (i == tile_dim) continue;
          const int64_t c = rem % d[i];
          rem /= d[i];
          src_off += c * ss[i];
          dst_off += c * ds[i];
        }
        const int64_t i0 = (t / tiles_n) * kTile, i1 = std::min(m, i0 + kTile);
        const int64_t k0 = (t % tiles_n) * kTile, k1 = std::min(n, k0 + kTile);
        for (int64_t i = i0; i < i1; ++i) {
          const T* s = src + src_off + i;
          T* o_row = dst + dst_off + i * m_out;
          for (int64_t k = k0; k < k1; ++k) o_row[k] = s[k * s_in];
        }
      }
    }
    return;
  }
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t tasks = rows * chunks;
#pragma omp parallel for if (rows * n > kParallelElems) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t row = task / chunks;
    const int64_t k0 = (task % chunks) * kChunk, k1 = std::min(n, k0 + kChunk);
    int64_t src_off = 0, dst_off = 0, rem = row;
    for (int i = r - 2; i >= 0; --i) {
      const int64_t c = rem % d[i];
      rem /= d[i];
      src_off += c * ss[i];
      dst_off += c * ds[i];
    }
    const T* s = src + src_off;
    T* o = dst + dst_off;
    if (s_in == 1 && s_out == 1) {
      std::memcpy(o + k0, s + k0, static_cast<size_t>(k1 - k0) * sizeof(T));
    } else if (s_out == 1) {
      for (int64_t k = k0; k < k1; ++k) o[k] = s[k * s_in];
    } else {
      for (int64_t k = k0; k < k1; ++k) o[k * s_out] = s[k * s_in];
    }
  }
}

template <typename T>
void fill(T* dst, T value, int64_t n) {
#pragma omp parallel for if (n > kParallelElems) schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = value;
}

template <typename T>
void indexed_copy(const T* src, const int64_t* in_dims, T* dst, const int64_t* out_dims, int rank,
                  const int64_t* const* maps) {
  if (rank == 0) {
    dst[0] = src[0];
    return;
  }
  std::vector<int64_t> in_strides(rank, 1);
  for (int i = rank - 2; i >= 0; --i) in_strides[i] = in_strides[i + 1] * in_dims[i + 1];
  int64_t rows = 1;
  for (int i = 0; i < rank - 1; ++i) rows *= out_dims[i];
  const int64_t n = out_dims[rank - 1];
  const int64_t* last_map = maps[rank - 1];
#pragma omp parallel for if (rows * n > kParallelElems) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    int64_t src_off = 0, rem = row;
    for (int i = rank - 2; i >= 0; --i) {
      src_off += maps[i][rem % out_dims[i]] * in_strides[i];
      rem /= out_dims[i];
    }
    const T* s = src + src_off;
    T* o = dst + row * n;
    for (int64_t k = 0; k < n; ++k) o[k] = s[last_map[k]];
  }
}

template <typename T>
void trilu(const T* x, T* y, int64_t batch, int64_t rows, int64_t cols, int64_t k, bool upper) {
#pragma omp parallel for collapse(2) if (batch * rows * cols > kParallelElems) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < rows; ++i) {
      const T* xr = x + (b * rows + i) * cols;
      T* yr = y + (b * rows + i) * cols;
      // The kept columns form one interval [lo, hi).
      const int64_t lo = upper ? std::clamp<int64_t>(i + k, 0, cols) : 0;
      const int64_t hi = upper ? cols : std::clamp<int64_t>(i + k + 1, 0, cols);
      for (int64_t j = 0; j < lo; ++j) yr[j] = T(0);
      if (hi > lo) std::memcpy(yr + lo, xr + lo, static_cast<size_t>(hi - lo) * sizeof(T));
      for (int64_t j = std::max(lo, hi); j < cols; ++j) yr[j] = T(0);
    }
  }
}

template <typename T>
void cumsum(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool exclusive, bool reverse) {
  // Each task owns a column chunk of one outer slice and walks it along the summed axis: the inner loop is contiguous.
  const int64_t chunk = 1024;
  const int64_t chunks = (inner + chunk - 1) / chunk;
#pragma omp parallel for collapse(2) if (outer * n * inner > kParallelElems) schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * chunk, i1 = std::min(inner, i0 + chunk);
      const T* xo = x + o * n * inner;
      T* yo = y + o * n * inner;
      for (int64_t s = 0; s < n; ++s) {
        const int64_t k = reverse ? n - 1 - s : s;
        const int64_t prev = reverse ? k + 1 : k - 1;
        T* yk = yo + k * inner;
        if (s == 0) {
          for (int64_t i = i0; i < i1; ++i) yk[i] = exclusive ? T(0) : xo[k * inner + i];
          continue;
        }
        const T* yp = yo + prev * inner;
        const T* xs = xo + (exclusive ? prev : k) * inner;
        for (int64_t i = i0; i < i1; ++i) yk[i] = static_cast<T>(yp[i] + xs[i]);
      }
    }
  }
}

template <typename T>
void range(T* y, T start, T delta, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(start + static_cast<T>(i) * delta);
}

#define GV_MOVEMENT_BYTES(T)                                                                               \
  template void strided_copy<T>(const T*, const int64_t*, T*, const int64_t*, const int64_t*, int);        \
  template void fill<T>(T*, T, int64_t);                                                                   \
  template void indexed_copy<T>(const T*, const int64_t*, T*, const int64_t*, int, const int64_t* const*); \
  template void trilu<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, bool);
GV_MOVEMENT_BYTES(uint8_t)
GV_MOVEMENT_BYTES(uint16_t)
GV_MOVEMENT_BYTES(uint32_t)
GV_MOVEMENT_BYTES(uint64_t)
#undef GV_MOVEMENT_BYTES

#define GV_MOVEMENT_ARITH(T)                                                    \
  template void cumsum<T>(const T*, T*, int64_t, int64_t, int64_t, bool, bool); \
  template void range<T>(T*, T, T, int64_t);
GV_MOVEMENT_ARITH(float)
GV_MOVEMENT_ARITH(double)
GV_MOVEMENT_ARITH(int8_t)
GV_MOVEMENT_ARITH(uint8_t)
GV_MOVEMENT_ARITH(int32_t)
GV_MOVEMENT_ARITH(int64_t)
#undef GV_MOVEMENT_ARITH

}  // namespace gv::cpu

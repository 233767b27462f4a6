#include "kernels/cpu/gather.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace gv::cpu {
namespace {

constexpr int64_t kParallelElems = 1 << 15;
// Gradient kernels give each thread a column range of this many elements, so that duplicate indices never race.
constexpr int64_t kColumnChunk = 256;

template <typename Idx>
inline int64_t wrap(Idx i, int64_t bound) {
  const int64_t v = static_cast<int64_t>(i);
  return v < 0 ? v + bound : v;
}

// Strides, in elements, of the k indexed dims of one GatherND batch.
std::vector<int64_t> tuple_strides(const GatherNDShape& s) {
  std::vector<int64_t> st(s.k, s.slice);
  for (int m = s.k - 2; m >= 0; --m) st[m] = st[m + 1] * s.index_dims[m + 1];
  return st;
}

template <typename Idx>
inline int64_t tuple_offset(const Idx* tuple, const GatherNDShape& s, const std::vector<int64_t>& strides) {
  int64_t off = 0;
  for (int m = 0; m < s.k; ++m) off += wrap(tuple[m], s.index_dims[m]) * strides[m];
  return off;
}

}  // namespace

template <typename Idx>
int64_t find_bad_index(const Idx* idx, int64_t n, int64_t bound) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = static_cast<int64_t>(idx[i]);
    if (v < -bound || v >= bound) return i;
  }
  return -1;
}

template <typename Idx>
int64_t find_bad_tuple(const Idx* idx, int64_t n_tuples, int k, const int64_t* bounds) {
  for (int64_t t = 0; t < n_tuples; ++t) {
    for (int m = 0; m < k; ++m) {
      const int64_t v = static_cast<int64_t>(idx[t * k + m]);
      if (v < -bounds[m] || v >= bounds[m]) return t;
    }
  }
  return -1;
}

template <typename T, typename Idx>
void gather(const T* data, const Idx* idx, T* out, int64_t outer, int64_t axis_dim, int64_t n_idx, int64_t inner) {
  const size_t row_bytes = static_cast<size_t>(inner) * sizeof(T);
#pragma omp parallel for collapse(2) if (outer * n_idx * inner > kParallelElems) schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t j = 0; j < n_idx; ++j) {
      const int64_t src = wrap(idx[j], axis_dim);
      std::memcpy(out + (o * n_idx + j) * inner, data + (o * axis_dim + src) * inner, row_bytes);
    }
  }
}

template <typename T, typename Idx>
void gather_grad(const T* grad, const Idx* idx, T* dx, int64_t outer, int64_t axis_dim, int64_t n_idx, int64_t inner,
                 int64_t skip) {
  std::memset(dx, 0, static_cast<size_t>(outer * axis_dim * inner) * sizeof(T));
  gather_grad_add(grad, idx, dx, outer, axis_dim, n_idx, inner, skip);
}

template <typename T, typename Idx>
void gather_grad_add(const T* grad, const Idx* idx, T* dx, int64_t outer, int64_t axis_dim, int64_t n_idx,
                     int64_t inner, int64_t skip) {
  const int64_t chunks = (inner + kColumnChunk - 1) / kColumnChunk;
#pragma omp parallel for collapse(2) if (outer * n_idx * inner > kParallelElems) schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t c0 = c * kColumnChunk, c1 = std::min(inner, c0 + kColumnChunk);
      for (int64_t j = 0; j < n_idx; ++j) {
        const int64_t row = wrap(idx[j], axis_dim);
        if (row == skip) continue;
        const T* g = grad + (o * n_idx + j) * inner;
        T* d = dx + (o * axis_dim + row) * inner;
        for (int64_t i = c0; i < c1; ++i) d[i] += g[i];
      }
    }
  }
}

template <typename T, typename Idx>
void gather_elements(const T* data, const int64_t* data_dims, const Idx* idx, T* out, const int64_t* idx_dims, int rank,
                     int axis) {
  std::vector<int64_t> data_strides(rank, 1);
  for (int d = rank - 2; d >= 0; --d) data_strides[d] = data_strides[d + 1] * data_dims[d + 1];
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= idx_dims[d];
#pragma omp parallel for if (n > kParallelElems) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, off = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t c = rem % idx_dims[d];
      rem /= idx_dims[d];
      off += (d == axis ? wrap(idx[i], data_dims[axis]) : c) * data_strides[d];
    }
    out[i] = data[off];
  }
}

template <typename T, typename Idx>
void gather_nd(const T* data, const Idx* idx, T* out, const GatherNDShape& s) {
  const std::vector<int64_t> strides = tuple_strides(s);
  const int64_t batch_elems = s.k ? strides[0] * s.index_dims[0] : s.slice;
  const size_t slice_bytes = static_cast<size_t>(s.slice) * sizeof(T);
#pragma omp parallel for collapse(2) if (s.batch * s.n_tuples * s.slice > kParallelElems) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t t = 0; t < s.n_tuples; ++t) {
      const int64_t src = tuple_offset(idx + (b * s.n_tuples + t) * s.k, s, strides);
      std::memcpy(out + (b * s.n_tuples + t) * s.slice, data + b * batch_elems + src, slice_bytes);
    }
  }
}

template <typename T, typename Idx>
void gather_nd_grad(const T* grad, const Idx* idx, T* dx, const GatherNDShape& s) {
  const std::vector<int64_t> strides = tuple_strides(s);
  const int64_t batch_elems = s.k ? strides[0] * s.index_dims[0] : s.slice;
  std::memset(dx, 0, static_cast<size_t>(s.batch * batch_elems) * sizeof(T));
  const int64_t chunks = (s.slice + kColumnChunk - 1) / kColumnChunk;
#pragma omp parallel for collapse(2) if (s.batch * s.n_tuples * s.slice > kParallelElems) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t c0 = c * kColumnChunk, c1 = std::min(s.slice, c0 + kColumnChunk);
      for (int64_t t = 0; t < s.n_tuples; ++t) {
        const T* g = grad + (b * s.n_tuples + t) * s.slice;
        T* d = dx + b * batch_elems + tuple_offset(idx + (b * s.n_tuples + t) * s.k, s, strides);
        for (int64_t i = c0; i < c1; ++i) d[i] += g[i];
      }
    }
  }
}

template int64_t find_bad_index<int32_t>(const int32_t*, int64_t, int64_t);
template int64_t find_bad_index<int64_t>(const int64_t*, int64_t, int64_t);
template int64_t find_bad_tuple<int32_t>(const int32_t*, int64_t, int, const int64_t*);
template int64_t find_bad_tuple<int64_t>(const int64_t*, int64_t, int, const int64_t*);

#define GV_GATHER_MOVE(T, Idx)                                                                               \
  template void gather<T, Idx>(const T*, const Idx*, T*, int64_t, int64_t, int64_t, int64_t);                \
  template void gather_elements<T, Idx>(const T*, const int64_t*, const Idx*, T*, const int64_t*, int, int); \
  template void gather_nd<T, Idx>(const T*, const Idx*, T*, const GatherNDShape&);
#define GV_GATHER_ADD(T, Idx)                                                                               \
  template void gather_grad<T, Idx>(const T*, const Idx*, T*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void gather_grad_add<T, Idx>(const T*, const Idx*, T*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void gather_nd_grad<T, Idx>(const T*, const Idx*, T*, const GatherNDShape&);
#define GV_GATHER_ALL(Idx)      \
  GV_GATHER_MOVE(uint8_t, Idx)  \
  GV_GATHER_MOVE(uint16_t, Idx) \
  GV_GATHER_MOVE(uint32_t, Idx) \
  GV_GATHER_MOVE(uint64_t, Idx) \
  GV_GATHER_ADD(float, Idx)     \
  GV_GATHER_ADD(double, Idx)    \
  GV_GATHER_ADD(int32_t, Idx)   \
  GV_GATHER_ADD(int64_t, Idx)
GV_GATHER_ALL(int32_t)
GV_GATHER_ALL(int64_t)
#undef GV_GATHER_ALL
#undef GV_GATHER_ADD
#undef GV_GATHER_MOVE

}  // namespace gv::cpu

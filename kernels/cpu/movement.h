// Data-movement kernels over contiguous row-major buffers (Transpose, Slice, Expand, Tile, Concat, Split, Pad, Trilu,
// CumSum, Range). Kernels that only move elements are instantiated for the unsigned integer of each element size
// (uint8_t, uint16_t, uint32_t, uint64_t): moving bytes does not care what they mean. Arithmetic kernels (CumSum,
// Range) are instantiated for float, double, int8_t, uint8_t, int32_t and int64_t.
#pragma once
#include <cstdint>

namespace gv::cpu {

// A rank-`rank` box copy: for every index i < dims, dst[sum_d i_d*dst_strides[d]] = src[sum_d i_d*src_strides[d]].
// Strides are in elements and may be 0 (broadcast: Expand, Tile) or negative (Slice with negative steps); dst must
// not alias src. Adjacent dims contiguous in both buffers are merged first, so a plain copy becomes one memcpy.
template <typename T>
void strided_copy(const T* src, const int64_t* src_strides, T* dst, const int64_t* dst_strides, const int64_t* dims,
                  int rank);

// dst[0..n) = value.
template <typename T>
void fill(T* dst, T value, int64_t n);

// dst [out_dims] reads src [in_dims] through per-axis index maps: dst[i_0, .., i_r] = src[maps[0][i_0], ..,
// maps[r][i_r]]. maps[d] holds out_dims[d] entries in [0, in_dims[d]). Pad's reflect, edge and wrap modes.
template <typename T>
void indexed_copy(const T* src, const int64_t* in_dims, T* dst, const int64_t* out_dims, int rank,
                  const int64_t* const* maps);

// Trilu: x, y [batch, rows, cols]. Keeps x[b, i, j] where j - i >= k (upper) or j - i <= k (lower), zero elsewhere.
template <typename T>
void trilu(const T* x, T* y, int64_t batch, int64_t rows, int64_t cols, int64_t k, bool upper);

// CumSum: x, y [outer, n, inner], running sum along the middle axis. exclusive: y excludes the current element;
// reverse: sums from the end.
template <typename T>
void cumsum(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool exclusive, bool reverse);

// Range: y[i] = start + i * delta for i < n.
template <typename T>
void range(T* y, T start, T delta, int64_t n);

}  // namespace gv::cpu

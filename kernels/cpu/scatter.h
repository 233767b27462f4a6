// Scatter-family kernels (ScatterND, ScatterElements): out = copy of data, then updates written or combined at the
// indexed positions in index order. Index types are int32_t and int64_t; negative indices count from the end of their
// axis; callers check indices first (kernels/cpu/gather.h: find_bad_index, find_bad_tuple).
// Instantiated for uint8_t, uint16_t, uint32_t, uint64_t (reduction kNone only: moves bytes) and for float, double,
// int8_t, int32_t, int64_t (every reduction).
#pragma once
#include <cstdint>

#include "kernels/cpu/gather.h"

namespace gv::cpu {

enum class ScatterReduction { kNone, kAdd, kMul, kMax, kMin };

// ScatterND: data and out [index_dims[0..k), slice], idx [n_tuples, k], updates [n_tuples, slice] (s.batch is 1).
template <typename T, typename Idx>
void scatter_nd(const T* data, const Idx* idx, const T* updates, T* out, const GatherNDShape& s,
                ScatterReduction reduction);

// ScatterElements: data and out [data_dims], idx and updates [idx_dims], both of rank `rank`, idx_dims[d] <=
// data_dims[d] off the axis: out[i with coordinate `axis` replaced by idx[i]] (op)= updates[i].
template <typename T, typename Idx>
void scatter_elements(const T* data, const int64_t* data_dims, const Idx* idx, const T* updates,
                      const int64_t* idx_dims, int rank, int axis, T* out, ScatterReduction reduction);

}  // namespace gv::cpu

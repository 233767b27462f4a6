// Gather-family kernels (Gather, GatherElements, GatherND) and their gradients (scatter-adds into zeros).
// Index types are int32_t and int64_t. Negative indices count from the end of their axis. Kernels assume valid
// indices: callers check them first with find_bad_index / find_bad_tuple and report an error instead.
// Forward kernels move elements and are instantiated for uint8_t, uint16_t, uint32_t and uint64_t (by element size);
// gradient kernels add and are instantiated for float, double, int32_t and int64_t.
#pragma once
#include <cstdint>

namespace gv::cpu {

// Position of the first index outside [-bound, bound), or -1 when all n are valid.
template <typename Idx>
int64_t find_bad_index(const Idx* idx, int64_t n, int64_t bound);
// Index tuples idx [n_tuples, k]: position of the first tuple with a component m outside [-bounds[m], bounds[m]),
// or -1.
template <typename Idx>
int64_t find_bad_tuple(const Idx* idx, int64_t n_tuples, int k, const int64_t* bounds);

// Gather: data [outer, axis_dim, inner], idx [n_idx], out [outer, n_idx, inner]: out[o, j] = data[o, idx[j]].
template <typename T, typename Idx>
void gather(const T* data, const Idx* idx, T* out, int64_t outer, int64_t axis_dim, int64_t n_idx, int64_t inner);

// Gather's gradient (embedding backward): grad [outer, n_idx, inner], dx [outer, axis_dim, inner].
// dx = 0, then dx[o, idx[j]] += grad[o, j]; duplicate indices add up. Deterministic: each thread owns a column range.
// Lookups of index `skip` (in [0, axis_dim); -1 for none) add nothing: PyTorch's Embedding padding_idx.
template <typename T, typename Idx>
void gather_grad(const T* grad, const Idx* idx, T* dx, int64_t outer, int64_t axis_dim, int64_t n_idx, int64_t inner,
                 int64_t skip = -1);
// The same added into dx as it is (no zeroing): galvatron GatherGradAdd, after copying its Base into dx.
template <typename T, typename Idx>
void gather_grad_add(const T* grad, const Idx* idx, T* dx, int64_t outer, int64_t axis_dim, int64_t n_idx,
                     int64_t inner, int64_t skip = -1);

// GatherElements: data [data_dims], idx and out [idx_dims], both of rank `rank`, idx_dims[d] <= data_dims[d] off the
// axis: out[i] = data[i with coordinate `axis` replaced by idx[i]].
template <typename T, typename Idx>
void gather_elements(const T* data, const int64_t* data_dims, const Idx* idx, T* out, const int64_t* idx_dims, int rank,
                     int axis);

// GatherND with batch_dims folded into `batch`:
//   data [batch, index_dims[0..k), slice], idx [batch, n_tuples, k], out [batch, n_tuples, slice].
struct GatherNDShape {
  int64_t batch = 1;
  int64_t n_tuples = 0;
  int k = 0;
  const int64_t* index_dims = nullptr;  // the k data dims that a tuple indexes
  int64_t slice = 1;
};
template <typename T, typename Idx>
void gather_nd(const T* data, const Idx* idx, T* out, const GatherNDShape& s);
// GatherND's gradient: grad [batch, n_tuples, slice] is added into dx (shaped like data), which is zeroed first.
template <typename T, typename Idx>
void gather_nd_grad(const T* grad, const Idx* idx, T* dx, const GatherNDShape& s);

}  // namespace gv::cpu

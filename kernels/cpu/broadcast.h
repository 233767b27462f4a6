// Numpy-style multidirectional broadcasting for the elementwise kernels.
//
// A BroadcastPlan describes how up to three inputs map onto one contiguous output. Dimensions of size 1 are dropped
// and adjacent dimensions that are contiguous in every operand are merged, so the common cases collapse to one or two
// dimensions: same shapes -> one row of numel elements with unit strides; a scalar operand -> stride 0; a bias
// [H] added to [B,S,H] -> rows of H, the bias with outer stride 0. Kernels iterate rows with for_each_segment and
// branch once per row on the innermost strides (always 0 or 1), which keeps the inner loops vectorizable.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/dtype.h"

namespace gv::cpu {

// Elementwise kernels run on several threads above this many output elements.
constexpr int64_t kParallelThreshold = 32768;

constexpr int kMaxBroadcastInputs = 3;

// The broadcast shape of a and b (numpy rules: align from the right; sizes must be equal or one of them 1).
// Returns false when the shapes are incompatible.
bool broadcast_shape(const Shape& a, const Shape& b, Shape* out);

struct BroadcastPlan {
  int num_inputs = 0;
  int64_t numel = 0;          // output elements
  std::vector<int64_t> dims;  // collapsed output dims, outermost first (at least one, the innermost row)
  // Per input, the stride (in elements) of each collapsed dim: 0 along broadcast dims, 1 innermost otherwise.
  std::vector<int64_t> strides[kMaxBroadcastInputs];

  int64_t inner() const { return dims.back(); }
  int64_t inner_stride(int k) const { return strides[k].back(); }
};

// Plans the broadcast of `inputs` (each broadcastable to `out`, which the caller has checked) onto `out`.
BroadcastPlan make_broadcast_plan(const Shape& out, const std::vector<Shape>& inputs);

// Calls seg(in_offsets, out_offset, len) for consecutive segments of rows that together cover the output once:
// input k's elements for the segment start at in_offsets[k] and advance by plan.inner_stride(k) per element, the
// output's at out_offset by 1. Segments are split over OpenMP threads when the output is large.
template <typename SegFn>
void for_each_segment(const BroadcastPlan& p, SegFn&& seg) {
  if (p.numel == 0) return;
  const int rank = static_cast<int>(p.dims.size());
  const int64_t inner = p.inner();
  const int n_in = p.num_inputs;
#pragma omp parallel if (p.numel > kParallelThreshold)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = (p.numel + nt - 1) / nt;
    const int64_t begin = std::min(p.numel, t * chunk), end = std::min(p.numel, begin + chunk);
    if (begin < end) {
      // Multi-index of the row holding `begin`, and the input offsets of that row's first element.
      std::vector<int64_t> idx(rank, 0);
      int64_t off[kMaxBroadcastInputs] = {0, 0, 0};
      int64_t row = begin / inner, col = begin % inner;
      for (int d = rank - 2; d >= 0; --d) {
        idx[d] = row % p.dims[d];
        row /= p.dims[d];
        for (int k = 0; k < n_in; ++k) off[k] += idx[d] * p.strides[k][d];
      }
      int64_t pos = begin;
      while (pos < end) {
        const int64_t len = std::min(inner - col, end - pos);
        int64_t seg_off[kMaxBroadcastInputs];
        for (int k = 0; k < n_in; ++k) seg_off[k] = off[k] + col * p.strides[k][rank - 1];
        seg(static_cast<const int64_t*>(seg_off), pos, len);
        pos += len;
        col = 0;
        // Advance the row odometer over the outer dims.
        for (int d = rank - 2; d >= 0; --d) {
          ++idx[d];
          for (int k = 0; k < n_in; ++k) off[k] += p.strides[k][d];
          if (idx[d] < p.dims[d]) break;
          for (int k = 0; k < n_in; ++k) off[k] -= idx[d] * p.strides[k][d];
          idx[d] = 0;
        }
      }
    }
  }
}

}  // namespace gv::cpu

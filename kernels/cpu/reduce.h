// Reductions over any set of axes, and their backward, on contiguous row-major tensors.
#pragma once
#include <cstdint>
#include <vector>

namespace gv::cpu {

enum class ReduceKind { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kSumSquare, kLogSum, kLogSumExp };

// Where each input element goes. Input element (o, j, k) sits at outer_offsets[o] + reduced_offsets[j] + k and
// reduces into output element o * inner + k: `inner` is the block of trailing kept axes (contiguous in both), `outer`
// enumerates the other kept axes and `reduced` the reduced ones (size-1 axes are dropped: they move nothing).
struct ReduceLayout {
  std::vector<int64_t> outer_offsets;
  std::vector<int64_t> reduced_offsets;
  int64_t inner = 1;
  bool reduced_contiguous = false;  // reduced_offsets[j] == j (reducing a trailing block)
  int64_t outer() const { return static_cast<int64_t>(outer_offsets.size()); }
  int64_t reduced() const { return static_cast<int64_t>(reduced_offsets.size()); }
};
// shape: the input's; reduced[d]: whether axis d is reduced.
ReduceLayout make_reduce_layout(const std::vector<int64_t>& shape, const std::vector<bool>& reduced);

// y[outer * inner] = reduction of x. Sums accumulate in double (int64 for integer types). Over an empty set the
// result is the reduction's identity (sum 0, prod 1, max -inf / lowest, ...); mean is then NaN (0 for integers).
template <typename T>
void reduce(const T* x, T* y, const ReduceLayout& layout, ReduceKind kind);

// dx (input shape) from dy (output, outer * inner elements). x and y (the forward input and output) are read where
// the rule needs them (L1, L2, SumSquare, LogSumExp, Max, Min, Prod: x; L2, LogSum, LogSumExp, Max, Min: y) and may
// be null otherwise. Max/Min split the gradient evenly between tied extrema; Prod handles zeros exactly.
template <typename T>
void reduce_backward(const T* dy, const T* x, const T* y, T* dx, const ReduceLayout& layout, ReduceKind kind);

// Index of the max (or min) along the middle axis of x viewed as [outer, n, inner]; y [outer, inner]. Ties go to the
// first index, or the last when select_last. NaN never wins.
template <typename T>
void arg_reduce(const T* x, int64_t* y, int64_t outer, int64_t n, int64_t inner, bool is_max, bool select_last);

}  // namespace gv::cpu

#include "kernels/cpu/broadcast.h"

namespace gv::cpu {

bool broadcast_shape(const Shape& a, const Shape& b, Shape* out) {
  const size_t rank = std::max(a.size(), b.size());
  Shape r(rank);
  for (size_t i = 0; i < rank; ++i) {
    // Aligned from the right; missing leading dims count as 1.
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da == db || db == 1) r[i] = da;
    else if (da == 1) r[i] = db;
    else return false;
  }
  *out = std::move(r);
  return true;
}

BroadcastPlan make_broadcast_plan(const Shape& out, const std::vector<Shape>& inputs) {
  BroadcastPlan p;
  p.num_inputs = static_cast<int>(inputs.size());
  p.numel = shape_numel(out);
  const int rank = static_cast<int>(out.size());

  // Full-rank strides of each input in the output's index space (0 where the input is broadcast).
  std::vector<Shape> full(p.num_inputs, Shape(rank, 0));
  for (int k = 0; k < p.num_inputs; ++k) {
    const Shape& s = inputs[k];
    const int lead = rank - static_cast<int>(s.size());
    int64_t acc = 1;
    for (int d = rank - 1; d >= lead; --d) {
      const int64_t n = s[d - lead];
      full[k][d] = (n == 1) ? 0 : acc;
      acc *= n;
    }
  }

  // Drop size-1 output dims, then merge dim d into the collapsed dim after it when every operand walks both
  // contiguously (stride[d] == stride[next] * size[next]; broadcast dims have 0 == 0 * size).
  for (int d = rank - 1; d >= 0; --d) {
    if (out[d] == 1) continue;
    if (!p.dims.empty()) {
      bool mergeable = true;
      for (int k = 0; k < p.num_inputs && mergeable; ++k) {
        mergeable = full[k][d] == p.strides[k].front() * p.dims.front();
      }
      if (mergeable) {
        p.dims.front() *= out[d];
        continue;
      }
    }
    p.dims.insert(p.dims.begin(), out[d]);
    for (int k = 0; k < p.num_inputs; ++k) p.strides[k].insert(p.strides[k].begin(), full[k][d]);
  }
  if (p.dims.empty()) {  // a scalar or all-ones output: one row of one element
    p.dims.push_back(1);
    for (int k = 0; k < p.num_inputs; ++k) p.strides[k].push_back(0);
  }
  return p;
}

}  // namespace gv::cpu

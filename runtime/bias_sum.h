// The bias-gradient pattern autograd emits (GradBuilder::sum_to_shape of a [..., N] gradient onto a bias [N]): a
// ReduceSum over every leading axis with keepdims. Graph passes that send the sum elsewhere (the GELU-gradient product,
// the shared bf16 copies) recognise it here.
#pragma once
#include <algorithm>
#include <vector>

#include "runtime/graph.h"

namespace gv {

// Whether `n` is ReduceSum(v, axes = 0 .. rank-2 as a constant input) with keepdims.
inline bool is_bias_sum(const Graph& g, const Node& n, ValueId v) {
  if (n.op_type != "ReduceSum" || !n.domain.empty() || n.inputs.size() != 2 || n.inputs[0] != v) return false;
  if (n.attrs.get_int("keepdims", 1) != 1 || !g.is_constant(n.inputs[1])) return false;
  const int64_t r = static_cast<int64_t>(g.value(v).shape.size());
  std::vector<int64_t> axes = g.value(n.inputs[1]).data.to_i64_vector();
  for (int64_t& a : axes) a = a < 0 ? a + r : a;
  std::sort(axes.begin(), axes.end());
  if (static_cast<int64_t>(axes.size()) != r - 1) return false;
  for (int64_t i = 0; i < r - 1; ++i)
    if (axes[i] != i) return false;
  return true;
}

}  // namespace gv

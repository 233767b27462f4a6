// Shared by the tensor- and vocabulary-parallel passes: which values are weights (parameters, or computed from
// parameters and constants only, like a Transpose of a weight) and which nodes read each value.
#pragma once
#include <vector>

#include "runtime/graph.h"

namespace gv::partitioner {

struct WeightValues {
  std::vector<char> weight;                  // per value: a parameter, or computed from parameters and constants only
  std::vector<std::vector<NodeId>> users;    // per value: the nodes reading it, in node order
};

inline WeightValues find_weight_values(const Graph& g) {
  WeightValues w;
  const size_t nv = g.values.size();
  w.weight.assign(nv, 0);
  w.users.assign(nv, {});
  for (size_t v = 0; v < nv; ++v) w.weight[v] = g.values[v].kind == ValueKind::kParameter;
  for (NodeId n = 0; n < static_cast<NodeId>(g.nodes.size()); ++n) {
    const Node& node = g.nodes[n];
    bool any = false, all = true;
    for (ValueId in : node.inputs) {
      if (in == kNoValue) continue;
      w.users[in].push_back(n);
      if (w.weight[in]) any = true;
      else if (g.value(in).kind != ValueKind::kConstant) all = false;
    }
    if (any && all) {
      for (ValueId o : node.outputs) {
        if (o != kNoValue) w.weight[o] = 1;
      }
    }
  }
  return w;
}

}  // namespace gv::partitioner

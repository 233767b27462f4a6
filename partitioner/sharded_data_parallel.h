// Sharded data parallelism (ZeRO-3) as a graph pass: a parameter becomes this rank's flat shard of it; an AllGather
// over the data-parallel group rebuilds the whole parameter right before its first use (its backward reduce-scatters
// the gradient, so each rank's shard receives the group's summed gradient). The gather is marked `rematerialize`: it
// runs again right before the backward pass needs the parameter, so the whole parameter lives only while it is used.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace gv::partitioner {

struct ShardedParam {
  std::string name;        // the parameter (after tensor parallelism: this rank's TP piece)
  std::vector<int> group;  // world ranks of its data-parallel group, in shard order
  int index = 0;           // this rank's position in the group
};

// Rewrites `g`; returns, per sharded parameter, the flat range [begin, end) of it this rank now holds. Parameters
// too small to give every rank at least one element are left whole (and left out of the result).
Expected<std::map<std::string, std::pair<int64_t, int64_t>>> apply_sharded_data_parallel(
    Graph& g, const std::vector<ShardedParam>& params);

}  // namespace gv::partitioner

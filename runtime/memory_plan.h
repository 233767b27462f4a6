// Static memory planning: every activation and graph input of a graph gets a fixed offset in one arena, buffers
// reused by liveness. The arena size is the peak activation memory of the plan, known before anything runs.
#pragma once
#include <cstddef>
#include <vector>

#include "runtime/graph.h"

namespace gv {

struct MemoryPlan {
  std::vector<int64_t> offset;  // per value; -1 for values outside the arena (parameters, constants)
  size_t arena_bytes = 0;
  size_t naive_bytes = 0;  // sum of all planned buffers, without reuse (for reports)
};

// `order` lists node indices in execution order. Values in `keep_alive` (e.g. graph outputs, gradients read after the
// run) live to the end.
MemoryPlan plan_memory(const Graph& graph, const std::vector<NodeId>& order, const std::vector<ValueId>& keep_alive,
                       size_t alignment = 64);

}  // namespace gv

// Static memory planning: every activation and graph input of a graph gets a fixed offset in one arena, buffers
// reused by liveness. The arena size is the peak activation memory of the plan, known before anything runs.
#pragma once
#include <cstddef>
#include <vector>

#include "runtime/graph.h"

namespace gv {

struct MemoryPlan {
  // Per value; -1 for values outside the arena (parameters, constants) and for outputs nothing reads that their op
  // may leave unwritten (OpSchema::skippable_outputs: the kernel gets a null buffer).
  std::vector<int64_t> offset;
  // Per value: the arena value whose buffer it shares, or kNoValue. A view op's output (OpSchema::view: Reshape, Flatten, Squeeze, ...) shares its
  // input's buffer unless an in-place op (one with no outputs, e.g. AllReduce) touches either, so that the node
  // needs no copy; the shared buffer lives as long as the longest-lived of them.
  std::vector<ValueId> alias_of;
  size_t arena_bytes = 0;
  size_t naive_bytes = 0;  // sum of all planned buffers, without reuse (for reports)
};

// `order` lists node indices in execution order. With `alias_views`, view ops' outputs share their input's buffer. Values in `keep_alive` (e.g. graph outputs, gradients read after the
// run) live to the end.
MemoryPlan plan_memory(const Graph& graph, const std::vector<NodeId>& order, const std::vector<ValueId>& keep_alive,
                       size_t alignment = 64, bool alias_views = true);

}  // namespace gv

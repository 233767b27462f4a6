#include "runtime/memory_plan.h"

#include <algorithm>

#include "runtime/op_registry.h"

namespace gv {

MemoryPlan plan_memory(const Graph& graph, const std::vector<NodeId>& order, const std::vector<ValueId>& keep_alive,
                       size_t alignment, bool alias_views) {
  const int n_values = static_cast<int>(graph.values.size());
  const int end = static_cast<int>(order.size());
  std::vector<int> first(n_values, -2), last(n_values, -2);
  auto in_arena = [&](ValueId v) {
    ValueKind k = graph.values[v].kind;
    return k == ValueKind::kActivation || k == ValueKind::kInput;
  };
  MemoryPlan plan;
  plan.alias_of.assign(n_values, kNoValue);
  if (alias_views) {
    // Values an in-place op may write (inputs of nodes without outputs, unless the op only reads them) keep buffers
    // of their own.
    std::vector<bool> written(n_values, false);
    for (NodeId id : order) {
      const Node& n = graph.nodes[id];
      if (!n.outputs.empty()) continue;
      const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type);
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        if (n.inputs[i] != kNoValue && node_writes_input(schema, n, i)) written[n.inputs[i]] = true;
      }
    }
    for (NodeId id : order) {
      const Node& n = graph.nodes[id];
      if (n.inputs.empty() || n.outputs.empty() || n.inputs[0] == kNoValue) continue;
      const ValueId in = n.inputs[0], out = n.outputs[0];
      if (!in_arena(in) || !in_arena(out) || written[in] || written[out]) continue;
      if (graph.values[in].dtype != graph.values[out].dtype) continue;
      const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type);
      if (!schema || !schema->view) continue;
      plan.alias_of[out] = plan.alias_of[in] != kNoValue ? plan.alias_of[in] : in;
    }
  }
  std::vector<char> read(n_values, 0);
  for (ValueId v : graph.inputs) first[v] = last[v] = -1;
  for (int step = 0; step < end; ++step) {
    const Node& n = graph.nodes[order[step]];
    for (ValueId in : n.inputs) {
      if (in == kNoValue) continue;
      read[in] = 1;
      if (in_arena(in)) last[in] = std::max(last[in], step);
    }
    for (ValueId o : n.outputs) {
      if (first[o] == -2) first[o] = step;
      last[o] = std::max(last[o], step);
    }
  }
  for (ValueId v : keep_alive) {
    if (v != kNoValue && in_arena(v)) last[v] = end, read[v] = 1;
  }
  for (ValueId v : graph.outputs) {
    if (in_arena(v)) last[v] = end;
    read[v] = 1;
  }
  // Outputs nothing reads that their op may skip (OpSchema::skippable_outputs) get no buffer.
  for (NodeId id : order) {
    const Node& n = graph.nodes[id];
    const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type);
    if (!schema) continue;
    for (int o : schema->skippable_outputs) {
      if (o < static_cast<int>(n.outputs.size()) && !read[n.outputs[o]] && in_arena(n.outputs[o])) {
        first[n.outputs[o]] = -2;
      }
    }
  }
  // A shared buffer lives from its root's first use to the last use of any value sharing it.
  for (ValueId v = 0; v < n_values; ++v) {
    const ValueId root = plan.alias_of[v];
    if (root != kNoValue && first[v] != -2) last[root] = std::max(last[root], last[v]);
  }

  struct Item {
    ValueId v;
    size_t size;
    int begin, end;
  };
  std::vector<Item> items;
  plan.offset.assign(n_values, -1);
  for (ValueId v = 0; v < n_values; ++v) {
    if (!in_arena(v) || first[v] == -2 || plan.alias_of[v] != kNoValue) continue;
    size_t bytes = static_cast<size_t>(shape_numel(graph.values[v].shape)) * dtype_size(graph.values[v].dtype);
    bytes = std::max<size_t>((bytes + alignment - 1) / alignment * alignment, alignment);
    items.push_back({v, bytes, first[v], last[v]});
    plan.naive_bytes += bytes;
  }
  // Largest first, each at the lowest offset that no time-overlapping placed buffer occupies.
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.size > b.size; });
  struct Placed {
    size_t off, size;
    int begin, end;
  };
  std::vector<Placed> placed;
  std::vector<std::pair<size_t, size_t>> busy;
  for (const Item& it : items) {
    busy.clear();
    for (const Placed& p : placed) {
      if (p.begin <= it.end && it.begin <= p.end) busy.emplace_back(p.off, p.off + p.size);
    }
    std::sort(busy.begin(), busy.end());
    size_t off = 0;
    for (const auto& b : busy) {
      if (off + it.size <= b.first) break;
      off = std::max(off, b.second);
    }
    placed.push_back({off, it.size, it.begin, it.end});
    plan.offset[it.v] = static_cast<int64_t>(off);
    plan.arena_bytes = std::max(plan.arena_bytes, off + it.size);
  }
  for (ValueId v = 0; v < n_values; ++v) {
    if (plan.alias_of[v] != kNoValue) plan.offset[v] = plan.offset[plan.alias_of[v]];
  }
  return plan;
}

}  // namespace gv

// prefetch_copy_gathers (runtime/training_graph.h): ZeRO-2's async gathers of the weights' bf16 copies move from the
// end of the step to the start of the next step's forward pass, each waited for right before its first reader.
#include <algorithm>
#include <map>
#include <vector>

#include "runtime/op_registry.h"
#include "runtime/training_graph.h"

namespace gv {

Status prefetch_copy_gathers(TrainingGraph& tg) {
  Graph& g = tg.graph;
  // The gathers that move: async GatherShardsInPlace of a bf16 state (a sharded master's copy), after the backward.
  std::map<ValueId, NodeId> gather_of;
  for (size_t i = tg.optimizer_begin; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.op_type != "GatherShardsInPlace" || n.domain != kGalvatronDomain) continue;
    if (n.attrs.get_int("async", 0) != 1) continue;
    const Value& v = g.value(n.inputs[0]);
    if (v.kind == ValueKind::kState && v.dtype == DType::kBFloat16) gather_of[n.inputs[0]] = static_cast<NodeId>(i);
  }
  if (gather_of.empty()) return Status::ok();
  // The forward node that first reads each copy; copies the forward does not read keep their gather at the end.
  std::map<size_t, std::vector<NodeId>> by_first_use;  // forward node -> the gathers of the copies it reads first
  std::vector<char> moved(g.nodes.size(), 0);
  for (size_t i = tg.prologue_end; i < tg.backward_begin; ++i) {
    for (ValueId v : g.nodes[i].inputs) {
      auto it = gather_of.find(v);
      if (it == gather_of.end() || moved[it->second]) continue;
      by_first_use[i].push_back(it->second);
      moved[it->second] = 1;
    }
  }
  if (by_first_use.empty()) return Status::ok();
  const size_t n_old = g.nodes.size();
  size_t total = 0;
  for (const auto& [reader, gathers] : by_first_use) total += gathers.size();
  auto add_wait = [&g](size_t keep_pending) -> Expected<NodeId> {
    Attributes a;
    if (keep_pending > 0) a.set_int("keep_pending", static_cast<int64_t>(keep_pending));
    GV_RETURN_IF_ERROR(
        add_in_place_node(g, "WaitCollectives", {}, std::move(a), {}, g.unique_name("wait_collectives/prefetch")));
    return static_cast<NodeId>(g.nodes.size()) - 1;
  };
  // prologue | every gather, in the order of their first readers | forward nodes, each first reader after a wait for
  // all but the gathers of the later readers (keep_pending): the gathers run one after another on the communication
  // stream beside the forward pass, and each reader waits for its own only.
  std::vector<NodeId> order;
  order.reserve(n_old + by_first_use.size());
  for (size_t i = 0; i < tg.prologue_end; ++i) order.push_back(static_cast<NodeId>(i));
  for (const auto& [reader, gathers] : by_first_use) order.insert(order.end(), gathers.begin(), gathers.end());
  size_t waited = 0;  // gathers covered by the waits so far
  std::vector<size_t> position(n_old + by_first_use.size(), 0);
  for (size_t i = tg.prologue_end; i < n_old; ++i) {
    auto group = by_first_use.find(i);
    if (group != by_first_use.end()) {
      waited += group->second.size();
      GV_ASSIGN_OR_RETURN(NodeId w, add_wait(total - waited));
      order.push_back(w);
    }
    if (!moved[i]) order.push_back(static_cast<NodeId>(i));
  }
  if (order.size() != position.size()) return internal_error("prefetch_copy_gathers: lost nodes while reordering");
  for (size_t j = 0; j < order.size(); ++j) position[order[j]] = j;
  // The regions start where their first node that stays went (the backward's first node never moves; the optimizer
  // region's first staying node is its first node or a later one).
  size_t optimizer_begin = order.size();
  for (size_t i = tg.optimizer_begin; i < n_old; ++i) {
    if (!moved[i]) {
      optimizer_begin = position[i];
      break;
    }
  }
  const size_t backward_begin = position[tg.backward_begin];
  if (!g.reorder_nodes(order)) return internal_error("prefetch_copy_gathers: the new order is not a permutation");
  tg.backward_begin = backward_begin;
  tg.optimizer_begin = optimizer_begin;
  return Status::ok();
}

}  // namespace gv

// move_updates_into_backward (runtime/training_graph.h): each optimizer update moves from after the backward pass to
// right after the last node that touches what it reads or writes, and is marked to run beside the backward (attr
// beside_backward = 1: the CUDA backend issues it on a second stream); one galvatron WaitUpdates ends the step.
#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "runtime/op_registry.h"
#include "runtime/training_graph.h"

namespace gv {
namespace {

bool is_update(const Node& n) {
  return n.domain == kGalvatronDomain && (n.op_type == "AdamW" || n.op_type == "AdamWMulti" || n.op_type == "SGD");
}

// The update's scalar inputs (lr, step, grad_norm) by position; every other input is a parameter, gradient, state or
// copy that it reads or writes.
std::set<size_t> scalar_inputs(const Node& n) {
  if (n.op_type == "AdamWMulti") return {0, 1, 2};
  if (n.op_type == "AdamW") return {4, 5, 6};
  return {3, 4, 5};  // SGD
}
size_t grad_norm_input(const Node& n) { return n.op_type == "AdamWMulti" ? 2 : n.op_type == "AdamW" ? 6 : 5; }

// Why the pass leaves the graph as it is ("" when it may move the updates).
std::string reason_to_keep(const TrainingGraph& tg) {
  const Graph& g = tg.graph;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.domain != kGalvatronDomain) continue;
    if (n.op_type == "AllReduce" || n.op_type == "ReduceScatter" || n.op_type == "AllGather" ||
        n.op_type == "GatherShardsInPlace" || n.op_type == "WaitCollectives" || n.op_type == "TensorParallelReduce" ||
        n.op_type == "Send" || n.op_type == "Recv" || n.op_type == "AccumulateGrad") {
      return "the graph communicates or accumulates gradients (" + n.op_type + ")";
    }
    if (i < tg.optimizer_begin) continue;
    if (n.op_type == "GradNorm") continue;
    if (!is_update(n)) return "the optimizer region holds a " + n.op_type + " node";
    if (n.attrs.get_double("max_norm", 0.0) > 0) return "gradient clipping needs the global norm first";
    if (n.attrs.get_int("zero_grad", 0) != 0) return "the updates zero their accumulated gradients";
  }
  return "";
}

}  // namespace

Status move_updates_into_backward(TrainingGraph& tg) {
  if (!reason_to_keep(tg).empty()) return Status::ok();
  Graph& g = tg.graph;
  const size_t n_old = g.nodes.size();
  // Per value: the last node before the optimizer region that reads or writes it.
  std::vector<long> last_touch(g.values.size(), -1);
  for (size_t i = tg.prologue_end; i < tg.optimizer_begin; ++i) {
    for (ValueId v : g.nodes[i].inputs)
      if (v != kNoValue) last_touch[v] = static_cast<long>(i);
    for (ValueId v : g.nodes[i].outputs)
      if (v != kNoValue) last_touch[v] = static_cast<long>(i);
  }
  // Each update goes after the last of those nodes over its parameters, gradients, states and copies (the forward
  // and backward nodes that read the weights or their copies, the gradients' producers). Without clipping it needs
  // no gradient norm, which comes after the whole backward.
  std::map<size_t, std::vector<NodeId>> after;  // node -> the updates placed right after it, in their old order
  std::vector<char> moved(n_old, 0);
  std::vector<ValueId> read_beside;  // the arena values the moved updates read, kept alive until WaitUpdates
  for (size_t i = tg.optimizer_begin; i < n_old; ++i) {
    Node& n = g.nodes[i];
    if (!is_update(n)) continue;
    const std::set<size_t> scalars = scalar_inputs(n);
    long last = static_cast<long>(tg.backward_begin);  // never before the backward (its nodes keep their index)
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      const ValueId v = n.inputs[k];
      if (v == kNoValue) continue;
      const ValueKind kind = g.value(v).kind;
      if (kind == ValueKind::kActivation || kind == ValueKind::kInput) read_beside.push_back(v);
      if (!scalars.count(k)) last = std::max(last, last_touch[v]);
    }
    const size_t norm = grad_norm_input(n);
    if (norm < n.inputs.size()) n.inputs[norm] = kNoValue;
    n.attrs.set_int("beside_backward", 1);
    after[static_cast<size_t>(last)].push_back(static_cast<NodeId>(i));
    moved[i] = 1;
  }
  if (after.empty()) return Status::ok();
  std::sort(read_beside.begin(), read_beside.end());
  read_beside.erase(std::unique(read_beside.begin(), read_beside.end()), read_beside.end());
  GV_RETURN_IF_ERROR(
      add_in_place_node(g, "WaitUpdates", read_beside, {}, {}, g.unique_name("optimizer/wait_updates")));
  const NodeId wait_id = static_cast<NodeId>(g.nodes.size()) - 1;

  std::vector<NodeId> order;
  order.reserve(g.nodes.size());
  size_t count = 0;
  for (size_t i = 0; i < n_old; ++i) {
    if (!moved[i]) order.push_back(static_cast<NodeId>(i));
    auto it = after.find(i);
    if (it == after.end()) continue;
    order.insert(order.end(), it->second.begin(), it->second.end());
    count += it->second.size();
  }
  order.push_back(wait_id);
  // The optimizer region now starts at its first node that stays (the gradient norm).
  size_t optimizer_begin = order.size() - 1;
  for (size_t j = 0; j < order.size(); ++j) {
    if (static_cast<size_t>(order[j]) >= tg.optimizer_begin && !moved[order[j]] && order[j] != wait_id) {
      optimizer_begin = j;
      break;
    }
  }
  if (!g.reorder_nodes(order)) return internal_error("move_updates_into_backward: the new order is not a permutation");
  tg.optimizer_begin = optimizer_begin;
  tg.fused.updates_in_backward = static_cast<int>(count);
  return Status::ok();
}

std::string why_updates_stay_after_backward(const TrainingGraph& tg) { return reason_to_keep(tg); }

}  // namespace gv

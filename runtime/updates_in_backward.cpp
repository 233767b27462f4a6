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

// The GradNorm node of the optimizer region, if the updates can sum its squares instead (grad_norm_in_updates): every
// update an AdamW or AdamWMulti, the norm unweighted and within this process. -1 otherwise.
long foldable_grad_norm(const TrainingGraph& tg, size_t n_old) {
  const Graph& g = tg.graph;
  long norm = -1;
  for (size_t i = tg.optimizer_begin; i < n_old; ++i) {
    const Node& n = g.nodes[i];
    if (n.op_type == "GradNorm") {
      if (norm >= 0 || n.attrs.get_int("all_reduce", 0) != 0) return -1;
      for (float w : n.attrs.get_floats("weights"))
        if (w != 1.0f) return -1;
      norm = static_cast<long>(i);
    } else if (is_update(n) && n.op_type == "SGD") {
      return -1;
    }
  }
  return norm;
}

// The rewrite of grad_norm_in_updates: a GradNormBegin (returned) makes the float64 accumulator, every update adds its
// gradient's squares to it (attr sum_squares), and GradNorm `norm` becomes a GradNormEnd of it (same output value).
Expected<NodeId> sum_norm_in_updates(Graph& g, NodeId norm, const std::vector<char>& moved) {
  Node b;
  b.op_type = "GradNormBegin";
  b.domain = kGalvatronDomain;
  b.opset = 1;
  b.name = g.unique_name("optimizer/grad_norm_begin");
  GV_ASSIGN_OR_RETURN(auto outs, g.add_node(std::move(b), {g.unique_name("galvatron.grad_sum_squares")}));
  const ValueId acc = outs[0];
  for (size_t i = 0; i < moved.size(); ++i) {
    if (!moved[i]) continue;
    Node& n = g.nodes[i];
    n.attrs.set_int("sum_squares", 1);
    if (n.op_type == "AdamW") {
      n.inputs.resize(9, kNoValue);
      n.inputs[8] = acc;
    } else {
      n.inputs.push_back(acc);  // AdamWMulti: after the last parameter's four
    }
  }
  Node& end = g.nodes[norm];
  end.op_type = "GradNormEnd";
  end.inputs = {acc};
  end.attrs.erase("weights");
  end.attrs.erase("all_reduce");
  return static_cast<NodeId>(g.nodes.size()) - 1;
}

}  // namespace

Status move_updates_into_backward(TrainingGraph& tg, bool grad_norm_in_updates) {
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
  const long norm = grad_norm_in_updates ? foldable_grad_norm(tg, n_old) : -1;
  NodeId begin_id = -1;
  if (norm >= 0) {
    GV_ASSIGN_OR_RETURN(begin_id, sum_norm_in_updates(g, static_cast<NodeId>(norm), moved));
  }
  std::sort(read_beside.begin(), read_beside.end());
  read_beside.erase(std::unique(read_beside.begin(), read_beside.end()), read_beside.end());
  GV_RETURN_IF_ERROR(
      add_in_place_node(g, "WaitUpdates", read_beside, {}, {}, g.unique_name("optimizer/wait_updates")));
  const NodeId wait_id = static_cast<NodeId>(g.nodes.size()) - 1;

  std::vector<NodeId> order;
  order.reserve(g.nodes.size());
  size_t count = 0;
  for (size_t i = 0; i < n_old; ++i) {
    if (i == tg.backward_begin && begin_id >= 0) order.push_back(begin_id);  // before any update
    if (!moved[i] && static_cast<long>(i) != norm) order.push_back(static_cast<NodeId>(i));
    auto it = after.find(i);
    if (it == after.end()) continue;
    order.insert(order.end(), it->second.begin(), it->second.end());
    count += it->second.size();
  }
  order.push_back(wait_id);
  // The optimizer region now starts at its first node that stays (the gradient norm), or at WaitUpdates when the
  // norm's GradNormEnd follows it.
  size_t optimizer_begin = order.size() - 1;
  if (norm >= 0) order.push_back(static_cast<NodeId>(norm));
  for (size_t j = 0; j < order.size() && norm < 0; ++j) {
    if (static_cast<size_t>(order[j]) >= tg.optimizer_begin && !moved[order[j]] && order[j] != wait_id) {
      optimizer_begin = j;
      break;
    }
  }
  if (!g.reorder_nodes(order)) return internal_error("move_updates_into_backward: the new order is not a permutation");
  tg.optimizer_begin = optimizer_begin;
  tg.fused.updates_in_backward = static_cast<int>(count);
  tg.fused.grad_norm_in_updates = norm >= 0 ? 1 : 0;
  return Status::ok();
}

std::string why_updates_stay_after_backward(const TrainingGraph& tg) { return reason_to_keep(tg); }

}  // namespace gv

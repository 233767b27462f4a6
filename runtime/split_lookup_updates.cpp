// split_lookup_updates (runtime/training_graph.h): a tied embedding's AdamW in two parts, so that most of it runs
// beside the backward instead of after it.
//
// GPT-2's token embedding W [V, C] is also its LM head's weight. Its gradient is the head's dense part D, made by the
// fused loss at the end of the forward (or by the head's product early in the backward), plus the lookup's rows,
// added by the very last backward node:
//
//   D = LinearCrossEntropy(..)[dW]           ... the backward ...      S = GatherGradAdd(D, dY, ids)
//   AdamW(W, S, m, v, ..)                                              (after everything: nothing runs beside it)
//
// The rows no token of the batch looked up are final in D as soon as D is made. The pass rewrites to
//
//   D = ..;  mask = RowsLookedUp(ids)
//   AdamW(W, D, m, v, .., RowMask = mask) row_mask_value 0        the rows not looked up: may start right after D
//   ... the backward ...
//   GatherGradAddInPlace(D, dY, ids)                              D now holds S (its rows, added in place)
//   AdamW(W, D, m, v, .., RowMask = mask) row_mask_value 1        the looked-up rows (a few thousand of 50k)
//
// and move_updates_into_backward places the first part after D's producer. The same arithmetic per element: both parts
// run AdamW's element update on the same gradient values as the single update would; the gradient-norm squares
// (attr sum_squares) are summed in two parts. S's uses move to D, and so do TrainingGraph::grads and reported_grads.
#include <algorithm>
#include <set>
#include <vector>

#include "runtime/op_registry.h"
#include "runtime/training_graph.h"

namespace gv {
namespace {

// The lookup-gradient sum S = GatherGradAdd(D, dY, ids) that update `u` reads as its gradient, when the pass applies:
// D read by nothing else, S by nothing but optimizer nodes, neither a graph output; the update a whole float32 AdamW
// over the table (no shard range, no zeroing). Returns S's producer, or -1.
NodeId splittable_sum(const TrainingGraph& tg, const Node& u, const std::vector<int>& uses,
                      const std::set<ValueId>& outputs) {
  const Graph& g = tg.graph;
  if (u.op_type != "AdamW" || u.domain != kGalvatronDomain || u.inputs.size() < 6) return -1;
  if (u.attrs.get_int("shard_offset", -1) >= 0 || u.attrs.get_int("zero_grad", 0) != 0) return -1;
  if (u.inputs.size() > 9 && u.inputs[9] != kNoValue) return -1;  // already split
  const ValueId s = u.inputs[1];
  const NodeId q = g.value(s).producer;
  if (q < 0) return -1;
  const Node& sum = g.nodes[q];
  if (sum.op_type != "GatherGradAdd" || sum.domain != kGalvatronDomain || sum.inputs.size() != 3) return -1;
  if (sum.attrs.get_int("axis", 0) != 0) return -1;
  const ValueId d = sum.inputs[0];
  if (uses[d] != 1 || outputs.count(d) || outputs.count(s)) return -1;
  const Value &pv = g.value(u.inputs[0]), &dv = g.value(d);
  if (pv.dtype != DType::kFloat32 || dv.dtype != DType::kFloat32 || dv.shape != pv.shape || dv.shape.empty()) return -1;
  if (g.value(d).producer < 0) return -1;
  for (size_t i = tg.optimizer_begin; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.op_type == "AdamW" || n.op_type == "GradNorm") continue;
    for (ValueId v : n.inputs)
      if (v == s) return -1;
  }
  return q;
}

}  // namespace

Expected<std::vector<SplitLookupUpdate>> split_lookup_updates(TrainingGraph& tg) {
  Graph& g = tg.graph;
  std::vector<SplitLookupUpdate> out;
  const std::vector<int> uses = g.use_counts();
  const std::set<ValueId> outputs(g.outputs.begin(), g.outputs.end());
  const size_t n_old = g.nodes.size();
  for (size_t i = tg.optimizer_begin; i < n_old; ++i) {
    const NodeId q = splittable_sum(tg, g.nodes[i], uses, outputs);
    if (q < 0) continue;
    const ValueId s = g.nodes[q].outputs[0], d = g.nodes[q].inputs[0], ids = g.nodes[q].inputs[2];
    const int64_t rows = g.value(d).shape[0];
    // The sum, in place into D; every later reader of S reads D.
    Node& sum = g.nodes[q];
    sum.op_type = "GatherGradAddInPlace";
    sum.outputs.clear();
    for (size_t j = tg.optimizer_begin; j < n_old; ++j)
      for (ValueId& v : g.nodes[j].inputs)
        if (v == s) v = d;
    for (auto& [param, grad] : tg.grads)
      if (grad == s) grad = d;
    for (auto& [name, grad] : tg.reported_grads)
      if (grad == s) grad = d;
    g.reindex();  // S has no producer now; nothing refers to it

    Node mask;
    mask.op_type = "RowsLookedUp";
    mask.domain = kGalvatronDomain;
    mask.opset = 1;
    mask.name = g.unique_name(g.nodes[i].name + "/rows_looked_up");
    mask.inputs = {ids};
    mask.attrs.set_int("rows", rows);
    GV_ASSIGN_OR_RETURN(auto mask_out, g.add_node(std::move(mask), {g.unique_name("galvatron.rows_looked_up")}));
    const NodeId mask_id = static_cast<NodeId>(g.nodes.size()) - 1;

    Node& early = g.nodes[i];
    early.inputs.resize(10, kNoValue);
    early.inputs[9] = mask_out[0];
    early.attrs.set_int("row_mask_value", 0);
    Node late = early;
    late.name = g.unique_name(early.name + "/looked_up_rows");
    late.attrs.set_int("row_mask_value", 1);
    GV_RETURN_IF_ERROR(g.add_node(std::move(late)).status());
    const NodeId late_id = static_cast<NodeId>(g.nodes.size()) - 1;
    out.push_back({static_cast<NodeId>(i), late_id, mask_id, g.value(d).producer});
  }
  return out;
}

}  // namespace gv

// fold_gather_grad_adds (runtime/fusion.h): a tied embedding's gradient sum in one node.
//
//   S = Add(GatherGrad(g, idx), D)  ->  S = GatherGradAdd(D, g, idx)
//
// GPT-2's token embedding is also its LM head's weight: autograd sums the head's dense [V, C] weight gradient D with
// the lookup's GatherGrad, which zeroes a [V, C] tensor for the few rows it touches; the Add then reads two [V, C]
// tensors and writes a third. GatherGradAdd copies D and adds the looked-up rows: one [V, C] read and write instead of
// a write, two reads and a write (gpt-1.5b on an H100: GatherGrad 0.15 + Add 0.33 ms per step). The sum's rounding
// order changes (D + g1 + g2 instead of D + (g1 + g2) for a token seen twice), within float rounding of the Add's.
// S keeps its id and producer position, so the passes after this one (gradient sync placement, bf16 gradients) see
// the same graph shape.
#include <set>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {

Status fold_gather_grad_adds(Graph& g, size_t backward_begin, int* fused) {
  const std::vector<int> uses = g.use_counts();
  const std::set<ValueId> outputs(g.outputs.begin(), g.outputs.end());
  std::vector<char> gone(g.nodes.size(), 0);
  int count = 0;
  for (NodeId id = static_cast<NodeId>(backward_begin); id < static_cast<NodeId>(g.nodes.size()); ++id) {
    Node& add = g.nodes[id];
    if (add.op_type != "Add" || !add.domain.empty() || add.inputs.size() != 2 || add.outputs.size() != 1) continue;
    for (int k = 0; k < 2; ++k) {
      const ValueId gg = add.inputs[k], d = add.inputs[1 - k];
      if (gg == kNoValue || d == kNoValue || gg == d) continue;
      const NodeId p = g.value(gg).producer;
      if (p < 0 || gone[p] || g.nodes[p].op_type != "GatherGrad" || g.nodes[p].domain != kGalvatronDomain) continue;
      if (uses[gg] != 1 || outputs.count(gg)) continue;
      const Value &gval = g.value(gg), &dv = g.value(d), &sv = g.value(add.outputs[0]);
      if (gval.dtype != DType::kFloat32 && gval.dtype != DType::kFloat64) continue;  // the kernels' types
      if (dv.dtype != gval.dtype || dv.shape != gval.shape || sv.shape != gval.shape || sv.dtype != gval.dtype) continue;
      const Node gather = g.nodes[p];
      add.op_type = "GatherGradAdd";
      add.domain = kGalvatronDomain;
      add.opset = 1;
      add.attrs = gather.attrs;
      add.attrs.erase("shape");
      add.inputs = {d, gather.inputs[0], gather.inputs[1]};
      gone[p] = 1;
      ++count;
      break;
    }
  }
  if (count == 0) return Status::ok();
  g.erase_nodes(gone);
  *fused += count;
  return Status::ok();
}

}  // namespace gv

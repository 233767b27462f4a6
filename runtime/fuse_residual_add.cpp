// Residual adds folded into the node that produces one of their operands (runtime/fusion.h):
//
//   forward   Add(Linear(X, W, bias?), R)        -> Linear(X, W, bias?, R)         (cuBLASLt's epilogue adds R)
//   backward  Add(LayerNormalizationGrad(..).dX, G) -> LayerNormalizationGrad(.., Addend = G)
//             Add(RMSNormalizationGrad(..).dX, G)   -> RMSNormalizationGrad(.., Addend = G)
//
// A pre-LayerNorm transformer layer adds each branch's output to the residual stream (the first form, after the
// attention's output projection and the MLP's down projection), and its backward pass sums the stream's gradient with
// the LayerNorm's input gradient (the second form, autograd's accumulation of the two contributions to the stream).
// Each Add reads two float32 tensors and writes a third; folded, the producer adds the operand as it stores its
// result. Exact rewrites: the CPU kernels add in the same order as the Add did.
#include <map>
#include <set>
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool is_plain_add(const Node& n) {
  return n.op_type == "Add" && n.domain.empty() && n.inputs.size() == 2 && n.outputs.size() == 1 &&
         n.inputs[0] != kNoValue && n.inputs[1] != kNoValue && n.inputs[0] != n.inputs[1];
}

bool is_galvatron(const Node& n, const char* op) { return n.op_type == op && n.domain == kGalvatronDomain; }

// A Linear that can take a residual: no activation, float32 result, none yet.
bool takes_residual(const Graph& g, const Node& n) {
  return is_galvatron(n, "Linear") && n.outputs.size() == 1 && n.inputs.size() <= 3 &&
         n.attrs.get_string("activation", "none") == "none" && n.attrs.get_int("out_dtype", 1) == 1 &&
         g.value(n.outputs[0]).dtype == DType::kFloat32;
}

bool takes_addend(const Graph& g, const Node& n) {
  return is_galvatron(n, "LayerNormalizationGrad") && !n.outputs.empty() && n.outputs[0] != kNoValue &&
         n.inputs.size() <= 7 && g.value(n.outputs[0]).dtype == DType::kFloat32;
}
bool rms_takes_addend(const Graph& g, const Node& n) {
  return is_galvatron(n, "RMSNormalizationGrad") && !n.outputs.empty() && n.outputs[0] != kNoValue &&
         n.inputs.size() <= 3 && g.value(n.outputs[0]).dtype == DType::kFloat32;
}

// For each Add from `begin` on with an operand that `takes` accepts as its producer's output `slot` (read by this Add
// only, not a graph output or a kept value) and another operand of the same type and shape that exists before that
// producer runs: the producer takes the other operand as input `input` and writes the Add's output. Returns the count;
// the Adds are erased, the producers' own outputs left as orphan values.
template <typename Takes>
int fold_adds(Graph& g, size_t begin, const std::set<std::string>& keep, Takes takes, size_t input) {
  const std::vector<int> uses = g.use_counts();
  std::set<ValueId> outputs(g.outputs.begin(), g.outputs.end());
  std::vector<char> gone(g.nodes.size(), 0);
  int count = 0;
  for (NodeId id = static_cast<NodeId>(begin); id < static_cast<NodeId>(g.nodes.size()); ++id) {
    const Node& add = g.nodes[id];
    if (!is_plain_add(add)) continue;
    for (int s = 0; s < 2; ++s) {
      const ValueId y = add.inputs[s], other = add.inputs[1 - s];
      const NodeId p = g.value(y).producer;
      if (p < 0 || gone[p] || !takes(g, g.nodes[p]) || g.nodes[p].outputs[0] != y) continue;
      if (uses[y] != 1 || outputs.count(y) || keep.count(g.value(y).name)) continue;
      const Value &yv = g.value(y), &ov = g.value(other), &out = g.value(add.outputs[0]);
      if (ov.dtype != yv.dtype || ov.shape != yv.shape || out.shape != yv.shape) continue;
      if (ov.producer >= p) continue;  // computed after the producer runs
      Node& n = g.nodes[p];
      n.inputs.resize(input + 1, kNoValue);
      n.inputs[input] = other;
      n.outputs[0] = add.outputs[0];
      gone[id] = 1;
      ++count;
      break;
    }
  }
  if (count > 0) g.erase_nodes(gone);
  return count;
}

}  // namespace

Status fuse_linear_residual_adds(Graph& graph, const std::set<std::string>& keep, int* fused) {
  *fused += fold_adds(graph, 0, keep, takes_residual, 3);
  return Status::ok();
}

Status fuse_norm_grad_residual_adds(Graph& graph, size_t backward_begin, int* fused) {
  *fused += fold_adds(graph, backward_begin, {}, takes_addend, 7);
  *fused += fold_adds(graph, backward_begin, {}, rms_takes_addend, 3);
  return Status::ok();
}

}  // namespace gv

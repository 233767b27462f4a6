// LayerNormalizationGrad writes the residual stream gradient's bf16 copy and bias sums itself (runtime/fusion.h);
// RMSNormalizationGrad its bf16 copy (Llama's products have no biases):
//
//   G  = LayerNormalizationGrad(..)                   G  = LayerNormalizationGrad(..) -> (G, .., G16, dB)
//   G16 = Cast(G, bf16)        [bf16_copy/]      ->
//   dB = BiasGrad(G16, keepdims)
//
// In a pre-LayerNorm transformer the gradient of the residual stream that a LayerNorm's backward produces (with the
// stream's other contribution added, runtime/fuse_residual_add.cpp) is the output gradient of the Linear before it
// (the attention's and the MLP's output projections): its dX and dW products read the shared bf16 copy
// (runtime/bf16_operands.cpp), and its bias gradient sums that copy. The norm's row kernel has each value in a
// register as it stores it: it stores the bf16 copy too and adds it into column sums, so the Cast (read 4 bytes,
// write 2 per element) and the BiasGrad (read 2) go. Exact: the CPU kernel rounds and sums as Cast and BiasGrad do.
#include <map>
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

constexpr int64_t kOnnxBFloat16 = 16;

bool is_copy_cast(const Node& n) {
  return n.op_type == "Cast" && n.domain.empty() && n.name.rfind("bf16_copy/", 0) == 0 && n.inputs.size() == 1 &&
         n.outputs.size() == 1 && n.attrs.get_int("to", 0) == kOnnxBFloat16;
}

bool is_keepdims_bias_grad(const Node& n) {
  return n.op_type == "BiasGrad" && n.domain == kGalvatronDomain && n.inputs.size() == 1 && n.outputs.size() == 1 &&
         n.attrs.get_int("keepdims", 0) == 1;
}

// The grad's normalized axis is the last one (the column sums are over every leading axis).
bool normalizes_last_axis(const Graph& g, const Node& n) {
  const int64_t rank = static_cast<int64_t>(g.value(n.inputs[1]).shape.size());
  const int64_t axis = n.attrs.get_int("axis", -1);
  return axis == -1 || axis == rank - 1;
}

}  // namespace

Status fuse_norm_grad_outputs(Graph& graph, size_t backward_begin, int* fused) {
  // The copy Cast and the BiasGrad reading each value.
  std::map<ValueId, NodeId> cast_of, bias_grad_of;
  for (NodeId id = static_cast<NodeId>(backward_begin); id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& n = graph.nodes[id];
    if (is_copy_cast(n)) cast_of.emplace(n.inputs[0], id);
    if (is_keepdims_bias_grad(n)) bias_grad_of.emplace(n.inputs[0], id);
  }
  std::vector<char> gone(graph.nodes.size(), 0);
  int count = 0;
  for (NodeId id = static_cast<NodeId>(backward_begin); id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    Node& n = graph.nodes[id];
    if (n.domain != kGalvatronDomain) continue;
    // LayerNormalizationGrad (dX, dScale, dBias) gains (dXBf16, dXBf16Sums); RMSNormalizationGrad (dX, dscale) gains
    // dXBf16 (no bias to sum).
    const bool layer = n.op_type == "LayerNormalizationGrad" && n.outputs.size() == 3;
    const bool rms = n.op_type == "RMSNormalizationGrad" && n.outputs.size() == 2;
    if (!layer && !rms) continue;
    const ValueId dx = n.outputs[0];
    if (dx == kNoValue || graph.value(dx).dtype != DType::kFloat32) continue;
    auto c = cast_of.find(dx);
    if (c == cast_of.end() || c->second <= id) continue;
    const ValueId copy = graph.nodes[c->second].outputs[0];
    n.outputs.push_back(copy);
    gone[c->second] = 1;
    auto b = bias_grad_of.find(copy);
    if (layer && b != bias_grad_of.end() && b->second > id && normalizes_last_axis(graph, n)) {
      n.outputs.push_back(graph.nodes[b->second].outputs[0]);
      gone[b->second] = 1;
    }
    ++count;
  }
  if (count == 0) return Status::ok();
  graph.erase_nodes(gone);  // the Casts and BiasGrads come after backward_begin: it stays
  *fused += count;
  return Status::ok();
}

}  // namespace gv

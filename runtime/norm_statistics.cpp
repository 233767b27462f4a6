// save_norm_statistics (runtime/fusion.h): LayerNormalization nodes without their optional Mean and InvStdDev outputs
// get them, before the autograd runs, so that each LayerNormalizationGrad reads the row statistics the forward
// computed instead of recomputing them: two reductions less per row in a latency-bound kernel (bench/cuda_notes.md
// entry 40). Same Y; the statistics cost 8 bytes per row. On the CUDA backend the result is bit-identical (both paths
// round the double statistics to float32 before using them).
#include <string>

#include "runtime/fusion.h"

namespace gv {

Status save_norm_statistics(Graph& graph, int* rewritten) {
  int count = 0;
  const NodeId n = static_cast<NodeId>(graph.nodes.size());
  for (NodeId id = 0; id < n; ++id) {
    Node& node = graph.nodes[id];
    if (node.op_type != "LayerNormalization" || !node.domain.empty() || node.outputs.size() != 1) continue;
    const Value& x = graph.value(node.inputs[0]);
    if (x.dtype != DType::kFloat32 || node.attrs.get_int("stash_type", 1) != 1 || x.shape.empty()) continue;
    int64_t axis = node.attrs.get_int("axis", -1);
    const int64_t rank = static_cast<int64_t>(x.shape.size());
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank) continue;  // inference reports the bad axis
    Shape stats = x.shape;  // X's shape with the normalized axes kept as 1 (ONNX's Mean / InvStdDev)
    for (int64_t d = axis; d < rank; ++d) stats[d] = 1;
    const std::string base = node.name.empty() ? graph.value(node.outputs[0]).name : node.name;
    for (const char* what : {"_mean", "_inv_std_dev"}) add_node_output(graph, id, base + what, DType::kFloat32, stats);
    ++count;
  }
  if (count > 0) graph.reindex();
  *rewritten += count;
  return Status::ok();
}

}  // namespace gv

// AttentionPackedGrad writes the QKV bias gradient itself (runtime/fusion.h):
//
//   dQKV = AttentionPackedGrad(..)                 dQKV, dB = AttentionPackedGrad(..)
//   dB = BiasGrad(dQKV, keepdims)          ->
//
// The QKV product's bias gradient sums dQKV over the batch and sequence, one more read of dQKV after the attention's
// backward wrote it; the CUDA kernel takes the sums while it unpacks cuDNN's padded heads into dQKV
// (kernels/cuda/attention_pack.cu unpack_heads_bf16_sums), so that read goes. Exact on the CPU: the kernel sums
// the dQKV it wrote as BiasGrad does.
#include <map>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {

Status fuse_attention_grad_bias_sums(Graph& graph, size_t backward_begin, int* fused) {
  std::map<ValueId, NodeId> bias_grad_of;  // a keepdims BiasGrad reading each value
  for (NodeId id = static_cast<NodeId>(backward_begin); id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& n = graph.nodes[id];
    if (n.op_type == "BiasGrad" && n.domain == kGalvatronDomain && n.inputs.size() == 1 && n.outputs.size() == 1 &&
        n.attrs.get_int("keepdims", 0) == 1) {
      bias_grad_of.emplace(n.inputs[0], id);
    }
  }
  std::vector<char> gone(graph.nodes.size(), 0);
  int count = 0;
  for (NodeId id = static_cast<NodeId>(backward_begin); id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    Node& n = graph.nodes[id];
    if (n.op_type != "AttentionPackedGrad" || n.domain != kGalvatronDomain || n.outputs.size() != 1) continue;
    const ValueId dqkv = n.outputs[0];
    if (graph.value(dqkv).shape.size() != 3) continue;
    auto b = bias_grad_of.find(dqkv);
    if (b == bias_grad_of.end() || b->second <= id) continue;
    const ValueId sums = graph.nodes[b->second].outputs[0];
    const DType want = graph.value(dqkv).dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
    if (graph.value(sums).dtype != want || graph.value(sums).shape != Shape{1, 1, graph.value(dqkv).shape[2]}) continue;
    n.outputs.push_back(sums);
    gone[b->second] = 1;
    ++count;
  }
  if (count == 0) return Status::ok();
  graph.erase_nodes(gone);  // the BiasGrads come after backward_begin: it stays
  *fused += count;
  return Status::ok();
}

}  // namespace gv

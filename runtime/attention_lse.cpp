// save_attention_lse (runtime/fusion.h): Attention nodes the CUDA flash kernels take (no mask, head size equal for
// keys and values, at most 128) become galvatron AttentionWithLse, whose second output, each query row's log-sum-exp
// [B, Hq, S], goes to the backward's AttentionGrad with Y. The flash backward then skips rerunning the forward to
// recover those statistics (about a third of its time). Same Y; the extra output costs 4 bytes per query row and head.
#include <string>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"
#include "runtime/ops/attention_form.h"

namespace gv {

Status save_attention_lse(Graph& graph, int* rewritten) {
  int count = 0;
  const NodeId n = static_cast<NodeId>(graph.nodes.size());
  for (NodeId id = 0; id < n; ++id) {
    Node& node = graph.nodes[id];
    if (node.op_type != "Attention" || !node.domain.empty() || node.outputs.size() != 1 || node.inputs.size() < 3) {
      continue;
    }
    bool extra = false;  // a mask or past key/value
    for (size_t i = 3; i < node.inputs.size(); ++i) extra = extra || node.inputs[i] != kNoValue;
    if (extra) continue;
    AttentionForm f;
    const std::string err = read_attention_form(graph.value(node.inputs[0]).shape, graph.value(node.inputs[1]).shape,
                                                graph.value(node.inputs[2]).shape, node.attrs, f);
    if (!err.empty() || f.head_dim != f.v_head_dim || f.head_dim > 128) continue;
    node.op_type = "AttentionWithLse";
    node.domain = kGalvatronDomain;
    node.opset = 1;
    node.inputs.resize(3);
    add_node_output(graph, id, node.name + "_lse", graph.value(node.inputs[0]).dtype, {f.batch, f.q_heads, f.q_len});
    ++count;
  }
  if (count > 0) graph.reindex();
  *rewritten += count;
  return Status::ok();
}

}  // namespace gv

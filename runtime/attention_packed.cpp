// pack_attention_qkv (runtime/fusion.h): a layer's fused QKV product split into Q, K, V for attention,
//
//   Split(QKV [B, S, 3 * H * D], axis -1, three equal parts) -> q, k, v [-> Reshapes] -> AttentionWithLse(q, k, v)
//   (3-D form, H query and key/value heads, no mask)
//
// becomes galvatron AttentionPacked(QKV) (runtime/ops/attention_packed_ops.cpp), whose kernels read the heads in place
// (rows 3 * H * D apart). The Split's three copies go, and so does the backward's Concat of dQ, dK, dV: the gradient
// op writes dQKV directly. Only splits whose outputs nothing else reads are taken.
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"
#include "runtime/ops/attention_form.h"

namespace gv {
namespace {

// Whether `split` cuts its input into three equal parts along the last axis.
bool equal_thirds(const Graph& g, const Node& split) {
  if (split.op_type != "Split" || !split.domain.empty() || split.outputs.size() != 3 || split.inputs.empty()) {
    return false;
  }
  const Shape& in = g.value(split.inputs[0]).shape;
  if (in.size() != 3 || in[2] % 3 != 0) return false;
  int64_t axis = split.attrs.get_int("axis", 0);
  if (axis < 0) axis += 3;
  if (axis != 2) return false;
  for (ValueId o : split.outputs) {
    const Shape& s = g.value(o).shape;
    if (s.size() != 3 || s[0] != in[0] || s[1] != in[1] || s[2] != in[2] / 3) return false;
  }
  return true;
}

}  // namespace

Status pack_attention_qkv(Graph& graph, int* rewritten) {
  const std::vector<int> uses = graph.use_counts();
  std::vector<char> is_output(graph.values.size(), 0);
  for (ValueId o : graph.outputs) is_output[o] = 1;
  std::vector<char> gone(graph.nodes.size(), 0);
  std::vector<char> drop(graph.values.size(), 0);
  int count = 0;
  for (Node& node : graph.nodes) {
    if (node.op_type != "AttentionWithLse" || node.domain != kGalvatronDomain || node.inputs.size() != 3) continue;
    AttentionForm f;
    const std::string err = read_attention_form(graph.value(node.inputs[0]).shape, graph.value(node.inputs[1]).shape,
                                                graph.value(node.inputs[2]).shape, node.attrs, f);
    if (!err.empty() || !f.three_d || f.q_heads != f.kv_heads || f.head_dim != f.v_head_dim || f.q_len != f.kv_len) {
      continue;
    }
    // Each input goes back through views only (Reshapes, which keep the row-major order: fuse_attention_layout's
    // [B, S, H, D] round trips) to one output of the same Split.
    std::vector<NodeId> views;
    ValueId source[3];
    bool ok = true;
    for (int i = 0; i < 3 && ok; ++i) {
      ValueId v = node.inputs[i];
      while (ok) {
        ok = uses[v] == 1 && !is_output[v];
        const NodeId r = graph.value(v).producer;
        if (!ok || r < 0 || graph.nodes[r].op_type != "Reshape" || !graph.nodes[r].domain.empty()) break;
        views.push_back(r);
        v = graph.nodes[r].inputs[0];
      }
      source[i] = v;
    }
    if (!ok) continue;
    const NodeId p = graph.value(source[0]).producer;
    if (p < 0 || gone[p] || !equal_thirds(graph, graph.nodes[p])) continue;
    const Node& split = graph.nodes[p];
    for (int i = 0; i < 3; ++i) ok = ok && source[i] == split.outputs[i];
    if (!ok || graph.value(split.inputs[0]).dtype != DType::kFloat32) continue;
    for (NodeId r : views) {
      gone[r] = 1;
      const Node& rn = graph.nodes[r];
      drop[rn.outputs[0]] = 1;
      if (rn.inputs.size() > 1 && uses[rn.inputs[1]] == 1 && graph.value(rn.inputs[1]).kind == ValueKind::kConstant) {
        drop[rn.inputs[1]] = 1;
      }
    }
    Attributes a;
    a.set_int("num_heads", f.q_heads);
    a.set_int("is_causal", f.causal ? 1 : 0);
    if (node.attrs.has("scale")) a.set_float("scale", node.attrs.get_float("scale", 1.0f));
    node.op_type = "AttentionPacked";
    node.attrs = a;
    node.inputs = {split.inputs[0]};
    gone[p] = 1;
    for (ValueId v : split.outputs) drop[v] = 1;
    for (size_t i = 1; i < split.inputs.size(); ++i) {  // the split sizes, when nothing else reads them
      const ValueId v = split.inputs[i];
      if (v != kNoValue && uses[v] == 1 && graph.value(v).kind == ValueKind::kConstant) drop[v] = 1;
    }
    ++count;
  }
  if (count == 0) return Status::ok();
  graph.erase_nodes(gone);
  graph.drop_values(drop);
  *rewritten += count;
  return Status::ok();
}

}  // namespace gv

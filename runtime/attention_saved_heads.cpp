// save_attention_heads (runtime/fusion.h): an AttentionPacked whose head size cuDNN cannot read in place (not a
// multiple of `multiple`: gpt-1.5b's 50) keeps the bf16 copies of QKV and Y with heads padded to the next multiple that
// its CUDA kernel makes for cuDNN anyway (outputs QKVp, Yp; runtime/ops/attention_packed_ops.cpp), and its
// AttentionPackedGrad reads them instead of making the same copies again. Same results; the copies live from the
// forward to the backward (gpt-1.5b: 59 MB per layer).
#include <map>
#include <string>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"
#include "runtime/ops/attention_form.h"

namespace gv {
namespace {

bool is_packed(const Node& n, const char* op) { return n.op_type == op && n.domain == kGalvatronDomain; }

}  // namespace

Status save_attention_heads(Graph& graph, int64_t multiple, int* rewritten) {
  if (multiple <= 0) return Status::ok();
  std::map<NodeId, std::pair<ValueId, ValueId>> saved;  // forward node -> its QKVp, Yp
  const NodeId n = static_cast<NodeId>(graph.nodes.size());
  for (NodeId id = 0; id < n; ++id) {
    if (!is_packed(graph.nodes[id], "AttentionPackedGrad") || graph.nodes[id].inputs.size() != 4) continue;
    const ValueId lse = graph.nodes[id].inputs[3];
    const NodeId fid = lse == kNoValue ? -1 : graph.value(lse).producer;
    if (fid < 0 || !is_packed(graph.nodes[fid], "AttentionPacked")) continue;
    Node& fwd = graph.nodes[fid];
    if (fwd.outputs.size() != 2 && !saved.count(fid)) continue;
    AttentionForm f;
    const Value& qkv = graph.value(fwd.inputs[0]);
    if (qkv.dtype != DType::kFloat32 && qkv.dtype != DType::kBFloat16) continue;
    if (!read_packed_attention_form(qkv.shape, fwd.attrs, f).empty() || f.head_dim % multiple == 0) continue;
    const int64_t dp = (f.head_dim + multiple - 1) / multiple * multiple;
    if (graph.nodes[id].attrs.get_int("num_heads", 0) != f.q_heads) continue;
    auto it = saved.find(fid);
    if (it == saved.end()) {
      fwd.attrs.set_int("saved_head_dim", dp);
      const Shape shapes[2] = {{f.batch, f.q_len, 3 * f.q_heads * dp}, {f.batch, f.q_len, f.q_heads * dp}};
      const char* names[2] = {"_qkv_padded", "_y_padded"};
      ValueId ids[2];
      const std::string base = fwd.name.empty() ? graph.value(fwd.outputs[0]).name : fwd.name;
      for (int k = 0; k < 2; ++k) ids[k] = add_node_output(graph, fid, base + names[k], DType::kBFloat16, shapes[k]);
      it = saved.emplace(fid, std::make_pair(ids[0], ids[1])).first;
    }
    Node& grad = graph.nodes[id];
    grad.attrs.set_int("saved_head_dim", dp);
    grad.inputs.push_back(it->second.first);
    grad.inputs.push_back(it->second.second);
    ++*rewritten;
  }
  if (!saved.empty()) graph.reindex();
  return Status::ok();
}

}  // namespace gv

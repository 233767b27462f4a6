// keep_bf16_param_copies (runtime/bf16_operands.h): the parameters' shared bf16 copies made persistent and kept
// current by AdamW, instead of converted again from the float32 weights at the start of every step.
#include <algorithm>
#include <map>
#include <set>

#include "runtime/bf16_operands.h"
#include "runtime/op_registry.h"

namespace gv {
bool is_bf16_param_copy(const Graph& g, const Node& n) {
  constexpr int64_t kOnnxBFloat16 = 16;
  if (n.op_type != "Cast" || !n.domain.empty() || n.name.rfind("bf16_copy/", 0) != 0) return false;
  if (n.inputs.size() != 1 || n.outputs.size() != 1 || n.attrs.get_int("to", 0) != kOnnxBFloat16) return false;
  const Value& p = g.value(n.inputs[0]);
  return p.kind == ValueKind::kParameter && p.dtype == DType::kFloat32;
}

Status keep_bf16_param_copies(Graph& graph, size_t backward_begin, size_t* prologue_end, int* kept) {
  const OpRegistry& reg = OpRegistry::global();
  // The in-place writers of each parameter (nodes without outputs that do not only read), and its AdamW node.
  std::map<ValueId, int> writers;
  std::map<ValueId, NodeId> adamw;
  std::set<ValueId> gathered;  // values a ZeRO-2 GatherShardsInPlace fills (bf16 copies under ZeRO-2 in bf16)
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& n = graph.nodes[id];
    if (!n.outputs.empty()) continue;
    if (n.op_type == "GatherShardsInPlace" && n.domain == kGalvatronDomain) gathered.insert(n.inputs[0]);
    const OpSchema* s = reg.find(n.domain, n.op_type);
    if (s && s->reads_only) continue;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const ValueId v = n.inputs[i];
      if (v != kNoValue && graph.value(v).kind == ValueKind::kParameter && node_writes_input(s, n, i)) ++writers[v];
    }
    if (n.op_type == "AdamW" && n.domain == kGalvatronDomain && !n.inputs.empty()) adamw[n.inputs[0]] = id;
  }
  std::vector<char> moved(graph.nodes.size(), 0);
  std::vector<Node> prologue;
  for (NodeId id = 0; id < static_cast<NodeId>(std::min(backward_begin, graph.nodes.size())); ++id) {
    const Node& cast = graph.nodes[id];
    if (!is_bf16_param_copy(graph, cast)) continue;
    const ValueId p = cast.inputs[0];
    auto a = adamw.find(p);
    // One AdamW is the only thing that changes the parameter: a whole-parameter update, or a ZeRO-2 shard update
    // whose copy's ranges are gathered (not the float32 parameter's: that gather would be a second writer).
    if (a == adamw.end() || writers[p] != 1) continue;
    Node& upd = graph.nodes[a->second];
    const ValueId copy = cast.outputs[0];
    if (upd.inputs.size() > 7 || (upd.attrs.get_int("shard_offset", -1) >= 0 && !gathered.count(copy))) continue;
    Value& cv = graph.value(copy);
    cv.kind = ValueKind::kState;
    cv.data = Tensor(DType::kBFloat16, cv.shape);
    upd.inputs.resize(8, kNoValue);
    upd.inputs[7] = copy;
    prologue.push_back(cast);
    moved[id] = 1;
  }
  if (prologue.empty()) return Status::ok();
  // The Casts move to the front, [0, *prologue_end): every node they read is a parameter, every reader comes later.
  std::vector<Node> nodes = prologue;
  nodes.reserve(graph.nodes.size());
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    if (!moved[id]) nodes.push_back(std::move(graph.nodes[id]));
  }
  graph.nodes = std::move(nodes);
  graph.reindex();
  *prologue_end = prologue.size();
  *kept += static_cast<int>(prologue.size());
  return Status::ok();
}

}  // namespace gv

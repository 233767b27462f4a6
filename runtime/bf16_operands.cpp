// share_bf16_operands (runtime/bf16_operands.h): a Cast to bfloat16 per float32 value that two or more large
// products read, the products rewired to the copy.
#include "runtime/bf16_operands.h"

#include <algorithm>
#include <map>

#include "runtime/op_registry.h"

namespace gv {
namespace {

constexpr int64_t kOnnxBFloat16 = 16;
constexpr int64_t kOnnxFloat = 1;

bool is_linear(const Node& n) { return n.op_type == "Linear" && n.domain == kGalvatronDomain; }

bool is_product(const Node& n) {
  return (n.op_type == "MatMul" && n.domain.empty()) || (n.op_type == "FusedMatMul" && n.domain == kGalvatronDomain) ||
         is_linear(n);
}

// The product's m, n, k when it is a float32-result product of rank >= 2 operands whose operands are float32 or
// bfloat16; false otherwise.
bool product_dims(const Graph& g, const Node& n, int64_t& m, int64_t& nn, int64_t& k) {
  const bool linear = is_linear(n);
  if (linear ? n.inputs.size() < 2 : (n.inputs.size() != 2 || n.outputs.size() != 1)) return false;
  const Value &a = g.value(n.inputs[0]), &b = g.value(n.inputs[1]);
  if (a.shape.size() < 2 || b.shape.size() < 2 || g.value(n.outputs[0]).dtype != DType::kFloat32) return false;
  for (const Value* v : {&a, &b}) {
    if (v->dtype != DType::kFloat32 && v->dtype != DType::kBFloat16) return false;
  }
  if (linear) {  // X [.., K] @ op(W): rows stacked
    k = a.shape.back();
    m = k > 0 ? shape_numel(a.shape) / k : 0;
    nn = n.attrs.get_int("transB", 0) != 0 ? b.shape[0] : b.shape[1];
    return b.shape.size() == 2;
  }
  const bool fused = n.op_type == "FusedMatMul";
  const bool ta = fused && n.attrs.get_int("transA", 0) != 0, tb = fused && n.attrs.get_int("transB", 0) != 0;
  const int64_t ar = a.shape[a.shape.size() - 2], ac = a.shape.back();
  const int64_t br = b.shape[b.shape.size() - 2], bc = b.shape.back();
  m = ta ? ac : ar;
  k = ta ? ar : ac;
  nn = tb ? br : bc;
  return true;
}

struct Use {
  NodeId node;
  int slot;
};

}  // namespace

Status share_bf16_operands(Graph& graph, const Bf16OperandOptions& options, size_t* boundary, int* copies) {
  const OpRegistry& reg = OpRegistry::global();
  // Values some node writes in place (an output-less node that is not read-only): a copy made before such a write
  // would go stale.
  std::vector<char> written(graph.values.size(), 0);
  for (const Node& n : graph.nodes) {
    if (!n.outputs.empty()) continue;
    const OpSchema* s = reg.find(n.domain, n.op_type);
    if (s && s->reads_only) continue;
    for (ValueId v : n.inputs)
      if (v != kNoValue) written[v] = 1;
  }
  std::map<ValueId, std::vector<Use>> uses;
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& n = graph.nodes[id];
    if (!is_product(n)) continue;
    int64_t m, nn, k;
    if (!product_dims(graph, n, m, nn, k)) continue;
    if (static_cast<double>(m) * static_cast<double>(nn) < options.min_mn * static_cast<double>(m + nn)) continue;
    for (int slot = 0; slot < 2; ++slot) {
      const ValueId v = n.inputs[slot];
      const Value& val = graph.value(v);
      if (val.dtype != DType::kFloat32 || written[v] || val.shape.back() % options.row_multiple != 0) continue;
      uses[v].push_back({id, slot});
    }
  }
  // Each copy goes right before its first reader: new nodes by the index they precede.
  std::map<NodeId, std::vector<Node>> before;
  int made = 0;
  for (auto& [v, list] : uses) {
    if (list.size() < 2) continue;
    const NodeId first = list.front().node;  // uses were collected in node order
    Value copy;
    copy.name = graph.unique_name(graph.value(v).name + "_bf16");
    copy.dtype = DType::kBFloat16;
    copy.shape = graph.value(v).shape;
    const ValueId c = graph.add_value(std::move(copy));
    Node cast;
    cast.name = graph.unique_name("bf16_copy/" + graph.value(v).name);
    cast.op_type = "Cast";
    cast.opset = graph.opsets.count("") ? graph.opsets.at("") : 13;
    cast.attrs.set_int("to", kOnnxBFloat16);
    cast.inputs = {v};
    cast.outputs = {c};
    cast.place = graph.nodes[first].place;
    before[first].push_back(std::move(cast));
    for (const Use& u : list) {
      Node& n = graph.nodes[u.node];
      if (n.op_type == "MatMul") {
        n.op_type = "FusedMatMul";
        n.domain = kGalvatronDomain;
        n.opset = 1;
        n.attrs = Attributes();
        n.attrs.set_int("transA", 0);
        n.attrs.set_int("transB", 0);
      }
      if (!is_linear(n)) n.attrs.set_int("out_dtype", kOnnxFloat);  // Linear's results are float32 anyway
      n.inputs[u.slot] = c;
    }
    ++made;
  }
  if (made == 0) return Status::ok();
  if (!graph.opsets.count(kGalvatronDomain)) graph.opsets[kGalvatronDomain] = 1;
  std::vector<Node> nodes;
  nodes.reserve(graph.nodes.size() + static_cast<size_t>(made));
  size_t inserted_before_boundary = 0;
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    auto it = before.find(id);
    if (it != before.end()) {
      if (boundary && static_cast<size_t>(id) < *boundary) inserted_before_boundary += it->second.size();
      for (Node& n : it->second) nodes.push_back(std::move(n));
    }
    nodes.push_back(std::move(graph.nodes[id]));
  }
  graph.nodes = std::move(nodes);
  graph.reindex();
  if (boundary) *boundary += inserted_before_boundary;
  *copies += made;
  return Status::ok();
}

}  // namespace gv

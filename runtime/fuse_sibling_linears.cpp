// fuse_sibling_linears (runtime/fusion.h): narrow products of one input as one product of their joint width,
//
//   Linear(X, Wk, bk), Linear(X, Wv, bv)   ->   Linear(X, Concat(Wk, Wv), Concat(bk, bv)) -> Split -> K, V
//
// A grouped-query model's K and V products are narrow (N = 128 at Qwen2-0.5B's shape, 256 at TinyLlama's, against
// K = 896 and 2048): each fills a fraction of the GPU (the dW of Qwen2's K product is seven 128 x 128 tiles on 132
// SMs), in the forward, in dX and in dW alike (bench/cuda_notes.md entry 63). One product of their joint width does
// the same flops in fewer, fuller waves; what it adds are copies of [tokens, N_total] values (the Split forward, the
// Concat of their gradients backward) and of the weights (a few MB). The backward needs nothing new: autograd gives
// Split's gradient as a Concat and Concat's as a Split.
//
// Siblings join when they read the same X, have the same transB, both a bias or neither, no activation and no
// residual input, weights (and biases) that are parameters, and are narrow: N at most half of K (Q and the MLP's
// products, as wide as the model or wider, stay alone). Not in graphs that communicate (tensor-parallel shards).
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool communicates(const Graph& g) {
  for (const Node& n : g.nodes) {
    if (n.domain != kGalvatronDomain) continue;
    for (const char* op : {"AllReduce", "AllGather", "ReduceScatter", "TensorParallelReduce", "GatherShardsInPlace",
                           "Send", "Recv", "WaitCollectives"}) {
      if (n.op_type == op) return true;
    }
  }
  return false;
}

// A Linear that may join a group: its product's width N, or 0.
int64_t narrow_width(const Graph& g, const Node& n) {
  if (n.domain != kGalvatronDomain || n.op_type != "Linear" || n.outputs.size() != 1) return 0;
  if (n.inputs.size() < 2 || n.inputs.size() > 3) return 0;  // a fourth input is a residual
  if (n.attrs.get_string("activation", "none") != "none") return 0;
  const Value& w = g.value(n.inputs[1]);
  if (w.kind != ValueKind::kParameter || w.dtype != DType::kFloat32 || w.shape.size() != 2) return 0;
  if (n.inputs.size() == 3 && n.inputs[2] != kNoValue) {
    const Value& b = g.value(n.inputs[2]);
    if (b.kind != ValueKind::kParameter || b.dtype != DType::kFloat32) return 0;
  }
  const bool tb = n.attrs.get_int("transB", 0) != 0;
  const int64_t k = tb ? w.shape[1] : w.shape[0], width = tb ? w.shape[0] : w.shape[1];
  return 2 * width <= k ? width : 0;
}

Node make_node(const std::string& op, const std::string& domain, int opset, std::string name, const Placement& place) {
  Node n;
  n.op_type = op;
  n.domain = domain;
  n.opset = opset;
  n.name = std::move(name);
  n.place = place;
  return n;
}

}  // namespace

Status fuse_sibling_linears(Graph& graph, int* fused) {
  if (communicates(graph)) return Status::ok();
  // Groups by (X, transB, has bias), in graph order.
  std::map<std::tuple<ValueId, int, bool>, std::vector<NodeId>> groups;
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& n = graph.nodes[id];
    if (narrow_width(graph, n) == 0) continue;
    const bool bias = n.inputs.size() == 3 && n.inputs[2] != kNoValue;
    groups[{n.inputs[0], static_cast<int>(n.attrs.get_int("transB", 0)), bias}].push_back(id);
  }
  const int opset = fused_node_opset(graph, 13);
  std::map<NodeId, std::vector<Node>> at;  // the group's new nodes, where its first member was
  std::vector<char> gone(graph.nodes.size(), 0);
  int count = 0;
  for (const auto& [key, members] : groups) {
    if (members.size() < 2) continue;
    const auto& [x, tb, has_bias] = key;
    const Node& first = graph.nodes[members.front()];
    const std::string base = first.name + "/siblings";
    std::vector<int64_t> widths;
    Node wcat = make_node("Concat", "", opset, base + "/weights", first.place);
    Node bcat = make_node("Concat", "", opset, base + "/biases", first.place);
    wcat.attrs.set_int("axis", tb ? 0 : 1);
    bcat.attrs.set_int("axis", 0);
    int64_t total = 0;
    for (NodeId m : members) {
      const Node& n = graph.nodes[m];
      widths.push_back(narrow_width(graph, n));
      total += widths.back();
      wcat.inputs.push_back(n.inputs[1]);
      if (has_bias) bcat.inputs.push_back(n.inputs[2]);
    }
    const Shape& w0 = graph.value(first.inputs[1]).shape;
    const int64_t k = tb ? w0[1] : w0[0];
    bool same_k = true;
    for (NodeId m : members) {
      const Shape& w = graph.value(graph.nodes[m].inputs[1]).shape;
      same_k = same_k && (tb ? w[1] : w[0]) == k;
    }
    if (!same_k) continue;
    wcat.outputs = {
        new_node_output(graph, -1, base + "/weight", DType::kFloat32, tb ? Shape{total, k} : Shape{k, total})};
    Node lin = first;  // transB, activation "none", placement
    lin.name = base;
    lin.inputs = {x, wcat.outputs[0]};
    if (has_bias) {
      bcat.outputs = {new_node_output(graph, -1, base + "/bias", DType::kFloat32, Shape{total})};
      lin.inputs.push_back(bcat.outputs[0]);
    }
    Shape y = graph.value(first.outputs[0]).shape;
    y.back() = total;
    lin.outputs = {new_node_output(graph, -1, base + "/out", DType::kFloat32, y)};
    Tensor sizes(DType::kInt64, {static_cast<int64_t>(widths.size())});
    for (size_t i = 0; i < widths.size(); ++i) sizes.data_as<int64_t>()[i] = widths[i];
    const ValueId split_sizes = graph.add_initializer(graph.unique_name(base + "/widths"), sizes, ValueKind::kConstant);
    Node split = make_node("Split", "", opset, base + "/split", first.place);
    split.attrs.set_int("axis", -1);
    split.inputs = {lin.outputs[0], split_sizes};
    for (NodeId m : members) split.outputs.push_back(graph.nodes[m].outputs[0]);
    std::vector<Node> nodes;
    nodes.push_back(std::move(wcat));
    if (has_bias) nodes.push_back(std::move(bcat));
    nodes.push_back(std::move(lin));
    nodes.push_back(std::move(split));
    at[members.front()] = std::move(nodes);
    for (NodeId m : members) gone[m] = 1;
    ++count;
  }
  if (count == 0) return Status::ok();
  std::vector<Node> nodes;
  nodes.reserve(graph.nodes.size() + 4 * count);
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    if (auto it = at.find(id); it != at.end()) {
      for (Node& n : it->second) nodes.push_back(std::move(n));
    } else if (!gone[id]) {
      nodes.push_back(std::move(graph.nodes[id]));
    }
  }
  graph.nodes = std::move(nodes);
  graph.reindex();
  *fused += count;
  return Status::ok();
}

}  // namespace gv

// fuse_rms_norm: HF's LlamaRMSNorm (Llama, Qwen, Mistral, ...) as the exporters write it, rewritten into one ONNX
// RMSNormalization node (runtime/fusion.h).
//
//   sq = Pow(x, 2) | Mul(x, x)
//   var = ReduceMean(sq, axes = [-1], keepdims = 1)         axes as attribute (opset < 18) or constant input
//   s = Sqrt(Add(var, eps))                                  eps a one-element constant, either operand
//   n = Mul(x, Reciprocal(s)) | Div(x, s)                    either operand order for the Mul
//   [n = Cast(n, to = dtype(x))]                             HF's .to(input_dtype), an identity in a float32 graph
//   y = Mul(w, n) | Mul(n, w)                                w of shape [C] (leading 1s allowed), C = x's last dim
//     -> y = RMSNormalization(x, w, axis = -1, epsilon = eps)
//
// Every intermediate must have exactly one use and not be a graph output, so nothing else reads a value that goes.
// Without the fusion the chain is ~7 elementwise and reduction kernels forward and ~15 backward per norm (a Llama
// step on a GPU spent more time in them than in its products); fused it is one row kernel each way
// (RMSNormalization / RMSNormalizationGrad, statistics in double). Results agree within float32 rounding.
// The node takes the final Mul's place and output, marked opset max(23, graph opset): the registry runs it for a graph
// imported at any opset.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

struct Finder {
  const Graph& g;
  std::vector<int> uses;
  std::vector<std::vector<NodeId>> consumers;
  std::set<ValueId> outputs;

  explicit Finder(const Graph& graph) : g(graph), uses(graph.use_counts()), consumers(graph.values.size()) {
    for (NodeId n = 0; n < static_cast<NodeId>(g.nodes.size()); ++n)
      for (ValueId v : g.nodes[n].inputs)
        if (v != kNoValue && (consumers[v].empty() || consumers[v].back() != n)) consumers[v].push_back(n);
    outputs.insert(g.outputs.begin(), g.outputs.end());
  }

  // The one default-domain node of type `op` reading `v`, when v is an intermediate (one use, no graph output).
  NodeId only_consumer(ValueId v, std::initializer_list<const char*> ops) const {
    if (v == kNoValue || uses[v] != 1 || outputs.count(v) || consumers[v].size() != 1) return -1;
    const Node& n = g.nodes[consumers[v][0]];
    if (!n.domain.empty() || n.outputs.size() != 1) return -1;
    for (const char* op : ops)
      if (n.op_type == op) return consumers[v][0];
    return -1;
  }
  // A one-element floating constant's value.
  bool scalar(ValueId v, double* out) const {
    if (v == kNoValue || !g.is_constant(v)) return false;
    const Tensor& t = g.value(v).data;
    if (t.numel() != 1 || !dtype_is_float(t.dtype())) return false;
    *out = t.scalar_f64(0);
    return std::isfinite(*out);
  }
  // The other operand of a two-input node, given one.
  static ValueId other(const Node& n, ValueId one) { return n.inputs[0] == one ? n.inputs[1] : n.inputs[0]; }
};

// ReduceMean over the last axis only, keeping it.
bool reduces_last_axis(const Finder& f, const Node& r, int rank) {
  if (r.attrs.get_int("keepdims", 1) != 1) return false;
  std::vector<int64_t> axes = r.attrs.get_ints("axes");
  if (r.inputs.size() > 1 && r.inputs[1] != kNoValue) {
    if (!f.g.is_constant(r.inputs[1])) return false;
    const Tensor& t = f.g.value(r.inputs[1]).data;
    axes.clear();
    for (int64_t i = 0; i < t.numel(); ++i) axes.push_back(static_cast<int64_t>(t.scalar_f64(i)));
  }
  return axes.size() == 1 && (axes[0] == -1 || axes[0] == rank - 1);
}

// Fills `c` when the ReduceMean node `red` is the statistic of an RMSNorm chain.
bool match_at(const Finder& f, NodeId red, ChainReplacement* c) {
  const Graph& g = f.g;
  const Node& r = g.nodes[red];
  if (!r.domain.empty() || r.inputs.empty() || r.outputs.size() != 1) return false;
  const ValueId sq = r.inputs[0];
  if (sq == kNoValue || f.uses[sq] != 1 || f.outputs.count(sq) || g.value(sq).producer < 0) return false;
  const NodeId pow_id = g.value(sq).producer;
  const Node& p = g.nodes[pow_id];
  if (!p.domain.empty() || p.inputs.size() != 2) return false;
  ValueId x = p.inputs[0];
  double two = 0;
  if (p.op_type == "Pow") {
    if (!f.scalar(p.inputs[1], &two) || two != 2.0) return false;
  } else if (p.op_type != "Mul" || p.inputs[1] != x) {
    return false;
  }
  const Value& xv = g.value(x);
  if (!dtype_is_float(xv.dtype) || xv.shape.empty()) return false;
  if (!reduces_last_axis(f, r, static_cast<int>(xv.shape.size()))) return false;

  const NodeId add_id = f.only_consumer(r.outputs[0], {"Add"});
  if (add_id < 0) return false;
  double eps = 0;
  if (!f.scalar(Finder::other(g.nodes[add_id], r.outputs[0]), &eps) || eps < 0) return false;
  const NodeId sqrt_id = f.only_consumer(g.nodes[add_id].outputs[0], {"Sqrt"});
  if (sqrt_id < 0) return false;
  const ValueId s = g.nodes[sqrt_id].outputs[0];
  std::vector<NodeId> chain = {pow_id, red, add_id, sqrt_id};
  NodeId norm_id = f.only_consumer(s, {"Reciprocal", "Div"});
  if (norm_id < 0) return false;
  if (g.nodes[norm_id].op_type == "Reciprocal") {
    chain.push_back(norm_id);
    const ValueId rs = g.nodes[norm_id].outputs[0];
    norm_id = f.only_consumer(rs, {"Mul"});
    if (norm_id < 0 || Finder::other(g.nodes[norm_id], rs) != x) return false;
  } else if (g.nodes[norm_id].inputs[0] != x || g.nodes[norm_id].inputs[1] != s) {
    return false;
  }
  chain.push_back(norm_id);
  ValueId n = g.nodes[norm_id].outputs[0];
  NodeId last = f.only_consumer(n, {"Cast", "Mul"});
  if (last >= 0 && g.nodes[last].op_type == "Cast") {
    if (g.nodes[last].attrs.get_int("to", 0) != static_cast<int64_t>(xv.dtype)) return false;
    chain.push_back(last);
    n = g.nodes[last].outputs[0];
    last = f.only_consumer(n, {"Mul"});
  }
  if (last < 0) return false;
  const ValueId w = Finder::other(g.nodes[last], n);
  const ValueId y = g.nodes[last].outputs[0];
  const Value& wv = g.value(w);
  if (w == n || wv.dtype != xv.dtype || shape_numel(wv.shape) != xv.shape.back() || wv.shape.empty() ||
      wv.shape.back() != xv.shape.back()) {
    return false;
  }
  // The elementwise steps keep x's layout (no broadcast hides in them); the statistic's steps keep var's.
  if (g.value(y).shape != xv.shape || g.value(y).dtype != xv.dtype) return false;
  for (NodeId id : chain) {
    const Shape& out = g.value(g.nodes[id].outputs[0]).shape;
    const bool statistic = id == red || id == add_id || id == sqrt_id || g.nodes[id].op_type == "Reciprocal";
    if (out != (statistic ? g.value(r.outputs[0]).shape : xv.shape)) return false;
  }

  c->final_node = last;
  c->removed = chain;
  c->maybe_dead.clear();
  add_chain_values(g, c);
  Node& rms = c->replacement;
  rms = Node{};
  rms.op_type = "RMSNormalization";
  rms.inputs = {x, w};
  rms.outputs = {y};
  rms.attrs.set_int("axis", -1);
  rms.attrs.set_float("epsilon", static_cast<float>(eps));
  rms.place = g.nodes[last].place;
  rms.name = g.nodes[last].name.empty() ? "rms_norm" : g.nodes[last].name + "_rms_norm";
  return true;
}

}  // namespace

Status fuse_rms_norm(Graph& graph, int* fused) {
  const OpSchema* schema = OpRegistry::global().find("", "RMSNormalization");
  if (schema == nullptr || schema->infer == nullptr) {
    return internal_error("fuse_rms_norm: the op registry has no RMSNormalization op");
  }
  const Finder f(graph);
  fuse_matches(
      graph, *schema, fused_node_opset(graph, 23),
      [&f](NodeId i, ChainReplacement* c) {
        return f.g.nodes[i].op_type == "ReduceMean" && f.g.nodes[i].domain.empty() && match_at(f, i, c);
      },
      fused);
  return Status::ok();
}

}  // namespace gv

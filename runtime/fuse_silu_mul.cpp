// fuse_silu_mul: the gated MLP activation of Llama, Qwen, Mistral (SwiGLU) as the exporters write it, rewritten into
// one galvatron SiluMul node (runtime/fusion.h; the op is runtime/ops/math_silu_mul.cpp).
//
//   s = Sigmoid(g);  a = Mul(g, s) | Mul(s, g);  y = Mul(a, u) | Mul(u, a)
//     -> y = SiluMul(g, u)
//
// s and a must have exactly one use and not be graph outputs; g, u and y share one shape and dtype (no broadcast).
// Unfused, the chain is three kernels forward (six full-width passes) and about six backward (Mul's two gradients
// twice, SigmoidGrad, the Add of g's two gradients); fused, one pass each way. Results agree within float32 rounding.
#include <set>
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool is_default(const Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }

struct SiluFinder {
  const Graph& g;
  std::vector<int> uses;
  std::vector<NodeId> reader;  // the last reader of each value (the only one where uses == 1)
  std::set<ValueId> outputs;

  explicit SiluFinder(const Graph& graph) : g(graph), uses(graph.use_counts()), reader(graph.values.size(), -1) {
    for (NodeId n = 0; n < static_cast<NodeId>(g.nodes.size()); ++n)
      for (ValueId v : g.nodes[n].inputs)
        if (v != kNoValue) reader[v] = n;
    outputs.insert(g.outputs.begin(), g.outputs.end());
  }
  // The one Mul reading the intermediate v (one use, not a graph output), or -1.
  NodeId only_mul(ValueId v) const {
    if (uses[v] != 1 || outputs.count(v) || reader[v] < 0) return -1;
    const Node& n = g.nodes[reader[v]];
    return is_default(n, "Mul") && n.inputs.size() == 2 && n.outputs.size() == 1 ? reader[v] : -1;
  }
};

bool match_at(const SiluFinder& f, NodeId sig, ChainReplacement* c) {
  const Graph& g = f.g;
  const Node& s = g.nodes[sig];
  if (!is_default(s, "Sigmoid") || s.inputs.size() != 1 || s.outputs.size() != 1) return false;
  const ValueId gate = s.inputs[0], sv = s.outputs[0];
  const NodeId m1 = f.only_mul(sv);
  if (m1 < 0) return false;
  const Node& a = g.nodes[m1];
  if ((a.inputs[0] == sv ? a.inputs[1] : a.inputs[0]) != gate) return false;
  const ValueId av = a.outputs[0];
  const NodeId m2 = f.only_mul(av);
  if (m2 < 0) return false;
  const Node& y = g.nodes[m2];
  const ValueId up = y.inputs[0] == av ? y.inputs[1] : y.inputs[0];
  if (up == av) return false;  // Mul(a, a)
  const Value &gv = g.value(gate), &uv = g.value(up), &yv = g.value(y.outputs[0]);
  if (!dtype_is_float(gv.dtype) || uv.dtype != gv.dtype || yv.dtype != gv.dtype) return false;
  if (uv.shape != gv.shape || yv.shape != gv.shape) return false;

  c->final_node = m2;
  c->removed = {sig, m1, m2};
  c->maybe_dead = {sv, av};
  Node& n = c->replacement;
  n = Node{};
  n.op_type = "SiluMul";
  n.domain = kGalvatronDomain;
  n.opset = 1;
  n.inputs = {gate, up};
  n.outputs = {y.outputs[0]};
  n.place = y.place;
  n.name = y.name.empty() ? "silu_mul" : y.name + "_silu_mul";
  return true;
}

}  // namespace

Status fuse_silu_mul(Graph& graph, int* fused) {
  const OpSchema* schema = OpRegistry::global().find(kGalvatronDomain, "SiluMul");
  if (schema == nullptr || schema->infer == nullptr) {
    return internal_error("fuse_silu_mul: the op registry has no galvatron SiluMul op");
  }
  const SiluFinder f(graph);
  fuse_matches(
      graph, *schema, 1, [&f](NodeId i, ChainReplacement* c) { return match_at(f, i, c); }, fused);
  return Status::ok();
}

}  // namespace gv

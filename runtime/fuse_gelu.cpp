// fuse_gelu: the elementwise chains exporters emit for GELU, rewritten into one ONNX Gelu node (runtime/fusion.h).
//
//   tanh form (HF "gelu_new", NewGELUActivation):  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  -> Gelu(tanh)
//   erf form (BERT, exact GELU):                   0.5 x (1 + erf(x / sqrt(2)))                     -> Gelu(none)
//
// Exporters vary the operand order and association (Mul(x, 0.5) first or last, Pow(x, 3) or x*x*x, Div by sqrt(2) or
// Mul by 1/sqrt(2), constants as scalars or 1-element tensors), so the pass does not match node shapes. Around each
// Tanh / Erf node it evaluates the chain symbolically instead: every value of the chain is a polynomial in x and in t
// (the Tanh / Erf output), built from Add, Sub, Mul, Div (by a constant), Neg and Pow (by a small integer constant) of
// x, t and one-element constants. The chain is fused when the Tanh / Erf argument is exactly
// sqrt(2/pi) x + sqrt(2/pi) 0.044715 x^3 (resp. x / sqrt(2)) and some value downstream of t is exactly
// 0.5 x + 0.5 x t, every coefficient within the rounding of the constants' dtype (float32: a few ulps). Only values
// with exactly one use (graph outputs count as uses) are taken into a chain, so no intermediate is read elsewhere.
//
// The Gelu node replaces the chain's final node at its position (so the order stays topological), writes the same
// output value, and keeps that node's placement. It is marked opset max(20, graph opset): Gelu exists from opset 20
// on, and the registry runs it (inference, kernels, backward rule GeluGrad) for a graph imported at any opset.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

constexpr int kMaxDegreeX = 4;  // x^3 is the highest power GELU needs; a little headroom for odd associations
constexpr int kMaxDegreeT = 1;
constexpr int kMaxDepth = 24;
constexpr int kMaxChainLength = 8;  // nodes from t to the chain's final node

// A polynomial in x and t: (degree of x, degree of t) -> coefficient.
using Poly = std::map<std::pair<int, int>, double>;

Poly constant_poly(double c) { return c == 0.0 ? Poly{} : Poly{{{0, 0}, c}}; }

void add_into(Poly& a, const Poly& b, double sign) {
  for (const auto& [k, c] : b) {
    double& d = a[k];
    d += sign * c;
    if (d == 0.0) a.erase(k);
  }
}

bool multiply(const Poly& a, const Poly& b, Poly* out) {
  Poly r;
  for (const auto& [ka, ca] : a) {
    for (const auto& [kb, cb] : b) {
      const std::pair<int, int> k{ka.first + kb.first, ka.second + kb.second};
      if (k.first > kMaxDegreeX || k.second > kMaxDegreeT) return false;
      double& d = r[k];
      d += ca * cb;
      if (d == 0.0) r.erase(k);
    }
  }
  *out = std::move(r);
  return true;
}

bool is_constant_poly(const Poly& p) { return p.empty() || (p.size() == 1 && p.begin()->first == std::make_pair(0, 0)); }
double constant_of(const Poly& p) { return p.empty() ? 0.0 : p.begin()->second; }

// Relative rounding allowance for a constant stored in this dtype: a few units in the last place.
double rounding_tolerance(DType t) {
  switch (t) {
    case DType::kFloat16:
      return 4.0 * std::ldexp(1.0, -11);
    case DType::kBFloat16:
      return 4.0 * std::ldexp(1.0, -8);
    default:  // float32 (float64 constants are often float32 literals widened), integers (exact)
      return 1e-6;
  }
}

// Same polynomial within `tol`, relative to the largest expected coefficient.
bool matches(const Poly& got, const Poly& want, double tol) {
  double scale = 0;
  for (const auto& [k, c] : want) scale = std::max(scale, std::fabs(c));
  std::set<std::pair<int, int>> keys;
  for (const auto& kv : got) keys.insert(kv.first);
  for (const auto& kv : want) keys.insert(kv.first);
  for (const auto& k : keys) {
    const double a = got.count(k) ? got.at(k) : 0.0;
    const double b = want.count(k) ? want.at(k) : 0.0;
    if (std::fabs(a - b) > tol * scale) return false;
  }
  return true;
}

bool is_chain_op(const Node& n) {
  if (!n.domain.empty() || n.outputs.size() != 1) return false;
  const std::string& op = n.op_type;
  if (op == "Neg") return n.inputs.size() == 1;
  if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Pow") return n.inputs.size() == 2;
  return false;
}

// Symbolic evaluation of one value of a candidate chain.
class ChainEvaluator {
 public:
  ChainEvaluator(const Graph& g, const std::vector<int>& uses) : g_(g), uses_(uses) {}

  ValueId x = kNoValue;  // the GELU input; bound by the first non-constant leaf when unset
  ValueId t = kNoValue;  // the Tanh / Erf output (the variable t); kNoValue while evaluating its argument
  double tol = rounding_tolerance(DType::kFloat32);
  std::vector<NodeId> nodes;  // interior nodes visited (each once: interior values have exactly one use)
  std::vector<ValueId> constants;

  bool eval(ValueId v, Poly* out, int depth = 0) {
    if (v == kNoValue || depth > kMaxDepth) return false;
    if (t != kNoValue && v == t) {
      *out = Poly{{{0, 1}, 1.0}};
      return true;
    }
    const Value& val = g_.value(v);
    if (g_.is_constant(v)) {
      if (val.data.numel() != 1 || !dtype_is_float(val.dtype)) return false;
      const double c = val.data.scalar_f64(0);
      if (!std::isfinite(c)) return false;
      tol = std::max(tol, rounding_tolerance(val.dtype));
      constants.push_back(v);
      *out = constant_poly(c);
      return true;
    }
    if (v == x) {
      *out = Poly{{{1, 0}, 1.0}};
      return true;
    }
    const bool interior = val.kind == ValueKind::kActivation && val.producer >= 0 && uses_[v] == 1 &&
                          is_chain_op(g_.nodes[val.producer]);
    if (!interior) {
      // A leaf: the GELU input, when none is bound yet (it is read at least twice: inside and outside Tanh / Erf).
      if (x != kNoValue || !dtype_is_float(val.dtype)) return false;
      x = v;
      *out = Poly{{{1, 0}, 1.0}};
      return true;
    }
    return eval_node(val.producer, out, depth);
  }

  // The value of node p's output (p is a chain op; its output may have any number of uses: the chain's root).
  bool eval_node(NodeId p, Poly* out, int depth = 0) {
    const Node& n = g_.nodes[p];
    nodes.push_back(p);
    Poly a, b;
    if (!eval(n.inputs[0], &a, depth + 1)) return false;
    if (n.op_type == "Neg") {
      add_into(*out = Poly{}, a, -1.0);
      return true;
    }
    if (n.op_type == "Pow") {
      // The exponent: a one-element constant holding a small positive integer (float or integer dtype).
      const ValueId e = n.inputs[1];
      if (!g_.is_constant(e) || g_.value(e).data.numel() != 1) return false;
      const double k = g_.value(e).data.scalar_f64(0);
      if (k != std::floor(k) || k < 1 || k > kMaxDegreeX) return false;
      constants.push_back(e);
      Poly r = a;
      for (int i = 1; i < static_cast<int>(k); ++i) {
        if (!multiply(r, a, &r)) return false;
      }
      *out = std::move(r);
      return true;
    }
    if (!eval(n.inputs[1], &b, depth + 1)) return false;
    if (n.op_type == "Add" || n.op_type == "Sub") {
      *out = a;
      add_into(*out, b, n.op_type == "Add" ? 1.0 : -1.0);
      return true;
    }
    if (n.op_type == "Mul") return multiply(a, b, out);
    // Div: only by a constant.
    if (!is_constant_poly(b) || constant_of(b) == 0.0) return false;
    return multiply(a, constant_poly(1.0 / constant_of(b)), out);
  }

 private:
  const Graph& g_;
  const std::vector<int>& uses_;
};

struct Match {
  NodeId final_node = -1;        // replaced by the Gelu node
  std::vector<NodeId> removed;   // every other node of the chain (the Tanh / Erf node included)
  std::vector<ValueId> constants;
  Node gelu;
};

// The single node reading `v` (the caller checked that v has exactly one use and is no graph output).
NodeId consumer_of(const std::vector<std::vector<NodeId>>& consumers, ValueId v) {
  return consumers[v].size() == 1 ? consumers[v][0] : -1;
}

bool same_layout(const Graph& g, ValueId a, ValueId b) {
  return g.value(a).dtype == g.value(b).dtype && g.value(a).shape == g.value(b).shape;
}

// Tries the chain around the Tanh / Erf node `core`. Fills `m` when it is a GELU.
bool match_at(const Graph& g, const std::vector<int>& uses, const std::vector<std::vector<NodeId>>& consumers,
              NodeId core, Match* m) {
  const Node& cn = g.nodes[core];
  const bool is_tanh = cn.op_type == "Tanh";
  if (!cn.domain.empty() || cn.inputs.size() != 1 || cn.outputs.size() != 1) return false;

  // The argument of Tanh / Erf, as a polynomial in x.
  ChainEvaluator inner(g, uses);
  const ValueId u = cn.inputs[0];
  if (u == kNoValue || g.is_constant(u) || uses[u] != 1) return false;
  Poly arg;
  if (!inner.eval(u, &arg) || inner.x == kNoValue || inner.nodes.empty()) return false;
  const double k = std::sqrt(2.0 / M_PI);
  const Poly want_arg = is_tanh ? Poly{{{1, 0}, k}, {{3, 0}, k * 0.044715}} : Poly{{{1, 0}, 1.0 / std::sqrt(2.0)}};
  if (!matches(arg, want_arg, inner.tol)) return false;
  const ValueId x = inner.x;

  // Downstream of t, the first value that is 0.5 x + 0.5 x t.
  const ValueId t = cn.outputs[0];
  const Poly want_out = {{{1, 0}, 0.5}, {{1, 1}, 0.5}};
  ValueId cur = t;
  for (int step = 0; step < kMaxChainLength; ++step) {
    if (uses[cur] != 1) return false;
    const NodeId c = consumer_of(consumers, cur);
    if (c < 0 || !is_chain_op(g.nodes[c])) return false;
    ChainEvaluator outer(g, uses);
    outer.x = x;
    outer.t = t;
    outer.tol = inner.tol;
    Poly out;
    const ValueId y = g.nodes[c].outputs[0];
    if (!outer.eval_node(c, &out)) return false;
    if (!matches(out, want_out, outer.tol)) {
      cur = y;
      continue;
    }
    // Every value of the chain has x's dtype and shape (no broadcast hides in a constant).
    if (!dtype_is_float(g.value(x).dtype)) return false;
    std::vector<NodeId> all = inner.nodes;
    all.push_back(core);
    all.insert(all.end(), outer.nodes.begin(), outer.nodes.end());
    for (NodeId n : all) {
      if (!same_layout(g, g.nodes[n].outputs[0], x)) return false;
    }
    m->final_node = c;
    m->removed.clear();
    for (NodeId n : all) {
      if (n != c) m->removed.push_back(n);
    }
    m->constants = inner.constants;
    m->constants.insert(m->constants.end(), outer.constants.begin(), outer.constants.end());
    Node& gelu = m->gelu;
    gelu = Node{};
    gelu.op_type = "Gelu";
    gelu.domain = "";
    gelu.attrs.set_string("approximate", is_tanh ? "tanh" : "none");
    gelu.inputs = {x};
    gelu.outputs = {y};
    gelu.place = g.nodes[c].place;
    return true;
  }
  return false;
}

}  // namespace

Status fuse_gelu(Graph& graph, int* fused) {
  const OpSchema* schema = OpRegistry::global().find("", "Gelu");
  if (schema == nullptr || schema->infer == nullptr) {
    return internal_error("fuse_gelu: the op registry has no Gelu op");
  }
  const std::vector<int> uses = graph.use_counts();
  std::vector<std::vector<NodeId>> consumers(graph.values.size());
  for (NodeId n = 0; n < static_cast<NodeId>(graph.nodes.size()); ++n) {
    for (ValueId v : graph.nodes[n].inputs) {
      if (v != kNoValue && (consumers[v].empty() || consumers[v].back() != n)) consumers[v].push_back(n);
    }
  }
  const auto default_opset = graph.opsets.find("");
  const int opset = std::max(20, default_opset != graph.opsets.end() ? default_opset->second : 0);
  std::set<std::string> node_names;
  for (const Node& n : graph.nodes) node_names.insert(n.name);

  std::vector<Match> matches;
  std::vector<char> claimed(graph.nodes.size(), 0);
  for (NodeId i = 0; i < static_cast<NodeId>(graph.nodes.size()); ++i) {
    const Node& n = graph.nodes[i];
    if (!n.domain.empty() || (n.op_type != "Tanh" && n.op_type != "Erf")) continue;
    Match m;
    if (!match_at(graph, uses, consumers, i, &m)) continue;
    bool overlap = claimed[m.final_node] != 0;
    for (NodeId r : m.removed) overlap = overlap || claimed[r] != 0;
    if (overlap) continue;
    // A name of its own, after the Tanh / Erf node it replaces ("/.../act/Erf" -> "/.../act/Erf_gelu").
    std::string name = n.name.empty() ? "gelu" : n.name + "_gelu";
    for (int k = 1; node_names.count(name); ++k) name = n.name + "_gelu_" + std::to_string(k);
    node_names.insert(name);
    m.gelu.name = name;
    m.gelu.opset = opset;
    if (!replacement_infers(graph, *schema, m.gelu)) continue;  // dtype, shape, attribute as the chain's
    claimed[m.final_node] = 1;
    for (NodeId r : m.removed) claimed[r] = 1;
    matches.push_back(std::move(m));
  }
  if (matches.empty()) return Status::ok();

  std::vector<ChainReplacement> chains;
  for (Match& m : matches) {
    ChainReplacement c{m.final_node, m.removed, m.constants, std::move(m.gelu)};
    for (NodeId r : m.removed)
      for (ValueId v : graph.nodes[r].outputs) c.maybe_dead.push_back(v);
    chains.push_back(std::move(c));
  }
  replace_chains(graph, chains);
  if (fused) *fused += static_cast<int>(matches.size());
  return Status::ok();
}

}  // namespace gv

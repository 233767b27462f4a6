// fuse_attention_layout: 4-D Attention nodes between head transposes, rewritten into ONNX Attention's 3-D form
// (runtime/ops/attention_form.h; runtime/fusion.h). The exporters and the zoo split the heads out of a [B, S, H * D]
// projection, transpose them to [B, H, S, D] for the products, and transpose the result back:
//
//   Q = Transpose(0,2,1,3)(Xq [B, S, Hq, D]), K = Transpose(0,2,1,3)(Xk [B, L, Hkv, D]), V likewise from Xv
//   Y [B, Hq, S, Dv] = Attention(Q, K, V, mask?);  Z [B, S, Hq, Dv] = Transpose(0,2,1,3)(Y)
//
// becomes
//
//   Reshape(Xq, [B, S, Hq * D]), Reshape(Xk, ...), Reshape(Xv, ...) -> Attention(q_num_heads Hq, kv_num_heads Hkv)
//     -> Y3 [B, S, Hq * Dv] -> Reshape(Y3, [B, S, Hq, Dv]) -> Z
//
// Same values element for element: the 3-D form reads head h of Q as Q3[b, s, h * D + d] = Xq[b, s, h, d]. The
// Reshapes are views (the memory planner aliases them), so the four transposed copies per layer forward, and the four
// of their gradients backward, are gone; the kernels read and write the heads in place.
// Conditions: Q, K, V and Y each have that Transpose as their only use (Y: its only reader is the Transpose) and are
// not graph outputs; no past key/value inputs. Other Attention nodes stay in the 4-D form. Y may reach its Transpose
// through a Reshape to its own shape (the TorchScript exporter's SDPA output), which goes with it.
// A 4-D RotaryEmbedding between a head Transpose and the attention (Q and K of Llama-style models, after
// fuse_rotary) moves along into its 3-D form (attribute num_heads), which reads the heads in place too.
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool is_head_transpose(const Node& n) {
  return n.op_type == "Transpose" && n.domain.empty() && n.inputs.size() == 1 &&
         n.attrs.get_ints("perm") == std::vector<int64_t>{0, 2, 1, 3};
}

class LayoutRewriter {
 public:
  explicit LayoutRewriter(Graph& g)
      : g_(g), uses_(g.use_counts()), reader_(g.values.size(), -1),
        original_nodes_(static_cast<NodeId>(g.nodes.size())),
        original_values_(static_cast<ValueId>(g.values.size())) {
    for (NodeId n = 0; n < original_nodes_; ++n)
      for (ValueId v : g.nodes[n].inputs)
        if (v != kNoValue) reader_[v] = n;
    is_output_.assign(g.values.size(), 0);
    for (ValueId v : g.outputs) is_output_[v] = 1;
    gone_.assign(original_nodes_, 0);
    insert_at_.resize(original_nodes_);
  }

  bool try_rewrite(NodeId a);
  void finish();

 private:
  // The head Transpose producing v when v is read only once (by the Attention node) and is not a graph output.
  NodeId transpose_into(ValueId v) const {
    if (v == kNoValue || uses_[v] != 1 || is_output_[v]) return -1;
    const NodeId p = g_.value(v).producer;
    if (p < 0 || p >= original_nodes_ || gone_[p] || !is_head_transpose(g_.nodes[p])) return -1;
    return g_.value(g_.nodes[p].inputs[0]).shape.size() == 4 ? p : -1;
  }
  // Where an Attention input comes from: a head Transpose, or a 4-D RotaryEmbedding (runtime/fuse_rotary.cpp) of
  // one, each value between read once.
  struct HeadSource {
    NodeId transpose = -1;
    NodeId rotary = -1;
  };
  HeadSource source_of(ValueId v) const {
    if (const NodeId t = transpose_into(v); t >= 0) return {t, -1};
    if (v == kNoValue || uses_[v] != 1 || is_output_[v]) return {};
    const NodeId p = g_.value(v).producer;
    if (p < 0 || p >= original_nodes_ || gone_[p]) return {};
    const Node& r = g_.nodes[p];
    if (r.op_type != "RotaryEmbedding" || !r.domain.empty() || r.outputs.size() != 1) return {};
    const NodeId t = transpose_into(r.inputs[0]);
    return t >= 0 ? HeadSource{t, p} : HeadSource{};
  }
  // Appends a node through the registry and takes it back out of the graph's list (it is placed by finish()).
  Expected<std::vector<ValueId>> build(Node n, std::vector<Node>& into) {
    auto outs = g_.add_node(std::move(n));
    if (!outs) return outs.status();
    into.push_back(std::move(g_.nodes.back()));
    g_.nodes.pop_back();
    return outs;
  }
  Expected<ValueId> reshape(ValueId x, const Shape& to, const std::string& name, const Placement& place,
                            std::vector<Node>& into) {
    Node r;
    r.name = name;
    r.op_type = "Reshape";
    r.opset = 14;
    const ValueId shape = g_.add_initializer(g_.unique_name(name + "_shape"),
                                             Tensor::from_i64(std::vector<int64_t>(to.begin(), to.end()),
                                                              {static_cast<int64_t>(to.size())}),
                                             ValueKind::kConstant);
    r.inputs = {x, shape};
    r.place = place;
    GV_ASSIGN_OR_RETURN(std::vector<ValueId> outs, build(std::move(r), into));
    return outs[0];
  }

  Graph& g_;
  std::vector<int> uses_;
  std::vector<NodeId> reader_;  // the last reader of each value (the only one where uses_ == 1)
  std::vector<char> is_output_;
  NodeId original_nodes_;
  ValueId original_values_;
  std::vector<ValueId> orphans_;  // the transposed Q, K, V and Y of rewritten nodes
  std::vector<char> gone_;
  std::vector<std::vector<Node>> insert_at_;
};

bool LayoutRewriter::try_rewrite(NodeId id) {
  const Node a = g_.nodes[id];  // a copy: building nodes grows g_.nodes
  if (a.op_type != "Attention" || !a.domain.empty() || a.outputs.size() != 1 || a.inputs.size() < 3) return false;
  for (size_t i = 4; i < a.inputs.size(); ++i)
    if (a.inputs[i] != kNoValue) return false;  // past key / value
  if (g_.value(a.inputs[0]).shape.size() != 4) return false;
  const HeadSource sq = source_of(a.inputs[0]), sk = source_of(a.inputs[1]), sv = source_of(a.inputs[2]);
  const NodeId tq = sq.transpose, tk = sk.transpose, tv = sv.transpose;
  if (tq < 0 || tk < 0 || tv < 0 || tq == tk || tq == tv || tk == tv) return false;
  const ValueId y = a.outputs[0];
  if (uses_[y] != 1 || is_output_[y] || reader_[y] < 0) return false;
  NodeId ty = reader_[y];
  NodeId y_same_shape = -1;  // a Reshape of Y to Y's own shape before the Transpose
  if (ty < original_nodes_ && !gone_[ty] && g_.nodes[ty].op_type == "Reshape" && g_.nodes[ty].domain.empty() &&
      g_.nodes[ty].inputs[0] == y && g_.value(g_.nodes[ty].outputs[0]).shape == g_.value(y).shape) {
    const ValueId r = g_.nodes[ty].outputs[0];
    if (uses_[r] != 1 || is_output_[r] || reader_[r] < 0) return false;
    y_same_shape = ty;
    ty = reader_[r];
  }
  if (ty >= original_nodes_ || gone_[ty] || !is_head_transpose(g_.nodes[ty])) return false;
  const ValueId z = g_.nodes[ty].outputs[0];

  // Copies: adding values grows g_.values.
  const Shape q4 = g_.value(a.inputs[0]).shape, k4 = g_.value(a.inputs[1]).shape, v4 = g_.value(a.inputs[2]).shape;
  const Shape z_shape = g_.value(z).shape;
  const int64_t hq = q4[1], hkv = k4[1];
  const size_t n_before = g_.nodes.size();
  std::vector<Node> added;
  auto flat = [&](const HeadSource& src, const Shape& s4, const char* what) -> Expected<ValueId> {
    // s4 = [B, H, S, D] (the transposed value): the source is [B, S, H, D].
    GV_ASSIGN_OR_RETURN(const ValueId x3, reshape(g_.nodes[src.transpose].inputs[0], {s4[0], s4[2], s4[1] * s4[3]},
                                                  a.name + "/" + what + "_3d", a.place, added));
    if (src.rotary < 0) return x3;
    // The rotary embedding moves along: its 3-D form reads the same tables (one row per token in both forms).
    Node r = g_.nodes[src.rotary];
    r.name += "_3d";
    r.attrs.set_int("num_heads", s4[1]);
    r.inputs[0] = x3;
    r.outputs.clear();
    GV_ASSIGN_OR_RETURN(std::vector<ValueId> outs, build(std::move(r), added));
    return outs[0];
  };
  auto q3 = flat(sq, q4, "q"), k3 = flat(sk, k4, "k"), v3 = flat(sv, v4, "v");
  if (!q3 || !k3 || !v3) return false;
  Node att;
  att.name = a.name + "_3d";
  att.op_type = "Attention";
  att.opset = a.opset;
  att.attrs = a.attrs;
  att.attrs.set_int("q_num_heads", hq);
  att.attrs.set_int("kv_num_heads", hkv);
  att.inputs = {*q3, *k3, *v3};
  if (a.inputs.size() > 3 && a.inputs[3] != kNoValue) att.inputs.push_back(a.inputs[3]);
  att.place = a.place;
  auto y3 = build(std::move(att), added);
  if (!y3) return false;
  auto z2 = reshape((*y3)[0], z_shape, a.name + "/y_4d", a.place, added);
  if (!z2 || g_.value(*z2).shape != z_shape || g_.nodes.size() != n_before) return false;
  added.back().outputs = {z};  // the last Reshape writes Z itself, so its readers need no change
  gone_[tq] = gone_[tk] = gone_[tv] = gone_[id] = gone_[ty] = 1;
  orphans_.insert(orphans_.end(), {a.inputs[0], a.inputs[1], a.inputs[2], y});
  if (y_same_shape >= 0) {
    gone_[y_same_shape] = 1;
    orphans_.push_back(g_.nodes[y_same_shape].outputs[0]);
  }
  for (const HeadSource* src : {&sq, &sk, &sv}) {
    if (src->rotary < 0) continue;
    gone_[src->rotary] = 1;
    orphans_.push_back(g_.nodes[src->rotary].inputs[0]);
  }
  insert_at_[id] = std::move(added);
  return true;
}

void LayoutRewriter::finish() {
  std::vector<Node> nodes;
  for (NodeId n = 0; n < original_nodes_; ++n) {
    for (Node& r : insert_at_[n]) nodes.push_back(std::move(r));
    if (!gone_[n]) nodes.push_back(std::move(g_.nodes[n]));
  }
  g_.nodes = std::move(nodes);
  // Values nothing reads or writes any more (the transposed Q, K, V, Y; the orphaned Reshape output) are dropped.
  // Values added here are kept when something refers to them; older ones unless this pass orphaned them.
  std::vector<char> keep(g_.values.size(), 0);
  for (ValueId v = 0; v < original_values_; ++v) keep[v] = 1;
  for (ValueId v : orphans_) keep[v] = 0;
  for (const Node& n : g_.nodes) {
    for (ValueId v : n.inputs)
      if (v != kNoValue) keep[v] = 1;
    for (ValueId v : n.outputs) keep[v] = 1;
  }
  for (ValueId v : g_.inputs) keep[v] = 1;
  for (ValueId v : g_.outputs) keep[v] = 1;
  std::vector<char> drop(keep.size());
  for (size_t i = 0; i < keep.size(); ++i) drop[i] = !keep[i];
  g_.drop_values(drop);
}

}  // namespace

Status fuse_attention_layout(Graph& graph, int* rewritten) {
  LayoutRewriter r(graph);
  const NodeId n = static_cast<NodeId>(graph.nodes.size());
  int count = 0;
  for (NodeId i = 0; i < n; ++i) {
    if (r.try_rewrite(i)) ++count;
  }
  r.finish();  // also drops what a failed attempt added
  *rewritten += count;
  return Status::ok();
}

}  // namespace gv

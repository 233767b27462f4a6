// unflatten_gemms (runtime/fusion.h): a Gemm between the reshapes that flatten its input's leading dims and restore
// them on its output, as torch.onnx writes a Linear or GPT-2's Conv1D applied to [B, S, K] (addmm on a view),
//
//   X [.., K] -> Reshape [M, K] -> Gemm(., W, C; transB) -> [M, N] -> Reshape [.., N] -> Y
//
// becomes the product on X itself, as the other exporters and the zoo write it:
//
//   X -> MatMul(X, W | Transpose(W)) [.., N] -> Add(., C) -> Y
//
// (X of another shape with M * K elements, such as the attention's [B, S, H, D] flattened straight to [B * S, H * D],
// is first viewed as [.., K] with Y's leading dims: a Reshape, which the memory planner aliases.)
// Same values element for element (M = the product of X's leading dims; each row's product and bias add are the
// Gemm's). The later passes then see the zoo's form: fuse_linear's MatMul + Add (+ Gelu), the residual Add reading
// the product directly (fuse_linear_residual_adds, fuse_skip_norm), the norm's output read by the product (bf16 norm
// outputs); no reshape between them, forward or backward. Taken when alpha = beta = 1, transA = 0, C a [N] row or
// absent, and both reshapes' outputs are read only by the chain (and are not graph outputs).
#include <map>
#include <set>
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool is_default(const Node& n, const char* op) { return n.op_type == op && n.domain.empty(); }

class GemmUnflattener {
 public:
  explicit GemmUnflattener(Graph& g)
      : g_(g),
        uses_(g.use_counts()),
        readers_(g.values.size(), -1),
        original_values_(static_cast<ValueId>(g.values.size())) {
    for (ValueId o : g.outputs) outputs_.insert(o);
    for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id)
      for (ValueId v : g.nodes[id].inputs)
        if (v != kNoValue) readers_[v] = id;
  }

  bool try_rewrite(NodeId id) {
    const Node gemm = g_.nodes[id];  // a copy: adding nodes grows g_.nodes
    if (!is_default(gemm, "Gemm") || gemm.inputs.size() < 2 || gemm.outputs.size() != 1) return false;
    if (gemm.attrs.get_int("transA", 0) != 0 || gemm.attrs.get_double("alpha", 1.0) != 1.0) return false;
    const bool trans_b = gemm.attrs.get_int("transB", 0) != 0;
    const ValueId a = gemm.inputs[0], w = gemm.inputs[1], y2 = gemm.outputs[0];
    const ValueId c = gemm.inputs.size() > 2 ? gemm.inputs[2] : kNoValue;
    const Shape &as = g_.value(a).shape, &ws = g_.value(w).shape;
    if (as.size() != 2 || ws.size() != 2) return false;
    const int64_t n = trans_b ? ws[0] : ws[1];
    if (c != kNoValue && (gemm.attrs.get_double("beta", 1.0) != 1.0 || g_.value(c).shape != Shape{n})) return false;
    // The flattening Reshape: X [.., K] -> [M, K].
    const NodeId flat = g_.value(a).producer;
    if (flat < 0 || !is_default(g_.nodes[flat], "Reshape") || !single_use(a)) return false;
    const ValueId x = g_.nodes[flat].inputs[0];
    const Shape xs = g_.value(x).shape;
    if (xs.size() < 3 || shape_numel(xs) != shape_numel(as)) return false;
    // The restoring Reshape: [M, N] -> [lead.., N], the leading dims M rows make.
    if (!single_use(y2)) return false;
    const NodeId back = readers_[y2];
    if (!is_default(g_.nodes[back], "Reshape") || g_.nodes[back].inputs[0] != y2) return false;
    const ValueId y = g_.nodes[back].outputs[0];
    const Shape want = g_.value(y).shape;
    if (want.size() < 3 || want.back() != n || shape_numel(want) / n != as[0]) return false;
    // X itself when it is [lead.., K] (a flattened Linear input), else viewed as that (heads merged back, e.g. the
    // attention output [B, S, H, D] flattened straight to [B * S, H * D]).
    Shape x_lead = want;
    x_lead.back() = as[1];

    const Placement place = gemm.place;
    const int opset = fused_node_opset(g_, 13);
    std::vector<Node> added;
    auto add = [&](Node nd) -> ValueId {
      nd.place = place;
      nd.opset = opset;
      auto outs = g_.add_node(std::move(nd));
      if (!outs) return kNoValue;
      added.push_back(std::move(g_.nodes.back()));
      g_.nodes.pop_back();
      return (*outs)[0];
    };
    ValueId wm = w;
    if (trans_b) {
      Node t;
      t.name = gemm.name + "/unflattened_transpose";
      t.op_type = "Transpose";
      t.attrs.set_ints("perm", {1, 0});
      t.inputs = {w};
      wm = add(std::move(t));
      if (wm == kNoValue) return false;
    }
    ValueId xm = x;
    if (xs != x_lead) {
      Node r;
      r.name = gemm.name + "/unflattened_input";
      r.op_type = "Reshape";
      r.inputs = {x, g_.add_initializer(g_.unique_name(gemm.name + "/unflattened_input_shape"),
                                        Tensor::from_i64(std::vector<int64_t>(x_lead.begin(), x_lead.end()),
                                                         {static_cast<int64_t>(x_lead.size())}),
                                        ValueKind::kConstant)};
      xm = add(std::move(r));
      if (xm == kNoValue) return false;
    }
    Node mm;
    mm.name = gemm.name + "/unflattened";
    mm.op_type = "MatMul";
    mm.inputs = {xm, wm};
    const ValueId prod = add(std::move(mm));
    if (prod == kNoValue || g_.value(prod).shape != want) return false;
    ValueId last = prod;
    if (c != kNoValue) {
      Node ad;
      ad.name = gemm.name + "/unflattened_bias";
      ad.op_type = "Add";
      ad.inputs = {prod, c};
      last = add(std::move(ad));
      if (last == kNoValue) return false;
    }
    // The last new node writes Y itself, so Y's readers need no change.
    added.back().outputs = {y};
    dropped_.insert(last);
    insert_at_[back] = std::move(added);
    gone_.insert({flat, id, back});
    dropped_.insert({a, y2});
    for (NodeId r : {flat, back})
      if (g_.nodes[r].inputs.size() > 1) reshape_shapes_.insert(g_.nodes[r].inputs[1]);
    return true;
  }

  void finish() {
    std::vector<Node> nodes;
    for (NodeId id = 0; id < static_cast<NodeId>(g_.nodes.size()); ++id) {
      auto it = insert_at_.find(id);
      if (it != insert_at_.end()) {
        for (Node& nd : it->second) nodes.push_back(std::move(nd));
      }
      if (!gone_.count(id)) nodes.push_back(std::move(g_.nodes[id]));
    }
    g_.nodes = std::move(nodes);
    // The flattened values, and the outputs add_node made for the nodes that now write Y; the Reshapes' shape
    // constants when nothing else reads them.
    std::vector<int> uses(g_.values.size(), 0);
    for (const Node& nd : g_.nodes)
      for (ValueId v : nd.inputs)
        if (v != kNoValue) ++uses[v];
    std::vector<char> drop(g_.values.size(), 0);
    for (ValueId v : dropped_) drop[v] = 1;
    for (ValueId v = 0; v < static_cast<ValueId>(g_.values.size()); ++v) {
      if (uses[v] == 0 && g_.value(v).kind == ValueKind::kConstant && g_.value(v).producer < 0 &&
          reshape_shapes_.count(v)) {
        drop[v] = 1;
      }
    }
    // Values added for a chain that then failed (none expected: the shapes are checked first) are read and written by
    // nothing; their producer indices point at nodes taken back out.
    std::vector<char> written(g_.values.size(), 0);
    for (const Node& nd : g_.nodes)
      for (ValueId v : nd.outputs) written[v] = 1;
    for (ValueId v = original_values_; v < static_cast<ValueId>(g_.values.size()); ++v) {
      if (uses[v] == 0 && !written[v]) drop[v] = 1;
    }
    for (ValueId v : g_.outputs) drop[v] = 0;
    g_.drop_values(drop);
  }

 private:
  bool single_use(ValueId v) const { return uses_[v] == 1 && !outputs_.count(v) && readers_[v] >= 0; }

  Graph& g_;
  std::vector<int> uses_;
  std::vector<NodeId> readers_;
  std::set<ValueId> outputs_;
  std::map<NodeId, std::vector<Node>> insert_at_;
  std::set<NodeId> gone_;
  std::set<ValueId> dropped_;
  std::set<ValueId> reshape_shapes_;
  ValueId original_values_;
};

}  // namespace

Status unflatten_gemms(Graph& graph, int* rewritten) {
  GemmUnflattener u(graph);
  const size_t before = graph.values.size();
  int count = 0;
  const NodeId n = static_cast<NodeId>(graph.nodes.size());
  for (NodeId id = 0; id < n; ++id) {
    if (u.try_rewrite(id)) ++count;
  }
  if (count > 0 || graph.values.size() > before) u.finish();
  *rewritten += count;
  return Status::ok();
}

}  // namespace gv

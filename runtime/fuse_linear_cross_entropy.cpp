// fuse_linear_cross_entropy (runtime/fusion.h): a language model's head product feeding the loss,
//
//   logits = MatMul(X [.., K], B [K, V])  ->  Reshape [N, V]  ->  SoftmaxCrossEntropyLoss(., labels [N])
//
// with B = Transpose(W [V, K]) (tied or Linear weights as the exporters write them) or any [K, V] matrix, becomes
//
//   Reshape(X) [N, K]  ->  galvatron LinearCrossEntropy(X, W, labels; trans_w = 1) -> loss, dX1, dW1
//                          (B itself with trans_w = 0)
//
// whose kernels never hold the [N, V] logits or their gradient whole (runtime/ops/linear_cross_entropy_ops.cpp). For
// GPT-2 at batch 8 x 1024 those are 1.6 GB each in float32. The node also returns the gradients for dLoss = 1 from
// the same logits, so the backward recomputes nothing (the pass runs on training graphs only, after the loss is
// attached). Only chains whose logits nothing else reads are taken
// (the loss has no class weights and no log-prob output; reduction mean or sum). `keep` names values that must stay
// (gradients reported by name): a Transpose output listed there is used as B with trans_w = 0.
#include <map>
#include <set>
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool is_2d_transpose(const Node& n) {
  if (n.op_type != "Transpose" || !n.domain.empty() || n.inputs.size() != 1 || n.outputs.size() != 1) return false;
  if (!n.attrs.has("perm")) return true;  // reversed axes: for a 2-D input, the transpose
  const std::vector<int64_t> p = n.attrs.get_ints("perm");
  return p == std::vector<int64_t>{1, 0};
}

struct Match {
  NodeId sce = -1, reshape = -1, matmul = -1;
  ValueId x = kNoValue, w = kNoValue, labels = kNoValue;
  bool trans_w = true;
};

class Fuser {
 public:
  Fuser(Graph& g, const std::set<std::string>& keep) : g_(g), keep_(keep), uses_(g.use_counts()) {}

  bool find(NodeId id, Match& m) const {
    const Node& sce = g_.nodes[id];
    if (sce.op_type != "SoftmaxCrossEntropyLoss" || !sce.domain.empty() || sce.outputs.size() != 1) return false;
    if (sce.inputs.size() < 2 || (sce.inputs.size() > 2 && sce.inputs[2] != kNoValue)) return false;
    const std::string red = sce.attrs.get_string("reduction", "mean");
    if (red != "mean" && red != "sum") return false;
    const ValueId scores = sce.inputs[0];
    const Shape& ss = g_.value(scores).shape;
    if (ss.size() != 2 || g_.value(sce.inputs[1]).shape != Shape{ss[0]}) return false;
    if (g_.value(scores).dtype != DType::kFloat32 && g_.value(scores).dtype != DType::kFloat64) return false;
    m.sce = id;
    m.labels = sce.inputs[1];
    ValueId logits = scores;
    if (!single_use(scores)) return false;
    const NodeId p = g_.value(scores).producer;
    if (p < 0) return false;
    if (g_.nodes[p].op_type == "Reshape" && g_.nodes[p].domain.empty()) {
      m.reshape = p;
      logits = g_.nodes[p].inputs[0];
      if (!single_use(logits) || g_.value(logits).producer < 0) return false;
    }
    const NodeId mm = g_.value(logits).producer;
    const Node& mat = g_.nodes[mm];
    if (mat.op_type != "MatMul" || !mat.domain.empty() || mat.inputs.size() != 2) return false;
    const Shape &xs = g_.value(mat.inputs[0]).shape, &bs = g_.value(mat.inputs[1]).shape;
    if (bs.size() != 2 || xs.size() < 2 || xs.back() != bs[0] || bs[1] != ss[1]) return false;
    if (shape_numel(xs) != ss[0] * bs[0]) return false;
    m.matmul = mm;
    m.x = mat.inputs[0];
    m.w = mat.inputs[1];
    m.trans_w = false;
    const NodeId t = g_.value(m.w).producer;
    if (t >= 0 && is_2d_transpose(g_.nodes[t]) && !keep_.count(g_.value(m.w).name)) {
      m.w = g_.nodes[t].inputs[0];
      m.trans_w = true;
    }
    return true;
  }

  // Replaces the chain by [Reshape X,] LinearCrossEntropy at the loss node's position.
  Status rewrite(const Match& m) {
    const Node sce = g_.nodes[m.sce];  // copies: adding nodes grows g_.nodes
    const Shape xs = g_.value(m.x).shape;
    const Shape ss = g_.value(sce.inputs[0]).shape;
    std::vector<Node> added;
    ValueId x2 = m.x;
    if (xs.size() != 2) {
      Node r;
      r.name = sce.name + "/x_2d";
      r.op_type = "Reshape";
      r.opset = 14;
      r.place = sce.place;
      r.inputs = {m.x, g_.add_initializer(g_.unique_name(r.name + "_shape"), Tensor::from_i64({ss[0], xs.back()}, {2}),
                                          ValueKind::kConstant)};
      GV_ASSIGN_OR_RETURN(std::vector<ValueId> outs, build(std::move(r), added));
      x2 = outs[0];
    }
    Node f;
    f.name = sce.name + "/linear";
    f.op_type = "LinearCrossEntropy";
    f.domain = kGalvatronDomain;
    f.opset = 1;
    f.place = sce.place;
    f.attrs.set_string("reduction", sce.attrs.get_string("reduction", "mean"));
    if (sce.attrs.has("ignore_index")) f.attrs.set_int("ignore_index", sce.attrs.get_int("ignore_index", 0));
    f.attrs.set_int("trans_w", m.trans_w ? 1 : 0);
    f.inputs = {x2, m.w, m.labels};
    f.outputs.assign(3, kNoValue);  // the loss, and dX, dW for dLoss = 1 (the backward only scales them)
    GV_RETURN_IF_ERROR(build(std::move(f), added).status());
    candidates_.push_back(added.back().outputs[0]);
    added.back().outputs[0] = sce.outputs[0];  // writes the loss value itself: its readers need no change
    const Node& mat = g_.nodes[m.matmul];
    candidates_.insert(candidates_.end(), {mat.outputs[0], mat.inputs[1]});
    gone_.insert(m.matmul);
    if (m.reshape >= 0) {
      const Node& r = g_.nodes[m.reshape];
      candidates_.insert(candidates_.end(), r.inputs.begin(), r.inputs.end());
      candidates_.push_back(r.outputs[0]);
      gone_.insert(m.reshape);
    }
    if (m.trans_w) transposes_.insert(g_.value(mat.inputs[1]).producer);
    gone_.insert(m.sce);
    insert_at_[m.sce] = std::move(added);
    return Status::ok();
  }

  void finish(NodeId original_nodes) {
    std::vector<Node> nodes;
    for (NodeId n = 0; n < original_nodes; ++n) {
      auto it = insert_at_.find(n);
      if (it != insert_at_.end())
        for (Node& r : it->second) nodes.push_back(std::move(r));
      if (!gone_.count(n)) nodes.push_back(std::move(g_.nodes[n]));
    }
    g_.nodes = std::move(nodes);
    // The values the chains wrote or read that nothing reads now: the logits, the Reshape's shape, and a weight
    // Transpose that only fed the head (its node goes too).
    std::vector<int> uses = g_.use_counts();
    std::vector<char> drop(g_.values.size(), 0);
    std::vector<Node> kept;
    for (Node& n : g_.nodes) {
      const ValueId out = n.outputs.empty() ? kNoValue : n.outputs[0];
      if (out != kNoValue && uses[out] == 0 && transposes_.count(g_.value(out).producer)) {
        drop[out] = 1;
        continue;
      }
      kept.push_back(std::move(n));
    }
    g_.nodes = std::move(kept);
    uses = g_.use_counts();
    for (ValueId v : g_.inputs) ++uses[v];
    for (ValueId v : candidates_) {
      if (v == kNoValue || uses[v] > 0) continue;
      const Value& val = g_.value(v);
      if (val.kind == ValueKind::kActivation || val.kind == ValueKind::kConstant) drop[v] = 1;
    }
    g_.drop_values(drop);
  }

 private:
  bool single_use(ValueId v) const {
    if (uses_[v] != 1) return false;
    for (ValueId o : g_.outputs)
      if (o == v) return false;
    return true;
  }

  Expected<std::vector<ValueId>> build(Node n, std::vector<Node>& into) {
    GV_ASSIGN_OR_RETURN(std::vector<ValueId> outs, g_.add_node(std::move(n)));
    into.push_back(std::move(g_.nodes.back()));
    g_.nodes.pop_back();
    return outs;
  }

  Graph& g_;
  const std::set<std::string>& keep_;
  std::vector<int> uses_;
  std::vector<ValueId> candidates_;  // values the rewritten chains touched: dropped when nothing reads them any more
  std::set<NodeId> gone_;
  std::set<NodeId> transposes_;  // weight Transposes read by a rewritten head
  std::map<NodeId, std::vector<Node>> insert_at_;
};

}  // namespace

Status fuse_linear_cross_entropy(Graph& graph, const std::set<std::string>& keep, int* fused) {
  Fuser f(graph, keep);
  const NodeId n = static_cast<NodeId>(graph.nodes.size());
  int count = 0;
  for (NodeId i = 0; i < n; ++i) {
    Match m;
    if (!f.find(i, m)) continue;
    GV_RETURN_IF_ERROR(f.rewrite(m));
    ++count;
  }
  if (count > 0) f.finish(n);
  *fused += count;
  return Status::ok();
}

}  // namespace gv

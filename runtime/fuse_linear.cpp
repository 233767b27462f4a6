// fuse_linear (runtime/fusion.h): a layer's product with what follows it,
//
//   MatMul(X [.., K], W [K, N] | Transpose(W [N, K])) [-> Add(., bias [N]) [-> Gelu]]
//   Gemm(X [M, K], W, bias [N]) [-> [Reshape ->] Gelu]          (torch.onnx's addmm: GPT-2's Conv1D)
//
// becomes one galvatron Linear(X, W, bias?; transB, activation) (runtime/ops/math_linear.cpp), which the CUDA backend
// runs as one cuBLASLt product whose epilogue adds the bias and applies the GELU, and whose backward needs no
// transposed weight copy. The Add's output stays as Linear's PreAct output when a Gelu follows (GeluGrad reads it).
// A plain MatMul (no bias, no transpose) is left alone unless its weight is a parameter. Only chains whose
// intermediates nothing else reads are taken; `keep` names values that must stay (gradients reported by name).
#include <map>
#include <set>
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool is_default(const Node& n, const char* op) { return n.op_type == op && n.domain.empty(); }

bool is_2d_transpose(const Node& n) {
  if (!is_default(n, "Transpose") || n.inputs.size() != 1 || n.outputs.size() != 1) return false;
  if (!n.attrs.has("perm")) return true;
  return n.attrs.get_ints("perm") == std::vector<int64_t>{1, 0};
}

class LinearFuser {
 public:
  LinearFuser(Graph& g, const std::set<std::string>& keep) : g_(g), keep_(keep), uses_(g.use_counts()) {
    for (ValueId o : g.outputs) outputs_.insert(o);
    readers_.assign(g.values.size(), -1);
    for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
      for (ValueId v : g.nodes[id].inputs)
        if (v != kNoValue) readers_[v] = id;  // the reader, when there is exactly one (uses_ == 1)
    }
  }

  // Rewrites the chain starting at the MatMul or Gemm node `id`; false when there is none.
  bool try_fuse(NodeId id) {
    const Node& mm = g_.nodes[id];
    const bool gemm = is_default(mm, "Gemm");
    if (!(is_default(mm, "MatMul") && mm.inputs.size() == 2) && !gemm) return false;
    if (mm.outputs.size() != 1) return false;
    const Value &x = g_.value(mm.inputs[0]), &b = g_.value(mm.inputs[1]);
    if (x.shape.size() < 2 || b.shape.size() != 2 || x.dtype != DType::kFloat32 || b.dtype != DType::kFloat32) {
      return false;
    }
    bool trans_b = false;
    ValueId bias = kNoValue;
    if (gemm) {  // Y = A @ op(B) + C with alpha = beta = 1, A not transposed, C a [N] row (or absent)
      if (mm.attrs.get_int("transA", 0) != 0 || mm.attrs.get_double("alpha", 1.0) != 1.0) return false;
      trans_b = mm.attrs.get_int("transB", 0) != 0;
      if (mm.inputs.size() > 2 && mm.inputs[2] != kNoValue) {
        const Value& c = g_.value(mm.inputs[2]);
        const int64_t n = trans_b ? b.shape[0] : b.shape[1];
        if (mm.attrs.get_double("beta", 1.0) != 1.0 || c.shape != Shape{n} || c.dtype != DType::kFloat32) return false;
        bias = mm.inputs[2];
      }
    }
    const int64_t n = trans_b ? b.shape[0] : b.shape[1];
    ValueId w = mm.inputs[1];
    NodeId transpose = -1;
    const NodeId t = b.producer;
    if (!trans_b && t >= 0 && is_2d_transpose(g_.nodes[t]) && single_use(w) && !keep_.count(b.name)) {
      transpose = t;
      w = g_.nodes[t].inputs[0];
      trans_b = true;
    }
    NodeId add = -1;
    const ValueId y = mm.outputs[0];
    if (!gemm && single_use(y)) {
      const Node& a = g_.nodes[readers_[y]];
      if (is_default(a, "Add") && a.inputs.size() == 2 && a.outputs.size() == 1) {
        const ValueId other = a.inputs[0] == y ? a.inputs[1] : a.inputs[0];
        const Value& ov = g_.value(other);
        if (other != y && ov.dtype == DType::kFloat32 && ov.shape == Shape{n} &&
            g_.value(a.outputs[0]).shape == g_.value(y).shape) {
          add = readers_[y];
          bias = other;
        }
      }
    }
    // The pre-activation: the Add's output, or the product's own (Gemm's bias is inside it).
    const ValueId z = add >= 0 ? g_.nodes[add].outputs[0] : y;
    const bool has_bias = bias != kNoValue;
    NodeId gelu = -1, reshape = -1;
    std::string activation = "none";
    if (has_bias && single_use(z)) {
      NodeId r = readers_[z];
      if (is_default(g_.nodes[r], "Reshape") && g_.nodes[r].inputs[0] == z && single_use(g_.nodes[r].outputs[0])) {
        reshape = r;  // Gemm -> Reshape [.., N] -> Gelu: the activation moves before the Reshape
        r = readers_[g_.nodes[r].outputs[0]];
      }
      const Node& gl = g_.nodes[r];
      const std::string approx = gl.attrs.get_string("approximate", "none");
      if (is_default(gl, "Gelu") && gl.outputs.size() == 1 && (approx == "none" || approx == "tanh")) {
        gelu = r;
        activation = approx == "tanh" ? "gelu_tanh" : "gelu";
      } else {
        reshape = -1;
      }
    }
    // A plain product of an activation: nothing to fuse. A plain product of a weight (a parameter stored [K, N], as
    // the dynamo exporter stores Llama's nn.Linear weights, transposed once at export) is a Linear all the same, so
    // that the later passes (bf16 outputs, residual epilogues, AdamW's bf16 copies) treat it as the zoo's.
    if (!gemm && add < 0 && !trans_b && g_.value(w).kind != ValueKind::kParameter) return false;
    Node lin;
    lin.name = mm.name + "/linear";
    lin.op_type = "Linear";
    lin.domain = kGalvatronDomain;
    lin.opset = 1;
    lin.place = mm.place;
    lin.attrs.set_int("transB", trans_b ? 1 : 0);
    lin.attrs.set_string("activation", activation);
    lin.inputs = {mm.inputs[0], w};
    if (has_bias) lin.inputs.push_back(bias);
    std::vector<Node> at_last;
    NodeId last = gelu >= 0 ? gelu : add >= 0 ? add : id;
    if (reshape >= 0) {
      // Linear(..) -> (Y [M, N], PreAct = the Gemm's output); the Reshape now reads Y and writes the Gelu's output.
      Value act;
      act.name = g_.unique_name(g_.value(z).name + "_act");
      act.dtype = DType::kFloat32;
      act.shape = g_.value(z).shape;
      const ValueId y2 = g_.add_value(std::move(act));
      readers_.push_back(-1);
      uses_.push_back(1);
      lin.outputs = {y2, z};
      Node r = g_.nodes[reshape];
      dropped_.push_back(r.outputs[0]);
      r.inputs[0] = y2;
      r.outputs[0] = g_.nodes[gelu].outputs[0];
      last = reshape;
      at_last.push_back(std::move(lin));
      at_last.push_back(std::move(r));
      gone_.insert(gelu);
    } else {
      if (gelu >= 0) lin.outputs = {g_.nodes[gelu].outputs[0], z};
      else lin.outputs = {z};
      at_last.push_back(std::move(lin));
      if (add >= 0) dropped_.push_back(y);
    }
    // The Linear node takes the place of the chain's last node (every input exists by then).
    replace_[last] = std::move(at_last);
    for (NodeId gone : {id, add, gelu, transpose})
      if (gone >= 0 && gone != last) gone_.insert(gone);
    if (transpose >= 0) dropped_.push_back(g_.nodes[transpose].outputs[0]);
    return true;
  }

  void finish() {
    std::vector<Node> nodes;
    nodes.reserve(g_.nodes.size());
    for (NodeId id = 0; id < static_cast<NodeId>(g_.nodes.size()); ++id) {
      auto it = replace_.find(id);
      if (it != replace_.end()) {
        for (Node& n : it->second) nodes.push_back(std::move(n));
      } else if (!gone_.count(id)) nodes.push_back(std::move(g_.nodes[id]));
    }
    g_.nodes = std::move(nodes);
    std::vector<char> drop(g_.values.size(), 0);
    for (ValueId v : dropped_) drop[v] = 1;
    g_.drop_values(drop);
  }

 private:
  bool single_use(ValueId v) const {
    return uses_[v] == 1 && !outputs_.count(v) && !keep_.count(g_.value(v).name) && readers_[v] >= 0;
  }

  Graph& g_;
  const std::set<std::string>& keep_;
  std::vector<int> uses_;
  std::vector<NodeId> readers_;
  std::set<ValueId> outputs_;
  std::map<NodeId, std::vector<Node>> replace_;
  std::set<NodeId> gone_;
  std::vector<ValueId> dropped_;
};

}  // namespace

Status fuse_linear(Graph& graph, const std::set<std::string>& keep, int* fused) {
  LinearFuser f(graph, keep);
  int count = 0;
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) count += f.try_fuse(id);
  if (count > 0) f.finish();
  *fused += count;
  return Status::ok();
}

}  // namespace gv

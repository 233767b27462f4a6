// bf16_attention_io (runtime/bf16_operands.h): the float32 values around the packed attention ops stored in bf16 where
// only attention nodes (and the reshapes between them and their copies or products) read them.
#include <vector>

#include "runtime/bf16_operands.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

constexpr int64_t kOnnxBFloat16 = 16;

bool is_op(const Node& n, const char* op) { return n.op_type == op && n.domain == kGalvatronDomain; }
bool is_reshape(const Node& n) { return n.op_type == "Reshape" && n.domain.empty(); }
bool is_bf16_copy(const Node& n) {
  return n.op_type == "Cast" && n.domain.empty() && n.name.rfind("bf16_copy/", 0) == 0;
}

struct Reader {
  NodeId node;
  int slot;
};

class Rewriter {
 public:
  explicit Rewriter(Graph& g) : g_(g), readers_(g.values.size()), is_output_(g.values.size(), 0),
                                gone_(g.nodes.size(), 0) {
    for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
      const Node& n = g.nodes[id];
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        if (n.inputs[i] != kNoValue) readers_[n.inputs[i]].push_back({id, static_cast<int>(i)});
      }
    }
    for (ValueId o : g.outputs) is_output_[o] = 1;
  }

  // QKV: read only by attention nodes at slot 0 and written by a float32 Linear: the Linear writes bf16.
  void qkv(ValueId v) {
    for (const Reader& r : readers_[v]) {
      const Node& m = g_.nodes[r.node];
      if (r.slot != 0 || !(is_op(m, "AttentionPacked") || is_op(m, "AttentionPackedGrad"))) return;
    }
    if (!plain_float32(v)) return;
    Node& p = g_.nodes[g_.value(v).producer];
    // (A fourth input is a residual, whose sum stays float32.)
    if (!is_op(p, "Linear") || p.outputs.size() != 1 || p.inputs.size() > 3 || !writes_float32(p)) return;
    p.attrs.set_int("out_dtype", kOnnxBFloat16);
    g_.value(v).dtype = DType::kBFloat16;
    ++count_;
  }

  // Y of `node`: read by the backward (slot 2) and by a chain of Reshapes (each value read once) ending in its shared
  // bf16 copy's Cast. The node writes bf16 (y_dtype 16), the reshapes pass bf16 on, and the last one writes the copy.
  void y(NodeId node) {
    Node& n = g_.nodes[node];
    const ValueId y = n.outputs[0];
    if (g_.value(y).dtype != DType::kFloat32 || is_output_[y]) return;
    NodeId next = -1;
    for (const Reader& r : readers_[y]) {
      const Node& m = g_.nodes[r.node];
      if (is_op(m, "AttentionPackedGrad") && r.slot == 2) continue;
      if (next >= 0) return;  // a second other reader
      next = r.node;
    }
    std::vector<NodeId> chain;  // the reshapes, in order
    ValueId v = y;
    while (next >= 0 && is_reshape(g_.nodes[next]) && g_.nodes[next].inputs[0] == v) {
      chain.push_back(next);
      v = g_.nodes[next].outputs[0];
      if (is_output_[v] || readers_[v].size() != 1) return;
      next = readers_[v][0].node;
    }
    if (next < 0 || !is_bf16_copy(g_.nodes[next])) return;
    const ValueId copy = g_.nodes[next].outputs[0];
    n.attrs.set_int("y_dtype", kOnnxBFloat16);
    if (chain.empty()) {
      n.outputs[0] = copy;  // y stays an orphan value: the training graph's maps hold value ids
      for (const Reader& r : readers_[y]) {
        if (r.node != next) g_.nodes[r.node].inputs[2] = copy;
      }
    } else {
      g_.value(y).dtype = DType::kBFloat16;
      for (size_t i = 0; i + 1 < chain.size(); ++i) g_.value(g_.nodes[chain[i]].outputs[0]).dtype = DType::kBFloat16;
      g_.nodes[chain.back()].outputs[0] = copy;
    }
    gone_[next] = 1;
    ++count_;
  }

  // dY of an AttentionPackedGrad: written by a float32 FusedMatMul, through Reshapes (each value read once): the
  // product writes bf16 and the reshapes pass it on.
  void dy(ValueId v) {
    std::vector<ValueId> values = {v};
    while (true) {
      if (!plain_float32(v) || readers_[v].size() != 1) return;
      const Node& p = g_.nodes[g_.value(v).producer];
      if (!is_reshape(p)) break;
      v = p.inputs[0];
      values.push_back(v);
    }
    Node& p = g_.nodes[g_.value(v).producer];
    if (!is_op(p, "FusedMatMul") || p.outputs.size() != 1 || !writes_float32(p)) return;
    p.attrs.set_int("out_dtype", kOnnxBFloat16);
    for (ValueId x : values) g_.value(x).dtype = DType::kBFloat16;
    ++count_;
  }

  // Erases the removed Casts, moving *boundary by those before it; returns the number of values turned bf16.
  int finish(size_t* boundary) {
    size_t before = 0;
    for (size_t id = 0; id < gone_.size(); ++id) {
      if (gone_[id] && boundary && id < *boundary) ++before;
    }
    g_.erase_nodes(gone_);
    if (boundary) *boundary -= before;
    return count_;
  }

 private:
  // A float32 value some node writes that is not a graph output.
  bool plain_float32(ValueId v) const {
    const Value& val = g_.value(v);
    return val.dtype == DType::kFloat32 && !is_output_[v] && val.producer >= 0;
  }
  static bool writes_float32(const Node& n) { return n.attrs.get_int("out_dtype", 1) == 1; }

  Graph& g_;
  std::vector<std::vector<Reader>> readers_;
  std::vector<char> is_output_;
  std::vector<char> gone_;
  int count_ = 0;
};

}  // namespace

Status bf16_attention_io(Graph& graph, size_t* boundary, int* values) {
  Rewriter rw(graph);
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& n = graph.nodes[id];
    if (is_op(n, "AttentionPacked") && n.outputs.size() == 2) {
      rw.qkv(n.inputs[0]);
      rw.y(id);
    } else if (is_op(n, "AttentionPackedGrad") && n.inputs.size() == 4) {
      rw.dy(n.inputs[1]);
    }
  }
  *values += rw.finish(boundary);
  return Status::ok();
}

}  // namespace gv

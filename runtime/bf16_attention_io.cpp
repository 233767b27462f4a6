// bf16_attention_io (runtime/bf16_operands.h): the float32 values around the attention ops (packed QKV, or Q, K, V
// apart) stored in bf16 where only attention nodes (and the reshapes or rotations between them and their copies or
// products) read them.
#include <algorithm>
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

  // Y of packed attention `node`: read by the backward (AttentionPackedGrad's slot 2) and on its way to its shared
  // bf16 copy; the node writes bf16 (y_dtype 16).
  void y(NodeId node) {
    Node& n = g_.nodes[node];
    const ValueId y = n.outputs[0];
    if (g_.value(y).dtype != DType::kFloat32) return;
    std::vector<ValueId> values;
    const NodeId cast = y_copy(
        y, [&](const Reader& r) { return is_op(g_.nodes[r.node], "AttentionPackedGrad") && r.slot == 2; }, &values);
    if (cast < 0) return;
    n.attrs.set_int("y_dtype", kOnnxBFloat16);
    write_y_copy(y, cast, values);
    ++count_;
  }

  // Y's way to its shared bf16 copy: besides the readers `backward` accepts (the attention backward reading Y), one
  // reader, the copy's Cast or a chain of Reshapes (each value read once) ending in it. The Cast, with the reshapes'
  // values before the copy's input added to *values; -1 if the way is not there.
  template <typename Backward>
  NodeId y_copy(ValueId y, Backward backward, std::vector<ValueId>* values) {
    if (is_output_[y]) return -1;
    NodeId next = -1;
    for (const Reader& r : readers_[y]) {
      if (backward(r)) continue;
      if (next >= 0 || r.slot != 0) return -1;  // a second other reader
      next = r.node;
    }
    if (next < 0) return -1;
    if (is_bf16_copy(g_.nodes[next])) return next;
    if (!is_reshape(g_.nodes[next])) return -1;
    return chain_down(g_.nodes[next].outputs[0], values, /*rotation_allowed=*/false);
  }

  // Y in bf16 on its way to the copy found by y_copy: the node writes the copy itself, which its backward readers
  // then read (y stays an orphan value: the training graph's maps hold value ids), or writes bf16 that the reshapes
  // pass on, the last of them writing the copy. The Cast goes.
  void write_y_copy(ValueId y, NodeId cast, const std::vector<ValueId>& values) {
    const ValueId copy = g_.nodes[cast].outputs[0];
    if (g_.nodes[cast].inputs[0] == y) {
      for (const Reader& r : readers_[y]) {
        if (r.node != cast) g_.nodes[r.node].inputs[r.slot] = copy;
      }
    } else {
      g_.value(y).dtype = DType::kBFloat16;
      for (ValueId v : values) g_.value(v).dtype = DType::kBFloat16;
    }
    write_copy(cast);
  }

  // dY of an AttentionPackedGrad: written by a float32 FusedMatMul, through Reshapes (each value read once): the
  // product writes bf16 and the reshapes pass it on.
  void dy(ValueId v) {
    std::vector<ValueId> values;
    const NodeId p = dy_product(v, &values);
    if (p < 0) return;
    g_.nodes[p].attrs.set_int("out_dtype", kOnnxBFloat16);
    for (ValueId x : values) g_.value(x).dtype = DType::kBFloat16;
    ++count_;
  }

  // The float32 FusedMatMul that writes v through Reshapes, each value read once, with the values (v included) in
  // *values; -1 if there is none.
  NodeId dy_product(ValueId v, std::vector<ValueId>* values) {
    values->push_back(v);
    while (true) {
      if (!plain_float32(v) || readers_[v].size() != 1) return -1;
      const Node& p = g_.nodes[g_.value(v).producer];
      if (!is_reshape(p)) break;
      v = p.inputs[0];
      values->push_back(v);
    }
    const NodeId p = g_.value(v).producer;
    const Node& n = g_.nodes[p];
    return is_op(n, "FusedMatMul") && n.outputs.size() == 1 && writes_float32(n) ? p : -1;
  }

  // Attention with Q, K, V apart (AttentionWithLse `fwd` and the AttentionGrad reading its LSE; Llama's 3-D form):
  // every one of Q, K, V, Y, dY, dQ, dK, dV is stored in bf16, or none (the ops take one float type). Q, K, V each come
  // from a float32 Linear through Reshapes and at most one RotaryEmbedding, each value between read once, and only the
  // two attention nodes read them: the Linear writes bf16, and the reshapes and the rotation pass bf16 on. Y is read by
  // the backward and its shared bf16 copy (whose Cast goes), dY is a FusedMatMul's (through Reshapes), and each
  // gradient reaches its shared bf16 copy through Reshapes and at most one RotaryEmbedding (the backward's rotation),
  // each value read once: the last node writes the copy and the Cast goes.
  void separate(NodeId fwd) {
    const Node& a = g_.nodes[fwd];
    if (a.inputs.size() != 3 || a.outputs.size() != 2 || g_.value(a.outputs[0]).dtype != DType::kFloat32) return;
    NodeId grad = -1;
    for (const Reader& r : readers_[a.outputs[1]]) {
      if (is_op(g_.nodes[r.node], "AttentionGrad") && r.slot == 6 && grad < 0)
        grad = r.node;
      else
        return;
    }
    if (grad < 0) return;
    const Node& gn = g_.nodes[grad];
    if (gn.inputs.size() != 7 || gn.inputs[3] != kNoValue || gn.inputs[5] != a.outputs[0] || gn.outputs.size() != 3) {
      return;
    }
    // Q, K, V: the values back to each one's Linear.
    splits_.clear();
    concats_.clear();
    std::vector<ValueId> in_values;
    NodeId linear[3];
    for (int i = 0; i < 3; ++i) {
      const ValueId v = a.inputs[i];
      if (gn.inputs[i] != v) return;
      for (const Reader& r : readers_[v]) {
        if (!((r.node == fwd || r.node == grad) && r.slot == i)) return;
      }
      linear[i] = chain_up(v, &in_values);
      if (linear[i] < 0) return;
    }
    // Y: read by the backward and on its way to its shared bf16 copy.
    const ValueId y = a.outputs[0];
    std::vector<ValueId> y_values;
    const NodeId y_cast = y_copy(
        y, [&](const Reader& r) { return r.node == grad && r.slot == 5; }, &y_values);
    if (y_cast < 0) return;
    // dY: a FusedMatMul's, through Reshapes.
    std::vector<ValueId> dy_values;
    const NodeId dy_writer = dy_product(gn.inputs[4], &dy_values);
    if (dy_writer < 0) return;
    // dQ, dK, dV: each one's way to its copy.
    std::vector<ValueId> out_values;
    NodeId out_copy[3];
    for (int i = 0; i < 3; ++i) {
      out_copy[i] = chain_down(gn.outputs[i], &out_values);
      if (out_copy[i] < 0) return;
    }
    // A Split or Concat passed on the way turns bf16 whole: each of its outputs (inputs) must be on a chain here.
    auto all_in = [](const std::vector<ValueId>& vs, const std::vector<ValueId>& among) {
      for (ValueId v : vs)
        if (std::find(among.begin(), among.end(), v) == among.end()) return false;
      return true;
    };
    for (NodeId sp : splits_) {
      if (!all_in(g_.nodes[sp].outputs, in_values)) return;
    }
    for (NodeId c : concats_) {
      if (!all_in(g_.nodes[c].inputs, out_values)) return;
    }
    // Every piece is there: rewrite.
    for (int i = 0; i < 3; ++i) g_.nodes[linear[i]].attrs.set_int("out_dtype", kOnnxBFloat16);
    for (ValueId v : in_values) g_.value(v).dtype = DType::kBFloat16;
    write_y_copy(y, y_cast, y_values);
    g_.nodes[dy_writer].attrs.set_int("out_dtype", kOnnxBFloat16);
    for (ValueId x : dy_values) g_.value(x).dtype = DType::kBFloat16;
    for (ValueId v : out_values) g_.value(v).dtype = DType::kBFloat16;
    for (int i = 0; i < 3; ++i) write_copy(out_copy[i]);
    count_ += 8;
  }

  // The writer of `cast`'s input writes the cast's bf16 copy instead, and the Cast goes (its input stays an orphan).
  void write_copy(NodeId cast) {
    const Node& c = g_.nodes[cast];
    for (ValueId& o : g_.nodes[g_.value(c.inputs[0]).producer].outputs) {
      if (o == c.inputs[0]) o = c.outputs[0];
    }
    gone_[cast] = 1;
  }

  // From v up through Reshapes and at most one RotaryEmbedding (its input X), every value float32 and the ones above v
  // read once, to a float32 Linear with one output: the Linear, with the values (v included) added to *values; -1 if
  // the chain is not there.
  NodeId chain_up(ValueId v, std::vector<ValueId>* values) {
    std::vector<ValueId> seen;
    bool rotated = false;
    split_ = false;
    while (true) {
      if (!plain_float32(v) || (!seen.empty() && readers_[v].size() != 1)) return -1;
      seen.push_back(v);
      const NodeId p = g_.value(v).producer;
      const Node& n = g_.nodes[p];
      if (is_reshape(n) || (!rotated && n.op_type == "RotaryEmbedding" && n.domain.empty())) {
        rotated = rotated || !is_reshape(n);
        v = n.inputs[0];
        continue;
      }
      if (n.op_type == "Split" && n.domain.empty() && !split_) {
        // Narrow sibling products as one (fuse_sibling_linears): K and V are a Split of one Linear's output. The
        // Split's other outputs must turn bf16 too (separate checks that they are on its other chains).
        split_ = true;
        splits_.push_back(p);
        v = n.inputs[0];
        if (readers_[v].size() != 1) return -1;
        continue;
      }
      if (!is_op(n, "Linear") || n.outputs.size() != 1 || n.inputs.size() > 3 || !writes_float32(n)) return -1;
      values->insert(values->end(), seen.begin(), seen.end());
      return p;
    }
  }

  // From a gradient o down through Reshapes and at most one RotaryEmbedding (reading it as X; none unless
  // rotation_allowed), each value float32 and read once, to the bf16 copy's Cast: the Cast, with the values before the
  // copy's input (o included, the Cast's input not: its writer writes the copy instead) added to *values; -1 if the
  // chain is not there.
  NodeId chain_down(ValueId o, std::vector<ValueId>* values, bool rotation_allowed = true) {
    std::vector<ValueId> seen;
    bool rotated = !rotation_allowed;
    while (true) {
      if (!plain_float32(o) || readers_[o].size() != 1) return -1;
      const Reader& r = readers_[o][0];
      const Node& n = g_.nodes[r.node];
      if (is_bf16_copy(n)) {
        values->insert(values->end(), seen.begin(), seen.end());
        return r.node;
      }
      const bool rotation = !rotated && n.op_type == "RotaryEmbedding" && n.domain.empty() && r.slot == 0;
      if (n.op_type == "Concat" && n.domain.empty() && rotation_allowed) {
        // The gradients of a Split's outputs joined (fuse_sibling_linears): its other inputs must turn bf16 too.
        concats_.push_back(r.node);
        seen.push_back(o);
        o = n.outputs[0];
        continue;
      }
      if (!(is_reshape(n) && r.slot == 0) && !rotation) return -1;
      rotated = rotated || rotation;
      seen.push_back(o);
      o = n.outputs[0];
    }
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
  bool split_ = false;          // chain_up passed a Split
  std::vector<NodeId> splits_;  // the Splits (Concats) separate's chains pass
  std::vector<NodeId> concats_;
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
    } else if (is_op(n, "AttentionWithLse")) {
      rw.separate(id);
    }
  }
  *values += rw.finish(boundary);
  return Status::ok();
}

}  // namespace gv

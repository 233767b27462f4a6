// fuse_rotary: HF's rotary position embedding (apply_rotary_pos_emb, rope_type "default" and any other whose tables
// repeat their halves) as the exporters write it, rewritten into one ONNX RotaryEmbedding node (runtime/fusion.h).
//
//   x [B, H, S, D];  h = D / 2
//   r = Concat(Neg(Slice(x, h, D, axis -1)), Slice(x, 0, h, axis -1), axis -1)      rotate_half(x)
//   y = Add(Mul(x, C), Mul(r, S))                                                   operands in either order
//     -> y = RotaryEmbedding(x, cos_cache, sin_cache)   (4-D form, halves, no position_ids)
//
// C and S are constants (after the importer's folding) broadcasting to x with one row per token: [S, D], [1, S, D],
// [1, 1, S, D] or [B, 1, S, D]; each row's two halves equal (torch.cat((freqs, freqs), -1)), so the first halves,
// laid out [B, S, h], are the op's tables. Tables that do not repeat, or that are computed at run time (position_ids
// as a graph input), leave the chain as it is. Every intermediate has one use and is not a graph output.
// Unfused, the chain is seven kernels forward and about ten backward over Q and K; fused, one each way, and
// fuse_attention_layout can then carry Q and K into the 3-D attention without their head transposes.
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool is_default(const Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }

class RotaryMatcher {
 public:
  explicit RotaryMatcher(Graph& graph) : g_(graph), uses_(graph.use_counts()), reader_(graph.values.size(), -1) {
    for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n)
      for (ValueId v : g_.nodes[n].inputs)
        if (v != kNoValue) reader_[v] = n;
    outputs_.insert(g_.outputs.begin(), g_.outputs.end());
  }
  bool match_at(NodeId neg, ChainReplacement* c);

 private:
  // The reader of the intermediate v (one use, not a graph output) when it is a default-domain `op`, else -1.
  NodeId only_reader(ValueId v, const char* op) const {
    if (v == kNoValue || uses_[v] != 1 || outputs_.count(v) || reader_[v] < 0) return -1;
    return is_default(g_.nodes[reader_[v]], op) ? reader_[v] : -1;
  }
  // A constant one-element integer input's value.
  bool int_constant(const Node& n, size_t i, int64_t* out) const {
    if (i >= n.inputs.size() || !g_.is_constant(n.inputs[i])) return false;
    const Tensor& t = g_.value(n.inputs[i]).data;
    if (t.numel() != 1 || (t.dtype() != DType::kInt64 && t.dtype() != DType::kInt32)) return false;
    *out = t.dtype() == DType::kInt64 ? t.data_as<int64_t>()[0] : t.data_as<int32_t>()[0];
    return true;
  }
  // Slice(x, start, end, axes = [last], steps = [1]?) of a rank-`rank` x: its start and end.
  bool last_axis_slice(const Node& s, int64_t rank, int64_t* start, int64_t* end) const {
    if (!is_default(s, "Slice") || s.inputs.size() < 4 || s.inputs.size() > 5) return false;
    int64_t axis = 0, step = 1;
    if (!int_constant(s, 1, start) || !int_constant(s, 2, end) || !int_constant(s, 3, &axis)) return false;
    if (s.inputs.size() == 5 && s.inputs[4] != kNoValue && (!int_constant(s, 4, &step) || step != 1)) return false;
    return axis == -1 || axis == rank - 1;
  }
  // The [B, S, D / 2] table of constant t (broadcasting to x [B, H, S, D] with one row per token) when each row's
  // halves are equal; kNoValue otherwise. Tables are made once per (constant, batch).
  ValueId half_table(ValueId t, const Shape& x);

  Graph& g_;
  std::vector<int> uses_;
  std::vector<NodeId> reader_;
  std::set<ValueId> outputs_;
  std::map<std::pair<ValueId, int64_t>, ValueId> tables_;
};

ValueId RotaryMatcher::half_table(ValueId t, const Shape& x) {
  if (!g_.is_constant(t)) return kNoValue;
  if (auto it = tables_.find({t, x[0]}); it != tables_.end()) return it->second;
  const Tensor& c = g_.value(t).data;
  const DType dt = c.dtype();
  if ((dt != DType::kFloat32 && dt != DType::kFloat64) || dt != g_.value(t).dtype) return kNoValue;
  Shape c4 = c.shape();
  if (c4.size() > 4) return kNoValue;
  c4.insert(c4.begin(), 4 - c4.size(), 1);
  const int64_t batch = x[0], seq = x[2], d = x[3], h = d / 2;
  if (c4[3] != d || c4[1] != 1 || (c4[0] != 1 && c4[0] != batch) || (c4[2] != 1 && c4[2] != seq)) return kNoValue;
  for (int64_t r = 0; r < c4[0] * c4[2]; ++r)
    for (int64_t i = 0; i < h; ++i)
      if (c.scalar_f64(r * d + i) != c.scalar_f64(r * d + h + i)) return kNoValue;
  Tensor half(dt, {batch, seq, h});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      const int64_t row = (c4[0] == 1 ? 0 : b) * c4[2] + (c4[2] == 1 ? 0 : s);
      for (int64_t i = 0; i < h; ++i) {
        const int64_t at = (b * seq + s) * h + i;
        if (dt == DType::kFloat32) {
          half.data_as<float>()[at] = c.data_as<float>()[row * d + i];
        } else {
          half.data_as<double>()[at] = c.data_as<double>()[row * d + i];
        }
      }
    }
  }
  const ValueId v =
      g_.add_initializer(g_.unique_name(g_.value(t).name + "_rotary_half"), std::move(half), ValueKind::kConstant);
  uses_.push_back(0);
  reader_.push_back(-1);
  tables_[{t, x[0]}] = v;
  return v;
}

bool RotaryMatcher::match_at(NodeId neg_id, ChainReplacement* c) {
  const Node& neg = g_.nodes[neg_id];
  if (!is_default(neg, "Neg") || neg.inputs.size() != 1 || neg.outputs.size() != 1) return false;
  const ValueId x2 = neg.inputs[0];
  const NodeId s2 = g_.value(x2).producer;
  if (s2 < 0 || uses_[x2] != 1 || outputs_.count(x2)) return false;
  const ValueId x = g_.nodes[s2].inputs[0];
  const Shape xs = g_.value(x).shape;  // a copy: tables grow the value list
  const DType xt = g_.value(x).dtype;
  if (xs.size() != 4 || xs[3] % 2 != 0 || (xt != DType::kFloat32 && xt != DType::kFloat64)) return false;
  const int64_t d = xs[3], h = d / 2;
  int64_t b2 = 0, e2 = 0, b1 = 0, e1 = 0;
  if (!last_axis_slice(g_.nodes[s2], 4, &b2, &e2) || b2 != h || e2 < d) return false;
  const NodeId cat = only_reader(neg.outputs[0], "Concat");
  if (cat < 0) return false;
  const Node& cn = g_.nodes[cat];
  const int64_t axis = cn.attrs.get_int("axis", 0);
  if (cn.inputs.size() != 2 || cn.inputs[0] != neg.outputs[0] || (axis != -1 && axis != 3)) return false;
  const ValueId x1 = cn.inputs[1];
  const NodeId s1 = g_.value(x1).producer;
  if (s1 < 0 || uses_[x1] != 1 || outputs_.count(x1) || g_.nodes[s1].inputs[0] != x) return false;
  if (!last_axis_slice(g_.nodes[s1], 4, &b1, &e1) || b1 != 0 || e1 != h) return false;
  const NodeId mul_sin = only_reader(cn.outputs[0], "Mul");
  if (mul_sin < 0) return false;
  const Node& ms = g_.nodes[mul_sin];
  const ValueId sin_t = ms.inputs[0] == cn.outputs[0] ? ms.inputs[1] : ms.inputs[0];
  const NodeId add = only_reader(ms.outputs[0], "Add");
  if (add < 0) return false;
  const Node& an = g_.nodes[add];
  const ValueId xc = an.inputs[0] == ms.outputs[0] ? an.inputs[1] : an.inputs[0];
  const NodeId mul_cos = g_.value(xc).producer;
  if (mul_cos < 0 || uses_[xc] != 1 || outputs_.count(xc) || !is_default(g_.nodes[mul_cos], "Mul")) return false;
  const Node& mc = g_.nodes[mul_cos];
  if (mc.inputs[0] != x && mc.inputs[1] != x) return false;
  const ValueId cos_t = mc.inputs[0] == x ? mc.inputs[1] : mc.inputs[0];
  const ValueId y = an.outputs[0];
  if (g_.value(y).shape != xs || g_.value(y).dtype != xt) return false;
  for (ValueId v : {cn.outputs[0], ms.outputs[0], xc}) {
    if (g_.value(v).shape != xs) return false;  // no broadcast hides in the chain but the tables'
  }
  const ValueId cos_half = half_table(cos_t, xs), sin_half = half_table(sin_t, xs);
  if (cos_half == kNoValue || sin_half == kNoValue) return false;

  const Node& last = g_.nodes[add];
  c->final_node = add;
  c->removed = {s1, s2, neg_id, cat, mul_sin, mul_cos};
  c->maybe_dead = {cos_half, sin_half};  // kept while the replacement reads them
  add_chain_values(g_, c);
  Node& r = c->replacement;
  r = Node{};
  r.op_type = "RotaryEmbedding";
  r.inputs = {x, cos_half, sin_half};
  r.outputs = {y};
  r.attrs.set_int("interleaved", 0);
  r.place = last.place;
  r.name = last.name.empty() ? "rotary" : last.name + "_rotary";
  return true;
}

}  // namespace

Status fuse_rotary(Graph& graph, int* fused) {
  const OpSchema* schema = OpRegistry::global().find("", "RotaryEmbedding");
  if (schema == nullptr || schema->infer == nullptr) {
    return internal_error("fuse_rotary: the op registry has no RotaryEmbedding op");
  }
  RotaryMatcher m(graph);
  fuse_matches(
      graph, *schema, fused_node_opset(graph, 23), [&m](NodeId i, ChainReplacement* c) { return m.match_at(i, c); },
      fused);
  return Status::ok();
}

}  // namespace gv

// fuse_attention: the scaled dot-product attention chains exporters emit, rewritten into one ONNX Attention node
// (runtime/ops/attention_ops.cpp; runtime/fusion.h).
//
//   Q [B,H,S,D] (Mul c)?, Kt [B,Hk,D,L] (Mul c)?  -> MatMul -> (Mul c | Div c | Add mask | Where(cond, s, fill))*
//     -> Softmax(axis -1) -> Dropout(identity)? -> MatMul(., V [B,Hk,L,Dv]) -> Y [B,H,S,Dv]
//
// The pass starts at each Softmax over the last axis of a rank-4 float tensor and walks back to the first MatMul.
// Every value inside the chain must have exactly one use (graph outputs count as uses), so no intermediate (scores,
// probabilities) is read elsewhere; otherwise that instance stays as it is. Between the products:
// - scalar constants multiplied or divided in (on the scores, on Q or on Kt, e.g. sqrt(scale) on both in the dynamo
//   SDPA decomposition) multiply into the `scale` attribute; a mask added before a later scale is scaled with it;
// - constant masks (Add of a float constant, Where of a constant bool condition with a constant fill) are folded into
//   one additive mask: Where(cond, s, fill) is s + (cond ? 0 : fill). That is exact only for a fill of -inf or a very
//   negative finite number (<= -1e30, e.g. finfo(float32).min): s + fill rounds to fill for any score below 1e22, so
//   the fill is kept as an additive value; a moderate fill (-10000) is not fused. The folded mask is then
//     all zero                                     -> no mask;
//     0 for keys j <= query i, <= -1e30 for j > i  -> is_causal = 1 (every row keeps its diagonal, so the finite fill
//                                                     and -inf give the same probabilities: exp(fill - max) is 0);
//     anything else                                -> a constant float attn_mask of its (broadcast) shape, values as
//                                                     they were (a finite fill stays finite, so a fully masked row is
//                                                     uniform as before, not the zeros of -inf);
// - a non-constant float Add operand is passed as attn_mask when it is the only mask and no scale follows it;
// - Dropout between Softmax and the second MatMul only when it is the identity (no training_mode input, or a constant
//   false one, or a constant ratio 0; its mask output unused);
// - the NaN guard of torch's SDPA decomposition (dynamo exporter): Where(IsNaN(P), 0, P) after the Softmax, which
//   zeroes the rows a mask blocks entirely. It is the identity when no row is blocked entirely: no mask, a causal one,
//   or a constant mask leaving a key in every row (NaN scores aside); with a run-time mask, or a constant one blocking
//   a whole row, the instance is not fused.
// K for the Attention node is Kt with its last two axes swapped: when Kt is a Transpose, the two permutations are
// composed into one Transpose of its input (none at all when they cancel, as in Llama exports); when Kt is K
// transposed in 3-D (Reshape [B, H, L, D] -> [B*H, L, D], Transpose (0, 2, 1), Reshape -> [B, H, D, L]: the dynamo
// SDPA decomposition), the node reads K itself. Grouped-query
// repeats of K and V (Unsqueeze(axis 2) -> Expand -> Reshape to [B, Hkv * n, L, D]) are skipped, so the node reads
// the Hkv heads directly (query head h reads key/value head h / n, the same element the repeat put there).
//
// The Attention node replaces the second MatMul at its position (order stays topological), writes its output value,
// and keeps the Softmax's placement. Nodes of the pattern whose outputs nobody reads any more are removed, with the
// values only they produced or read; everything else (parameters included) stays.
#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

constexpr double kMaskedBelow = -1e30;  // a fill at or below this masks the score (see the file comment)
constexpr int kMaxChain = 16;

struct Use {
  NodeId node;
  int input;
};

class Matcher {
 public:
  explicit Matcher(Graph& g)
      : g_(g), uses_(g.use_counts()), users_(g.values.size()), original_values_(static_cast<ValueId>(g.values.size())) {
    for (NodeId n = 0; n < static_cast<NodeId>(g.nodes.size()); ++n) {
      const Node& node = g.nodes[n];
      for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
        if (node.inputs[i] != kNoValue) users_[node.inputs[i]].push_back({n, i});
      }
    }
  }

  // Rewrites the instance around Softmax node `sm` when it matches. Returns whether it did.
  bool try_fuse(NodeId sm);
  // Applies the replacements: removes replaced and dead nodes and their values.
  void finish();

 private:
  // One step between the products, in graph order.
  struct Step {
    enum Kind { kScale, kAddConst, kWhere, kAddRuntime };
    Kind kind = kScale;
    double c = 1.0;
    Tensor t;          // kAddConst: the mask; kWhere: the condition (bool)
    bool keep_when_true = true;
    double fill = 0.0;
    ValueId runtime = kNoValue;
    ValueId source = kNoValue;  // kAddConst: the constant value
  };

  const Node& node(NodeId n) const { return g_.nodes[n]; }
  NodeId producer(ValueId v) const { return v == kNoValue ? -1 : g_.value(v).producer; }
  bool is_op(NodeId n, const char* op) const { return n >= 0 && node(n).domain.empty() && node(n).op_type == op; }
  bool single_use(ValueId v) const { return uses_[v] == 1; }
  // A one-element float constant; its value in `c`.
  bool scalar_constant(ValueId v, double& c) const {
    if (!g_.is_constant(v) || !dtype_is_float(g_.value(v).dtype) || g_.value(v).data.numel() != 1) return false;
    c = g_.value(v).data.scalar_f64(0);
    return std::isfinite(c);
  }
  // Mul of a value by a scalar constant whose output has the value's shape: the value and the factor.
  bool scaled_by_constant(NodeId n, ValueId& x, double& c) const {
    if (n < 0 || node(n).inputs.size() != 2) return false;
    const ValueId a = node(n).inputs[0], b = node(n).inputs[1], out = node(n).outputs[0];
    if (is_op(n, "Mul")) {
      if (scalar_constant(b, c) && g_.value(a).shape == g_.value(out).shape) return x = a, true;
      if (scalar_constant(a, c) && g_.value(b).shape == g_.value(out).shape) return x = b, true;
    }
    if (is_op(n, "Div") && scalar_constant(b, c) && c != 0.0 && g_.value(a).shape == g_.value(out).shape) {
      c = 1.0 / c;
      return x = a, true;
    }
    return false;
  }
  bool dropout_is_identity(NodeId n) const;
  // Where(IsNaN(p), 0, p), the only readers of p: p becomes the Where's output, the two nodes go into `chain`.
  bool skip_nan_guard(ValueId& p, std::vector<NodeId>& chain) const;
  // Kt = K transposed through a 3-D Reshape / Transpose (0, 2, 1) / Reshape: K ([B, H, L, D]); the nodes into `read`.
  bool transposed_in_3d(ValueId kt, ValueId& k, std::vector<NodeId>& read) const;
  bool collect_steps(ValueId x, const Shape& full, std::vector<Step>& steps, std::vector<NodeId>& nodes,
                     NodeId& qk) const;
  bool fold_mask(const std::vector<Step>& steps, const Shape& full, double& scale, Tensor& mask, bool& causal,
                 ValueId& runtime) const;
  // The value before a grouped-query repeat of `x` ([B, H, L, D]) and its head count; else x itself.
  ValueId unrepeat(ValueId x) const;

  Graph& g_;
  std::vector<int> uses_;
  std::vector<std::vector<Use>> users_;
  ValueId original_values_;  // values after this index were added by the pass
  std::set<NodeId> removed_;            // nodes of fused chains
  std::set<NodeId> maybe_dead_;         // nodes the pattern read through: removed when nothing reads them any more
  std::vector<std::vector<Node>> insert_at_;  // per node index: new nodes that replace it
  std::set<ValueId> orphan_values_;     // outputs add_node created for nodes that write an existing value instead
};

bool Matcher::dropout_is_identity(NodeId n) const {
  const Node& d = node(n);
  if (d.outputs.size() > 1 && uses_[d.outputs[1]] != 0) return false;
  if (d.inputs.size() > 1 && d.inputs[1] != kNoValue) {
    double r;
    if (scalar_constant(d.inputs[1], r) && r == 0.0) return true;
  }
  if (d.inputs.size() < 3 || d.inputs[2] == kNoValue) return true;
  const ValueId tm = d.inputs[2];
  return g_.is_constant(tm) && g_.value(tm).data.numel() == 1 && g_.value(tm).data.scalar_f64(0) == 0.0;
}

bool Matcher::skip_nan_guard(ValueId& p, std::vector<NodeId>& chain) const {
  if (uses_[p] != 2 || users_[p].size() != 2) return false;
  NodeId isnan = -1, where = -1;
  for (const Use& u : users_[p]) {
    if (is_op(u.node, "IsNaN") && u.input == 0) isnan = u.node;
    if (is_op(u.node, "Where") && u.input == 2) where = u.node;
  }
  if (isnan < 0 || where < 0 || node(where).inputs.size() != 3) return false;
  const ValueId flags = node(isnan).outputs[0];
  double zero;
  if (node(where).inputs[0] != flags || !single_use(flags) || !scalar_constant(node(where).inputs[1], zero) ||
      zero != 0.0 || g_.value(node(where).outputs[0]).shape != g_.value(p).shape) {
    return false;
  }
  chain.push_back(isnan);
  chain.push_back(where);
  p = node(where).outputs[0];
  return true;
}

bool Matcher::transposed_in_3d(ValueId kt, ValueId& k, std::vector<NodeId>& read) const {
  const NodeId r2 = producer(kt);
  if (!is_op(r2, "Reshape")) return false;
  const ValueId t_out = node(r2).inputs[0];
  const NodeId t = producer(t_out);
  if (!is_op(t, "Transpose") || !single_use(t_out) ||
      node(t).attrs.get_ints("perm", {}) != std::vector<int64_t>{0, 2, 1}) {
    return false;
  }
  const ValueId r1_out = node(t).inputs[0];
  const NodeId r1 = producer(r1_out);
  if (!is_op(r1, "Reshape") || !single_use(r1_out)) return false;
  const ValueId src = node(r1).inputs[0];
  const Shape &ks = g_.value(src).shape, &s3 = g_.value(r1_out).shape, &kts = g_.value(kt).shape;
  if (ks.size() != 4 || s3.size() != 3 || kts.size() != 4) return false;
  if (s3 != Shape{ks[0] * ks[1], ks[2], ks[3]} || kts != Shape{ks[0], ks[1], ks[3], ks[2]}) return false;
  read.push_back(r2);
  read.push_back(t);
  read.push_back(r1);
  k = src;
  return true;
}

// Walks back from the Softmax input x to the first MatMul, recording the steps in graph order.
bool Matcher::collect_steps(ValueId x, const Shape& full, std::vector<Step>& steps, std::vector<NodeId>& nodes,
                            NodeId& qk) const {
  std::vector<Step> rev;
  for (int depth = 0; depth < kMaxChain; ++depth) {
    if (!single_use(x) || g_.value(x).shape != full) return false;
    const NodeId n = producer(x);
    if (n < 0) return false;
    const Node& p = node(n);
    if (!p.domain.empty()) return false;
    if (p.op_type == "MatMul") {
      qk = n;
      steps.assign(rev.rbegin(), rev.rend());
      return true;
    }
    nodes.push_back(n);
    double c;
    ValueId next;
    if (scaled_by_constant(n, next, c)) {
      Step st;
      st.c = c;
      rev.push_back(st);
      x = next;
      continue;
    }
    if (p.op_type == "Add" && p.inputs.size() == 2) {
      const ValueId a = p.inputs[0], b = p.inputs[1];
      const bool ca = g_.is_constant(a), cb = g_.is_constant(b);
      if (ca != cb) {
        const ValueId m = ca ? a : b;
        if (!dtype_is_float(g_.value(m).dtype) || g_.value(m).shape.size() > 4) return false;
        Step s;
        s.kind = Step::kAddConst;
        s.t = g_.value(m).data;
        s.source = m;
        rev.push_back(s);
        x = ca ? b : a;
        continue;
      }
      if (ca || cb) return false;
      // A run-time mask: the operand that is not the scores. The scores have the full shape and one use.
      auto scores_like = [&](ValueId v) {
        const NodeId pn = producer(v);
        return g_.value(v).shape == full && single_use(v) && pn >= 0 && node(pn).domain.empty() &&
               (node(pn).op_type == "MatMul" || node(pn).op_type == "Mul" || node(pn).op_type == "Div" ||
                node(pn).op_type == "Add" || node(pn).op_type == "Where");
      };
      const bool sa = scores_like(a), sb = scores_like(b);
      if (sa == sb) return false;  // ambiguous or neither
      const ValueId m = sa ? b : a;
      if (g_.value(m).dtype != g_.value(x).dtype || g_.value(m).shape.size() > 4) return false;
      Step s;
      s.kind = Step::kAddRuntime;
      s.runtime = m;
      rev.push_back(s);
      x = sa ? a : b;
      continue;
    }
    if (p.op_type == "Where" && p.inputs.size() == 3) {
      const ValueId cond = p.inputs[0], a = p.inputs[1], b = p.inputs[2];
      if (!g_.is_constant(cond) || g_.value(cond).dtype != DType::kBool || g_.value(cond).shape.size() > 4) return false;
      const bool scores_a = !g_.is_constant(a) && g_.is_constant(b);
      const bool scores_b = !g_.is_constant(b) && g_.is_constant(a);
      if (scores_a == scores_b) return false;
      double fill;
      if (!g_.is_constant(scores_a ? b : a) || g_.value(scores_a ? b : a).data.numel() != 1) return false;
      fill = g_.value(scores_a ? b : a).data.scalar_f64(0);
      if (!(fill <= kMaskedBelow)) return false;  // a moderate fill replaces the score: not an additive mask
      Step s;
      s.kind = Step::kWhere;
      s.t = g_.value(cond).data;
      s.keep_when_true = scores_a;
      s.fill = fill;
      rev.push_back(s);
      x = scores_a ? a : b;
      continue;
    }
    return false;
  }
  return false;
}

// Index of element `idx` (of the full rank-4 shape) in a tensor of shape `s`, right-aligned, broadcast dims 0.
int64_t broadcast_offset(const Shape& s, const int64_t idx[4]) {
  int64_t off = 0;
  const size_t r = s.size();
  for (size_t d = 0; d < r; ++d) {
    const int64_t dim = s[d];
    off = off * dim + (dim == 1 ? 0 : idx[4 - r + d]);
  }
  return off;
}

// Runs the steps over the scores symbolically: scale * s + mask. The mask is float64 of the broadcast shape of its
// pieces (rank 4).
bool Matcher::fold_mask(const std::vector<Step>& steps, const Shape& full, double& scale, Tensor& mask, bool& causal,
                        ValueId& runtime) const {
  Shape ms;  // empty: no constant mask yet
  std::vector<double> m;
  auto widen = [&](const Shape& piece) {
    Shape p4(4 - piece.size(), 1);
    p4.insert(p4.end(), piece.begin(), piece.end());
    Shape grown = ms.empty() ? Shape(4, 1) : ms;
    for (int d = 0; d < 4; ++d) grown[d] = std::max(grown[d], p4[d]);
    std::vector<double> r(static_cast<size_t>(shape_numel(grown)), 0.0);
    if (!ms.empty()) {
      int64_t idx[4];
      for (int64_t e = 0; e < static_cast<int64_t>(r.size()); ++e) {
        int64_t rem = e;
        for (int d = 3; d >= 0; --d) idx[d] = rem % grown[d], rem /= grown[d];
        r[e] = m[broadcast_offset(ms, idx)];
      }
    }
    ms = grown;
    m = std::move(r);
  };
  auto for_each = [&](auto&& f) {
    int64_t idx[4];
    for (int64_t e = 0; e < static_cast<int64_t>(m.size()); ++e) {
      int64_t rem = e;
      for (int d = 3; d >= 0; --d) idx[d] = rem % ms[d], rem /= ms[d];
      f(e, idx);
    }
  };
  bool has_runtime = false;
  for (const Step& s : steps) {
    switch (s.kind) {
      case Step::kScale:
        if (has_runtime) return false;  // the run-time mask would need scaling
        scale *= s.c;
        for (double& v : m) v *= s.c;
        break;
      case Step::kAddConst: {
        widen(s.t.shape());
        const Tensor t = s.t.cast(DType::kFloat64);
        for_each([&](int64_t e, const int64_t* idx) { m[e] += t.data_as<double>()[broadcast_offset(t.shape(), idx)]; });
        break;
      }
      case Step::kWhere: {
        widen(s.t.shape());
        const uint8_t* cond = s.t.data_as<uint8_t>();
        for_each([&](int64_t e, const int64_t* idx) {
          if ((cond[broadcast_offset(s.t.shape(), idx)] != 0) != s.keep_when_true) m[e] = s.fill;
        });
        break;
      }
      case Step::kAddRuntime:
        if (has_runtime) return false;
        has_runtime = true;
        runtime = s.runtime;
        break;
    }
  }
  for (double v : m) {
    if (std::isnan(v) || v == std::numeric_limits<double>::infinity()) return false;
  }
  causal = false;
  mask = Tensor();
  if (ms.empty()) return true;
  bool zero = true, is_causal = ms[2] == full[2] && ms[3] == full[3];
  for_each([&](int64_t e, const int64_t* idx) {
    zero = zero && m[e] == 0.0;
    if (is_causal) is_causal = idx[3] <= idx[2] ? m[e] == 0.0 : m[e] <= kMaskedBelow;
  });
  if (zero) return true;
  if (is_causal) {
    causal = true;  // Attention applies is_causal and attn_mask together
    return true;
  }
  if (has_runtime) return false;  // a run-time mask and a constant one: not fused (no node to combine them)
  mask = Tensor(DType::kFloat64, ms);
  std::copy(m.begin(), m.end(), mask.data_as<double>());
  return true;
}

// Whether every row of a folded float64 mask (rank 4, keys along its last axis, maybe broadcast) keeps a key.
bool every_row_keeps_a_key(const Tensor& mask) {
  const int64_t keys = mask.shape().back(), rows = keys > 0 ? mask.numel() / keys : 0;
  const double* m = mask.data_as<double>();
  for (int64_t r = 0; r < rows; ++r) {
    bool kept = false;
    for (int64_t j = 0; j < keys && !kept; ++j) kept = m[r * keys + j] != -std::numeric_limits<double>::infinity();
    if (!kept) return false;
  }
  return true;
}

ValueId Matcher::unrepeat(ValueId x) const {
  const NodeId r = producer(x);
  if (!is_op(r, "Reshape")) return x;
  const ValueId e = node(r).inputs[0];
  const NodeId en = producer(e);
  if (!is_op(en, "Expand")) return x;
  const ValueId u = node(en).inputs[0];
  const NodeId un = producer(u);
  if (!is_op(un, "Unsqueeze")) return x;
  const ValueId src = node(un).inputs[0];
  const Shape &xs = g_.value(x).shape, &es = g_.value(e).shape, &us = g_.value(u).shape, &ss = g_.value(src).shape;
  if (xs.size() != 4 || ss.size() != 4 || es.size() != 5 || us.size() != 5) return x;
  const Shape want_u = {ss[0], ss[1], 1, ss[2], ss[3]};
  const Shape want_e = {ss[0], ss[1], es[2], ss[2], ss[3]};
  const Shape want_x = {ss[0], ss[1] * es[2], ss[2], ss[3]};
  if (us != want_u || es != want_e || xs != want_x) return x;
  return src;
}

bool Matcher::try_fuse(NodeId sm_id) {
  const Node& sm = node(sm_id);
  if (!sm.domain.empty() || sm.op_type != "Softmax" || sm.inputs.size() != 1) return false;
  const ValueId s_in = sm.inputs[0], probs = sm.outputs[0];
  const Shape full = g_.value(s_in).shape;
  const DType dt = g_.value(s_in).dtype;
  if (full.size() != 4 || (dt != DType::kFloat32 && dt != DType::kFloat64)) return false;
  const int64_t axis = sm.attrs.get_int("axis", -1);
  if (axis != -1 && axis != 3) return false;
  // Forward: Softmax -> Dropout(identity)? -> MatMul(P, V).
  std::vector<NodeId> chain;
  ValueId p = probs;
  const bool nan_guard = skip_nan_guard(p, chain);
  if (!single_use(p) || users_[p].size() != 1) return false;
  NodeId next = users_[p][0].node;
  if (is_op(next, "Dropout") && users_[p][0].input == 0) {
    if (!dropout_is_identity(next)) return false;
    chain.push_back(next);
    p = node(next).outputs[0];
    if (!single_use(p) || users_[p].size() != 1) return false;
    next = users_[p][0].node;
  }
  if (!is_op(next, "MatMul") || users_[p][0].input != 0) return false;
  const NodeId pv = next;
  ValueId v = node(pv).inputs[1];
  const Shape vs = g_.value(v).shape;
  if (vs.size() != 4 || vs[0] != full[0] || vs[2] != full[3] || g_.value(v).dtype != dt) return false;
  // Backward: the steps between the products.
  std::vector<Step> steps;
  std::vector<NodeId> step_nodes;
  NodeId qk = -1;
  if (!collect_steps(s_in, full, steps, step_nodes, qk)) return false;
  double scale = 1.0;
  std::vector<NodeId> read_through;  // nodes between the operands the Attention node reads and the first MatMul
  ValueId q = node(qk).inputs[0], kt = node(qk).inputs[1];
  for (int i = 0; i < 4; ++i) {  // scalar factors on Q or Kt
    double c;
    ValueId inner;
    if (single_use(q) && scaled_by_constant(producer(q), inner, c)) {
      read_through.push_back(producer(q));
      scale *= c, q = inner;
    } else if (single_use(kt) && scaled_by_constant(producer(kt), inner, c)) {
      read_through.push_back(producer(kt));
      scale *= c, kt = inner;
    } else {
      break;
    }
  }
  const Shape qs = g_.value(q).shape, kts = g_.value(kt).shape;
  if (qs.size() != 4 || kts.size() != 4 || qs[0] != full[0] || qs[1] != full[1] || qs[2] != full[2] ||
      kts[0] != full[0] || kts[3] != full[3] || kts[2] != qs[3] || kts[1] != vs[1] || g_.value(q).dtype != dt) {
    return false;
  }
  if (vs[1] == 0 || full[1] % vs[1] != 0) return false;
  // K = Kt with the last two axes swapped, composed with Kt's own Transpose when it has one.
  ValueId k_src = kt;
  std::vector<int64_t> perm = {0, 1, 3, 2};
  const NodeId tn = producer(kt);
  auto absorb_k_scale = [&] {  // a scalar factor on K before its transpose
    double c;
    ValueId inner;
    if (single_use(k_src) && scaled_by_constant(producer(k_src), inner, c)) {
      read_through.push_back(producer(k_src));
      scale *= c;
      k_src = inner;
    }
  };
  if (single_use(kt) && transposed_in_3d(kt, k_src, read_through)) {
    perm = {0, 1, 2, 3};
    absorb_k_scale();
  } else if (is_op(tn, "Transpose")) {
    const std::vector<int64_t> tp = node(tn).attrs.get_ints("perm", {3, 2, 1, 0});
    if (tp.size() == 4) {
      read_through.push_back(tn);
      k_src = node(tn).inputs[0];
      perm = {tp[0], tp[1], tp[3], tp[2]};
      absorb_k_scale();
    }
  }
  Tensor mask;
  bool causal = false;
  ValueId runtime_mask = kNoValue;
  if (!fold_mask(steps, full, scale, mask, causal, runtime_mask)) return false;
  if (!std::isfinite(scale)) return false;
  const bool no_row_blocked = runtime_mask == kNoValue && (causal || !mask.defined() || every_row_keeps_a_key(mask));
  if (nan_guard && !no_row_blocked) return false;

  // Grouped-query repeats: read the Hkv heads directly when both K and V are repeated the same way.
  const bool k_identity = perm == std::vector<int64_t>{0, 1, 2, 3};
  if (k_identity) {
    const ValueId k0 = unrepeat(k_src), v0 = unrepeat(v);
    if (k0 != k_src && v0 != v && g_.value(k0).shape[1] == g_.value(v0).shape[1]) {
      for (ValueId rep : {k_src, v}) {
        for (ValueId w = rep; w != (rep == k_src ? k0 : v0); w = node(producer(w)).inputs[0]) {
          read_through.push_back(producer(w));
        }
      }
      k_src = k0;
      v = v0;
    }
  }

  // Build the new nodes (appended by add_node for inference, then moved to the second MatMul's position).
  const Placement place = sm.place;
  const std::string base = node(pv).name.empty() ? g_.unique_name("attention") : node(pv).name;
  std::vector<Node> replacement;
  const size_t n_before = g_.nodes.size();
  auto take_last = [&]() {
    replacement.push_back(std::move(g_.nodes.back()));
    g_.nodes.pop_back();
  };
  ValueId k = k_src;
  if (!k_identity) {
    Node t;
    t.name = base + "/fused_attention_transpose_k";
    t.op_type = "Transpose";
    t.opset = g_.opsets.count("") ? g_.opsets.at("") : 20;
    t.attrs.set_ints("perm", perm);
    t.inputs = {k_src};
    t.place = place;
    auto outs = g_.add_node(std::move(t));
    if (!outs) return false;
    k = (*outs)[0];
    take_last();
  }
  ValueId mask_value = runtime_mask;
  // A mask that is one constant of the graph, added as it is: read that value (shared by every layer) instead of a
  // copy per instance.
  ValueId as_is = kNoValue;
  bool single_constant = true;  // exactly one mask step, an Add of a constant of Q's dtype, and no scale after it
  for (const Step& st : steps) {
    if (st.kind == Step::kScale) {
      single_constant = single_constant && as_is == kNoValue;
    } else if (st.kind == Step::kAddConst && as_is == kNoValue && g_.value(st.source).dtype == dt) {
      as_is = st.source;
    } else {
      single_constant = false;
    }
  }
  if (!single_constant) as_is = kNoValue;
  if (mask.defined() && as_is != kNoValue) {
    mask_value = as_is;
  } else if (mask.defined()) {
    mask_value = g_.add_initializer(g_.unique_name(base + "/fused_attention_mask"), mask.cast(dt), ValueKind::kConstant);
  }
  Node a;
  a.name = base + "/fused_attention";
  a.op_type = "Attention";
  a.opset = 23;
  a.inputs = {q, k, v};
  if (mask_value != kNoValue) a.inputs.push_back(mask_value);
  a.attrs.set_float("scale", static_cast<float>(scale));
  a.attrs.set_int("is_causal", causal ? 1 : 0);
  a.place = place;
  auto outs = g_.add_node(std::move(a));
  if (!outs || g_.value((*outs)[0]).shape != g_.value(node(pv).outputs[0]).shape) {
    while (g_.nodes.size() > n_before) g_.nodes.pop_back();
    return false;  // the added values stay unreferenced and are dropped by finish()
  }
  orphan_values_.insert((*outs)[0]);
  take_last();
  replacement.back().outputs = {node(pv).outputs[0]};
  if (!k_identity) orphan_values_.erase(k);

  removed_.insert(qk);
  removed_.insert(sm_id);
  removed_.insert(pv);
  removed_.insert(chain.begin(), chain.end());
  removed_.insert(step_nodes.begin(), step_nodes.end());
  maybe_dead_.insert(read_through.begin(), read_through.end());
  insert_at_.resize(g_.nodes.size());
  insert_at_[pv] = std::move(replacement);
  return true;
}

void Matcher::finish() {
  if (removed_.empty() && static_cast<ValueId>(g_.values.size()) == original_values_) return;
  insert_at_.resize(g_.nodes.size());
  // Uses once the replaced nodes are gone and the new ones are in.
  std::vector<int> uses(g_.values.size(), 0);
  auto count = [&](const Node& n, int d) {
    for (ValueId in : n.inputs) {
      if (in != kNoValue) uses[in] += d;
    }
  };
  std::vector<char> gone(g_.nodes.size(), 0);
  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    if (removed_.count(n)) {
      gone[n] = 1;
    } else {
      count(g_.nodes[n], 1);
    }
    for (const Node& r : insert_at_[n]) count(r, 1);
  }
  for (ValueId v : g_.outputs) ++uses[v];
  // Nodes the patterns read through that nothing reads any more, up their inputs.
  for (bool changed = true; changed;) {
    changed = false;
    for (NodeId n : maybe_dead_) {
      if (n < 0 || gone[n]) continue;
      bool dead = true;
      for (ValueId o : g_.nodes[n].outputs) dead = dead && uses[o] == 0;
      if (!dead) continue;
      gone[n] = 1;
      count(g_.nodes[n], -1);
      changed = true;
    }
  }
  std::vector<char> drop(g_.values.size(), 0);
  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    if (!gone[n]) continue;
    for (ValueId o : g_.nodes[n].outputs) drop[o] = uses[o] == 0;
    for (ValueId in : g_.nodes[n].inputs) {
      if (in != kNoValue && uses[in] == 0 && g_.value(in).kind == ValueKind::kConstant) drop[in] = 1;
    }
  }
  for (ValueId v : orphan_values_) drop[v] = 1;
  // Values added for instances that failed after add_initializer / add_node, and read by nothing.
  for (ValueId v = original_values_; v < static_cast<ValueId>(g_.values.size()); ++v) {
    if (uses[v] == 0) drop[v] = 1;
  }
  for (ValueId v : g_.inputs) drop[v] = 0;
  for (ValueId v : g_.outputs) drop[v] = 0;

  std::vector<Node> nodes;
  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    for (Node& r : insert_at_[n]) nodes.push_back(std::move(r));
    if (!gone[n]) nodes.push_back(std::move(g_.nodes[n]));
  }
  g_.nodes = std::move(nodes);
  g_.drop_values(drop);
}

}  // namespace

Status fuse_attention(Graph& graph, int* fused) {
  Matcher m(graph);
  const NodeId n = static_cast<NodeId>(graph.nodes.size());
  int count = 0;
  for (NodeId i = 0; i < n; ++i) {
    if (m.try_fuse(i)) ++count;
  }
  m.finish();
  for (const Node& node : graph.nodes) {
    for (ValueId v : node.outputs) {
      if (v == kNoValue) return internal_error("fuse_attention: node '" + node.name + "' lost an output value");
    }
  }
  *fused += count;
  return Status::ok();
}

}  // namespace gv

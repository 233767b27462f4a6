// Per-op rules of the tensor-parallel pass (tensor_parallel_pass.h): given how a node's inputs are cut, how its
// outputs are cut, which weights to cut, which shape constants to rewrite, and where Copy / Reduce nodes go. An op
// reading a cut value without a rule here is an error naming node, op and layer.
#include <algorithm>
#include <numeric>
#include <set>

#include "partitioner/tensor_parallel_pass.h"
#include "runtime/op_registry.h"
#include "runtime/ops/movement_common.h"

namespace gv::partitioner::tp_detail {
namespace {

const std::set<std::string> kUnary = {"Cast", "Identity", "Neg", "Abs", "Sign", "Sqrt", "Reciprocal", "Exp", "Log",
                                      "Cos", "Sin", "Floor", "Ceil", "Round", "IsNaN", "IsInf", "Not", "Relu",
                                      "LeakyRelu", "Sigmoid", "Tanh", "Erf", "Gelu", "Softplus", "HardSigmoid",
                                      "Clip", "Dropout"};
const std::set<std::string> kBroadcasting = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "Greater",
                                             "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min",
                                             "Sum", "Mean", "Where", "PRelu"};
const std::set<std::string> kReductions = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                                           "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare",
                                           "ReduceLogSum", "ArgMax", "ArgMin"};

int norm_axis(int64_t a, size_t rank) { return static_cast<int>(a < 0 ? a + static_cast<int64_t>(rank) : a); }

int64_t prod(const Shape& s, size_t from) {
  int64_t p = 1;
  for (size_t i = from; i < s.size(); ++i) p *= s[i];
  return p;
}

std::string ints_text(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

std::string cut_text(const Cut& c, const Shape& global) {
  std::string s = "axis " + std::to_string(c.axis) + " of " + shape_str(global);
  if (c.outer > 1) s += " (" + std::to_string(c.outer) + " parts, each cut)";
  return s;
}

}  // namespace

Status Pass::cannot(NodeId n, const TensorParallelLayer& L, const std::string& why) const {
  return unsupported(where(n) + " in " + in_layer(L) + ": cannot split this op over heads: " + why);
}

void Pass::set_all_outputs(NodeId n, const Cut& c) {
  for (ValueId o : g_.nodes[n].outputs) {
    if (o != kNoValue) cut_[o] = c;
  }
}

Status Pass::visit(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const std::string& op = node.op_type;
  bool any_cut = false;
  for (ValueId in : node.inputs) {
    if (in == kNoValue || !cut_[in].is_cut()) continue;
    any_cut = true;
    if (cut_[in].parts != L.tp) {
      return cannot(n, L, "its input '" + g_.value(in).name + "' is cut into " + std::to_string(cut_[in].parts) +
                              " parts by another layer");
    }
  }
  if (!node.domain.empty()) {
    if (any_cut) return cannot(n, L, "no tensor-parallel rule for ops of domain " + node.domain);
    return Status::ok();
  }
  if (op == "MatMul" && node.inputs.size() == 2) {
    const bool w0 = weight_[node.inputs[0]], w1 = weight_[node.inputs[1]];
    if (w1 && !w0) return visit_weight_matmul(n, L, 1);
    if (w0 && !w1) return cannot(n, L, "the weight is the left operand; only x @ W products are cut");
    if (any_cut) return visit_activation_matmul(n, L);
    return Status::ok();
  }
  if (op == "Gemm") {
    if (weight_[node.inputs[1]] && !weight_[node.inputs[0]]) return visit_gemm(n, L);
    if (any_cut) return cannot(n, L, "Gemm without a weight as its second operand");
    return Status::ok();
  }
  if (!any_cut) return Status::ok();
  if (kUnary.count(op)) return visit_elementwise(n, L, {0});
  if (op == "CastLike") return visit_elementwise(n, L, {0});
  if (kBroadcasting.count(op)) {
    std::vector<int> all(node.inputs.size());
    std::iota(all.begin(), all.end(), 0);
    return visit_elementwise(n, L, all);
  }
  if (op == "Reshape") return visit_reshape(n, L);
  if (op == "Transpose") return visit_transpose(n, L);
  if (op == "Split") return visit_split(n, L);
  if (op == "Slice") return visit_slice(n, L);
  if (op == "Concat") return visit_concat(n, L);
  if (op == "Expand") return visit_expand(n, L);
  if (op == "Squeeze") return visit_squeeze(n, L, false);
  if (op == "Unsqueeze") return visit_squeeze(n, L, true);
  if (op == "Gather") return visit_gather(n, L);
  if (op == "Softmax" || op == "LogSoftmax" || op == "LayerNormalization" || op == "RMSNormalization" ||
      kReductions.count(op)) {
    return visit_axis_op(n, L);
  }
  return cannot(n, L, "the op has no tensor-parallel rule and reads a value cut over heads");
}

// ---- matrix products -----------------------------------------------------------------------------------------------

Status Pass::visit_weight_matmul(NodeId n, const TensorParallelLayer& L, int weight_input) {
  const ValueId a = g_.nodes[n].inputs[0], w = g_.nodes[n].inputs[weight_input];
  const ValueId out = g_.nodes[n].outputs[0];
  const Shape& ws = global_[w];
  const int ra = static_cast<int>(global_[a].size()), ro = static_cast<int>(global_[out].size());
  if (ws.size() != 2 || ra < 2) {
    return cannot(n, L, "a weight product needs a 2-D weight and an activation of rank >= 2 (weight " +
                            shape_str(ws) + ")");
  }
  const Cut ca = cut_[a];
  if (!ca.is_cut()) {  // column parallel
    GV_ASSIGN_OR_RETURN(int64_t outer, column_outer(out, ro - 1, L, 0));
    const int64_t N = ws[1];
    if (N % (outer * L.tp) != 0) {
      return invalid_argument(where(n) + " in " + in_layer(L) + ": output size " + std::to_string(N) +
                              (outer > 1 ? " (" + std::to_string(outer) + " parts of " + std::to_string(N / outer) +
                                               ")"
                                         : std::string()) +
                              " is not divisible by tp " + std::to_string(L.tp));
    }
    GV_RETURN_IF_ERROR(cut_weight(w, 1, outer, L, n));
    g_.nodes[n].inputs[0] = copy_of(a, n, L);
    cut_[out] = Cut{ro - 1, outer, L.tp};
    return Status::ok();
  }
  if (ca.axis == ra - 1) {  // row parallel
    GV_RETURN_IF_ERROR(cut_weight(w, 0, ca.outer, L, n));
    reduce_after(n, 0, L);
    return Status::ok();
  }
  return cannot(n, L, "its activation is cut on " + cut_text(ca, global_[a]) + ", not on the contraction axis");
}

Status Pass::visit_gemm(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const ValueId a = node.inputs[0], w = node.inputs[1];
  const ValueId c = node.inputs.size() > 2 ? node.inputs[2] : kNoValue;
  const ValueId out = node.outputs[0];
  const bool trans_a = node.attrs.get_int("transA", 0) != 0, trans_b = node.attrs.get_int("transB", 0) != 0;
  const double beta = node.attrs.get_double("beta", 1.0);
  if (trans_a) return cannot(n, L, "transA = 1 on the activation operand");
  if (c != kNoValue && cut_[c].is_cut() && !weight_[c]) return cannot(n, L, "its C input is cut");
  const Cut ca = cut_[a];
  if (!ca.is_cut()) {  // column parallel
    const int n_axis = trans_b ? 0 : 1;
    GV_ASSIGN_OR_RETURN(int64_t outer, column_outer(out, 1, L, 0));
    const int64_t N = global_[w][n_axis];
    if (N % (outer * L.tp) != 0) {
      return invalid_argument(where(n) + " in " + in_layer(L) + ": output size " + std::to_string(N) +
                              (outer > 1 ? " (" + std::to_string(outer) + " parts)" : std::string()) +
                              " is not divisible by tp " + std::to_string(L.tp));
    }
    GV_RETURN_IF_ERROR(cut_weight(w, n_axis, outer, L, n));
    const Cut oc{1, outer, L.tp};
    if (c != kNoValue) {
      const Shape& cs = global_[c];
      if (!cs.empty() && cs.back() == N && N > 1) {
        GV_RETURN_IF_ERROR(match_whole_input(n, 2, static_cast<int>(cs.size()) - 1, oc, L));
      }
    }
    g_.nodes[n].inputs[0] = copy_of(a, n, L);
    cut_[out] = oc;
    return Status::ok();
  }
  if (ca.axis != 1) {
    return cannot(n, L, "its activation is cut on " + cut_text(ca, global_[a]) + ", not on the contraction axis");
  }
  // Row parallel: Gemm(A, W) -> partial -> Reduce -> (+ C once, after the reduce).
  GV_RETURN_IF_ERROR(cut_weight(w, trans_b ? 1 : 0, ca.outer, L, n));
  if (c == kNoValue) {
    reduce_after(n, 0, L);
    return Status::ok();
  }
  if (beta != 1.0) return cannot(n, L, "a row-parallel Gemm with beta != 1 (the bias must be added once)");
  g_.nodes[n].inputs.resize(2);
  const ValueId reduced = new_value(g_.value(out).name + "/tp_reduced", out);
  const ValueId partial = reduce_after(n, 0, L);  // node -> partial, Reduce(partial) -> out
  Node& reduce = after_[n].back();
  reduce.outputs[0] = reduced;
  Node add;
  add.name = g_.nodes[n].name + "/tp_bias";
  add.op_type = "Add";
  auto it = g_.opsets.find("");
  add.opset = it != g_.opsets.end() ? it->second : 20;
  add.inputs = {reduced, c};
  add.outputs = {out};
  add.place = g_.nodes[n].place;
  after_[n].push_back(std::move(add));
  (void)partial;
  return Status::ok();
}

Status Pass::visit_activation_matmul(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const ValueId a = node.inputs[0], b = node.inputs[1], out = node.outputs[0];
  const int ra = static_cast<int>(global_[a].size()), rb = static_cast<int>(global_[b].size());
  const int ro = static_cast<int>(global_[out].size());
  if (ra < 2 || rb < 2) return cannot(n, L, "a 1-D operand");
  const Cut ca = cut_[a], cb = cut_[b];
  if ((ca.is_cut() && ca.axis == ra - 1) || (cb.is_cut() && cb.axis == rb - 2)) {
    return cannot(n, L, "the contraction axis is cut (the product would be a partial sum)");
  }
  auto out_axis_a = [&](int ax) { return ax == ra - 2 ? ro - 2 : ax + ro - ra; };
  auto out_axis_b = [&](int ax) { return ax == rb - 1 ? ro - 1 : ax + ro - rb; };
  Cut oc;
  if (ca.is_cut() && cb.is_cut()) {
    const bool batch_a = ca.axis < ra - 2, batch_b = cb.axis < rb - 2;
    if (!batch_a || !batch_b || out_axis_a(ca.axis) != out_axis_b(cb.axis) || ca.outer != cb.outer) {
      return cannot(n, L, "its operands are cut on different axes (" + cut_text(ca, global_[a]) + ", " +
                              cut_text(cb, global_[b]) + ")");
    }
    oc = Cut{out_axis_a(ca.axis), ca.outer, L.tp};
  } else {
    const bool a_cut = ca.is_cut();
    const Cut cc = a_cut ? ca : cb;
    const int r_other = a_cut ? rb : ra;
    const int other = a_cut ? 1 : 0;
    const ValueId ov = a_cut ? b : a;
    oc = Cut{a_cut ? out_axis_a(cc.axis) : out_axis_b(cc.axis), cc.outer, L.tp};
    const bool batch = oc.axis < ro - 2;
    if (batch) {
      const int pos = oc.axis - (ro - r_other);
      if (pos >= 0 && global_[ov][pos] != 1) GV_RETURN_IF_ERROR(match_whole_input(n, other, pos, oc, L));
    }
    // The whole operand is read in full by every rank: its gradient is a partial sum over the ranks.
    const ValueId now = g_.nodes[n].inputs[other];
    if (!weight_[now] && g_.value(now).kind != ValueKind::kConstant && !cut_[now].is_cut() &&
        dtype_is_float(g_.value(now).dtype)) {
      g_.nodes[n].inputs[other] = copy_of(now, n, L);
    }
  }
  cut_[out] = oc;
  return Status::ok();
}

Expected<int64_t> Pass::column_outer(ValueId v, int axis, const TensorParallelLayer& L, int depth) {
  if (depth > 8) return int64_t{1};
  int64_t result = 1;
  const Shape& vs = global_[v];
  for (NodeId u : users_[v]) {
    const Node& node = g_.nodes[u];
    if (layer_of(node) != &L || !node.domain.empty()) continue;
    const std::string& op = node.op_type;
    int64_t r = 1;
    if (op == "Split" && node.inputs[0] == v) {
      if (norm_axis(node.attrs.get_int("axis", 0), vs.size()) != axis) continue;
      std::vector<int64_t> sizes;
      const int k = static_cast<int>(node.outputs.size());
      if (node.inputs.size() > 1 && node.inputs[1] != kNoValue) {
        if (!g_.is_constant(node.inputs[1])) return cannot(u, L, "split sizes are not constant");
        sizes = g_.value(node.inputs[1]).data.to_i64_vector();
      } else if (node.attrs.has("split")) {
        sizes = node.attrs.get_ints("split");
      } else {
        for (ValueId o : node.outputs) sizes.push_back(global_[o][axis]);
      }
      if (std::adjacent_find(sizes.begin(), sizes.end(), std::not_equal_to<>()) != sizes.end()) {
        return cannot(u, L, "a fused projection is split into unequal parts " + ints_text(sizes) +
                                "; each part must be cut by heads, which needs equal parts");
      }
      r = k;
    } else if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Cast" || op == "Identity") {
      const ValueId o = node.outputs[0];
      GV_ASSIGN_OR_RETURN(r, column_outer(o, axis + static_cast<int>(global_[o].size() - vs.size()), L, depth + 1));
    } else if (op == "Reshape" && node.inputs[0] == v) {
      const ValueId o = node.outputs[0];
      const Shape& os = global_[o];
      const int64_t post = prod(vs, axis + 1);
      for (size_t b = 0; b < os.size(); ++b) {
        if (os[b] == vs[axis] && prod(os, b + 1) == post) {
          GV_ASSIGN_OR_RETURN(r, column_outer(o, static_cast<int>(b), L, depth + 1));
          break;
        }
      }
    } else if (op == "Transpose") {
      std::vector<int64_t> perm = node.attrs.get_ints("perm");
      if (perm.empty()) {
        for (int i = static_cast<int>(vs.size()) - 1; i >= 0; --i) perm.push_back(i);
      }
      auto it = std::find(perm.begin(), perm.end(), axis);
      if (it != perm.end()) {
        GV_ASSIGN_OR_RETURN(r, column_outer(node.outputs[0], static_cast<int>(it - perm.begin()), L, depth + 1));
      }
    }
    if (r > 1) {
      if (result > 1 && r != result) {
        return cannot(u, L, "the consumers of a column-parallel product split it into " + std::to_string(result) +
                                " and into " + std::to_string(r) + " parts");
      }
      result = r;
    }
  }
  return result;
}

// ---- elementwise and whole inputs ------------------------------------------------------------------------------------

Status Pass::match_whole_input(NodeId n, int input, int axis, const Cut& c, const TensorParallelLayer& L) {
  const ValueId v = g_.nodes[n].inputs[input];
  const Value& val = g_.value(v);
  if (weight_[v]) return cut_weight(v, axis, c.outer, L, n);
  if (val.kind == ValueKind::kConstant) {
    TensorShard sh;
    sh.global_name = val.name;
    sh.global_shape = val.shape;
    sh.axis = axis;
    sh.outer = c.outer;
    sh.parts = L.tp;
    sh.index = L.index;
    if (val.shape[axis] % (c.outer * L.tp) != 0) {
      return cannot(n, L, "constant '" + val.name + "' " + shape_str(val.shape) + " does not divide into tp pieces");
    }
    GV_ASSIGN_OR_RETURN(Tensor piece, extract_piece(val.data, sh));
    const std::string name = val.name + "/tp" + std::to_string(L.index);
    g_.nodes[n].inputs[input] = new_constant(name, std::move(piece));
    return Status::ok();
  }
  return cannot(n, L, "the whole value '" + val.name + "' " + shape_str(global_[v]) + " meets a value cut on " +
                          "the same axis at full size");
}

Status Pass::visit_elementwise(NodeId n, const TensorParallelLayer& L, const std::vector<int>& data_inputs) {
  const Node& node = g_.nodes[n];
  const int ro = static_cast<int>(global_[node.outputs[0]].size());
  Cut c;
  for (int i : data_inputs) {
    const ValueId v = node.inputs[i];
    if (v == kNoValue || !cut_[v].is_cut()) continue;
    Cut ci = cut_[v];
    ci.axis += ro - static_cast<int>(global_[v].size());
    if (!c.is_cut()) {
      c = ci;
    } else if (ci != c) {
      return cannot(n, L, "its inputs are cut differently (" + cut_text(c, global_[node.outputs[0]]) + " and " +
                              cut_text(ci, global_[node.outputs[0]]) + ")");
    }
  }
  for (int i : data_inputs) {
    const ValueId v = g_.nodes[n].inputs[i];
    if (v == kNoValue || cut_[v].is_cut()) continue;
    const int pos = c.axis - (ro - static_cast<int>(global_[v].size()));
    if (pos >= 0 && global_[v][pos] != 1) {
      GV_RETURN_IF_ERROR(match_whole_input(n, i, pos, c, L));
      continue;
    }
    // Broadcast over the cut axis: every rank reads all of it, so its gradient sums over the ranks.
    if (!weight_[v] && g_.value(v).kind != ValueKind::kConstant && dtype_is_float(g_.value(v).dtype)) {
      g_.nodes[n].inputs[i] = copy_of(v, n, L);
    }
  }
  for (ValueId o : g_.nodes[n].outputs) {
    if (o == kNoValue) continue;
    if (static_cast<int>(global_[o].size()) != ro) return cannot(n, L, "outputs of different ranks");
    cut_[o] = c;
  }
  return Status::ok();
}

// ---- layout ops --------------------------------------------------------------------------------------------------------

bool Pass::map_reshape(const Shape& in, const Cut& c, const Shape& out, Cut* oc, std::string* why) const {
  const int64_t inner = in[c.axis] / (c.outer * c.parts);
  const int64_t S = inner * prod(in, c.axis + 1);  // flat stride of the rank digit
  for (int b = static_cast<int>(out.size()) - 1; b >= 0; --b) {
    const int64_t post = prod(out, b + 1);
    if (!(post <= S && S < post * out[b])) continue;
    if (S % post != 0) {
      *why = "the cut of " + cut_text(c, in) + " falls inside axis " + std::to_string(b + 1) + " of " +
             shape_str(out);
      return false;
    }
    const int64_t inner_b = S / post;
    if (out[b] % (inner_b * c.parts) != 0) {
      *why = "axis " + std::to_string(b) + " of " + shape_str(out) + " (size " + std::to_string(out[b]) +
             ") cannot hold " + std::to_string(c.parts) + " whole pieces of " + std::to_string(inner_b) +
             " (are the heads divisible by tp?)";
      return false;
    }
    *oc = Cut{b, out[b] / (inner_b * c.parts), c.parts};
    return true;
  }
  *why = "no axis of " + shape_str(out) + " holds the cut of " + cut_text(c, in);
  return false;
}

Status Pass::visit_reshape(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const ValueId in = node.inputs[0], out = node.outputs[0];
  if (cut_[node.inputs[1]].is_cut() || !g_.is_constant(node.inputs[1])) {
    return cannot(n, L, "its target shape is not a constant");
  }
  Cut oc;
  std::string why;
  if (!map_reshape(global_[in], cut_[in], global_[out], &oc, &why)) return cannot(n, L, why);
  Shape local = global_[out];
  local[oc.axis] /= oc.parts;
  const std::string name = g_.value(node.inputs[1]).name + "/tp";
  const ValueId shape = new_constant(name, Tensor::from_i64(local, {static_cast<int64_t>(local.size())}));
  g_.nodes[n].inputs[1] = shape;
  cut_[out] = oc;
  return Status::ok();
}

Status Pass::visit_transpose(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const Cut c = cut_[node.inputs[0]];
  std::vector<int64_t> perm = node.attrs.get_ints("perm");
  if (perm.empty()) {
    for (int i = static_cast<int>(global_[node.inputs[0]].size()) - 1; i >= 0; --i) perm.push_back(i);
  }
  auto it = std::find(perm.begin(), perm.end(), c.axis);
  if (it == perm.end()) return cannot(n, L, "perm " + ints_text(perm) + " drops the cut axis");
  cut_[node.outputs[0]] = Cut{static_cast<int>(it - perm.begin()), c.outer, c.parts};
  return Status::ok();
}

Status Pass::visit_split(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const ValueId in = node.inputs[0];
  if (node.inputs.size() > 1 && node.inputs[1] != kNoValue && cut_[node.inputs[1]].is_cut()) {
    return cannot(n, L, "its split sizes are cut");
  }
  const Cut c = cut_[in];
  const int ax = norm_axis(node.attrs.get_int("axis", 0), global_[in].size());
  if (ax != c.axis) {
    set_all_outputs(n, c);
    return Status::ok();
  }
  const int64_t D = global_[in][ax];
  const int64_t block = D / c.outer;
  std::vector<int64_t> sizes, local;
  for (ValueId o : node.outputs) sizes.push_back(global_[o][ax]);
  for (size_t j = 0; j < sizes.size(); ++j) {
    if (sizes[j] % block != 0) {
      return cannot(n, L, "split sizes " + ints_text(sizes) + " do not follow the cut of " + cut_text(c, global_[in]));
    }
    cut_[node.outputs[j]] = Cut{ax, sizes[j] / block, c.parts};
    local.push_back(sizes[j] / c.parts);
  }
  Node& mut = g_.nodes[n];
  if (mut.opset >= 13) {
    const std::string name = mut.name + "/tp_split";
    const ValueId sv = new_constant(name, Tensor::from_i64(local, {static_cast<int64_t>(local.size())}));
    mut.inputs.resize(2);
    mut.inputs[1] = sv;
    mut.attrs.erase("split");
    mut.attrs.erase("num_outputs");
  } else {
    mut.attrs.set_ints("split", local);
  }
  return Status::ok();
}

Status Pass::visit_slice(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const ValueId in = node.inputs[0];
  std::vector<std::vector<int64_t>> ints(5);
  for (size_t i = 1; i < node.inputs.size() && i < 5; ++i) {
    const ValueId v = node.inputs[i];
    if (v == kNoValue) continue;
    if (!g_.is_constant(v)) return cannot(n, L, "its starts / ends / axes / steps are not constants");
    ints[i] = g_.value(v).data.to_i64_vector();
  }
  const Cut c = cut_[in];
  movement::SliceBox box;
  std::string err = movement::normalize_slice(global_[in], ints[1], ints[2], ints[3], ints[4], box);
  if (!err.empty()) return cannot(n, L, err);
  if (box.out_shape[c.axis] != global_[in][c.axis] || box.starts[c.axis] != 0 || box.steps[c.axis] != 1) {
    return cannot(n, L, "it slices the cut axis (" + cut_text(c, global_[in]) + ")");
  }
  cut_[node.outputs[0]] = c;
  return Status::ok();
}

Status Pass::visit_concat(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const ValueId out = node.outputs[0];
  const int ax = norm_axis(node.attrs.get_int("axis", 0), global_[out].size());
  Cut c;
  for (ValueId v : node.inputs) {
    if (v == kNoValue || !cut_[v].is_cut()) continue;
    if (c.is_cut() && cut_[v] != c) return cannot(n, L, "its inputs are cut differently");
    c = cut_[v];
  }
  if (c.axis == ax) return cannot(n, L, "it concatenates along the cut axis");
  for (size_t i = 0; i < node.inputs.size(); ++i) {
    const ValueId v = g_.nodes[n].inputs[i];
    if (v == kNoValue || cut_[v].is_cut()) continue;
    GV_RETURN_IF_ERROR(match_whole_input(n, static_cast<int>(i), c.axis, c, L));
  }
  cut_[out] = c;
  return Status::ok();
}

Status Pass::visit_expand(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const ValueId in = node.inputs[0], out = node.outputs[0];
  if (cut_[node.inputs[1]].is_cut() || !g_.is_constant(node.inputs[1])) {
    return cannot(n, L, "its target shape is not a constant");
  }
  const Cut c = cut_[in];
  const int ri = static_cast<int>(global_[in].size()), ro = static_cast<int>(global_[out].size());
  std::vector<int64_t> shape = g_.value(node.inputs[1]).data.to_i64_vector();
  const int oa = c.axis + ro - ri;
  const int k = oa - (ro - static_cast<int>(shape.size()));
  if (k >= 0 && shape[k] != 1) {
    if (shape[k] != global_[in][c.axis]) {
      return cannot(n, L, "target shape " + ints_text(shape) + " does not keep the cut axis");
    }
    shape[k] /= c.parts;
    const std::string name = g_.value(node.inputs[1]).name + "/tp";
    g_.nodes[n].inputs[1] = new_constant(name, Tensor::from_i64(shape, {static_cast<int64_t>(shape.size())}));
  }
  cut_[out] = Cut{oa, c.outer, c.parts};
  return Status::ok();
}

Status Pass::visit_squeeze(NodeId n, const TensorParallelLayer& L, bool unsqueeze) {
  const Node& node = g_.nodes[n];
  const ValueId in = node.inputs[0], out = node.outputs[0];
  std::vector<int64_t> axes;
  if (node.inputs.size() > 1 && node.inputs[1] != kNoValue) {
    if (!g_.is_constant(node.inputs[1])) return cannot(n, L, "its axes are not a constant");
    axes = g_.value(node.inputs[1]).data.to_i64_vector();
  } else {
    axes = node.attrs.get_ints("axes");
  }
  const Cut c = cut_[in];
  const Shape& is = global_[in];
  const size_t ro = global_[out].size();
  if (unsqueeze) {
    std::vector<char> is_new(ro, 0);
    for (int64_t a : axes) is_new[norm_axis(a, ro)] = 1;
    int next = 0;
    for (size_t d = 0; d < ro; ++d) {
      if (is_new[d]) continue;
      if (next == c.axis) {
        cut_[out] = Cut{static_cast<int>(d), c.outer, c.parts};
        return Status::ok();
      }
      ++next;
    }
    return cannot(n, L, "lost the cut axis");
  }
  std::vector<char> drop(is.size(), 0);
  if (axes.empty()) {
    for (size_t d = 0; d < is.size(); ++d) drop[d] = is[d] == 1;
  }
  for (int64_t a : axes) drop[norm_axis(a, is.size())] = 1;
  if (drop[c.axis]) return cannot(n, L, "it squeezes the cut axis");
  int before = 0;
  for (int d = 0; d < c.axis; ++d) before += drop[d];
  cut_[out] = Cut{c.axis - before, c.outer, c.parts};
  return Status::ok();
}

Status Pass::visit_gather(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  if (cut_[node.inputs[1]].is_cut()) return cannot(n, L, "its indices are cut");
  const Cut c = cut_[node.inputs[0]];
  const int ax = norm_axis(node.attrs.get_int("axis", 0), global_[node.inputs[0]].size());
  if (ax == c.axis) return cannot(n, L, "it gathers along the cut axis");
  const int ri = static_cast<int>(global_[node.inputs[1]].size());
  cut_[node.outputs[0]] = Cut{c.axis < ax ? c.axis : c.axis + ri - 1, c.outer, c.parts};
  return Status::ok();
}

Status Pass::visit_axis_op(NodeId n, const TensorParallelLayer& L) {
  const Node& node = g_.nodes[n];
  const std::string& op = node.op_type;
  const ValueId in = node.inputs[0];
  for (size_t i = 1; i < node.inputs.size(); ++i) {
    if (node.inputs[i] != kNoValue && cut_[node.inputs[i]].is_cut()) {
      return cannot(n, L, "its input " + std::to_string(i) + " is cut");
    }
  }
  const Cut c = cut_[in];
  const size_t rank = global_[in].size();
  if (op == "Softmax" || op == "LogSoftmax") {
    const int ax = norm_axis(node.attrs.get_int("axis", node.opset >= 13 ? -1 : 1), rank);
    if (node.opset >= 13 ? c.axis == ax : c.axis >= ax) {
      return cannot(n, L, "it normalizes over the cut axis (" + cut_text(c, global_[in]) + ")");
    }
    set_all_outputs(n, c);
    return Status::ok();
  }
  if (op == "LayerNormalization" || op == "RMSNormalization") {
    const int ax = norm_axis(node.attrs.get_int("axis", -1), rank);
    if (c.axis >= ax) return cannot(n, L, "it normalizes over the cut axis (" + cut_text(c, global_[in]) + ")");
    set_all_outputs(n, c);
    return Status::ok();
  }
  // Reductions and ArgMax / ArgMin.
  std::vector<int64_t> axes;
  if (op == "ArgMax" || op == "ArgMin") {
    axes = {node.attrs.get_int("axis", 0)};
  } else if (node.inputs.size() > 1 && node.inputs[1] != kNoValue) {
    if (!g_.is_constant(node.inputs[1])) return cannot(n, L, "its axes are not a constant");
    axes = g_.value(node.inputs[1]).data.to_i64_vector();
  } else {
    axes = node.attrs.get_ints("axes");
  }
  if (axes.empty()) {
    if (node.attrs.get_int("noop_with_empty_axes", 0) != 0) {
      set_all_outputs(n, c);
      return Status::ok();
    }
    return cannot(n, L, "it reduces over every axis, the cut one included");
  }
  std::vector<char> red(rank, 0);
  for (int64_t a : axes) red[norm_axis(a, rank)] = 1;
  if (red[c.axis]) return cannot(n, L, "it reduces over the cut axis (" + cut_text(c, global_[in]) + ")");
  int before = 0;
  if (node.attrs.get_int("keepdims", 1) == 0) {
    for (int d = 0; d < c.axis; ++d) before += red[d];
  }
  set_all_outputs(n, Cut{c.axis - before, c.outer, c.parts});
  return Status::ok();
}

}  // namespace gv::partitioner::tp_detail

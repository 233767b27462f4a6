// The tensor-parallel pass (tensor_parallel.h): checks, the walk over the graph, weight cutting, node insertion, and
// the final re-inference that checks every value's local shape. The per-op rules are in
// tensor_parallel_propagation.cpp.
#include "partitioner/tensor_parallel.h"

#include <algorithm>
#include <set>

#include "partitioner/tensor_parallel_pass.h"
#include "partitioner/weight_values.h"
#include "runtime/op_registry.h"

namespace gv::partitioner {
namespace tp_detail {
namespace {

std::string ints_text(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

std::string Pass::where(NodeId n) const {
  const Node& node = g_.nodes[n];
  return "node '" + node.name + "' (" + (node.domain.empty() ? "" : node.domain + "::") + node.op_type + ")";
}

std::string Pass::in_layer(const TensorParallelLayer& L) const {
  return "layer " + std::to_string(L.layer) + " (tp " + std::to_string(L.tp) + ")";
}

const TensorParallelLayer* Pass::layer_of(const Node& n) const {
  if (n.place.kind != Placement::Kind::kLayer) return nullptr;
  if (n.place.layer < 0 || n.place.layer >= static_cast<int>(by_layer_.size())) return nullptr;
  return by_layer_[n.place.layer];
}

Status Pass::check_layers(const std::vector<TensorParallelLayer>& layers) {
  by_layer_.assign(std::max(g_.num_layers, 0), nullptr);
  std::set<int> seen;
  for (const TensorParallelLayer& L : layers) {
    const std::string what = "tensor parallelism for layer " + std::to_string(L.layer);
    if (!seen.insert(L.layer).second) return invalid_argument(what + ": the layer is listed twice");
    if (L.tp < 1) return invalid_argument(what + ": tp " + std::to_string(L.tp) + " must be at least 1");
    if (L.tp == 1) continue;
    if (L.layer < 0 || L.layer >= g_.num_layers) {
      return invalid_argument(what + ": the graph has " + std::to_string(g_.num_layers) +
                              " layers (Node::place; layer detection found none?)");
    }
    if (static_cast<int>(L.group.size()) != L.tp) {
      return invalid_argument(what + ": group " + ints_text(L.group) + " must list tp = " + std::to_string(L.tp) +
                              " world ranks");
    }
    if (std::set<int>(L.group.begin(), L.group.end()).size() != L.group.size()) {
      return invalid_argument(what + ": group " + ints_text(L.group) + " names a rank twice");
    }
    if (L.index < 0 || L.index >= L.tp) {
      return invalid_argument(what + ": index " + std::to_string(L.index) + " is not a position in group " +
                              ints_text(L.group));
    }
    by_layer_[L.layer] = &L;
  }
  return Status::ok();
}

// Attention reshapes split a projection's last axis into [heads, head_dim]; the heads must divide by tp. Checked
// before the walk so that the error names heads rather than the first product whose size does not divide.
Status Pass::check_heads(const TensorParallelLayer& L) {
  struct HeadReshape {
    NodeId node;
    Shape in, out;
    int64_t heads;
  };
  std::vector<HeadReshape> found;
  int64_t most = 0;
  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    const Node& node = g_.nodes[n];
    if (layer_of(node) != &L || node.op_type != "Reshape" || !node.domain.empty()) continue;
    const Value& iv = g_.value(node.inputs[0]);
    if (iv.producer < 0) continue;
    const std::string& pop = g_.nodes[iv.producer].op_type;
    if (pop != "MatMul" && pop != "Gemm" && pop != "Add" && pop != "Split") continue;
    const Shape& is = iv.shape;
    const Shape& os = g_.value(node.outputs[0]).shape;
    const size_t r = is.size();
    if (r < 1 || os.size() != r + 1 || os[r - 1] * os[r] != is[r - 1] || os[r - 1] <= 1 || os[r] <= 1) continue;
    if (!std::equal(is.begin(), is.end() - 1, os.begin())) continue;
    found.push_back({n, is, os, os[r - 1]});
    most = std::max(most, os[r - 1]);
  }
  for (const HeadReshape& h : found) {
    if (h.heads % L.tp == 0) continue;
    const std::string kind = h.heads < most ? " key/value heads (grouped-query attention; " + std::to_string(most) +
                                                  " query heads)"
                                            : " attention heads";
    return invalid_argument(in_layer(L) + ": " + std::to_string(h.heads) + kind + " are not divisible by tp " +
                            std::to_string(L.tp) + " (" + where(h.node) + " reshapes " + shape_str(h.in) + " to " +
                            shape_str(h.out) + "); choose a tp that divides every head count");
  }
  return Status::ok();
}

ValueId Pass::new_value(const std::string& name, ValueId like) {
  Value v;
  v.name = g_.find(name) == kNoValue ? name : g_.unique_name(name);
  v.dtype = g_.value(like).dtype;
  v.shape = g_.value(like).shape;
  v.kind = ValueKind::kActivation;
  const Shape global = global_[like];
  ValueId id = g_.add_value(std::move(v));
  global_.push_back(global);
  cut_.push_back(Cut{});
  weight_.push_back(0);
  users_.emplace_back();
  return id;
}

ValueId Pass::new_constant(const std::string& name, Tensor data) {
  const Shape shape = data.shape();
  ValueId id = g_.add_initializer(g_.find(name) == kNoValue ? name : g_.unique_name(name), std::move(data),
                                  ValueKind::kConstant);
  global_.push_back(shape);
  cut_.push_back(Cut{});
  weight_.push_back(0);
  users_.emplace_back();
  return id;
}

namespace {

Node comm_node(const std::string& name, const char* op, ValueId in, ValueId out, const TensorParallelLayer& L,
               const Graph& g) {
  Node n;
  n.name = name;
  n.op_type = op;
  n.domain = kGalvatronDomain;
  auto it = g.opsets.find(kGalvatronDomain);
  n.opset = it != g.opsets.end() ? it->second : 1;
  n.attrs.set_ints("group", std::vector<int64_t>(L.group.begin(), L.group.end()));
  n.inputs = {in};
  n.outputs = {out};
  n.place.kind = Placement::Kind::kLayer;
  n.place.layer = L.layer;
  return n;
}

}  // namespace

ValueId Pass::copy_of(ValueId x, NodeId at, const TensorParallelLayer& L) {
  auto key = std::make_pair(x, L.layer);
  auto it = copies_.find(key);
  if (it != copies_.end()) return it->second;
  const std::string base = g_.value(x).name;
  ValueId c = new_value(base + "/tp_copy", x);
  before_[at].push_back(comm_node(base + "/TensorParallelCopy", kTensorParallelCopyOp, x, c, L, g_));
  copies_[key] = c;
  return c;
}

ValueId Pass::reduce_after(NodeId n, int out_index, const TensorParallelLayer& L) {
  const ValueId o = g_.nodes[n].outputs[out_index];
  const std::string base = g_.value(o).name;
  ValueId p = new_value(base + "/tp_partial", o);
  g_.nodes[n].outputs[out_index] = p;
  after_[n].push_back(comm_node(g_.nodes[n].name + "/TensorParallelReduce", kTensorParallelReduceOp, p, o, L, g_));
  return p;
}

Status Pass::cut_weight(ValueId v, int axis, int64_t outer, const TensorParallelLayer& L, NodeId user) {
  const Shape& s = global_[v];
  const std::string name = "'" + g_.value(v).name + "'";
  if (axis < 0 || axis >= static_cast<int>(s.size())) {
    return internal_error(where(user) + " in " + in_layer(L) + ": weight " + name + " has no axis " +
                          std::to_string(axis));
  }
  const Cut c{axis, outer, L.tp};
  if (s[axis] % (outer * L.tp) != 0) {
    return invalid_argument(where(user) + " in " + in_layer(L) + ": axis " + std::to_string(axis) + " of weight " +
                            name + " " + shape_str(s) + (outer > 1 ? " (" + std::to_string(outer) + " parts)" : "") +
                            " is not divisible into tp " + std::to_string(L.tp) + " pieces");
  }
  if (cut_[v].is_cut()) {
    if (cut_[v] == c) return Status::ok();
    return unsupported(where(user) + " in " + in_layer(L) + ": weight " + name +
                       " would be cut two different ways (axis " + std::to_string(cut_[v].axis) + " and " +
                       std::to_string(axis) + ")");
  }
  for (NodeId u : users_[v]) {
    if (layer_of(g_.nodes[u]) != &L) {
      return unsupported(where(user) + " in " + in_layer(L) + ": weight " + name + " is also read by " + where(u) +
                         " outside the layer, so it cannot be cut for tensor parallelism");
    }
  }
  Value& val = g_.value(v);
  switch (val.kind) {
    case ValueKind::kParameter:
      cut_[v] = c;
      cut_params_[v] = &L;
      return Status::ok();
    case ValueKind::kConstant: {
      if (users_[v].size() != 1) {
        return unsupported(where(user) + " in " + in_layer(L) + ": constant weight " + name +
                           " has several readers; cannot cut it");
      }
      TensorShard sh;
      sh.global_name = val.name;
      sh.global_shape = s;
      sh.axis = axis;
      sh.outer = outer;
      sh.parts = L.tp;
      sh.index = L.index;
      GV_ASSIGN_OR_RETURN(Tensor piece, extract_piece(val.data, sh));
      val.shape = piece.shape();
      val.data = std::move(piece);
      cut_[v] = c;
      return Status::ok();
    }
    case ValueKind::kActivation: {
      if (val.producer < 0) break;
      const NodeId p = val.producer;
      const Node& pn = g_.nodes[p];
      if (users_[v].size() != 1) {
        return unsupported(where(user) + " in " + in_layer(L) + ": weight " + name + " has several readers");
      }
      if (pn.domain.empty() && (pn.op_type == "Identity" || pn.op_type == "Cast")) {
        cut_[v] = c;
        return cut_weight(pn.inputs[0], axis, outer, L, p);
      }
      if (pn.domain.empty() && pn.op_type == "Transpose") {
        const int r = static_cast<int>(s.size());
        std::vector<int64_t> perm = pn.attrs.get_ints("perm");
        if (perm.empty()) {
          for (int i = r - 1; i >= 0; --i) perm.push_back(i);
        }
        cut_[v] = c;
        return cut_weight(pn.inputs[0], static_cast<int>(perm[axis]), outer, L, p);
      }
      return unsupported(where(user) + " in " + in_layer(L) + ": its weight " + name + " is computed by " +
                         where(p) + "; only parameters and their Transpose / Cast / Identity can be cut");
    }
    default:
      break;
  }
  return unsupported(where(user) + " in " + in_layer(L) + ": weight " + name +
                     " is not a parameter; cannot cut it for tensor parallelism");
}

Status Pass::rebuild_and_check() {
  std::vector<Node> nodes;
  nodes.reserve(g_.nodes.size() * 2);
  for (size_t i = 0; i < g_.nodes.size(); ++i) {
    for (Node& n : before_[i]) nodes.push_back(std::move(n));
    nodes.push_back(std::move(g_.nodes[i]));
    for (Node& n : after_[i]) nodes.push_back(std::move(n));
  }
  g_.nodes = std::move(nodes);
  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    const Node& node = g_.nodes[n];
    InferContext ctx(g_, node);
    const OpSchema* schema = OpRegistry::global().find(node.domain, node.op_type);
    if (schema && schema->infer) {
      Status st = schema->infer(ctx);
      if (!st.is_ok()) return st.with_context("tensor parallelism: inferring shapes after the rewrite");
    } else if (node.domain == kGalvatronDomain &&
               (node.op_type == kTensorParallelCopyOp || node.op_type == kTensorParallelReduceOp)) {
      ctx.set_output(0, ctx.dtype(0), ctx.shape(0));  // shape-preserving; used before the ops are registered
    } else {
      return internal_error("tensor parallelism: " + where(n) + " has no shape inference");
    }
    for (size_t k = 0; k < node.outputs.size(); ++k) {
      if (node.outputs[k] == kNoValue) continue;
      Value& v = g_.value(node.outputs[k]);
      v.dtype = ctx.out_dtypes[k];
      v.shape = ctx.out_shapes[k];
    }
  }
  g_.reindex();
  for (ValueId v = 0; v < static_cast<ValueId>(g_.values.size()); ++v) {
    Shape expected = global_[v];
    const Cut& c = cut_[v];
    if (c.is_cut()) expected[c.axis] /= c.parts;
    if (g_.value(v).shape != expected) {
      const NodeId p = g_.value(v).producer;
      return internal_error("tensor parallelism: value '" + g_.value(v).name + "'" +
                            (p >= 0 ? " of " + where(p) : std::string()) + " has shape " +
                            shape_str(g_.value(v).shape) + " after the rewrite, expected " + shape_str(expected));
    }
  }
  return Status::ok();
}

Expected<std::map<std::string, TensorShard>> Pass::run(const std::vector<TensorParallelLayer>& layers) {
  GV_RETURN_IF_ERROR(check_layers(layers));
  std::map<std::string, TensorShard> shards;
  if (std::none_of(by_layer_.begin(), by_layer_.end(), [](const TensorParallelLayer* p) { return p != nullptr; })) {
    return shards;
  }
  for (const TensorParallelLayer* L : by_layer_) {
    if (L) GV_RETURN_IF_ERROR(check_heads(*L));
  }
  const size_t nv = g_.values.size();
  global_.resize(nv);
  cut_.assign(nv, Cut{});
  WeightValues wv = find_weight_values(g_);
  weight_ = std::move(wv.weight);
  users_ = std::move(wv.users);
  for (size_t v = 0; v < nv; ++v) global_[v] = g_.values[v].shape;
  before_.assign(g_.nodes.size(), {});
  after_.assign(g_.nodes.size(), {});

  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    const TensorParallelLayer* L = layer_of(g_.nodes[n]);
    if (L) {
      GV_RETURN_IF_ERROR(visit(n, *L));
      continue;
    }
    for (ValueId in : g_.nodes[n].inputs) {
      if (in == kNoValue || !cut_[in].is_cut()) continue;
      const Node& node = g_.nodes[n];
      const std::string place = node.place.kind == Placement::Kind::kLayer
                                    ? "layer " + std::to_string(node.place.layer)
                                    : std::string(placement_kind_name(node.place.kind));
      return unsupported(where(n) + " in " + place + " reads '" + g_.value(in).name +
                         "', which tensor parallelism cuts over heads inside another layer; the layer's cut values "
                         "must end in its row-parallel products");
    }
  }
  for (ValueId o : g_.outputs) {
    if (cut_[o].is_cut()) {
      return unsupported("graph output '" + g_.value(o).name + "' is cut over heads by tensor parallelism");
    }
  }
  for (const auto& [p, L] : cut_params_) {
    Value& v = g_.value(p);
    TensorShard sh;
    sh.global_name = v.name;
    sh.global_shape = global_[p];
    sh.axis = cut_[p].axis;
    sh.outer = cut_[p].outer;
    sh.parts = L->tp;
    sh.index = L->index;
    GV_ASSIGN_OR_RETURN(Tensor piece, extract_piece(v.data, sh));
    v.shape = piece.shape();
    v.data = std::move(piece);
    shards[v.name] = sh;
  }
  GV_RETURN_IF_ERROR(rebuild_and_check());
  return shards;
}

}  // namespace tp_detail

Expected<std::map<std::string, TensorShard>> apply_tensor_parallel(Graph& g, const std::vector<TensorParallelLayer>& layers) {
  tp_detail::Pass pass(g);
  return pass.run(layers);
}

}  // namespace gv::partitioner

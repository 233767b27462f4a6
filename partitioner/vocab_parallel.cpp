// Vocabulary parallelism (vocab_parallel.h): finds the word embedding's Gather and the LM head's product, cuts their
// weights along the vocabulary, inserts the masked lookup + TensorParallelReduce, the TensorParallelCopy before the
// head, rewrites the logits' reshapes and puts VocabParallelCrossEntropy at the end; then infers every node's shapes
// again.
#include "partitioner/vocab_parallel.h"

#include <algorithm>
#include <limits>
#include <set>

#include "partitioner/tensor_parallel.h"
#include "partitioner/weight_values.h"
#include "runtime/op_registry.h"

namespace gv::partitioner {
namespace {

std::string ints_text(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// A weight operand resolved to its parameter: the parameter's vocabulary axis and the Transpose / Identity / Cast
// nodes between the parameter and the user (parameter side first).
struct Weight {
  ValueId param = kNoValue;
  int axis = -1;
  std::vector<NodeId> chain;
};

class VocabPass {
 public:
  VocabPass(Graph& g, const VocabParallel& vp, std::string labels, int64_t ignore)
      : g_(g), vp_(vp), labels_name_(std::move(labels)), ignore_(ignore) {}

  Expected<std::map<std::string, TensorShard>> run();

 private:
  std::string where(NodeId n) const {
    const Node& node = g_.nodes[n];
    return "node '" + node.name + "' (" + (node.domain.empty() ? "" : node.domain + "::") + node.op_type + ")";
  }
  std::string vname(ValueId v) const { return "'" + g_.value(v).name + "' " + shape_str(g_.value(v).shape); }
  Status check_plan() const;
  bool is_product(const Node& n) const {
    return n.domain.empty() && (n.op_type == "MatMul" || n.op_type == "Gemm");
  }
  Status find_head();
  Status find_embedding();
  // Follows `v` (whose axis `axis` is the vocabulary) back through Transpose / Identity / Cast to a parameter.
  Expected<Weight> resolve_weight(ValueId v, int axis, NodeId user) const;
  Status check_readers(ValueId param, const std::set<NodeId>& allowed, NodeId user) const;
  Status cut_parameters(std::map<std::string, TensorShard>& shards);
  Status cut_gemm_bias();
  void rewrite_embedding();
  Status rewrite_head();
  Status reinfer();

  ValueId new_value(const std::string& name) {
    Value v;
    v.name = g_.unique_name(name);
    v.kind = ValueKind::kActivation;
    return g_.add_value(std::move(v));
  }
  ValueId new_constant(const std::string& name, Tensor t) {
    return g_.add_initializer(g_.unique_name(name), std::move(t), ValueKind::kConstant);
  }
  Node make_node(const std::string& name, const std::string& op, bool galvatron, std::vector<ValueId> in,
                 std::vector<ValueId> out, Placement::Kind place) const {
    Node n;
    n.name = name;
    n.op_type = op;
    n.domain = galvatron ? kGalvatronDomain : "";
    auto it = g_.opsets.find(n.domain);
    n.opset = it != g_.opsets.end() ? it->second : (galvatron ? 1 : 17);
    if (galvatron) n.attrs.set_ints("group", std::vector<int64_t>(vp_.group.begin(), vp_.group.end()));
    n.inputs = std::move(in);
    n.outputs = std::move(out);
    n.place.kind = place;
    return n;
  }

  Graph& g_;
  const VocabParallel& vp_;
  std::string labels_name_;
  int64_t ignore_;
  std::vector<std::vector<NodeId>> users_;
  std::vector<char> weight_;  // computed from parameters and constants only
  std::vector<std::vector<Node>> before_, after_;
  std::vector<Node> appended_;

  int64_t vocab_ = 0, local_ = 0, start_ = 0;
  NodeId head_ = -1;
  Weight head_w_;
  NodeId gather_ = -1;
  ValueId emb_param_ = kNoValue;
  Shape emb_out_shape_;
  std::string emb_name_;
  TensorShard bias_shard_;
  bool has_bias_shard_ = false;
};

Status VocabPass::check_plan() const {
  const std::string what = "vocabulary parallelism (vtp " + std::to_string(vp_.vtp) + ")";
  if (vp_.vtp < 1) return invalid_argument(what + ": vtp must be at least 1");
  if (static_cast<int>(vp_.group.size()) != vp_.vtp) {
    return invalid_argument(what + ": group " + ints_text(vp_.group) + " must list vtp = " + std::to_string(vp_.vtp) +
                            " world ranks");
  }
  if (std::set<int>(vp_.group.begin(), vp_.group.end()).size() != vp_.group.size()) {
    return invalid_argument(what + ": group " + ints_text(vp_.group) + " names a rank twice");
  }
  for (int r : vp_.group) {
    if (r < 0) return invalid_argument(what + ": group " + ints_text(vp_.group) + " holds a negative rank");
  }
  if (vp_.index < 0 || vp_.index >= vp_.vtp) {
    return invalid_argument(what + ": index " + std::to_string(vp_.index) + " is not a position in group " +
                            ints_text(vp_.group));
  }
  return Status::ok();
}

Expected<Weight> VocabPass::resolve_weight(ValueId v, int axis, NodeId user) const {
  Weight w;
  for (;;) {
    const Value& val = g_.value(v);
    if (val.kind == ValueKind::kParameter) {
      w.param = v;
      w.axis = axis;
      std::reverse(w.chain.begin(), w.chain.end());
      return w;
    }
    const NodeId p = val.producer;
    if (val.kind != ValueKind::kActivation || p < 0) {
      return unsupported("vocabulary parallelism: the LM head " + where(user) + " is not a plain product: its weight " +
                         vname(v) + " is not a trainable parameter");
    }
    const Node& pn = g_.nodes[p];
    const bool pass_through = pn.domain.empty() && (pn.op_type == "Identity" || pn.op_type == "Cast");
    if (!pass_through && !(pn.domain.empty() && pn.op_type == "Transpose")) {
      return unsupported("vocabulary parallelism: the LM head " + where(user) + " is not a plain product: its weight " +
                         vname(v) + " is computed by " + where(p) +
                         "; only a parameter or its Transpose / Identity / Cast can be cut along the vocabulary");
    }
    if (users_[v].size() != 1) {
      return unsupported("vocabulary parallelism: the LM head's weight " + vname(v) + " (of " + where(p) +
                         ") has other readers besides " + where(user));
    }
    if (!pass_through) {
      const int r = static_cast<int>(val.shape.size());
      std::vector<int64_t> perm = pn.attrs.get_ints("perm");
      if (perm.empty()) {
        for (int i = r - 1; i >= 0; --i) perm.push_back(i);
      }
      axis = static_cast<int>(perm[axis]);
    }
    w.chain.push_back(p);
    user = p;
    v = pn.inputs[0];
  }
}

Status VocabPass::find_head() {
  bool any_head = false;
  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    const Node& node = g_.nodes[n];
    if (node.place.kind != Placement::Kind::kHead) continue;
    any_head = true;
    if (!is_product(node) || node.inputs.size() < 2) continue;
    if (weight_[node.inputs[0]] || !weight_[node.inputs[1]]) continue;
    head_ = n;  // the last product of the hidden states and a weight
  }
  if (!any_head) return Status::ok();
  if (head_ < 0) {
    // Name what computes the float output the head ends in.
    std::string what;
    for (ValueId o : g_.outputs) {
      const Value& v = g_.value(o);
      if (dtype_is_float(v.dtype) && v.producer >= 0) {
        what = ": " + where(v.producer) + " computes the output " + vname(o);
        break;
      }
    }
    return unsupported("vocabulary parallelism: the LM head (Placement head) is not a plain product" + what +
                       "; it needs a MatMul / Gemm of the hidden states and a weight parameter");
  }
  const Node& h = g_.nodes[head_];
  const Shape& ws = g_.value(h.inputs[1]).shape;
  const Shape& os = g_.value(h.outputs[0]).shape;
  if (ws.size() != 2 || os.empty()) {
    return unsupported("vocabulary parallelism: the LM head " + where(head_) + " is not a plain product: its weight " +
                       vname(h.inputs[1]) + " is not a matrix");
  }
  int axis = 1;
  if (h.op_type == "Gemm") {
    if (h.attrs.get_int("transB", 0)) axis = 0;
    if (h.attrs.get_int("transA", 0)) {
      return unsupported("vocabulary parallelism: the LM head " + where(head_) + " has transA = 1");
    }
  }
  vocab_ = ws[axis];
  if (os.back() != vocab_) {
    return internal_error("vocabulary parallelism: the LM head " + where(head_) + " gives " + shape_str(os) +
                          " for a weight of " + std::to_string(vocab_) + " vocabulary entries");
  }
  GV_ASSIGN_OR_RETURN(head_w_, resolve_weight(h.inputs[1], axis, head_));
  return Status::ok();
}

Status VocabPass::find_embedding() {
  std::vector<NodeId> found;
  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    const Node& node = g_.nodes[n];
    if (node.place.kind != Placement::Kind::kEmbedding || !node.domain.empty() || node.op_type != "Gather") continue;
    if (node.attrs.get_int("axis", 0) != 0) continue;
    const Value& table = g_.value(node.inputs[0]);
    if (table.kind != ValueKind::kParameter || table.shape.size() != 2) continue;
    const Value& ids = g_.value(node.inputs[1]);
    if (ids.kind == ValueKind::kConstant || weight_[node.inputs[1]]) continue;  // position tables
    if (head_ >= 0 && table.shape[0] != vocab_) continue;
    found.push_back(n);
  }
  if (found.empty()) return Status::ok();
  gather_ = found[0];
  for (NodeId n : found) {
    const ValueId t = g_.nodes[n].inputs[0];
    if (head_ >= 0 ? t == head_w_.param : g_.value(t).shape[0] > g_.value(g_.nodes[gather_].inputs[0]).shape[0]) {
      gather_ = n;
    }
  }
  emb_param_ = g_.nodes[gather_].inputs[0];
  if (head_ < 0) vocab_ = g_.value(emb_param_).shape[0];
  emb_out_shape_ = g_.value(g_.nodes[gather_].outputs[0]).shape;
  return Status::ok();
}

Status VocabPass::check_readers(ValueId param, const std::set<NodeId>& allowed, NodeId user) const {
  for (NodeId u : users_[param]) {
    if (!allowed.count(u)) {
      return unsupported("vocabulary parallelism: " + where(user) + " reads " + vname(param) +
                         ", which is cut along the vocabulary, but " + where(u) + " reads it too");
    }
  }
  if (std::find(g_.outputs.begin(), g_.outputs.end(), param) != g_.outputs.end()) {
    return unsupported("vocabulary parallelism: parameter " + vname(param) + " is a graph output");
  }
  return Status::ok();
}

Status VocabPass::cut_parameters(std::map<std::string, TensorShard>& shards) {
  std::map<ValueId, int> cut;  // parameter -> axis
  std::set<NodeId> allowed;
  if (gather_ >= 0) {
    cut[emb_param_] = 0;
    allowed.insert(gather_);
  }
  if (head_ >= 0) {
    const NodeId first = head_w_.chain.empty() ? head_ : head_w_.chain.front();
    allowed.insert(first);
    auto it = cut.find(head_w_.param);
    if (it != cut.end() && it->second != head_w_.axis) {
      return unsupported("vocabulary parallelism: the tied weight " + vname(head_w_.param) +
                         " would be cut along two axes (embedding rows, and axis " + std::to_string(head_w_.axis) +
                         " for the head " + where(head_) + ")");
    }
    cut[head_w_.param] = head_w_.axis;
  }
  for (const auto& [p, axis] : cut) {
    GV_RETURN_IF_ERROR(check_readers(p, allowed, p == emb_param_ ? gather_ : head_));
  }
  for (const auto& [p, axis] : cut) {
    Value& v = g_.value(p);
    TensorShard sh;
    sh.global_name = v.name;
    sh.global_shape = v.shape;
    sh.axis = axis;
    sh.parts = vp_.vtp;
    sh.index = vp_.index;
    GV_ASSIGN_OR_RETURN(Tensor piece, extract_piece(v.data, sh));
    v.shape = piece.shape();
    v.data = std::move(piece);
    shards[v.name] = sh;
  }
  return Status::ok();
}

// A Gemm head's bias C: a [V] or [1, V] parameter or constant is cut with the weight; one that broadcasts along the
// vocabulary stays whole.
Status VocabPass::cut_gemm_bias() {
  const Node& h = g_.nodes[head_];
  if (h.op_type != "Gemm" || h.inputs.size() < 3 || h.inputs[2] == kNoValue) return Status::ok();
  const ValueId c = h.inputs[2];
  const Shape s = g_.value(c).shape;
  if (s.empty() || s.back() == 1) return Status::ok();
  const int axis = static_cast<int>(s.size()) - 1;
  if (s.back() != vocab_ || (s.size() == 2 && s[0] != 1) || s.size() > 2) {
    return unsupported("vocabulary parallelism: the LM head " + where(head_) + " adds a bias " + vname(c) +
                       " that is not a [V] vector");
  }
  Value& v = g_.value(c);
  if (v.kind != ValueKind::kParameter && v.kind != ValueKind::kConstant) {
    return unsupported("vocabulary parallelism: the LM head " + where(head_) + " adds a computed bias " + vname(c));
  }
  if (users_[c].size() != 1) {
    return unsupported("vocabulary parallelism: the LM head's bias " + vname(c) + " has other readers");
  }
  TensorShard sh;
  sh.global_name = v.name;
  sh.global_shape = s;
  sh.axis = axis;
  sh.parts = vp_.vtp;
  sh.index = vp_.index;
  GV_ASSIGN_OR_RETURN(Tensor piece, extract_piece(v.data, sh));
  v.shape = piece.shape();
  v.data = std::move(piece);
  bias_shard_ = sh;
  has_bias_shard_ = v.kind == ValueKind::kParameter;
  return Status::ok();
}

void VocabPass::rewrite_embedding() {
  Node& gather = g_.nodes[gather_];
  const ValueId ids = gather.inputs[1];
  const ValueId out = gather.outputs[0];
  const DType it = g_.value(ids).dtype;
  const DType ft = g_.value(emb_param_).dtype;
  const std::string base = gather.name + "/vocab_parallel";
  auto int_scalar = [&](const std::string& name, int64_t x) { return new_constant(name, Tensor::scalar(it, x)); };
  const ValueId start = int_scalar(base + "/start", start_);
  const ValueId end = int_scalar(base + "/end", start_ + local_);
  const ValueId zero = int_scalar(base + "/zero", 0);
  const ValueId below = new_value(base + "/below"), above = new_value(base + "/above"), outside = new_value(base + "/outside");
  const ValueId shifted = new_value(base + "/shifted"), local = new_value(base + "/local_ids");
  const ValueId inside = new_value(base + "/inside"), maskf = new_value(base + "/mask");
  const ValueId mask = new_value(base + "/mask_expanded"), piece = new_value(base + "/piece");
  const ValueId masked = new_value(base + "/masked");
  const auto E = Placement::Kind::kEmbedding;
  std::vector<Node>& pre = before_[gather_];
  pre.push_back(make_node(base + "/Less", "Less", false, {ids, start}, {below}, E));
  pre.push_back(make_node(base + "/GreaterOrEqual", "GreaterOrEqual", false, {ids, end}, {above}, E));
  pre.push_back(make_node(base + "/Or", "Or", false, {below, above}, {outside}, E));
  pre.push_back(make_node(base + "/Sub", "Sub", false, {ids, start}, {shifted}, E));
  pre.push_back(make_node(base + "/Where", "Where", false, {outside, zero, shifted}, {local}, E));
  pre.push_back(make_node(base + "/Not", "Not", false, {outside}, {inside}, E));
  Node cast = make_node(base + "/Cast", "Cast", false, {inside}, {maskf}, E);
  cast.attrs.set_int("to", static_cast<int64_t>(ft));
  pre.push_back(std::move(cast));
  Shape ms = g_.value(ids).shape;
  ms.push_back(1);
  const ValueId ms_const = new_constant(base + "/mask_shape", Tensor::from_i64(ms, {static_cast<int64_t>(ms.size())}));
  pre.push_back(make_node(base + "/Reshape", "Reshape", false, {maskf, ms_const}, {mask}, E));
  gather.inputs[1] = local;
  gather.outputs[0] = piece;
  std::vector<Node>& post = after_[gather_];
  post.push_back(make_node(base + "/Mul", "Mul", false, {piece, mask}, {masked}, E));
  post.push_back(make_node(base + "/TensorParallelReduce", kTensorParallelReduceOp, true, {masked}, {out}, E));
}

Status VocabPass::rewrite_head() {
  const auto H = Placement::Kind::kHead;
  {
    Node& h = g_.nodes[head_];
    const ValueId x = h.inputs[0];
    const ValueId copy = new_value(g_.value(x).name + "/vocab_copy");
    before_[head_].push_back(make_node(h.name + "/TensorParallelCopy", kTensorParallelCopyOp, true, {x}, {copy}, H));
    g_.nodes[head_].inputs[0] = copy;
  }
  ValueId lg = g_.nodes[head_].outputs[0];
  Shape shape = g_.value(lg).shape;  // global shape
  auto readers = [&](ValueId v) {
    std::vector<NodeId> r;
    for (NodeId u : users_[v]) {
      if (std::find(r.begin(), r.end(), u) == r.end()) r.push_back(u);
    }
    return r;
  };
  // Reshapes keeping the vocabulary last.
  for (;;) {
    const std::vector<NodeId> r = readers(lg);
    if (r.size() != 1) break;
    Node& n = g_.nodes[r[0]];
    if (!n.domain.empty() || n.op_type != "Reshape" || n.inputs[0] != lg) break;
    const Shape os = g_.value(n.outputs[0]).shape;
    if (os.empty() || os.back() != vocab_) {
      return unsupported("vocabulary parallelism: " + where(r[0]) + " reshapes the logits " + vname(lg) + " to " +
                         shape_str(os) + ", which does not keep the vocabulary as the last axis");
    }
    Shape local = os;
    local.back() = local_;
    n.inputs[1] = new_constant(n.name + "/vocab_local_shape",
                               Tensor::from_i64(local, {static_cast<int64_t>(local.size())}));
    n.attrs.set_int("allowzero", 0);
    lg = n.outputs[0];
    shape = os;
  }
  const std::vector<NodeId> r = readers(lg);
  Attributes ce_attrs;
  ce_attrs.set_ints("group", std::vector<int64_t>(vp_.group.begin(), vp_.group.end()));
  ce_attrs.set_int("vocab_start", start_);
  ce_attrs.set_int("vocab_size", vocab_);
  if (r.size() == 1) {
    Node& n = g_.nodes[r[0]];
    const bool sce = n.domain.empty() && n.op_type == "SoftmaxCrossEntropyLoss" && n.inputs[0] == lg;
    if (!sce) {
      return unsupported("vocabulary parallelism: the logits " + vname(lg) + " are read by " + where(r[0]) +
                         ", which cannot run on a vocabulary piece (only Reshapes keeping the vocabulary last and one "
                         "SoftmaxCrossEntropyLoss can)");
    }
    if (shape.size() != 2) {
      return unsupported("vocabulary parallelism: " + where(r[0]) + " reads logits " + vname(lg) +
                         "; only [N, V] scores can be split along the vocabulary");
    }
    if (n.inputs.size() > 2 && n.inputs[2] != kNoValue) {
      return unsupported("vocabulary parallelism: " + where(r[0]) + " has class weights");
    }
    if (n.attrs.get_string("reduction", "mean") != "mean") {
      return unsupported("vocabulary parallelism: " + where(r[0]) + " has reduction '" +
                         n.attrs.get_string("reduction", "") + "'; only mean is supported");
    }
    if (n.outputs.size() > 1 && n.outputs[1] != kNoValue && !users_[n.outputs[1]].empty()) {
      return unsupported("vocabulary parallelism: the log-probabilities of " + where(r[0]) + " are read");
    }
    ce_attrs.set_int("ignore_index", n.attrs.has("ignore_index") ? n.attrs.get_int("ignore_index", 0)
                                                                 : std::numeric_limits<int64_t>::min());
    const ValueId loss = n.outputs[0];
    n.op_type = kVocabParallelCrossEntropyOp;
    n.domain = kGalvatronDomain;
    auto it = g_.opsets.find(kGalvatronDomain);
    n.opset = it != g_.opsets.end() ? it->second : 1;
    n.attrs = ce_attrs;
    n.inputs.resize(2);
    n.outputs = {loss};
    g_.outputs = {loss};
    return Status::ok();
  }
  if (!r.empty() || std::find(g_.outputs.begin(), g_.outputs.end(), lg) == g_.outputs.end()) {
    return unsupported("vocabulary parallelism: the logits " + vname(lg) + " are read by " +
                       (r.empty() ? std::string("nothing") : where(r[0]) + " and " + std::to_string(r.size() - 1) +
                                                                 " other nodes") +
                       "; they must be a graph output or go to one SoftmaxCrossEntropyLoss");
  }
  if (g_.find(labels_name_) != kNoValue) {
    return invalid_argument("vocabulary parallelism: the graph already has a value named '" + labels_name_ +
                            "' (the labels input it would add)");
  }
  const Shape label_shape(shape.begin(), shape.end() - 1);
  const int64_t rows = shape_numel(label_shape);
  const ValueId labels = g_.add_input(labels_name_, DType::kInt64, label_shape);
  ce_attrs.set_int("ignore_index", ignore_);
  ValueId flat_logits = lg, flat_labels = labels;
  if (shape.size() != 2) {
    flat_logits = new_value("loss/vocab_logits_2d");
    const ValueId s = new_constant("loss/vocab_logits_shape", Tensor::from_i64({rows, local_}, {2}));
    appended_.push_back(make_node("loss/reshape_logits", "Reshape", false, {lg, s}, {flat_logits}, H));
  }
  if (label_shape.size() != 1) {
    flat_labels = new_value("loss/labels_1d");
    const ValueId s = new_constant("loss/labels_shape", Tensor::from_i64({rows}, {1}));
    appended_.push_back(make_node("loss/reshape_labels", "Reshape", false, {labels, s}, {flat_labels}, H));
  }
  const ValueId loss = new_value("loss");
  Node ce = make_node("loss/vocab_parallel_cross_entropy", kVocabParallelCrossEntropyOp, true,
                      {flat_logits, flat_labels}, {loss}, H);
  ce.attrs = ce_attrs;
  appended_.push_back(std::move(ce));
  g_.outputs = {loss};
  return Status::ok();
}

Status VocabPass::reinfer() {
  std::vector<Node> nodes;
  nodes.reserve(g_.nodes.size() + 16);
  for (size_t i = 0; i < g_.nodes.size(); ++i) {
    for (Node& n : before_[i]) nodes.push_back(std::move(n));
    nodes.push_back(std::move(g_.nodes[i]));
    for (Node& n : after_[i]) nodes.push_back(std::move(n));
  }
  for (Node& n : appended_) nodes.push_back(std::move(n));
  g_.nodes = std::move(nodes);
  for (NodeId n = 0; n < static_cast<NodeId>(g_.nodes.size()); ++n) {
    const Node& node = g_.nodes[n];
    const OpSchema* schema = OpRegistry::global().find(node.domain, node.op_type);
    if (!schema || !schema->infer) {
      return internal_error("vocabulary parallelism: " + where(n) + " has no shape inference");
    }
    InferContext ctx(g_, node);
    Status st = schema->infer(ctx);
    if (!st.is_ok()) return st.with_context("vocabulary parallelism: inferring shapes after the rewrite");
    for (size_t k = 0; k < node.outputs.size(); ++k) {
      if (node.outputs[k] == kNoValue) continue;
      Value& v = g_.value(node.outputs[k]);
      v.dtype = ctx.out_dtypes[k];
      v.shape = ctx.out_shapes[k];
    }
  }
  g_.reindex();
  if (gather_ >= 0) {
    const ValueId out = g_.find(emb_name_);
    if (out == kNoValue || g_.value(out).shape != emb_out_shape_) {
      return internal_error("vocabulary parallelism: the embedding output '" + emb_name_ + "' changed shape");
    }
  }
  return Status::ok();
}

Expected<std::map<std::string, TensorShard>> VocabPass::run() {
  GV_RETURN_IF_ERROR(check_plan());
  std::map<std::string, TensorShard> shards;
  if (vp_.vtp == 1) return shards;
  WeightValues wv = find_weight_values(g_);
  weight_ = std::move(wv.weight);
  users_ = std::move(wv.users);
  GV_RETURN_IF_ERROR(find_head());
  GV_RETURN_IF_ERROR(find_embedding());
  if (head_ < 0 && gather_ < 0) return shards;  // neither part on this rank (a middle pipeline stage)
  if (vocab_ % vp_.vtp != 0) {
    const std::string from = head_ >= 0 ? "the LM head " + where(head_) + "'s weight " + vname(g_.nodes[head_].inputs[1])
                                        : "the word embedding " + vname(emb_param_);
    return invalid_argument("vocabulary parallelism: the vocabulary size " + std::to_string(vocab_) + " (" + from +
                            ") is not divisible by vtp " + std::to_string(vp_.vtp) +
                            "; choose a vtp that divides it (the pass does not pad the vocabulary)");
  }
  local_ = vocab_ / vp_.vtp;
  start_ = vp_.index * local_;
  GV_RETURN_IF_ERROR(cut_parameters(shards));
  before_.assign(g_.nodes.size(), {});
  after_.assign(g_.nodes.size(), {});
  if (gather_ >= 0) {
    emb_name_ = g_.value(g_.nodes[gather_].outputs[0]).name;
    rewrite_embedding();
  }
  if (head_ >= 0) {
    GV_RETURN_IF_ERROR(cut_gemm_bias());
    if (has_bias_shard_) shards[bias_shard_.global_name] = bias_shard_;
    GV_RETURN_IF_ERROR(rewrite_head());
  }
  GV_RETURN_IF_ERROR(reinfer());
  return shards;
}

}  // namespace

Expected<std::map<std::string, TensorShard>> apply_vocab_parallel(Graph& g, const VocabParallel& vp,
                                                                  const std::string& labels_input,
                                                                  int64_t ignore_index) {
  VocabPass pass(g, vp, labels_input, ignore_index);
  return pass.run();
}

}  // namespace gv::partitioner

#include "runtime/training_graph.h"

#include <algorithm>

#include "runtime/autograd.h"
#include "runtime/op_registry.h"
#include "runtime/sharded_tensor.h"
#include "runtime/split_masters.h"

namespace gv {
namespace {

Expected<ValueId> add1(Graph& g, const std::string& op, std::vector<ValueId> inputs, Attributes attrs = {},
                       const std::string& name = "", Placement place = {}) {
  Node n;
  n.op_type = op;
  n.opset = g.opsets.count("") ? g.opsets.at("") : 20;
  n.name = name.empty() ? g.unique_name(op) : name;
  n.inputs = std::move(inputs);
  n.attrs = std::move(attrs);
  n.place = place;
  GV_ASSIGN_OR_RETURN(auto outs, g.add_node(std::move(n)));
  return outs[0];
}

}  // namespace

Status add_in_place_node(Graph& g, const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                         Placement place, const std::string& name) {
  Node n;
  n.op_type = op;
  n.domain = kGalvatronDomain;
  n.opset = 1;
  n.name = name;
  n.inputs = std::move(inputs);
  n.attrs = std::move(attrs);
  n.place = place;
  auto r = g.add_node(std::move(n));
  return r ? Status::ok() : r.status();
}

namespace {

// A parameter's placement: that of its first consumer.
Placement param_place(const Graph& g, ValueId p) {
  for (const Node& n : g.nodes) {
    if (std::find(n.inputs.begin(), n.inputs.end(), p) != n.inputs.end()) return n.place;
  }
  return {};
}

ValueId add_state(Graph& g, const std::string& name, const Value& like) {
  return g.add_initializer(g.unique_name(name), Tensor(like.dtype, like.shape), ValueKind::kState);
}

// Finds or builds the scalar loss: the graph's own scalar float output, else mean cross-entropy of the logits
// against a new `labels` input.
Status attach_loss(TrainingGraph& tg, const TrainingGraphOptions& o) {
  Graph& g = tg.graph;
  auto is_scalar_float = [&](ValueId v) {
    return dtype_is_float(g.value(v).dtype) && shape_numel(g.value(v).shape) == 1;
  };
  if (!o.loss_output.empty()) {
    ValueId v = g.find(o.loss_output);
    if (v == kNoValue || std::find(g.outputs.begin(), g.outputs.end(), v) == g.outputs.end()) {
      return not_found("the graph has no output named '" + o.loss_output + "'");
    }
    if (!is_scalar_float(v)) return invalid_argument("output '" + o.loss_output + "' is not a scalar float loss");
    tg.loss = v;
  } else {
    for (ValueId v : g.outputs) {
      if (is_scalar_float(v)) {
        tg.loss = v;
        break;
      }
    }
  }
  if (tg.loss != kNoValue) {
    if (g.value(tg.loss).shape != Shape{}) {
      GV_ASSIGN_OR_RETURN(tg.loss, add1(g, "Reshape", {tg.loss, g.add_initializer(g.unique_name("scalar_shape"),
                                                           Tensor(DType::kInt64, {0}), ValueKind::kConstant)}));
    }
    g.outputs = {tg.loss};
    return Status::ok();
  }
  ValueId logits = kNoValue;
  for (ValueId v : g.outputs) {
    const Value& val = g.value(v);
    bool named = o.logits_output.empty() ? val.name == "logits" : val.name == o.logits_output;
    if (named) logits = v;
  }
  if (logits == kNoValue && o.logits_output.empty()) {
    for (ValueId v : g.outputs) {
      if (dtype_is_float(g.value(v).dtype) && g.value(v).shape.size() >= 2) {
        logits = v;
        break;
      }
    }
  }
  if (logits == kNoValue) {
    return invalid_argument("the graph has no scalar loss output and no logits output to train on; outputs are: " +
                            [&] {
                              std::string s;
                              for (ValueId v : g.outputs) s += (s.empty() ? "" : ", ") + g.value(v).name;
                              return s;
                            }());
  }
  Shape ls = g.value(logits).shape;
  Shape label_shape(ls.begin(), ls.end() - 1);
  int64_t vocab = ls.back();
  int64_t rows = shape_numel(label_shape);
  if (g.find(o.labels_input) != kNoValue) {
    return invalid_argument("the graph already has a value named '" + o.labels_input + "'");
  }
  tg.labels = g.add_input(o.labels_input, DType::kInt64, label_shape);
  Placement head{Placement::Kind::kHead, -1};
  GV_ASSIGN_OR_RETURN(ValueId flat_logits,
                      add1(g, "Reshape", {logits, g.add_initializer(g.unique_name("logits_2d"),
                                                                    Tensor::from_i64({rows, vocab}, {2}),
                                                                    ValueKind::kConstant)}, {}, "loss/reshape_logits", head));
  GV_ASSIGN_OR_RETURN(ValueId flat_labels,
                      add1(g, "Reshape", {tg.labels, g.add_initializer(g.unique_name("labels_1d"),
                                                                       Tensor::from_i64({rows}, {1}),
                                                                       ValueKind::kConstant)}, {}, "loss/reshape_labels", head));
  Attributes a;
  a.set_string("reduction", "mean");
  a.set_int("ignore_index", o.ignore_index);
  GV_ASSIGN_OR_RETURN(tg.loss, add1(g, "SoftmaxCrossEntropyLoss", {flat_logits, flat_labels}, a, "loss/cross_entropy", head));
  g.outputs = {tg.loss};
  return Status::ok();
}

int position_in(const std::vector<int>& group, int rank) {
  for (size_t i = 0; i < group.size(); ++i) {
    if (group[i] == rank) return static_cast<int>(i);
  }
  return -1;
}

Attributes group_attrs(const std::vector<int>& group) {
  Attributes a;
  a.set_ints("group", std::vector<int64_t>(group.begin(), group.end()));
  return a;
}

// Pipeline stages: Recv outputs that the sender differentiates through.
std::vector<NodeId> recv_nodes_with_grad(const Graph& g) {
  std::vector<NodeId> out;
  for (NodeId i = 0; i < static_cast<NodeId>(g.nodes.size()); ++i) {
    const Node& n = g.nodes[i];
    if (n.domain == kGalvatronDomain && n.op_type == "Recv" && n.attrs.get_int("requires_grad", 0) == 1) {
      out.push_back(i);
    }
  }
  return out;
}

// Sends the gradient of each received activation back to its sender (zeros when the loss does not depend on it).
Status send_back_gradients(Graph& g, const std::vector<NodeId>& recvs, const std::map<ValueId, ValueId>& grads) {
  for (NodeId id : recvs) {
    const Node recv = g.nodes[id];
    const ValueId y = recv.outputs[0];
    ValueId grad = grads.count(y) ? grads.at(y) : kNoValue;
    if (grad == kNoValue) {
      grad = g.add_initializer(g.unique_name(g.value(y).name + "/zero_grad"),
                               Tensor(g.value(y).dtype, g.value(y).shape), ValueKind::kConstant);
    }
    Node n;
    n.op_type = "Send";
    n.domain = kGalvatronDomain;
    n.opset = 1;
    n.name = g.unique_name("send_grad/" + g.value(y).name);
    n.inputs = {grad};
    n.attrs.set_int("peer", recv.attrs.get_int("peer", 0));
    n.attrs.set_int("tag", recv.attrs.get_int("tag", 0) + 1);
    n.attrs.set_int("requires_grad", 0);
    GV_RETURN_IF_ERROR(g.add_node(std::move(n)).status());
  }
  return Status::ok();
}

bool has_pipeline_nodes(const Graph& g) {
  for (const Node& n : g.nodes) {
    if (n.domain == kGalvatronDomain && (n.op_type == "Send" || n.op_type == "Recv")) return true;
  }
  return false;
}

bool refers_to(const Node& n, ValueId v) {
  return std::find(n.inputs.begin(), n.inputs.end(), v) != n.inputs.end() ||
         std::find(n.outputs.begin(), n.outputs.end(), v) != n.outputs.end();
}

// One data-parallel gradient reduction of the optimizer region that overlap_grad_sync moves into the backward pass:
// `nodes` (in order; the last one is the collective, marked async) go right after the last backward node that reads
// or writes `grad`; `in_flight` (if any) is a buffer the collective reads that nothing after it uses, which
// WaitCollectives keeps alive. Plain DP: {AllReduce(grad)}, in place. ZeRO-2: {Reshape(grad) -> flat,
// ReduceScatter(flat) -> shard}, with flat in flight.
struct GradSync {
  ValueId grad = kNoValue;
  std::vector<NodeId> nodes;
  ValueId in_flight = kNoValue;
  std::vector<NodeId> after_wait;  // nodes that go right after the wait (bf16_grad_reduce's widening Cast)
};

// TrainingGraphOptions::overlap_grad_sync: moves each GradSync to right after the last node of [backward_begin,
// optimizer_begin) that reads or writes its gradient, marks its collective async, and ends the backward region with
// one WaitCollectives over the in-flight buffers. Nothing after that node touches the gradient before the optimizer
// region, and the buffers the collectives use live until the wait (the memory planner: the update reads the all-reduced
// gradient after it, WaitCollectives reads the reduce-scatter inputs; a value an output-less node writes is never
// aliased by a view, and WaitCollectives only reads), so a collective still in flight on another stream races with
// nothing. Gradients not produced in the backward region stay put. ZeRO-2's parameter gathers after the updates
// (`gathers`) become async as well, with a WaitCollectives at the end of the step: each gather runs while the
// next parameters are updated.
Status overlap_gradient_sync(TrainingGraph& tg, const std::vector<GradSync>& syncs, const std::vector<NodeId>& gathers) {
  Graph& g = tg.graph;
  const size_t opt = tg.optimizer_begin;
  std::map<size_t, std::vector<NodeId>> after;  // backward node -> the nodes that follow it, in graph order
  std::set<NodeId> moved;
  std::vector<ValueId> in_flight;
  std::vector<NodeId> after_wait;
  for (const GradSync& sync : syncs) {
    if (g.value(sync.grad).kind != ValueKind::kActivation) continue;
    size_t last = opt;
    for (size_t i = opt; i-- > tg.backward_begin;) {
      if (refers_to(g.nodes[i], sync.grad)) {
        last = i;
        break;
      }
    }
    if (last == opt) continue;
    auto& slot = after[last];
    slot.insert(slot.end(), sync.nodes.begin(), sync.nodes.end());
    moved.insert(sync.nodes.begin(), sync.nodes.end());
    g.nodes[sync.nodes.back()].attrs.set_int("async", 1);
    if (sync.in_flight != kNoValue) in_flight.push_back(sync.in_flight);
    after_wait.insert(after_wait.end(), sync.after_wait.begin(), sync.after_wait.end());
    moved.insert(sync.after_wait.begin(), sync.after_wait.end());
  }
  if (moved.empty() && gathers.empty()) return Status::ok();
  for (NodeId id : gathers) g.nodes[id].attrs.set_int("async", 1);
  auto add_wait = [&g](const std::vector<ValueId>& inputs) -> Expected<NodeId> {
    GV_RETURN_IF_ERROR(add_in_place_node(g, "WaitCollectives", inputs, {}, {}, g.unique_name("wait_collectives")));
    return static_cast<NodeId>(g.nodes.size()) - 1;
  };
  const size_t n_old = g.nodes.size();
  GV_ASSIGN_OR_RETURN(const NodeId wait, add_wait(in_flight));
  NodeId final_wait = -1;
  if (!gathers.empty()) {
    GV_ASSIGN_OR_RETURN(final_wait, add_wait({}));
  }
  std::vector<NodeId> order;
  order.reserve(g.nodes.size());
  for (size_t i = 0; i < opt; ++i) {
    order.push_back(static_cast<NodeId>(i));
    auto it = after.find(i);
    if (it != after.end()) order.insert(order.end(), it->second.begin(), it->second.end());
  }
  order.push_back(wait);
  order.insert(order.end(), after_wait.begin(), after_wait.end());
  const size_t optimizer_begin = order.size();
  for (size_t i = opt; i < n_old; ++i) {
    if (!moved.count(static_cast<NodeId>(i))) order.push_back(static_cast<NodeId>(i));
  }
  if (final_wait >= 0) order.push_back(final_wait);
  if (!g.reorder_nodes(order)) return internal_error("overlap_grad_sync: lost nodes while reordering");
  tg.optimizer_begin = optimizer_begin;
  return Status::ok();
}

constexpr int64_t kOnnxFloat = 1, kOnnxBFloat16 = 16;

// A float32 gradient written by a galvatron FusedMatMul (a weight's dW product) as its only output: the product
// writes a new bf16 value <pname>.grad_bf16 instead (out_dtype 16), which is returned; kNoValue when `grad` has no such
// producer. `grad` stays an orphan value (nothing writes or reads it): dropping it would renumber the values that the
// training graph's maps hold.
ValueId product_writes_bf16_grad(Graph& g, ValueId grad, const std::string& pname) {
  const NodeId producer = g.value(grad).producer;
  if (producer < 0 || g.value(grad).dtype != DType::kFloat32 || g.nodes[producer].op_type != "FusedMatMul" ||
      g.nodes[producer].domain != kGalvatronDomain || g.nodes[producer].outputs[0] != grad) {
    return kNoValue;
  }
  Value v;
  v.name = g.unique_name(pname + ".grad_bf16");
  v.dtype = DType::kBFloat16;
  v.shape = g.value(grad).shape;
  const ValueId copy = g.add_value(std::move(v));
  Node& mm = g.nodes[producer];
  mm.attrs.set_int("out_dtype", kOnnxBFloat16);
  mm.outputs[0] = copy;
  g.value(copy).producer = producer;
  return copy;
}

// accumulate_in_products: the float32 FusedMatMul that writes `grad` becomes MatMulAccumulate(acc, A, B), adding into
// the accumulator where it stood; `grad` is left without a producer (nothing reads it). False if another op makes it.
bool product_accumulates(Graph& g, ValueId grad, ValueId acc) {
  const NodeId producer = g.value(grad).producer;
  if (producer < 0) return false;
  Node& mm = g.nodes[producer];
  if (mm.op_type != "FusedMatMul" || mm.domain != kGalvatronDomain || mm.outputs.size() != 1 || mm.outputs[0] != grad ||
      g.value(grad).dtype != DType::kFloat32 || shape_numel(g.value(grad).shape) != shape_numel(g.value(acc).shape)) {
    return false;
  }
  mm.op_type = "MatMulAccumulate";
  mm.inputs.insert(mm.inputs.begin(), acc);
  mm.outputs.clear();
  mm.attrs.erase("out_dtype");
  g.value(grad).producer = -1;
  return true;
}

// For ZeRO-2 in bf16 (see build_training_graph): parameter -> its bf16 copy (a bf16_copy/ Cast of it) for each
// parameter that only that Cast reads in [0, optimizer_begin); empty unless bf16_grad_reduce, the bf16 copies kept by
// AdamW, AdamW reading bf16 gradients, and one micro-batch.
std::map<ValueId, ValueId> zero2_bf16_copies(const Graph& g, const TrainingGraphOptions& o, size_t optimizer_begin) {
  std::map<ValueId, ValueId> copies;
  if (!o.bf16_grad_reduce || !o.bf16_operands || !o.optimizer_bf16_copies || !o.optimizer_reads_bf16_grads ||
      o.grad_accum_steps != 1 || o.optimizer.kind != OptimizerConfig::Kind::kAdamW) {
    return copies;
  }
  std::map<ValueId, int> readers;
  for (size_t i = 0; i < optimizer_begin && i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    for (ValueId v : n.inputs) {
      if (v != kNoValue && g.value(v).kind == ValueKind::kParameter) ++readers[v];
    }
    if (is_bf16_param_copy(g, n)) copies[n.inputs[0]] = n.outputs[0];
  }
  for (auto it = copies.begin(); it != copies.end();) it = readers[it->first] == 1 ? std::next(it) : copies.erase(it);
  return copies;
}

// The bf16 copy of the float32 gradient `grad` that a bf16 sync sends: with `fold`, written by its dW product itself
// (product_writes_bf16_grad), else by a Cast named `cast_name` whose node joins gs.nodes. gs.grad becomes the value
// the backward pass writes last (the folded copy, or `grad`).
Expected<ValueId> bf16_grad_copy(Graph& g, ValueId grad, bool fold, const Placement& place, const std::string& pname,
                                 const std::string& cast_name, GradSync& gs) {
  const ValueId folded = fold ? product_writes_bf16_grad(g, grad, pname) : kNoValue;
  gs.grad = folded != kNoValue ? folded : grad;
  if (folded != kNoValue) return folded;
  Attributes to;
  to.set_int("to", kOnnxBFloat16);
  gs.nodes.push_back(static_cast<NodeId>(g.nodes.size()));
  return add1(g, "Cast", {grad}, to, g.unique_name(cast_name), place);
}

// TrainingGraphOptions::bf16_grad_reduce for one float32 gradient `grad` of a plain DP all-reduce: Cast(grad) -> bf16
// copy [, ZeroBuffer(accumulator) when `clear` is given], AllReduce(copy) (the sync), then Cast(copy) -> float32 for the
// norm and the update (after the wait under overlap). With `fold`, the gradient's producer, a FusedMatMul (a weight's
// dW) whose output only this sync reads, writes the bf16 copy itself and the first Cast is not made. Returns the
// widened gradient, or without `widen` the reduced bf16 copy itself (which GradNorm and AdamW read as it is).
Expected<ValueId> add_bf16_grad_sync(Graph& g, ValueId grad, bool fold, ValueId clear, bool widen,
                                     const Attributes& reduce, const Placement& place, const std::string& pname,
                                     GradSync& gs) {
  GV_ASSIGN_OR_RETURN(const ValueId copy, bf16_grad_copy(g, grad, fold, place, pname, "grad_reduce/bf16/" + pname, gs));
  if (gs.grad == grad && clear != kNoValue) {  // the Cast read the accumulator: it can be cleared now
    GV_RETURN_IF_ERROR(add_in_place_node(g, "ZeroBuffer", {clear}, {}, place, g.unique_name("grad_reduce/clear/" + pname)));
  }
  gs.nodes.push_back(static_cast<NodeId>(g.nodes.size()));
  GV_RETURN_IF_ERROR(add_in_place_node(g, "AllReduce", {copy}, reduce, place, g.unique_name("all_reduce/" + pname)));
  if (!widen) return copy;  // the gradient norm and AdamW read the reduced bf16 gradient themselves
  Attributes back;
  back.set_int("to", kOnnxFloat);
  gs.after_wait.push_back(static_cast<NodeId>(g.nodes.size()));
  return add1(g, "Cast", {copy}, back, g.unique_name("grad_reduce/float/" + pname), place);
}

}  // namespace

Expected<TrainingGraph> build_training_graph(Graph forward, const TrainingGraphOptions& o) {
  TrainingGraph tg;
  tg.graph = std::move(forward);
  Graph& g = tg.graph;
  if (!g.opsets.count(kGalvatronDomain)) g.opsets[kGalvatronDomain] = 1;
  GV_RETURN_IF_ERROR(attach_loss(tg, o));
  if (o.fuse_ops) {
    // The passes renumber values: find the loss and labels again by name.
    const std::string loss = g.value(tg.loss).name;
    const std::string labels = tg.labels == kNoValue ? "" : g.value(tg.labels).name;
    GV_ASSIGN_OR_RETURN(tg.fused, fuse_forward_graph(g));
    if (o.save_attention_lse) GV_RETURN_IF_ERROR(save_attention_lse(g, &tg.fused.attention_lse));
    if (o.save_norm_statistics) GV_RETURN_IF_ERROR(save_norm_statistics(g, &tg.fused.norm_statistics));
    if (o.save_attention_lse && o.pack_attention_qkv) {
      GV_RETURN_IF_ERROR(pack_attention_qkv(g, &tg.fused.attention_packed));
    }
    if (o.fuse_linear_cross_entropy) {
      const std::set<std::string> keep(o.report_grads_of.begin(), o.report_grads_of.end());
      GV_RETURN_IF_ERROR(fuse_linear_cross_entropy(g, keep, &tg.fused.linear_cross_entropy));
    }
    if (o.fuse_linear) {
      const std::set<std::string> keep(o.report_grads_of.begin(), o.report_grads_of.end());
      GV_RETURN_IF_ERROR(fuse_linear(g, keep, &tg.fused.linear));
      if (o.fuse_sibling_linears) {
        GV_RETURN_IF_ERROR(fuse_sibling_linears(g, &tg.fused.sibling_linears));
      }
    }
    if (o.fuse_residual_add) {
      const std::set<std::string> keep(o.report_grads_of.begin(), o.report_grads_of.end());
      GV_RETURN_IF_ERROR(fuse_linear_residual_adds(g, keep, &tg.fused.residual_adds));
    }
    tg.loss = g.find(loss);
    tg.labels = labels.empty() ? kNoValue : g.find(labels);
  }
  tg.params = g.parameters();
  if (tg.params.empty()) return invalid_argument("the model has no trainable parameters");

  if (o.padding_idx >= 0) {
    ValueId tokens = g.find(o.token_input);
    int tagged = 0;
    for (Node& n : g.nodes) {
      if (n.op_type != "Gather" || n.inputs.size() < 2 || n.inputs[1] != tokens || tokens == kNoValue) continue;
      if (g.value(n.inputs[0]).kind != ValueKind::kParameter) continue;
      n.attrs.set_int("padding_idx", o.padding_idx);
      ++tagged;
    }
    if (tagged == 0) {
      return invalid_argument("padding index " + std::to_string(o.padding_idx) + " given, but no embedding lookup "
                              "(Gather of a parameter by '" + o.token_input + "') was found");
    }
  }
  tg.backward_begin = g.nodes.size();
  std::vector<ValueId> wrt = tg.params;
  for (const std::string& name : o.report_grads_of) {
    ValueId v = g.find(name);
    if (v == kNoValue) return not_found("no value named '" + name + "' to report the gradient of");
    wrt.push_back(v);
  }
  const std::vector<NodeId> recvs = recv_nodes_with_grad(g);
  for (NodeId id : recvs) wrt.push_back(g.nodes[id].outputs[0]);
  GV_ASSIGN_OR_RETURN(AutogradResult ag, build_backward(g, tg.loss, wrt));
  for (const std::string& name : o.report_grads_of) tg.reported_grads[name] = ag.grads[g.find(name)];
  GV_RETURN_IF_ERROR(send_back_gradients(g, recvs, ag.grads));
  if (!o.checkpoint_layers.empty()) {
    GV_RETURN_IF_ERROR(apply_activation_checkpointing(g, tg.backward_begin, o.checkpoint_layers));
  }
  GV_RETURN_IF_ERROR(rematerialize_marked_nodes(g, tg.backward_begin));
  if (o.fuse_ops && o.fuse_norm_grad_add) {
    GV_RETURN_IF_ERROR(fuse_norm_grad_residual_adds(g, tg.backward_begin, &tg.fused.norm_grad_adds));
  }
  if (o.fuse_ops && o.fold_gather_grad_adds) {
    GV_RETURN_IF_ERROR(fold_gather_grad_adds(g, tg.backward_begin, &tg.fused.gather_grad_adds));
  }
  if (o.bf16_operands) {
    GV_RETURN_IF_ERROR(share_bf16_operands(g, o.bf16_operand_options, &tg.backward_begin, &tg.fused.bf16_operands,
                                           &tg.fused.bf16_linear_outputs, &tg.fused.bf16_attention_grads,
                                           &tg.fused.bf16_norm_outputs));
    if (o.bf16_attention_io) {
      GV_RETURN_IF_ERROR(bf16_attention_io(g, &tg.backward_begin, &tg.fused.bf16_attention_io));
    }
  }
  if (o.fuse_gelu_grad_product) {
    GV_RETURN_IF_ERROR(fuse_gelu_grad_products(g, tg.backward_begin, &tg.fused.gelu_grad_products));
  }
  if (o.fuse_ops && o.sum_grads_in_products) {
    std::set<ValueId> held;  // gradients the maps below and the reported ones refer to by id
    for (const auto& [v, grad] : ag.grads) held.insert(grad);
    GV_RETURN_IF_ERROR(sum_grads_in_products(g, tg.backward_begin, held, &tg.fused.grad_sums_in_products));
  }
  if (o.bf16_operands && o.fuse_norm_grad_outputs) {
    GV_RETURN_IF_ERROR(fuse_norm_grad_outputs(g, tg.backward_begin, &tg.fused.norm_grad_outputs));
  }
  if (o.attention_saved_head_multiple > 0) {
    GV_RETURN_IF_ERROR(save_attention_heads(g, o.attention_saved_head_multiple, &tg.fused.attention_saved_heads));
  }
  if (o.fuse_ops && o.fuse_attention_bias_sums) {
    GV_RETURN_IF_ERROR(fuse_attention_grad_bias_sums(g, tg.backward_begin, &tg.fused.attention_bias_sums));
  }
  if (o.fuse_ops && o.fuse_residual_add && o.fuse_skip_norm != 0) {
    if (o.fuse_skip_norm != 1 && o.fuse_skip_norm != 16) {
      return invalid_argument("fuse_skip_norm must be 0, 1 (float32) or 16 (bfloat16), got " +
                              std::to_string(o.fuse_skip_norm));
    }
    const DType branch = o.fuse_skip_norm == 16 ? DType::kBFloat16 : DType::kFloat32;
    GV_RETURN_IF_ERROR(fuse_skip_layer_norms(g, branch, &tg.fused.skip_norms));
    if (o.bf16_residual_stream && branch == DType::kBFloat16 && o.bf16_operands && o.fuse_norm_grad_outputs) {
      GV_RETURN_IF_ERROR(bf16_residual_stream(g, &tg.fused.bf16_residual_stream));
    }
  }
  // Parameters the loss does not depend on have no gradient; like PyTorch (grad None) the optimizer skips them.
  std::vector<ValueId> trained;
  for (ValueId p : tg.params) {
    if (ag.grads[p] != kNoValue) trained.push_back(p), tg.grads[p] = ag.grads[p];
  }
  tg.params = trained;

  // Gradient accumulation over micro-batches: add each gradient into a persistent buffer, inside the gradient's
  // product where it may (accumulate_in_products), else by an AccumulateGrad after the backward pass.
  std::map<ValueId, ValueId> final_grad;
  std::vector<int> grad_uses;
  std::set<ValueId> kept_grads(g.outputs.begin(), g.outputs.end());
  for (const auto& [name, v] : tg.reported_grads) kept_grads.insert(v);
  if (o.grad_accum_steps > 1 && o.accumulate_in_products) grad_uses = g.use_counts();
  for (ValueId p : tg.params) {
    ValueId grad = tg.grads[p];
    if (o.grad_accum_steps > 1) {
      ValueId acc = add_state(g, g.value(p).name + ".grad_accum", g.value(p));
      tg.grad_accumulators[p] = acc;
      final_grad[p] = acc;
      if (!grad_uses.empty() && grad_uses[grad] == 0 && !kept_grads.count(grad) && product_accumulates(g, grad, acc)) {
        ++tg.fused.accumulating_products;
        continue;
      }
      GV_RETURN_IF_ERROR(add_in_place_node(g, "AccumulateGrad", {acc, grad}, {}, param_place(g, p),
                                           g.unique_name("accumulate/" + g.value(p).name)));
    } else {
      final_grad[p] = grad;
    }
  }
  tg.optimizer_begin = g.nodes.size();
  // Gradient synchronisation, first in the optimizer region so that the norm, clipping and updates see the global
  // gradient: sums over data-parallel replicas (all-reduce, or reduce-scatter for ZeRO-2) and over pipeline stages
  // holding tied copies.
  std::map<ValueId, TrainingGraphOptions::ParamSync> sync;
  for (ValueId p : tg.params) {
    auto it = o.param_sync.find(g.value(p).name);
    if (it != o.param_sync.end()) sync[p] = it->second;
  }
  // Whether the data-parallel syncs will move into the backward pass (overlap_gradient_sync below).
  const bool overlap = o.overlap_grad_sync && o.grad_accum_steps == 1 && !has_pipeline_nodes(g);
  // bf16_grad_reduce: which gradients a product may write in bf16 (read by nothing yet, not reported or output), and
  // the parameters whose update reads a fresh widened gradient (their accumulator is cleared by the sync instead).
  const std::vector<int> uses = g.use_counts();
  std::vector<char> is_output(g.values.size(), 0);
  for (ValueId v : g.outputs) is_output[v] = 1;
  std::set<ValueId> reported;
  for (const auto& [name, v] : tg.reported_grads) reported.insert(v);
  std::set<ValueId> fresh_grad;
  std::map<ValueId, std::vector<int64_t>> zero2_sizes;  // param -> flat shard sizes over its dp_group
  // ZeRO-2 in bf16 (bf16_grad_reduce with the weights' bf16 copies kept by AdamW): parameter -> its bf16 copy, for
  // the parameters that nothing but that copy's Cast reads. Their gradient is reduce-scattered in bf16 and AdamW
  // writes the shard's range of the copy, which is gathered instead of the float32 parameter (half the bytes both
  // ways); the float32 values stay current only in this rank's range (TrainingGraph::sharded_masters).
  const std::map<ValueId, ValueId> bf16_zero2 = zero2_bf16_copies(g, o, tg.optimizer_begin);
  std::set<ValueId> bf16_sharded;
  std::vector<GradSync> dp_syncs;                       // data-parallel gradient reductions (overlap_grad_sync)
  std::vector<NodeId> zero2_gathers;                    // ZeRO-2's parameter gathers (overlap_grad_sync)
  for (ValueId p : tg.params) {
    if (!sync.count(p)) continue;
    const auto& ps = sync[p];
    const Placement place = param_place(g, p);
    const std::string pname = g.value(p).name;
    if (ps.dp_group.size() > 1) {
      const int64_t n = shape_numel(g.value(p).shape);
      const int d = static_cast<int>(ps.dp_group.size());
      const int me = position_in(ps.dp_group, o.rank);
      if (me < 0) return invalid_argument("parameter '" + pname + "': rank " + std::to_string(o.rank) +
                                          " is not in its data-parallel group");
      if (ps.zero2 && n >= d) {
        std::vector<int64_t> sizes = flat_shard_sizes(n, d);
        Attributes a = group_attrs(ps.dp_group);
        a.set_ints("sizes", sizes);
        GradSync gs;
        gs.grad = final_grad[p];
        ValueId to_scatter = final_grad[p];
        if (bf16_zero2.count(p)) {
          // The dW product writes the bf16 gradient itself where only this sync reads it; otherwise a Cast.
          const ValueId grad = final_grad[p];
          const bool fold = uses[grad] == 0 && !is_output[grad] && !reported.count(grad);
          GV_ASSIGN_OR_RETURN(to_scatter, bf16_grad_copy(g, grad, fold, place, pname, "zero2/bf16/" + pname, gs));
          if (gs.grad == to_scatter) tg.grads[p] = to_scatter;  // folded: the float32 gradient is gone
          bf16_sharded.insert(p);
        }
        gs.nodes.push_back(static_cast<NodeId>(g.nodes.size()));
        GV_ASSIGN_OR_RETURN(ValueId flat, add1(g, "Reshape", {to_scatter, g.add_initializer(
                                                  g.unique_name("flat_shape"), Tensor::from_i64({n}, {1}),
                                                  ValueKind::kConstant)}, {}, g.unique_name("zero2/flatten/" + pname),
                                              place));
        Node rs;
        rs.op_type = "ReduceScatter";
        rs.domain = kGalvatronDomain;
        rs.opset = 1;
        rs.name = g.unique_name("zero2/reduce_scatter/" + pname);
        rs.inputs = {flat};
        rs.attrs = a;
        rs.place = place;
        gs.nodes.push_back(static_cast<NodeId>(g.nodes.size()));
        gs.in_flight = flat;
        GV_ASSIGN_OR_RETURN(auto outs, g.add_node(std::move(rs)));
        dp_syncs.push_back(std::move(gs));
        if (o.grad_accum_steps > 1) {
          // The accumulator was read: clear it for the next step (the update reads the reduced shard instead).
          GV_RETURN_IF_ERROR(add_in_place_node(g, "ZeroBuffer", {final_grad[p]}, {}, place,
                                        g.unique_name("zero2/clear/" + pname)));
        }
        final_grad[p] = outs[0];
        int64_t begin = 0;
        for (int i = 0; i < me; ++i) begin += sizes[i];
        tg.optimizer_state_range[p] = {begin, begin + sizes[me]};
        zero2_sizes[p] = sizes;
      } else if (o.bf16_grad_reduce && g.value(final_grad[p]).dtype == DType::kFloat32 &&
                 n >= o.bf16_grad_reduce_min_numel) {
        Attributes a = group_attrs(ps.dp_group);
        a.set_string("reduction", "sum");
        const ValueId grad = final_grad[p];
        const bool fold = o.bf16_operands && overlap && uses[grad] == 0 && !is_output[grad] && !reported.count(grad);
        const ValueId clear = o.grad_accum_steps > 1 ? grad : kNoValue;  // the accumulator, read by the Cast
        GradSync gs;
        // AdamW takes a bf16 gradient; SGD (and a gradient reported by name) gets the widened float32 one.
        const bool widen = !o.optimizer_reads_bf16_grads || o.optimizer.kind != OptimizerConfig::Kind::kAdamW ||
                           reported.count(grad) > 0;
        GV_ASSIGN_OR_RETURN(final_grad[p], add_bf16_grad_sync(g, grad, fold, clear, widen, a, place, pname, gs));
        if (clear != kNoValue) fresh_grad.insert(p);
        if (overlap) tg.grads[p] = final_grad[p];  // computed before optimizer_begin (after the wait)
        dp_syncs.push_back(std::move(gs));
      } else {
        Attributes a = group_attrs(ps.dp_group);
        a.set_string("reduction", "sum");
        GradSync gs;
        gs.grad = final_grad[p];
        gs.nodes.push_back(static_cast<NodeId>(g.nodes.size()));
        dp_syncs.push_back(std::move(gs));
        GV_RETURN_IF_ERROR(add_in_place_node(g, "AllReduce", {final_grad[p]}, a, place,
                                      g.unique_name("all_reduce/" + pname)));
      }
    }
    if (ps.tied_group.size() > 1) {
      Attributes a = group_attrs(ps.tied_group);
      a.set_string("reduction", "sum");
      GV_RETURN_IF_ERROR(add_in_place_node(g, "AllReduce", {final_grad[p]}, a, place,
                                    g.unique_name("tied_all_reduce/" + pname)));
    }
  }

  // bf16_weight_grads: a weight gradient that only the norm and the update will read, made by a dW product on bf16
  // operands, is written by that product in bf16 (as PyTorch's autocast rounds it); no collective, accumulation or
  // report may need it in float32.
  if (o.bf16_weight_grads && o.bf16_operands && o.optimizer_reads_bf16_grads && o.grad_accum_steps == 1 &&
      o.optimizer.kind == OptimizerConfig::Kind::kAdamW) {
    for (ValueId p : tg.params) {
      const auto ps = sync.find(p);
      if (ps != sync.end() && (ps->second.dp_group.size() > 1 || ps->second.tied_group.size() > 1)) continue;
      const ValueId grad = final_grad[p];
      if (uses[grad] != 0 || is_output[grad] || reported.count(grad)) continue;
      const ValueId copy = product_writes_bf16_grad(g, grad, g.value(p).name);
      if (copy == kNoValue) continue;
      final_grad[p] = copy;
      tg.grads[p] = copy;
      ++tg.fused.bf16_weight_grads;
    }
  }

  // Global gradient norm (for clipping and metrics), then one update node per parameter.
  tg.lr = g.add_input("galvatron.lr", DType::kFloat64, {});
  tg.step = g.add_input("galvatron.step", DType::kInt64, {});
  const double grad_scale = 1.0 / (static_cast<double>(o.grad_accum_steps) * std::max(o.loss_replicas, 1));
  std::vector<ValueId> all_grads;
  std::vector<float> norm_weights;
  for (ValueId p : tg.params) {
    all_grads.push_back(final_grad[p]);
    norm_weights.push_back(sync.count(p) ? static_cast<float>(sync[p].norm_weight) : 1.0f);
  }
  {
    Node n;
    n.op_type = "GradNorm";
    n.domain = kGalvatronDomain;
    n.opset = 1;
    n.name = "optimizer/grad_norm";
    n.inputs = all_grads;
    n.attrs.set_float("scale", grad_scale);
    if (o.global_grad_norm) {
      n.attrs.set_floats("weights", norm_weights);
      n.attrs.set_int("all_reduce", 1);
    }
    GV_ASSIGN_OR_RETURN(auto outs, g.add_node(std::move(n), {"galvatron.grad_norm"}));
    tg.grad_norm = outs[0];
  }
  const OptimizerConfig& oc = o.optimizer;
  // Parameters whose shared bf16 copy AdamW will keep (keep_bf16_param_copies, below) take a node of their own.
  std::set<ValueId> keeps_copy;
  if (o.optimizer_bf16_copies && o.bf16_operands) {
    for (const Node& n : g.nodes) {
      if (is_bf16_param_copy(g, n)) keeps_copy.insert(n.inputs[0]);
    }
  }
  // Small whole parameters (biases, norm scales) are updated kMultiChunk at a time by AdamWMulti nodes, after the
  // per-parameter updates: one kernel launch each instead of one per parameter.
  constexpr int64_t kMultiMaxNumel = int64_t{1} << 20;
  constexpr size_t kMultiChunk = 48;
  std::vector<ValueId> multi_inputs;
  Attributes multi_attrs;
  Placement multi_place;
  size_t multi_count = 0;
  int multi_nodes = 0;
  auto flush_multi = [&]() -> Status {
    if (multi_count == 0) return Status::ok();
    std::vector<ValueId> in = {tg.lr, tg.step, tg.grad_norm};
    in.insert(in.end(), multi_inputs.begin(), multi_inputs.end());
    GV_RETURN_IF_ERROR(add_in_place_node(g, "AdamWMulti", std::move(in), multi_attrs, multi_place,
                                  "optimizer/adamw_multi/" + std::to_string(multi_nodes++)));
    multi_inputs.clear();
    multi_count = 0;
    return Status::ok();
  };
  for (ValueId p : tg.params) {
    const Value& pv = g.value(p);
    Attributes a;
    a.set_float("grad_scale", grad_scale);
    a.set_float("max_norm", (oc.grad_clip));
    a.set_float("weight_decay", (oc.weight_decay));
    a.set_int("zero_grad", o.grad_accum_steps > 1 && !fresh_grad.count(p) ? 1 : 0);
    Placement place = param_place(g, p);
    std::string pname = pv.name;
    // ZeRO-2: the optimizer state covers this rank's flat range of the parameter only.
    const bool sharded = tg.optimizer_state_range.count(p) > 0;
    Value state_like = sharded ? g.value(final_grad[p]) : g.value(p);
    state_like.dtype = g.value(p).dtype;  // a bf16 gradient shard's state is the parameter's type
    if (sharded) {
      a.set_int("shard_offset", tg.optimizer_state_range[p].first);
      a.set_int("zero_grad", 0);  // the shard is a fresh value each step; the accumulator was cleared above
    }
    if (oc.kind == OptimizerConfig::Kind::kAdamW) {
      ValueId m = add_state(g, pname + ".exp_avg", state_like);
      ValueId v = add_state(g, pname + ".exp_avg_sq", state_like);
      tg.optimizer_state[p] = {m, v};
      a.set_float("beta1", (oc.beta1));
      a.set_float("beta2", (oc.beta2));
      a.set_float("epsilon", (oc.eps));
      // (g.value(p) again: add_state above may have moved the values, and `pv` with them)
      const bool multi = o.multi_tensor_optimizer && !sharded && shape_numel(g.value(p).shape) < kMultiMaxNumel &&
                         g.value(p).dtype == g.value(final_grad[p]).dtype && !keeps_copy.count(p);
      if (multi) {
        // One node's attributes serve all its parameters: a parameter that zeroes its gradient otherwise starts a node.
        if (multi_count > 0 && multi_attrs.get_int("zero_grad", 0) != a.get_int("zero_grad", 0)) {
          GV_RETURN_IF_ERROR(flush_multi());
        }
        if (multi_count == 0) multi_attrs = a, multi_place = place;
        multi_inputs.insert(multi_inputs.end(), {p, final_grad[p], m, v});
        if (++multi_count == kMultiChunk) GV_RETURN_IF_ERROR(flush_multi());
        continue;
      }
      GV_RETURN_IF_ERROR(add_in_place_node(g, "AdamW", {p, final_grad[p], m, v, tg.lr, tg.step, tg.grad_norm}, a, place,
                                    "optimizer/adamw/" + pname));
    } else {
      ValueId buf = add_state(g, pname + ".momentum_buffer", state_like);
      tg.optimizer_state[p] = {buf};
      a.set_float("momentum", (oc.momentum));
      a.set_float("dampening", (oc.dampening));
      a.set_int("nesterov", oc.nesterov ? 1 : 0);
      GV_RETURN_IF_ERROR(add_in_place_node(g, "SGD", {p, final_grad[p], buf, tg.lr, tg.step, tg.grad_norm}, a, place,
                                    "optimizer/sgd/" + pname));
    }
    if (sharded) {
      Attributes ga = group_attrs(sync[p].dp_group);
      ga.set_ints("sizes", zero2_sizes[p]);
      zero2_gathers.push_back(static_cast<NodeId>(g.nodes.size()));
      // bf16: the copy's ranges (AdamW writes this rank's, keep_bf16_param_copies below), else the parameter's.
      const ValueId gathered = bf16_sharded.count(p) ? bf16_zero2.at(p) : p;
      GV_RETURN_IF_ERROR(add_in_place_node(g, "GatherShardsInPlace", {gathered}, ga, place, "zero2/all_gather/" + pname));
      if (gathered != p) tg.sharded_masters.insert(p);
    }
  }
  GV_RETURN_IF_ERROR(flush_multi());
  if (overlap && !dp_syncs.empty()) {
    GV_RETURN_IF_ERROR(overlap_gradient_sync(tg, dp_syncs, zero2_gathers));
  }
  if (o.optimizer_bf16_copies && o.bf16_operands && oc.kind == OptimizerConfig::Kind::kAdamW) {
    GV_RETURN_IF_ERROR(keep_bf16_param_copies(g, tg.backward_begin, &tg.prologue_end, &tg.fused.bf16_param_copies));
  }
  // Every bf16 ZeRO-2 update must now write its copy's range (AdamW's input 7): the gather reads nothing else.
  for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
    const Node& n = g.nodes[id];
    if (n.op_type != "AdamW" || !tg.sharded_masters.count(n.inputs[0])) continue;
    if (n.inputs.size() < 8 || n.inputs[7] != bf16_zero2.at(n.inputs[0])) {
      return internal_error("ZeRO-2 in bf16: the update of '" + g.value(n.inputs[0]).name +
                            "' does not write its bf16 copy, which is gathered instead of the parameter");
    }
  }
  tg.fused.bf16_sharded_updates = static_cast<int>(tg.sharded_masters.size());
  if (overlap && o.prefetch_zero2_gathers && !tg.sharded_masters.empty()) GV_RETURN_IF_ERROR(prefetch_copy_gathers(tg));
  if (o.updates_in_backward) GV_RETURN_IF_ERROR(move_updates_into_backward(tg, o.grad_norm_in_updates));
  // After the move: it rewrites the updates' inputs up to 8, the low halves are input 9.
  if (o.split_masters && tg.prologue_end > 0) GV_RETURN_IF_ERROR(split_float32_masters(tg));
  return tg;
}

}  // namespace gv

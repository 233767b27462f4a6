#include "runtime/training_graph.h"

#include <algorithm>

#include "runtime/autograd.h"
#include "runtime/op_registry.h"

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

Status add_update(Graph& g, const std::string& op, std::vector<ValueId> inputs, Attributes attrs, Placement place,
                  const std::string& name) {
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

Status add_all_reduces(Graph& g, const std::vector<ValueId>& params, const std::map<ValueId, ValueId>& final_grad) {
  for (ValueId p : params) {
    GV_RETURN_IF_ERROR(add_update(g, "AllReduce", {final_grad.at(p)}, {}, param_place(g, p),
                                  g.unique_name("all_reduce/" + g.value(p).name)));
  }
  return Status::ok();
}

}  // namespace

Expected<TrainingGraph> build_training_graph(Graph forward, const TrainingGraphOptions& o) {
  TrainingGraph tg;
  tg.graph = std::move(forward);
  Graph& g = tg.graph;
  if (!g.opsets.count(kGalvatronDomain)) g.opsets[kGalvatronDomain] = 1;
  GV_RETURN_IF_ERROR(attach_loss(tg, o));
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
  GV_ASSIGN_OR_RETURN(AutogradResult ag, build_backward(g, tg.loss, wrt));
  for (const std::string& name : o.report_grads_of) tg.reported_grads[name] = ag.grads[g.find(name)];
  if (!o.checkpoint_layers.empty()) {
    GV_RETURN_IF_ERROR(apply_activation_checkpointing(g, tg.backward_begin, o.checkpoint_layers));
  }
  // Parameters the loss does not depend on have no gradient; like PyTorch (grad None) the optimizer skips them.
  std::vector<ValueId> trained;
  for (ValueId p : tg.params) {
    if (ag.grads[p] != kNoValue) trained.push_back(p), tg.grads[p] = ag.grads[p];
  }
  tg.params = trained;

  // Gradient accumulation over micro-batches: add each gradient into a persistent buffer.
  std::map<ValueId, ValueId> final_grad;
  for (ValueId p : tg.params) {
    ValueId grad = tg.grads[p];
    if (o.grad_accum_steps > 1) {
      ValueId acc = add_state(g, g.value(p).name + ".grad_accum", g.value(p));
      tg.grad_accumulators[p] = acc;
      GV_RETURN_IF_ERROR(add_update(g, "AccumulateGrad", {acc, grad}, {}, param_place(g, p),
                                    g.unique_name("accumulate/" + g.value(p).name)));
      final_grad[p] = acc;
    } else {
      final_grad[p] = grad;
    }
  }
  tg.optimizer_begin = g.nodes.size();
  // Data parallelism: average each (accumulated) gradient across the ranks, once per step, first in the optimizer
  // region, so that the norm, clipping and updates see the global gradient on every rank.
  if (o.data_parallel) GV_RETURN_IF_ERROR(add_all_reduces(g, tg.params, final_grad));

  // Global gradient norm (for clipping and metrics), then one update node per parameter.
  tg.lr = g.add_input("galvatron.lr", DType::kFloat64, {});
  tg.step = g.add_input("galvatron.step", DType::kInt64, {});
  std::vector<ValueId> all_grads;
  for (ValueId p : tg.params) all_grads.push_back(final_grad[p]);
  {
    Node n;
    n.op_type = "GradNorm";
    n.domain = kGalvatronDomain;
    n.opset = 1;
    n.name = "optimizer/grad_norm";
    n.inputs = all_grads;
    n.attrs.set_float("scale", (1.0 / o.grad_accum_steps));
    GV_ASSIGN_OR_RETURN(auto outs, g.add_node(std::move(n), {"galvatron.grad_norm"}));
    tg.grad_norm = outs[0];
  }
  const OptimizerConfig& oc = o.optimizer;
  for (ValueId p : tg.params) {
    const Value& pv = g.value(p);
    Attributes a;
    a.set_float("grad_scale", (1.0 / o.grad_accum_steps));
    a.set_float("max_norm", (oc.grad_clip));
    a.set_float("weight_decay", (oc.weight_decay));
    a.set_int("zero_grad", o.grad_accum_steps > 1 ? 1 : 0);
    Placement place = param_place(g, p);
    std::string pname = pv.name;
    if (oc.kind == OptimizerConfig::Kind::kAdamW) {
      ValueId m = add_state(g, pname + ".exp_avg", g.value(p));
      ValueId v = add_state(g, pname + ".exp_avg_sq", g.value(p));
      tg.optimizer_state[p] = {m, v};
      a.set_float("beta1", (oc.beta1));
      a.set_float("beta2", (oc.beta2));
      a.set_float("epsilon", (oc.eps));
      GV_RETURN_IF_ERROR(add_update(g, "AdamW", {p, final_grad[p], m, v, tg.lr, tg.step, tg.grad_norm}, a, place,
                                    "optimizer/adamw/" + pname));
    } else {
      ValueId buf = add_state(g, pname + ".momentum_buffer", g.value(p));
      tg.optimizer_state[p] = {buf};
      a.set_float("momentum", (oc.momentum));
      a.set_float("dampening", (oc.dampening));
      a.set_int("nesterov", oc.nesterov ? 1 : 0);
      GV_RETURN_IF_ERROR(add_update(g, "SGD", {p, final_grad[p], buf, tg.lr, tg.step, tg.grad_norm}, a, place,
                                    "optimizer/sgd/" + pname));
    }
  }
  return tg;
}

}  // namespace gv

#include "runtime/autograd.h"

#include <algorithm>

namespace gv {

GradBuilder::GradBuilder(Graph& graph, NodeId forward_node, std::vector<ValueId> grad_outputs,
                         std::vector<char> needs_grad)
    : graph_(graph), node_(forward_node), grad_outputs_(std::move(grad_outputs)), needs_grad_(std::move(needs_grad)) {
  grad_inputs_.assign(graph_.nodes[node_].inputs.size(), kNoValue);
}

void GradBuilder::set_grad_input(int i, ValueId g) {
  if (i < 0 || i >= num_inputs()) {
    record_error(internal_error("node '" + node().name + "' (" + node().op_type + "): backward rule set gradient of input " +
                                std::to_string(i) + " which does not exist"));
    return;
  }
  grad_inputs_[i] = g;
}

std::vector<ValueId> GradBuilder::emit(const std::string& op_type, std::vector<ValueId> inputs, Attributes attrs,
                                       int num_outputs, const std::string& domain) {
  if (!status_.is_ok()) return {};
  const Node& fwd = node();
  Node n;
  n.op_type = op_type;
  n.domain = domain;
  auto it = graph_.opsets.find(domain);
  n.opset = it != graph_.opsets.end() ? it->second : (domain.empty() ? 20 : 1);
  n.attrs = std::move(attrs);
  n.inputs = std::move(inputs);
  n.place = fwd.place;
  n.name = graph_.unique_name(fwd.name + "/grad/" + op_type);
  n.outputs.assign(num_outputs, kNoValue);
  std::vector<std::string> names(num_outputs);
  for (int i = 0; i < num_outputs; ++i) names[i] = graph_.unique_name(n.name + "_out");
  auto r = graph_.add_node(std::move(n), names);
  if (!r) {
    record_error(r.status().with_context("backward rule of node '" + fwd.name + "' (" + fwd.op_type + ")"));
    return {};
  }
  return *r;
}

ValueId GradBuilder::constant(Tensor t) {
  return graph_.add_initializer(graph_.unique_name(node().name + "/grad/const"), std::move(t), ValueKind::kConstant);
}

ValueId GradBuilder::reshape(ValueId x, const Shape& target_ref) {
  if (x == kNoValue) return kNoValue;
  const Shape target = target_ref;  // a copy, see sum_to_shape
  if (shape(x) == target) return x;
  return emit1("Reshape", {x, constant_i64(target)});
}

ValueId GradBuilder::sum_to_shape(ValueId g, const Shape& target_ref) {
  if (g == kNoValue) return kNoValue;
  const Shape target = target_ref;  // a copy: emitting nodes grows graph.values, which may hold target_ref
  const Shape gs = shape(g);
  if (gs == target) return g;
  const int rank = static_cast<int>(gs.size());
  const int offset = rank - static_cast<int>(target.size());
  if (offset < 0) {
    record_error(internal_error("sum_to_shape: gradient " + shape_str(gs) + " has lower rank than " + shape_str(target)));
    return kNoValue;
  }
  std::vector<int64_t> axes;
  for (int i = 0; i < rank; ++i) {
    if (i < offset || (target[i - offset] == 1 && gs[i] != 1)) axes.push_back(i);
  }
  ValueId r = g;
  if (!axes.empty()) {
    Attributes a;
    a.set_int("keepdims", 1);
    r = emit1("ReduceSum", {g, constant_i64(axes)}, a);
  }
  return reshape(r, target);
}

namespace {

std::string node_desc(const Node& n) { return "node '" + n.name + "' (" + n.op_type + ")"; }

}  // namespace

Expected<AutogradResult> build_backward(Graph& graph, ValueId loss, const std::vector<ValueId>& wrt) {
  const OpRegistry& reg = OpRegistry::global();
  const size_t n_fwd = graph.nodes.size();
  const Value& loss_v = graph.value(loss);
  if (!dtype_is_float(loss_v.dtype) || shape_numel(loss_v.shape) != 1) {
    return invalid_argument("loss '" + loss_v.name + "' must be a floating-point scalar, got " +
                            std::string(dtype_name(loss_v.dtype)) + " " + shape_str(loss_v.shape));
  }

  // 1. Forward: which values depend on a value we differentiate with respect to.
  std::vector<char> depends(graph.values.size(), 0);
  for (ValueId v : wrt) depends[v] = dtype_is_float(graph.value(v).dtype);
  for (size_t ni = 0; ni < n_fwd; ++ni) {
    const Node& n = graph.nodes[ni];
    const OpSchema* s = reg.find(n.domain, n.op_type);
    bool any = false;
    for (int i = 0; i < static_cast<int>(n.inputs.size()); ++i) {
      ValueId in = n.inputs[i];
      if (in == kNoValue || !depends[in]) continue;
      if (s && std::count(s->nondiff_inputs.begin(), s->nondiff_inputs.end(), i)) continue;
      any = true;
    }
    if (!any) continue;
    for (ValueId o : n.outputs) depends[o] = dtype_is_float(graph.value(o).dtype);
  }
  // 2. Backward: which of those the loss depends on.
  std::vector<char> relevant(graph.values.size(), 0);
  relevant[loss] = depends[loss];
  for (size_t ni = n_fwd; ni-- > 0;) {
    const Node& n = graph.nodes[ni];
    bool out_relevant = false;
    for (ValueId o : n.outputs) out_relevant = out_relevant || relevant[o];
    if (!out_relevant) continue;
    for (ValueId in : n.inputs) {
      if (in != kNoValue && depends[in]) relevant[in] = 1;
    }
  }

  // 3. Walk the forward nodes in reverse, calling each op's backward rule.
  std::vector<std::vector<ValueId>> contributions(graph.values.size());
  Tensor one(loss_v.dtype, loss_v.shape);
  convert_elements(Tensor::scalar(DType::kFloat64, 1.0).data(), DType::kFloat64, one.data(), loss_v.dtype, 1);
  contributions[loss].push_back(graph.add_initializer(graph.unique_name("loss_grad_seed"), one, ValueKind::kConstant));

  // Sums the contributions to a value's gradient (in order, so results are deterministic).
  auto total_grad = [&](ValueId v, const Node& ctx_node) -> Expected<ValueId> {
    auto& c = contributions[v];
    if (c.empty()) return kNoValue;
    ValueId acc = c[0];
    for (size_t k = 1; k < c.size(); ++k) {
      Node add;
      add.op_type = "Add";
      add.opset = graph.opsets.count("") ? graph.opsets.at("") : 20;
      add.name = graph.unique_name(graph.value(v).name + "/grad_accum");
      add.inputs = {acc, c[k]};
      add.place = ctx_node.place;
      auto r = graph.add_node(std::move(add));
      if (!r) return r.status();
      acc = (*r)[0];
    }
    c.assign(1, acc);
    return acc;
  };

  for (size_t ni = n_fwd; ni-- > 0;) {
    // Copy: graph.nodes grows while rules emit nodes.
    const Node fwd = graph.nodes[ni];
    bool needed = false;
    std::vector<char> needs(fwd.inputs.size(), 0);
    const OpSchema* s = reg.find(fwd.domain, fwd.op_type);
    for (int i = 0; i < static_cast<int>(fwd.inputs.size()); ++i) {
      ValueId in = fwd.inputs[i];
      if (in == kNoValue || !relevant[in]) continue;
      if (s && std::count(s->nondiff_inputs.begin(), s->nondiff_inputs.end(), i)) continue;
      needs[i] = 1;
      needed = true;
    }
    if (!needed) continue;
    std::vector<ValueId> gos;
    bool any_go = false;
    for (ValueId o : fwd.outputs) {
      auto g = total_grad(o, fwd);
      if (!g) return g.status();
      gos.push_back(*g);
      any_go = any_go || *g != kNoValue;
    }
    if (!any_go) continue;
    if (!s || !s->grad) {
      std::string path_to;
      for (int i = 0; i < static_cast<int>(fwd.inputs.size()); ++i) {
        if (needs[i]) path_to = graph.value(fwd.inputs[i]).name;
      }
      return unsupported(node_desc(fwd) + ": op has no backward rule, and the loss depends on trainable parameters "
                         "through its input '" + path_to + "'. Freeze those parameters or add a backward rule for " +
                         fwd.op_type);
    }
    GradBuilder gb(graph, static_cast<NodeId>(ni), gos, needs);
    Status st = s->grad(gb);
    if (st.is_ok()) st = gb.status();
    if (!st.is_ok()) return st.with_context("building the backward pass");
    const auto& gis = gb.grad_inputs();
    for (int i = 0; i < static_cast<int>(gis.size()); ++i) {
      if (gis[i] == kNoValue || !needs[i]) continue;
      const Value& in = graph.value(fwd.inputs[i]);
      const Value& gv = graph.value(gis[i]);
      if (gv.shape != in.shape || gv.dtype != in.dtype) {
        return internal_error(node_desc(fwd) + ": backward rule gave input " + std::to_string(i) + " a gradient of " +
                              dtype_name(gv.dtype) + " " + shape_str(gv.shape) + ", expected " +
                              dtype_name(in.dtype) + " " + shape_str(in.shape));
      }
      contributions[fwd.inputs[i]].push_back(gis[i]);
    }
  }

  AutogradResult result;
  result.first_backward_node = n_fwd;
  for (ValueId v : wrt) {
    Node dummy;
    auto g = total_grad(v, dummy);
    if (!g) return g.status();
    result.grads[v] = *g;
  }
  return result;
}

}  // namespace gv

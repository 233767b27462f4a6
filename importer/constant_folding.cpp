#include "importer/constant_folding.h"

#include <algorithm>

#include "importer/initializer_classification.h"
#include "runtime/op_registry.h"

namespace gv::onnx_import {

namespace {

std::string node_desc(const Node& n) { return "node '" + n.name + "' (" + n.op_type + ")"; }

// Shape (with opset 15's start/end) and Size of a value whose shape is known.
Tensor fold_shape_op(const Node& node, const Shape& in) {
  const int64_t rank = static_cast<int64_t>(in.size());
  if (node.op_type == "Size") return Tensor::scalar(DType::kInt64, static_cast<double>(shape_numel(in)));
  int64_t start = node.attrs.get_int("start", 0), end = node.attrs.get_int("end", rank);
  if (start < 0) start += rank;
  if (end < 0) end += rank;
  start = std::clamp<int64_t>(start, 0, rank);
  end = std::clamp<int64_t>(end, 0, rank);
  std::vector<int64_t> dims;
  for (int64_t i = start; i < end; ++i) dims.push_back(in[i]);
  const int64_t n = static_cast<int64_t>(dims.size());
  return Tensor::from_i64(dims, {n});
}

}  // namespace

Expected<Tensor> constant_node_value(const Node& node) {
  const Attributes& a = node.attrs;
  if (const Tensor* t = a.get_tensor("value")) return *t;
  if (a.has("value_float")) return Tensor::scalar(DType::kFloat32, a.get_float("value_float", 0));
  if (a.has("value_int")) {
    Tensor t(DType::kInt64, {});
    t.data_as<int64_t>()[0] = a.get_int("value_int", 0);
    return t;
  }
  if (a.has("value_floats")) {
    std::vector<float> v = a.get_floats("value_floats");
    const int64_t n = static_cast<int64_t>(v.size());
    return Tensor::from_f32(v, {n});
  }
  if (a.has("value_ints")) {
    std::vector<int64_t> v = a.get_ints("value_ints");
    const int64_t n = static_cast<int64_t>(v.size());
    return Tensor::from_i64(v, {n});
  }
  if (a.has("value_string") || a.has("value_strings")) {
    return unsupported(node_desc(node) + ": string constants are not supported");
  }
  return invalid_argument(node_desc(node) + ": has no value attribute (sparse constants are not supported)");
}

Status add_or_fold_node(Graph& g, Node node, const std::vector<std::string>& output_names, bool fold,
                        FoldStats* stats) {
  const bool default_domain = node.domain.empty() || node.domain == "ai.onnx";
  // Shape and Size: from the input's static shape.
  if (fold && default_domain && (node.op_type == "Shape" || node.op_type == "Size") && node.inputs.size() == 1 &&
      node.inputs[0] != kNoValue) {
    Tensor t = fold_shape_op(node, g.value(node.inputs[0]).shape);
    std::string name = !output_names.empty() && !output_names[0].empty() ? output_names[0] : g.unique_name(node.name);
    g.add_initializer(name, t, ValueKind::kConstant);
    if (stats) ++stats->folded;
    return Status::ok();
  }
  bool all_constant = true;
  for (ValueId in : node.inputs) all_constant = all_constant && (in == kNoValue || g.is_constant(in));
  const bool foldable = fold && all_constant && !is_nondeterministic_op(default_domain ? "" : node.domain, node.op_type);

  auto outs = g.add_node(std::move(node), output_names);
  if (!outs) return outs.status();
  if (!foldable) {
    if (stats) ++stats->added;
    return Status::ok();
  }
  const Node& added = g.nodes.back();
  std::vector<Tensor> inputs;
  for (ValueId in : added.inputs) inputs.push_back(in == kNoValue ? Tensor() : g.value(in).data);
  auto results = eval_node_cpu(g, added, inputs);
  if (!results) {
    // No CPU kernel (yet): leave the node in the graph; any other failure is the model's (or the kernel's) error.
    if (results.status().code() == StatusCode::kUnsupported) {
      if (stats) ++stats->added;
      return Status::ok();
    }
    return results.status().with_context("while folding constants");
  }
  for (size_t i = 0; i < outs->size(); ++i) {
    Value& v = g.value((*outs)[i]);
    v.kind = ValueKind::kConstant;
    v.producer = -1;
    v.data = (*results)[i];
  }
  g.nodes.pop_back();
  if (stats) ++stats->folded;
  return Status::ok();
}

}  // namespace gv::onnx_import

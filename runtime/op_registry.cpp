#include "runtime/op_registry.h"

#include <mutex>

#include "runtime/ops/all_ops.h"

namespace gv {

Status InferContext::fail(const std::string& msg) const {
  return invalid_argument("node '" + node_.name + "' (" + node_.op_type + "): " + msg);
}

Status KernelContext::fail(const std::string& msg) const {
  return invalid_argument("node '" + node->name + "' (" + node->op_type + "): " + msg);
}

OpRegistry& OpRegistry::global() {
  static OpRegistry* reg = [] {
    auto* r = new OpRegistry();
    register_elementwise_ops(*r);
    register_movement_ops(*r);
    register_math_ops(*r);
    register_training_ops(*r);
    register_parallel_ops(*r);
    register_vocab_parallel_ops(*r);
    register_sharded_update_ops(*r);
    register_attention_ops(*r);
    register_attention_packed_ops(*r);
    return r;
  }();
  return *reg;
}

void OpRegistry::add(OpSchema schema) {
  auto key = std::make_pair(schema.domain, schema.name);
  ops_[key] = std::move(schema);
}

const OpSchema* OpRegistry::find(const std::string& domain, const std::string& name) const {
  std::string d = (domain == "ai.onnx") ? "" : domain;
  auto it = ops_.find({d, name});
  return it == ops_.end() ? nullptr : &it->second;
}

OpSchema* OpRegistry::find_mutable(const std::string& domain, const std::string& name) {
  auto it = ops_.find({domain, name});
  return it == ops_.end() ? nullptr : &it->second;
}

std::vector<const OpSchema*> OpRegistry::all() const {
  std::vector<const OpSchema*> r;
  for (const auto& kv : ops_) r.push_back(&kv.second);
  return r;
}

std::string OpRegistry::supported_list() const {
  std::string s;
  for (const auto& kv : ops_) {
    if (!kv.first.first.empty()) continue;
    if (!s.empty()) s += " ";
    s += kv.first.second;
  }
  return s;
}

Expected<std::vector<Tensor>> eval_node_cpu(const Graph& graph, const Node& node, const std::vector<Tensor>& inputs) {
  const OpSchema* schema = OpRegistry::global().find(node.domain, node.op_type);
  if (!schema || !schema->cpu) return unsupported("node '" + node.name + "' (" + node.op_type + "): no CPU kernel");
  KernelContext kc;
  kc.node = &node;
  for (size_t i = 0; i < node.inputs.size(); ++i) {
    if (node.inputs[i] == kNoValue || !inputs[i].defined()) {
      kc.inputs.push_back(TensorRef{});
    } else {
      kc.inputs.push_back(inputs[i].ref());
    }
  }
  std::vector<Tensor> outs;
  for (ValueId o : node.outputs) {
    if (o == kNoValue) {
      outs.emplace_back();
      continue;
    }
    const Value& v = graph.value(o);
    outs.emplace_back(v.dtype, v.shape);
  }
  for (Tensor& t : outs) kc.outputs.push_back(t.defined() ? t.ref() : TensorRef{});
  GV_RETURN_IF_ERROR(schema->cpu(kc));
  return outs;
}

}  // namespace gv

#include "models/onnx_builder.h"

namespace gv::zoo {

onnx::AttributeProto attr_int(const std::string& name, int64_t v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::INT);
  a.set_i(v);
  return a;
}

onnx::AttributeProto attr_ints(const std::string& name, const std::vector<int64_t>& v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a.add_ints(x);
  return a;
}

onnx::AttributeProto attr_float(const std::string& name, float v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::FLOAT);
  a.set_f(v);
  return a;
}

onnx::AttributeProto attr_string(const std::string& name, const std::string& v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::STRING);
  a.set_s(v);
  return a;
}

void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* out) {
  out->set_name(name);
  out->set_data_type(static_cast<int32_t>(t.dtype()));  // DType values are ONNX's
  for (int64_t d : t.shape()) out->add_dims(d);
  out->set_raw_data(static_cast<const char*>(t.data()), t.nbytes());
}

std::string OnnxBuilder::node_name(const std::string& base_scope, const std::string& op) {
  const std::string base = base_scope + "/" + op;
  int& n = counts_[base];
  std::string name = n == 0 ? base : base + "_" + std::to_string(n);
  ++n;
  return name;
}

std::vector<std::string> OnnxBuilder::node_n(const std::string& op, const std::vector<std::string>& inputs, int n,
                                             const std::vector<onnx::AttributeProto>& attrs) {
  onnx::NodeProto* nd = graph_->add_node();
  nd->set_op_type(op);
  nd->set_name(node_name(scope, op));
  for (const auto& in : inputs) nd->add_input(in);
  std::vector<std::string> outs;
  for (int i = 0; i < n; ++i) {
    outs.push_back(nd->name() + "_output_" + std::to_string(i));
    nd->add_output(outs.back());
  }
  for (const auto& a : attrs) *nd->add_attribute() = a;
  return outs;
}

std::string OnnxBuilder::node(const std::string& op, const std::vector<std::string>& inputs,
                              const std::vector<onnx::AttributeProto>& attrs) {
  return node_n(op, inputs, 1, attrs)[0];
}

std::string OnnxBuilder::constant(const Tensor& t, const std::string& name) {
  std::string key;
  if (name.empty()) {
    key = std::to_string(static_cast<int>(t.dtype())) + ":" + shape_str(t.shape()) + ":" +
          std::string(static_cast<const char*>(t.data()), t.nbytes());
    auto it = consts_.find(key);
    if (it != consts_.end()) return it->second;
  }
  onnx::NodeProto* nd = graph_->add_node();
  nd->set_op_type("Constant");
  nd->set_name(name.empty() ? node_name("/constants", "Constant") : name);
  const std::string out = nd->name() + "_output_0";
  nd->add_output(out);
  onnx::AttributeProto* a = nd->add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  tensor_to_proto(t, "", a->mutable_t());
  if (name.empty()) consts_[key] = out;
  return out;
}

std::string OnnxBuilder::const_i64(const std::vector<int64_t>& v) {
  return constant(Tensor::from_i64(v, {static_cast<int64_t>(v.size())}));
}

std::string OnnxBuilder::scalar_f32(float v) { return constant(Tensor::from_f32({v}, {})); }

}  // namespace gv::zoo

// Small helpers to write ONNX models in code (tests, synthetic models): inputs with static or symbolic dims,
// initializers, nodes, saving to a file. Header-only; uses the onnx protobuf classes directly.
#pragma once
#include <onnx/onnx_pb.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace gv::onnx_writer {

// A dimension: a value, or a symbolic name.
struct Dim {
  Dim(int64_t v) : value(v) {}          // NOLINT: implicit on purpose
  Dim(const char* p) : param(p) {}      // NOLINT
  int64_t value = -1;
  std::string param;
};

inline onnx::ModelProto make_model(int opset = 20, int64_t ir_version = 8) {
  onnx::ModelProto m;
  m.set_ir_version(ir_version);
  m.set_producer_name("gv-test");
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  m.mutable_graph()->set_name("test");
  return m;
}

inline void add_opset(onnx::ModelProto& m, const std::string& domain, int version) {
  auto* op = m.add_opset_import();
  op->set_domain(domain);
  op->set_version(version);
}

inline onnx::ValueInfoProto* add_input(onnx::ModelProto& m, const std::string& name, int elem_type,
                                       const std::vector<Dim>& dims) {
  auto* vi = m.mutable_graph()->add_input();
  vi->set_name(name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem_type);
  auto* shape = tt->mutable_shape();
  for (const Dim& d : dims) {
    auto* dim = shape->add_dim();
    if (d.param.empty()) dim->set_dim_value(d.value);
    else dim->set_dim_param(d.param);
  }
  return vi;
}

inline onnx::ValueInfoProto* add_output(onnx::ModelProto& m, const std::string& name, int elem_type = 1) {
  auto* vi = m.mutable_graph()->add_output();
  vi->set_name(name);
  vi->mutable_type()->mutable_tensor_type()->set_elem_type(elem_type);
  return vi;
}

inline onnx::NodeProto* add_node(onnx::ModelProto& m, const std::string& op, const std::vector<std::string>& inputs,
                                 const std::vector<std::string>& outputs, const std::string& name = "",
                                 const std::string& domain = "") {
  auto* n = m.mutable_graph()->add_node();
  n->set_op_type(op);
  n->set_domain(domain);
  n->set_name(name);
  for (const auto& i : inputs) n->add_input(i);
  for (const auto& o : outputs) n->add_output(o);
  return n;
}

inline void set_attr_float(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_FLOAT);
  a->set_f(v);
}

inline void set_attr_int(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_INT);
  a->set_i(v);
}

inline void set_attr_ref(onnx::NodeProto* n, const std::string& name, const std::string& ref, int type) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_ref_attr_name(ref);
  a->set_type(static_cast<onnx::AttributeProto_AttributeType>(type));
}

inline onnx::TensorProto make_float_tensor(const std::string& name, const std::vector<int64_t>& dims,
                                           const std::vector<float>& values) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx::TensorProto_DataType_FLOAT);
  for (int64_t d : dims) t.add_dims(d);
  t.set_raw_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  return t;
}

inline onnx::TensorProto* add_float_initializer(onnx::ModelProto& m, const std::string& name,
                                                const std::vector<int64_t>& dims, const std::vector<float>& values) {
  auto* t = m.mutable_graph()->add_initializer();
  *t = make_float_tensor(name, dims, values);
  return t;
}

inline bool save(const google::protobuf::MessageLite& msg, const std::string& path) {
  std::ofstream f(path, std::ios::binary);
  return f && msg.SerializeToOstream(&f);
}

}  // namespace gv::onnx_writer

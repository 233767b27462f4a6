// A small helper for writing ONNX graphs by hand (internal to models/): nodes named after the module path they belong
// to, Constant nodes deduplicated by content, initializers from raw bytes.
#pragma once
#include <onnx/onnx_pb.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace gv::zoo {

onnx::AttributeProto attr_int(const std::string& name, int64_t v);
onnx::AttributeProto attr_ints(const std::string& name, const std::vector<int64_t>& v);
onnx::AttributeProto attr_float(const std::string& name, float v);
onnx::AttributeProto attr_string(const std::string& name, const std::string& v);

// Fills a TensorProto (name, dims, data type, raw little-endian bytes) from a host tensor.
void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* out);

class OnnxBuilder {
 public:
  explicit OnnxBuilder(onnx::GraphProto* graph) : graph_(graph) {}

  // The module path new nodes belong to ("/transformer/h.0/attn"); node names are `scope/Op` or `scope/Op_N`.
  std::string scope;

  // Appends a node with one output and returns the output's name.
  std::string node(const std::string& op, const std::vector<std::string>& inputs,
                   const std::vector<onnx::AttributeProto>& attrs = {});
  // Appends a node with `n` outputs.
  std::vector<std::string> node_n(const std::string& op, const std::vector<std::string>& inputs, int n,
                                  const std::vector<onnx::AttributeProto>& attrs = {});

  // A Constant node holding `t` (one per distinct content, under the "/constants" scope unless `name` is given, in
  // which case the node is "name" and its output "name_output_0").
  std::string constant(const Tensor& t, const std::string& name = "");
  std::string const_i64(const std::vector<int64_t>& v);  // 1-D
  std::string scalar_f32(float v);                        // rank 0

  onnx::GraphProto* graph() { return graph_; }

 private:
  std::string node_name(const std::string& base_scope, const std::string& op);

  onnx::GraphProto* graph_;
  std::map<std::string, int> counts_;          // node name -> times used
  std::map<std::string, std::string> consts_;  // content key -> output name
};

}  // namespace gv::zoo

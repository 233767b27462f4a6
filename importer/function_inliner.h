// Local functions (ModelProto.functions): every node that calls one is replaced by the function's body, its internal
// values renamed uniquely and its attribute references (ref_attr_name) bound to the caller's attributes, recursively.
#pragma once
#include <onnx/onnx_pb.h>

#include <map>
#include <string>
#include <vector>

#include "runtime/status.h"

namespace gv::onnx_import {

// A node of the flattened graph. Its NodeProto has no function calls and no attribute references left.
struct FlatNode {
  onnx::NodeProto proto;
  std::string domain;  // normalized: "" for the default domain ("" or "ai.onnx")
  int opset = 0;       // the version of `domain` that applies to the node; 0 when the domain is not imported
};

// "" for the default domain, the domain itself otherwise.
std::string normalize_domain(const std::string& domain);

// Flattens the main graph's nodes; `path` names the model in errors.
Expected<std::vector<FlatNode>> inline_functions(const onnx::ModelProto& model, const std::map<std::string, int>& opsets,
                                                 const std::string& path);

}  // namespace gv::onnx_import

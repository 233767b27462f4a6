// Reading ONNX protobuf messages into the runtime's types: the model file itself, tensors (every payload form and
// external data files), and node attributes. Internal to the importer (the public entry points are in
// onnx_importer.h); every error names the file it concerns.
#pragma once
#include <onnx/onnx_pb.h>

#include <string>

#include "runtime/attributes.h"
#include "runtime/status.h"
#include "runtime/tensor.h"

namespace gv::onnx_import {

// Parses the file into `model`. Missing, unreadable, empty, truncated and non-ONNX files give a Status naming it.
Status read_model_proto(const std::string& path, onnx::ModelProto* model);

// Where a tensor's external data lives: `base_dir` is the directory the `location` keys are relative to, `owner` the
// file that holds the TensorProto (named in errors).
struct TensorSource {
  std::string base_dir;
  std::string owner;
};

// The data type of a TensorProto / TypeProto elem_type; an unsupported ONNX type gives a Status naming `what`.
Expected<DType> dtype_from_proto(int32_t onnx_type, const std::string& what);
// The ONNX name of a data type (for messages): "FLOAT", "STRING", ...
std::string onnx_type_name(int32_t onnx_type);

// Converts a TensorProto: raw_data, the typed repeated fields (float_data, int32_data for the small types,
// int64_data, double_data) or external data.
Expected<Tensor> tensor_from_proto(const onnx::TensorProto& t, const TensorSource& src);

// Converts a node's attributes. Graph-valued (control flow), sparse and type attributes are unsupported; an attribute
// that still refers to a function attribute (ref_attr_name) is an error (the inliner resolves those).
Expected<Attributes> attributes_from_proto(const onnx::NodeProto& node, const TensorSource& src);

// The dir part of a path ("." when there is none).
std::string dir_of(const std::string& path);

}  // namespace gv::onnx_import

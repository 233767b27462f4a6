// A light read of an ONNX file for the CLI: the header fields, the graph's true inputs (with their declared element
// types and dims) and the op types of the file's nodes, without loading the weights (initializer bytes are skipped on
// the wire). The importer does the real work; this answers what the CLI must know before calling it (which feeds
// are inputs, whether the sequence dim is dynamic) and what the imported graph no longer shows (the file's own ops).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/status.h"

namespace gv::cli {

struct OnnxDim {
  int64_t value = -1;  // -1: dynamic
  std::string param;   // the symbolic name, when dynamic and named
};

struct OnnxInput {
  std::string name;
  int32_t elem_type = 0;  // ONNX TensorProto.DataType
  bool has_shape = false;
  std::vector<OnnxDim> dims;
};

struct OnnxFileInfo {
  int64_t ir_version = 0;
  std::string producer_name;
  std::string producer_version;
  std::map<std::string, int64_t> opsets;  // domain ("" = ai.onnx) -> version
  std::vector<OnnxInput> inputs;          // graph inputs that are not initializers
  std::vector<std::string> outputs;
  // Op types of the main graph's nodes ("Op" for the default domain, "domain:Op" otherwise) -> count.
  std::map<std::string, int64_t> op_histogram;
  int64_t node_count = 0;
  int64_t initializer_count = 0;
  int64_t local_function_count = 0;
};

// Fails with a message naming the file when it is missing, unreadable or not an ONNX model.
Expected<OnnxFileInfo> scan_onnx(const std::string& path);

}  // namespace gv::cli

// ONNX files to the runtime's IR. The importer specializes the graph to concrete input shapes, infers every dtype and
// shape through the op registry, folds shape arithmetic and constant subgraphs, drops dead nodes, classifies
// initializers (trainable parameters vs constants) and tags every node with its place (embedding, layer i, head).
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace onnx {
class ModelProto;
}

namespace gv {

struct ImportOptions {
  // Values of the graph inputs' symbolic dimensions. A dynamic dim at axis 0 of an input is the batch, at axis 1 the
  // sequence, unless its dim_param is named in `dims`.
  int64_t batch = 1;
  int64_t seq = 0;  // 0: the model's own static length, else an error for a dynamic sequence dim
  std::map<std::string, int64_t> dims;
  // Full shapes for named inputs (overrides everything else).
  std::map<std::string, Shape> input_shapes;
  // Graph inputs bound to fixed values: they become constants (and fold) instead of being fed.
  std::map<std::string, Tensor> constant_inputs;
  bool fold_constants = true;
  bool detect_layers = true;
  // Exporters store a tied weight twice (TorchScript: the word embedding, and its transposed copy for the LM head's
  // MatMul). When set, such a copy is replaced by the parameter itself (through a Transpose or Identity node), so the
  // weight trains as one parameter, like in PyTorch. See ImportedModel::tied_parameters.
  bool tie_weights = true;
  // When false (the default) an op without a registry entry is an error. When true, the import stops at the
  // first such op and returns what it has with `unsupported_ops` filled (for `galvatron inspect`).
  bool allow_unsupported = false;
};

// An initializer that was a copy of a parameter and now reads it (tie_weights).
struct TiedParameter {
  std::string parameter;    // the parameter it is tied to
  bool transposed = false;  // the copy was the parameter transposed (2-D)
};

struct ImportedModel {
  Graph graph;
  std::string path;
  int64_t ir_version = 0;
  std::string producer;
  std::map<std::string, int> opsets;
  // "OpType (domain, opset N) at node 'name'" for each node whose op the registry lacks.
  std::vector<std::string> unsupported_ops;
  int64_t onnx_node_count = 0;  // nodes in the file, after inlining local functions, before folding
  int64_t folded_node_count = 0;  // nodes evaluated at import time (constant folding, Shape/Size, Constant)
  // Initializer name -> the parameter it was a copy of. The name stays a value of the graph (the output of the
  // Transpose/Identity node reading the parameter), but it is no longer a parameter: its gradient is in the parameter's.
  std::map<std::string, TiedParameter> tied_parameters;
  // True when the import stopped early at an unsupported op (allow_unsupported): the graph is incomplete.
  bool partial = false;
};

Expected<ImportedModel> import_onnx(const std::string& path, const ImportOptions& options = {});
// The same for a model in memory: external data is looked up in `base_dir`; `name` stands for the file in messages.
Expected<ImportedModel> import_onnx_model(const onnx::ModelProto& model, const ImportOptions& options = {},
                                          const std::string& base_dir = ".",
                                          const std::string& name = "<in-memory model>");

// The initializers import_onnx makes trainable parameters (ValueKind::kParameter), decided from the file alone: no
// op needs to be in the registry. With `tie_weights`, copies of tied weights are left out (ImportOptions::tie_weights).
Expected<std::set<std::string>> onnx_parameter_names(const std::string& path, bool tie_weights = true);

// Reads a serialized TensorProto (the ONNX test data's input_0.pb / output_0.pb); external data is looked up beside
// the file.
Expected<Tensor> read_tensor_proto_file(const std::string& path);

}  // namespace gv

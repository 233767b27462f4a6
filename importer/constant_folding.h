// Constant folding while the graph is built: a node whose inputs are all constants (ValueKind::kConstant) and whose
// op is deterministic is evaluated on the CPU (eval_node_cpu) and its outputs become constants; the node is not added.
// Shape and Size are folded from their input's (static) shape even when the input is not constant. Parameters are
// never constants, so nothing derived from them (a Transpose of a weight) is folded.
#pragma once
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace gv::onnx_import {

struct FoldStats {
  int64_t folded = 0;  // nodes evaluated at import time
  int64_t added = 0;   // nodes added to the graph
};

// Adds `node` (inputs already resolved to value ids) with outputs named `output_names` ("" for a fresh name), or folds
// it when `fold` is set and the rules above allow. A node whose op has no CPU kernel stays a node.
Status add_or_fold_node(Graph& g, Node node, const std::vector<std::string>& output_names, bool fold,
                        FoldStats* stats = nullptr);

// The value of a Constant node (value, value_float(s), value_int(s)); string and sparse values are unsupported.
Expected<Tensor> constant_node_value(const Node& node);

}  // namespace gv::onnx_import

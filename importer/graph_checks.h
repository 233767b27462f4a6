// Structural checks of the flattened ONNX graph before anything is built: every value has exactly one source, every
// name a node or graph output reads exists, and the nodes can be ordered (no cycles).
#pragma once
#include <set>
#include <string>
#include <vector>

#include "importer/function_inliner.h"

namespace gv::onnx_import {

struct GraphSources {
  std::vector<std::string> initializers;  // in file order, may hold duplicates (an error)
  std::vector<std::string> inputs;        // graph inputs that are not initializers
  std::vector<std::string> outputs;       // graph outputs
};

// Gives nodes without a name a unique one ("<OpType>_<index>") and makes repeated names unique.
void name_nodes(std::vector<FlatNode>& nodes);

// Checks the graph and returns the node indices in a topological order (the file's order where it is valid).
// Errors name `path` and the node or value concerned.
Expected<std::vector<int>> check_and_sort(const std::vector<FlatNode>& nodes, const GraphSources& sources,
                                          const std::string& path);

}  // namespace gv::onnx_import

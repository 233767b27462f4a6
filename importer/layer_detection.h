// Finds the repeated transformer layers of a graph and tags every node with its place: kEmbedding before the first
// layer, kLayer i, kHead after the last layer; sets Graph::num_layers (0 when no repetition is found, with every
// node left kUnknown).
//
// Nodes are first anchored: a node that reads a parameter (directly or through parameter-only ops such as a
// Transpose of a weight) is anchored to that parameter's layer. Layer indices come from names when they have them
// ("transformer.h.3.", "model.layers.3.", "bert.encoder.layer.3.", "/encoder/layer.3/", "blocks.3", ...; parameter
// names and node names); otherwise from structure: the (op, input slot, parameter shape) events of the nodes reading
// parameters, in graph order, are searched for the longest run of identical consecutive segments, which become the
// layers. Unanchored nodes are then placed between their anchored ancestors and descendants; where a node could
// belong to either of two consecutive places, the cut is the value that separates them (the residual stream).
#pragma once
#include <string>

#include "runtime/graph.h"

namespace gv {

struct LayerDetectionOptions {
  bool use_names = true;  // false: structure only (for tests, and graphs with misleading names)
};

void detect_layers(Graph& graph);
void detect_layers(Graph& graph, const LayerDetectionOptions& options);

// The layer a parameter or node name points at: key (the path before the index, e.g. "model.layers") and index;
// false when the name has none.
bool layer_index_from_name(const std::string& name, std::string* key, int* index);

}  // namespace gv

// Activation checkpointing: the forward nodes of a checkpointed layer are cloned and the clones placed right before the
// first backward node that needs one of their values; backward nodes read the clones, so the layer's original
// activations die as soon as the forward pass is done with them. Only the layer's inputs (the checkpoint) stay alive.
// Clones keep the original node names, so random ops (Dropout) draw the same masks when recomputed.
#include <algorithm>

#include "runtime/training_graph.h"

namespace gv {

namespace {

// Clones, for each group of forward nodes (in_group(i, group)), the ones whose values the backward pass reads, right
// before the group's first backward read, and points the backward pass at the clones.
template <typename InGroup>
Status recompute_groups(Graph& graph, size_t backward_begin, const std::vector<int>& groups, InGroup in_group_of) {
  const size_t n_nodes = graph.nodes.size();
  std::vector<std::vector<Node>> insert_before(n_nodes + 1);
  for (int group : groups) {
    auto in_layer = [&](size_t i) { return i < backward_begin && in_group_of(i, group); };
    // Values produced by this layer's forward nodes.
    std::vector<char> produced(graph.values.size(), 0);
    for (size_t i = 0; i < backward_begin; ++i) {
      if (!in_layer(i)) continue;
      for (ValueId o : graph.nodes[i].outputs) produced[o] = 1;
    }
    // The layer's outputs read by forward nodes outside it stay alive anyway (they are the next layer's inputs):
    // the backward pass keeps reading the originals.
    for (size_t i = 0; i < backward_begin; ++i) {
      if (in_layer(i)) continue;
      for (ValueId in : graph.nodes[i].inputs) {
        if (in != kNoValue) produced[in] = 0;
      }
    }
    for (ValueId o : graph.outputs) produced[o] = 0;
    // Which of them the backward pass reads, and where it first reads them.
    std::vector<char> needed(graph.values.size(), 0);
    size_t first_use = n_nodes;
    for (size_t i = backward_begin; i < n_nodes; ++i) {
      for (ValueId in : graph.nodes[i].inputs) {
        if (in != kNoValue && produced[in]) {
          needed[in] = 1;
          first_use = std::min(first_use, i);
        }
      }
    }
    if (first_use == n_nodes) continue;
    // Nodes needed to recompute them (walk the layer backward).
    std::vector<char> clone(backward_begin, 0);
    for (size_t i = backward_begin; i-- > 0;) {
      if (!in_layer(i)) continue;
      bool any = false;
      for (ValueId o : graph.nodes[i].outputs) any = any || needed[o];
      if (!any) continue;
      clone[i] = 1;
      for (ValueId in : graph.nodes[i].inputs) {
        if (in != kNoValue && produced[in]) needed[in] = 1;
      }
    }
    // Clone them with fresh output values; remap backward reads.
    std::vector<ValueId> remap(graph.values.size(), kNoValue);
    for (size_t i = 0; i < backward_begin; ++i) {
      if (!clone[i]) continue;
      Node c = graph.nodes[i];
      for (ValueId& in : c.inputs) {
        if (in != kNoValue && remap[in] != kNoValue) in = remap[in];
      }
      for (ValueId& o : c.outputs) {
        Value v = graph.values[o];
        v.name = graph.unique_name(v.name + "/recompute");
        v.producer = -1;
        ValueId nv = graph.add_value(std::move(v));
        remap.resize(graph.values.size(), kNoValue);
        remap[o] = nv;
        o = nv;
      }
      insert_before[first_use].push_back(std::move(c));
    }
    remap.resize(graph.values.size(), kNoValue);
    for (size_t i = backward_begin; i < n_nodes; ++i) {
      for (ValueId& in : graph.nodes[i].inputs) {
        if (in != kNoValue && in < static_cast<ValueId>(remap.size()) && remap[in] != kNoValue) in = remap[in];
      }
    }
  }
  std::vector<Node> out;
  out.reserve(n_nodes * 2);
  for (size_t i = 0; i <= n_nodes; ++i) {
    for (Node& c : insert_before[i]) out.push_back(std::move(c));
    if (i < n_nodes) out.push_back(std::move(graph.nodes[i]));
  }
  graph.nodes = std::move(out);
  graph.reindex();
  return Status::ok();
}

}  // namespace

Status apply_activation_checkpointing(Graph& graph, size_t backward_begin, const std::set<int>& layers) {
  std::vector<int> groups(layers.begin(), layers.end());
  return recompute_groups(graph, backward_begin, groups, [&](size_t i, int layer) {
    return graph.nodes[i].place.kind == Placement::Kind::kLayer && graph.nodes[i].place.layer == layer;
  });
}

Status rematerialize_marked_nodes(Graph& graph, size_t backward_begin) {
  // One group per marked chain (the attribute's value), so each is recomputed right before its own first use.
  std::set<int64_t> ids;
  for (size_t i = 0; i < backward_begin; ++i) {
    const int64_t id = graph.nodes[i].attrs.get_int("rematerialize", -1);
    if (id >= 0) ids.insert(id);
  }
  std::vector<int> groups(ids.begin(), ids.end());
  return recompute_groups(graph, backward_begin, groups, [&](size_t i, int id) {
    return graph.nodes[i].attrs.get_int("rematerialize", -1) == id;
  });
}

}  // namespace gv

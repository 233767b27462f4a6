#include "runtime/graph.h"

#include <algorithm>

#include "runtime/op_registry.h"

namespace gv {

const char* placement_kind_name(Placement::Kind k) {
  switch (k) {
    case Placement::Kind::kEmbedding: return "embedding";
    case Placement::Kind::kLayer: return "layer";
    case Placement::Kind::kHead: return "head";
    default: return "unknown";
  }
}

ValueId Graph::add_value(Value v) {
  ValueId id = static_cast<ValueId>(values.size());
  if (v.name.empty()) v.name = unique_name("v");
  by_name_[v.name] = id;
  values.push_back(std::move(v));
  return id;
}

ValueId Graph::add_input(const std::string& name, DType dtype, Shape shape) {
  Value v;
  v.name = name;
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.kind = ValueKind::kInput;
  ValueId id = add_value(std::move(v));
  inputs.push_back(id);
  return id;
}

ValueId Graph::add_initializer(const std::string& name, Tensor data, ValueKind kind) {
  Value v;
  v.name = name;
  v.dtype = data.dtype();
  v.shape = data.shape();
  v.kind = kind;
  v.data = std::move(data);
  return add_value(std::move(v));
}

ValueId Graph::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? kNoValue : it->second;
}

std::string Graph::unique_name(const std::string& prefix) {
  for (;;) {
    std::string n = prefix + "_" + std::to_string(name_counter_++);
    if (!by_name_.count(n)) return n;
  }
}

Expected<std::vector<ValueId>> Graph::add_node(Node node, const std::vector<std::string>& output_names) {
  const OpSchema* schema = OpRegistry::global().find(node.domain, node.op_type);
  std::string where = "node '" + node.name + "' (" + (node.domain.empty() ? "" : node.domain + "::") + node.op_type + ")";
  if (!schema) {
    return unsupported(where + ": op is not supported. Supported ops: " + OpRegistry::global().supported_list());
  }
  int n_in = static_cast<int>(node.inputs.size());
  if (n_in < schema->min_inputs || n_in > schema->max_inputs) {
    return invalid_argument(where + ": has " + std::to_string(n_in) + " inputs, expected " +
                            std::to_string(schema->min_inputs) + ".." + std::to_string(schema->max_inputs));
  }
  int n_out = output_names.empty() ? static_cast<int>(node.outputs.size()) : static_cast<int>(output_names.size());
  if (n_out == 0) n_out = schema->min_outputs;
  if (n_out < schema->min_outputs || n_out > schema->max_outputs) {
    return invalid_argument(where + ": has " + std::to_string(n_out) + " outputs, expected " +
                            std::to_string(schema->min_outputs) + ".." + std::to_string(schema->max_outputs));
  }
  for (ValueId in : node.inputs) {
    if (in != kNoValue && (in < 0 || in >= static_cast<ValueId>(values.size()))) {
      return internal_error(where + ": input id out of range");
    }
  }
  node.outputs.assign(n_out, kNoValue);
  InferContext ctx(*this, node);
  if (!schema->infer) return internal_error(where + ": op has no shape inference");
  Status st = schema->infer(ctx);
  if (!st.is_ok()) return st;
  NodeId nid = static_cast<NodeId>(nodes.size());
  if (node.name.empty()) node.name = unique_name(node.op_type);
  std::vector<ValueId> outs;
  for (int i = 0; i < n_out; ++i) {
    Value v;
    v.name = (i < static_cast<int>(output_names.size()) && !output_names[i].empty()) ? output_names[i]
                                                                                  : unique_name(node.name + "_out");
    v.dtype = ctx.out_dtypes[i];
    v.shape = ctx.out_shapes[i];
    v.kind = ValueKind::kActivation;
    v.producer = nid;
    if (v.dtype == DType::kUndefined) return internal_error(where + ": inference left output " + std::to_string(i) + " untyped");
    outs.push_back(add_value(std::move(v)));
  }
  node.outputs = outs;
  nodes.push_back(std::move(node));
  return outs;
}

std::vector<ValueId> Graph::parameters() const {
  std::vector<ValueId> r;
  for (ValueId i = 0; i < static_cast<ValueId>(values.size()); ++i) {
    if (values[i].kind == ValueKind::kParameter) r.push_back(i);
  }
  return r;
}

std::vector<int> Graph::use_counts() const {
  std::vector<int> uses(values.size(), 0);
  for (const Node& n : nodes) {
    for (ValueId v : n.inputs) {
      if (v != kNoValue) ++uses[v];
    }
  }
  for (ValueId v : outputs) ++uses[v];
  return uses;
}

void Graph::prune_dead() {
  // Mark live nodes backward from the outputs.
  std::vector<char> live_value(values.size(), 0);
  for (ValueId v : outputs) live_value[v] = 1;
  std::vector<char> live_node(nodes.size(), 0);
  for (int i = static_cast<int>(nodes.size()) - 1; i >= 0; --i) {
    bool live = false;
    for (ValueId o : nodes[i].outputs) live = live || live_value[o];
    if (!live) continue;
    live_node[i] = 1;
    for (ValueId o : nodes[i].outputs) live_value[o] = 1;  // a live node keeps all its outputs
    for (ValueId in : nodes[i].inputs) {
      if (in != kNoValue) live_value[in] = 1;
    }
  }
  for (ValueId v : inputs) live_value[v] = 1;  // graph inputs stay, even when unused
  std::vector<Node> kept_nodes;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (live_node[i]) kept_nodes.push_back(std::move(nodes[i]));
  }
  nodes = std::move(kept_nodes);
  std::vector<char> drop(values.size());
  for (size_t i = 0; i < values.size(); ++i) drop[i] = !live_value[i];
  drop_values(drop);
}

void Graph::drop_values(const std::vector<char>& drop) {
  std::vector<ValueId> remap(values.size(), kNoValue);
  std::vector<Value> kept;
  for (size_t i = 0; i < values.size(); ++i) {
    if (drop[i]) continue;
    remap[i] = static_cast<ValueId>(kept.size());
    kept.push_back(std::move(values[i]));
  }
  for (Node& n : nodes) {
    for (ValueId& v : n.inputs) {
      if (v != kNoValue) v = remap[v];
    }
    for (ValueId& v : n.outputs) v = remap[v];
  }
  values = std::move(kept);
  for (ValueId& v : inputs) v = remap[v];
  for (ValueId& v : outputs) v = remap[v];
  reindex();
}

void Graph::erase_nodes(const std::vector<char>& gone) {
  std::vector<Node> kept;
  kept.reserve(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!gone[i]) kept.push_back(std::move(nodes[i]));
  }
  nodes = std::move(kept);
  reindex();
}

bool Graph::reorder_nodes(const std::vector<NodeId>& order) {
  if (order.size() != nodes.size()) return false;
  std::vector<char> seen(nodes.size(), 0);
  for (NodeId id : order) {
    if (id < 0 || static_cast<size_t>(id) >= nodes.size() || seen[id]) return false;
    seen[id] = 1;
  }
  std::vector<Node> reordered;
  reordered.reserve(order.size());
  for (NodeId id : order) reordered.push_back(std::move(nodes[id]));
  nodes = std::move(reordered);
  reindex();
  return true;
}

void Graph::reindex() {
  by_name_.clear();
  for (ValueId i = 0; i < static_cast<ValueId>(values.size()); ++i) {
    by_name_[values[i].name] = i;
    if (values[i].kind == ValueKind::kActivation) values[i].producer = -1;
  }
  for (NodeId n = 0; n < static_cast<NodeId>(nodes.size()); ++n) {
    for (ValueId o : nodes[n].outputs) {
      if (o != kNoValue) values[o].producer = n;
    }
  }
}

}  // namespace gv

// The project's graph IR: plain data. Every value has a concrete dtype and shape (graphs are specialized to the
// training shapes at import time). Nodes are kept in a valid topological order.
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/attributes.h"
#include "runtime/status.h"
#include "runtime/tensor.h"

namespace gv {

using ValueId = int32_t;
using NodeId = int32_t;
constexpr ValueId kNoValue = -1;

enum class ValueKind {
  kActivation,  // produced by a node
  kInput,       // fed by the caller
  kParameter,   // trainable initializer (data holds its initial value)
  kConstant,    // non-trainable initializer or folded constant (data holds it)
  kState,       // persistent mutable buffer updated in place by kernels (optimizer moments, gradient accumulators)
};

struct Value {
  std::string name;
  DType dtype = DType::kUndefined;
  Shape shape;
  ValueKind kind = ValueKind::kActivation;
  NodeId producer = -1;
  Tensor data;  // for kParameter, kConstant and kState
  // A persistent value kept inside another persistent value's buffer, `stored_at` bytes from its start, instead of a
  // buffer of its own (its `data` is then empty: dtype and shape give its size): the halves of a split master inside
  // the parameter's float32 buffer (runtime/split_masters.h).
  ValueId stored_in = kNoValue;
  int64_t stored_at = 0;
};

// Where a node sits in the model: the partitioner cuts and shards along this.
struct Placement {
  enum class Kind { kUnknown, kEmbedding, kLayer, kHead };
  Kind kind = Kind::kUnknown;
  int layer = -1;  // for kLayer: 0..num_layers-1
};
const char* placement_kind_name(Placement::Kind k);

struct Node {
  std::string name;
  std::string op_type;
  std::string domain;  // "" is the ONNX default domain; "galvatron" holds the project's own ops (grads, fused)
  int opset = 0;       // the opset version of `domain` the node was written against
  Attributes attrs;
  std::vector<ValueId> inputs;  // kNoValue for an omitted optional input
  std::vector<ValueId> outputs;
  Placement place;
};

class Graph {
 public:
  std::vector<Value> values;
  std::vector<Node> nodes;
  std::vector<ValueId> inputs;
  std::vector<ValueId> outputs;
  std::unordered_map<std::string, int> opsets;  // domain -> version
  int num_layers = 0;

  ValueId add_value(Value v);
  ValueId add_input(const std::string& name, DType dtype, Shape shape);
  ValueId add_initializer(const std::string& name, Tensor data, ValueKind kind);
  // Returns kNoValue when no value has this name.
  ValueId find(const std::string& name) const;
  // A name not yet used by any value, built from the prefix.
  std::string unique_name(const std::string& prefix);

  // Appends a node: looks up the op in the registry, infers output dtypes and shapes, creates the output values
  // (named after `output_names`, or fresh names). Fails with a message naming the node and op.
  Expected<std::vector<ValueId>> add_node(Node node, const std::vector<std::string>& output_names = {});

  const Value& value(ValueId id) const { return values[id]; }
  Value& value(ValueId id) { return values[id]; }
  bool is_constant(ValueId id) const { return id >= 0 && values[id].kind == ValueKind::kConstant; }
  std::vector<ValueId> parameters() const;

  // Removes nodes whose outputs reach no graph output, then values nothing refers to. Renumbers ids.
  void prune_dead();
  // Removes the values marked in `drop` (no node, graph input or output may still refer to them) and renumbers the
  // rest in order, in nodes, inputs and outputs; then reindexes. For passes that rewrite nodes and orphan values.
  void drop_values(const std::vector<char>& drop);
  // Removes the nodes marked in `gone` (indexed by NodeId), keeping the others' order, then reindexes. Values stay.
  void erase_nodes(const std::vector<char>& gone);
  // Puts the nodes in `order` (a permutation of all node ids), then reindexes. False if it is not one.
  bool reorder_nodes(const std::vector<NodeId>& order);
  // Rebuilds the producer links and the name index after nodes or values were edited in place.
  void reindex();
  // Number of users of each value (graph outputs count as a use).
  std::vector<int> use_counts() const;

 private:
  std::unordered_map<std::string, ValueId> by_name_;
  int64_t name_counter_ = 0;
};

}  // namespace gv

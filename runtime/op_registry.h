// The op registry: one entry (OpSchema) per op, holding everything the project knows about it: shape and dtype
// inference, the kernel per backend, and the backward rule (or which inputs are not differentiable).
// Entries are defined in runtime/ops/*.cpp, one file per family, and listed in runtime/ops/all_ops.cpp.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace gv {

// The default-domain opset versions the importer accepts. Op semantics that changed inside this range are handled by
// the entries themselves, reading Node::opset.
constexpr int kMinOpset = 13;
constexpr int kMaxOpset = 23;
// Domain of the project's own ops (gradient ops, fused ops, communication).
inline const char* kGalvatronDomain = "galvatron";

class InferContext {
 public:
  InferContext(const Graph& graph, const Node& node) : graph_(graph), node_(node) {
    out_dtypes.resize(node.outputs.size());
    out_shapes.resize(node.outputs.size());
  }
  const Node& node() const { return node_; }
  const Attributes& attrs() const { return node_.attrs; }
  int opset() const { return node_.opset; }
  int num_inputs() const { return static_cast<int>(node_.inputs.size()); }
  int num_outputs() const { return static_cast<int>(node_.outputs.size()); }
  bool has_input(int i) const { return i < num_inputs() && node_.inputs[i] != kNoValue; }
  DType dtype(int i) const { return graph_.value(node_.inputs[i]).dtype; }
  const Shape& shape(int i) const { return graph_.value(node_.inputs[i]).shape; }
  int rank(int i) const { return static_cast<int>(shape(i).size()); }
  // The input's value when it is a constant (initializer that is not a parameter, or a folded value); else null.
  const Tensor* constant(int i) const {
    if (!has_input(i)) return nullptr;
    const Value& v = graph_.value(node_.inputs[i]);
    return v.kind == ValueKind::kConstant ? &v.data : nullptr;
  }
  void set_output(int i, DType dtype, Shape shape) {
    out_dtypes[i] = dtype;
    out_shapes[i] = std::move(shape);
  }
  // An error naming the node and op: "node 'x' (Reshape): <msg>".
  Status fail(const std::string& msg) const;

  std::vector<DType> out_dtypes;
  std::vector<Shape> out_shapes;

 private:
  const Graph& graph_;
  const Node& node_;
};

class Communicator;  // runtime/communicator.h

struct KernelContext {
  const Node* node = nullptr;
  std::vector<TensorRef> inputs;   // an omitted optional input has data == nullptr
  std::vector<TensorRef> outputs;  // allocated with the inferred shapes
  // Per input: the graph's host copy of a constant (initializer) input, else null. Index inputs (Slice's starts, ...)
  // are read from here without a device round trip; the graph outlives the run.
  std::vector<const void*> host_inputs;
  uint64_t rng_seed = 0;           // for ops that draw random numbers (Dropout): the run's seed
  uint64_t rng_counter = 0;        // and a counter that advances with each step and micro-batch
  int64_t micro_batch = 0;         // index of the micro-batch within the step (pipeline Send/Recv tags)
  int num_threads = 0;             // 0: OpenMP's default
  Communicator* comm = nullptr;    // the world communicator, for collective ops; null: a single process

  const Attributes& attrs() const { return node->attrs; }
  bool has_input(int i) const { return i < static_cast<int>(inputs.size()) && inputs[i].data != nullptr; }
  Status fail(const std::string& msg) const;
};

class GradBuilder;  // runtime/autograd.h

using InferFn = Status (*)(InferContext&);
using KernelFn = Status (*)(KernelContext&);
using GradFn = Status (*)(GradBuilder&);

// Outputs a node can write in bfloat16 itself when its attribute out_dtype is 16, so that runtime/bf16_operands.cpp
// replaces the Casts that make their shared bf16 copies (the copy's readers are products).
struct Bf16Outputs {
  // The outputs whose copy the node then writes instead, folded all together or not at all (empty: none).
  std::vector<int> copies;
  // Outputs that turn bfloat16 with them and keep their values (Linear's pre-activation); `allowed` checks that their
  // readers take bfloat16.
  std::vector<int> companions;
  // For an op without the attribute (ONNX's LayerNormalization, RMSNormalization): the domain of its twin of the same
  // name that has it; the fold moves the node there. Empty: the op itself has out_dtype.
  std::string twin;
  // A further condition on the node in its graph (null: none), e.g. that a Linear adds no residual.
  bool (*allowed)(const Graph&, const Node&) = nullptr;
};

struct OpSchema {
  std::string domain;  // "" or kGalvatronDomain
  std::string name;
  int min_inputs = 0;
  int max_inputs = 0;
  int min_outputs = 1;
  int max_outputs = 1;
  InferFn infer = nullptr;
  KernelFn cpu = nullptr;
  KernelFn cuda = nullptr;  // filled by the CUDA backend when it is built
  // Backward rule. When null, the op is non-differentiable (no input receives a gradient): comparisons, Shape, ...
  GradFn grad = nullptr;
  // Inputs that never receive a gradient even when `grad` is set (indices, shapes, masks, labels).
  std::vector<int> nondiff_inputs;
  // Output 0 holds input 0's bytes unchanged, only with another shape (Reshape, Squeeze, ...): the memory planner may
  // give both one buffer and the executor then skips the node.
  bool view = false;
  // A node of this op without outputs only reads its inputs (WaitCollectives, which lists them to keep the buffers of
  // collectives in flight alive): the memory planner need not treat them as written in place.
  bool reads_only = false;
  // A node of this op without outputs writes only its input 0 and reads the others (AccumulateGrad,
  // MatMulAccumulate): the other inputs may keep shared (view) buffers.
  bool writes_first_input_only = false;
  // A node of this op without outputs writes its input i only where this says so (AdamW: its parameter, moments and
  // copies, not its gradient unless attr zero_grad, nor the learning rate or step), so that the inputs it only reads
  // may keep shared (view) buffers. Null: reads_only and writes_first_input_only decide.
  bool (*writes_input)(const Node& n, size_t i) = nullptr;
  // Outputs this op's kernels leave unwritten when given no buffer (a null data pointer): the memory planner gives
  // none to such an output that nothing reads (not a graph output, not kept alive). LayerNormalizationGrad's float32
  // dX once its readers take the bf16 copy (runtime/bf16_residual_stream.cpp).
  std::vector<int> skippable_outputs;
  Bf16Outputs bf16_outputs;  // outputs the node can write in bf16 itself (out_dtype 16)
  std::string doc;  // one line, for `galvatron inspect` and errors
};

// Whether node `n` (of op `schema`, null if unregistered) may write its input `i` in place: only nodes without outputs
// do, all their inputs unless the op only reads them, writes only its first, or says which (writes_input).
inline bool node_writes_input(const OpSchema* schema, const Node& n, size_t i) {
  if (!n.outputs.empty() || (schema && schema->reads_only)) return false;
  if (schema && schema->writes_input) return schema->writes_input(n, i);
  return !(schema && schema->writes_first_input_only && i != 0);
}

class OpRegistry {
 public:
  // The process-wide registry with every op of runtime/ops registered.
  static OpRegistry& global();

  void add(OpSchema schema);
  // Null when the op is unknown.
  const OpSchema* find(const std::string& domain, const std::string& name) const;
  OpSchema* find_mutable(const std::string& domain, const std::string& name);
  std::vector<const OpSchema*> all() const;
  // Sorted names of the default-domain ops, for error messages.
  std::string supported_list() const;

 private:
  std::map<std::pair<std::string, std::string>, OpSchema> ops_;
};

// Runs one node on the CPU over host tensors: used by constant folding and tests. Output shapes come from
// inference, so `graph` must hold the node's input values.
Expected<std::vector<Tensor>> eval_node_cpu(const Graph& graph, const Node& node, const std::vector<Tensor>& inputs);

}  // namespace gv

// Reverse-mode autograd over the IR: builds the backward graph as ordinary nodes appended to the forward graph.
// Each op's backward rule (OpSchema::grad) receives a GradBuilder, reads the forward node's inputs, outputs and
// output gradients, emits nodes, and sets the gradients of its inputs.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "runtime/op_registry.h"

namespace gv {

class GradBuilder {
 public:
  GradBuilder(Graph& graph, NodeId forward_node, std::vector<ValueId> grad_outputs, std::vector<char> needs_grad);

  const Node& node() const { return graph_.nodes[node_]; }
  const Attributes& attrs() const { return node().attrs; }
  Graph& graph() { return graph_; }
  int num_inputs() const { return static_cast<int>(node().inputs.size()); }
  int num_outputs() const { return static_cast<int>(node().outputs.size()); }
  // I(i), O(i): the forward node's input and output values (kNoValue for an omitted optional input).
  ValueId input(int i) const { return i < num_inputs() ? node().inputs[i] : kNoValue; }
  ValueId output(int i) const { return node().outputs[i]; }
  // GO(i): the gradient flowing into output i, or kNoValue when no gradient reaches that output.
  ValueId grad_output(int i) const { return grad_outputs_[i]; }
  // Whether input i needs a gradient (it leads to a parameter). Rules may skip work for the others.
  bool needs_grad(int i) const { return i < static_cast<int>(needs_grad_.size()) && needs_grad_[i]; }
  // GI(i): sets the gradient of input i. Its shape must equal the input's shape.
  void set_grad_input(int i, ValueId g);

  // By value: emitting nodes grows graph.values and would leave a reference dangling.
  Shape shape(ValueId v) const { return graph_.value(v).shape; }
  DType dtype(ValueId v) const { return graph_.value(v).dtype; }

  // Emits a node (placement of the forward node, opset of its domain). On failure records the error (see status())
  // and returns kNoValue / an empty list, so rules can be written straight through and checked once at the end.
  std::vector<ValueId> emit(const std::string& op_type, std::vector<ValueId> inputs, Attributes attrs = {},
                            int num_outputs = 1, const std::string& domain = "");
  ValueId emit1(const std::string& op_type, std::vector<ValueId> inputs, Attributes attrs = {},
                const std::string& domain = "") {
    auto r = emit(op_type, std::move(inputs), std::move(attrs), 1, domain);
    return r.empty() ? kNoValue : r[0];
  }
  // A new constant value.
  ValueId constant(Tensor t);
  ValueId constant_i64(const std::vector<int64_t>& v) {
    return constant(Tensor::from_i64(v, {static_cast<int64_t>(v.size())}));
  }
  ValueId scalar(DType dtype, double v) { return constant(Tensor::scalar(dtype, v)); }
  // Sums a broadcast gradient back to `target` shape (numpy broadcasting rules): ReduceSum + Reshape as needed.
  ValueId sum_to_shape(ValueId g, const Shape& target);
  // Reshape to a static shape.
  ValueId reshape(ValueId x, const Shape& target);

  // The first error any emit() hit, or ok.
  const Status& status() const { return status_; }
  void record_error(Status s) {
    if (status_.is_ok()) status_ = std::move(s);
  }
  const std::vector<ValueId>& grad_inputs() const { return grad_inputs_; }

 private:
  Graph& graph_;
  NodeId node_;
  std::vector<ValueId> grad_outputs_;
  std::vector<char> needs_grad_;
  std::vector<ValueId> grad_inputs_;
  Status status_;
};

struct AutogradResult {
  // Gradient value of each requested value (kNoValue when the loss does not depend on it).
  std::map<ValueId, ValueId> grads;
  size_t first_backward_node = 0;  // nodes [first_backward_node, end) form the backward pass
};

// Appends the backward pass of `loss` (a scalar or one-element value) with respect to `wrt` to `graph`.
// Fails naming the op and node when a path from the loss to `wrt` crosses an op without a backward rule.
Expected<AutogradResult> build_backward(Graph& graph, ValueId loss, const std::vector<ValueId>& wrt);

}  // namespace gv

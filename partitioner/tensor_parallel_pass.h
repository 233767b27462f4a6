// Internals of the tensor-parallel pass (tensor_parallel.h): the state shared by the driver
// (tensor_parallel.cpp: checks, weight cutting, node insertion, re-inference) and the per-op propagation rules
// (tensor_parallel_propagation.cpp). Not a public interface.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "partitioner/tensor_parallel.h"

namespace gv::partitioner::tp_detail {

// How a value is divided over the TP group: its global axis `axis` is viewed as [outer, parts, inner] and each rank
// holds one part (outer * inner entries). axis < 0: every rank holds the whole value.
struct Cut {
  int axis = -1;
  int64_t outer = 1;
  int parts = 1;
  bool is_cut() const { return axis >= 0; }
  bool operator==(const Cut& o) const { return axis == o.axis && outer == o.outer && parts == o.parts; }
  bool operator!=(const Cut& o) const { return !(*this == o); }
};

class Pass {
 public:
  explicit Pass(Graph& g) : g_(g) {}
  Expected<std::map<std::string, TensorShard>> run(const std::vector<TensorParallelLayer>& layers);

 private:
  // ---- driver (tensor_parallel.cpp) ----
  Status check_layers(const std::vector<TensorParallelLayer>& layers);
  Status check_heads(const TensorParallelLayer& L);
  const TensorParallelLayer* layer_of(const Node& n) const;
  // Cuts a weight operand (a parameter, or a Transpose / Identity / Cast chain over one) along `axis` of `v`.
  Status cut_weight(ValueId v, int axis, int64_t outer, const TensorParallelLayer& L, NodeId user);
  // The output of a TensorParallelCopy of the whole value `x`, inserted before node `at` (one per value and layer).
  ValueId copy_of(ValueId x, NodeId at, const TensorParallelLayer& L);
  // Makes output `out_index` of node `n` a partial sum and inserts a TensorParallelReduce after the node that writes
  // the original value. Returns the partial value.
  ValueId reduce_after(NodeId n, int out_index, const TensorParallelLayer& L);
  ValueId new_value(const std::string& name, ValueId like);
  ValueId new_constant(const std::string& name, Tensor data);
  Status rebuild_and_check();
  std::string where(NodeId n) const;
  std::string in_layer(const TensorParallelLayer& L) const;

  // ---- propagation (tensor_parallel_propagation.cpp) ----
  Status visit(NodeId n, const TensorParallelLayer& L);
  Status visit_weight_matmul(NodeId n, const TensorParallelLayer& L, int weight_input);
  Status visit_gemm(NodeId n, const TensorParallelLayer& L);
  Status visit_activation_matmul(NodeId n, const TensorParallelLayer& L);
  Status visit_elementwise(NodeId n, const TensorParallelLayer& L, const std::vector<int>& data_inputs);
  Status visit_reshape(NodeId n, const TensorParallelLayer& L);
  Status visit_transpose(NodeId n, const TensorParallelLayer& L);
  Status visit_split(NodeId n, const TensorParallelLayer& L);
  Status visit_slice(NodeId n, const TensorParallelLayer& L);
  Status visit_concat(NodeId n, const TensorParallelLayer& L);
  Status visit_expand(NodeId n, const TensorParallelLayer& L);
  Status visit_squeeze(NodeId n, const TensorParallelLayer& L, bool unsqueeze);
  Status visit_axis_op(NodeId n, const TensorParallelLayer& L);  // Softmax, LogSoftmax, norms, reductions
  Status visit_gather(NodeId n, const TensorParallelLayer& L);
  // The outer factor of a column-parallel output: k when its consumers Split it into k equal parts along the cut
  // axis (through bias adds, reshapes and transposes), else 1.
  Expected<int64_t> column_outer(ValueId v, int axis, const TensorParallelLayer& L, int depth);
  // Where the cut of `in` (global shape in_shape) lands in a reshape to out_shape; error text in *why.
  bool map_reshape(const Shape& in_shape, const Cut& c, const Shape& out_shape, Cut* out, std::string* why) const;
  // An input that is whole but meets a cut value at full size along `axis` (of the input): cut it to match
  // (weights, constants) or fail.
  Status match_whole_input(NodeId n, int input, int axis, const Cut& c, const TensorParallelLayer& L);
  Status cannot(NodeId n, const TensorParallelLayer& L, const std::string& why) const;
  void set_all_outputs(NodeId n, const Cut& c);

  Graph& g_;
  std::vector<const TensorParallelLayer*> by_layer_;  // layer index -> its entry (tp > 1), or null
  std::vector<Shape> global_;                         // per value: its shape in the unsplit graph
  std::vector<Cut> cut_;                              // per value: how it is cut on this rank
  std::vector<char> weight_;                          // per value: computed from parameters and constants only
  std::vector<std::vector<NodeId>> users_;            // per value: reading nodes (original numbering)
  std::vector<std::vector<Node>> before_, after_;     // nodes to insert around each original node
  std::map<std::pair<ValueId, int>, ValueId> copies_;  // (whole value, layer) -> its TensorParallelCopy output
  std::map<ValueId, const TensorParallelLayer*> cut_params_;  // parameter -> the layer that cut it
};

}  // namespace gv::partitioner::tp_detail

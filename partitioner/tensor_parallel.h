// Megatron-style tensor parallelism as a graph pass over a forward graph.
//
// In each listed layer, the first matrix products fed by the replicated residual stream (attention Q, K, V, fused as
// GPT-2's one [D, 3D] Conv1D or separate as Llama's GQA projections; the MLP's fc / gate / up) become column
// parallel: their weight (and bias) keeps this rank's share of the output axis, by whole heads (a fused QKV weight per
// q, k and v part: TensorShard::outer = 3), and their input passes through a galvatron::TensorParallelCopy (forward
// identity, backward all-reduce). The pieces flow through attention per head and through the MLP's elementwise ops
// (shape constants of Reshape, Expand, Split are rewritten to local sizes) into the row-parallel products (attention
// output, MLP down / fc2): weight cut along its input axis, followed by a galvatron::TensorParallelReduce (forward
// all-reduce sum, backward identity). A bias of a row-parallel Gemm is added once, after the reduce.
//
// How: sharding propagation over each layer's nodes in order, tracking per value which axis is cut and how (the axis
// viewed as [outer, tp, inner] like TensorShard). A weight MatMul/Gemm is column parallel when its activation input
// is whole, row parallel when that input is cut on the contraction axis; the layout of a column weight comes from its
// consumers (a Split into k equal parts along the output axis: outer = k). Every op that reads a cut value either has
// a rule here or is an error naming node, op and layer; nothing is guessed. Afterwards every node's shapes are
// inferred again and checked against the expected local shapes.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "runtime/graph.h"
#include "runtime/sharded_tensor.h"

namespace gv::partitioner {

// One layer's tensor parallelism on this rank.
struct TensorParallelLayer {
  int layer = 0;           // Node::place.layer of the layer's nodes (Placement::Kind::kLayer)
  int tp = 1;              // TP degree; 1 leaves the layer untouched
  int index = 0;           // this rank's position in `group`
  std::vector<int> group;  // world ranks of the TP group (tp entries); the Copy / Reduce nodes' `group` attribute
};

// Rewrites the nodes of the listed layers of a forward graph in place so that this rank computes its part. Returns,
// for every parameter it cut, the TensorShard saying which piece of the whole tensor the (same-named, now smaller)
// parameter holds. Errors name the layer, node and op (heads not divisible by tp, an op that cannot run on a piece).
// On error the graph may be partly rewritten: start again from a fresh import.
Expected<std::map<std::string, TensorShard>> apply_tensor_parallel(Graph& g, const std::vector<TensorParallelLayer>& layers);

// Names of the ops the pass inserts (domain galvatron).
inline const char* kTensorParallelCopyOp = "TensorParallelCopy";
inline const char* kTensorParallelReduceOp = "TensorParallelReduce";

}  // namespace gv::partitioner

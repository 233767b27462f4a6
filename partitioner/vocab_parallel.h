// Vocabulary parallelism (Galvatron's `vtp`, Megatron's VocabParallelEmbedding + vocab-parallel cross-entropy) as a
// graph pass over a forward graph.
//
// Each rank of the group holds rows [index * V / vtp, (index + 1) * V / vtp) of the word embedding [V, D] and of the
// LM head's weight (tied or separate; a head weight stored as [D, V] keeps those columns):
//
//   embedding (Placement kEmbedding): the Gather of the word embedding becomes
//       out   = ids < start || ids >= end            local = Where(out, 0, ids - start)
//       piece = Gather(E_local, local) * Cast(!out)[..., None]
//       emb   = TensorParallelReduce(piece)          (sum over the group; backward identity)
//   head (Placement kHead): the product x @ W^T (MatMul of a [D, V] parameter or of a Transpose of a [V, D] one, or a
//       Gemm) reads TensorParallelCopy(x) (backward: all-reduce) and gives local logits [.., V / vtp]; Reshapes of the
//       logits that keep the vocabulary last ([B, T, V] -> [B*T, V]) are rewritten to the local size; then
//       loss = galvatron::VocabParallelCrossEntropy(logits [N, V / vtp], labels [N])  (runtime/ops/vocab_parallel_ops.cpp)
//   either replacing the graph's own SoftmaxCrossEntropyLoss of the logits (its labels and ignore_index kept), or, when
//   the logits are a graph output, against a new int64 input `labels_input` of the logits' shape without the last
//   axis. The graph's outputs become that scalar mean loss, which equals the unsplit graph's cross-entropy on every
//   rank (so build_training_graph takes it as the loss).
//
// A tied embedding (GPT-2: the head reads the word embedding through a Transpose) is cut once. A graph holding only
// the embedding (first pipeline stage) or only the head (last stage) is cut where it has them; then the other part is
// absent. The word embedding is the kEmbedding Gather (axis 0) of a [V, D] parameter with non-constant indices whose V
// is the head's output size (without a head: the largest such table). Errors: V not divisible by vtp (names V and
// vtp; no padding), a head that is not a plain product of the hidden states and a parameter, a cut weight read by other
// nodes, logits read by anything but Reshapes and one SoftmaxCrossEntropyLoss (mean, no class weights), a bad group.
// vtp = 1 leaves the graph untouched and returns no shards.
// On error the graph may be partly rewritten: start again from a fresh import.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/graph.h"
#include "runtime/sharded_tensor.h"

namespace gv::partitioner {

struct VocabParallel {
  int vtp = 1;             // vocabulary-parallel degree
  int index = 0;           // this rank's position in `group`
  std::vector<int> group;  // world ranks (vtp entries)
};

// Rewrites the embedding and head of a forward graph for this rank (see the file comment). Returns the TensorShard of
// every parameter it cut (axis 0 of a [V, D] weight, axis 1 of a [D, V] one; parts vtp, index vp.index).
Expected<std::map<std::string, TensorShard>> apply_vocab_parallel(Graph& g, const VocabParallel& vp,
                                                                  const std::string& labels_input = "labels",
                                                                  int64_t ignore_index = -100);

// The loss op the pass inserts (domain galvatron).
inline const char* kVocabParallelCrossEntropyOp = "VocabParallelCrossEntropy";

}  // namespace gv::partitioner

// Turns a forward graph into one static training step: loss, backward pass (runtime/autograd.h), optional activation
// checkpointing per layer, gradient accumulation, global gradient norm and the optimizer, all as graph nodes.
//
// Node order of the result:  [0, optimizer_begin)        forward + backward (+ accumulation), run once per micro-batch
//                            [optimizer_begin, end)       (data parallel: gradient all-reduces,) gradient norm and
//                                                         optimizer updates, run once per step
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace gv {

struct OptimizerConfig {
  enum class Kind { kAdamW, kSgd };
  Kind kind = Kind::kAdamW;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  double momentum = 0.0, dampening = 0.0;
  bool nesterov = false;
  double grad_clip = 0.0;  // max global gradient norm; 0 turns clipping off
};

struct TrainingGraphOptions {
  std::string loss_output;          // a scalar float graph output to use as the loss ("" = find it)
  std::string logits_output;        // "" = the output named "logits", else the first float output of rank >= 2
  std::string labels_input = "labels";
  int64_t ignore_index = -100;
  std::set<int> checkpoint_layers;  // layers whose forward is recomputed in the backward pass
  int grad_accum_steps = 1;         // micro-batches per optimizer step
  // PyTorch's Embedding(padding_idx): the word-embedding row of this token gets no gradient from the lookup (HF's
  // pad_token_id for BERT-style models). ONNX cannot express it, so it is given here; -1: none. Applies to Gathers of
  // a parameter whose indices are the graph input `token_input`.
  int64_t padding_idx = -1;
  // Intermediate values whose gradients are also reported (Trainer::compute_gradients), e.g. the importer's tied
  // copies of a parameter, so that a caller can give the gradient with respect to each original initializer.
  std::vector<std::string> report_grads_of;
  std::string token_input = "input_ids";
  // Data parallelism: one galvatron AllReduce node per gradient, averaging it across the ranks of the executor's
  // communicator, first in the optimizer region (before GradNorm). Set it only when there is more than one rank.
  bool data_parallel = false;
  OptimizerConfig optimizer;
};

struct TrainingGraph {
  Graph graph;
  ValueId loss = kNoValue;
  ValueId labels = kNoValue;        // the labels input the builder added (kNoValue when the graph computes its loss)
  ValueId lr = kNoValue;            // float64 scalar input fed every step
  ValueId step = kNoValue;          // int64 scalar input: the 1-based optimizer step
  ValueId grad_norm = kNoValue;     // float32 scalar: global norm of the averaged gradient, before clipping
  std::vector<ValueId> params;      // trainable parameters, in graph order
  std::map<ValueId, ValueId> grads;            // param -> its gradient (arena value, valid after backward)
  std::map<std::string, ValueId> reported_grads;  // report_grads_of name -> its gradient (kNoValue: none)
  std::map<ValueId, ValueId> grad_accumulators;  // param -> kState buffer (only when grad_accum_steps > 1)
  std::map<ValueId, std::vector<ValueId>> optimizer_state;  // param -> kState buffers ([m, v] or [momentum])
  size_t backward_begin = 0;
  size_t optimizer_begin = 0;
};

Expected<TrainingGraph> build_training_graph(Graph forward, const TrainingGraphOptions& options);

// Rewrites `graph` so that nodes of the given layers ([0, backward_begin) and Node::place) are recomputed right
// before their first use by the backward pass, instead of keeping their activations alive. Exposed for tests.
Status apply_activation_checkpointing(Graph& graph, size_t backward_begin, const std::set<int>& layers);

}  // namespace gv

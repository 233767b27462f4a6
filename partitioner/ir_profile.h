// Model memory profile taken from the IR, not estimated: parameter bytes per layer and for the embedding / LM head
// (from the graph's parameters and the placement of the nodes that read them), and activation bytes per layer (the
// forward values of that layer's nodes that the backward pass of the training graph reads), with the Megatron tensor-
// parallel split decided by data flow. ModelProfile (profile.h) is filled from it in Galvatron's units (MB).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/zoo.h"
#include "partitioner/profile.h"
#include "runtime/graph.h"
#include "runtime/status.h"

namespace gv::partitioner {

// Bytes of one part of the model (a layer, or the embedding / head), split into the part a Megatron TP (or vocab-TP)
// group of degree t divides by t and the part every rank of the group holds.
struct SplitBytes {
  int64_t sharded = 0;
  int64_t replicated = 0;
  int64_t total() const { return sharded + replicated; }
  double at_tp(int tp) const { return static_cast<double>(sharded) / tp + static_cast<double>(replicated); }
};

struct IrLayerMemory {
  int64_t param_bytes = 0;      // fp32 bytes of the layer's trainable parameters
  int64_t param_count = 0;
  SplitBytes act;               // saved activations (forward values read by the backward pass), whole batch
  int64_t act_checkpoint = 0;   // the same with the layer checkpointed (what stays alive: the layer's boundary values)
};

// What the IR says, for one batch size. Embedding and head parameters: a parameter read by both (tied word
// embedding) is counted in both; `other_params_bytes` counts it once.
struct IrMemory {
  int64_t batch = 0, seq = 0;
  int64_t hidden_size = 0;
  std::vector<IrLayerMemory> layers;
  SplitBytes embed_params, head_params;  // sharded = the tensors with a vocabulary-size dimension
  SplitBytes other_params;               // embedding + head, each parameter once
  SplitBytes embed_act, head_act;        // saved activations of the embedding / head nodes (incl. the loss)
  int64_t unplaced_act = 0;              // saved activations of nodes with no placement (reported, not used)
};

struct IrMemoryOptions {
  int64_t vocab_size = 0;  // 0: the largest dimension of the embedding's parameters
  bool checkpoint = true;  // also build the fully checkpointed training graph for act_checkpoint
  int float_bytes = 4;     // bytes per float activation element: 4 as the IR holds them, 2 for bf16/fp16 training
};

// Builds the training graph of `forward` (a model imported for `batch` samples) and measures it.
Expected<IrMemory> measure_ir_memory(const Graph& forward, const IrMemoryOptions& opt = {});

// A zoo model's memory without building it at full size: the per-layer numbers come from a 1-layer build of the same
// config with a 128-token vocabulary (layers do not depend on the vocabulary or on the number of layers), the
// embedding/head parameters from parameter_specs (exact, nothing allocated), and the embedding/head activations from
// two 1-layer builds with vocabularies 128 and 256, extrapolated linearly to the real vocabulary (the graph is the
// same and every shape is affine in the vocabulary size, so this is exact). `seq` 0: the config's seq_length.
Expected<IrMemory> measure_zoo_memory(const ModelConfig& config, int64_t batch = 1, int64_t seq = 0,
                                      int float_bytes = 4);

struct IrProfileOptions {
  std::string name;
  std::vector<int> tp_degrees = {1, 2, 4, 8};
};

// The memory part of a ModelProfile (one layer type, Galvatron's units): parameter_size_mb = fp32 MB of one layer;
// act_per_sample_mb[tp] = (sharded / tp + replicated) MB per sample; `checkpoint` = boundary MB per sample; other
// memory per vocab-TP degree: model_states = 4 x parameter MB (param, grad, 2 Adam moments) / vtp for the vocabulary
// tensors, activation per sample likewise. pp_off = embedding + head, pp_on_first = embedding, pp_on_last = head.
// With `sequence_parallel`, every activation is divided by tp (Megatron SP shards the replicated part too).
ModelProfile model_profile_from_ir(const IrMemory& m, const IrProfileOptions& opt, bool sequence_parallel);

}  // namespace gv::partitioner

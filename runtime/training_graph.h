// Turns a forward graph into one static training step: loss, backward pass (runtime/autograd.h), optional activation
// checkpointing per layer, gradient accumulation, global gradient norm and the optimizer, all as graph nodes.
//
// Node order of the result:  [0, prologue_end)           the parameters' persistent bf16 copies (optimizer_bf16_copies),
//                                                         run before the first step and after parameters are loaded
//                            [prologue_end, optimizer_begin) forward + backward (+ accumulation), once per micro-batch
//                            [optimizer_begin, end)       (data parallel: gradient all-reduces,) gradient norm and
//                                                         optimizer updates, run once per step
// With overlap_grad_sync (one micro-batch, no pipeline) the data-parallel gradient all-reduces (and ZeRO-2's
// reduce-scatters) sit inside the backward pass instead, each right after the last node that touches its gradient,
// with attr async = 1, and the backward region ends with one WaitCollectives node (so [0, optimizer_begin) leaves every
// gradient reduced and ready).
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "runtime/bf16_operands.h"
#include "runtime/fusion.h"
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
  // Attention nodes the backend's flash kernels take keep their row statistics for the backward
  // (runtime/fusion.h save_attention_lse; after fuse_ops' passes). Set from Backend::saves_attention_statistics.
  bool save_attention_lse = false;
  // With save_attention_lse: attention reads Q, K, V in place from the QKV product (runtime/fusion.h
  // pack_attention_qkv). Set from Backend::packs_attention_qkv.
  bool pack_attention_qkv = false;
  // Product operands read by several large products get one shared bfloat16 copy (runtime/bf16_operands.h; after
  // autograd, whatever fuse_ops says). Set from Backend::shares_bf16_operands.
  bool bf16_operands = false;
  Bf16OperandOptions bf16_operand_options;  // which products and operands qualify (tests lower min_mn)
  // With bf16_operands: the packed attention's QKV, Y and dY stored in bf16 where only attention nodes read them
  // (runtime/bf16_operands.h bf16_attention_io). Set from Backend::bf16_attention_io.
  bool bf16_attention_io = false;
  // With fuse_skip_norm 16 and fuse_norm_grad_outputs: the residual stream between the norms, and its gradient, kept
  // in bf16 (runtime/bf16_operands.h bf16_residual_stream). Set from Backend::bf16_residual_stream.
  bool bf16_residual_stream = false;
  // The backward product into a GELU's output, the GELU's gradient and the layer's bias gradient as one galvatron
  // GeluGradMatMul (runtime/fusion.h fuse_gelu_grad_products; after bf16_operands). Set from
  // Backend::fuses_gelu_grad_product (the CUDA backend's cuBLASLt DGELU epilogue).
  bool fuse_gelu_grad_product = false;
  // Parallel execution, as a plan lays it out (runtime knows groups of world ranks, not plans). Per parameter name:
  // how its gradient is combined across processes before the update. Parameters not listed: no communication
  // (or, with data_parallel, a mean over the whole world).
  struct ParamSync {
    std::vector<int> dp_group;    // world ranks whose gradients are summed (more than one rank: communication)
    bool zero2 = false;           // reduce-scatter over dp_group, update only this rank's flat range, gather it back
    std::vector<int> tied_group;  // world ranks holding copies of this parameter in other pipeline stages: summed
    double norm_weight = 1.0;     // 1 / number of identical copies of this gradient in the world (for the norm)
  };
  std::map<std::string, ParamSync> param_sync;
  int rank = 0;                   // this process's world rank (to find itself in groups)
  bool global_grad_norm = false;  // all-reduce the (weighted) squared gradient norm over the world
  // Gradients are sums over this many data-parallel batch slices (each slice's loss a mean): the norm and the update
  // scale them by 1 / (loss_replicas * grad_accum_steps).
  int loss_replicas = 1;
  // Overlap data-parallel gradient reductions with the backward pass: each plain DP AllReduce, and each ZeRO-2
  // flatten + ReduceScatter (not tied-copy sums), moves from the optimizer region to right after the last backward
  // node that reads or writes its gradient, with attr async = 1 (CUDA + NCCL: Communicator::*_async on a separate
  // stream; the CPU kernels block as before, so results are identical), and one WaitCollectives ends the backward
  // region. ZeRO-2's GatherShardsInPlace after each update becomes async too (overlapping the next updates), with a
  // WaitCollectives at the end of the step. Applies only with grad_accum_steps == 1 and no pipeline (no Send/Recv
  // nodes); otherwise no effect.
  bool overlap_grad_sync = true;
  // With overlap_grad_sync and ZeRO-2 in bf16 (bf16_grad_reduce): the async gathers of the weights' bf16 copies move
  // from the end of the step to the start of the next step's forward pass, in the order of their first readers, each
  // reader after a WaitCollectives for its own gathers (attr keep_pending: the later ones run on;
  // prefetch_copy_gathers). The copies' other ranks' ranges are then refreshed at the start of the next forward pass,
  // not at the end of the step (no one else reads them: checkpoints and parameters() take the float32 weights). Off:
  // gathered at the end of the step.
  bool prefetch_zero2_gathers = true;
  // Plain data-parallel gradients all-reduced in bfloat16 (PyTorch DDP's bf16 compression hook, Megatron's
  // grad-reduce-in-bf16): each float32 gradient's AllReduce reads a bf16 copy (half the bytes on the wire), widened
  // back to float32 for the norm and the update; under overlap_grad_sync the widening Cast follows the wait and the
  // gradient a weight's dW product writes goes straight to bf16 (with bf16_operands: the backend's bf16 products).
  // The sum is rounded to bf16 (NCCL: partial sums too), so results differ from float32 reduction within bf16
  // precision. Tied-copy sums stay float32. ZeRO-2 reduce-scatters go bf16 for the weights whose bf16 copies AdamW
  // keeps (optimizer_bf16_copies, one micro-batch) and that nothing else reads: AdamW then writes its shard's range
  // of the copy, and the copy, not the float32 weight, is gathered (TrainingGraph::sharded_masters); other ZeRO-2
  // gradients stay float32. Off: float32 all-reduces.
  bool bf16_grad_reduce = false;
  // With bf16_grad_reduce: gradients of fewer elements stay float32 (a bias saves a few KB on the wire but costs two
  // conversion kernels of a few microseconds each; gpt-1.5b has ~390 of them).
  int64_t bf16_grad_reduce_min_numel = 65536;
  // With bf16_grad_reduce and AdamW: the gradient norm and AdamW read the reduced bf16 gradients, without a widening
  // Cast to float32 after the all-reduce (the same values: the widening is exact). Off: the widened float32 gradients
  // (Backend::reads_bf16_grads: GALVATRON_CUDA_BF16_GRADS=0 on CUDA, for comparisons).
  bool optimizer_reads_bf16_grads = true;
  // With bf16_operands, AdamW and one micro-batch: weight gradients that no collective reduces, made by dW products on
  // bf16 operands, are written in bf16 by those products (PyTorch's autocast rounds them so too) and read so by the
  // gradient norm and AdamW. Set from Backend::bf16_weight_grads.
  bool bf16_weight_grads = false;
  // Fusion passes (runtime/fusion.h) over the forward graph before autograd: attention chains -> Attention, GELU
  // chains -> Gelu, the head product and the loss -> LinearCrossEntropy. Off: the graph runs as imported.
  bool fuse_ops = true;
  // With fuse_ops: whether the head product and the loss fuse (off: the logits exist whole, for comparisons).
  bool fuse_linear_cross_entropy = true;
  // With fuse_ops: products with their bias and GELU -> galvatron Linear (runtime/fusion.h fuse_linear). Set from
  // Backend::fuses_linear (the CUDA backend's cuBLASLt epilogues); the CPU gains nothing from it.
  bool fuse_linear = false;
  // With fuse_linear: narrow Linears of one input (grouped-query K and V products) as one (fuse_sibling_linears).
  // Set from Backend::fuses_sibling_linears.
  bool fuse_sibling_linears = false;
  // With fuse_ops: residual adds folded into their Linear (forward; runtime/fusion.h fuse_linear_residual_adds) and
  // the residual stream's gradient sums into LayerNormalizationGrad (backward; fuse_norm_grad_residual_adds). Set from
  // Backend::fuses_residual_add and Backend::fuses_norm_grad_add.
  bool fuse_residual_add = false;
  bool fuse_norm_grad_add = false;
  // With bf16_operands: LayerNormalizationGrad writes the bf16 copy of its dX and that copy's bias-gradient sums
  // (runtime/fusion.h fuse_norm_grad_outputs) instead of a Cast and a BiasGrad. Set from
  // Backend::fuses_norm_grad_outputs.
  bool fuse_norm_grad_outputs = false;
  // AttentionPackedGrad outputs the QKV bias gradient (the keepdims BiasGrad of its dQKV) itself
  // (runtime/fusion.h fuse_attention_grad_bias_sums): exact on the CPU; the CUDA kernel sums as it writes dQKV.
  bool fuse_attention_bias_sums = true;
  // With fuse_ops: LayerNormalization keeps its row statistics for its gradient (runtime/fusion.h
  // save_norm_statistics). Set from Backend::saves_norm_statistics.
  bool save_norm_statistics = false;
  // > 0: packed attention whose head size is not a multiple of this keeps its padded bf16 heads for its gradient
  // (runtime/fusion.h save_attention_heads). Set from Backend::attention_saved_head_multiple.
  int64_t attention_saved_head_multiple = 0;
  // With fuse_residual_add: the residual add whose stream a LayerNorm reads moves from the Linear's epilogue into
  // galvatron SkipLayerNormalization, the product writing its result as this ONNX type (1 float32, 16 bfloat16; 0
  // off; runtime/fusion.h fuse_skip_layer_norms). Set from Backend::skip_norm_branch.
  int fuse_skip_norm = 0;
  // With fuse_ops: a tied embedding's gradient sum Add(GatherGrad, D) becomes GatherGradAdd(D, ..) (runtime/fusion.h
  // fold_gather_grad_adds): the [V, C] zeroing and the Add go.
  bool fold_gather_grad_adds = true;
  // With bf16_operands and AdamW: the weights' bf16 copies persist across steps and AdamW rewrites them from the
  // updated weights (runtime/bf16_operands.h keep_bf16_param_copies) instead of a Cast per weight per step. Set from
  // Backend::optimizer_writes_bf16_copies.
  bool optimizer_bf16_copies = false;
  // With optimizer_bf16_copies: each such weight's float32 master held as its bf16 copy and a uint16 state of its low
  // halves, both inside the parameter's buffer (runtime/split_masters.h): 2 bytes per parameter less read and
  // written by AdamW, and 2 less memory.
  bool split_masters = true;
  // AdamW updates of small whole parameters (under 2^20 elements) grouped into galvatron AdamWMulti nodes of 48.
  bool multi_tensor_optimizer = true;
  // Each optimizer update right after the last backward node that touches its parameter, gradient or bf16 copy,
  // instead of after the whole backward pass (move_updates_into_backward): the CUDA backend runs them on a second
  // stream beside the rest of the backward, the CPU in the new order. The same results; applies only without gradient
  // clipping (which needs the global norm first), with one micro-batch and no communication. The trainer's
  // compute_gradients cannot be used then (the updates run inside the backward).
  bool updates_in_backward = false;
  // With updates_in_backward, when every update is an AdamW (or AdamWMulti): the gradient norm (a metric then) is
  // summed by the updates themselves, which read each gradient anyway (GradNormBegin, attr sum_squares, GradNormEnd),
  // instead of by a GradNorm pass over every gradient at the step's end. Equal up to the order of the sums.
  bool grad_norm_in_updates = true;
  // With grad_accum_steps > 1: a weight gradient made by a float32 FusedMatMul that nothing else reads is added into
  // its accumulator by the product itself (galvatron MatMulAccumulate: cuBLAS's beta = 1) instead of written and then
  // added by AccumulateGrad: per micro-batch, one float32 gradient write and read less per weight.
  bool accumulate_in_products = true;
  // Autograd's sums of several products' contributions (the dX of products sharing an input) added by each product
  // into the first one's buffer (galvatron MatMulAccumulate) instead of by Adds (runtime/fusion.h
  // sum_grads_in_products): the same bits on the CPU; one float32 tensor written and read less per sum.
  bool sum_grads_in_products = true;
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
  // ZeRO-2: param -> [begin, end) of its flat range that this rank updates (its optimizer state covers only that).
  std::map<ValueId, std::pair<int64_t, int64_t>> optimizer_state_range;
  // ZeRO-2 in bf16: parameters whose float32 values are current only in optimizer_state_range (their bf16 copy is
  // gathered instead); checkpoints and parameters() assemble them from every rank's range.
  std::set<ValueId> sharded_masters;
  // Parameters whose float32 values are held as (bf16 copy, uint16 low halves) inside their own buffer once the
  // prologue ran (runtime/split_masters.h); their values are then the join of the two.
  std::map<ValueId, std::pair<ValueId, ValueId>> split_masters;
  size_t prologue_end = 0;  // nodes [0, prologue_end): Casts refreshing the persistent bf16 parameter copies
  size_t backward_begin = 0;
  size_t optimizer_begin = 0;
  FusionCounts fused;  // what the fusion passes rewrote (all zero with fuse_ops off)
};

// Appends a galvatron-domain node without outputs (an update, a collective, a wait) to `g`, checked by its op's
// inference like any node.
Status add_in_place_node(Graph& g, const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                         Placement place, const std::string& name);

// Pipeline stages: graph outputs of Recv nodes (galvatron domain) with requires_grad = 1 are differentiated too, and
// their gradients (zeros when the loss does not depend on them) are sent back to the peer at the end of the backward
// pass (Send, tag + 1). Send nodes' outputs are tokens (zero scalars) that the stage's loss adds up.
Expected<TrainingGraph> build_training_graph(Graph forward, const TrainingGraphOptions& options);

// Rewrites `graph` so that nodes of the given layers ([0, backward_begin) and Node::place) are recomputed right
// before their first use by the backward pass, instead of keeping their activations alive. Exposed for tests.
Status apply_activation_checkpointing(Graph& graph, size_t backward_begin, const std::set<int>& layers);
// The same for chains of forward nodes marked with an int attribute `rematerialize` (one chain per value), e.g.
// ZeRO-3's gather of a parameter: recomputed before their first backward use instead of kept alive. Applied by
// build_training_graph after checkpointing.
Status rematerialize_marked_nodes(Graph& graph, size_t backward_begin);
// TrainingGraphOptions::prefetch_zero2_gathers on a built training graph (runtime/zero2_gather_prefetch.cpp): each
// async GatherShardsInPlace of a bf16 state after optimizer_begin moves to prologue_end (in first-reader order), and
// each first forward reader of such a copy gets a WaitCollectives (keep_pending: the gathers of later readers) before
// it; backward_begin and optimizer_begin follow. Exposed for tests.
Status prefetch_copy_gathers(TrainingGraph& tg);
// TrainingGraphOptions::updates_in_backward on a built training graph (runtime/updates_in_backward.cpp): each AdamW,
// AdamWMulti or SGD node moves to right after the last node of [prologue_end, optimizer_begin) that reads or writes
// one of its parameters, gradients, states or copies, drops its (unused) grad_norm input and gets attr
// beside_backward = 1; a galvatron WaitUpdates reading every arena value they read ends the graph (its CUDA kernel
// joins the second stream; it keeps those buffers alive until then). optimizer_begin follows the gradient norm.
// With grad_norm_in_updates and only AdamW / AdamWMulti updates, the GradNorm node becomes a GradNormEnd after
// WaitUpdates reading the float64 sum that a GradNormBegin (before the backward) starts and each update adds its
// gradient's squares to (attr sum_squares = 1; the accumulator as AdamW's input 8, AdamWMulti's last input).
// No effect (and "why" from why_updates_stay_after_backward) with clipping, zeroed or accumulated gradients, or any
// communication node.
Status move_updates_into_backward(TrainingGraph& tg, bool grad_norm_in_updates = true);
std::string why_updates_stay_after_backward(const TrainingGraph& tg);

}  // namespace gv

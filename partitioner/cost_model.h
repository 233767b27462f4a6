// Galvatron v2.4.0's cost model (core/search_engine/cost_model.py): per-layer memory (model states with the ZeRO
// ratios, activations of the in-flight micro-batches), per-layer time (compute, DP / TP / pipeline communication,
// overlap), the embedding + LM head ("other") memory and time per vocab-TP degree, and the pipeline formula.
// Memory in MB; times returned in seconds, as Galvatron returns them.
#pragma once
#include <map>
#include <vector>

#include "partitioner/profile.h"
#include "partitioner/strategy.h"

namespace gv::partitioner {

enum class PipelineType { kGpipe, kPipedreamFlush };
enum class SpSpace { kTp, kTpSp, kSp };

struct TrainOptions {
  bool mixed_precision = true;     // bf16/fp16 (false: fp32)
  bool async_grad_reduce = true;
  double pytorch_context_mem = 1024;  // MB per GPU
  bool use_zero2_for_dp = false;   // --default-dp-type zero2
  // This runtime's ZeRO-2 in bf16 (--grad-reduce-dtype bf16 in bf16 precision; runtime/training_graph.h): the weights'
  // gathers run beside the next step's forward pass instead of after the update (profiles of this runtime only).
  bool zero2_gathers_in_forward = false;
  // The runtime reduces gradients in bf16 (--grad-reduce-dtype bf16): DP messages are half the float32 bytes even
  // when mixed_precision is off (the profiles of this runtime are taken with --mixed-precision fp32).
  bool bf16_grad_messages = false;
  bool disable_vtp = false;
  bool sequence_parallel = false;  // Megatron-SP
  SpSpace sp_space = SpSpace::kTp;
  PipelineType pipeline_type = PipelineType::kGpipe;
  double costmodel_coe = 1.0;
  double bct_fct_coe = 2.0;   // backward = 2 x forward
  double extra_overhead = 0;
};

struct CostInputs {
  const ModelProfile* model = nullptr;
  const HardwareProfile* hw = nullptr;
  TrainOptions opt;
};

// ZeRO memory ratios of v2.4.0 (model states multiplier for a sharding group of d GPUs).
double zero2_ratio(double d, int chunks, bool async_grad_reduce, bool mixed_precision);
double zero3_ratio(double d, int chunks, bool async_grad_reduce, bool mixed_precision);

struct LayerMemory {
  double parameter = 0, model_states = 0, activation = 0, enc_total = 0;
  int chunks = 1;
  std::map<int, std::vector<double>> other;  // vocab-TP degree -> MB per stage (with the context reserve)
};
// MemoryCostModel(strategy, global_batch_size=gbsz, mbsz, min_tp, max_tp, stage_idx, vsp, vocab_sdp).
LayerMemory layer_memory(const CostInputs& in, int layer_type, const Strategy& s, int gbsz, int mbsz, int min_tp,
                         int max_tp, int stage_idx, bool vsp, bool vocab_sdp);

struct LayerTime {
  double fct = 0, bct = 0;         // ms, whole dummy model (x layer_num)
  double dp_message_mb = 0, dc = 0, tp_time = 0, p2p_time = 0, fsdp_time = 0;
  double optimizer_time = 0;       // ms, whole dummy model (ModelProfile::optimizer_ms_per_param_mb; 0 without it)
  double gather_time = 0;          // ms, ZeRO-2's parameter gather (this runtime's profiles only; exposed part added)
  double total_s = 0;              // seconds per layer
};
// TimeCostModel(strategy, global_batch_size=gbsz, no_comm).gen_result().
LayerTime layer_time(const CostInputs& in, int layer_type, const Strategy& s, double gbsz, bool no_comm);

struct OtherTime {
  std::map<int, std::vector<double>> with_sync, no_sync;  // vocab-TP degree -> seconds per stage
  std::map<int, std::vector<double>> optimizer;           // the part of with_sync that is the optimizer step (ext.)
};
// OtherTimeCostModel(mbsz, pp_deg, world_size, vsp, vocab_sdp, min_tp, max_tp).gen_result().
OtherTime other_time(const CostInputs& in, int mbsz, int pp, int world, bool vsp, bool vocab_sdp, int min_tp,
                     int max_tp);

// chunk_like_torch: the micro-batch sizes torch.chunk gives for `size` samples in `chunks` pieces.
std::vector<int> chunk_like_torch(int size, int chunks);
int real_chunks(int local_bsz, int chunks);

struct PipelineCost {
  double total_s = 0;
  std::vector<double> stage_compute_s;  // per micro-batch, without grad sync, with "other"
  std::vector<double> stage_full_s;     // per micro-batch, with grad sync (layers only)
  double reduce_s = 0;
  int micro_batches = 1;
};
// pipeline_costmodel(TimeCostModel, layer_num_list, ..., strategies, partition, chunks, bsz, min_tp, other_time_cost).
PipelineCost pipeline_cost(const CostInputs& in, const std::vector<Strategy>& plan, const std::vector<int>& partition,
                           const std::vector<double>& chunks_per_type, int bsz, int min_tp,
                           const std::vector<double>& other_no_sync,
                           const std::vector<double>& other_optimizer = {});
// other_optimizer (galvatron's extension): per stage, seconds of the optimizer step over the embedding / head
// parameters (OtherTime::optimizer), counted once per iteration with the gradient sync; empty: none.

}  // namespace gv::partitioner

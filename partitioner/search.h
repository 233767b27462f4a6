// Galvatron v2.4.0's strategy search (search_engine.py parallelism_optimization + dynamic_programming.py DpOnModel):
// the outer loops over batch size, chunks, min/max TP, vocab SP and embed_sdp; per pipeline degree a knapsack DP per
// stage; the pipeline cost model picks the vocab TP and the pipeline degree.
#pragma once
#include <string>
#include <vector>

#include "partitioner/cost_model.h"
#include "partitioner/profile.h"
#include "partitioner/strategy.h"
#include "runtime/status.h"

namespace gv::partitioner {

struct SearchOptions {
  int num_nodes = 1, num_gpus_per_node = 8;
  double memory_constraint_gb = 24;
  int min_bsz = 8, max_bsz = 10240, bsz_scale = 8;
  int recommend_min_bsz = 0;
  int settle_bsz = -1, settle_chunk = -1;
  std::string search_space = "full";  // full | dp+tp | dp+pp | 3d | dp | sdp | tp | pp
  std::string sp_space = "tp";        // tp | tp+sp | sp
  int disable_dp = 0, disable_tp = 0, disable_vtp = 0, disable_pp = 0, disable_sdp = 0, disable_ckpt = 0,
      disable_tp_consec = 0;
  int max_tp_deg = 8, max_pp_deg = 8;
  std::string default_dp_type = "ddp";  // ddp | zero2
  // The runtime's gradient reduction type (galvatron train --grad-reduce-dtype): with bf16, DP messages are bf16 and
  // this runtime's ZeRO-2 (in bf16 precision) gathers the weights during the next forward pass (TrainOptions).
  std::string grad_reduce_dtype = "fp32";  // fp32 | bf16
  std::string mixed_precision = "bf16";  // fp32 | fp16 | bf16
  std::string pipeline_type = "gpipe";   // gpipe | pipedream_flush
  bool sequence_parallel = false;
  bool global_memory_buffer = true;
  bool async_grad_reduce = true;
  int fine_grained_mode = 1;
  int use_pipeline_costmodel = 1;
  double costmodel_coe = 1.0;
  int threads = 0;  // 0: OpenMP default

  int world_size() const { return num_nodes * num_gpus_per_node; }
};

// The search space after presets and filters (generate_strategies), and the flags the presets changed.
struct StrategySpace {
  std::vector<Strategy> strategies;
  SearchOptions effective;  // options after the search-space presets (disable_* flags)
};
Expected<StrategySpace> generate_strategies(const SearchOptions& opt, int total_layers);

struct StagePlan {
  int first_layer = 0, num_layers = 0;
  double memory_mb = 0;      // predicted peak per GPU (cache reserve included, as Galvatron reports it)
  double memory_remain_mb = 0;
  double compute_s = 0;      // per micro-batch, no grad sync, with embedding/head
  double with_sync_s = 0;    // per micro-batch, layers with grad sync
};

struct SearchResult {
  bool feasible = false;
  double throughput = 0;  // samples/s
  double cost_s = 0;      // seconds per iteration
  int bsz = 0, chunks = 0, pp_deg = 0, vtp = 0, vsp = 0, embed_sdp = 0, min_tp = 0, max_tp = 0;
  std::vector<int> pp_division;
  std::vector<Strategy> layers;  // one per transformer layer
  std::vector<StagePlan> stages;
  double reduce_s = 0;
  int micro_batches = 0;
  SearchOptions effective;
  int num_candidate_strategies = 0;
  int tasks = 0;
  // When infeasible: the least memory (GB, per GPU) that the best-fitting plan would need.
  double least_memory_gb = 0;
};

Expected<SearchResult> search(const ModelProfile& model, const HardwareProfile& hw, const SearchOptions& opt);

// Cost-model inputs for these options (shared with the CLI's report).
CostInputs make_cost_inputs(const ModelProfile& model, const HardwareProfile& hw, const SearchOptions& opt);

}  // namespace gv::partitioner

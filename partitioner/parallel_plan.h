// A hybrid-parallel training plan in Galvatron's terms (its runtime's JSON keys and command-line arguments), and the
// device mesh it implies: for every world rank, its pipeline stage and, per layer, its tensor-parallel and
// data-parallel groups.
//
// Rank layout (Galvatron's): stage s holds world ranks [s*n, (s+1)*n), n = world / pp_deg. Inside a stage, a layer
// of TP degree t has d = n / t data-parallel replicas; with tp_consec = 1 a TP group is t consecutive ranks (DP
// groups strided by t), with tp_consec = 0 a DP group is d consecutive ranks (TP groups strided by d).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/status.h"

namespace gv::partitioner {

enum class DpType { kDdp, kZero2, kZero3 };
const char* dp_type_name(DpType t);
Expected<DpType> parse_dp_type(const std::string& s);

struct ParallelPlan {
  int pp_deg = 1;
  std::vector<int> tp_sizes;      // per layer: tensor-parallel degree
  std::vector<int> tp_consec;     // per layer: 1 = TP group on consecutive ranks
  std::vector<int> dp_types;      // per layer: 1 = ZeRO-3 ("sdp"), 0 = default_dp_type
  std::vector<int> checkpoint;    // per layer: 1 = activation checkpointing
  std::vector<int> pp_division;   // layers per stage (pp_deg entries)
  int global_bsz = 0;             // 0: the run's batch size
  int chunks = 1;                 // micro-batches per step
  std::string pipeline_type = "gpipe";  // gpipe | pipedream_flush (1F1B)
  DpType default_dp_type = DpType::kDdp;
  int vtp = 1;                    // TP degree of the embedding and LM head
  int embed_sdp = 0;              // 1: ZeRO-3 for the embedding and LM head
};

// The flags of Galvatron's GLOBAL mode: one strategy for every layer.
struct GlobalPlanFlags {
  int pp_deg = 1, global_tp_deg = 1, global_tp_consec = 1, sdp = 0, global_checkpoint = 0, chunks = -1;
  std::string pipeline_type = "gpipe";
  std::string default_dp_type = "ddp";
  int vocab_tp = 1, embed_sdp = 0;
};

Expected<ParallelPlan> plan_from_flags(const GlobalPlanFlags& f, int num_layers);
// Galvatron's strategy JSON (legacy files without pp_division etc. accepted). `source` names the file in errors.
Expected<ParallelPlan> plan_from_json(const nlohmann::json& j, const std::string& source);
Expected<ParallelPlan> read_plan_file(const std::string& path);
nlohmann::ordered_json plan_to_json(const ParallelPlan& p);
// One line: "pp 2 (2,2), tp 2,2,1,1, zero3 layers 2,3, checkpoint 0, 1F1B over 4 micro-batches".
std::string describe_plan(const ParallelPlan& p);

// Checks the plan against the model and the world: layer count, degrees dividing the stage size, batch divisible by
// every layer's DP degree times chunks, heads are checked later by the tensor-parallel pass.
Status validate_plan(const ParallelPlan& p, int num_layers, int world_size, int global_batch);

// One layer's (or the embedding's / head's) parallel layout on one rank.
struct LayerLayout {
  int stage = 0;
  int tp = 1, tp_index = 0;
  int dp = 1, dp_index = 0;
  std::vector<int> tp_group;  // world ranks, in TP order
  std::vector<int> dp_group;  // world ranks, in DP order (batch slice order)
  std::vector<int> stage_slices;  // the batch slice (DP index) of every position of the stage, in position order
  bool zero3 = false;
  bool checkpoint = false;
  bool operator==(const LayerLayout& o) const {
    return stage == o.stage && tp_group == o.tp_group && dp_group == o.dp_group && tp_index == o.tp_index &&
           dp_index == o.dp_index;
  }
};

struct RankLayout {
  int rank = 0, world = 1, stage = 0, stage_size = 1, position = 0;  // position inside the stage
  std::vector<int> first_layer;  // per stage: its first layer (pp_deg + 1 entries, last = num_layers)
  std::vector<LayerLayout> layers;
  LayerLayout embedding, head;   // "other" layers: TP degree vtp
  int stage_of_layer(int layer) const;
};

// Layout of `rank` for layer strategies (tp, consec) inside its stage.
LayerLayout layer_layout(int world, int pp, int stage, int position, int tp, int consec);
Expected<RankLayout> rank_layout(const ParallelPlan& p, int num_layers, int world_size, int rank);

}  // namespace gv::partitioner

// Applies a hybrid-parallel plan to a model for one process: the graph passes that turn the model's forward graph
// into what this rank computes (its pipeline stage, its batch slice per layer, its tensor-parallel pieces, its
// ZeRO-3 shards) and the settings the runtime trains it with (gradient groups, pipeline schedule, checkpointed
// layers, where each parameter sits in the whole model). The runtime then runs the result like any other graph.
#pragma once
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "partitioner/parallel_plan.h"
#include "runtime/graph.h"
#include "runtime/sharded_tensor.h"
#include "runtime/trainer.h"
#include "runtime/training_graph.h"

namespace gv::partitioner {

struct RankProgram {
  Graph forward;  // this rank's forward graph (the loss is attached by the runtime as usual)
  RankLayout layout;
  std::map<std::string, TensorShard> shards;  // every parameter, by local name: its piece of the whole tensor
  std::map<std::string, TrainingGraphOptions::ParamSync> param_sync;
  std::set<int> checkpoint_layers;
  std::vector<TrainerConfig::PipelineStep> schedule;
  int in_flight = 1;
  int chunks = 1;
  int loss_replicas = 1;  // batch slices the loss is a mean over (DP degree of the head)
  int loss_divisor = 1;   // ranks whose losses are summed for the step's loss (the last stage's)
  // Rows of each global micro-batch a graph input takes on this rank: input name -> (slice index, slices).
  std::map<std::string, std::pair<int, int>> input_slices;
  // Bytes this rank sends per step by kind ("pipeline p2p", "tensor-parallel all-reduce", ...), counted from the
  // graph (forward and the backward's mirror image); filled by count_communication().
  std::map<std::string, double> comm_bytes;
};

// The forward graph imported with every graph input's batch dimension set to `rows` (the plan gives layers different
// batch slices, so their shapes differ).
using ImportAtRows = std::function<Expected<Graph>(int64_t rows)>;

Expected<RankProgram> build_rank_program(const ParallelPlan& plan, int world, int rank, int64_t global_batch,
                                         const ImportAtRows& import_at_rows);

// GPipe: all forwards, then all backwards. 1F1B (pipedream_flush): stage s of p runs min(p - s - 1, m) forwards,
// then alternates one forward and one backward, then drains the backwards. Returns the schedule and the number of
// micro-batches in flight.
std::vector<TrainerConfig::PipelineStep> pipeline_schedule(const std::string& type, int stages, int stage,
                                                           int micro_batches, int* in_flight);

}  // namespace gv::partitioner

// `galvatron train --auto`: Galvatron's search for this model on this run's devices, memory and batch, then the plan
// it picks. Rank 0 runs `galvatron profile --hardware` and `galvatron search` as child processes (their log and the
// plan stay in a scratch folder it names, so the plan can be reused with --galvatron-config-path) and broadcasts the
// plan to the other ranks. With --device cuda the search's compute times come from this run's GPU and precision.
#pragma once
#include <string>

#include "cli/commands.h"
#include "cli/train_model_source.h"
#include "partitioner/parallel_plan.h"
#include "runtime/communicator.h"

namespace gv::cli {

struct AutoPlanRequest {
  int devices = 1;
  int64_t global_batch = 0;  // rows per step
  int chunks = -1;           // micro-batches per step; -1: the search chooses
  double memory_gb = 0;      // per device; 0: detect (CPU: physical memory / devices)
  std::string precision = "fp32";  // the search's --mixed-precision (activation bytes, gradient traffic)
  std::string device = "cpu";       // where the forward is timed for the search: the training run's --device
  std::string compute_precision;    // cuda: the training run's --precision (fp32 | tf32 | bf16; "": fp32)
  std::string default_dp_type = "ddp";
  std::string grad_reduce_dtype = "fp32";  // the training run's --grad-reduce-dtype (the search costs ZeRO-2 by it)
};

Expected<partitioner::ParallelPlan> search_plan_for_training(const TrainModelSource& source,
                                                             const AutoPlanRequest& req, Communicator* comm,
                                                             CommandContext& ctx);

}  // namespace gv::cli

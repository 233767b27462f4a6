// The hybrid-parallel flags of `galvatron train`, with Galvatron's runtime names, meanings and defaults: the GLOBAL
// mode (one strategy for every layer), a plan file written by `galvatron search` or Galvatron itself, or --auto.
#pragma once
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "partitioner/parallel_plan.h"
#include "runtime/training_graph.h"

namespace gv::cli {

std::vector<FlagSpec> parallel_flags();
// True when any flag that asks for a parallel plan was given.
bool parallel_flags_given(const ParsedArgs& args);
// The training-graph options these flags set (--overlap-grad-sync, --grad-reduce-dtype), for plans and plain data parallelism alike.
Status graph_options_from_args(const ParsedArgs& args, TrainingGraphOptions& graph, CommandContext& ctx);
// The plan for a model of `num_layers` layers (usage errors for bad values).
Expected<partitioner::ParallelPlan> plan_from_args(const ParsedArgs& args, int num_layers, CommandContext& ctx);

}  // namespace gv::cli

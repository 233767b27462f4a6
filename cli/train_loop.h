// The training loop behind `galvatron train`: settings from flags, then batches -> Trainer::step with a progress bar,
// metrics lines, checkpoints (temp file + rename), resume, gradient dump and export.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/train_model_source.h"
#include "runtime/trainer.h"

namespace gv::cli {

struct TrainSettings {
  int64_t steps = 100;
  int64_t batch_size = 8;
  int grad_accum = 1;
  TrainerConfig trainer;  // optimizer, schedule, lr, seed, padding index (total_steps set from steps)
  std::string checkpoint_layers;  // "", "all", "none", "0,2,5"
  std::string metrics, save_grads, checkpoint_dir, resume, export_path;
  int64_t checkpoint_every = 0;
  std::string device = "cpu";
  std::string precision;  // --precision fp32|tf32|bf16; empty: the backend's default (Backend::set_precision)
  int64_t devices = 1;  // data-parallel workers; the communicator is trainer.comm (set by the caller)
  bool parallel_plan = false;  // a hybrid-parallel plan from the flags or --galvatron-config-path
  const ParsedArgs* args = nullptr;  // to read the plan once the model's layers are known
};

// Reads the train flags (usage errors for bad values).
Expected<TrainSettings> train_settings_from_args(const ParsedArgs& args, CommandContext& ctx);

struct TrainOutcome {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Trainer> trainer;
  std::vector<std::pair<int64_t, double>> losses;  // (step, loss) of this run
  double seconds = 0;
};

// Trains `source` with `settings`; prints progress to stderr and a summary line to stdout. Under data parallelism
// (settings.trainer.comm of more than one rank) each rank trains on its rows of every batch, and rank 0 alone prints,
// writes metrics, checkpoints and exports.
Expected<TrainOutcome> run_training(const TrainSettings& settings, TrainModelSource& source, CommandContext& ctx);

}  // namespace gv::cli

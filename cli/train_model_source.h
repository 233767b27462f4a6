// Where `galvatron train` gets its model and data: an ONNX file, or a built-in zoo model, specialized to the batch and
// the sequence length that the data (or the flags) give.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "importer/onnx_importer.h"
#include "runtime/data_loader.h"

namespace gv::cli {

struct TrainingSetup {
  std::unique_ptr<DataLoader> loader;
};

struct TrainModelSource {
  ImportedModel model;
  std::string onnx_path;  // the file --export writes weights back into
  std::string label;      // for messages and checkpoints
  TrainingSetup setup;
};

// The flags of `galvatron train` (model, data, optimizer, schedule, outputs).
std::vector<FlagSpec> train_model_flags();
Expected<TrainModelSource> load_train_model(const ParsedArgs& args, CommandContext& ctx);

}  // namespace gv::cli

// Where `galvatron train` gets its model and data: an ONNX file, or a built-in zoo model, specialized to the batch and
// the sequence length that the data (or the flags) give.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "importer/onnx_importer.h"
#include "models/zoo.h"
#include "runtime/data_loader.h"

namespace gv::cli {

struct TrainingSetup {
  std::unique_ptr<DataLoader> loader;
};

struct TrainModelSource {
  ImportedModel model;  // zoo models under a parallel plan: structure only (zero weights; the plan re-imports)
  std::string onnx_path;  // the file --export writes weights back into ("" for a zoo model)
  std::string label;      // for messages and checkpoints
  bool from_zoo = false;
  ModelConfig zoo_config;  // when from_zoo
  int64_t batch = 0, seq = 0;  // batch: the rows this process trains on (--batch-size / --devices)
  TrainingSetup setup;
  ImportOptions import_options;  // how `model` was imported (ONNX files)
  uint64_t seed = 0;             // zoo models: the initialisation seed
};

// The same model imported again with every input's batch dimension set to `rows` (parallel plans give layers
// different batch slices).
Expected<Graph> import_model_at_rows(const TrainModelSource& source, int64_t rows);

// import_model_at_rows for the partitioner, which may ask for several row counts: zoo weights do not depend on the
// rows, so only the first import draws them (seeded); later ones are built zero-filled and take the first one's
// parameter tensors (shared buffers). Call release() once the partitioner is done, to free what no graph uses.
class RowImports {
 public:
  explicit RowImports(const TrainModelSource& source) : source_(source) {}
  Expected<Graph> operator()(int64_t rows);
  void release() { weights_.clear(); }

 private:
  const TrainModelSource& source_;
  std::map<std::string, Tensor> weights_;  // the first zoo import's parameters, by name
};

// Writes trained weights as an ONNX model: back into the source file's graph, or a freshly built zoo graph.
Status export_trained_model(const TrainModelSource& source, const std::map<std::string, Tensor>& params,
                            const std::string& out_path);

// The flags of `galvatron train` (model, data, optimizer, schedule, outputs).
std::vector<FlagSpec> train_model_flags();
// train_model_flags() plus the zoo model flags.
std::vector<FlagSpec> train_flags();
Expected<TrainModelSource> load_train_model(const ParsedArgs& args, CommandContext& ctx);

}  // namespace gv::cli

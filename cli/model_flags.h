// Naming a zoo model on the command line, as Galvatron's API does (model_type="gpt", model_size="gpt-1.5b"), with
// optional overrides of its shape (--hidden-size --num-layers --num-heads --ffn-size --kv-heads --seq-length
// --vocab-size). Shared by train, export-model, search.
#pragma once
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "models/zoo.h"

namespace gv::cli {

std::vector<FlagSpec> zoo_model_flags();
// Whether the user named a zoo model (--model-type, --model-size or a shape flag).
bool names_zoo_model(const ParsedArgs& args);
// The configuration the flags describe: a named size with overrides, or a custom shape of --model-type.
Expected<ModelConfig> zoo_model_from_flags(const ParsedArgs& args, CommandContext& ctx);

}  // namespace gv::cli

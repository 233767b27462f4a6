// `galvatron models`: the built-in model zoo with parameter counts.
#include <cstdio>

#include "cli/common.h"
#include "models/zoo.h"

namespace gv::cli {
namespace {

Status run_models(const ParsedArgs& args, CommandContext& ctx) {
  std::printf("%-6s %-14s %-12s %7s %7s %6s %6s %7s %8s %16s\n", "type", "size", "source", "hidden", "layers", "heads",
              "kv", "ffn", "seq", "parameters");
  for (const ZooEntry& e : zoo_list()) {
    const ModelConfig& c = e.config;
    std::printf("%-6s %-14s %-12s %7lld %7lld %6lld %6lld %7lld %8lld %16s\n", e.type.c_str(), e.size.c_str(),
                e.source.c_str(), static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_layers),
                static_cast<long long>(c.num_heads), static_cast<long long>(c.resolved_kv_heads()),
                static_cast<long long>(c.resolved_ffn()), static_cast<long long>(c.seq_length),
                with_commas(e.parameters).c_str());
  }
  return Status::ok();
}

}  // namespace

GV_REGISTER_COMMAND(models, (Command{.spec = {.name = "models",
                                              .summary = "List the built-in model zoo with parameter counts.",
                                              .description = "Every type and size that --model-type / --model-size "
                                                             "accept, with its shape and parameter count.",
                                              .positionals = {},
                                              .flags = {},
                                              .examples = {"galvatron models"}},
                                     .run = run_models,
                                     .order = 40}));

}  // namespace gv::cli

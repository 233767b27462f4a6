// `galvatron export-model NAME -o FILE.onnx`: writes a zoo model as an ONNX file (weights initialised as HuggingFace
// does, seeded), external data beside it for large models.
#include <chrono>

#include "cli/common.h"
#include "cli/model_flags.h"

namespace gv::cli {
namespace {

Status run_export_model(const ParsedArgs& args, CommandContext& ctx) {
  ModelConfig cfg;
  if (!args.positionals.empty()) {
    auto c = zoo_config(args.str("model-type"), args.positionals[0]);
    if (!c) return ctx.usage(c.status().message() + " (see `galvatron models`)");
    cfg = *c;
  } else {
    GV_ASSIGN_OR_RETURN(cfg, zoo_model_from_flags(args, ctx));
  }
  const std::string out = args.str("o");
  if (out.empty()) return ctx.usage("give the output file with -o FILE.onnx");
  GV_RETURN_IF_ERROR(check_output_path(out, "o"));
  const int64_t batch = args.i64("batch");
  const int64_t seq = args.i64("seq") > 0 ? args.i64("seq") : cfg.seq_length;
  auto t0 = std::chrono::steady_clock::now();
  ctx.note("building " + cfg.describe() + " (" + with_commas(parameter_count(cfg)) + " parameters, " +
           human_bytes(parameter_bytes(cfg)) + ")");
  GV_ASSIGN_OR_RETURN(auto proto, build_model(cfg, batch, seq,
                                               args.flag("no-weights") ? WeightInit::kNone : WeightInit::kHuggingFace,
                                               static_cast<uint64_t>(args.i64("seed"))));
  GV_RETURN_IF_ERROR(write_model(proto, out));
  ctx.timing("writing " + out, t0);
  std::printf("wrote %s: %s, input_ids [%lld, %lld] -> logits\n", out.c_str(), cfg.describe().c_str(),
              static_cast<long long>(batch), static_cast<long long>(seq));
  return Status::ok();
}

std::vector<FlagSpec> flags() {
  std::vector<FlagSpec> f = {string_flag("o", "FILE.onnx", "", "Output file (weights over 1.8 GB go to FILE.onnx.data).").with_required(),
                             int_flag("batch", "B", "1", "Batch dimension of input_ids."),
                             int_flag("seq", "T", "0", "Sequence dimension (0: the model's seq_length)."),
                             int_flag("seed", "S", "0", "Seed of the HuggingFace-style initialisation."),
                             bool_flag("no-weights", "Zero-filled weights (structure only; fast).")};
  for (auto& z : zoo_model_flags()) f.push_back(z);
  return f;
}

}  // namespace

GV_REGISTER_COMMAND(export_model,
                    (Command{.spec = {.name = "export-model",
                                      .summary = "Write a built-in zoo model as an ONNX file.",
                                      .description = "Builds the named zoo model (see `galvatron models`) as the ONNX "
                                                     "graph a HuggingFace export gives, with HF parameter names, and "
                                                     "writes it to -o.",
                                      .positionals = {{.name = "NAME", .help = "A zoo size such as gpt-1.5b.", .optional = true}},
                                      .flags = flags(),
                                      .examples = {"galvatron export-model gpt2 -o gpt2.onnx",
                                                   "galvatron export-model --model-type llama --hidden-size 512 "
                                                   "--num-layers 8 --num-heads 8 --vocab-size 32000 -o small-llama.onnx"}},
                             .run = run_export_model,
                             .order = 45}));

}  // namespace gv::cli

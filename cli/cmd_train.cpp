// `galvatron train MODEL.onnx --data PATH ...`: trains an imported model on the CPU (or a built-in zoo model).
// The loop: batches from the data loader, Trainer::step, a progress bar, metrics lines, checkpoints (temp file +
// rename), and at the end the trained weights exported back into the ONNX model.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/progress.h"
#include "cli/train_model_source.h"
#include "runtime/data_loader.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"

namespace gv::cli {
namespace {

namespace fs = std::filesystem;

Status write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream o(tmp, std::ios::trunc);
    o << text;
    if (!o.good()) return io_error("cannot write '" + tmp + "'");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  return ec ? io_error("cannot rename '" + tmp + "': " + ec.message()) : Status::ok();
}

// --resume DIR (its `latest` file names the checkpoint) or --resume FILE.safetensors.
Expected<std::string> resolve_checkpoint(const std::string& arg) {
  std::error_code ec;
  if (fs::is_directory(arg, ec)) {
    std::ifstream in(fs::path(arg) / "latest");
    std::string name;
    if (!in || !std::getline(in, name) || name.empty()) {
      return not_found("--resume " + arg + ": the folder has no 'latest' file naming a checkpoint (was it written by "
                       "--checkpoint-dir?)");
    }
    return (fs::path(arg) / name).string();
  }
  if (!fs::exists(arg, ec)) return not_found("--resume " + arg + ": no such checkpoint file or folder");
  return arg;
}

Expected<OptimizerConfig::Kind> optimizer_kind(const std::string& s) {
  if (s == "adamw") return OptimizerConfig::Kind::kAdamW;
  if (s == "sgd") return OptimizerConfig::Kind::kSgd;
  return invalid_argument("--optimizer must be adamw or sgd, got '" + s + "'");
}

std::vector<int> parse_layer_list(const std::string& s, int num_layers, Status* st) {
  std::vector<int> out;
  if (s.empty() || s == "none") return out;
  if (s == "all") {
    for (int i = 0; i < num_layers; ++i) out.push_back(i);
    return out;
  }
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 0 || v >= num_layers) {
      *st = invalid_argument("--checkpoint-layers: '" + item + "' is not a layer index in [0, " +
                             std::to_string(num_layers) + ")");
      return {};
    }
    out.push_back(static_cast<int>(v));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

Status run_train(const ParsedArgs& args, CommandContext& ctx) {
  GV_RETURN_IF_ERROR(check_device_flag(args, ctx));
  const int64_t steps = args.i64("steps");
  const int64_t batch = args.i64("batch-size");
  const int accum = static_cast<int>(args.i64("grad-accum"));
  if (steps < 1) return ctx.usage("--steps must be at least 1");
  if (batch < 1) return ctx.usage("--batch-size must be at least 1");
  if (accum < 1) return ctx.usage("--grad-accum must be at least 1");
  auto kind = optimizer_kind(args.str("optimizer"));
  if (!kind) return ctx.usage(kind.status().message());
  const std::string schedule = args.str("schedule");
  if (schedule != "constant" && schedule != "cosine") return ctx.usage("--schedule must be constant or cosine");
  for (const char* f : {"metrics", "save-grads", "export"}) {
    if (args.given(f)) GV_RETURN_IF_ERROR(check_output_path(args.str(f), f));
  }
  const uint64_t seed = static_cast<uint64_t>(args.i64("seed"));

  // Model and data.
  auto t0 = std::chrono::steady_clock::now();
  GV_ASSIGN_OR_RETURN(TrainModelSource source, load_train_model(args, ctx));
  TrainingSetup& setup = source.setup;
  std::unique_ptr<DataLoader> loader = std::move(setup.loader);
  const int64_t seq = loader->seq_len();
  ctx.note("data: " + loader->describe());
  ImportedModel& model = source.model;
  ctx.timing("loading the model", t0);

  TrainerConfig cfg;
  cfg.lr = args.f64("lr");
  cfg.seed = seed;
  cfg.schedule = schedule == "cosine" ? LrSchedule::kCosine : LrSchedule::kConstant;
  cfg.warmup_steps = args.i64("warmup-steps");
  cfg.total_steps = steps;
  cfg.graph.grad_accum_steps = accum;
  cfg.graph.padding_idx = args.i64("padding-idx");
  OptimizerConfig& oc = cfg.graph.optimizer;
  oc.kind = *kind;
  oc.beta1 = args.f64("beta1");
  oc.beta2 = args.f64("beta2");
  oc.eps = args.f64("eps");
  oc.momentum = args.f64("momentum");
  oc.weight_decay = args.given("weight-decay") ? args.f64("weight-decay") : (*kind == OptimizerConfig::Kind::kAdamW ? 0.01 : 0.0);
  oc.grad_clip = args.f64("grad-clip");
  Status layer_st;
  for (int l : parse_layer_list(args.str("checkpoint-layers"), model.graph.num_layers, &layer_st)) {
    cfg.graph.checkpoint_layers.insert(l);
  }
  if (!layer_st.is_ok()) return ctx.usage(layer_st.message());

  GV_ASSIGN_OR_RETURN(auto backend, make_backend(args.str("device")));
  t0 = std::chrono::steady_clock::now();
  int64_t n_params = 0;
  for (ValueId p : model.graph.parameters()) n_params += shape_numel(model.graph.value(p).shape);
  const int num_layers = model.graph.num_layers;
  GV_ASSIGN_OR_RETURN(auto trainer, Trainer::create(std::move(model.graph), cfg, *backend));
  ctx.timing("building the training graph", t0);
  const TrainingGraph& tg = trainer->training_graph();
  ctx.note("model: " + source.label + ", " + with_commas(n_params) + " parameters, " + std::to_string(num_layers) +
           " layers; training graph: " + std::to_string(tg.graph.nodes.size()) + " nodes (" +
           std::to_string(tg.backward_begin) + " forward)");
  ctx.note("memory plan: peak " + human_bytes(trainer->peak_memory_bytes()) + " (activations " +
           human_bytes(trainer->arena_bytes()) + ", parameters, constants and optimizer state " +
           human_bytes(trainer->peak_memory_bytes() - trainer->arena_bytes()) + ")");

  // Resume.
  int64_t start = 0;
  if (args.given("resume")) {
    GV_ASSIGN_OR_RETURN(std::string ckpt, resolve_checkpoint(args.str("resume")));
    GV_ASSIGN_OR_RETURN(auto meta, trainer->load_checkpoint(ckpt));
    start = trainer->steps_done();
    uint64_t pos = std::strtoull(meta["galvatron.data_position"].c_str(), nullptr, 10);
    GV_RETURN_IF_ERROR(loader->seek(pos));
    ctx.note("resumed from " + ckpt + " at step " + std::to_string(start));
    if (start >= steps) ctx.note("the checkpoint is already at step " + std::to_string(start) + " of " + std::to_string(steps));
  }

  std::ofstream metrics;
  if (args.given("metrics")) {
    metrics.open(args.str("metrics"), start > 0 ? std::ios::app : std::ios::trunc);
    if (!metrics) return io_error("cannot open --metrics file '" + args.str("metrics") + "'");
  }
  const std::string ckpt_dir = args.str("checkpoint-dir");
  const int64_t ckpt_every = args.i64("checkpoint-every");
  if (!ckpt_dir.empty()) {
    std::error_code ec;
    fs::create_directories(ckpt_dir, ec);
    if (ec) return io_error("cannot create --checkpoint-dir '" + ckpt_dir + "': " + ec.message());
  }
  auto save_checkpoint = [&](int64_t step) -> Status {
    char name[64];
    std::snprintf(name, sizeof name, "step-%06lld.safetensors", static_cast<long long>(step));
    std::map<std::string, std::string> meta = {{"galvatron.data_position", std::to_string(loader->position())},
                                               {"galvatron.model", source.label}};
    GV_RETURN_IF_ERROR(trainer->save_checkpoint((fs::path(ckpt_dir) / name).string(), meta));
    return write_text_atomic((fs::path(ckpt_dir) / "latest").string(), std::string(name) + "\n");
  };

  Progress progress(steps, start, ctx.quiet);
  double last_loss = NAN;
  for (int64_t s = start; s < steps; ++s) {
    std::vector<TensorMap> micro;
    for (int k = 0; k < accum; ++k) {
      GV_ASSIGN_OR_RETURN(Batch b, loader->next());
      micro.push_back(std::move(b.tensors));
    }
    if (s == start && args.given("save-grads")) {
      double loss = 0;
      GV_ASSIGN_OR_RETURN(TensorMap grads, trainer->compute_gradients(micro[0], &loss));
      GV_RETURN_IF_ERROR(write_safetensors(args.str("save-grads"), grads, {{"loss", std::to_string(loss)}}));
      ctx.note("wrote the gradients of the first batch to " + args.str("save-grads"));
    }
    GV_ASSIGN_OR_RETURN(StepMetrics m, trainer->step(micro));
    if (!std::isfinite(m.loss)) {
      progress.finish();
      return invalid_argument("the loss became " + std::to_string(m.loss) + " at step " + std::to_string(m.step) +
                              "; lower --lr or set --grad-clip");
    }
    last_loss = m.loss;
    const double tok_s = m.seconds > 0 ? static_cast<double>(m.tokens) / m.seconds : 0.0;
    if (metrics.is_open()) {
      nlohmann::json j = {{"step", m.step}, {"loss", m.loss}, {"lr", m.lr}, {"grad_norm", m.grad_norm},
                          {"tokens_per_s", tok_s}, {"peak_mem_bytes", trainer->peak_memory_bytes()}};
      metrics << j.dump() << "\n";
      metrics.flush();
    }
    char fields[160];
    std::snprintf(fields, sizeof fields, "loss %.4f  lr %.2e  %.0f tok/s", m.loss, m.lr, tok_s);
    progress.update(m.step, fields);
    if (!ckpt_dir.empty() && ckpt_every > 0 && m.step % ckpt_every == 0) GV_RETURN_IF_ERROR(save_checkpoint(m.step));
  }
  progress.finish();
  if (!ckpt_dir.empty() && (ckpt_every <= 0 || steps % ckpt_every != 0) && start < steps) {
    GV_RETURN_IF_ERROR(save_checkpoint(steps));
  }
  if (args.given("export")) {
    GV_ASSIGN_OR_RETURN(TensorMap params, trainer->parameters());
    GV_RETURN_IF_ERROR(export_trained_model(source, params, args.str("export")));
    ctx.note("exported the trained model to " + args.str("export"));
  }
  std::printf("trained %lld steps in %s; final loss %.4f\n", static_cast<long long>(steps - start),
              format_duration(progress.elapsed_s()).c_str(), last_loss);
  return Status::ok();
}

}  // namespace

GV_REGISTER_COMMAND(
    train,
    (Command{
        .spec =
            {
                .name = "train",
                .summary = "Train an ONNX model (or a zoo model) on the CPU.",
                .description =
                    "Imports MODEL.onnx specialized to --batch-size x --seq-len, builds the backward pass, loss and\n"
                    "optimizer as one static plan, and trains on --data. The loss is the graph's scalar output if it\n"
                    "has one, else the mean cross-entropy of its logits against the data's labels (ignore index\n"
                    "-100). --data is a token stream (llm.c .bin, or a 1-D .npy) cut into windows of seq+1 tokens and\n"
                    "shuffled with --seed, or samples (.safetensors, or a folder of .npy) named after the graph inputs\n"
                    "plus `labels`, taken in order. One step uses --grad-accum micro-batches of --batch-size rows.",
                .positionals = {{.name = "MODEL.onnx", .help = "The model to train.", .optional = true}},
                .flags = train_flags(),
                .examples = {"galvatron train gpt2.onnx --data tokens.bin --seq-len 256 --steps 1000 --lr 3e-4 "
                             "--schedule cosine --warmup-steps 100 --metrics metrics.jsonl --checkpoint-dir ckpt",
                             "galvatron train model.onnx --data samples.safetensors --steps 10 --save-grads grads.safetensors",
                             "galvatron train model.onnx --data tokens.bin --seq-len 256 --steps 2000 --resume ckpt"},
            },
        .run = run_train,
        .order = 10}));

}  // namespace gv::cli

#include "cli/train_loop.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/auto_plan.h"
#include "cli/common.h"
#include "cli/parallel_flags.h"
#include "cli/progress.h"
#include "partitioner/comm_volume.h"
#include "partitioner/rank_program.h"
#include "runtime/communicator.h"
#include "runtime/safetensors.h"

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

// --save-grads promises the gradient with respect to each ONNX initializer alone. The importer tied an exporter's
// copy of a weight (e.g. the transposed LM-head copy of the word embedding) to the weight itself, so the weight's
// gradient holds both uses: give the copy its own gradient and take it out of the weight's.
Status split_tied_gradients(TensorMap& grads, const std::map<std::string, TiedParameter>& tied) {
  for (const auto& [copy, t] : tied) {
    auto gc = grads.find(copy);
    auto gp = grads.find(t.parameter);
    if (gc == grads.end() || gp == grads.end()) continue;
    Tensor& p = gp->second;
    const Tensor& c = gc->second;
    if (p.dtype() != DType::kFloat32 || c.numel() != p.numel()) return internal_error("tied gradient of '" + copy + "'");
    float* pd = p.data_as<float>();
    const float* cd = c.data_as<float>();
    if (t.transposed) {
      const int64_t rows = p.shape()[0], cols = p.shape()[1];  // copy is [cols, rows]
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) pd[i * cols + j] -= cd[j * rows + i];
    } else {
      for (int64_t i = 0; i < p.numel(); ++i) pd[i] -= cd[i];
    }
  }
  return Status::ok();
}

// Slice `index` of `parts` equal slices of a batch tensor's rows.
Expected<Tensor> take_rows(const std::string& name, const Tensor& t, int index, int parts) {
  if (t.shape().empty()) return invalid_argument("batch tensor '" + name + "' is a scalar; cannot split it by rows");
  const int64_t rows = t.shape()[0];
  if (rows % parts != 0) {
    return invalid_argument("batch tensor '" + name + "' has " + std::to_string(rows) + " rows, not divisible by " +
                            std::to_string(parts) + " data-parallel workers");
  }
  const int64_t mine = rows / parts;
  Shape shape = t.shape();
  shape[0] = mine;
  Tensor part(t.dtype(), shape);
  const size_t row_bytes = t.nbytes() / static_cast<size_t>(rows);
  std::memcpy(part.data(), static_cast<const char*>(t.data()) + row_bytes * mine * index, row_bytes * mine);
  return part;
}

// Rank `rank` of `ranks` keeps rows [rank*B/ranks, (rank+1)*B/ranks) of every tensor of the batch.
Status take_rank_rows(TensorMap& batch, int rank, int ranks) {
  if (ranks <= 1) return Status::ok();
  for (auto& [name, t] : batch) {
    GV_ASSIGN_OR_RETURN(t, take_rows(name, t, rank, ranks));
  }
  return Status::ok();
}

// A plan's batch slicing: each graph input takes slice (index, parts) of the micro-batch's rows; tensors no graph
// input of this rank reads are dropped.
Status take_plan_rows(TensorMap& batch, const std::map<std::string, std::pair<int, int>>& slices) {
  TensorMap out;
  for (auto& [name, t] : batch) {
    auto it = slices.find(name);
    if (it == slices.end()) continue;
    GV_ASSIGN_OR_RETURN(out[name], take_rows(name, t, it->second.first, it->second.second));
  }
  batch = std::move(out);
  return Status::ok();
}

}  // namespace

Expected<TrainSettings> train_settings_from_args(const ParsedArgs& args, CommandContext& ctx) {
  GV_RETURN_IF_ERROR(check_device_flag(args, ctx));
  TrainSettings s;
  s.steps = args.i64("steps");
  s.batch_size = args.i64("batch-size");
  s.grad_accum = static_cast<int>(args.i64("grad-accum"));
  if (s.steps < 1) return ctx.usage("--steps must be at least 1");
  if (s.batch_size < 1) return ctx.usage("--batch-size must be at least 1");
  if (s.grad_accum < 1) return ctx.usage("--grad-accum must be at least 1");
  auto kind = optimizer_kind(args.str("optimizer"));
  if (!kind) return ctx.usage(kind.status().message());
  const std::string schedule = args.str("schedule");
  if (schedule != "constant" && schedule != "cosine") return ctx.usage("--schedule must be constant or cosine");
  const std::string fuse_ops = args.str("fuse-ops");
  if (fuse_ops != "on" && fuse_ops != "off") return ctx.usage("--fuse-ops must be on or off");
  for (const char* f : {"metrics", "save-grads", "export"}) {
    if (args.given(f)) GV_RETURN_IF_ERROR(check_output_path(args.str(f), f));
  }
  TrainerConfig& cfg = s.trainer;
  cfg.lr = args.f64("lr");
  cfg.seed = static_cast<uint64_t>(args.i64("seed"));
  cfg.schedule = schedule == "cosine" ? LrSchedule::kCosine : LrSchedule::kConstant;
  cfg.warmup_steps = args.i64("warmup-steps");
  cfg.graph.grad_accum_steps = s.grad_accum;
  cfg.graph.padding_idx = args.i64("padding-idx");
  cfg.graph.fuse_ops = fuse_ops == "on";
  GV_RETURN_IF_ERROR(graph_options_from_args(args, cfg.graph, ctx));
  OptimizerConfig& oc = cfg.graph.optimizer;
  oc.kind = *kind;
  oc.beta1 = args.f64("beta1");
  oc.beta2 = args.f64("beta2");
  oc.eps = args.f64("eps");
  oc.momentum = args.f64("momentum");
  oc.weight_decay = args.given("weight-decay") ? args.f64("weight-decay")
                                               : (*kind == OptimizerConfig::Kind::kAdamW ? 0.01 : 0.0);
  oc.grad_clip = args.f64("grad-clip");
  s.checkpoint_layers = args.str("checkpoint-layers");
  s.metrics = args.str("metrics");
  s.save_grads = args.str("save-grads");
  // Each update right after its gradient's last backward node (on CUDA beside the rest of the backward), unless the
  // first batch's gradients are to be written (--save-grads reads them before any update).
  // GALVATRON_UPDATES_IN_BACKWARD=0 keeps them after the backward (comparisons, bench/cuda_notes.md).
  const char* in_backward = std::getenv("GALVATRON_UPDATES_IN_BACKWARD");
  cfg.graph.updates_in_backward = s.save_grads.empty() && !(in_backward && std::string(in_backward) == "0");
  // GALVATRON_GRAD_NORM_IN_UPDATES=0: the gradient norm by its own pass after the backward (comparisons).
  const char* norm_in_updates = std::getenv("GALVATRON_GRAD_NORM_IN_UPDATES");
  cfg.graph.grad_norm_in_updates = !(norm_in_updates && std::string(norm_in_updates) == "0");
  // GALVATRON_SPLIT_MASTERS=0: float32 master weights in their own buffers beside AdamW's bf16 copies (comparisons).
  const char* split = std::getenv("GALVATRON_SPLIT_MASTERS");
  cfg.graph.split_masters = !(split && std::string(split) == "0");
  // GALVATRON_FUSE_ATTENTION_BIAS_SUMS=0: the QKV bias gradient by its own BiasGrad pass (comparisons).
  const char* bias_sums = std::getenv("GALVATRON_FUSE_ATTENTION_BIAS_SUMS");
  cfg.graph.fuse_attention_bias_sums = !(bias_sums && std::string(bias_sums) == "0");
  // GALVATRON_SUM_GRADS_IN_PRODUCTS=0: gradient sums of products sharing an input by Add nodes (comparisons).
  const char* sums = std::getenv("GALVATRON_SUM_GRADS_IN_PRODUCTS");
  cfg.graph.sum_grads_in_products = !(sums && std::string(sums) == "0");
  // GALVATRON_ACCUMULATE_IN_PRODUCTS=0: micro-batch gradients accumulated by AccumulateGrad nodes instead of inside
  // their products (comparisons).
  const char* in_products = std::getenv("GALVATRON_ACCUMULATE_IN_PRODUCTS");
  cfg.graph.accumulate_in_products = !(in_products && std::string(in_products) == "0");
  s.checkpoint_dir = args.str("checkpoint-dir");
  s.checkpoint_every = args.i64("checkpoint-every");
  s.resume = args.str("resume");
  s.export_path = args.str("export");
  s.device = args.str("device");
  if (args.given("precision")) s.precision = args.str("precision");
  if (!s.precision.empty() && s.precision != "fp32" && s.precision != "tf32" && s.precision != "bf16") {
    return ctx.usage("--precision must be fp32, tf32 or bf16, got '" + s.precision + "'");
  }
  s.devices = args.i64("devices");
  if (s.devices < 1) return ctx.usage("--devices must be at least 1");
  if (s.devices > 1 && !s.save_grads.empty()) {
    return ctx.usage("--save-grads writes one process's gradients; it cannot be combined with --devices > 1 yet");
  }
  s.parallel_plan = parallel_flags_given(args);
  s.args = &args;
  return s;
}

Expected<TrainOutcome> run_training(const TrainSettings& settings, TrainModelSource& source, CommandContext& ctx) {
  TrainOutcome out;
  const int rank = settings.trainer.comm ? settings.trainer.comm->rank() : 0;
  const int ranks = settings.trainer.comm ? settings.trainer.comm->size() : 1;
  const bool leader = rank == 0;  // prints, writes metrics, checkpoints and exports
  if (!leader) ctx.quiet = true;
  std::unique_ptr<DataLoader> loader = std::move(source.setup.loader);
  ctx.note("data: " + loader->describe());
  ImportedModel& model = source.model;
  TrainerConfig cfg = settings.trainer;
  cfg.total_steps = settings.steps;
  const std::map<std::string, TiedParameter> tied = model.tied_parameters;
  if (!settings.save_grads.empty()) {
    for (const auto& kv : tied) cfg.graph.report_grads_of.push_back(kv.first);
  }
  Status layer_st;
  for (int l : parse_layer_list(settings.checkpoint_layers, model.graph.num_layers, &layer_st)) {
    cfg.graph.checkpoint_layers.insert(l);
  }
  if (!layer_st.is_ok()) return ctx.usage(layer_st.message());

  GV_ASSIGN_OR_RETURN(out.backend, make_backend(settings.device));
  if (!settings.precision.empty()) GV_RETURN_IF_ERROR(out.backend->set_precision(settings.precision));
  auto t0 = std::chrono::steady_clock::now();
  int64_t n_params = 0;
  for (ValueId p : model.graph.parameters()) n_params += shape_numel(model.graph.value(p).shape);
  const int num_layers = model.graph.num_layers;
  // A hybrid-parallel plan: this rank's graph and settings come from the partitioner's passes.
  int micro_batches = settings.grad_accum;
  std::map<std::string, std::pair<int, int>> input_slices;
  std::optional<partitioner::CommVolume> predicted_comm;
  std::map<std::string, double> measured_comm;  // summed over the steps of this run
  Graph forward;
  if (settings.parallel_plan) {
    partitioner::ParallelPlan plan;
    if (settings.args->flag("auto")) {
      AutoPlanRequest req;
      req.devices = ranks;
      req.global_batch = settings.batch_size * settings.grad_accum;
      req.chunks = settings.grad_accum;
      req.memory_gb = settings.args->f64("auto-memory");
      req.default_dp_type = settings.args->str("default-dp-type");
      req.grad_reduce_dtype = settings.args->str("grad-reduce-dtype");
      req.device = settings.device;
      req.compute_precision = settings.precision;
      // Message and activation sizes: bf16 training sends and keeps bf16 (fp32 and tf32 keep fp32).
      req.precision = settings.precision == "bf16" ? "bf16" : "fp32";
      GV_ASSIGN_OR_RETURN(plan, search_plan_for_training(source, req, settings.trainer.comm, ctx));
    } else {
      GV_ASSIGN_OR_RETURN(plan, plan_from_args(*settings.args, num_layers, ctx));
    }
    if (settings.grad_accum != 1 && settings.grad_accum != plan.chunks) {
      return ctx.usage("--grad-accum " + std::to_string(settings.grad_accum) + " disagrees with the plan's " +
                       std::to_string(plan.chunks) + " micro-batches (chunks); leave --grad-accum out");
    }
    micro_batches = std::max(plan.chunks, 1);
    ctx.note("parallel plan over " + std::to_string(ranks) + " process" + (ranks == 1 ? "" : "es") + ": " +
             partitioner::describe_plan(plan));
    RowImports imports(source);
    auto import = [&](int64_t rows) { return imports(rows); };
    GV_ASSIGN_OR_RETURN(partitioner::RankProgram prog,
                        partitioner::build_rank_program(plan, ranks, rank, settings.batch_size * micro_batches,
                                                        import));
    imports.release();
    cfg.graph.param_sync = prog.param_sync;
    cfg.graph.global_grad_norm = true;
    cfg.graph.loss_replicas = prog.loss_replicas;
    cfg.graph.grad_accum_steps = micro_batches;
    for (int l : prog.checkpoint_layers) cfg.graph.checkpoint_layers.insert(l);
    cfg.pipeline_schedule = prog.schedule;
    cfg.in_flight = prog.in_flight;
    cfg.shards = prog.shards;
    cfg.loss_divisor = prog.loss_divisor;
    input_slices = prog.input_slices;
    // bf16 gradient reduction: DDP's all-reduces always; ZeRO-2's where the weights keep bf16 copies (bf16 on GPUs).
    const bool bf16_reduce = settings.args->str("grad-reduce-dtype") == "bf16" &&
                             (plan.default_dp_type != partitioner::DpType::kZero2 ||
                              (settings.device == "cuda" && settings.precision == "bf16"));
    predicted_comm = partitioner::predict_comm_volume(plan, prog.layout, model.graph, settings.batch_size,
                                                      bf16_reduce ? 0.5 : 1.0);
    forward = std::move(prog.forward);
    model.graph = Graph();
  } else {
    forward = std::move(model.graph);
  }
  GV_ASSIGN_OR_RETURN(out.trainer, Trainer::create(std::move(forward), cfg, *out.backend));
  Trainer& trainer = *out.trainer;
  ctx.timing("building the training graph", t0);
  const TrainingGraph& tg = trainer.training_graph();
  ctx.note("model: " + source.label + ", " + with_commas(n_params) + " parameters, " + std::to_string(num_layers) +
           " layers; training graph: " + std::to_string(tg.graph.nodes.size()) + " nodes (" +
           std::to_string(tg.backward_begin) + " forward" +
           (cfg.graph.fuse_ops ? "; fused " + tg.fused.summary() : "") + ")");
  ctx.note("memory plan: peak " + human_bytes(trainer.peak_memory_bytes()) + " (activations " +
           human_bytes(trainer.arena_bytes()) + "; parameters, constants and optimizer state " +
           human_bytes(trainer.peak_memory_bytes() - trainer.arena_bytes() - trainer.scratch_bytes()) + ")");
  if (const std::vector<std::string> host_ops = out.backend->host_fallback_ops(); !host_ops.empty()) {
    std::string list;
    for (const std::string& op : host_ops) {
      int nodes = 0;
      for (const Node& n : tg.graph.nodes) nodes += n.domain + "::" + n.op_type == op;
      const std::string name = op.rfind("::", 0) == 0 ? op.substr(2) : op;
      list += (list.empty() ? "" : ", ") + name + " (" + std::to_string(nodes) + (nodes == 1 ? " node)" : " nodes)");
    }
    ctx.note("warning: no " + settings.device + " kernel for " + list +
             ": these run on the CPU, their operands copied to the host and back every step, which can make a step "
             "many times slower; please report the model and op");
  }

  int64_t start = 0;
  if (!settings.resume.empty()) {
    GV_ASSIGN_OR_RETURN(std::string ckpt, resolve_checkpoint(settings.resume));
    GV_ASSIGN_OR_RETURN(auto meta, trainer.load_checkpoint(ckpt));
    start = trainer.steps_done();
    uint64_t pos = std::strtoull(meta["galvatron.data_position"].c_str(), nullptr, 10);
    GV_RETURN_IF_ERROR(loader->seek(pos));
    ctx.note("resumed from " + ckpt + " at step " + std::to_string(start));
  }

  std::ofstream metrics;
  if (!settings.metrics.empty() && leader) {
    metrics.open(settings.metrics, start > 0 ? std::ios::app : std::ios::trunc);
    if (!metrics) return io_error("cannot open --metrics file '" + settings.metrics + "'");
  }
  const std::string& ckpt_dir = settings.checkpoint_dir;
  if (!ckpt_dir.empty() && leader) {
    std::error_code ec;
    fs::create_directories(ckpt_dir, ec);
    if (ec) return io_error("cannot create --checkpoint-dir '" + ckpt_dir + "': " + ec.message());
  }
  // Every rank takes part (pieces of sharded tensors are assembled across ranks); rank 0 writes.
  auto save_checkpoint = [&](int64_t step) -> Status {
    char name[64];
    std::snprintf(name, sizeof name, "step-%06lld.safetensors", static_cast<long long>(step));
    std::map<std::string, std::string> meta = {{"galvatron.data_position", std::to_string(loader->position())},
                                               {"galvatron.model", source.label}};
    GV_RETURN_IF_ERROR(trainer.save_checkpoint((fs::path(ckpt_dir) / name).string(), meta));
    if (!leader) return Status::ok();
    return write_text_atomic((fs::path(ckpt_dir) / "latest").string(), std::string(name) + "\n");
  };

  Progress progress(settings.steps, start, ctx.quiet || !leader);
  for (int64_t s = start; s < settings.steps; ++s) {
    std::vector<TensorMap> micro;
    int64_t step_tokens = 0;
    for (int k = 0; k < micro_batches; ++k) {
      GV_ASSIGN_OR_RETURN(Batch b, loader->next());
      for (const auto& kv : b.tensors) {
        if (kv.first != "labels") {
          step_tokens += kv.second.numel();
          break;
        }
      }
      if (settings.parallel_plan) {
        GV_RETURN_IF_ERROR(take_plan_rows(b.tensors, input_slices));
      } else {
        GV_RETURN_IF_ERROR(take_rank_rows(b.tensors, rank, ranks));
      }
      micro.push_back(std::move(b.tensors));
    }
    if (s == start && !settings.save_grads.empty()) {
      double loss = 0;
      GV_ASSIGN_OR_RETURN(TensorMap grads, trainer.compute_gradients(micro[0], &loss));
      GV_RETURN_IF_ERROR(split_tied_gradients(grads, tied));
      GV_RETURN_IF_ERROR(write_safetensors(settings.save_grads, grads, {{"loss", std::to_string(loss)}}));
      ctx.note("wrote the gradients of the first batch to " + settings.save_grads);
    }
    GV_ASSIGN_OR_RETURN(StepMetrics m, trainer.step(micro));
    if (s == start) {
      // Native kernels that met operands they have no path for (a dtype) ran those calls on the host: known only now.
      std::string list;
      for (const std::string& op : out.backend->runtime_host_fallbacks())
        list += (list.empty() ? "" : ", ") + (op.rfind("::", 0) == 0 ? op.substr(2) : op);
      if (!list.empty()) {
        ctx.note("warning: the " + settings.device + " kernels of " + list +
                 " ran on the CPU in the first step (no device path for those dtypes): their operands are copied to "
                 "the host and back every step; please report the model and op");
      }
    }
    if (!std::isfinite(m.loss)) {
      progress.finish();
      return invalid_argument("the loss became " + std::to_string(m.loss) + " at step " + std::to_string(m.step) +
                              "; lower --lr or set --grad-clip");
    }
    out.losses.emplace_back(m.step, m.loss);
    for (const auto& [op, b] : m.comm_bytes) measured_comm[op] += b;
    const double tok_s = m.seconds > 0 ? static_cast<double>(step_tokens) / m.seconds : 0.0;
    if (metrics.is_open()) {
      nlohmann::json j = {{"step", m.step}, {"loss", m.loss}, {"lr", m.lr}, {"grad_norm", m.grad_norm},
                          {"tokens_per_s", tok_s}, {"peak_mem_bytes", trainer.peak_memory_bytes()}};
      if (!m.comm_bytes.empty()) j["comm_bytes"] = m.comm_bytes;  // rank 0's, by communication op
      metrics << j.dump() << "\n";
      metrics.flush();
    }
    char fields[160];
    std::snprintf(fields, sizeof fields, "loss %.4f  lr %.2e  %.0f tok/s", m.loss, m.lr, tok_s);
    progress.update(m.step, fields);
    if (!ckpt_dir.empty() && settings.checkpoint_every > 0 && m.step % settings.checkpoint_every == 0) {
      GV_RETURN_IF_ERROR(save_checkpoint(m.step));
    }
  }
  progress.finish();
  out.seconds = progress.elapsed_s();
  if (settings.device == "cuda" && settings.steps - start >= 2) {
    ctx.note(trainer.step_recorded() ? "CUDA graph: each step after the first replayed as one recorded launch"
                                     : "CUDA graph: not used (" + trainer.step_not_recorded_because() + ")");
  }
  const bool saved_last = settings.checkpoint_every > 0 && settings.steps % settings.checkpoint_every == 0;
  if (!ckpt_dir.empty() && !saved_last && start < settings.steps) GV_RETURN_IF_ERROR(save_checkpoint(settings.steps));
  if (!settings.export_path.empty()) {
    GV_ASSIGN_OR_RETURN(TensorMap params, trainer.parameters());  // every rank: pieces are assembled across ranks
    if (leader) {
      GV_RETURN_IF_ERROR(export_trained_model(source, params, settings.export_path));
      ctx.note("exported the trained model to " + settings.export_path);
    }
  }
  if (!leader) return out;
  if (predicted_comm && settings.steps > start) {
    const double n = static_cast<double>(settings.steps - start);
    partitioner::CommVolume got = partitioner::measured_comm_volume(measured_comm);
    auto mb = [](double b) {
      char s[32];
      std::snprintf(s, sizeof s, "%.3f", b / 1e6);
      return std::string(s);
    };
    const partitioner::CommVolume& p = *predicted_comm;
    ctx.note("communication per step, rank 0 (MB; data-parallel / gathers / tensor-parallel / pipeline): sent " +
             mb(got.total() / n) + " (" + mb(got.dp / n) + " / " + mb(got.zero3_extra / n) + " / " + mb(got.tp / n) +
             " / " + mb(got.pp / n) + "); Galvatron's cost model " + mb(p.total()) + " (" + mb(p.dp) + " / " +
             mb(p.zero3_extra) + " / " + mb(p.tp) + " / " + mb(p.pp) + ")");
  }
  std::printf("trained %lld steps in %s; final loss %.4f\n", static_cast<long long>(settings.steps - start),
              format_duration(out.seconds).c_str(), out.losses.empty() ? NAN : out.losses.back().second);
  return out;
}

}  // namespace gv::cli

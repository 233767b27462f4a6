// `galvatron search`: Galvatron v2.4.0's automatic-parallelism search (partitioner/) on Galvatron's profile files,
// with its arguments in kebab case, its meanings and defaults. Prints the plan as a table (throughput last) and
// writes the plan JSON to --output-config-path.
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <string>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/search_ir_profile.h"
#include "cli/search_report.h"
#include "models/zoo.h"
#include "partitioner/galvatron_files.h"
#include "partitioner/plan_json.h"
#include "partitioner/profiler.h"
#include "partitioner/search.h"

namespace gv::cli {
namespace {

using namespace gv::partitioner;

bool is_dir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}
std::string join(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

// A path flag naming a file, or a folder where Galvatron's file name is looked up (first existing candidate).
Expected<std::string> resolve(const ParsedArgs& args, CommandContext& ctx, const std::string& flag,
                              const std::vector<std::string>& names, const std::string& fallback_dir) {
  std::string p = args.given(flag) ? args.str(flag) : fallback_dir;
  if (p.empty()) {
    return ctx.usage("give --" + flag + " (a file, or a folder holding " + names[0] + ")");
  }
  if (!is_dir(p)) return p;
  for (const auto& n : names)
    if (exists(join(p, n))) return join(p, n);
  return join(p, names[0]);
}

// Hardware files, the search, the report and the plan file: shared by Galvatron's profile files and our own.
Status finish_search(const ParsedArgs& args, CommandContext& ctx, const SearchOptions& o, const std::string& name,
                     ModelProfile model) {
  const std::string hwdir = args.str("hardware-profiling-path");
  const std::string cluster = std::to_string(o.num_nodes) + "nodes_" + std::to_string(o.num_gpus_per_node) + "gpus_per_node.json";
  HardwareFiles hf;
  GV_ASSIGN_OR_RETURN(hf.allreduce, resolve(args, ctx, "allreduce-bandwidth-config-path", {"allreduce_bandwidth_" + cluster}, hwdir));
  GV_ASSIGN_OR_RETURN(hf.p2p, resolve(args, ctx, "p2p-bandwidth-config-path", {"p2p_bandwidth_" + cluster}, hwdir));
  GV_ASSIGN_OR_RETURN(hf.overlap, resolve(args, ctx, "overlap-coe-path", {"overlap_coefficient.json"}, hwdir));
  GV_ASSIGN_OR_RETURN(hf.sp_time, resolve(args, ctx, "sp-time-path", {"sp_time_" + cluster}, hwdir));

  auto t0 = std::chrono::steady_clock::now();
  GV_ASSIGN_OR_RETURN(HardwareProfile hw, load_galvatron_hardware_profile(hf, o.world_size()));
  auto t1 = std::chrono::steady_clock::now();
  GV_ASSIGN_OR_RETURN(SearchResult r, search(model, hw, o));
  ctx.timing("search (" + std::to_string(r.tasks) + " tasks, " + std::to_string(r.num_candidate_strategies) +
                 " strategies)", t1);
  if (!r.feasible) {
    std::string need = r.least_memory_gb > 0
                           ? "the smallest plan needs about " + std::to_string(static_cast<int>(r.least_memory_gb)) +
                                 " GB per GPU"
                           : "no candidate plan exists for these settings";
    return Status(StatusCode::kOutOfMemory,
                  "no parallel plan fits in " + args.str("memory-constraint") + " GB per GPU (" + need +
                      "); raise --memory-constraint, use more GPUs, or a smaller batch (--settle-bsz / --min-bsz)");
  }
  print_search_report(model, hw, o, r);

  std::string out = args.str("output-config-path");
  std::string path = out.size() > 5 && out.substr(out.size() - 5) == ".json" && !is_dir(out)
                         ? out
                         : join(out, plan_file_name(name, r.effective));
  std::ofstream f(path);
  if (!f) return io_error("cannot write the plan to '" + path + "' (check --output-config-path)");
  f << plan_to_text(r);
  if (!f) return io_error("writing '" + path + "' failed");
  std::printf("plan written to %s\n", path.c_str());
  std::printf("throughput: %.4f samples/s\n", r.throughput);
  (void)t0;
  return Status::ok();
}

// Our own profiles: memory from the IR (exact), forward times from --time-profiling-path (a `galvatron profile` file)
// or timed inline on --device (the CPU by default). Both go through Galvatron's readers (written to a scratch folder
// first), so the time and memory modes mean what they mean for Galvatron's files.
Status run_ir_search(const ParsedArgs& args, CommandContext& ctx, const SearchOptions& o) {
  IrModelSource src;
  if (!args.positionals.empty()) {
    src.onnx_path = args.positionals[0];
    src.name = model_name_of_path(src.onnx_path);
    if (args.given("seq-length")) src.seq = args.i64("seq-length");
  } else {
    auto c = zoo_config(args.str("model-type"), args.str("model-size"));
    if (!c) return ctx.usage(c.status().message() + " (see `galvatron models`)");
    src.config = *c;
    if (args.given("hidden-size")) src.config.hidden_size = args.i64("hidden-size");
    if (args.given("num-hidden-layers")) src.config.num_layers = args.i64("num-hidden-layers");
    if (args.given("num-attention-heads")) src.config.num_heads = args.i64("num-attention-heads");
    if (args.given("ffn-hidden-size")) src.config.ffn_size = args.i64("ffn-hidden-size");
    if (args.given("seq-length")) src.config.seq_length = args.i64("seq-length");
    if (args.given("vocab-size")) src.config.vocab_size = args.i64("vocab-size");
    src.seq = src.config.seq_length;
    src.name = src.config.size;
  }
  if (args.given("model-name")) src.name = args.str("model-name");
  const std::string prec = o.mixed_precision;

  auto t0 = std::chrono::steady_clock::now();
  GV_ASSIGN_OR_RETURN(IrMemory mem, ir_memory_of(src, prec == "fp32" ? 4 : 2));
  ctx.timing("memory profile from the IR", t0);
  char tmpl[] = "/tmp/galvatron-search-XXXXXX";
  if (!mkdtemp(tmpl)) return io_error("cannot create a scratch folder in /tmp");
  const std::string scratch = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{scratch};
  const std::string mem_path = join(scratch, "memory_profiling.json");
  GV_RETURN_IF_ERROR(write_text_file(mem_path, memory_profile_json(mem)));

  std::string comp, timed_on;
  if (args.given("time-profiling-path")) {
    GV_ASSIGN_OR_RETURN(comp, resolve(args, ctx, "time-profiling-path",
                                      {"computation_profiling_" + prec + "_" + src.name + ".json",
                                       "computation_profiling_" + prec + "_" + src.name + "_all.json"}, ""));
  } else {
    const std::string device = args.str("device"), precision = args.str("precision");
    const std::string where = device == "cpu" ? "the CPU" : device + " (" + precision + ")";
    if (device == "cpu") {
      ctx.note("no --time-profiling-path: timing the forward on the CPU now (batch 1); CPU times rank plans only "
               "roughly -- run `galvatron profile --device cuda` on the target GPU and pass its computation file");
    } else {
      ctx.note("no --time-profiling-path: timing the forward on " + where + " now (batch 1, static mode); "
               "`galvatron profile --device cuda` times more batch sizes");
    }
    GV_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, timing_backend(device, precision));
    auto t1 = std::chrono::steady_clock::now();
    // The layer at each TP degree the search may use (galvatron's extension; degrees the heads do not divide are
    // skipped), so that TP is priced from measured times.
    std::vector<int> tps;
    const int64_t world = args.i64("num-nodes") * args.i64("num-gpus-per-node");
    for (int64_t k = 2; k <= std::min<int64_t>(world, args.i64("max-tp-deg")); k *= 2) tps.push_back(static_cast<int>(k));
    GV_ASSIGN_OR_RETURN(ForwardTiming t, forward_timing_of(src, {1}, 1, *backend, precision, tps));
    ctx.timing("forward timing on " + where, t1);
    comp = join(scratch, "computation_profiling.json");
    GV_RETURN_IF_ERROR(write_text_file(comp, computation_profile_json(t)));
    timed_on = where;
  }
  ModelFileOptions mo;
  mo.model_name = src.name;
  mo.layers = {LayerShape{static_cast<int>(mem.hidden_size), static_cast<int>(mem.layers.size()),
                          static_cast<int>(mem.seq)}};
  auto tm = parse_profile_mode(args.str("time-profile-mode"));
  if (!tm) return ctx.usage(tm.status().message());
  auto mm = parse_profile_mode(args.str("memory-profile-mode"));
  if (!mm) return ctx.usage(mm.status().message());
  mo.time_mode = *tm;
  mo.memory_mode = *mm;
  mo.sequence_parallel = o.sequence_parallel;
  GV_ASSIGN_OR_RETURN(ModelProfile model, load_galvatron_model_profile(comp, mem_path, mo));
  model.source = "IR memory (" + (src.onnx_path.empty() ? "zoo " + src.name : src.onnx_path) + "), times from " +
                 (args.given("time-profiling-path") ? comp : timed_on);
  std::printf("model profile from the IR: %s, %d layers, %.2f MB parameters per layer, %.3f MB activations per sample "
              "per layer (tp 1, %s)\n", src.name.c_str(), static_cast<int>(mem.layers.size()),
              model.layer_types[0].parameter_size_mb, model.layer_types[0].act_per_sample_mb[1], prec.c_str());
  return finish_search(args, ctx, o, src.name, std::move(model));
}

Status run_search(const ParsedArgs& args, CommandContext& ctx) {
  GV_RETURN_IF_ERROR(check_device_flag(args, ctx));
  SearchOptions o;
  o.num_nodes = static_cast<int>(args.i64("num-nodes"));
  o.num_gpus_per_node = static_cast<int>(args.i64("num-gpus-per-node"));
  o.memory_constraint_gb = args.f64("memory-constraint");
  o.min_bsz = static_cast<int>(args.i64("min-bsz"));
  o.max_bsz = static_cast<int>(args.i64("max-bsz"));
  o.bsz_scale = static_cast<int>(args.i64("bsz-scale"));
  o.recommend_min_bsz = static_cast<int>(args.i64("recommend-min-bsz"));
  o.settle_bsz = static_cast<int>(args.i64("settle-bsz"));
  o.settle_chunk = static_cast<int>(args.i64("settle-chunk"));
  o.search_space = args.str("search-space");
  o.sp_space = args.str("sp-space");
  o.disable_dp = static_cast<int>(args.i64("disable-dp"));
  o.disable_tp = static_cast<int>(args.i64("disable-tp"));
  o.disable_vtp = static_cast<int>(args.i64("disable-vtp"));
  o.disable_pp = static_cast<int>(args.i64("disable-pp"));
  o.disable_sdp = static_cast<int>(args.i64("disable-sdp"));
  o.disable_ckpt = static_cast<int>(args.i64("disable-ckpt"));
  o.disable_tp_consec = static_cast<int>(args.i64("disable-tp-consec"));
  o.max_tp_deg = static_cast<int>(args.i64("max-tp-deg"));
  o.max_pp_deg = static_cast<int>(args.i64("max-pp-deg"));
  o.default_dp_type = args.str("default-dp-type");
  o.grad_reduce_dtype = args.str("grad-reduce-dtype");
  o.mixed_precision = args.str("mixed-precision");
  o.pipeline_type = args.str("pipeline-type");
  o.sequence_parallel = args.flag("sequence-parallel");
  o.global_memory_buffer = !args.flag("no-global-memory-buffer");
  o.async_grad_reduce = !args.flag("no-async-grad-reduce");
  o.fine_grained_mode = static_cast<int>(args.i64("fine-grained-mode"));
  o.use_pipeline_costmodel = static_cast<int>(args.i64("use-pipeline-costmodel"));
  o.costmodel_coe = args.f64("costmodel-coe");
  o.threads = static_cast<int>(args.i64("threads"));
  if (o.recommend_min_bsz && o.settle_bsz <= 0) {
    return ctx.usage("--recommend-min-bsz is not supported yet (it crashes in Galvatron v2.4.0 too); give --min-bsz");
  }
  // MODEL.onnx, or a zoo model without Galvatron's memory file: our own profiles (memory from the IR).
  if (!args.positionals.empty() || (args.given("model-size") && !args.given("memory-profiling-path"))) {
    return run_ir_search(args, ctx, o);
  }

  // Model shape: a zoo size, overridden by the explicit shape flags.
  LayerShape shape;
  std::string name = args.str("model-name");
  if (args.given("model-size")) {
    auto c = zoo_config(args.str("model-type"), args.str("model-size"));
    if (!c) return ctx.usage(c.status().message() + " (see `galvatron models`)");
    shape.hidden_size = static_cast<int>(c->hidden_size);
    shape.layer_num = static_cast<int>(c->num_layers);
    shape.seq_len = static_cast<int>(c->seq_length);
    if (name.empty()) name = args.str("model-size");
  }
  if (args.given("hidden-size")) shape.hidden_size = static_cast<int>(args.i64("hidden-size"));
  if (args.given("num-hidden-layers")) shape.layer_num = static_cast<int>(args.i64("num-hidden-layers"));
  if (args.given("seq-length")) shape.seq_len = static_cast<int>(args.i64("seq-length"));
  if (shape.hidden_size <= 0 || shape.layer_num <= 0 || shape.seq_len <= 0) {
    return ctx.usage("give the model: --model-type T --model-size S, or --hidden-size --num-hidden-layers --seq-length");
  }
  if (name.empty()) name = "model";

  ModelFileOptions mo;
  mo.model_name = name;
  mo.layers = {shape};
  auto tm = parse_profile_mode(args.str("time-profile-mode"));
  if (!tm) return ctx.usage(tm.status().message());
  auto mm = parse_profile_mode(args.str("memory-profile-mode"));
  if (!mm) return ctx.usage(mm.status().message());
  mo.time_mode = *tm;
  mo.memory_mode = *mm;
  mo.sequence_parallel = o.sequence_parallel;
  const std::string prec = o.mixed_precision;
  GV_ASSIGN_OR_RETURN(std::string comp, resolve(args, ctx, "time-profiling-path",
                                                {"computation_profiling_" + prec + "_" + name + ".json",
                                                 "computation_profiling_" + prec + "_" + name + "_all.json"}, ""));
  GV_ASSIGN_OR_RETURN(std::string mem, resolve(args, ctx, "memory-profiling-path",
                                               {"memory_profiling_" + prec + "_" + name + ".json",
                                                "memory_profiling_" + prec + "_" + name + "_all.json"}, ""));
  GV_ASSIGN_OR_RETURN(ModelProfile model, load_galvatron_model_profile(comp, mem, mo));
  return finish_search(args, ctx, o, name, std::move(model));
}

std::vector<FlagSpec> search_flags() {
  return {
      int_flag("num-nodes", "N", "1", "Number of nodes."),
      int_flag("num-gpus-per-node", "G", "8", "GPUs per node."),
      float_flag("memory-constraint", "GB", "24", "Memory budget per GPU in GB (above 20 GB, 20% is held back for "
                                                  "PyTorch's cache, as Galvatron does)."),
      int_flag("min-bsz", "B", "8", "Smallest global batch searched."),
      int_flag("max-bsz", "B", "10240", "Largest global batch searched."),
      int_flag("bsz-scale", "B", "8", "Step between searched global batches."),
      int_flag("recommend-min-bsz", "0|1", "0", "Start the batch search from a recommended size (not supported yet)."),
      int_flag("settle-bsz", "B", "-1", "Search this global batch only (-1: search min..max)."),
      int_flag("settle-chunk", "C", "-1", "Use this number of micro-batches only (-1: search the divisors)."),
      string_flag("search-space", "SPACE", "full", "full | dp+tp | dp+pp | 3d | dp | sdp | tp | pp (baselines)."),
      string_flag("sp-space", "SPACE", "tp", "tp (Megatron TP) | tp+sp (also Ulysses SP per layer)."),
      int_flag("disable-dp", "0|1", "0", "No data parallelism with the default DP type."),
      int_flag("disable-tp", "0|1", "0", "No tensor parallelism."),
      int_flag("disable-vtp", "0|1", "0", "No vocabulary tensor parallelism (vtp = 1)."),
      int_flag("disable-pp", "0|1", "0", "No pipeline parallelism."),
      int_flag("disable-sdp", "0|1", "0", "No ZeRO-3 (sharded data parallelism), also for the embedding."),
      int_flag("disable-ckpt", "0|1", "0", "No activation checkpointing."),
      int_flag("disable-tp-consec", "0|1", "0", "TP groups always on consecutive ranks."),
      int_flag("max-tp-deg", "T", "8", "Largest tensor-parallel degree."),
      int_flag("max-pp-deg", "P", "8", "Largest pipeline degree."),
      string_flag("default-dp-type", "ddp|zero2", "ddp", "Data-parallel type of non-ZeRO-3 layers."),
      string_flag("grad-reduce-dtype", "fp32|bf16", "fp32", "The training run's --grad-reduce-dtype (this runtime's profiles): bf16: gradient messages are bf16, and ZeRO-2's weight gathers are costed beside the next forward pass instead of after the update (as a bf16 training run does)."),
      string_flag("mixed-precision", "fp32|fp16|bf16", "bf16", "Training precision."),
      string_flag("pipeline-type", "gpipe|pipedream_flush", "gpipe", "Pipeline schedule."),
      bool_flag("sequence-parallel", "Megatron sequence parallelism (reads the _sp memory sections)."),
      bool_flag("no-global-memory-buffer", "Do not count the SP all-gather buffer (and search max TP = --max-tp-deg only)."),
      bool_flag("no-async-grad-reduce", "Gradients reduced synchronously (changes the ZeRO memory ratios)."),
      int_flag("fine-grained-mode", "0|1", "1", "1: a strategy per layer; 0: one strategy for all layers."),
      int_flag("use-pipeline-costmodel", "0|1", "1", "Rank plans with the pipeline cost model."),
      float_flag("costmodel-coe", "X", "1.0", "Multiplier of every predicted time."),
      string_flag("time-profile-mode", "MODE", "static", "static | batch | sequence (how compute times are read)."),
      string_flag("memory-profile-mode", "MODE", "static", "static | sequence (how memory sizes are read)."),
      string_flag("time-profiling-path", "PATH", "", "Computation profile file, or its folder "
                                                     "(computation_profiling_{prec}_{model}.json)."),
      string_flag("memory-profiling-path", "PATH", "", "Memory profile file, or its folder."),
      string_flag("hardware-profiling-path", "DIR", "", "Folder with the four hardware files (used for each one not given)."),
      string_flag("allreduce-bandwidth-config-path", "PATH", "", "allreduce_bandwidth_{N}nodes_{G}gpus_per_node.json or its folder."),
      string_flag("p2p-bandwidth-config-path", "PATH", "", "p2p_bandwidth_{N}nodes_{G}gpus_per_node.json or its folder."),
      string_flag("overlap-coe-path", "PATH", "", "overlap_coefficient.json or its folder."),
      string_flag("sp-time-path", "PATH", "", "sp_time_{N}nodes_{G}gpus_per_node.json or its folder."),
      string_flag("output-config-path", "PATH", ".", "Folder (Galvatron's file name) or .json file for the plan."),
      string_flag("model-type", "TYPE", "", "Zoo model type (gpt, llama, bert), with --model-size."),
      string_flag("model-size", "NAME", "", "Zoo model size, e.g. llama-7b (see `galvatron models`)."),
      string_flag("model-name", "NAME", "", "Name used in profile and plan file names (default: --model-size)."),
      int_flag("hidden-size", "H", "0", "Hidden size."),
      int_flag("num-hidden-layers", "L", "0", "Transformer layers."),
      int_flag("num-attention-heads", "N", "0", "Attention heads (reaches the search through the profiles)."),
      int_flag("ffn-hidden-size", "F", "0", "FFN size (reaches the search through the profiles)."),
      int_flag("seq-length", "S", "0", "Sequence length."),
      int_flag("vocab-size", "V", "0", "Vocabulary size (reaches the search through the profiles)."),
      int_flag("threads", "N", "0", "Search threads (0: OpenMP default)."),
      string_flag("device", "DEVICE", "cpu", "Without --time-profiling-path (our own profiles): where the forward is "
                                             "timed inline, cpu or cuda (when built with CUDA)."),
      string_flag("precision", "fp32|tf32|bf16", "fp32", "With --device cuda: what the inline-timed matrix products "
                                                         "compute in (as `train --precision`)."),
  };
}

}  // namespace

GV_REGISTER_COMMAND(
    search,
    (Command{.spec = {.name = "search",
                      .summary = "Find the fastest hybrid-parallel plan (Galvatron's search) for N GPUs and a memory budget.",
                      .description =
                          "Galvatron v2.4.0's strategy search: per layer a TP degree, TP-consecutive flag, DP type "
                          "(DDP/ZeRO-2 or ZeRO-3) and checkpointing; globally the pipeline degree, micro-batches, batch, "
                          "vocabulary TP and embed_sdp, chosen by a knapsack dynamic program over layers and memory with "
                          "Galvatron's cost model. Reads Galvatron's own profile files. Prints the plan (stages, layer "
                          "groups, memory, time) with the predicted throughput last and writes the plan JSON that "
                          "Galvatron's runtime reads.",
                      .positionals = {{"MODEL.onnx", "a model profiled by us (memory from the IR)", true}},
                      .flags = search_flags(),
                      .examples = {"galvatron search --model-name llama2-7b --hidden-size 4096 --num-hidden-layers 32 "
                                   "--seq-length 2048 --time-profiling-path P/llama2-7b --memory-profiling-path "
                                   "P/llama2-7b --hardware-profiling-path P/hardware --memory-constraint 36 --settle-bsz 16 "
                                   "--pipeline-type pipedream_flush --default-dp-type zero2 --sequence-parallel"}},
             .run = run_search,
             .order = 60}));

}  // namespace gv::cli

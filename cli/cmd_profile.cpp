// `galvatron profile`: our own profiles in Galvatron's file formats. For a model (MODEL.onnx or a zoo config): the
// memory profile from the IR (exact: parameters and saved activations of the training graph) and the forward time per
// layer and for the embedding/head (+ loss), timed on --device (CPU: node by node; CUDA: by blocks of nodes, in
// --precision). With --hardware: the hardware files from given numbers (on a machine with fewer than 2 GPUs there is
// nothing to measure; the output says so), or measured with --devices N.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/hardware_measure.h"
#include "cli/mpi_launch.h"
#include "cli/world_communicator.h"
#include "cli/model_flags.h"
#include "cli/search_ir_profile.h"
#include "runtime/backend.h"
#include "runtime/communicator.h"

namespace gv::cli {
namespace {

using namespace gv::partitioner;

// --hardware --devices N: measure on N local devices (one process each, under mpirun).
Status measure_hardware_files(const ParsedArgs& args, CommandContext& ctx) {
  const int64_t devices = args.i64("devices");
  if (!launched_under_mpi()) return relaunch_under_mpirun(devices);
  GV_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
                      make_world_communicator(args.str("device") == "cuda", devices, ctx));
  if (comm->rank() != 0) ctx.quiet = true;
  GV_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, make_backend(args.str("device")));
  HardwareMeasureOptions o;
  o.start_mb = args.f64("start-mb");
  o.end_mb = args.f64("end-mb");
  if (o.end_mb <= 0) return ctx.usage("--end-mb must be positive");
  GV_ASSIGN_OR_RETURN(MeasuredHardware m, measure_hardware(*comm, *backend, o, ctx));
  m.num_nodes = static_cast<int>(args.i64("num-nodes"));
  m.gpus_per_node = static_cast<int>(devices / std::max<int64_t>(1, m.num_nodes));
  if (comm->rank() != 0) return Status::ok();
  const std::string dir = args.str("output-dir");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::printf("hardware profile measured on %lld %s devices (%s): overlap coefficient %.4f\n",
              static_cast<long long>(devices), args.str("device").c_str(), comm->backend_name(), m.overlap_coe);
  for (const auto& [k, v] : m.allreduce_gbps) std::printf("  %s: %.2f GB/s\n", k.c_str(), v);
  for (const auto& [k, v] : m.p2p_gbps) std::printf("  %s: %.2f GB/s\n", k.c_str(), v);
  GV_ASSIGN_OR_RETURN(auto paths, write_measured_hardware_files(dir, m));
  for (const auto& p : paths) std::printf("wrote %s\n", p.c_str());
  return Status::ok();
}

Status run_hardware(const ParsedArgs& args, CommandContext& ctx) {
  if (args.i64("devices") > 1) return measure_hardware_files(args, ctx);
  HardwareNumbers h;
  h.num_nodes = static_cast<int>(args.i64("num-nodes"));
  h.gpus_per_node = static_cast<int>(args.i64("num-gpus-per-node"));
  h.intra_allreduce_gbps = args.f64("allreduce-bandwidth");
  h.inter_allreduce_gbps = args.f64("inter-node-allreduce-bandwidth");
  h.p2p_gbps = args.f64("p2p-bandwidth");
  h.inter_p2p_gbps = args.f64("inter-node-p2p-bandwidth");
  h.overlap_coe = args.f64("overlap-coe");
  if (h.num_nodes < 1 || h.gpus_per_node < 1) return ctx.usage("--num-nodes and --num-gpus-per-node must be >= 1");
  const std::string dir = args.str("output-dir");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::printf("hardware profile: %s; measuring NCCL all-reduce / p2p bandwidths needs at least 2 GPUs, so nothing is "
              "measured: the files below hold the given numbers (--allreduce-bandwidth %.1f GB/s inside a node, %.1f "
              "across nodes, --p2p-bandwidth %.1f / %.1f GB/s, --overlap-coe %.4f)\n",
              cuda_backend_built() ? "this build has the CUDA backend but the collectives are not profiled here"
                                   : "no GPUs (CPU build)",
              h.intra_allreduce_gbps, h.inter_allreduce_gbps, h.p2p_gbps, h.inter_p2p_gbps, h.overlap_coe);
  GV_ASSIGN_OR_RETURN(auto paths, write_hardware_files(dir, h));
  for (const auto& p : paths) std::printf("wrote %s\n", p.c_str());
  return Status::ok();
}

Status run_profile(const ParsedArgs& args, CommandContext& ctx) {
  GV_RETURN_IF_ERROR(check_device_flag(args, ctx));
  if (args.flag("hardware")) return run_hardware(args, ctx);
  IrModelSource src;
  if (!args.positionals.empty()) {
    src.onnx_path = args.positionals[0];
    src.name = model_name_of_path(src.onnx_path);
    if (args.given("seq-length")) src.seq = args.i64("seq-length");
  } else if (names_zoo_model(args)) {
    GV_ASSIGN_OR_RETURN(src.config, zoo_model_from_flags(args, ctx));
    src.name = src.config.size;
    src.seq = src.config.seq_length;
  } else {
    return ctx.usage("give MODEL.onnx or --model-type/--model-size (or --hardware)");
  }
  if (args.given("model-name")) src.name = args.str("model-name");
  const std::string prec = args.str("mixed-precision");
  if (prec != "fp32" && prec != "fp16" && prec != "bf16") return ctx.usage("--mixed-precision: fp32, fp16 or bf16");
  auto batches = parse_int_list(args.str("profile-batch-sizes"));
  if (!batches) return ctx.usage("--profile-batch-sizes: " + batches.status().message());
  const std::string dir = args.str("output-dir");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  const std::string base = dir.empty() || dir.back() == '/' ? dir : dir + "/";

  // The timing backend first: a build without CUDA (or no GPU) fails before anything is written.
  const std::string device = args.str("device"), precision = args.str("precision");
  std::unique_ptr<Backend> backend;
  if (!args.flag("memory-only")) {
    GV_ASSIGN_OR_RETURN(backend, timing_backend(device, precision));
  }

  auto t0 = std::chrono::steady_clock::now();
  GV_ASSIGN_OR_RETURN(IrMemory mem, ir_memory_of(src, prec == "fp32" ? 4 : 2));
  ctx.timing("memory profile from the IR", t0);
  const std::string mem_path = base + "memory_profiling_" + prec + "_" + src.name + ".json";
  GV_RETURN_IF_ERROR(write_text_file(mem_path, memory_profile_json(mem)));
  std::printf("memory (IR, %s activations): %d layers, %.2f MB parameters per layer, %.3f MB activations per sample "
              "per layer (tp 1), %.3f MB checkpointed; embedding+head %.2f MB parameters\n",
              prec.c_str(), static_cast<int>(mem.layers.size()), mem.layers[0].param_bytes / 1048576.0,
              mem.layers[0].act.total() / static_cast<double>(mem.batch) / 1048576.0,
              mem.layers[0].act_checkpoint / static_cast<double>(mem.batch) / 1048576.0,
              mem.other_params.total() / 1048576.0);
  std::printf("wrote %s\n", mem_path.c_str());

  if (!args.flag("memory-only")) {
    const bool on_cpu = device == "cpu";
    const std::string where = on_cpu ? "the CPU" : device + " (" + precision + ")";
    auto t1 = std::chrono::steady_clock::now();
    std::vector<int> tps;
    if (!args.str("profile-tp-degrees").empty()) {
      auto parsed = parse_int_list(args.str("profile-tp-degrees"));
      if (!parsed) return ctx.usage("--profile-tp-degrees: " + parsed.status().message());
      tps = *parsed;
    }
    GV_ASSIGN_OR_RETURN(ForwardTiming t, forward_timing_of(src, *batches, static_cast<int>(args.i64("repeats")),
                                                           *backend, precision, tps));
    ctx.timing("forward timing on " + where, t1);
    const std::string comp_path = base + "computation_profiling_" + prec + "_" + src.name + ".json";
    GV_RETURN_IF_ERROR(write_text_file(comp_path, computation_profile_json(t)));
    for (const auto& [b, ms] : t.layer_ms_per_sample) {
      std::printf(
          "forward on %s, batch %d x seq %d: %.4f ms per sample per layer, %.4f ms per sample "
          "for the embedding + head + loss; a layer's backward / forward %.2f (the cost model takes 2)\n",
          on_cpu ? "the CPU (fp32)" : where.c_str(), b, t.seq, ms, t.other_ms_per_sample.at(b),
          t.backward_layer_ms_per_sample.at(b) / ms);
    }
    for (const auto& [tp, by_batch] : t.tp_layer_ms_per_sample) {
      for (const auto& [b, ms] : by_batch) {
        std::printf("forward on %s, TP %d (one rank, computation only), batch %d: %.4f ms per sample per layer "
                    "(%.2fx the TP 1 time / %d)\n", on_cpu ? "the CPU (fp32)" : where.c_str(), tp, b, ms,
                    ms / (t.layer_ms_per_sample.at(b) / tp), tp);
      }
    }
    for (const auto& [tp, why] : t.tp_skipped) std::printf("TP %d not timed: %s\n", tp, why.c_str());
    std::printf("wrote %s%s\n", comp_path.c_str(), on_cpu ? " (CPU times: use a GPU profile for real plans)" : "");
  }
  return Status::ok();
}

std::vector<FlagSpec> profile_flags() {
  std::vector<FlagSpec> f = zoo_model_flags();
  std::vector<FlagSpec> more = {
      string_flag("model-name", "NAME", "", "Name in the file names (default: --model-size, or the ONNX file's name)."),
      string_flag("output-dir", "DIR", ".", "Where the profile files go."),
      string_flag("mixed-precision", "fp32|fp16|bf16", "bf16", "Training precision: float activations are counted "
                                                              "in 2 bytes under fp16/bf16, 4 under fp32."),
      string_flag("profile-batch-sizes", "B,B,..", "1,2,4", "Batch sizes timed (the first is what static mode reads)."),
      string_flag("profile-tp-degrees", "K,K,..", "", "Also time the layer as one rank of a K-way tensor-parallel group computes it (communication left out), for each K: the search then uses these times instead of Galvatron's TP 1 time / K (keys tp{K}_layertype_0_...)."),
      int_flag("repeats", "N", "2", "Timed runs per batch size (the best is kept), after one warm-up."),
      bool_flag("memory-only", "Write the memory profile only (no timing)."),
      bool_flag("hardware", "Write the hardware files (all-reduce, p2p, overlap, sp_time) from the numbers below."),
      int_flag("num-nodes", "N", "1", "--hardware: nodes."),
      int_flag("num-gpus-per-node", "G", "8", "--hardware: GPUs per node."),
      float_flag("allreduce-bandwidth", "GB/s", "150", "--hardware: all-reduce bus bandwidth inside a node (default "
                                                      "~ the shared 8-GPU profile: 138-159)."),
      float_flag("inter-node-allreduce-bandwidth", "GB/s", "20", "--hardware: all-reduce bus bandwidth across nodes "
                                                                "(shared 2-node profile: 8-45)."),
      float_flag("p2p-bandwidth", "GB/s", "130", "--hardware: pipeline send/recv bandwidth inside a node (shared: 109-164)."),
      float_flag("inter-node-p2p-bandwidth", "GB/s", "8", "--hardware: send/recv bandwidth across nodes (shared: 7.7-8.8)."),
      float_flag("overlap-coe", "X", "1.1256", "--hardware: compute/communication overlap slowdown (shared: 1.1256)."),
      int_flag("devices", "N", "1", "--hardware: measure on N local devices instead (one process each under mpirun; NCCL on GPUs, MPI on CPUs)."),
      float_flag("start-mb", "MB", "16", "--hardware --devices: smallest all-reduce message."),
      float_flag("end-mb", "MB", "512", "--hardware --devices: largest all-reduce message (the bandwidth files use it)."),
      device_flag(),
      string_flag("precision", "fp32|tf32|bf16", "fp32", "What the timed matrix products compute in (as `train "
                                                         "--precision`; tf32 and bf16 need --device cuda). The file "
                                                         "name and activation bytes follow --mixed-precision."),
  };
  f.insert(f.end(), more.begin(), more.end());
  return f;
}

}  // namespace

GV_REGISTER_COMMAND(
    profile,
    (Command{.spec = {.name = "profile",
                      .summary = "Write Galvatron-format profiles for a model (memory from the IR, forward times "
                                 "on the CPU or a GPU) or the hardware.",
                      .description =
                          "For MODEL.onnx or --model-type/--model-size: memory_profiling_{prec}_{name}.json with the "
                          "parameter and saved-activation sizes per layer and for the embedding/head, taken from the "
                          "training graph (exact), and computation_profiling_{prec}_{name}.json with forward times per "
                          "layer and for the rest (the training graph's forward, loss included), timed on --device: "
                          "node by node on the CPU, by blocks of nodes on a GPU (--device cuda, in --precision). "
                          "With --hardware: the four hardware "
                          "files from given bandwidths (with fewer than 2 GPUs nothing can be measured).",
                      .positionals = {{"MODEL.onnx", "an ONNX model (else a zoo model)", true}},
                      .flags = profile_flags(),
                      .examples = {"galvatron profile --model-type gpt --model-size gpt-tiny --output-dir prof",
                                   "galvatron profile --model-type gpt --model-size gpt-1.5b --device cuda --precision "
                                   "tf32 --mixed-precision fp32 --profile-batch-sizes 1,2,3,4,5,6,7,8",
                                   "galvatron profile --hardware --output-dir prof/hardware"}},
             .run = run_profile,
             .order = 58}));

}  // namespace gv::cli

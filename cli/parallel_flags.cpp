#include "cli/parallel_flags.h"

#include <cstdlib>

namespace gv::cli {

std::vector<FlagSpec> parallel_flags() {
  return {
      int_flag("pp-deg", "N", "1", "Pipeline-parallel degree: the layers are cut into N stages (pp_division even)."),
      int_flag("global-tp-deg", "N", "1", "Tensor-parallel degree of every layer (Megatron column/row parallel)."),
      int_flag("global-tp-consec", "0|1", "1", "1: a TP group is consecutive ranks; 0: the DP group is."),
      int_flag("sdp", "0|1", "0", "1: sharded data parallelism (ZeRO-3) for every layer."),
      int_flag("fsdp", "0|1", "0", "Same as --sdp."),
      int_flag("global-checkpoint", "0|1", "0", "1: activation checkpointing for every layer."),
      int_flag("chunks", "N", "-1", "Micro-batches per step (pipeline); -1: --pp-deg when it is above 1, else 1."),
      string_flag("pipeline-type", "gpipe|pipedream_flush", "gpipe", "Pipeline schedule: GPipe, or 1F1B."),
      string_flag("default-dp-type", "ddp|zero2|zero3", "ddp", "Data parallelism of layers not marked ZeRO-3."),
      int_flag("vocab-tp", "N", "1", "Tensor-parallel degree of the embedding and LM head."),
      int_flag("embed-sdp", "0|1", "0", "1: ZeRO-3 for the embedding and LM head."),
      string_flag("galvatron-config-path", "PLAN.json", "", "Train with this plan (Galvatron's strategy JSON, as `galvatron search` writes); overrides the flags above."),
      bool_flag("auto", "Search the plan for this model, these devices and this batch (Galvatron's cost model and dynamic programming), then train with it."),
      float_flag("auto-memory", "GB", "0", "--auto: memory budget per device in GB (0: physical memory / devices on the CPU)."),
      string_flag("overlap-grad-sync", "on|off", "on", "Data parallelism: all-reduce each gradient during the backward pass, as soon as it is computed (on GPUs on a second stream, overlapping the rest of the backward; one micro-batch per step and no pipeline only); off: after the whole backward pass. The results are the same."),
      string_flag("grad-reduce-dtype", "fp32|bf16", "fp32", "Data parallelism: the type in which gradients are all-reduced. bf16 sends half the bytes (a bf16 copy of each float32 gradient, widened back for the update; on GPUs in bf16 a weight's gradient product writes the copy directly); sums are rounded to bf16, so results differ from fp32 within bf16 precision. ZeRO-2 on GPUs in bf16: the weights' gradients are reduce-scattered in bf16 and their bf16 copies, not the fp32 weights, are gathered (during the next forward pass); other ZeRO-2 and all ZeRO-3 reductions stay fp32."),
      int_flag("grad-reduce-bf16-min-numel", "N", "65536", "With --grad-reduce-dtype bf16: gradients of fewer elements (biases, norm scales) are all-reduced in fp32, saving their two conversion kernels where the bytes saved are negligible."),
  };
}

bool parallel_flags_given(const ParsedArgs& args) {
  for (const FlagSpec& f : parallel_flags()) {
    if (f.name == "overlap-grad-sync" || f.name.rfind("grad-reduce-", 0) == 0) continue;  // DP tunings, not plans
    if (f.name == "auto" ? args.flag("auto") : args.given(f.name)) return true;
  }
  return false;
}

Status graph_options_from_args(const ParsedArgs& args, TrainingGraphOptions& graph, CommandContext& ctx) {
  const std::string overlap = args.str("overlap-grad-sync");
  if (overlap != "on" && overlap != "off") return ctx.usage("--overlap-grad-sync must be on or off");
  graph.overlap_grad_sync = overlap == "on";
  const std::string reduce = args.str("grad-reduce-dtype");
  if (reduce != "fp32" && reduce != "bf16") return ctx.usage("--grad-reduce-dtype must be fp32 or bf16");
  graph.bf16_grad_reduce = reduce == "bf16";
  const int64_t min_numel = args.i64("grad-reduce-bf16-min-numel");
  if (min_numel < 0) return ctx.usage("--grad-reduce-bf16-min-numel must be 0 or more");
  graph.bf16_grad_reduce_min_numel = min_numel;
  // Comparison knob (bench/cuda_notes.md): GALVATRON_ZERO2_PREFETCH=0 gathers ZeRO-2's bf16 weight copies at the end
  // of the step instead of during the next forward pass.
  const char* prefetch = std::getenv("GALVATRON_ZERO2_PREFETCH");
  graph.prefetch_zero2_gathers = !(prefetch && std::string(prefetch) == "0");
  return Status::ok();
}

Expected<partitioner::ParallelPlan> plan_from_args(const ParsedArgs& args, int num_layers, CommandContext& ctx) {
  if (args.given("galvatron-config-path")) {
    for (const char* f : {"pp-deg", "global-tp-deg", "global-tp-consec", "sdp", "fsdp", "global-checkpoint"}) {
      if (args.given(f)) {
        return ctx.usage(std::string("--") + f + " cannot be combined with --galvatron-config-path (the plan file "
                         "sets every layer's strategy)");
      }
    }
    return partitioner::read_plan_file(args.str("galvatron-config-path"));
  }
  partitioner::GlobalPlanFlags f;
  f.pp_deg = static_cast<int>(args.i64("pp-deg"));
  f.global_tp_deg = static_cast<int>(args.i64("global-tp-deg"));
  f.global_tp_consec = static_cast<int>(args.i64("global-tp-consec"));
  f.sdp = static_cast<int>(args.i64("sdp") || args.i64("fsdp"));
  f.global_checkpoint = static_cast<int>(args.i64("global-checkpoint"));
  f.chunks = static_cast<int>(args.i64("chunks"));
  f.pipeline_type = args.str("pipeline-type");
  f.default_dp_type = args.str("default-dp-type");
  f.vocab_tp = static_cast<int>(args.i64("vocab-tp"));
  f.embed_sdp = static_cast<int>(args.i64("embed-sdp"));
  for (int v : {f.global_tp_consec, f.global_checkpoint, f.embed_sdp}) {
    if (v != 0 && v != 1) return ctx.usage("--global-tp-consec, --global-checkpoint and --embed-sdp take 0 or 1");
  }
  auto p = partitioner::plan_from_flags(f, num_layers);
  if (!p) return ctx.usage(p.status().message());
  return p;
}

}  // namespace gv::cli

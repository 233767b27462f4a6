#include "cli/search_report.h"

#include <cstdio>
#include <string>

namespace gv::cli {

using namespace gv::partitioner;

namespace {
std::string describe(const Strategy& s, const std::string& default_dp) {
  std::string d = "tp " + std::to_string(s.tp);
  if (s.tp > 1 && s.dp > 1) d += s.tp_consec == 0 ? " (dp consecutive)" : " (tp consecutive)";
  d += ", dp " + std::to_string(s.dp);
  if (s.dp > 1) d += s.fsdp == 1 ? " zero3" : " " + default_dp;
  if (s.is_cpt()) d += ", ckpt";
  if (s.is_sp()) d += ", ulysses";
  return d;
}
}  // namespace

void print_search_report(const ModelProfile& model, const HardwareProfile& hw, const SearchOptions& opt,
                         const SearchResult& r) {
  const CostInputs ci = make_cost_inputs(model, hw, r.effective);
  std::printf("Galvatron search: %d GPUs (%d x %d), %.0f GB per GPU, %d layers, %d candidate strategies, %d tasks\n",
              opt.world_size(), opt.num_nodes, opt.num_gpus_per_node, opt.memory_constraint_gb, model.total_layers(),
              r.num_candidate_strategies, r.tasks);
  std::printf("global batch %d, %d micro-batches (%s), pp %d, vocab tp %d, vsp %d, embed_sdp %d\n", r.bsz, r.chunks,
              r.effective.pipeline_type.c_str(), r.pp_deg, r.vtp, r.vsp, r.embed_sdp);
  std::printf("\n%-6s %-10s %-44s %-9s %12s\n", "stage", "layers", "strategy (Galvatron notation)", "count",
              "memory MB");
  for (int st = 0; st < r.pp_deg; ++st) {
    const StagePlan& sp = r.stages[st];
    int i = sp.first_layer;
    bool first = true;
    while (i < sp.first_layer + sp.num_layers) {
      int j = i;
      while (j + 1 < sp.first_layer + sp.num_layers && r.layers[j + 1] == r.layers[i]) ++j;
      std::string range = std::to_string(i) + "-" + std::to_string(j);
      std::string strat = form_strategy(r.layers[i]) + "  " + describe(r.layers[i], r.effective.default_dp_type);
      if (first) {
        std::printf("%-6d %-10s %-44s %-9d %12.0f\n", st, range.c_str(), strat.c_str(), j - i + 1, sp.memory_mb);
      } else {
        std::printf("%-6s %-10s %-44s %-9d\n", "", range.c_str(), strat.c_str(), j - i + 1);
      }
      first = false;
      i = j + 1;
    }
  }
  // Time breakdown of one micro-batch, per stage (the layers' shares from the cost model).
  std::printf("\n%-6s %12s %12s %12s %12s %14s %14s\n", "stage", "compute ms", "tp comm ms", "dp comm ms", "p2p ms",
              "stage ms/mb", "optimizer ms");
  const double mb = r.micro_batches > 0 ? static_cast<double>(r.bsz) / r.micro_batches : r.bsz;
  for (int st = 0; st < r.pp_deg; ++st) {
    const StagePlan& sp = r.stages[st];
    double comp = 0, tpc = 0, dpc = 0, p2p = 0, optim = 0;
    for (int l = sp.first_layer; l < sp.first_layer + sp.num_layers; ++l) {
      Strategy c = canonical_strategy(r.layers[l]);
      LayerTime t = layer_time(ci, 0, c, mb, false);
      const double L = model.layer_types[0].layer_num;
      comp += (t.fct + t.bct) / L;
      tpc += t.tp_time / L;
      dpc += (t.dp_message_mb * t.dc + t.fsdp_time + t.gather_time) / L;
      p2p += t.p2p_time / L;
      optim += t.optimizer_time / L;
    }
    std::printf("%-6d %12.2f %12.2f %12.2f %12.2f %14.2f %14.2f\n", st, comp, tpc, dpc, p2p, sp.compute_s * 1000,
                optim);
  }
  if (model.optimizer_ms_per_param_mb > 0) {
    std::printf("\noptimizer step: %.4f ms per MB of parameters (the profile's optimizer_ms_per_param_mb), once per "
                "iteration with the gradient sync\n", model.optimizer_ms_per_param_mb);
  }
  if (model.optimizer_ms_per_param_mb > 0) {
    std::printf("gradient reduce and optimizer step not overlapped: %.2f ms\n", r.reduce_s * 1000);
  } else {
    std::printf("\nun-overlapped gradient reduce: %.2f ms\n", r.reduce_s * 1000);
  }
  std::printf("predicted time per iteration: %.4f s\n", r.cost_s);
}

}  // namespace gv::cli

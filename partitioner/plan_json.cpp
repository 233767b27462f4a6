#include "partitioner/plan_json.h"

#include <cmath>

namespace gv::partitioner {
namespace {

template <typename F>
std::string join(const std::vector<Strategy>& v, F f) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(f(v[i]));
  }
  return s;
}

}  // namespace

nlohmann::ordered_json plan_to_json(const SearchResult& r) {
  nlohmann::ordered_json j;
  const auto& L = r.layers;
  j["pp_deg"] = L.empty() ? r.pp_deg : L[0].pp;
  j["tp_sizes_enc"] = join(L, [](const Strategy& s) { return s.tp; });
  j["tp_consecutive_flags"] = join(L, [](const Strategy& s) { return s.tp_consec == 0 ? 0 : 1; });
  j["dp_types_enc"] = join(L, [](const Strategy& s) { return s.fsdp == 1 ? 1 : 0; });
  j["use_sp"] = join(L, [](const Strategy& s) { return s.sp == 1 ? 1 : 0; });
  j["checkpoint"] = join(L, [](const Strategy& s) { return s.cpt == 1 ? 1 : 0; });
  j["global_bsz"] = r.bsz;
  j["chunks"] = r.chunks;
  std::string div;
  for (size_t i = 0; i < r.pp_division.size(); ++i) div += (i ? "," : "") + std::to_string(r.pp_division[i]);
  j["pp_division"] = div;
  j["pipeline_type"] = r.effective.pipeline_type;
  j["default_dp_type"] = r.effective.default_dp_type;
  j["vtp"] = r.vtp;
  j["vsp"] = r.vsp;
  j["embed_sdp"] = r.embed_sdp;
  j["predicted_samples_per_s"] = r.throughput;
  nlohmann::ordered_json mem = nlohmann::ordered_json::array();
  for (const auto& s : r.stages) mem.push_back(s.memory_mb);
  j["predicted_memory_mb"] = mem;
  return j;
}

std::string plan_to_text(const SearchResult& r) { return plan_to_json(r).dump(4) + "\n"; }

std::string plan_file_name(const std::string& model_name, const SearchOptions& a) {
  const int mb = static_cast<int>(a.memory_constraint_gb * 1024);
  std::string n = "galvatron_config_" + model_name + "_" + std::to_string(a.num_nodes) + "nodes_" +
                  std::to_string(a.num_gpus_per_node) + "gpus_per_node_" + std::to_string(mb / 1024) + "GB_" +
                  a.mixed_precision;
  if (a.settle_bsz > 0) n += "_bsz" + std::to_string(a.settle_bsz);
  std::string off;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!off.empty()) off += "_";
    off += name;
  };
  add(a.disable_dp, "dp");
  add(a.disable_tp, "tp");
  add(a.disable_pp, "pp");
  add(a.disable_sdp, "sdp");
  add(a.disable_ckpt, "ckpt");
  add(a.disable_tp_consec, "tpconsec");
  if (!off.empty()) n += "_[" + off + "_off]";
  return n + ".json";
}

}  // namespace gv::partitioner

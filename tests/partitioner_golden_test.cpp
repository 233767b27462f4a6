// Galvatron v2.4.0's reference search results reproduced on Galvatron's own profile files
// (../shared/galvatron-profiles/golden-public.json and mock/golden-tests.json).
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "partitioner/galvatron_files.h"
#include "partitioner/plan_json.h"
#include "partitioner/search.h"

namespace gv::partitioner {
namespace {

const std::string kProfiles = std::string(GV_SOURCE_DIR) + "/../shared/galvatron-profiles/";

nlohmann::json load(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

SearchOptions options_from(const nlohmann::json& a) {
  SearchOptions o;
  o.num_nodes = a["num_nodes"];
  o.num_gpus_per_node = a["num_gpus_per_node"];
  o.memory_constraint_gb = a["memory_constraint"];
  o.min_bsz = a["min_bsz"];
  o.max_bsz = a["max_bsz"];
  o.bsz_scale = a["bsz_scale"];
  o.recommend_min_bsz = a["recommend_min_bsz"];
  o.settle_bsz = a["settle_bsz"];
  o.settle_chunk = a["settle_chunk"];
  o.mixed_precision = a["mixed_precision"];
  o.pipeline_type = a["pipeline_type"];
  o.default_dp_type = a["default_dp_type"];
  o.sequence_parallel = a["sequence_parallel"];
  o.sp_space = a["sp_space"];
  o.search_space = a["search_space"];
  o.disable_dp = a["disable_dp"];
  o.disable_tp = a["disable_tp"];
  o.disable_vtp = a["disable_vtp"];
  o.disable_pp = a["disable_pp"];
  o.disable_sdp = a["disable_sdp"];
  o.disable_ckpt = a["disable_ckpt"];
  o.disable_tp_consec = a["disable_tp_consec"];
  o.max_tp_deg = a["max_tp_deg"];
  o.max_pp_deg = a["max_pp_deg"];
  o.global_memory_buffer = a["global_memory_buffer"];
  o.async_grad_reduce = a["async_grad_reduce"];
  o.fine_grained_mode = a["fine_grained_mode"];
  o.use_pipeline_costmodel = a["use_pipeline_costmodel"];
  o.costmodel_coe = a["costmodel_coe"];
  return o;
}

struct CaseRun {
  SearchResult result;
  Status status;
};

CaseRun run_case(const std::string& comp, const std::string& mem, const HardwareFiles& hwf, const nlohmann::json& args,
             LayerShape shape, const std::string& name) {
  SearchOptions o = options_from(args);
  ModelFileOptions mo;
  mo.model_name = name;
  mo.layers = {shape};
  mo.time_mode = *parse_profile_mode(args["time_profile_mode"]);
  mo.memory_mode = *parse_profile_mode(args["memory_profile_mode"]);
  mo.sequence_parallel = o.sequence_parallel;
  CaseRun run;
  auto model = load_galvatron_model_profile(comp, mem, mo);
  if (!model) {
    run.status = model.status();
    return run;
  }
  auto hw = load_galvatron_hardware_profile(hwf, o.world_size());
  if (!hw) {
    run.status = hw.status();
    return run;
  }
  auto r = search(*model, *hw, o);
  if (!r) {
    run.status = r.status();
    return run;
  }
  run.result = *r;
  return run;
}

void expect_config(const SearchResult& r, const nlohmann::json& cfg) {
  nlohmann::json got = nlohmann::json::parse(plan_to_json(r).dump());
  for (auto it = cfg.begin(); it != cfg.end(); ++it) {
    if (it.key() == "world_size") continue;
    EXPECT_EQ(got[it.key()], it.value()) << "key " << it.key();
  }
}

TEST(PartitionerGolden, PublicRecords) {
  nlohmann::json g = load(kProfiles + "golden-public.json");
  ASSERT_TRUE(g.is_array());
  for (const auto& rec : g) {
    SCOPED_TRACE(rec["id"].get<std::string>());
    const auto& a = rec["args"];
    HardwareFiles hwf{kProfiles + rec["profiles"]["allreduce"].get<std::string>(),
                      kProfiles + rec["profiles"]["p2p"].get<std::string>(),
                      kProfiles + rec["profiles"]["overlap"].get<std::string>(),
                      kProfiles + rec["profiles"]["sp_time"].get<std::string>()};
    CaseRun run = run_case(kProfiles + rec["profiles"]["computation"].get<std::string>(),
                       kProfiles + rec["profiles"]["memory"].get<std::string>(), hwf, a,
                       {a["hidden_size"], a["num_layers"], a["seq_length"]}, rec["model_name_for_file_lookup"]);
    ASSERT_TRUE(run.status.is_ok()) << run.status.message();
    const SearchResult& r = run.result;
    if (!rec["feasible"].get<bool>()) {
      EXPECT_FALSE(r.feasible);
      EXPECT_GT(r.least_memory_gb, a["memory_constraint"].get<double>());
      continue;
    }
    ASSERT_TRUE(r.feasible);
    const double want = rec["throughput"];
    EXPECT_NEAR(r.throughput, want, 1e-9 * want);
    EXPECT_NEAR(r.cost_s, rec["engine_report"]["min_cost_s"].get<double>(), 1e-9);
    expect_config(r, rec["config"]);
    std::vector<double> mem;
    for (const auto& s : r.stages) mem.push_back(s.memory_mb);
    EXPECT_EQ(nlohmann::json(mem), rec["engine_report"]["mem_cost_mb"]);
    EXPECT_EQ(plan_file_name(rec["model_name_for_file_lookup"], r.effective), rec["config_file_name"]);
    std::string notation;
    for (int st = 0, l = 0; st < r.pp_deg; ++st) {
      if (st) notation += " || ";
      for (int i = 0; i < r.pp_division[st]; ++i, ++l) notation += (i ? ", " : "") + form_strategy(r.layers[l]);
    }
    EXPECT_EQ(notation, rec["engine_report"]["layer_strategies"].get<std::string>());
  }
}

TEST(PartitionerGolden, MockTestsOfV240) {
  nlohmann::json g = load(kProfiles + "mock/golden-tests.json");
  int checked = 0;
  for (const auto& rec : g) {
    if (rec["name"].get<std::string>().rfind("v2.4.0", 0) != 0) continue;  // HEAD (3.x): a different engine
    SCOPED_TRACE(rec["name"].get<std::string>());
    const auto& f = rec["files"];
    HardwareFiles hwf{kProfiles + "mock/" + f["allreduce"].get<std::string>(), kProfiles + "mock/" + f["p2p"].get<std::string>(),
                      kProfiles + "mock/" + f["overlap"].get<std::string>(), kProfiles + "mock/" + f["sp_time"].get<std::string>()};
    const auto& lc = rec["model_layer_configs"][0];
    CaseRun run = run_case(kProfiles + "mock/" + f["computation"].get<std::string>(),
                       kProfiles + "mock/" + f["memory"].get<std::string>(), hwf, rec["args"],
                       {lc["hidden_size"], lc["layer_num"], lc["seq_len"]}, rec["model_name"]);
    ASSERT_TRUE(run.status.is_ok()) << run.status.message();
    ASSERT_TRUE(run.result.feasible);
    const double want = rec["expected_throughput"];
    EXPECT_NEAR(run.result.throughput, want, rec["tolerance"].get<double>());
    expect_config(run.result, rec["expected_config"]);
    std::string notation;
    for (size_t i = 0; i < run.result.layers.size(); ++i) notation += (i ? ", " : "") + form_strategy(run.result.layers[i]);
    EXPECT_EQ(notation, rec["expected_layer_strategies"].get<std::string>());
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

}  // namespace
}  // namespace gv::partitioner

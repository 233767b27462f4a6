// Our own profiles: memory from the IR (partitioner/ir_profile.h), `galvatron profile` files read back by Galvatron's
// readers, and `galvatron search` on a zoo model end to end. No timed assertions.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_fixture.h"
#include "hf_fixtures.h"
#include "importer/onnx_importer.h"
#include "models/zoo.h"
#include "partitioner/galvatron_files.h"
#include "partitioner/ir_profile.h"

namespace gv {
namespace {

using namespace gv::partitioner;

struct SpecBytes {
  std::vector<int64_t> layers;
  int64_t other = 0;
};
SpecBytes spec_bytes(const ModelConfig& c) {
  SpecBytes s;
  s.layers.assign(c.num_layers, 0);
  for (const auto& p : parameter_specs(c)) {
    if (p.place.kind == Placement::Kind::kLayer) s.layers[p.place.layer] += 4 * p.numel();
    else s.other += 4 * p.numel();
  }
  return s;
}

IrMemory measure_full(const ModelConfig& c, int64_t batch) {
  auto im = build_and_import(c, batch, c.seq_length, WeightInit::kNone);
  EXPECT_TRUE(im.has_value()) << im.status().message();
  auto m = measure_ir_memory(im->graph);
  EXPECT_TRUE(m.has_value()) << m.status().message();
  return *m;
}

TEST(PartitionerIrProfile, ParameterBytesPerLayerMatchTheZooSpecs) {
  for (const char* size : {"gpt-tiny", "llama-tiny", "bert-tiny"}) {
    SCOPED_TRACE(size);
    auto c = zoo_config("", size);
    ASSERT_TRUE(c.has_value());
    IrMemory m = measure_full(*c, 1);
    SpecBytes want = spec_bytes(*c);
    ASSERT_EQ(m.layers.size(), want.layers.size());
    for (size_t l = 0; l < want.layers.size(); ++l) EXPECT_EQ(m.layers[l].param_bytes, want.layers[l]) << "layer " << l;
    EXPECT_EQ(m.other_params.total(), want.other);
    // Without building at full size: the same numbers.
    auto z = measure_zoo_memory(*c, 1);
    ASSERT_TRUE(z.has_value()) << z.status().message();
    for (size_t l = 0; l < want.layers.size(); ++l) EXPECT_EQ(z->layers[l].param_bytes, want.layers[l]);
    EXPECT_EQ(z->other_params.total(), want.other);
    EXPECT_EQ(z->embed_params.total(), m.embed_params.total());
    EXPECT_EQ(z->head_params.total(), m.head_params.total());
    // ... and the same activations (1-layer build, vocabulary extrapolated linearly).
    EXPECT_EQ(z->layers[0].act.sharded, m.layers[0].act.sharded);
    EXPECT_EQ(z->layers[0].act.replicated, m.layers[0].act.replicated);
    EXPECT_EQ(z->layers[0].act_checkpoint, m.layers[0].act_checkpoint);
    EXPECT_EQ(z->embed_act.total(), m.embed_act.total());
    EXPECT_EQ(z->head_act.total(), m.head_act.total());
    // Megatron split: the attention / FFN interiors are sharded, the residual stream is not.
    EXPECT_GT(m.layers[0].act.sharded, 0);
    EXPECT_GT(m.layers[0].act.replicated, 0);
    EXPECT_GT(m.layers[0].act_checkpoint, 0);
    EXPECT_LT(m.layers[0].act_checkpoint, m.layers[0].act.total());
  }
}

TEST(PartitionerIrProfile, FixtureParameterBytesMatchItsConfig) {
  auto meta = gv::testing::read_meta("gpt2");
  auto c = config_from_hf_json(meta["config"].dump());
  ASSERT_TRUE(c.has_value()) << c.status().message();
  ImportOptions o;
  o.batch = 1;
  o.seq = 32;  // the fixture's sequence dimension is dynamic
  auto im = import_onnx(gv::testing::fixture_dir("gpt2") + "/model.onnx", o);
  ASSERT_TRUE(im.has_value()) << im.status().message();
  auto m = measure_ir_memory(im->graph);
  ASSERT_TRUE(m.has_value()) << m.status().message();
  SpecBytes want = spec_bytes(*c);
  ASSERT_EQ(m->layers.size(), want.layers.size());
  for (size_t l = 0; l < want.layers.size(); ++l) EXPECT_EQ(m->layers[l].param_bytes, want.layers[l]) << "layer " << l;
  EXPECT_EQ(m->other_params.total(), want.other);
  EXPECT_GT(m->layers[0].act.total(), 0);
}

TEST(PartitionerIrProfile, ActivationsGrowLinearlyWithBatch) {
  auto c = zoo_config("gpt", "gpt-tiny");
  ASSERT_TRUE(c.has_value());
  IrMemory a1 = measure_full(*c, 1), a2 = measure_full(*c, 2), a4 = measure_full(*c, 4);
  for (size_t l = 0; l < a1.layers.size(); ++l) {
    EXPECT_EQ(a2.layers[l].act.total(), 2 * a1.layers[l].act.total());
    EXPECT_EQ(a4.layers[l].act.total(), 4 * a1.layers[l].act.total());
    EXPECT_EQ(a4.layers[l].act.sharded, 4 * a1.layers[l].act.sharded);
    EXPECT_EQ(a4.layers[l].act_checkpoint, 4 * a1.layers[l].act_checkpoint);
    EXPECT_EQ(a4.layers[l].param_bytes, a1.layers[l].param_bytes);
  }
  EXPECT_EQ(a4.head_act.total() - a2.head_act.total(), 2 * (a2.head_act.total() - a1.head_act.total()));
  // Per sample in MB, divided by TP as Megatron splits it.
  ModelProfile p = model_profile_from_ir(a2, {}, false);
  const auto& lt = p.layer_types[0];
  EXPECT_NEAR(lt.act_per_sample_mb.at(1), a1.layers[0].act.total() / 1048576.0, 1e-12);
  EXPECT_LT(lt.act_per_sample_mb.at(2), lt.act_per_sample_mb.at(1));
  EXPECT_GT(lt.act_per_sample_mb.at(2), lt.act_per_sample_mb.at(1) / 2);
  EXPECT_NEAR(lt.parameter_size_mb, a1.layers[0].param_bytes / 1048576.0, 1e-12);
}

class PartitionerIrCli : public Cli {};

TEST_F(PartitionerIrCli, ProfileFilesLoadBackAndSearchGivesAPlan) {
  const std::string prof = path("prof"), hw = path("hw");
  CliResult r = run({"profile", "--model-type", "gpt", "--model-size", "gpt-tiny", "--output-dir", prof,
                     "--profile-batch-sizes", "1,2", "--repeats", "1"});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  r = run({"profile", "--hardware", "--output-dir", hw});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("nothing is measured"), std::string::npos) << r.out;

  ModelFileOptions mo;
  mo.model_name = "gpt-tiny";
  mo.layers = {LayerShape{64, 2, 32}};
  auto c = zoo_config("gpt", "gpt-tiny");
  ASSERT_TRUE(c.has_value());
  mo.layers[0].seq_len = static_cast<int>(c->seq_length);
  auto mp = load_galvatron_model_profile(prof + "/computation_profiling_bf16_gpt-tiny.json",
                                         prof + "/memory_profiling_bf16_gpt-tiny.json", mo);
  ASSERT_TRUE(mp.has_value()) << mp.status().message();
  EXPECT_GT(mp->layer_types[0].parameter_size_mb, 0);
  EXPECT_GT(mp->layer_types[0].forward.at(1), 0);
  mo.sequence_parallel = true;
  EXPECT_TRUE(load_galvatron_model_profile(prof + "/computation_profiling_bf16_gpt-tiny.json",
                                           prof + "/memory_profiling_bf16_gpt-tiny.json", mo).has_value());
  HardwareFiles hf{hw + "/allreduce_bandwidth_1nodes_8gpus_per_node.json", hw + "/p2p_bandwidth_1nodes_8gpus_per_node.json",
                   hw + "/overlap_coefficient.json", hw + "/sp_time_1nodes_8gpus_per_node.json"};
  auto hp = load_galvatron_hardware_profile(hf, 8);
  ASSERT_TRUE(hp.has_value()) << hp.status().message();

  const std::string plan = path("plan.json");
  r = run({"search", "--model-type", "gpt", "--model-size", "gpt-tiny", "--hardware-profiling-path", hw,
           "--time-profiling-path", prof, "--memory-constraint", "8", "--settle-bsz", "16", "--output-config-path", plan});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  auto j = nlohmann::json::parse(slurp(plan));
  for (const char* k : {"pp_deg", "pp_division", "tp_sizes_enc", "tp_consecutive_flags", "dp_types_enc", "use_sp",
                        "checkpoint", "global_bsz", "chunks", "pipeline_type", "default_dp_type", "vtp", "vsp",
                        "embed_sdp", "predicted_samples_per_s", "predicted_memory_mb"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_EQ(j["global_bsz"], 16);
  // Without a time profile: timed inline on the CPU, with a note.
  r = run({"search", "--model-type", "gpt", "--model-size", "gpt-tiny", "--hardware-profiling-path", hw,
           "--memory-constraint", "8", "--settle-bsz", "8", "--output-config-path", path("plan2.json")});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_NE(r.err.find("CPU"), std::string::npos) << r.err;
  // --grad-reduce-dtype (the training run's): bf16 is accepted, anything else named in the error.
  r = run({"search", "--model-type", "gpt", "--model-size", "gpt-tiny", "--hardware-profiling-path", hw,
           "--time-profiling-path", prof, "--memory-constraint", "8", "--settle-bsz", "16", "--default-dp-type",
           "zero2", "--grad-reduce-dtype", "bf16", "--output-config-path", path("plan3.json")});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  r = run({"search", "--model-type", "gpt", "--model-size", "gpt-tiny", "--hardware-profiling-path", hw,
           "--time-profiling-path", prof, "--memory-constraint", "8", "--settle-bsz", "16", "--grad-reduce-dtype",
           "fp16", "--output-config-path", path("plan4.json")});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--grad-reduce-dtype must be fp32 or bf16"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("plan4.json")));
}

TEST_F(PartitionerIrCli, SearchOnAnOnnxFixture) {
  const std::string hw = path("hw");
  ASSERT_EQ(run({"profile", "--hardware", "--output-dir", hw}).code, 0);
  CliResult r = run({"search", fixture("gpt2", "model.onnx"), "--seq-length", "32", "--hardware-profiling-path", hw, "--memory-constraint",
                     "8", "--settle-bsz", "8", "--output-config-path", path("plan.json")});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_TRUE(fs::exists(path("plan.json")));
}

}  // namespace
}  // namespace gv

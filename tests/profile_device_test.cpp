// `galvatron profile --device` / `search --device`: the computation profile timed on a chosen backend (the CPU here;
// in a build without CUDA, --device cuda is a clear error before anything is written), and time_forward itself on the
// CPU backend. No timed assertions beyond "positive".
#include <gtest/gtest.h>

#include <functional>

#include <nlohmann/json.hpp>

#include "cli_fixture.h"
#include "models/zoo.h"
#include "partitioner/profiler.h"
#include "runtime/backend.h"

namespace gv {
namespace {

using namespace gv::partitioner;

// gpt-tiny with one layer (4 heads), and a graph of it for `b` rows.
ModelConfig one_layer_gpt_tiny() {
  ModelConfig one = *zoo_config("gpt", "gpt-tiny");
  one.num_layers = 1;
  return one;
}
std::function<Expected<Graph>(int64_t)> graph_maker(const ModelConfig& one) {
  return [one](int64_t b) -> Expected<Graph> {
    GV_ASSIGN_OR_RETURN(ImportedModel im, build_and_import(one, b, one.seq_length, WeightInit::kNone));
    return std::move(im.graph);
  };
}

TEST(ProfileDevice, TimeForwardOnTheCpuBackendIncludesLossAndBackward) {
  const ModelConfig one = one_layer_gpt_tiny();
  auto make = graph_maker(one);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  auto t = time_forward(make, {1, 2}, 1, *cpu);
  ASSERT_TRUE(t.has_value()) << t.status().message();
  EXPECT_EQ(t->device, "cpu");
  EXPECT_EQ(t->num_layers, 1);
  EXPECT_EQ(t->seq, static_cast<int>(one.seq_length));
  for (int b : {1, 2}) {
    EXPECT_GT(t->layer_ms_per_sample.at(b), 0) << b;
    EXPECT_GT(t->other_ms_per_sample.at(b), 0) << b;
    EXPECT_GT(t->backward_ms_per_sample.at(b), 0) << b;
  }
  const std::string j = computation_profile_json(*t);
  auto parsed = nlohmann::json::parse(j);
  const std::string s = "_seq" + std::to_string(one.seq_length);
  EXPECT_TRUE(parsed.contains("layertype_0_bsz1" + s)) << j;
  EXPECT_TRUE(parsed.contains("layertype_other_bsz2" + s)) << j;
  EXPECT_NE(parsed.value("profile_note", "").find("cpu (fp32)"), std::string::npos) << j;
}

// Per-TP-degree timing: the layer as rank 0 of a TP group computes it (weights cut, the Copy / Reduce nodes made
// Identity, so no communicator is needed), written as tp{k}_ keys; a degree the heads do not divide is skipped with
// the pass's reason. gpt-tiny: 4 heads.
TEST(ProfileDevice, TimeForwardPerTensorParallelDegree) {
  const ModelConfig one = one_layer_gpt_tiny();
  auto make = graph_maker(one);
  auto whole = make(2);
  auto cut = make(2);
  ASSERT_TRUE(whole.has_value() && cut.has_value());
  ASSERT_TRUE(make_compute_only_tensor_parallel(*cut, 2).is_ok());
  int64_t n_whole = 0, n_cut = 0;
  for (ValueId p : whole->parameters()) n_whole += shape_numel(whole->value(p).shape);
  for (ValueId p : cut->parameters()) n_cut += shape_numel(cut->value(p).shape);
  EXPECT_LT(n_cut, n_whole);
  for (const Node& n : cut->nodes) {
    EXPECT_NE(n.op_type, "TensorParallelCopy") << n.name;
    EXPECT_NE(n.op_type, "TensorParallelReduce") << n.name;
  }
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  auto t = time_forward(make, {1, 2}, 1, *cpu, {2, 3});
  ASSERT_TRUE(t.has_value()) << t.status().message();
  ASSERT_EQ(t->tp_layer_ms_per_sample.count(2), 1u);
  for (int b : {1, 2}) EXPECT_GT(t->tp_layer_ms_per_sample.at(2).at(b), 0) << b;
  // The layers' backward, timed by blocks as the forward (the ratio `galvatron profile` prints).
  for (int b : {1, 2}) {
    ASSERT_EQ(t->backward_layer_ms_per_sample.count(b), 1u) << b;
    EXPECT_GT(t->backward_layer_ms_per_sample.at(b), 0) << b;
  }
  EXPECT_EQ(t->tp_layer_ms_per_sample.count(3), 0u);
  ASSERT_EQ(t->tp_skipped.count(3), 1u);
  EXPECT_NE(t->tp_skipped.at(3).find("not divisible"), std::string::npos) << t->tp_skipped.at(3);
  EXPECT_GT(t->optimizer_ms_per_param_mb, 0);
  auto j = nlohmann::json::parse(computation_profile_json(*t));
  const std::string s = "_seq" + std::to_string(one.seq_length);
  EXPECT_TRUE(j.contains("tp2_layertype_0_bsz1" + s)) << j.dump();
  EXPECT_TRUE(j.contains("tp2_layertype_0_bsz2" + s)) << j.dump();
  EXPECT_TRUE(j.contains("optimizer_ms_per_param_mb")) << j.dump();
}

class ProfileDeviceCli : public Cli {};

TEST_F(ProfileDeviceCli, CpuIsTheDefaultAndStillWritesTheComputationProfile) {
  const std::string prof = path("prof");
  for (bool explicit_cpu : {false, true}) {
    SCOPED_TRACE(explicit_cpu ? "--device cpu" : "default device");
    std::vector<std::string> a = {"profile", "--model-type", "gpt", "--model-size", "gpt-tiny", "--output-dir", prof,
                                  "--mixed-precision", "fp32", "--profile-batch-sizes", "1,2", "--repeats", "1"};
    if (explicit_cpu) a.insert(a.end(), {"--device", "cpu", "--precision", "fp32"});
    CliResult r = run(a);
    ASSERT_EQ(r.code, 0) << r.err << r.out;
    EXPECT_NE(r.out.find("forward on the CPU (fp32), batch 1"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("a layer's backward / forward"), std::string::npos) << r.out;
    auto j = nlohmann::json::parse(slurp(prof + "/computation_profiling_fp32_gpt-tiny.json"));
    int times = 0;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key().rfind("layertype_", 0) != 0) continue;
      EXPECT_GT(it->get<double>(), 0) << it.key();
      ++times;
    }
    EXPECT_EQ(times, 4);  // layer and other, two batch sizes
    EXPECT_TRUE(fs::exists(prof + "/memory_profiling_fp32_gpt-tiny.json"));
  }
  // tf32 / bf16 products need a GPU backend.
  CliResult r = run({"profile", "--model-type", "gpt", "--model-size", "gpt-tiny", "--output-dir", path("p2"),
                     "--precision", "tf32"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--device cuda"), std::string::npos) << r.err;
  r = run({"profile", "--model-type", "gpt", "--model-size", "gpt-tiny", "--output-dir", path("p2"),
           "--precision", "fp16"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--precision must be fp32, tf32 or bf16"), std::string::npos) << r.err;
  r = run({"profile", "--model-type", "gpt", "--model-size", "gpt-tiny", "--device", "gpu"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--device must be cpu or cuda"), std::string::npos) << r.err;
}

// A zoo ONNX file has its batch axis fixed: timing it at another batch size would divide batch 1's time by b, so the
// profile refuses (it once did exactly that for `train --auto`'s 1-layer file); batch 1 alone still works.
TEST_F(ProfileDeviceCli, AFixedBatchAxisCannotBeTimedAtOtherBatchSizes) {
  const std::string model = path("l1.onnx");
  CliResult r = run({"export-model", "gpt-tiny", "-o", model, "--batch", "1", "--no-weights"});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  r = run({"profile", model, "--output-dir", path("p"), "--profile-batch-sizes", "1,2", "--repeats", "1"});
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.err.find("batch axis fixed at 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("l1.onnx"), std::string::npos) << r.err;
  r = run({"profile", model, "--output-dir", path("p"), "--profile-batch-sizes", "1", "--repeats", "1"});
  EXPECT_EQ(r.code, 0) << r.err << r.out;
}

TEST_F(ProfileDeviceCli, CudaWithoutTheCudaBackendIsAClearError) {
  const std::string prof = path("prof");
  CliResult r = run({"profile", "--model-type", "gpt", "--model-size", "gpt-tiny", "--output-dir", prof, "--device",
                     "cuda", "--precision", "tf32", "--profile-batch-sizes", "1", "--repeats", "1"});
  if (cuda_backend_built()) {
    // A CUDA build: on a GPU it profiles; without one, make_backend's error.
    if (r.code == 0) {
      EXPECT_NE(r.out.find("forward on cuda (tf32), batch 1"), std::string::npos) << r.out;
      auto j = nlohmann::json::parse(slurp(prof + "/computation_profiling_bf16_gpt-tiny.json"));
      EXPECT_NE(j.value("profile_note", "").find("cuda (tf32)"), std::string::npos);
    } else {
      EXPECT_NE(r.err.find("no CUDA device"), std::string::npos) << r.err;
    }
    GTEST_SKIP() << "this build has the CUDA backend";
  }
  EXPECT_EQ(r.code, 1) << r.err << r.out;
  EXPECT_NE(r.err.find("built without CUDA"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--device cpu"), std::string::npos) << r.err;
  // Nothing written: the backend is made before the profiles.
  EXPECT_FALSE(fs::exists(prof + "/computation_profiling_bf16_gpt-tiny.json"));
  EXPECT_FALSE(fs::exists(prof + "/memory_profiling_bf16_gpt-tiny.json"));
  // --memory-only needs no backend.
  r = run({"profile", "--model-type", "gpt", "--model-size", "gpt-tiny", "--output-dir", prof, "--device", "cuda",
           "--memory-only"});
  EXPECT_EQ(r.code, 0) << r.err;

  // The search's inline timing (no --time-profiling-path) takes the same flags.
  const std::string hw = path("hw");
  ASSERT_EQ(run({"profile", "--hardware", "--output-dir", hw}).code, 0);
  std::vector<std::string> s = {"search", "--model-type", "gpt", "--model-size", "gpt-tiny",
                                "--hardware-profiling-path", hw, "--memory-constraint", "8", "--settle-bsz", "8",
                                "--output-config-path", path("plan.json")};
  std::vector<std::string> on_cuda = s;
  on_cuda.insert(on_cuda.end(), {"--device", "cuda"});
  r = run(on_cuda);
  EXPECT_EQ(r.code, 1) << r.err << r.out;
  EXPECT_NE(r.err.find("built without CUDA"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("plan.json")));
  s.insert(s.end(), {"--device", "cpu"});
  r = run(s);
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_NE(r.err.find("timing the forward on the CPU"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(path("plan.json")));
}

}  // namespace
}  // namespace gv

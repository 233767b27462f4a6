// Hybrid-parallel plans over MPI on CPUs: every strategy the partitioner can emit (DDP, ZeRO-2, ZeRO-3, tensor
// parallelism, GPipe and 1F1B pipelines, mixed per-layer plans, a searched plan) trains the gpt2 and llama fixtures and
// a 4-layer zoo GPT for ten steps with the single-process run's losses and final weights (tests/parallel_equivalence.h).
// Each test runs `galvatron train --devices N` (mpirun --oversubscribe -np N) against a single-process reference that
// uses the same micro-batches (--grad-accum = the plan's chunks).
//
// AdamW runs with eps 1e-6 rather than 1e-8: Adam divides by |g|, so an element whose gradient is near zero within
// float rounding (which any change of summation order moves, e.g. half the rows per process) gets an update of
// either sign; with eps 1e-8 a handful of elements per model end up ~1.6e-5 apart after ten steps although every
// gradient agrees to rounding. eps 1e-6 keeps those elements' updates proportional to their gradients while leaving
// the others' (|g| ~ 1e-4) unchanged, so the comparison tests the plan, not Adam's sign flips.
#include <fstream>

#include "runtime/communicator.h"
#include "tests/parallel_equivalence.h"

namespace gv {
namespace {

constexpr int kSteps = 10;

struct Model {
  std::string name;
  std::vector<std::string> args;  // model and data
};

Model fixture_model(const std::string& name) {
  return {name, {fixture(name, "model.onnx"), "--data", fixture(name, "samples.safetensors")}};
}

Model zoo_gpt() {
  return {"zoo-gpt", {"--model-type", "gpt", "--hidden-size", "64", "--num-layers", "4", "--num-heads", "4",
                      "--vocab-size", "256", "--seq-length", "32", "--data", fixture("gpt2", "samples.safetensors")}};
}

class ParallelPlans : public MpiCli {
 protected:
  std::vector<std::string> train_args(const Model& m, const std::string& tag) const {
    std::vector<std::string> a = {"train"};
    a.insert(a.end(), m.args.begin(), m.args.end());
    for (const std::string& s : {std::string("--batch-size"), std::to_string(batch_), std::string("--steps"),
                                 std::to_string(kSteps), std::string("--optimizer"), std::string("adamw"),
                                 std::string("--lr"), std::string("1e-3"), std::string("--eps"),
                                 std::string("1e-6"), std::string("--quiet"),
                                 std::string("--device"), std::string("cpu"), std::string("--metrics"),
                                 path(tag + ".jsonl"), std::string("--checkpoint-dir"), path(tag)}) {
      a.push_back(s);
    }
    return a;
  }
  std::string final_ckpt(const std::string& tag) const {
    return path(tag + "/step-0000" + std::to_string(kSteps) + ".safetensors");
  }

  void reference(const Model& m) {
    auto a = train_args(m, "single");
    a.insert(a.end(), {"--grad-accum", std::to_string(chunks_)});
    auto r = run(a);
    ASSERT_EQ(r.code, 0) << r.err;
  }

  // Trains with the plan flags on `devices` processes and compares with the reference.
  void expect_plan(const Model& m, int devices, const std::string& tag, std::vector<std::string> plan) {
    SCOPED_TRACE(m.name + " on " + std::to_string(devices) + " processes: " + tag);
    auto a = train_args(m, tag);
    a.insert(a.end(), {"--devices", std::to_string(devices)});
    a.insert(a.end(), plan.begin(), plan.end());
    if (std::find(plan.begin(), plan.end(), "--galvatron-config-path") == plan.end() &&
        std::find(plan.begin(), plan.end(), "--chunks") == plan.end()) {
      a.insert(a.end(), {"--chunks", std::to_string(chunks_)});
    }
    auto r = run(a);
    ASSERT_EQ(r.code, 0) << r.err;
    expect_same_training(path("single.jsonl"), path(tag + ".jsonl"), final_ckpt("single"), final_ckpt(tag), kSteps);
  }

  int batch_ = 4;   // rows per micro-batch (all processes together)
  int chunks_ = 4;  // micro-batches per step

  // --auto on `devices` processes (the search sees this run's batch and micro-batches).
  void expect_auto(const Model& m, int devices) {
    SCOPED_TRACE(m.name + " --auto on " + std::to_string(devices) + " processes");
    auto a = train_args(m, "auto");
    a.insert(a.end(), {"--devices", std::to_string(devices), "--auto", "--grad-accum", std::to_string(chunks_)});
    auto r = run(a);
    ASSERT_EQ(r.code, 0) << r.err;
    expect_same_training(path("single.jsonl"), path("auto.jsonl"), final_ckpt("single"), final_ckpt("auto"), kSteps);
  }

  std::string write_plan(const std::string& name, const nlohmann::json& j) const {
    std::ofstream(path(name)) << j.dump(2);
    return path(name);
  }
};

// --- two processes -------------------------------------------------------------------------------------------------

TEST_F(ParallelPlans, Gpt2OnTwoProcesses) {
  Model m = fixture_model("gpt2");
  reference(m);
  expect_plan(m, 2, "ddp", {"--default-dp-type", "ddp"});
  expect_plan(m, 2, "zero2", {"--default-dp-type", "zero2"});
  expect_plan(m, 2, "zero3", {"--sdp", "1"});
  expect_plan(m, 2, "tp2", {"--global-tp-deg", "2"});
  expect_plan(m, 2, "pp2-gpipe", {"--pp-deg", "2", "--pipeline-type", "gpipe"});
  expect_plan(m, 2, "pp2-1f1b", {"--pp-deg", "2", "--pipeline-type", "pipedream_flush"});
}

TEST_F(ParallelPlans, LlamaOnTwoProcesses) {
  Model m = fixture_model("llama");
  reference(m);
  expect_plan(m, 2, "ddp", {"--default-dp-type", "ddp"});
  expect_plan(m, 2, "zero2", {"--default-dp-type", "zero2"});
  expect_plan(m, 2, "zero3", {"--fsdp", "1"});
  expect_plan(m, 2, "tp2", {"--global-tp-deg", "2"});
  expect_plan(m, 2, "pp2-gpipe", {"--pp-deg", "2", "--pipeline-type", "gpipe"});
  expect_plan(m, 2, "pp2-1f1b", {"--pp-deg", "2", "--pipeline-type", "pipedream_flush"});
  expect_plan(m, 2, "vtp2", {"--vocab-tp", "2"});
}

TEST_F(ParallelPlans, ZooGptOnTwoProcesses) {
  Model m = zoo_gpt();
  reference(m);
  expect_plan(m, 2, "ddp", {"--default-dp-type", "ddp"});
  expect_plan(m, 2, "zero2", {"--default-dp-type", "zero2"});
  expect_plan(m, 2, "zero3", {"--sdp", "1", "--global-checkpoint", "1"});
  expect_plan(m, 2, "tp2", {"--global-tp-deg", "2"});
  expect_plan(m, 2, "pp2-1f1b", {"--pp-deg", "2", "--pipeline-type", "pipedream_flush"});
}

// --- four processes ------------------------------------------------------------------------------------------------

TEST_F(ParallelPlans, Gpt2OnFourProcesses) {
  Model m = fixture_model("gpt2");
  reference(m);
  expect_plan(m, 4, "tp4", {"--global-tp-deg", "4"});
  expect_plan(m, 4, "pp2-tp2-1f1b", {"--pp-deg", "2", "--global-tp-deg", "2", "--pipeline-type", "pipedream_flush"});
  // Vocabulary parallelism: embedding and LM head (tied) cut over the vocabulary, vocab-parallel cross-entropy.
  expect_plan(m, 4, "vtp2-tp2", {"--vocab-tp", "2", "--global-tp-deg", "2"});
  expect_plan(m, 4, "vtp4-zero3", {"--vocab-tp", "4", "--sdp", "1", "--embed-sdp", "1"});
  // Mixed per-layer plan: layer 0 TP 2 on strided ranks and checkpointed, layer 1 ZeRO-3 over all four.
  nlohmann::json mixed = {{"pp_deg", 1}, {"tp_sizes_enc", "2,1"}, {"tp_consecutive_flags", "0,1"},
                          {"dp_types_enc", "0,1"}, {"use_sp", "0,0"}, {"checkpoint", "1,0"}, {"global_bsz", 16},
                          {"chunks", 4}, {"pp_division", "2"}, {"pipeline_type", "gpipe"},
                          {"default_dp_type", "zero2"}, {"vtp", 1}, {"vsp", 0}, {"embed_sdp", 0}};
  expect_plan(m, 4, "mixed", {"--galvatron-config-path", write_plan("mixed.json", mixed)});
  // Layouts whose batch slices agree on some ranks only (vocab TP on consecutive ranks, layer TP strided): every rank
  // must still join the redistribution (this deadlocked once).
  nlohmann::json slices = {{"pp_deg", 1}, {"tp_sizes_enc", "2,1"}, {"tp_consecutive_flags", "0,1"},
                           {"dp_types_enc", "0,1"}, {"checkpoint", "1,0"}, {"global_bsz", 16}, {"chunks", 4},
                           {"pipeline_type", "gpipe"}, {"default_dp_type", "zero2"}, {"vtp", 2}};
  expect_plan(m, 4, "mixed-vtp", {"--galvatron-config-path", write_plan("mixed-vtp.json", slices)});
}

TEST_F(ParallelPlans, LlamaOnFourProcesses) {
  Model m = fixture_model("llama");
  reference(m);
  expect_plan(m, 4, "dp2-tp2", {"--global-tp-deg", "2", "--default-dp-type", "zero2"});
  nlohmann::json mixed = {{"pp_deg", 1}, {"tp_sizes_enc", "1,2"}, {"tp_consecutive_flags", "1,1"},
                          {"dp_types_enc", "1,0"}, {"checkpoint", "0,1"}, {"global_bsz", 16}, {"chunks", 4},
                          {"pipeline_type", "gpipe"}, {"default_dp_type", "ddp"}};
  expect_plan(m, 4, "mixed", {"--galvatron-config-path", write_plan("mixed.json", mixed)});
  expect_auto(m, 4);
}

TEST_F(ParallelPlans, ZooGptOnFourProcesses) {
  Model m = zoo_gpt();
  reference(m);
  expect_plan(m, 4, "tp4", {"--global-tp-deg", "4"});
  expect_plan(m, 4, "pp4-gpipe", {"--pp-deg", "4", "--pipeline-type", "gpipe"});
  expect_plan(m, 4, "pp4-1f1b", {"--pp-deg", "4", "--pipeline-type", "pipedream_flush"});
  expect_plan(m, 4, "pp2-vtp2", {"--pp-deg", "2", "--vocab-tp", "2", "--pipeline-type", "pipedream_flush"});
  expect_auto(m, 4);
  // Two stages of two ranks; different TP per layer, ZeRO-3 and checkpointed layers.
  nlohmann::json mixed = {{"pp_deg", 2}, {"tp_sizes_enc", "2,1,1,2"}, {"tp_consecutive_flags", "1,1,0,1"},
                          {"dp_types_enc", "0,1,0,0"}, {"checkpoint", "0,0,1,1"}, {"global_bsz", 16},
                          {"chunks", 4}, {"pp_division", "2,2"}, {"pipeline_type", "pipedream_flush"},
                          {"default_dp_type", "zero2"}};
  expect_plan(m, 4, "mixed", {"--galvatron-config-path", write_plan("mixed.json", mixed)});
}

// --- eight processes -----------------------------------------------------------------------------------------------

TEST_F(ParallelPlans, ZooGptOnEightProcesses) {
  Model m = zoo_gpt();
  reference(m);
  expect_plan(m, 8, "pp2-tp2-dp2", {"--pp-deg", "2", "--global-tp-deg", "2", "--pipeline-type", "pipedream_flush",
                                    "--default-dp-type", "zero2"});
}

TEST_F(ParallelPlans, Gpt2OnEightProcesses) {
  Model m = fixture_model("gpt2");
  // The embedding and head (vtp 1) are data parallel over all eight processes: eight rows per micro-batch.
  batch_ = 8;
  chunks_ = 2;
  reference(m);
  expect_plan(m, 8, "tp4-dp2-zero3", {"--global-tp-deg", "4", "--sdp", "1", "--global-tp-consec", "0"});
  // The plan `galvatron search` picks for 8 devices (Galvatron's shipped 8-GPU hardware profiles).
  auto r = run({"search", fixture("gpt2", "model.onnx"), "--seq-length", "32", "--num-gpus-per-node", "8",
                "--settle-bsz", "16", "--settle-chunk", std::to_string(chunks_), "--disable-vtp", "1",
                "--memory-constraint", "8", "--hardware-profiling-path",
                std::string(GV_FIXTURES_DIR) + "/../../galvatron-profiles/hardware", "--output-config-path",
                path("searched.json")});
  ASSERT_EQ(r.code, 0) << r.err;
  expect_plan(m, 8, "searched", {"--galvatron-config-path", path("searched.json")});
}

// Checkpoints hold whole tensors whatever the plan: five steps with tensor parallelism, five more resumed as a
// 1F1B pipeline with ZeRO-2, equal the single-process run's ten.
TEST_F(ParallelPlans, ResumeUnderADifferentPlan) {
  Model m = fixture_model("gpt2");
  reference(m);
  auto a = train_args(m, "resumed");
  a[std::find(a.begin(), a.end(), "--steps") - a.begin() + 1] = "5";
  a.insert(a.end(), {"--devices", "2", "--global-tp-deg", "2", "--chunks", std::to_string(chunks_)});
  auto r = run(a);
  ASSERT_EQ(r.code, 0) << r.err;
  auto b = train_args(m, "resumed");
  b.insert(b.end(), {"--devices", "2", "--pp-deg", "2", "--pipeline-type", "pipedream_flush", "--default-dp-type",
                     "zero2", "--chunks", std::to_string(chunks_), "--resume", path("resumed")});
  r = run(b);
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_training(path("single.jsonl"), path("resumed.jsonl"), final_ckpt("single"), final_ckpt("resumed"),
                       kSteps);
}

// --auto: the search picks the plan for four processes (memory, batch and micro-batches of this run) and the run
// trains with it.
TEST_F(ParallelPlans, AutoSearchesThePlanThenTrains) {
  Model m = fixture_model("gpt2");
  reference(m);
  expect_auto(m, 4);
}

TEST_F(ParallelPlans, ImpossiblePlansAreClearErrors) {
  Model m = fixture_model("llama");
  // Two key/value heads cannot be split four ways.
  auto a = train_args(m, "tp4");
  a.insert(a.end(), {"--devices", "4", "--global-tp-deg", "4"});
  auto r = run(a);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("head"), std::string::npos) << r.err;
  // A plan file that is not a Galvatron plan, one for another model, and a missing file.
  std::ofstream(path("bad.json")) << "{\"tp_sizes_enc\": \"1,1\"}";
  a = train_args(m, "bad");
  a.insert(a.end(), {"--devices", "2", "--galvatron-config-path", path("bad.json")});
  r = run(a);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("missing key 'pp_deg'"), std::string::npos) << r.err;
  std::ofstream(path("other.json")) << "{\"pp_deg\": 1, \"tp_sizes_enc\": \"1,1,1,1\"}";
  a = train_args(m, "other");
  a.insert(a.end(), {"--devices", "2", "--galvatron-config-path", path("other.json")});
  r = run(a);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("the plan is for 4 layers, the model has 2"), std::string::npos) << r.err;
  a = train_args(m, "missing");
  a.insert(a.end(), {"--devices", "2", "--galvatron-config-path", path("nowhere.json")});
  r = run(a);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("cannot open"), std::string::npos) << r.err;
  // Three pipeline stages of two layers.
  a = train_args(m, "pp3");
  a.insert(a.end(), {"--devices", "3", "--pp-deg", "3"});
  r = run(a);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--pp-deg 3"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace gv

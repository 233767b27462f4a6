// `galvatron train` end to end: resume equals an uninterrupted run bit for bit, --export round-trips through
// `galvatron run`, --save-grads and --metrics write what they promise, bad data gives one clear line.
#include <nlohmann/json.hpp>

#include "importer/onnx_importer.h"
#include "runtime/executor.h"
#include "runtime/safetensors.h"
#include "tests/cli_fixture.h"

namespace gv {
namespace {

class TrainCli : public Cli {
 protected:
  std::vector<std::string> base(const std::string& fx) const {
    return {"train", fixture(fx, "model.onnx"), "--data", fixture(fx, "samples.safetensors"), "--batch-size", "2",
            "--quiet"};
  }
  static std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
  std::vector<nlohmann::json> metrics(const std::string& file) const {
    std::vector<nlohmann::json> out;
    for (const auto& line : lines_of(slurp(path(file)))) out.push_back(nlohmann::json::parse(line));
    return out;
  }
};

TEST_F(TrainCli, ResumeEqualsUninterruptedRunBitForBit) {
  auto r = run(plus(base("gpt2"), {"--steps", "10", "--metrics", path("straight.jsonl"), "--checkpoint-dir", path("a")}));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(plus(base("gpt2"), {"--steps", "5", "--metrics", path("resumed.jsonl"), "--checkpoint-dir", path("b")}));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(plus(base("gpt2"), {"--steps", "10", "--metrics", path("resumed.jsonl"), "--checkpoint-dir", path("b"),
                              "--resume", path("b")}));
  ASSERT_EQ(r.code, 0) << r.err;
  auto a = metrics("straight.jsonl"), b = metrics("resumed.jsonl");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()) << "step " << i + 1;
  }
  auto wa = read_safetensors(path("a/step-000010.safetensors"));
  auto wb = read_safetensors(path("b/step-000010.safetensors"));
  ASSERT_TRUE(wa.has_value() && wb.has_value());
  ASSERT_EQ(wa->size(), wb->size());
  for (const auto& [name, t] : *wa) {
    ASSERT_TRUE(wb->count(name)) << name;
    ASSERT_EQ(t.nbytes(), wb->at(name).nbytes()) << name;
    EXPECT_EQ(std::memcmp(t.data(), wb->at(name).data(), t.nbytes()), 0) << name << " differs after resume";
  }
}

TEST_F(TrainCli, ExportRoundTripsThroughRun) {
  auto r = run(plus(base("llama"), {"--steps", "3", "--export", path("trained.onnx"), "--checkpoint-dir", path("c")}));
  ASSERT_EQ(r.code, 0) << r.err;
  // The exported model's weights are the checkpoint's, bit for bit.
  auto ckpt = read_safetensors(path("c/step-000003.safetensors"));
  ASSERT_TRUE(ckpt.has_value());
  // `galvatron run` on the exported model and on the original differ (training changed the weights) ...
  r = run({"run", path("trained.onnx"), "--feeds", fixture("llama", "reference.safetensors"), "--out", path("t.safetensors")});
  ASSERT_EQ(r.code, 0) << r.err;
  auto trained = read_safetensors(path("t.safetensors"));
  ASSERT_TRUE(trained.has_value());
  const Tensor& lt = trained->at("logits");
  const Tensor l0 = read_safetensors(fixture("llama", "reference.safetensors"))->at("logits");
  double diff = 0;
  for (int64_t i = 0; i < lt.numel(); ++i) diff = std::max(diff, std::fabs(double(lt.data_as<float>()[i]) - l0.data_as<float>()[i]));
  EXPECT_GT(diff, 1e-3);
  // ... and the exported model is the trained model: its logits equal a forward pass of the original graph with the
  // checkpoint's weights loaded.
  ImportOptions io;
  io.batch = 2;
  io.seq = 32;
  auto model = import_onnx(fixture("llama", "model.onnx"), io);
  ASSERT_TRUE(model.has_value()) << model.status().message();
  auto backend = make_cpu_backend();
  auto ex = Executor::create(model->graph, *backend);
  ASSERT_TRUE(ex.has_value()) << ex.status().message();
  int loaded = 0;
  for (ValueId p : model->graph.parameters()) {
    const std::string& name = model->graph.value(p).name;
    ASSERT_TRUE(ckpt->count(name)) << "checkpoint lacks " << name;
    ASSERT_TRUE((*ex)->set_value(p, ckpt->at(name)).is_ok());
    ++loaded;
  }
  EXPECT_GT(loaded, 10);
  auto feeds = read_safetensors(fixture("llama", "reference.safetensors"));
  ASSERT_TRUE((*ex)->set_inputs(*feeds).is_ok());
  ASSERT_TRUE((*ex)->run().is_ok());
  auto ref_logits = (*ex)->fetch(model->graph.outputs[0]);
  ASSERT_TRUE(ref_logits.has_value());
  ASSERT_EQ(ref_logits->numel(), lt.numel());
  double worst = 0;
  for (int64_t i = 0; i < lt.numel(); ++i) {
    worst = std::max(worst, std::fabs(double(lt.data_as<float>()[i]) - ref_logits->data_as<float>()[i]));
  }
  EXPECT_LE(worst, 1e-6) << "the exported model's logits differ from the trained weights' forward pass";
}

TEST_F(TrainCli, SaveGradsAndMetricsFields) {
  auto r = run(plus(base("gpt2"), {"--steps", "2", "--save-grads", path("g.safetensors"), "--metrics", path("m.jsonl")}));
  ASSERT_EQ(r.code, 0) << r.err;
  auto g = read_safetensors(path("g.safetensors"));
  ASSERT_TRUE(g.has_value());
  EXPECT_TRUE(g->count("transformer.h.0.attn.c_attn.weight"));
  EXPECT_TRUE(g->count("lm_head.weight"));
  auto m = metrics("m.jsonl");
  ASSERT_EQ(m.size(), 2u);
  for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_bytes"}) EXPECT_TRUE(m[0].contains(k)) << k;
  EXPECT_GT(m[0]["peak_mem_bytes"].get<int64_t>(), 0);
}

TEST_F(TrainCli, ActivationCheckpointingAndAccumulationKeepTheLoss) {
  auto r = run(plus(base("gpt2"), {"--steps", "3", "--metrics", path("plain.jsonl")}));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(plus(base("gpt2"), {"--steps", "3", "--metrics", path("ckpt.jsonl"), "--checkpoint-layers", "all"}));
  ASSERT_EQ(r.code, 0) << r.err;
  auto a = metrics("plain.jsonl"), b = metrics("ckpt.jsonl");
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), 1e-6);
  EXPECT_LT(b[0]["peak_mem_bytes"].get<int64_t>(), a[0]["peak_mem_bytes"].get<int64_t>())
      << "recomputing every layer should lower the activation peak";
  // Two micro-batches of one row each average to the two-row batch's gradient (same rows, same mean loss here
  // because every row has the same number of counted labels).
  r = run({"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"), "--batch-size",
           "1", "--grad-accum", "2", "--steps", "3", "--metrics", path("accum.jsonl"), "--quiet"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto c = metrics("accum.jsonl");
  ASSERT_EQ(c.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(a[i]["loss"].get<double>(), c[i]["loss"].get<double>(), 2e-5);
}

TEST_F(TrainCli, BadDataIsOneClearLine) {
  auto before = listing();
  auto r = run({"train", fixture("gpt2", "model.onnx"), "--data", path("missing.bin"), "--seq-len", "32", "--quiet"});
  expect_failure(r, 1, {"missing.bin"}, before);
  { std::ofstream(path("empty.bin")); }
  before = listing();
  r = run({"train", fixture("gpt2", "model.onnx"), "--data", path("empty.bin"), "--seq-len", "32", "--quiet"});
  expect_failure(r, 1, {"empty.bin"}, before);
  before = listing();
  r = run({"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"), "--seq-len", "16",
           "--quiet"});
  expect_failure(r, 1, {"16"}, before);
  r = run({"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"), "--optimizer",
           "adam", "--quiet"});
  expect_failure(r, 2, {"--optimizer"}, before);
  r = run({"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"), "--resume",
           path("nowhere"), "--quiet"});
  expect_failure(r, 1, {"nowhere"}, before);
  // A zoo shape that cannot be built, under --devices: one error from the launching process, no worker started.
  r = run({"train", "--model-type", "llama", "--model-size", "llama-7b", "--hidden-size", "256", "--num-heads", "7",
           "--data", fixture("gpt2", "samples.safetensors"), "--devices", "4", "--quiet"});
  expect_failure(r, 2, {"num_heads 7"}, before);
  size_t lines = 0;
  for (size_t p = r.err.find("error:"); p != std::string::npos; p = r.err.find("error:", p + 1)) ++lines;
  EXPECT_EQ(lines, 1u) << r.err;
}

TEST_F(TrainCli, DemoRunsAndWritesItsFiles) {
  std::string cmd = "cd " + shell_quote(dir_.string()) + " && " + shell_quote(binary()) +
                    " train --steps 20 --run-name smoke --quiet > out.txt 2> err.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(path("err.txt"));
  std::string out = slurp(path("out.txt"));
  EXPECT_NE(out.find("held-out accuracy"), std::string::npos) << out;
  for (const char* f : {"metrics.jsonl", "model.onnx", "loss.svg", "summary.json", "checkpoint/latest"}) {
    EXPECT_TRUE(fs::exists(dir_ / "runs" / "smoke" / f)) << f;
  }
}

}  // namespace
}  // namespace gv

namespace gv {
namespace {

// --save-grads gives the gradient with respect to each ONNX initializer alone, also for an exporter's copy of a tied
// weight (bert_opset14's transposed decoder): the two add up to PyTorch's gradient of the one HF parameter.
TEST_F(TrainCli, SaveGradsKeepsTiedCopiesApart) {
  auto r = run(plus(base("bert_opset14"), {"--steps", "1", "--padding-idx", "0", "--save-grads", path("g.safetensors")}));
  ASSERT_EQ(r.code, 0) << r.err;
  auto g = read_safetensors(path("g.safetensors"));
  ASSERT_TRUE(g.has_value());
  auto meta = nlohmann::json::parse(slurp(fixture("bert_opset14", "meta.json")));
  std::string emb, copy;
  for (const auto& [name, info] : meta["initializers"].items()) {
    if (info["hf"] != "bert.embeddings.word_embeddings.weight") continue;
    (info["transposed"].get<bool>() ? copy : emb) = name;
  }
  ASSERT_FALSE(emb.empty());
  ASSERT_FALSE(copy.empty());
  ASSERT_TRUE(g->count(emb) && g->count(copy)) << "both initializers need a gradient";
  const Tensor& ge = g->at(emb);
  const Tensor& gc = g->at(copy);
  auto ref = read_safetensors(fixture("bert_opset14", "reference.safetensors"));
  Tensor want = ref->at("grad/bert.embeddings.word_embeddings.weight").cast(DType::kFloat64);
  const int64_t rows = ge.shape()[0], cols = ge.shape()[1];
  double num = 0, den = 0, copy_norm = 0;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      double sum = double(ge.data_as<float>()[i * cols + j]) + gc.data_as<float>()[j * rows + i];
      double w = want.data_as<double>()[i * cols + j];
      num += (sum - w) * (sum - w);
      den += w * w;
      copy_norm += double(gc.data_as<float>()[j * rows + i]) * gc.data_as<float>()[j * rows + i];
    }
  }
  EXPECT_LE(std::sqrt(num / den), 1e-4);
  EXPECT_GT(copy_norm, 1e-6) << "the LM-head copy's own gradient should not be zero";
}

}  // namespace
}  // namespace gv

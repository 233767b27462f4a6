// Training against PyTorch: for each HF fixture, the gradients of the first batch match PyTorch's float64 gradients,
// and ten AdamW steps reproduce PyTorch's loss trajectory (../shared/fixtures/README.md gives the conventions).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "importer/onnx_importer.h"
#include "runtime/safetensors.h"
#include "tests/hf_fixtures.h"
#include "runtime/trainer.h"

namespace gv {
namespace {

const std::vector<std::string>& kFixtures = testing::kHfFixtures;

using testing::fixture_dir;
using testing::read_meta;

Tensor transpose2d(const Tensor& t) {
  Tensor r(t.dtype(), {t.shape()[1], t.shape()[0]});
  const int64_t R = t.shape()[0], C = t.shape()[1];
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < C; ++j) r.data_as<float>()[j * R + i] = t.data_as<float>()[i * C + j];
  return r;
}

TensorMap batch_rows(const TensorMap& samples, int64_t step, int64_t batch) {
  TensorMap out;
  for (const auto& [name, t] : samples) {
    const int64_t cols = t.shape()[1];
    Tensor r(t.dtype(), {batch, cols});
    std::memcpy(r.data(), t.data_as<int64_t>() + step * batch * cols, r.nbytes());
    out[name] = r;
  }
  return out;
}

// `tied` receives the initializers the importer folded into the parameter they copy (TorchScript's transposed copy of
// a tied embedding): their gradient is already part of that parameter's.
std::unique_ptr<Trainer> make_trainer(const std::string& name, Backend& backend, std::set<std::string>* tied = nullptr) {
  ImportOptions io;
  io.batch = 2;
  io.seq = 32;
  auto model = import_onnx(fixture_dir(name) + "/model.onnx", io);
  EXPECT_TRUE(model.has_value()) << model.status().message();
  if (!model) return nullptr;
  if (tied) {
    for (const auto& kv : model->tied_parameters) tied->insert(kv.first);
  }
  TrainerConfig cfg;
  cfg.lr = 1e-3;
  // BERT's word embedding has padding_idx = pad_token_id in PyTorch (no gradient to that row from the lookup).
  const nlohmann::json pad = read_meta(name)["config"]["pad_token_id"];
  if (pad.is_number_integer()) cfg.graph.padding_idx = pad.get<int64_t>();
  cfg.graph.optimizer.weight_decay = 0.01;
  auto trainer = Trainer::create(std::move(model->graph), cfg, backend);
  EXPECT_TRUE(trainer.has_value()) << trainer.status().message();
  return trainer ? std::move(*trainer) : nullptr;
}

class FixtureTraining : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTraining, GradientsMatchPyTorch) {
  const std::string name = GetParam();
  auto backend = make_cpu_backend();
  std::set<std::string> tied;
  auto trainer = make_trainer(name, *backend, &tied);
  ASSERT_TRUE(trainer);
  auto ref = read_safetensors(fixture_dir(name) + "/reference.safetensors");
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  TensorMap batch = {{"input_ids", ref->at("input_ids")}, {"labels", ref->at("labels")}};
  double loss = 0;
  auto grads = trainer->compute_gradients(batch, &loss);
  ASSERT_TRUE(grads.has_value()) << grads.status().message();
  EXPECT_NEAR(loss, ref->at("loss").scalar_f64(0), 1e-5 * std::fabs(ref->at("loss").scalar_f64(0)));

  nlohmann::json meta = read_meta(name);
  // HF name -> sum of the ONNX initializers' gradients that hold it.
  std::map<std::string, Tensor> by_hf;
  for (const auto& [onnx_name, info] : meta["initializers"].items()) {
    if (tied.count(onnx_name)) continue;
    auto it = grads->find(onnx_name);
    ASSERT_NE(it, grads->end()) << "no gradient for parameter '" << onnx_name << "'";
    Tensor g = info["transposed"].get<bool>() ? transpose2d(it->second) : it->second;
    std::string hf = info["hf"];
    if (!by_hf.count(hf)) {
      by_hf[hf] = g.clone();
    } else {
      ASSERT_EQ(by_hf[hf].shape(), g.shape()) << hf;
      for (int64_t i = 0; i < g.numel(); ++i) by_hf[hf].data_as<float>()[i] += g.data_as<float>()[i];
    }
  }
  int compared = 0;
  for (const auto& [key, ref_grad] : *ref) {
    if (key.rfind("grad/", 0) != 0) continue;
    std::string hf = key.substr(5);
    bool in_onnx = by_hf.count(hf) != 0;
    bool absent = false;
    for (const auto& n : meta["hf_params_not_in_onnx"]) absent = absent || n == hf;
    if (absent) continue;
    ASSERT_TRUE(in_onnx) << "reference gradient " << hf << " has no ONNX parameter";
    const Tensor& ours = by_hf[hf];
    Tensor theirs = ref_grad.cast(DType::kFloat64);
    ASSERT_EQ(ours.numel(), theirs.numel()) << hf;
    double num = 0, den = 0;
    for (int64_t i = 0; i < ours.numel(); ++i) {
      double d = ours.data_as<float>()[i] - theirs.data_as<double>()[i];
      num += d * d;
      den += theirs.data_as<double>()[i] * theirs.data_as<double>()[i];
    }
    // A gradient that is zero in exact arithmetic (e.g. attention key biases, which softmax cancels) is compared
    // against an absolute floor instead: float32 rounding leaves ~1e-11 there, PyTorch's float64 ~1e-19.
    double rel = std::sqrt(num) / std::max(std::sqrt(den), 1e-6);
    EXPECT_LE(rel, 1e-4) << name << ": gradient of " << hf;
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

TEST_P(FixtureTraining, AdamWTrajectoryMatchesPyTorch) {
  const std::string name = GetParam();
  auto backend = make_cpu_backend();
  auto trainer = make_trainer(name, *backend);
  ASSERT_TRUE(trainer);
  auto samples = read_safetensors(fixture_dir(name) + "/samples.safetensors");
  ASSERT_TRUE(samples.has_value()) << samples.status().message();
  auto ref = read_safetensors(fixture_dir(name) + "/reference.safetensors");
  ASSERT_TRUE(ref.has_value());
  const Tensor& expected = ref->at("adamw_losses");
  for (int64_t s = 0; s < 10; ++s) {
    auto m = trainer->step({batch_rows(*samples, s, 2)});
    ASSERT_TRUE(m.has_value()) << m.status().message();
    EXPECT_NEAR(m->loss, expected.scalar_f64(s), 1e-4) << name << " step " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTraining, ::testing::ValuesIn(kFixtures));

}  // namespace
}  // namespace gv

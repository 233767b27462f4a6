// A zoo model at a tiny size, imported for CPU training tests: batch 2 x 16, HuggingFace initialisation (seed 3),
// with a random language-model batch of that shape.
#pragma once
#include <string>
#include <utility>

#include "models/zoo.h"
#include "runtime/trainer.h"
#include "tests/op_test_util.h"

namespace gv::testing {

struct TinyModel {
  ImportedModel im;
  TensorMap batch;
};

inline Expected<TinyModel> tiny_model(const std::string& name, uint64_t batch_seed = 5) {
  GV_ASSIGN_OR_RETURN(ModelConfig cfg, zoo_config("", name));
  GV_ASSIGN_OR_RETURN(ImportedModel im, build_and_import(cfg, 2, 16, WeightInit::kHuggingFace, 3));
  return TinyModel{std::move(im), random_lm_batch(cfg.vocab_size, 2, 16, batch_seed)};
}

}  // namespace gv::testing

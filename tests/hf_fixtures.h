// The HuggingFace fixtures (format: ../shared/fixtures/hf/README.md): names, folders and meta.json. Those of
// ../shared/fixtures/hf export HF's eager attention; the project's own tests/data/hf_sdpa (names with "_sdpa", made by
// scripts/make_sdpa_fixtures.py) export transformers' default attention (torch's scaled_dot_product_attention) through
// the dynamo exporter, as a user's export of a model built with transformers' defaults carries it.
#pragma once
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace gv::testing {

inline const std::vector<std::string> kHfFixtures = {"gpt2",       "gpt2_loss",    "llama",
                                                     "bert",       "bert_opset14", "gpt2_sdpa",
                                                     "llama_sdpa", "gpt2_sdpa_ts", "gpt2_sdpa_guard_ts"};

// GV_FIXTURES_DIR and GV_PROJECT_FIXTURES_DIR in the environment override the folders compiled in (copies of the
// fixtures on another machine).
inline std::string fixture_dir(const std::string& name) {
  const bool own = name.find("_sdpa") != std::string::npos;
  const char* env = std::getenv(own ? "GV_PROJECT_FIXTURES_DIR" : "GV_FIXTURES_DIR");
  return std::string(env && *env ? env : own ? GV_PROJECT_FIXTURES_DIR : GV_FIXTURES_DIR) + "/" + name;
}

inline nlohmann::json read_meta(const std::string& name) {
  std::ifstream f(fixture_dir(name) + "/meta.json");
  return nlohmann::json::parse(f);
}

}  // namespace gv::testing

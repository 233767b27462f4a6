// The HuggingFace fixtures of ../shared/fixtures/hf (see its README): names, folders and meta.json.
#pragma once
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace gv::testing {

inline const std::vector<std::string> kHfFixtures = {"gpt2", "gpt2_loss", "llama", "bert", "bert_opset14"};

// GV_FIXTURES_DIR in the environment overrides the folder compiled in (a copy of the fixtures on another machine).
inline std::string fixture_dir(const std::string& name) {
  const char* env = std::getenv("GV_FIXTURES_DIR");
  return std::string(env && *env ? env : GV_FIXTURES_DIR) + "/" + name;
}

inline nlohmann::json read_meta(const std::string& name) {
  std::ifstream f(fixture_dir(name) + "/meta.json");
  return nlohmann::json::parse(f);
}

}  // namespace gv::testing

// The HuggingFace fixtures of ../shared/fixtures/hf (see its README): names, folders and meta.json.
#pragma once
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace gv::testing {

inline const std::vector<std::string> kHfFixtures = {"gpt2", "gpt2_loss", "llama", "bert", "bert_opset14"};

inline std::string fixture_dir(const std::string& name) { return std::string(GV_FIXTURES_DIR) + "/" + name; }

inline nlohmann::json read_meta(const std::string& name) {
  std::ifstream f(fixture_dir(name) + "/meta.json");
  return nlohmann::json::parse(f);
}

}  // namespace gv::testing

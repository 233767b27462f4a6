// The plan JSON Galvatron's runtime reads (utils/config_utils.py strategy2config + search_engine.py save_results):
// per-layer lists as comma-separated strings, in Galvatron's key order, plus our predictions.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "partitioner/search.h"

namespace gv::partitioner {

nlohmann::ordered_json plan_to_json(const SearchResult& r);
// json.dump(config, indent=4) layout.
std::string plan_to_text(const SearchResult& r);
// galvatron_config_{model}_{N}nodes_{G}gpus_per_node_{M}GB_{prec}[_bsz{B}][_[{off}_off]].json
std::string plan_file_name(const std::string& model_name, const SearchOptions& effective);

}  // namespace gv::partitioner

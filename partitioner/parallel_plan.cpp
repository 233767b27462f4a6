#include "partitioner/parallel_plan.h"

#include <fstream>
#include <sstream>

namespace gv::partitioner {
namespace {

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// Galvatron writes per-layer lists as "1,2,2"; accept JSON arrays and a bare number too.
Expected<std::vector<int>> int_list(const nlohmann::json& j, const std::string& key, const std::string& source) {
  std::vector<int> out;
  const nlohmann::json& v = j.at(key);
  auto bad = [&] { return invalid_argument(source + ": '" + key + "' must be a comma-separated list of integers"); };
  if (v.is_number_integer()) return std::vector<int>{v.get<int>()};
  if (v.is_array()) {
    for (const auto& e : v) {
      if (!e.is_number_integer()) return bad();
      out.push_back(e.get<int>());
    }
    return out;
  }
  if (!v.is_string()) return bad();
  std::stringstream ss(v.get<std::string>());
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long x = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0') return bad();
    out.push_back(static_cast<int>(x));
  }
  return out;
}

Expected<int> int_key(const nlohmann::json& j, const std::string& key, int dflt, const std::string& source) {
  if (!j.contains(key)) return dflt;
  const auto& v = j.at(key);
  if (v.is_number_integer()) return v.get<int>();
  if (v.is_string()) {
    char* end = nullptr;
    long x = std::strtol(v.get<std::string>().c_str(), &end, 10);
    if (*end == '\0' && !v.get<std::string>().empty()) return static_cast<int>(x);
  }
  return invalid_argument(source + ": '" + key + "' must be an integer");
}

std::vector<int> even_division(int layers, int pp) {
  // Galvatron's pp_division_even: floor(L/pp) per stage, the remainder on the last stage.
  std::vector<int> d(pp, layers / pp);
  d.back() += layers % pp;
  return d;
}

}  // namespace

const char* dp_type_name(DpType t) {
  switch (t) {
    case DpType::kDdp: return "ddp";
    case DpType::kZero2: return "zero2";
    case DpType::kZero3: return "zero3";
  }
  return "?";
}

Expected<DpType> parse_dp_type(const std::string& s) {
  if (s == "ddp") return DpType::kDdp;
  if (s == "zero2") return DpType::kZero2;
  if (s == "zero3") return DpType::kZero3;
  return invalid_argument("default DP type must be ddp, zero2 or zero3, got '" + s + "'");
}

Expected<ParallelPlan> plan_from_flags(const GlobalPlanFlags& f, int num_layers) {
  ParallelPlan p;
  p.pp_deg = f.pp_deg;
  if (p.pp_deg < 1 || p.pp_deg > std::max(num_layers, 1)) {
    return invalid_argument("--pp-deg " + std::to_string(f.pp_deg) + ": must be between 1 and the number of layers (" +
                            std::to_string(num_layers) + ")");
  }
  p.tp_sizes.assign(num_layers, f.global_tp_deg);
  p.tp_consec.assign(num_layers, f.global_tp_consec ? 1 : 0);
  p.dp_types.assign(num_layers, f.sdp ? 1 : 0);
  p.checkpoint.assign(num_layers, f.global_checkpoint ? 1 : 0);
  p.pp_division = even_division(num_layers, p.pp_deg);
  p.chunks = f.chunks > 0 ? f.chunks : (p.pp_deg > 1 ? p.pp_deg : 1);
  p.pipeline_type = f.pipeline_type;
  GV_ASSIGN_OR_RETURN(p.default_dp_type, parse_dp_type(f.default_dp_type));
  p.vtp = f.vocab_tp;
  p.embed_sdp = f.embed_sdp;
  if (p.pipeline_type != "gpipe" && p.pipeline_type != "pipedream_flush") {
    return invalid_argument("--pipeline-type must be gpipe or pipedream_flush, got '" + p.pipeline_type + "'");
  }
  return p;
}

Expected<ParallelPlan> plan_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) return invalid_argument(source + ": a Galvatron strategy config must be a JSON object");
  for (const char* key : {"pp_deg", "tp_sizes_enc"}) {
    if (!j.contains(key)) {
      return invalid_argument(source + ": missing key '" + key + "' (is this a Galvatron strategy config, as written "
                              "by `galvatron search`?)");
    }
  }
  ParallelPlan p;
  GV_ASSIGN_OR_RETURN(p.pp_deg, int_key(j, "pp_deg", 1, source));
  GV_ASSIGN_OR_RETURN(p.tp_sizes, int_list(j, "tp_sizes_enc", source));
  const size_t L = p.tp_sizes.size();
  auto per_layer = [&](const char* key, int dflt, std::vector<int>* out) -> Status {
    if (!j.contains(key)) {
      out->assign(L, dflt);
      return Status::ok();
    }
    GV_ASSIGN_OR_RETURN(*out, int_list(j, key, source));
    if (out->size() != L) {
      return invalid_argument(source + ": '" + key + "' has " + std::to_string(out->size()) + " entries, '" +
                              "tp_sizes_enc' has " + std::to_string(L) + " (one per layer)");
    }
    return Status::ok();
  };
  GV_RETURN_IF_ERROR(per_layer("tp_consecutive_flags", 1, &p.tp_consec));
  GV_RETURN_IF_ERROR(per_layer("dp_types_enc", 0, &p.dp_types));
  GV_RETURN_IF_ERROR(per_layer("checkpoint", 0, &p.checkpoint));
  std::vector<int> sp;
  GV_RETURN_IF_ERROR(per_layer("use_sp", 0, &sp));
  for (int v : sp) {
    if (v) return unsupported(source + ": 'use_sp' (Ulysses sequence parallelism) is not supported; use 0");
  }
  if (j.contains("pp_division")) {
    GV_ASSIGN_OR_RETURN(p.pp_division, int_list(j, "pp_division", source));
  } else {
    p.pp_division = even_division(static_cast<int>(L), std::max(p.pp_deg, 1));
  }
  GV_ASSIGN_OR_RETURN(p.global_bsz, int_key(j, "global_bsz", 0, source));
  GV_ASSIGN_OR_RETURN(p.chunks, int_key(j, "chunks", 1, source));
  if (p.chunks < 1) p.chunks = 1;
  if (j.contains("pipeline_type")) p.pipeline_type = j.at("pipeline_type").get<std::string>();
  if (p.pipeline_type != "gpipe" && p.pipeline_type != "pipedream_flush") {
    return invalid_argument(source + ": 'pipeline_type' must be gpipe or pipedream_flush, got '" + p.pipeline_type +
                            "'");
  }
  if (j.contains("default_dp_type")) {
    auto t = parse_dp_type(j.at("default_dp_type").get<std::string>());
    if (!t) return t.status().with_context(source);
    p.default_dp_type = *t;
  }
  GV_ASSIGN_OR_RETURN(p.vtp, int_key(j, "vtp", 1, source));
  GV_ASSIGN_OR_RETURN(p.embed_sdp, int_key(j, "embed_sdp", 0, source));
  GV_ASSIGN_OR_RETURN(int vsp, int_key(j, "vsp", 0, source));
  if (vsp) return unsupported(source + ": 'vsp' (sequence-parallel embedding) is not supported; use 0");
  return p;
}

Expected<ParallelPlan> read_plan_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found("--galvatron-config-path " + path + ": cannot open the file");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    return corrupt(path + ": not valid JSON: " + e.what());
  }
  return plan_from_json(j, path);
}

nlohmann::ordered_json plan_to_json(const ParallelPlan& p) {
  nlohmann::ordered_json j;
  j["pp_deg"] = p.pp_deg;
  j["tp_sizes_enc"] = join(p.tp_sizes);
  j["tp_consecutive_flags"] = join(p.tp_consec);
  j["dp_types_enc"] = join(p.dp_types);
  j["use_sp"] = join(std::vector<int>(p.tp_sizes.size(), 0));
  j["checkpoint"] = join(p.checkpoint);
  j["global_bsz"] = p.global_bsz;
  j["chunks"] = p.chunks;
  j["pp_division"] = join(p.pp_division);
  j["pipeline_type"] = p.pipeline_type;
  j["default_dp_type"] = dp_type_name(p.default_dp_type);
  j["vtp"] = p.vtp;
  j["vsp"] = 0;
  j["embed_sdp"] = p.embed_sdp;
  return j;
}

std::string describe_plan(const ParallelPlan& p) {
  std::vector<int> z3, ck;
  for (size_t i = 0; i < p.dp_types.size(); ++i) {
    if (p.dp_types[i]) z3.push_back(static_cast<int>(i));
    if (p.checkpoint[i]) ck.push_back(static_cast<int>(i));
  }
  std::string s = "pp " + std::to_string(p.pp_deg);
  if (p.pp_deg > 1) s += " (" + join(p.pp_division) + ")";
  s += ", tp " + join(p.tp_sizes);
  s += ", " + std::string(dp_type_name(p.default_dp_type));
  if (!z3.empty()) s += ", zero3 layers " + join(z3);
  if (!ck.empty()) s += ", checkpoint layers " + join(ck);
  if (p.vtp > 1) s += ", vtp " + std::to_string(p.vtp);
  if (p.embed_sdp) s += ", embed_sdp";
  s += std::string(", ") + (p.pipeline_type == "gpipe" ? "GPipe" : "1F1B") + " over " + std::to_string(p.chunks) +
       " micro-batch" + (p.chunks == 1 ? "" : "es");
  return s;
}

Status validate_plan(const ParallelPlan& p, int num_layers, int world, int global_batch) {
  const auto L = static_cast<size_t>(num_layers);
  if (p.tp_sizes.size() != L) {
    return invalid_argument("the plan has " + std::to_string(p.tp_sizes.size()) + " layers, the model has " +
                            std::to_string(num_layers));
  }
  if (p.pp_deg < 1 || world % p.pp_deg != 0) {
    return invalid_argument("pipeline degree " + std::to_string(p.pp_deg) + " does not divide the " +
                            std::to_string(world) + " devices");
  }
  if (static_cast<int>(p.pp_division.size()) != p.pp_deg) {
    return invalid_argument("pp_division has " + std::to_string(p.pp_division.size()) + " entries for " +
                            std::to_string(p.pp_deg) + " pipeline stages");
  }
  int sum = 0;
  for (int d : p.pp_division) {
    if (d < 1) return invalid_argument("pp_division: every stage needs at least one layer");
    sum += d;
  }
  if (sum != num_layers) {
    return invalid_argument("pp_division adds up to " + std::to_string(sum) + " layers, the model has " +
                            std::to_string(num_layers));
  }
  const int n = world / p.pp_deg;
  const int chunks = std::max(p.chunks, 1);
  auto check_tp = [&](int tp, const std::string& what) -> Status {
    if (tp < 1 || n % tp != 0) {
      return invalid_argument(what + ": TP degree " + std::to_string(tp) + " does not divide the " +
                              std::to_string(n) + " devices of a pipeline stage");
    }
    const int dp = n / tp;
    if (global_batch % (dp * chunks) != 0) {
      return invalid_argument(what + ": the batch of " + std::to_string(global_batch) + " cannot be split into " +
                              std::to_string(chunks) + " micro-batches over " + std::to_string(dp) +
                              " data-parallel replicas (choose a batch divisible by " + std::to_string(dp * chunks) +
                              ")");
    }
    return Status::ok();
  };
  for (size_t i = 0; i < L; ++i) GV_RETURN_IF_ERROR(check_tp(p.tp_sizes[i], "layer " + std::to_string(i)));
  GV_RETURN_IF_ERROR(check_tp(p.vtp, "vocab TP (embedding and head)"));
  return Status::ok();
}

int RankLayout::stage_of_layer(int layer) const {
  for (size_t s = 0; s + 1 < first_layer.size(); ++s) {
    if (layer < first_layer[s + 1]) return static_cast<int>(s);
  }
  return static_cast<int>(first_layer.size()) - 2;
}

LayerLayout layer_layout(int world, int pp, int stage, int position, int tp, int consec) {
  LayerLayout l;
  const int n = world / pp, base = stage * n;
  l.stage = stage;
  l.tp = tp;
  l.dp = n / tp;
  if (consec) {
    l.tp_index = position % tp;
    l.dp_index = position / tp;
    for (int j = 0; j < tp; ++j) l.tp_group.push_back(base + l.dp_index * tp + j);
    for (int j = 0; j < l.dp; ++j) l.dp_group.push_back(base + j * tp + l.tp_index);
  } else {
    l.dp_index = position % l.dp;
    l.tp_index = position / l.dp;
    for (int j = 0; j < tp; ++j) l.tp_group.push_back(base + j * l.dp + l.dp_index);
    for (int j = 0; j < l.dp; ++j) l.dp_group.push_back(base + l.tp_index * l.dp + j);
  }
  for (int p = 0; p < n; ++p) l.stage_slices.push_back(consec ? p / tp : p % l.dp);
  return l;
}

Expected<RankLayout> rank_layout(const ParallelPlan& p, int num_layers, int world, int rank) {
  RankLayout r;
  r.rank = rank;
  r.world = world;
  r.stage_size = world / p.pp_deg;
  r.stage = rank / r.stage_size;
  r.position = rank % r.stage_size;
  r.first_layer.push_back(0);
  for (int d : p.pp_division) r.first_layer.push_back(r.first_layer.back() + d);
  for (int i = 0; i < num_layers; ++i) {
    LayerLayout l = layer_layout(world, p.pp_deg, r.stage_of_layer(i), r.position, p.tp_sizes[i], p.tp_consec[i]);
    l.zero3 = p.dp_types[i] == 1 || (p.dp_types[i] == 0 && p.default_dp_type == DpType::kZero3);
    l.checkpoint = p.checkpoint[i] == 1;
    r.layers.push_back(l);
  }
  r.embedding = layer_layout(world, p.pp_deg, 0, r.position, p.vtp, 1);
  r.embedding.zero3 = p.embed_sdp == 1;
  r.head = layer_layout(world, p.pp_deg, p.pp_deg - 1, r.position, p.vtp, 1);
  r.head.zero3 = p.embed_sdp == 1;
  return r;
}

}  // namespace gv::partitioner

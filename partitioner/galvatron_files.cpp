// Galvatron v2.4.0's profile files (search_engine.py get_profiled_model_configs / get_profiled_hardware_configs and
// utils/config_utils.py), read with the same key choices: "static" time mode takes the first matching key in file
// order, "batch" fits a line over batch sizes, "sequence" fits a quadratic over sequence lengths.
#include "partitioner/galvatron_files.h"

#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include <set>

#include <nlohmann/json.hpp>

namespace gv::partitioner {
namespace {

using Json = nlohmann::ordered_json;

Expected<Json> read_json(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) {
    return not_found(what + " file '" + path + "' cannot be opened; pass its path (or a folder holding it) with the " +
                     "matching --*-path flag");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return Json::parse(ss.str());
  } catch (const std::exception& e) {
    return corrupt(what + " file '" + path + "' is not valid JSON: " + e.what());
  }
}

bool is_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char ch : s)
    if (!std::isdigit(static_cast<unsigned char>(ch))) return false;
  return true;
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// The TP degrees k of galvatron's extension keys "tp{k}<suffix>..." (suffix: "_layertype_<i>_").
std::set<int> tp_degrees_in(const Json& time, const std::string& suffix) {
  std::set<int> out;
  for (auto it = time.begin(); it != time.end(); ++it) {
    const std::string& k = it.key();
    const size_t at = k.find(suffix);
    if (!starts_with(k, "tp") || at == std::string::npos || at <= 2 || !is_digits(k.substr(2, at - 2))) continue;
    out.insert(std::stoi(k.substr(2, at - 2)));
  }
  return out;
}

Status number_of(const Json& j, const std::string& file, const std::string& key, double* out) {
  if (!j.is_number()) return corrupt("'" + file + "': '" + key + "' is not a number");
  *out = j.get<double>();
  return Status::ok();
}

// {"1": a, "2": b, "checkpoint": c} -> int-keyed map (+ checkpoint).
Status read_tp_map(const Json& j, const std::string& file, const std::string& where, std::map<int, double>* out,
                   double* ckpt, bool* has_ckpt) {
  if (!j.is_object()) return corrupt("'" + file + "': '" + where + "' is not an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    double v = 0;
    GV_RETURN_IF_ERROR(number_of(it.value(), file, where + "." + it.key(), &v));
    if (is_digits(it.key())) {
      (*out)[std::stoi(it.key())] = v;
    } else if (it.key() == "checkpoint" && ckpt) {
      *ckpt = v;
      *has_ckpt = true;
    }
  }
  return Status::ok();
}

// A section keyed by sequence length: {"2048": {...}}.
Expected<const Json*> seq_entry(const Json& mem, const std::string& file, const std::string& section, int seq) {
  auto it = mem.find(section);
  if (it == mem.end()) {
    return corrupt("memory profile '" + file + "' has no section '" + section +
                   "' (without --sequence-parallel the search reads the sections without _sp; with it, the _sp ones)");
  }
  if (!it->is_object()) return corrupt("'" + file + "': '" + section + "' is not an object");
  auto jt = it->find(std::to_string(seq));
  if (jt == it->end()) {
    return corrupt("memory profile '" + file + "': section '" + section + "' has no entry for sequence length " +
                   std::to_string(seq) + " (Galvatron v2.4.0 needs the {\"<seq>\": {...}} layout)");
  }
  return &*jt;
}

Status read_other(const Json& j, const std::string& file, const std::string& where, OtherMemory* out) {
  if (!j.is_object() || !j.contains("model_states") || !j.contains("activation")) {
    return corrupt("'" + file + "': '" + where + "' needs 'model_states' and 'activation' maps per vocab-TP degree");
  }
  GV_RETURN_IF_ERROR(read_tp_map(j["model_states"], file, where + ".model_states", &out->model_states_mb, nullptr,
                                 nullptr));
  GV_RETURN_IF_ERROR(read_tp_map(j["activation"], file, where + ".activation", &out->activation_mb, nullptr, nullptr));
  return Status::ok();
}

// Solves the normal equations of a small least-squares problem in long double, with x scaled to [.., 1].
bool solve_ls(const std::vector<std::vector<long double>>& rows, const std::vector<double>& y,
              std::vector<long double>* beta) {
  const size_t n = rows.empty() ? 0 : rows[0].size();
  if (rows.size() < n || n == 0) return false;
  std::vector<std::vector<long double>> a(n, std::vector<long double>(n + 1, 0));
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t i = 0; i < n; ++i) {
      for (size_t k = 0; k < n; ++k) a[i][k] += rows[r][i] * rows[r][k];
      a[i][n] += rows[r][i] * static_cast<long double>(y[r]);
    }
  }
  for (size_t col = 0; col < n; ++col) {
    size_t piv = col;
    for (size_t r = col + 1; r < n; ++r)
      if (std::fabs(static_cast<double>(a[r][col])) > std::fabs(static_cast<double>(a[piv][col]))) piv = r;
    std::swap(a[col], a[piv]);
    if (a[col][col] == 0) return false;
    for (size_t r = 0; r < n; ++r) {
      if (r == col) continue;
      long double f = a[r][col] / a[col][col];
      for (size_t k = col; k <= n; ++k) a[r][k] -= f * a[col][k];
    }
  }
  beta->assign(n, 0);
  for (size_t i = 0; i < n; ++i) (*beta)[i] = a[i][n] / a[i][i];
  return true;
}

long double max_abs(const std::vector<double>& x) {
  long double s = 0;
  for (double v : x) s = std::max<long double>(s, std::fabs(v));
  return s == 0 ? 1 : s;
}

}  // namespace

bool fit_linear(const std::vector<double>& x, const std::vector<double>& y, double* m, double* c) {
  long double sc = max_abs(x);
  std::vector<std::vector<long double>> rows;
  for (double v : x) rows.push_back({v / sc, 1.0L});
  std::vector<long double> b;
  if (!solve_ls(rows, y, &b)) return false;
  *m = static_cast<double>(b[0] / sc);
  *c = static_cast<double>(b[1]);
  return true;
}

bool fit_quadratic(const std::vector<double>& x, const std::vector<double>& y, double* a, double* b, double* c) {
  long double sc = max_abs(x);
  std::vector<std::vector<long double>> rows;
  for (double v : x) rows.push_back({(v / sc) * (v / sc), v / sc, 1.0L});
  std::vector<long double> beta;
  if (!solve_ls(rows, y, &beta)) return false;
  *a = static_cast<double>(beta[0] / (sc * sc));
  *b = static_cast<double>(beta[1] / sc);
  *c = static_cast<double>(beta[2]);
  return true;
}

Expected<ProfileMode> parse_profile_mode(const std::string& s) {
  if (s == "static") return ProfileMode::kStatic;
  if (s == "batch") return ProfileMode::kBatch;
  if (s == "sequence") return ProfileMode::kSequence;
  return invalid_argument("profile mode '" + s + "' is not one of static, batch, sequence");
}

Expected<ModelProfile> load_galvatron_model_profile(const std::string& computation_path,
                                                    const std::string& memory_path, const ModelFileOptions& opt) {
  if (opt.layers.empty()) return invalid_argument("the model has no layer types");
  GV_ASSIGN_OR_RETURN(Json time, read_json(computation_path, "computation profile"));
  GV_ASSIGN_OR_RETURN(Json mem, read_json(memory_path, "memory profile"));
  if (!time.is_object()) return corrupt("computation profile '" + computation_path + "' is not a JSON object");
  if (!mem.is_object()) return corrupt("memory profile '" + memory_path + "' is not a JSON object");
  const size_t ntypes = opt.layers.size();

  ModelProfile p;
  p.name = opt.model_name;
  p.source = computation_path + ", " + memory_path;
  p.layer_types.resize(ntypes);
  for (size_t i = 0; i < ntypes; ++i) {
    p.layer_types[i].hidden_size = opt.layers[i].hidden_size;
    p.layer_types[i].layer_num = opt.layers[i].layer_num;
    p.layer_types[i].seq_length = opt.layers[i].seq_len;
  }
  const std::string& cf = computation_path;
  if (auto it = time.find("optimizer_ms_per_param_mb"); it != time.end() && it->is_number()) {
    p.optimizer_ms_per_param_mb = it->get<double>();
  }

  // ---- computation ----
  if (opt.time_mode == ProfileMode::kStatic) {
    // G24 appends every matching key and uses entry [i]: the first key in file order for one layer type.
    std::vector<double> layer_list, other_list;
    for (size_t i = 0; i < ntypes; ++i) {
      const std::string pre = "layertype_" + std::to_string(i) + "_";
      for (auto it = time.begin(); it != time.end(); ++it) {
        if (!it->is_number()) continue;
        if (starts_with(it.key(), pre)) layer_list.push_back(it->get<double>());
        if (starts_with(it.key(), "layertype_other_")) other_list.push_back(it->get<double>());
      }
    }
    if (layer_list.size() < ntypes) {
      return corrupt("computation profile '" + cf + "' has no 'layertype_<i>_...' forward time for every layer type");
    }
    if (other_list.empty()) return corrupt("computation profile '" + cf + "' has no 'layertype_other_...' time");
    for (size_t i = 0; i < ntypes; ++i) p.layer_types[i].forward = TimeFn{false, layer_list[i], 0, 0};
    p.other_forward = TimeFn{false, other_list[0], 0, 0};
    // galvatron's extension: the first key of each TP degree.
    for (size_t i = 0; i < ntypes; ++i) {
      for (int tp : tp_degrees_in(time, "_layertype_" + std::to_string(i) + "_")) {
        const std::string pre = "tp" + std::to_string(tp) + "_layertype_" + std::to_string(i) + "_";
        for (auto it = time.begin(); it != time.end(); ++it) {
          if (it->is_number() && starts_with(it.key(), pre)) {
            p.layer_types[i].forward_tp[tp] = TimeFn{false, it->get<double>(), 0, 0};
            break;
          }
        }
      }
    }
  } else if (opt.time_mode == ProfileMode::kBatch) {
    auto fit_for = [&](const std::string& pre, int seq, TimeFn* out) -> Status {
      std::vector<double> xs, ys;
      const std::string seqs = "_seq" + std::to_string(seq);
      for (auto it = time.begin(); it != time.end(); ++it) {
        const std::string& k = it.key();
        if (!starts_with(k, pre) || k.find(seqs) == std::string::npos || !it->is_number()) continue;
        // 'layertype_0_bsz8_seq2048'.split('_')[-2][3:]
        std::vector<std::string> parts;
        std::stringstream ss(k);
        std::string tok;
        while (std::getline(ss, tok, '_')) parts.push_back(tok);
        if (parts.size() < 2 || parts[parts.size() - 2].size() <= 3 || !is_digits(parts[parts.size() - 2].substr(3))) {
          return corrupt("computation profile '" + cf + "': cannot read the batch size from key '" + k + "'");
        }
        double b = std::stod(parts[parts.size() - 2].substr(3));
        xs.push_back(b);
        ys.push_back(it->get<double>() * b);
      }
      if (xs.size() < 8) {
        return corrupt("computation profile '" + cf + "': batch profile mode needs at least 8 batch sizes of '" + pre +
                       "*" + seqs + "', found " + std::to_string(xs.size()) + " (use --time-profile-mode static)");
      }
      out->linear = true;
      if (!fit_linear(xs, ys, &out->m, &out->c)) return corrupt("computation profile '" + cf + "': degenerate fit");
      return Status::ok();
    };
    for (size_t i = 0; i < ntypes; ++i) {
      GV_RETURN_IF_ERROR(fit_for("layertype_" + std::to_string(i) + "_", opt.layers[i].seq_len, &p.layer_types[i].forward));
      for (int tp : tp_degrees_in(time, "_layertype_" + std::to_string(i) + "_")) {  // galvatron's extension
        GV_RETURN_IF_ERROR(fit_for("tp" + std::to_string(tp) + "_layertype_" + std::to_string(i) + "_",
                                   opt.layers[i].seq_len, &p.layer_types[i].forward_tp[tp]));
      }
    }
    // G24 fits "other" for each layer type and uses the first.
    GV_RETURN_IF_ERROR(fit_for("layertype_other_", opt.layers[0].seq_len, &p.other_forward));
  } else {
    auto collect = [&](const std::string& pre, std::vector<double>* xs, std::vector<double>* ys) -> Status {
      for (auto it = time.begin(); it != time.end(); ++it) {
        const std::string& k = it.key();
        if (!starts_with(k, pre) || k.find("_bsz1_") == std::string::npos || !it->is_number()) continue;
        std::string tail = k.substr(k.rfind("seq") + 3);
        if (!is_digits(tail)) return corrupt("computation profile '" + cf + "': cannot read the sequence length in '" + k + "'");
        xs->push_back(std::stod(tail));
        ys->push_back(it->get<double>());
      }
      if (xs->size() < 3) {
        return corrupt("computation profile '" + cf + "': sequence profile mode needs '" + pre +
                       "bsz1_seq<S>' keys for at least 3 sequence lengths");
      }
      return Status::ok();
    };
    for (size_t i = 0; i < ntypes; ++i) {
      std::vector<double> xs, ys;
      GV_RETURN_IF_ERROR(collect("layertype_" + std::to_string(i) + "_", &xs, &ys));
      double a, b, c;
      if (!fit_quadratic(xs, ys, &a, &b, &c)) return corrupt("computation profile '" + cf + "': degenerate fit");
      double s = opt.layers[i].seq_len;
      p.layer_types[i].forward = TimeFn{false, a * s * s + b * s + c, 0, 0};
    }
    std::vector<double> xs, ys;
    GV_RETURN_IF_ERROR(collect("layertype_other_", &xs, &ys));
    double m, c;
    if (!fit_linear(xs, ys, &m, &c)) return corrupt("computation profile '" + cf + "': degenerate fit");
    p.other_forward = TimeFn{false, m * opt.layers[0].seq_len + c, 0, 0};
  }

  // ---- memory ----
  const std::string& mf = memory_path;
  const std::string sp = opt.sequence_parallel ? "_sp" : "";
  if (opt.memory_mode == ProfileMode::kSequence) {
    if (!opt.sequence_parallel) {
      return invalid_argument("--memory-profile-mode sequence needs --sequence-parallel (as in Galvatron)");
    }
    if (ntypes != 1) return unsupported("--memory-profile-mode sequence supports one layer type only (as in Galvatron)");
    const std::string sec = "layertype_0_sp";
    if (!mem.contains(sec) || !mem[sec].is_object() || mem[sec].empty()) {
      return corrupt("memory profile '" + mf + "' has no section '" + sec + "'");
    }
    int maxseq = -1, minseq = -1;
    for (auto it = mem[sec].begin(); it != mem[sec].end(); ++it) {
      if (!is_digits(it.key())) continue;
      int s = std::stoi(it.key());
      if (maxseq < 0 || s > maxseq) maxseq = s;
      if (minseq < 0 || s < minseq) minseq = s;
    }
    if (maxseq < 0) return corrupt("memory profile '" + mf + "': '" + sec + "' has no sequence-length entries");
    const Json& lo = mem[sec][std::to_string(minseq)];
    const Json& hi = mem[sec][std::to_string(maxseq)];
    LayerTypeProfile& lt = p.layer_types[0];
    if (!lo.contains("parameter_size") || !hi.contains("tp_activation_per_bsz_dict")) {
      return corrupt("memory profile '" + mf + "': '" + sec + "' entries need parameter_size and tp_activation_per_bsz_dict");
    }
    GV_RETURN_IF_ERROR(number_of(lo["parameter_size"], mf, sec + ".parameter_size", &lt.parameter_size_mb));
    GV_RETURN_IF_ERROR(read_tp_map(hi["tp_activation_per_bsz_dict"], mf, sec + ".tp_activation_per_bsz_dict",
                                   &lt.act_per_sample_mb, &lt.act_checkpoint_mb, &lt.has_checkpoint));
    const double scale_num = lt.seq_length;
    for (auto& [tp, v] : lt.act_per_sample_mb) v = v / maxseq * scale_num;
    if (lt.has_checkpoint) lt.act_checkpoint_mb = lt.act_checkpoint_mb / maxseq * scale_num;
    GV_ASSIGN_OR_RETURN(const Json* off, seq_entry(mem, mf, "other_memory_pp_off_sp", maxseq));
    GV_ASSIGN_OR_RETURN(const Json* first, seq_entry(mem, mf, "other_memory_pp_on_first_sp", maxseq));
    GV_ASSIGN_OR_RETURN(const Json* last, seq_entry(mem, mf, "other_memory_pp_on_last_sp", maxseq));
    GV_RETURN_IF_ERROR(read_other(*off, mf, "other_memory_pp_off_sp", &p.pp_off));
    GV_RETURN_IF_ERROR(read_other(*first, mf, "other_memory_pp_on_first_sp", &p.pp_on_first));
    GV_RETURN_IF_ERROR(read_other(*last, mf, "other_memory_pp_on_last_sp", &p.pp_on_last));
    for (auto& [tp, v] : p.pp_off.activation_mb) v = v / maxseq * lt.seq_length;
    for (auto& [tp, v] : p.pp_on_first.activation_mb) v = v / maxseq * lt.seq_length;
    for (auto& [tp, v] : p.pp_on_last.activation_mb) v = v / maxseq * lt.seq_length;
  } else {
    // static (and batch, which v2.4.0 reads like static).
    for (size_t i = 0; i < ntypes; ++i) {
      const std::string sec = "layertype_" + std::to_string(i) + sp;
      GV_ASSIGN_OR_RETURN(const Json* e, seq_entry(mem, mf, sec, opt.layers[i].seq_len));
      LayerTypeProfile& lt = p.layer_types[i];
      if (!e->contains("parameter_size") || !e->contains("tp_activation_per_bsz_dict")) {
        return corrupt("memory profile '" + mf + "': '" + sec + "' needs parameter_size and tp_activation_per_bsz_dict");
      }
      GV_RETURN_IF_ERROR(number_of((*e)["parameter_size"], mf, sec + ".parameter_size", &lt.parameter_size_mb));
      GV_RETURN_IF_ERROR(read_tp_map((*e)["tp_activation_per_bsz_dict"], mf, sec + ".tp_activation_per_bsz_dict",
                                     &lt.act_per_sample_mb, &lt.act_checkpoint_mb, &lt.has_checkpoint));
    }
    for (size_t i = 1; i < ntypes; ++i) {
      if (opt.layers[i].seq_len != opt.layers[0].seq_len) {
        return unsupported("layer types with different sequence lengths are not supported by the static memory mode");
      }
    }
    const int seq = opt.layers[0].seq_len;
    GV_ASSIGN_OR_RETURN(const Json* off, seq_entry(mem, mf, "other_memory_pp_off" + sp, seq));
    GV_ASSIGN_OR_RETURN(const Json* first, seq_entry(mem, mf, "other_memory_pp_on_first" + sp, seq));
    GV_ASSIGN_OR_RETURN(const Json* last, seq_entry(mem, mf, "other_memory_pp_on_last" + sp, seq));
    GV_RETURN_IF_ERROR(read_other(*off, mf, "other_memory_pp_off" + sp, &p.pp_off));
    GV_RETURN_IF_ERROR(read_other(*first, mf, "other_memory_pp_on_first" + sp, &p.pp_on_first));
    GV_RETURN_IF_ERROR(read_other(*last, mf, "other_memory_pp_on_last" + sp, &p.pp_on_last));
  }
  return p;
}

namespace {

// utils/config_utils.py remap_config: "{op}_size_{g}_{m}MB_time" -> per g, bytes -> ms, plus a line fit in MB.
Status remap_sp(const Json& j, const std::string& file, const std::string& op, std::map<int, CollectiveTable>* out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (!starts_with(k, op)) continue;
    std::vector<std::string> parts;
    std::stringstream ss(k);
    std::string tok;
    while (std::getline(ss, tok, '_')) parts.push_back(tok);
    if (parts.size() < 3) return corrupt("sp_time file '" + file + "': cannot read key '" + k + "'");
    const std::string& g = parts[parts.size() - 3];
    std::string mb = parts[parts.size() - 2];
    if (mb.size() < 3 || !is_digits(g) || !is_digits(mb.substr(0, mb.size() - 2)) || !it->is_number()) {
      return corrupt("sp_time file '" + file + "': cannot read key '" + k + "'");
    }
    double v = it->get<double>();
    if (op == "allreduce") v /= 2;  // to all-gather / reduce-scatter time
    int64_t bytes = std::stoll(mb.substr(0, mb.size() - 2)) * 1024 * 1024;
    (*out)[std::stoi(g)].ms_by_bytes[bytes] = v;
  }
  for (auto& [g, t] : *out) {
    std::vector<double> xs, ys;
    for (auto& [b, v] : t.ms_by_bytes) {
      xs.push_back(static_cast<double>(b / 1024 / 1024));
      ys.push_back(v);
    }
    if (xs.size() < 8) {
      return corrupt("sp_time file '" + file + "': " + op + " for group size " + std::to_string(g) +
                     " has fewer than 8 message sizes");
    }
    if (!fit_linear(xs, ys, &t.m, &t.c)) return corrupt("sp_time file '" + file + "': degenerate fit");
  }
  return Status::ok();
}

}  // namespace

Expected<HardwareProfile> load_galvatron_hardware_profile(const HardwareFiles& files, int world_size) {
  HardwareProfile h;
  h.world_size = world_size;
  h.source = files.allreduce + ", " + files.p2p + ", " + files.overlap + ", " + files.sp_time;
  GV_ASSIGN_OR_RETURN(Json ar, read_json(files.allreduce, "all-reduce bandwidth"));
  auto get_bw = [&](const std::string& key, double* out) -> Status {
    auto it = ar.find(key);
    if (it == ar.end() || !it->is_number()) {
      return corrupt("all-reduce bandwidth file '" + files.allreduce + "' has no number '" + key + "' (needed for " +
                     std::to_string(world_size) + " GPUs; is it the file for this --num-nodes/--num-gpus-per-node?)");
    }
    *out = it->get<double>();
    if (!(*out > 0)) return corrupt("all-reduce bandwidth file '" + files.allreduce + "': '" + key + "' must be > 0");
    return Status::ok();
  };
  int max_dp = world_size;
  if (max_dp >= 2) {
    double bw;
    GV_RETURN_IF_ERROR(get_bw("allreduce_size_" + std::to_string(max_dp) + "_consec_1", &bw));
    h.allreduce_bandwidth[std::to_string(max_dp)] = bw;
    h.allreduce_coe[std::to_string(max_dp)] = 1.0 / bw;
  }
  max_dp /= 2;
  while (max_dp >= 2) {
    for (int c = 0; c <= 1; ++c) {
      double bw;
      GV_RETURN_IF_ERROR(get_bw("allreduce_size_" + std::to_string(max_dp) + "_consec_" + std::to_string(c), &bw));
      std::string key = std::to_string(max_dp) + "_" + std::to_string(c);
      h.allreduce_bandwidth[key] = bw;
      h.allreduce_coe[key] = 1.0 / bw;
    }
    max_dp /= 2;
  }
  h.allreduce_coe["1"] = 0;

  GV_ASSIGN_OR_RETURN(Json p2p, read_json(files.p2p, "p2p bandwidth"));
  if (!p2p.is_object()) return corrupt("p2p bandwidth file '" + files.p2p + "' is not a JSON object");
  for (auto it = p2p.begin(); it != p2p.end(); ++it) {
    const std::string& k = it.key();
    if (k.find("pp_size_") == std::string::npos) continue;
    std::string tail = k.substr(k.rfind('_') + 1);
    if (!is_digits(tail) || !it->is_number() || !(it->get<double>() > 0)) {
      return corrupt("p2p bandwidth file '" + files.p2p + "': bad entry '" + k + "'");
    }
    h.p2p_bandwidth[std::stoi(tail)] = it->get<double>();
    h.p2p_coe[std::stoi(tail)] = 1.0 / it->get<double>();
  }

  GV_ASSIGN_OR_RETURN(Json ov, read_json(files.overlap, "overlap coefficient"));
  if (!ov.is_object() || !ov.contains("overlap_coe") || !ov["overlap_coe"].is_number()) {
    return corrupt("overlap coefficient file '" + files.overlap + "' has no number 'overlap_coe'");
  }
  h.overlap_coe = ov["overlap_coe"].get<double>();

  GV_ASSIGN_OR_RETURN(Json spt, read_json(files.sp_time, "sp_time"));
  if (!spt.is_object()) return corrupt("sp_time file '" + files.sp_time + "' is not a JSON object");
  GV_RETURN_IF_ERROR(remap_sp(spt, files.sp_time, "allreduce", &h.sp_allreduce));
  GV_RETURN_IF_ERROR(remap_sp(spt, files.sp_time, "all2all", &h.sp_all2all));
  return h;
}

}  // namespace gv::partitioner

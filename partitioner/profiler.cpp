// `galvatron profile`'s measurements and file writers (profiler.h).
#include "partitioner/profiler.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "runtime/backend.h"
#include "runtime/executor.h"
#include "runtime/training_graph.h"
#include "partitioner/tensor_parallel.h"

namespace gv::partitioner {
namespace {

using Json = nlohmann::ordered_json;
constexpr double kMB = 1024.0 * 1024.0;

// Integer inputs get ones (valid token / type ids, an all-ones attention mask), float inputs zeros.
Tensor feed_for(const Value& v) {
  Tensor t(v.dtype, v.shape);
  std::fill(static_cast<uint8_t*>(t.data()), static_cast<uint8_t*>(t.data()) + t.nbytes(), 0);
  if (v.dtype == DType::kInt64) std::fill(t.data_as<int64_t>(), t.data_as<int64_t>() + t.numel(), 1);
  if (v.dtype == DType::kInt32) std::fill(t.data_as<int32_t>(), t.data_as<int32_t>() + t.numel(), 1);
  return t;
}

std::string fmt_key(const std::string& what, int b, int s) {
  return "layertype_" + what + "_bsz" + std::to_string(b) + "_seq" + std::to_string(s);
}

}  // namespace

namespace {

// One timed graph: the layer blocks, the rest of the forward, the backward and the optimizer region (ms, best of
// the repeats), and the parameters' float32 MB.
struct GraphTimes {
  double layers_ms = 0, other_ms = 0, backward_ms = 0, optimizer_ms = 0, param_mb = 0;
  double backward_layers_ms = 0;  // the backward's blocks of layer nodes (autograd gives them their layer's place)
  int num_layers = 0, seq = 0;
};

Expected<GraphTimes> time_graph(Graph fwd, int repeats, Backend& backend) {
  if (fwd.num_layers <= 0) return invalid_argument("the model has no detected transformer layers to time");
  GraphTimes out;
  out.num_layers = fwd.num_layers;
  const bool per_node = backend.kind() == DeviceKind::kCpu;
  for (ValueId v : fwd.inputs)
    if (fwd.value(v).shape.size() >= 2) out.seq = static_cast<int>(fwd.value(v).shape[1]);
  // The trainer's graph: loss, backward, AdamW (timed with learning rate 0 and step 1: the weights stay as they are).
  TrainingGraphOptions to;
  to.optimizer.weight_decay = 0;
  to.save_attention_lse = backend.saves_attention_statistics();  // as the trainer builds it
  to.bf16_operands = backend.shares_bf16_operands();
  to.fuse_linear = backend.fuses_linear();
  to.pack_attention_qkv = backend.packs_attention_qkv();
  GV_ASSIGN_OR_RETURN(TrainingGraph tg, build_training_graph(std::move(fwd), to));
  const Graph& g = tg.graph;
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(g, backend));
  const size_t fwd_end = std::min(tg.backward_begin, ex->num_steps());
  const size_t bwd_end = std::min(tg.optimizer_begin, ex->num_steps());
  // The arena may reuse an input's buffer once it is read: feed the inputs before every pass.
  auto feed = [&]() -> Status {
    for (ValueId v : g.inputs) {
      Tensor t = feed_for(g.value(v));
      if (v == tg.lr) std::fill(t.data_as<double>(), t.data_as<double>() + t.numel(), 0.0);
      if (v == tg.step) std::fill(t.data_as<int64_t>(), t.data_as<int64_t>() + t.numel(), int64_t{1});
      GV_RETURN_IF_ERROR(ex->set_value(v, t));
    }
    return backend.synchronize();
  };
  // Blocks [begin, end) of the forward part timed as one: single nodes on the CPU, runs of one place elsewhere.
  auto layer_of = [&](size_t i) {
    return g.nodes[i].place.kind == Placement::Kind::kLayer ? g.nodes[i].place.layer : -1;
  };
  auto blocks_of = [&](size_t begin, size_t end) {
    std::vector<std::pair<size_t, size_t>> out;
    for (size_t i = begin; i < end;) {
      size_t j = i + 1;
      if (!per_node)
        while (j < end && layer_of(j) == layer_of(i)) ++j;
      out.emplace_back(i, j);
      i = j;
    }
    return out;
  };
  const std::vector<std::pair<size_t, size_t>> blocks = blocks_of(0, fwd_end);
  const std::vector<std::pair<size_t, size_t>> bwd_blocks = blocks_of(fwd_end, bwd_end);
  auto timed = [&](size_t begin, size_t end, double* best) -> Status {
    auto t0 = std::chrono::steady_clock::now();
    GV_RETURN_IF_ERROR(ex->run_steps(begin, end));
    GV_RETURN_IF_ERROR(backend.synchronize());
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    *best = std::min(*best, ms);
    return Status::ok();
  };
  GV_RETURN_IF_ERROR(feed());
  GV_RETURN_IF_ERROR(ex->run_steps(0, bwd_end));  // warm-up (kernel selection, first-touch allocations)
  GV_RETURN_IF_ERROR(backend.synchronize());
  std::vector<double> best(blocks.size(), std::numeric_limits<double>::infinity());
  std::vector<double> best_bwd_block(bwd_blocks.size(), std::numeric_limits<double>::infinity());
  double best_bwd = std::numeric_limits<double>::infinity(), best_opt = best_bwd;
  for (int r = 0; r < std::max(repeats, 1); ++r) {
    // Forward by blocks, the backward whole, then (fed again) the forward whole and the backward by blocks.
    GV_RETURN_IF_ERROR(feed());
    for (size_t k = 0; k < blocks.size(); ++k) GV_RETURN_IF_ERROR(timed(blocks[k].first, blocks[k].second, &best[k]));
    GV_RETURN_IF_ERROR(timed(fwd_end, bwd_end, &best_bwd));
    GV_RETURN_IF_ERROR(timed(bwd_end, ex->num_steps(), &best_opt));
    GV_RETURN_IF_ERROR(feed());
    GV_RETURN_IF_ERROR(ex->run_steps(0, fwd_end));
    for (size_t k = 0; k < bwd_blocks.size(); ++k) {
      GV_RETURN_IF_ERROR(timed(bwd_blocks[k].first, bwd_blocks[k].second, &best_bwd_block[k]));
    }
  }
  for (size_t k = 0; k < blocks.size(); ++k) (layer_of(blocks[k].first) >= 0 ? out.layers_ms : out.other_ms) += best[k];
  for (size_t k = 0; k < bwd_blocks.size(); ++k) {
    if (layer_of(bwd_blocks[k].first) >= 0) out.backward_layers_ms += best_bwd_block[k];
  }
  out.backward_ms = best_bwd;
  out.optimizer_ms = best_opt;
  for (ValueId p : tg.params) out.param_mb += static_cast<double>(shape_numel(g.value(p).shape)) * 4 / kMB;
  return out;
}

}  // namespace

Status make_compute_only_tensor_parallel(Graph& g, int tp) {
  std::vector<TensorParallelLayer> layers;
  std::vector<int> group(static_cast<size_t>(tp));
  for (int r = 0; r < tp; ++r) group[r] = r;
  for (int l = 0; l < g.num_layers; ++l) layers.push_back({l, tp, 0, group});
  GV_RETURN_IF_ERROR(apply_tensor_parallel(g, layers).status());
  for (Node& n : g.nodes) {
    if (n.domain != kGalvatronDomain || (n.op_type != kTensorParallelCopyOp && n.op_type != kTensorParallelReduceOp)) {
      continue;
    }
    n.op_type = "Identity";
    n.domain = "";
    n.opset = g.opsets.count("") ? g.opsets.at("") : 13;
    n.attrs = Attributes{};
  }
  return Status::ok();
}

Expected<ForwardTiming> time_forward(const std::function<Expected<Graph>(int64_t)>& make_graph,
                                     const std::vector<int>& batches, int repeats, Backend& backend,
                                     const std::vector<int>& tp_degrees) {
  ForwardTiming t;
  t.device = backend.name();
  t.repeats = std::max(repeats, 1);
  for (int b : batches) {
    GV_ASSIGN_OR_RETURN(Graph fwd, make_graph(b));
    GV_ASSIGN_OR_RETURN(GraphTimes gt, time_graph(std::move(fwd), t.repeats, backend));
    t.num_layers = gt.num_layers;
    t.seq = gt.seq;
    t.layer_ms_per_sample[b] = gt.layers_ms / gt.num_layers / b;
    t.other_ms_per_sample[b] = gt.other_ms / b;
    t.backward_ms_per_sample[b] = gt.backward_ms / b;
    t.backward_layer_ms_per_sample[b] = gt.backward_layers_ms / gt.num_layers / b;
    if (gt.param_mb > 0) {
      const double rate = gt.optimizer_ms / gt.param_mb;
      if (t.optimizer_ms_per_param_mb == 0 || rate < t.optimizer_ms_per_param_mb) t.optimizer_ms_per_param_mb = rate;
    }
  }
  for (int tp : tp_degrees) {
    if (tp <= 1) continue;
    for (int b : batches) {
      GV_ASSIGN_OR_RETURN(Graph fwd, make_graph(b));
      Status st = make_compute_only_tensor_parallel(fwd, tp);
      if (!st.is_ok()) {
        t.tp_skipped[tp] = st.message();
        t.tp_layer_ms_per_sample.erase(tp);
        break;
      }
      GV_ASSIGN_OR_RETURN(GraphTimes gt, time_graph(std::move(fwd), t.repeats, backend));
      t.tp_layer_ms_per_sample[tp][b] = gt.layers_ms / gt.num_layers / b;
    }
  }
  return t;
}

std::string computation_profile_json(const ForwardTiming& t) {
  Json j = Json::object();
  for (const auto& [b, ms] : t.layer_ms_per_sample) {
    j[fmt_key("0", b, t.seq)] = ms;
    j[fmt_key("other", b, t.seq)] = t.other_ms_per_sample.at(b);
  }
  // galvatron's extensions (Galvatron's readers take numbers under layertype_* only and skip them).
  if (t.optimizer_ms_per_param_mb > 0) j["optimizer_ms_per_param_mb"] = t.optimizer_ms_per_param_mb;
  for (const auto& [tp, by_batch] : t.tp_layer_ms_per_sample) {
    for (const auto& [b, ms] : by_batch) j["tp" + std::to_string(tp) + "_" + fmt_key("0", b, t.seq)] = ms;
  }
  // Not a time: where the numbers come from.
  j["profile_note"] = "training forward (loss included), ms per sample, on " + t.device + " (" + t.precision +
                      "), best of " + std::to_string(t.repeats);
  return j.dump(4) + "\n";
}

std::string memory_profile_json(const IrMemory& m, const std::vector<int>& tps) {
  Json j = Json::object();
  const std::string seq = std::to_string(m.seq);
  for (bool sp : {false, true}) {
    IrProfileOptions o;
    o.tp_degrees = tps;
    ModelProfile p = model_profile_from_ir(m, o, sp);
    const std::string suf = sp ? "_sp" : "";
    const LayerTypeProfile& lt = p.layer_types[0];
    Json act = Json::object();
    for (const auto& [tp, v] : lt.act_per_sample_mb) act[std::to_string(tp)] = v;
    act["checkpoint"] = lt.act_checkpoint_mb;
    j["layertype_0" + suf][seq] = {{"parameter_size", lt.parameter_size_mb}, {"tp_activation_per_bsz_dict", act}};
    auto other = [&](const OtherMemory& om) {
      Json ms = Json::object(), a = Json::object();
      for (const auto& [k, v] : om.model_states_mb) ms[std::to_string(k)] = v;
      for (const auto& [k, v] : om.activation_mb) a[std::to_string(k)] = v;
      return Json{{"model_states", ms}, {"activation", a}};
    };
    j["other_memory_pp_off" + suf][seq] = other(p.pp_off);
    j["other_memory_pp_on_first" + suf][seq] = other(p.pp_on_first);
    j["other_memory_pp_on_last" + suf][seq] = other(p.pp_on_last);
  }
  j["ir_note"] = "from the IR's training graph (" + std::to_string(m.batch) + " x " + seq +
                 " tokens): parameter MB fp32, saved activations MB per sample";
  return j.dump(4) + "\n";
}

Status write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  if (!f) return io_error("cannot write '" + path + "'");
  f << text;
  if (!f) return io_error("writing '" + path + "' failed");
  return Status::ok();
}

Expected<std::vector<std::string>> write_hardware_files(const std::string& dir, const HardwareNumbers& h) {
  const int world = h.num_nodes * h.gpus_per_node;
  if (world < 1 || h.intra_allreduce_gbps <= 0 || h.inter_allreduce_gbps <= 0 || h.p2p_gbps <= 0 ||
      h.inter_p2p_gbps <= 0) {
    return invalid_argument("hardware numbers must be positive");
  }
  const std::string cluster = std::to_string(h.num_nodes) + "nodes_" + std::to_string(h.gpus_per_node) + "gpus_per_node.json";
  std::string d = dir.empty() || dir.back() == '/' ? dir : dir + "/";
  auto bw = [&](int g, bool consec) {
    bool crosses = consec ? g > h.gpus_per_node : h.num_nodes > 1;
    return crosses ? h.inter_allreduce_gbps : h.intra_allreduce_gbps;
  };
  Json ar = Json::object();
  for (int g = world; g >= 2; g /= 2) {
    ar["allreduce_size_" + std::to_string(g) + "_consec_1"] = bw(g, true);
    if (g < world) ar["allreduce_size_" + std::to_string(g) + "_consec_0"] = bw(g, false);
  }
  Json p2p = Json::object();
  for (int g = 2; g <= world; g *= 2) p2p["pp_size_" + std::to_string(g)] = h.num_nodes > 1 ? h.inter_p2p_gbps : h.p2p_gbps;
  Json ov = {{"overlap_coe", h.overlap_coe}};
  Json spt = Json::object();
  for (const char* op : {"allreduce", "all2all"}) {
    for (int g = std::min(world, h.gpus_per_node); g >= 2; g /= 2) {
      for (int mb = 1; mb <= 1024; mb *= 2) {
        double factor = std::string(op) == "allreduce" ? 2.0 * (g - 1) / g : (g - 1.0) / g;
        double ms = h.latency_ms + factor * mb * kMB / (bw(g, true) * 1e9) * 1e3;
        spt[std::string(op) + "_size_" + std::to_string(g) + "_" + std::to_string(mb) + "MB_time"] = ms;
      }
    }
  }
  std::vector<std::string> paths = {d + "allreduce_bandwidth_" + cluster, d + "p2p_bandwidth_" + cluster,
                                    d + "overlap_coefficient.json", d + "sp_time_" + cluster};
  GV_RETURN_IF_ERROR(write_text_file(paths[0], ar.dump(4) + "\n"));
  GV_RETURN_IF_ERROR(write_text_file(paths[1], p2p.dump(4) + "\n"));
  GV_RETURN_IF_ERROR(write_text_file(paths[2], ov.dump(4) + "\n"));
  GV_RETURN_IF_ERROR(write_text_file(paths[3], spt.dump(4) + "\n"));
  return paths;
}

Expected<std::vector<std::string>> write_measured_hardware_files(const std::string& dir, const MeasuredHardware& m) {
  const std::string cluster =
      std::to_string(m.num_nodes) + "nodes_" + std::to_string(m.gpus_per_node) + "gpus_per_node.json";
  std::string d = dir.empty() || dir.back() == '/' ? dir : dir + "/";
  Json ar(m.allreduce_gbps), p2p(m.p2p_gbps), spt(m.sp_time_ms);
  Json ov = {{"overlap_coe", m.overlap_coe}};
  std::vector<std::string> paths = {d + "allreduce_bandwidth_" + cluster, d + "p2p_bandwidth_" + cluster,
                                    d + "overlap_coefficient.json", d + "sp_time_" + cluster};
  GV_RETURN_IF_ERROR(write_text_file(paths[0], ar.dump(4) + "\n"));
  GV_RETURN_IF_ERROR(write_text_file(paths[1], p2p.dump(4) + "\n"));
  GV_RETURN_IF_ERROR(write_text_file(paths[2], ov.dump(4) + "\n"));
  GV_RETURN_IF_ERROR(write_text_file(paths[3], spt.dump(4) + "\n"));
  return paths;
}

}  // namespace gv::partitioner

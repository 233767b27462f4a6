// `galvatron inspect MODEL.onnx`: what the importer makes of a model: header, inputs and outputs, parameters and
// constants, op histograms (imported graph and file), the detected layers, and the ops the runtime lacks.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/onnx_scan.h"
#include "importer/onnx_importer.h"
#include "runtime/fusion.h"

namespace gv::cli {
namespace {

constexpr int64_t kDefaultSeq = 128;

struct Summary {
  int64_t param_count = 0, param_bytes = 0, param_tensors = 0;
  int64_t const_count = 0, const_bytes = 0, const_elements = 0;
  std::map<std::string, int64_t> ops;
  int64_t embedding_params = 0, head_params = 0, unplaced_params = 0;
  std::vector<int64_t> layer_params;
  std::vector<std::string> shared_params;  // parameters used from more than one place
  struct Param {
    ValueId id;
    std::string place;  // "layer 0", "embedding, head" (every place it is used from)
  };
  std::vector<Param> params;
};

std::string place_name(std::pair<int, int> p) {
  auto kind = static_cast<Placement::Kind>(p.first);
  if (kind == Placement::Kind::kLayer) return "layer " + std::to_string(p.second);
  return placement_kind_name(kind);
}

std::string op_key(const Node& n) {
  return n.domain.empty() || n.domain == "ai.onnx" ? n.op_type : n.domain + ":" + n.op_type;
}

Summary summarize(const Graph& g) {
  Summary s;
  s.layer_params.assign(std::max(g.num_layers, 0), 0);
  // The places each value is consumed from, in node order.
  std::vector<std::vector<std::pair<int, int>>> places(g.values.size());
  for (const Node& n : g.nodes) {
    ++s.ops[op_key(n)];
    std::pair<int, int> p{static_cast<int>(n.place.kind), n.place.kind == Placement::Kind::kLayer ? n.place.layer : -1};
    for (ValueId in : n.inputs) {
      if (in < 0 || in >= static_cast<ValueId>(g.values.size())) continue;
      auto& v = places[in];
      if (std::find(v.begin(), v.end(), p) == v.end()) v.push_back(p);
    }
  }
  for (ValueId id = 0; id < static_cast<ValueId>(g.values.size()); ++id) {
    const Value& v = g.values[id];
    const int64_t numel = shape_numel(v.shape);
    const int64_t bytes = numel * static_cast<int64_t>(dtype_size(v.dtype));
    if (v.kind == ValueKind::kConstant) {
      ++s.const_count;
      s.const_elements += numel;
      s.const_bytes += bytes;
      continue;
    }
    if (v.kind != ValueKind::kParameter) continue;
    ++s.param_tensors;
    s.param_count += numel;
    s.param_bytes += bytes;
    std::string place;
    for (const auto& p : places[id]) place += (place.empty() ? "" : ", ") + place_name(p);
    s.params.push_back({id, place.empty() ? "unused" : place});
    // Counted once, where it is first used (a tied embedding counts in the embedding, not in the head).
    if (places[id].size() > 1) s.shared_params.push_back(v.name);
    if (places[id].empty()) {
      s.unplaced_params += numel;
      continue;
    }
    auto [kind, layer] = places[id].front();
    switch (static_cast<Placement::Kind>(kind)) {
      case Placement::Kind::kEmbedding: s.embedding_params += numel; break;
      case Placement::Kind::kHead: s.head_params += numel; break;
      case Placement::Kind::kLayer:
        if (layer >= 0 && layer < static_cast<int>(s.layer_params.size())) s.layer_params[layer] += numel;
        else s.unplaced_params += numel;
        break;
      default: s.unplaced_params += numel; break;
    }
  }
  return s;
}

std::vector<std::pair<std::string, int64_t>> by_count(const std::map<std::string, int64_t>& h) {
  std::vector<std::pair<std::string, int64_t>> v(h.begin(), h.end());
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  return v;
}

void print_histogram(std::ostream& os, const std::map<std::string, int64_t>& h) {
  size_t width = 0;
  for (const auto& [k, n] : h) width = std::max(width, k.size());
  for (const auto& [k, n] : by_count(h)) os << "  " << k << std::string(width + 2 - k.size(), ' ') << n << "\n";
}

std::string layers_line(const std::vector<int64_t>& per_layer) {
  if (per_layer.empty()) return "";
  bool uniform = std::all_of(per_layer.begin(), per_layer.end(), [&](int64_t n) { return n == per_layer[0]; });
  if (uniform) return with_commas(per_layer[0]) + " parameters each";
  std::string s;
  for (size_t i = 0; i < per_layer.size(); ++i) s += (i ? ", " : "") + with_commas(per_layer[i]);
  return s + " parameters";
}

nlohmann::ordered_json shape_json(const Shape& s) {
  auto j = nlohmann::ordered_json::array();
  for (int64_t d : s) j.push_back(d);
  return j;
}

nlohmann::ordered_json declared_json(const OnnxInput* in) {
  if (!in || !in->has_shape) return nullptr;
  auto j = nlohmann::ordered_json::array();
  for (const auto& d : in->dims) {
    if (d.value >= 0) j.push_back(d.value);
    else if (!d.param.empty()) j.push_back(d.param);
    else j.push_back(nullptr);
  }
  return j;
}

Status run_inspect(const ParsedArgs& args, CommandContext& ctx) {
  const std::string& path = args.positionals[0];
  const int64_t batch = args.i64("batch");
  if (batch <= 0) return ctx.usage("--batch must be positive, got " + std::to_string(batch));
  if (args.given("seq") && args.i64("seq") <= 0) {
    return ctx.usage("--seq must be positive, got " + std::to_string(args.i64("seq")));
  }
  ImportOptions opts;
  opts.batch = batch;
  opts.allow_unsupported = true;
  GV_RETURN_IF_ERROR(parse_dim_flags(args, ctx, &opts.dims));

  GV_ASSIGN_OR_RETURN(OnnxFileInfo file, scan_onnx(path));
  // Which of the batch and sequence dims the model leaves open (a named dim given by --dim is not open).
  auto open_dim = [&](size_t axis) {
    for (const auto& in : file.inputs) {
      if (!in.has_shape || in.dims.size() <= axis) continue;
      const OnnxDim& d = in.dims[axis];
      if (d.value < 0 && !(!d.param.empty() && opts.dims.count(d.param))) return true;
    }
    return false;
  };
  const bool dynamic_batch = open_dim(0), dynamic_seq = open_dim(1);
  bool seq_defaulted = false;
  if (args.given("seq")) {
    opts.seq = args.i64("seq");
    if (!dynamic_seq) ctx.note("note: --seq has no effect: the model's sequence length is static");
  } else if (dynamic_seq) {
    seq_defaulted = true;
    opts.seq = kDefaultSeq;
    ctx.note("note: the model's sequence length is dynamic; using --seq " + std::to_string(kDefaultSeq) +
             " (pass --seq to choose)");
  }
  if (args.given("batch") && !dynamic_batch) ctx.note("note: --batch has no effect: the model's batch size is static");

  auto t0 = std::chrono::steady_clock::now();
  auto imported = import_onnx(path, opts);
  if (!imported) {
    if (seq_defaulted) {
      return Status(imported.status().code(),
                    imported.status().message() + " (the sequence length " + std::to_string(kDefaultSeq) +
                        " was a default for the dynamic sequence dim: pass --seq)");
    }
    return imported.status();
  }
  ctx.timing("imported " + path, t0);
  const ImportedModel& m = *imported;
  const Graph& g = m.graph;
  const Summary s = summarize(g);
  std::map<std::string, const OnnxInput*> declared;
  for (const auto& in : file.inputs) declared[in.name] = &in;
  const std::string producer =
      !m.producer.empty() ? m.producer
                          : file.producer_name + (file.producer_version.empty() ? "" : " " + file.producer_version);
  std::map<std::string, int64_t> opsets;
  for (const auto& [d, v] : m.opsets) opsets[domain_name(d)] = v;
  if (opsets.empty())
    for (const auto& [d, v] : file.opsets) opsets[domain_name(d)] = v;
  const int64_t ir_version = m.ir_version ? m.ir_version : file.ir_version;
  const int64_t onnx_nodes = m.onnx_node_count ? m.onnx_node_count : file.node_count;
  // What `train --fuse-ops on` rewrites (runtime/fusion.h), on a copy (tensors are shared, not copied).
  Expected<FusionCounts> fused = FusionCounts{};
  if (!m.partial) {
    Graph copy = g;
    fused = fuse_forward_graph(copy);
  }

  if (args.flag("json")) {
    nlohmann::ordered_json j;
    j["file"] = path;
    j["producer"] = producer;
    j["ir_version"] = ir_version;
    j["opsets"] = opsets;
    // The values the open dims were given (null: the model fixes that dim itself).
    j["batch"] = dynamic_batch ? nlohmann::ordered_json(batch) : nlohmann::ordered_json(nullptr);
    j["seq"] = dynamic_seq ? nlohmann::ordered_json(opts.seq) : nlohmann::ordered_json(nullptr);
    j["seq_defaulted"] = seq_defaulted;
    auto io = [&](const std::vector<ValueId>& ids, bool inputs) {
      auto arr = nlohmann::ordered_json::array();
      for (ValueId id : ids) {
        const Value& v = g.value(id);
        nlohmann::ordered_json e;
        e["name"] = v.name;
        e["dtype"] = dtype_name(v.dtype);
        e["shape"] = shape_json(v.shape);
        if (inputs) {
          auto it = declared.find(v.name);
          e["declared_shape"] = declared_json(it == declared.end() ? nullptr : it->second);
        }
        arr.push_back(e);
      }
      return arr;
    };
    j["inputs"] = io(g.inputs, true);
    j["outputs"] = io(g.outputs, false);
    j["parameters"] = {{"count", s.param_count}, {"bytes", s.param_bytes}, {"tensors", s.param_tensors}};
    j["constants"] = {{"count", s.const_count}, {"bytes", s.const_bytes}, {"elements", s.const_elements}};
    j["node_count"] = g.nodes.size();
    j["op_histogram"] = s.ops;
    j["onnx_node_count"] = onnx_nodes;
    j["onnx_op_histogram"] = file.op_histogram;  // the main graph's nodes
    j["onnx_local_functions"] = file.local_function_count;
    j["layers"] = {{"count", g.num_layers},
                   {"params_per_layer", s.layer_params},
                   {"embedding_params", s.embedding_params},
                   {"head_params", s.head_params},
                   {"other_params", s.unplaced_params},
                   {"shared_params", s.shared_params}};
    j["unsupported_ops"] = m.unsupported_ops;
    if (fused) j["fused_ops"] = {{"attention", fused->attention}, {"gelu", fused->gelu}};
    if (args.flag("params")) {
      auto arr = nlohmann::ordered_json::array();
      for (const auto& p : s.params) {
        const Value& v = g.value(p.id);
        arr.push_back({{"name", v.name}, {"dtype", dtype_name(v.dtype)}, {"shape", shape_json(v.shape)},
                       {"count", shape_numel(v.shape)}, {"place", p.place}});
      }
      j["parameter_list"] = arr;
    }
    std::cout << j.dump(2) << "\n";
  } else {
    std::ostringstream os;
    os << "file:        " << path << "\n";
    os << "producer:    " << (producer.empty() ? "(not recorded)" : producer) << "\n";
    os << "IR version:  " << ir_version << "\n";
    os << "opsets:      ";
    bool first = true;
    for (const auto& [d, v] : opsets) {
      os << (first ? "" : ", ") << d << " " << v;
      first = false;
    }
    os << "\n";
    if (!dynamic_batch && !dynamic_seq) {
      os << "shapes:      static (the model fixes its batch and sequence dims)\n\n";
    } else {
      os << "specialized: ";
      if (dynamic_batch) os << "batch " << batch << (dynamic_seq ? ", " : "");
      if (dynamic_seq) os << "seq " << opts.seq << (seq_defaulted ? " (a default: pass --seq to choose)" : "");
      os << "\n\n";
    }
    auto io = [&](const char* title, const std::vector<ValueId>& ids, bool inputs) {
      os << title << ":\n";
      size_t width = 0;
      for (ValueId id : ids) width = std::max(width, g.value(id).name.size());
      for (ValueId id : ids) {
        const Value& v = g.value(id);
        std::string dt = dtype_name(v.dtype);
        os << "  " << v.name << std::string(width + 2 - v.name.size(), ' ') << dt
           << std::string(dt.size() < 9 ? 9 - dt.size() : 1, ' ') << shape_str(v.shape);
        if (inputs) {
          auto it = declared.find(v.name);
          if (it != declared.end()) os << "  (declared " << declared_shape_str(*it->second) << ")";
        }
        os << "\n";
      }
    };
    io("inputs", g.inputs, true);
    io("outputs", g.outputs, false);
    os << "\n";
    os << "parameters:  " << with_commas(s.param_count) << " in " << s.param_tensors << " tensors ("
       << human_bytes(s.param_bytes) << ")\n";
    os << "constants:   " << s.const_count << " tensors, " << with_commas(s.const_elements) << " elements ("
       << human_bytes(s.const_bytes) << ")\n";
    os << "layers:      " << g.num_layers;
    if (g.num_layers > 0) os << " (" << layers_line(s.layer_params) << ")";
    os << "\n";
    os << "  embedding: " << with_commas(s.embedding_params) << " parameters\n";
    os << "  head:      " << with_commas(s.head_params) << " parameters\n";
    if (s.unplaced_params) os << "  other:     " << with_commas(s.unplaced_params) << " parameters\n";
    if (!s.shared_params.empty()) {
      os << "  shared:    ";
      for (size_t i = 0; i < s.shared_params.size(); ++i) os << (i ? ", " : "") << s.shared_params[i];
      os << " (counted where first used)\n";
    }
    if (fused && !m.partial) os << "fused ops:   " << fused->summary() << " (what train --fuse-ops on rewrites)\n";
    if (args.flag("params")) {
      os << "\nparameter list:\n";
      size_t width = 0;
      for (const auto& p : s.params) width = std::max(width, g.value(p.id).name.size());
      for (const auto& p : s.params) {
        const Value& v = g.value(p.id);
        std::string shape = shape_str(v.shape);
        os << "  " << v.name << std::string(width + 2 - v.name.size(), ' ') << shape
           << std::string(shape.size() < 16 ? 16 - shape.size() : 1, ' ') << p.place << "\n";
      }
    }
    os << "\nops in the imported graph (" << g.nodes.size() << " nodes):\n";
    print_histogram(os, s.ops);
    os << "\nops in the file (" << file.node_count << " nodes";
    if (file.local_function_count > 0) {
      os << " in the main graph; " << onnx_nodes << " after inlining " << file.local_function_count
         << " local functions";
    }
    os << "):\n";
    print_histogram(os, file.op_histogram);
    if (!m.unsupported_ops.empty()) {
      os << "\nunsupported ops (the import stopped at the first; the figures above cover the graph up to it):\n";
      for (const auto& u : m.unsupported_ops) os << "  " << u << "\n";
    }
    std::cout << os.str();
  }
  if (!m.unsupported_ops.empty()) {
    return unsupported(path + ": uses " + std::to_string(m.unsupported_ops.size()) +
                       " op(s) this runtime does not support: " + m.unsupported_ops.front() +
                       (m.unsupported_ops.size() > 1 ? ", ..." : ""));
  }
  return Status::ok();
}

}  // namespace

GV_REGISTER_COMMAND(
    inspect,
    (Command{
        .spec =
            {
                .name = "inspect",
                .summary = "Import an ONNX model and describe it: inputs, outputs, parameters, layers, ops.",
                .description =
                    "Imports MODEL.onnx the way `run` and `train` would (shapes specialized to --batch and --seq,\n"
                    "constants folded, layers detected) and prints what came out. Ops the runtime does not support\n"
                    "are listed, and make the exit code 1. Parameters are counted in elements; a parameter used\n"
                    "from several places (a tied embedding) counts once, where it is first used.",
                .positionals = {{.name = "MODEL.onnx", .help = "The model to inspect."}},
                .flags =
                    {
                        int_flag("batch", "B", "1", "Batch size to specialize a dynamic batch dim to."),
                        int_flag("seq", "T", "", "Sequence length to specialize a dynamic sequence dim to.")
                            .with_default_text("128 for a dynamic sequence dim, else the model's own length"),
                        dim_flag(),
                        bool_flag("params", "Also list every parameter with its shape and where it is used."),
                        bool_flag("json",
                                  "Print one JSON object (keys: file, producer, ir_version, opsets, inputs, outputs,\n"
                                  "      parameters, constants, op_histogram, onnx_op_histogram, layers, "
                                  "unsupported_ops, fused_ops)."),
                    },
                .examples = {"galvatron inspect gpt2.onnx", "galvatron inspect llama.onnx --batch 8 --seq 512 --json"},
            },
        .run = run_inspect,
        .order = 10}));

}  // namespace gv::cli

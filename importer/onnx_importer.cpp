// The import pipeline: parse -> inline local functions -> structural checks and topological order -> scan for
// unsupported ops -> load initializers and classify them -> specialize input shapes -> build the Graph node by node
// (shape inference in the registry, constant folding) -> prune -> layer detection.
#include "importer/onnx_importer.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <set>
#include <unordered_set>

#include "importer/constant_folding.h"
#include "importer/function_inliner.h"
#include "importer/graph_checks.h"
#include "importer/initializer_classification.h"
#include "importer/layer_detection.h"
#include "importer/onnx_proto_reader.h"
#include "importer/weight_tying.h"
#include "runtime/op_registry.h"

namespace gv {

using namespace onnx_import;

namespace {

std::string domain_label(const std::string& d) { return d.empty() ? "ai.onnx" : d; }

bool has_graph_attribute(const onnx::NodeProto& n) {
  for (const auto& a : n.attribute()) {
    if (a.type() == onnx::AttributeProto_AttributeType_GRAPH || a.type() == onnx::AttributeProto_AttributeType_GRAPHS ||
        a.has_g() || a.graphs_size()) {
      return true;
    }
  }
  return false;
}

// Ops the importer evaluates itself, so they need no registry entry.
bool handled_by_importer(const FlatNode& n, bool fold) {
  if (!n.domain.empty()) return false;
  const std::string& op = n.proto.op_type();
  return op == "Constant" || (fold && (op == "Shape" || op == "Size"));
}

// The concrete shape of a graph input.
Expected<Shape> specialize_input(const onnx::ValueInfoProto& vi, const ImportOptions& opt, const std::string& path) {
  const std::string what = "'" + path + "': graph input '" + vi.name() + "'";
  auto given = opt.input_shapes.find(vi.name());
  if (given != opt.input_shapes.end()) return given->second;
  const onnx::TypeProto_Tensor& tt = vi.type().tensor_type();
  if (!tt.has_shape()) {
    return invalid_argument(what + " has no declared shape; give it with ImportOptions::input_shapes");
  }
  Shape shape;
  for (int axis = 0; axis < tt.shape().dim_size(); ++axis) {
    const auto& d = tt.shape().dim(axis);
    if (d.has_dim_value()) {
      if (d.dim_value() < 0) return corrupt(what + " has the negative dimension " + std::to_string(d.dim_value()));
      shape.push_back(d.dim_value());
      continue;
    }
    const std::string param = d.has_dim_param() ? d.dim_param() : "";
    auto named = param.empty() ? opt.dims.end() : opt.dims.find(param);
    if (named != opt.dims.end()) {
      shape.push_back(named->second);
    } else if (axis == 0) {
      shape.push_back(opt.batch);
    } else if (axis == 1) {
      if (opt.seq <= 0) {
        return invalid_argument(what + " has a dynamic sequence dimension (axis 1" +
                                (param.empty() ? std::string() : ", '" + param + "'") +
                                "); give the sequence length (train, run: --seq-len N; search, profile: --seq-length N)");
      }
      shape.push_back(opt.seq);
    } else {
      return invalid_argument(what + " has a dynamic dimension at axis " + std::to_string(axis) +
                              (param.empty() ? std::string(" (unnamed)") : " ('" + param + "')") +
                              "; give its value with --dim " + (param.empty() ? std::string("NAME") : param) +
                              "=N (ImportOptions::dims) or the input's full shape (ImportOptions::input_shapes)");
    }
  }
  return shape;
}

// The parsed, flattened, checked and ordered file.
struct LoadedFile {
  onnx::ModelProto owned;                   // when read from a file
  const onnx::ModelProto* proto = nullptr;  // the model
  std::map<std::string, int> opsets;
  std::vector<FlatNode> flat;
  std::vector<int> order;
  GraphSources sources;
  std::vector<const onnx::ValueInfoProto*> graph_inputs;  // those that are not initializers
};

// `path` names the model in messages.
Status load_model(const std::string& path, LoadedFile* lf) {
  const std::string in = "'" + path + "': ";
  if (!lf->proto->has_graph()) return corrupt(in + "the model has no graph");
  for (const auto& op : lf->proto->opset_import()) {
    const std::string d = normalize_domain(op.domain());
    const int v = static_cast<int>(op.version());
    lf->opsets[d] = v;
    if (d.empty() && (v < kMinOpset || v > kMaxOpset)) {
      return unsupported(in + "the model uses opset " + std::to_string(v) + " of the default ONNX domain; supported " +
                         "opsets are " + std::to_string(kMinOpset) + ".." + std::to_string(kMaxOpset) +
                         " (re-export the model with an opset in that range)");
    }
  }
  const onnx::GraphProto& gp = lf->proto->graph();
  auto flat = inline_functions(*lf->proto, lf->opsets, path);
  if (!flat) return flat.status();
  lf->flat = std::move(*flat);
  name_nodes(lf->flat);
  std::unordered_set<std::string> init_names;
  for (const auto& t : gp.initializer()) {
    lf->sources.initializers.push_back(t.name());
    init_names.insert(t.name());
  }
  if (gp.sparse_initializer_size()) return unsupported(in + "sparse initializers are not supported");
  for (const auto& vi : gp.input()) {
    if (init_names.count(vi.name())) continue;  // old IR: initializers are also listed as inputs
    lf->sources.inputs.push_back(vi.name());
    lf->graph_inputs.push_back(&vi);
  }
  for (const auto& vi : gp.output()) lf->sources.outputs.push_back(vi.name());
  auto order = check_and_sort(lf->flat, lf->sources, path);
  if (!order) return order.status();
  lf->order = std::move(*order);
  return Status::ok();
}

Expected<std::map<std::string, Tensor>> load_initializers(const LoadedFile& lf, const TensorSource& src) {
  std::map<std::string, Tensor> inits;
  for (const auto& t : lf.proto->graph().initializer()) {
    auto tensor = tensor_from_proto(t, src);
    if (!tensor) return tensor.status();
    inits[t.name()] = *tensor;
  }
  return inits;
}

Status load_file(const std::string& path, LoadedFile* lf) {
  GV_RETURN_IF_ERROR(read_model_proto(path, &lf->owned));
  lf->proto = &lf->owned;
  return load_model(path, lf);
}

Expected<ImportedModel> import_loaded(LoadedFile& lf, const ImportOptions& options, const std::string& path,
                                      const std::string& base_dir);

}  // namespace

Expected<std::set<std::string>> onnx_parameter_names(const std::string& path, bool tie_weights) {
  LoadedFile lf;
  GV_RETURN_IF_ERROR(load_file(path, &lf));
  GV_ASSIGN_OR_RETURN(auto inits, load_initializers(lf, TensorSource{dir_of(path), path}));
  std::set<std::string> params = classify_parameters(lf.flat, lf.order, inits, lf.sources.outputs);
  if (tie_weights) {
    for (const auto& kv : find_tied_parameters(lf.flat, inits, params, lf.sources.initializers)) params.erase(kv.first);
  }
  return params;
}

Expected<ImportedModel> import_onnx(const std::string& path, const ImportOptions& options) {
  LoadedFile lf;
  GV_RETURN_IF_ERROR(load_file(path, &lf));
  return import_loaded(lf, options, path, dir_of(path));
}

Expected<ImportedModel> import_onnx_model(const onnx::ModelProto& proto, const ImportOptions& options,
                                          const std::string& base_dir, const std::string& name) {
  LoadedFile lf;
  lf.proto = &proto;
  GV_RETURN_IF_ERROR(load_model(name, &lf));
  return import_loaded(lf, options, name, base_dir);
}

namespace {

Expected<ImportedModel> import_loaded(LoadedFile& lf, const ImportOptions& options, const std::string& path,
                                      const std::string& base_dir) {
  const std::string in = "'" + path + "': ";
  ImportedModel model;
  model.path = path;
  model.ir_version = lf.proto->ir_version();
  model.producer =
      lf.proto->producer_name() + (lf.proto->producer_version().empty() ? "" : " " + lf.proto->producer_version());
  model.opsets = lf.opsets;
  model.onnx_node_count = static_cast<int64_t>(lf.flat.size());
  const std::vector<FlatNode>& flat = lf.flat;
  const std::vector<int>& order = lf.order;
  const GraphSources& sources = lf.sources;

  // Unsupported ops, all of them, before anything is built.
  const OpRegistry& reg = OpRegistry::global();
  int first_unsupported = -1;
  std::set<std::string> unsupported_types;
  for (int i : order) {
    const FlatNode& n = flat[i];
    if (n.domain.empty() && n.opset == 0) {
      return corrupt(in + "node '" + n.proto.name() + "' (" + n.proto.op_type() +
                     ") is in the default ONNX domain, but the model imports no opset for it (the file may be "
                     "truncated)");
    }
    bool ok = !has_graph_attribute(n.proto) &&
              (handled_by_importer(n, options.fold_constants) ||
               (n.opset > 0 && reg.find(n.domain, n.proto.op_type()) != nullptr));
    if (ok) continue;
    model.unsupported_ops.push_back(n.proto.op_type() + " (" + domain_label(n.domain) + ", opset " +
                                    std::to_string(n.opset) + ") at node '" + n.proto.name() + "'");
    unsupported_types.insert(domain_label(n.domain) + "::" + n.proto.op_type());
    if (first_unsupported < 0) first_unsupported = i;
  }
  if (first_unsupported >= 0 && !options.allow_unsupported) {
    const FlatNode& n = flat[first_unsupported];
    std::string why = has_graph_attribute(n.proto) ? "control flow ops with subgraphs are not supported"
                      : n.opset == 0 ? "the model imports no opset for domain '" + n.domain + "'"
                                     : "op is not supported";
    std::string all;
    for (const auto& t : unsupported_types) all += (all.empty() ? "" : ", ") + t;
    return unsupported(in + "node '" + n.proto.name() + "' (" + n.proto.op_type() + ", domain " +
                       domain_label(n.domain) + ", opset " + std::to_string(n.opset) + "): " + why +
                       ". Supported ops: " + reg.supported_list() + ". The model uses " +
                       std::to_string(unsupported_types.size()) + " unsupported op type(s): " + all);
  }

  // Initializers.
  const TensorSource src{base_dir, path};
  GV_ASSIGN_OR_RETURN(auto inits, load_initializers(lf, src));
  // The weights now live in `inits`: drop the file's copy.
  if (lf.proto == &lf.owned) lf.owned.mutable_graph()->clear_initializer();
  // Inputs bound to fixed values behave like constant initializers from here on.
  for (const auto& [name, t] : options.constant_inputs) {
    bool is_input = std::find(sources.inputs.begin(), sources.inputs.end(), name) != sources.inputs.end();
    if (!is_input) return invalid_argument(in + "constant_inputs names '" + name + "', which is not a graph input");
  }
  std::set<std::string> bound_inputs;
  for (const auto& kv : options.constant_inputs) bound_inputs.insert(kv.first);
  std::set<std::string> params = classify_parameters(flat, order, inits, sources.outputs, bound_inputs);
  // Tied weights stored twice: the copy will read the parameter through a Transpose / Identity node.
  const int default_opset = model.opsets.count("") ? model.opsets.at("") : kMaxOpset;
  if (options.tie_weights) {
    for (const auto& [copy, tie] : find_tied_parameters(flat, inits, params, sources.initializers)) {
      if (reg.find("", tie.transposed ? "Transpose" : "Identity")) model.tied_parameters[copy] = tie;
    }
  }

  // Build.
  Graph& g = model.graph;
  for (const auto& [d, v] : model.opsets) g.opsets[d] = v;
  for (const onnx::ValueInfoProto* vi : lf.graph_inputs) {
    const std::string what = in + "graph input '" + vi->name() + "'";
    if (!vi->type().has_tensor_type()) {
      return unsupported(what + " is not a tensor (sequence, map and optional inputs are not supported)");
    }
    GV_ASSIGN_OR_RETURN(DType dtype, dtype_from_proto(vi->type().tensor_type().elem_type(), what));
    auto bound = options.constant_inputs.find(vi->name());
    if (bound != options.constant_inputs.end()) {
      if (bound->second.dtype() != dtype) {
        return invalid_argument(what + " is " + dtype_name(dtype) + ", the value bound to it is " +
                                dtype_name(bound->second.dtype()));
      }
      g.add_initializer(vi->name(), bound->second, ValueKind::kConstant);
      continue;
    }
    GV_ASSIGN_OR_RETURN(Shape shape, specialize_input(*vi, options, path));
    g.add_input(vi->name(), dtype, shape);
  }
  for (const std::string& name : sources.initializers) {
    if (model.tied_parameters.count(name)) continue;
    g.add_initializer(name, inits[name], params.count(name) ? ValueKind::kParameter : ValueKind::kConstant);
  }
  inits.clear();
  // A tied copy is materialized just before its first reader, so that node order follows the graph's flow (the
  // head's Transpose of the embedding sits in the head, not before the embedding).
  std::set<std::string> pending_ties;
  for (const auto& kv : model.tied_parameters) pending_ties.insert(kv.first);
  auto materialize_tie = [&](const std::string& name) -> Status {
    if (!pending_ties.erase(name)) return Status::ok();
    const TiedParameter& tie = model.tied_parameters.at(name);
    Node node;
    node.name = g.unique_name("tie/" + name);
    node.op_type = tie.transposed ? "Transpose" : "Identity";
    node.opset = default_opset;
    if (tie.transposed) node.attrs.set_ints("perm", {1, 0});
    node.inputs = {g.find(tie.parameter)};
    return add_or_fold_node(g, std::move(node), {name}, false)
        .with_context(in + "tying '" + name + "' to '" + tie.parameter + "'");
  };

  FoldStats stats;
  for (int i : order) {
    const FlatNode& fn = flat[i];
    const onnx::NodeProto& np = fn.proto;
    if (i == first_unsupported) {  // allow_unsupported: return what was built so far
      model.partial = true;
      break;
    }
    Node node;
    node.name = np.name();
    node.op_type = np.op_type();
    node.domain = fn.domain;
    node.opset = fn.opset;
    auto attrs = attributes_from_proto(np, src);
    if (!attrs) return attrs.status().with_context("'" + path + "'");
    node.attrs = std::move(*attrs);
    if (fn.domain.empty() && np.op_type() == "Constant") {
      auto value = constant_node_value(node);
      if (!value) return value.status().with_context("'" + path + "'");
      if (np.output_size() != 1 || np.output(0).empty()) {
        return corrupt(in + "Constant node '" + np.name() + "' must have exactly one output");
      }
      g.add_initializer(np.output(0), *value, ValueKind::kConstant);
      ++stats.folded;
      continue;
    }
    for (const std::string& name : np.input()) {
      if (name.empty()) {
        node.inputs.push_back(kNoValue);
        continue;
      }
      GV_RETURN_IF_ERROR(materialize_tie(name));
      ValueId v = g.find(name);
      if (v == kNoValue) return internal_error(in + "node '" + np.name() + "': input '" + name + "' was not built");
      node.inputs.push_back(v);
    }
    while (!node.inputs.empty() && node.inputs.back() == kNoValue) node.inputs.pop_back();
    std::vector<std::string> out_names(np.output().begin(), np.output().end());
    while (!out_names.empty() && out_names.back().empty()) out_names.pop_back();
    Status st = add_or_fold_node(g, std::move(node), out_names, options.fold_constants, &stats);
    if (!st.is_ok()) return st.with_context("'" + path + "'");
  }
  model.folded_node_count = stats.folded;

  for (const std::string& name : sources.outputs) {
    if (!model.partial) GV_RETURN_IF_ERROR(materialize_tie(name));
    ValueId v = g.find(name);
    if (v != kNoValue) g.outputs.push_back(v);
  }
  if (model.partial) return model;
  g.prune_dead();
  if (options.detect_layers) detect_layers(g);
  return model;
}

}  // namespace

Expected<Tensor> read_tensor_proto_file(const std::string& path) {
  onnx::TensorProto tp;
  {
    std::ifstream f(path, std::ios::binary);
    if (!f) return not_found("tensor file '" + path + "' does not exist or cannot be read");
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (!tp.ParseFromString(bytes)) {
      return corrupt("cannot parse '" + path + "' as an ONNX TensorProto (the file is truncated or corrupt)");
    }
  }
  return tensor_from_proto(tp, TensorSource{dir_of(path), path});
}

}  // namespace gv

// `galvatron run MODEL.onnx --feeds FEEDS.safetensors --out OUT.safetensors`: one forward pass. The model is
// specialized to the shapes of the feed tensors, run by the Executor, and every graph output written to OUT (through a
// temporary file and a rename: a failed run never leaves a partial OUT).
#include <chrono>
#include <cmath>
#include <iostream>
#include <map>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/onnx_scan.h"
#include "importer/onnx_importer.h"
#include "runtime/backend.h"
#include "runtime/executor.h"
#include "runtime/safetensors.h"

namespace gv::cli {
namespace {

std::string names_of(const std::map<std::string, Tensor>& tensors) {
  std::string s;
  for (const auto& [k, t] : tensors) {
    if (!s.empty()) s += ", ";
    s += k + " (" + dtype_name(t.dtype()) + " " + shape_str(t.shape()) + ")";
  }
  return s.empty() ? "no tensors" : s;
}

// Checks a feed against the input's declared element type and dims.
Status check_feed(const OnnxInput& in, const Tensor& t, const std::string& feeds_path) {
  const std::string where = feeds_path + ": feed '" + in.name + "'";
  DType want = dtype_from_onnx(in.elem_type);
  if (in.elem_type != 0 && want != t.dtype()) {
    return invalid_argument(where + " is " + dtype_name(t.dtype()) + ", the model expects " +
                            onnx_type_name(in.elem_type));
  }
  if (!in.has_shape) return Status::ok();
  bool ok = static_cast<size_t>(t.rank()) == in.dims.size();
  for (size_t i = 0; ok && i < in.dims.size(); ++i) {
    if (in.dims[i].value >= 0 && in.dims[i].value != t.shape()[i]) ok = false;
  }
  if (!ok) {
    return invalid_argument(where + " has shape " + shape_str(t.shape()) + ", the model expects " +
                            declared_shape_str(in));
  }
  return Status::ok();
}

std::string stats_of(const Tensor& t) {
  if (!dtype_is_float(t.dtype()) || t.numel() == 0) return "";
  Tensor f = t.dtype() == DType::kFloat64 ? t : t.cast(DType::kFloat64);
  const double* p = f.data_as<double>();
  double lo = p[0], hi = p[0], sum = 0;
  int64_t nonfinite = 0;
  for (int64_t i = 0; i < f.numel(); ++i) {
    if (!std::isfinite(p[i])) {
      ++nonfinite;
      continue;
    }
    lo = std::min(lo, p[i]);
    hi = std::max(hi, p[i]);
    sum += p[i];
  }
  std::ostringstream os;
  os.precision(6);
  if (t.numel() == 1) {
    os << "value " << p[0];
  } else {
    os << "min " << lo << ", max " << hi << ", mean " << sum / static_cast<double>(f.numel() - nonfinite);
  }
  if (nonfinite) os << ", " << nonfinite << " non-finite";
  return os.str();
}

Status run_run(const ParsedArgs& args, CommandContext& ctx) {
  const std::string& model_path = args.positionals[0];
  GV_RETURN_IF_ERROR(check_device_flag(args, ctx));
  const std::string& feeds_path = args.str("feeds");
  const std::string& out_path = args.str("out");
  ImportOptions opts;
  GV_RETURN_IF_ERROR(parse_dim_flags(args, ctx, &opts.dims));
  // Fail before the work on what can be known up front.
  GV_RETURN_IF_ERROR(check_output_path(out_path, "--out"));
  GV_ASSIGN_OR_RETURN(auto backend, make_backend(args.str("device")));
  GV_ASSIGN_OR_RETURN(OnnxFileInfo file, scan_onnx(model_path));

  auto t0 = std::chrono::steady_clock::now();
  auto feeds_or = read_safetensors(feeds_path);
  if (!feeds_or) return feeds_or.status().with_context("--feeds");
  const std::map<std::string, Tensor>& feeds = *feeds_or;
  for (const OnnxInput& in : file.inputs) {
    auto it = feeds.find(in.name);
    if (it == feeds.end()) {
      return not_found(feeds_path + ": no tensor for graph input '" + in.name + "' (" + onnx_type_name(in.elem_type) +
                       " " + declared_shape_str(in) + "); the file has " + names_of(feeds));
    }
    GV_RETURN_IF_ERROR(check_feed(in, it->second, feeds_path));
    opts.input_shapes[in.name] = it->second.shape();
  }
  ctx.timing("read " + feeds_path, t0);

  t0 = std::chrono::steady_clock::now();
  GV_ASSIGN_OR_RETURN(ImportedModel model, import_onnx(model_path, opts));
  ctx.timing("imported " + model_path + " (" + std::to_string(model.graph.nodes.size()) + " nodes)", t0);
  const Graph& g = model.graph;
  // The importer may drop inputs nothing uses; those left must match the feeds exactly.
  for (ValueId id : g.inputs) {
    const Value& v = g.value(id);
    auto it = feeds.find(v.name);
    if (it == feeds.end()) {
      return not_found(feeds_path + ": no tensor for graph input '" + v.name + "' (" + dtype_name(v.dtype) + " " +
                       shape_str(v.shape) + "); the file has " + names_of(feeds));
    }
    if (it->second.dtype() != v.dtype) {
      return invalid_argument(feeds_path + ": feed '" + v.name + "' is " + dtype_name(it->second.dtype()) +
                              ", the model expects " + dtype_name(v.dtype));
    }
    if (it->second.shape() != v.shape) {
      return invalid_argument(feeds_path + ": feed '" + v.name + "' has shape " + shape_str(it->second.shape()) +
                              ", the imported model expects " + shape_str(v.shape));
    }
  }

  t0 = std::chrono::steady_clock::now();
  GV_ASSIGN_OR_RETURN(auto executor, Executor::create(g, *backend));
  GV_RETURN_IF_ERROR(executor->set_inputs(feeds, feeds_path));
  GV_RETURN_IF_ERROR(executor->run().with_context("forward pass of " + model_path));
  GV_RETURN_IF_ERROR(backend->synchronize());
  ctx.timing("forward on " + backend->name() + " (arena " + human_bytes(executor->arena_bytes()) + ")", t0);

  std::map<std::string, Tensor> outputs;
  for (ValueId id : g.outputs) {
    GV_ASSIGN_OR_RETURN(Tensor t, executor->fetch(id));
    outputs[g.value(id).name] = std::move(t);
  }
  t0 = std::chrono::steady_clock::now();
  GV_RETURN_IF_ERROR(write_safetensors(out_path, outputs, {{"galvatron.command", "run"}, {"galvatron.model", model_path}}));
  ctx.timing("wrote " + out_path, t0);

  std::cout << "wrote " << out_path << "\n";
  size_t width = 0;
  for (const auto& [name, t] : outputs) width = std::max(width, name.size());
  for (const auto& [name, t] : outputs) {
    std::string dt = dtype_name(t.dtype());
    std::cout << "  " << name << std::string(width + 2 - name.size(), ' ') << dt
              << std::string(dt.size() < 9 ? 9 - dt.size() : 1, ' ') << shape_str(t.shape());
    std::string st = stats_of(t);
    if (!st.empty()) std::cout << "  " << st;
    std::cout << "\n";
  }
  return Status::ok();
}

}  // namespace

GV_REGISTER_COMMAND(
    run,
    (Command{
        .spec =
            {
                .name = "run",
                .summary = "Run one forward pass of an ONNX model on inputs from a safetensors file.",
                .description =
                    "Reads the feeds, imports MODEL.onnx specialized to the shapes of the feed tensors named like\n"
                    "the graph inputs (other tensors in the file are ignored), runs the forward pass and writes every\n"
                    "graph output to --out (through a temporary file: a failed run leaves no partial output).",
                .positionals = {{.name = "MODEL.onnx", .help = "The model to run."}},
                .flags =
                    {
                        string_flag("feeds", "FEEDS.safetensors", "",
                                    "safetensors file holding a tensor for each graph input.")
                            .with_required(),
                        string_flag("out", "OUT.safetensors", "", "safetensors file to write the graph outputs to.")
                            .with_required(),
                        device_flag(),
                        dim_flag(),
                    },
                .examples = {"galvatron run gpt2.onnx --feeds batch.safetensors --out logits.safetensors"},
            },
        .run = run_run,
        .order = 20}));

}  // namespace gv::cli

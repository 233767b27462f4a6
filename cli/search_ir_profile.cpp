#include "cli/search_ir_profile.h"

#include <filesystem>
#include <sstream>

#include "importer/onnx_importer.h"

namespace gv::cli {

using namespace gv::partitioner;

Expected<IrMemory> ir_memory_of(const IrModelSource& src, int float_bytes) {
  if (src.onnx_path.empty()) return measure_zoo_memory(src.config, 1, src.seq, float_bytes);
  ImportOptions o;
  o.batch = 1;
  o.seq = src.seq;
  GV_ASSIGN_OR_RETURN(ImportedModel im, import_onnx(src.onnx_path, o));
  IrMemoryOptions mo;
  mo.float_bytes = float_bytes;
  return measure_ir_memory(im.graph, mo);
}

Expected<ForwardTiming> forward_timing_of(const IrModelSource& src, const std::vector<int>& batches, int repeats,
                                          Backend& backend, const std::string& precision,
                                          const std::vector<int>& tp_degrees) {
  std::function<Expected<Graph>(int64_t)> make;
  if (src.onnx_path.empty()) {
    ModelConfig c = src.config;
    c.num_layers = 1;
    make = [c, seq = src.seq](int64_t b) -> Expected<Graph> {
      GV_ASSIGN_OR_RETURN(ImportedModel im, build_and_import(c, b, seq > 0 ? seq : c.seq_length, WeightInit::kNone));
      return std::move(im.graph);
    };
  } else {
    make = [path = src.onnx_path, seq = src.seq](int64_t b) -> Expected<Graph> {
      ImportOptions o;
      o.batch = b;
      o.seq = seq;
      GV_ASSIGN_OR_RETURN(ImportedModel im, import_onnx(path, o));
      // A batch axis fixed in the file keeps its size whatever o.batch asks: timing it "at batch b" would divide one
      // batch's time by b.
      for (ValueId v : im.graph.inputs) {
        const Shape& s = im.graph.value(v).shape;
        if (s.size() >= 2 && s[0] != b) {
          return invalid_argument("'" + path + "': input '" + im.graph.value(v).name + "' has its batch axis fixed at " +
                                  std::to_string(s[0]) + ", so the model cannot be timed at batch " +
                                  std::to_string(b) + "; export it with a dynamic batch axis, or time --profile-batch-"
                                  "sizes " + std::to_string(s[0]) + " only (zoo models: give --model-type/--model-size "
                                  "instead of the file)");
        }
      }
      return std::move(im.graph);
    };
  }
  GV_ASSIGN_OR_RETURN(ForwardTiming t, time_forward(make, batches, repeats, backend, tp_degrees));
  t.precision = precision;
  return t;
}

Expected<std::unique_ptr<Backend>> timing_backend(const std::string& device, const std::string& precision) {
  if (precision != "fp32" && precision != "tf32" && precision != "bf16") {
    return invalid_argument("--precision must be fp32, tf32 or bf16, got '" + precision + "'");
  }
  GV_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, make_backend(device));
  GV_RETURN_IF_ERROR(backend->set_precision(precision));
  return backend;
}

Expected<std::vector<int>> parse_int_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (tok.empty() || tok.find_first_not_of("0123456789") != std::string::npos || std::stoi(tok) <= 0) {
      return invalid_argument("'" + s + "' is not a comma-separated list of positive integers");
    }
    out.push_back(std::stoi(tok));
  }
  if (out.empty()) return invalid_argument("empty list");
  return out;
}

std::string model_name_of_path(const std::string& path) {
  std::filesystem::path p(path);
  if (p.stem() == "model" && p.has_parent_path() && !p.parent_path().filename().empty()) {
    return p.parent_path().filename().string();
  }
  return p.stem().string();
}

}  // namespace gv::cli

// Loading HF weights into a zoo model, writing models (inline or with external data), importing them.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include "models/zoo.h"

namespace gv {
namespace {

namespace fs = std::filesystem;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// HF state-dict entries that are buffers, not parameters.
bool is_hf_buffer(const std::string& name) {
  // cls.predictions.bias is unused by an untied BertForMaskedLM (its decoder has its own bias).
  return name == "cls.predictions.bias" || ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") || ends_with(name, "rotary_emb.inv_freq") ||
         name == "bert.embeddings.position_ids" || name == "bert.embeddings.token_type_ids";
}

int64_t payload_bytes(const onnx::TensorProto& t) {
  if (t.has_raw_data()) return static_cast<int64_t>(t.raw_data().size());
  return static_cast<int64_t>(t.float_data_size()) * 4 + static_cast<int64_t>(t.int64_data_size()) * 8 +
         static_cast<int64_t>(t.int32_data_size()) * 4 + static_cast<int64_t>(t.double_data_size()) * 8;
}

void write_bytes(std::ofstream& out, const onnx::TensorProto& t) {
  if (t.has_raw_data()) {
    out.write(t.raw_data().data(), static_cast<std::streamsize>(t.raw_data().size()));
  } else if (t.float_data_size() > 0) {
    out.write(reinterpret_cast<const char*>(t.float_data().data()), t.float_data_size() * 4);
  } else if (t.int64_data_size() > 0) {
    out.write(reinterpret_cast<const char*>(t.int64_data().data()), t.int64_data_size() * 8);
  } else if (t.double_data_size() > 0) {
    out.write(reinterpret_cast<const char*>(t.double_data().data()), t.double_data_size() * 8);
  }
}

Status serialize_to(const onnx::ModelProto& model, const std::string& path) {
  std::ofstream o(path, std::ios::binary | std::ios::trunc);
  if (!o) return io_error("cannot write '" + path + "'");
  if (!model.SerializeToOstream(&o)) return io_error("cannot serialize the model to '" + path + "'");
  o.close();
  if (!o) return io_error("writing '" + path + "' failed (disk full?)");
  return Status::ok();
}

// A copy of `model` without the initializers' payloads (everything else as is).
onnx::ModelProto copy_without_weights(const onnx::ModelProto& model) {
  onnx::ModelProto out;
  out.set_ir_version(model.ir_version());
  *out.mutable_opset_import() = model.opset_import();
  out.set_producer_name(model.producer_name());
  out.set_producer_version(model.producer_version());
  out.set_domain(model.domain());
  out.set_model_version(model.model_version());
  out.set_doc_string(model.doc_string());
  *out.mutable_metadata_props() = model.metadata_props();
  *out.mutable_training_info() = model.training_info();
  *out.mutable_functions() = model.functions();
  const onnx::GraphProto& g = model.graph();
  onnx::GraphProto* og = out.mutable_graph();
  og->set_name(g.name());
  og->set_doc_string(g.doc_string());
  *og->mutable_node() = g.node();
  *og->mutable_input() = g.input();
  *og->mutable_output() = g.output();
  *og->mutable_value_info() = g.value_info();
  *og->mutable_sparse_initializer() = g.sparse_initializer();
  *og->mutable_quantization_annotation() = g.quantization_annotation();
  for (const auto& t : g.initializer()) {
    onnx::TensorProto* c = og->add_initializer();
    c->set_name(t.name());
    c->set_data_type(t.data_type());
    *c->mutable_dims() = t.dims();
    c->set_doc_string(t.doc_string());
  }
  return out;
}

}  // namespace

Expected<int64_t> set_hf_weights(onnx::ModelProto* model, const std::map<std::string, Tensor>& weights,
                                 bool require_all) {
  auto* g = model->mutable_graph();
  std::unordered_map<std::string, int> index;
  for (int i = 0; i < g->initializer_size(); ++i) index[g->initializer(i).name()] = i;
  auto resolve = [&](const std::string& name) -> int {
    auto it = index.find(name);
    if (it != index.end()) return it->second;
    std::vector<std::string> aliases;
    if (name == "lm_head.weight") aliases = {"transformer.wte.weight", "model.embed_tokens.weight"};
    if (name == "cls.predictions.decoder.weight") aliases = {"bert.embeddings.word_embeddings.weight"};
    if (name == "cls.predictions.decoder.bias") aliases = {"cls.predictions.bias"};
    aliases.push_back("transformer." + name);  // GPT-2 checkpoints on the hub omit the "transformer." prefix
    for (const auto& a : aliases) {
      it = index.find(a);
      if (it != index.end()) return it->second;
    }
    return -1;
  };
  std::vector<bool> covered(static_cast<size_t>(g->initializer_size()), false);
  int64_t set = 0;
  for (const auto& [name, w] : weights) {
    const int i = resolve(name);
    if (i < 0) {
      if (is_hf_buffer(name)) continue;
      return not_found("set_hf_weights: the model '" + g->name() + "' has no parameter named '" + name + "'");
    }
    onnx::TensorProto* t = g->mutable_initializer(i);
    Shape dims(t->dims().begin(), t->dims().end());
    if (w.shape() != dims) {
      return invalid_argument("set_hf_weights: '" + name + "' has shape " + shape_str(w.shape()) + ", the model's '" +
                              t->name() + "' is " + shape_str(dims) +
                              " (the zoo keeps HF's layout: nn.Linear [out, in], GPT-2 Conv1D [in, out])");
    }
    if (!dtype_is_float(w.dtype())) {
      return invalid_argument("set_hf_weights: '" + name + "' is " + dtype_name(w.dtype()) + ", not a float type");
    }
    const int32_t want = t->data_type();
    std::string bytes(static_cast<size_t>(w.numel()) * dtype_size(static_cast<DType>(want)), '\0');
    if (static_cast<int32_t>(w.dtype()) == want) {
      std::memcpy(bytes.data(), w.data(), bytes.size());
    } else {
      convert_elements(w.data(), w.dtype(), bytes.data(), static_cast<DType>(want), w.numel());
    }
    t->clear_float_data();
    t->set_raw_data(std::move(bytes));
    covered[static_cast<size_t>(i)] = true;
    ++set;
  }
  if (require_all) {
    for (int i = 0; i < g->initializer_size(); ++i) {
      if (!covered[static_cast<size_t>(i)]) {
        return not_found("set_hf_weights: no weight given for parameter '" + g->initializer(i).name() + "'");
      }
    }
  }
  return set;
}

Status write_model(const onnx::ModelProto& model, const std::string& path, int64_t inline_limit) {
  int64_t total = 0;
  for (const auto& t : model.graph().initializer()) {
    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      return unsupported("write_model: initializer '" + t.name() + "' already points to external data");
    }
    total += payload_bytes(t);
  }
  const fs::path out(path);
  const std::string tmp_model = path + ".tmp";
  if (total <= inline_limit) {
    Status st = serialize_to(model, tmp_model);
    if (!st.is_ok()) {
      std::remove(tmp_model.c_str());
      return st;
    }
    std::error_code ec;
    fs::rename(tmp_model, out, ec);
    if (ec) {
      std::remove(tmp_model.c_str());
      return io_error("cannot rename '" + tmp_model + "' to '" + path + "': " + ec.message());
    }
    return Status::ok();
  }

  // External data: every initializer's bytes go to `<file name>.data`, each at a 4 KB aligned offset.
  const std::string data_name = out.filename().string() + ".data";
  const fs::path data_path = out.parent_path() / data_name;
  const std::string tmp_data = data_path.string() + ".tmp";
  onnx::ModelProto skeleton = copy_without_weights(model);
  {
    std::ofstream d(tmp_data, std::ios::binary | std::ios::trunc);
    if (!d) return io_error("cannot write '" + tmp_data + "'");
    int64_t offset = 0;
    for (int i = 0; i < model.graph().initializer_size(); ++i) {
      const onnx::TensorProto& t = model.graph().initializer(i);
      const int64_t aligned = (offset + 4095) / 4096 * 4096;
      if (aligned > offset) d.write(std::string(static_cast<size_t>(aligned - offset), '\0').data(), aligned - offset);
      write_bytes(d, t);
      const int64_t len = payload_bytes(t);
      onnx::TensorProto* s = skeleton.mutable_graph()->mutable_initializer(i);
      s->set_data_location(onnx::TensorProto::EXTERNAL);
      auto add = [&](const std::string& k, const std::string& v) {
        auto* e = s->add_external_data();
        e->set_key(k);
        e->set_value(v);
      };
      add("location", data_name);
      add("offset", std::to_string(aligned));
      add("length", std::to_string(len));
      offset = aligned + len;
    }
    d.close();
    if (!d) {
      std::remove(tmp_data.c_str());
      return io_error("writing '" + tmp_data + "' failed (disk full?)");
    }
  }
  Status st = serialize_to(skeleton, tmp_model);
  if (!st.is_ok()) {
    std::remove(tmp_model.c_str());
    std::remove(tmp_data.c_str());
    return st;
  }
  std::error_code ec;
  fs::rename(tmp_data, data_path, ec);
  if (!ec) fs::rename(tmp_model, out, ec);
  if (ec) {
    std::remove(tmp_model.c_str());
    std::remove(tmp_data.c_str());
    return io_error("cannot rename the written model into place at '" + path + "': " + ec.message());
  }
  return Status::ok();
}

Expected<ImportedModel> import_model_proto(const onnx::ModelProto& model, const ImportOptions& options) {
  const std::string name = "zoo:" + model.graph().name();
  auto imported = import_onnx_model(model, options, ".", name);
  if (!imported) return imported.status();
  imported->path = name;
  return imported;
}

Expected<ImportedModel> build_and_import(const ModelConfig& config, int64_t batch, int64_t seq, WeightInit init,
                                         uint64_t seed, ImportOptions options) {
  auto model = build_model(config, batch, seq, init, seed);
  if (!model) return model.status();
  options.batch = batch;
  options.seq = seq;
  return import_model_proto(*model, options);
}

}  // namespace gv

#include "importer/onnx_exporter.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <onnx/onnx_pb.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

namespace gv {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kInlineLimit = int64_t{1800} * 1024 * 1024;  // stay well below protobuf's 2 GB

Status read_model(const std::string& path, onnx::ModelProto* model) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return io_error(path + ": cannot open the source model");
  google::protobuf::io::IstreamInputStream zin(&in);
  google::protobuf::io::CodedInputStream cin(&zin);
  cin.SetTotalBytesLimit(std::numeric_limits<int>::max());
  if (!model->ParseFromCodedStream(&cin)) return corrupt(path + ": not a valid ONNX model");
  return Status::ok();
}

std::string external_key(const onnx::TensorProto& t, const std::string& key) {
  for (const auto& e : t.external_data()) {
    if (e.key() == key) return e.value();
  }
  return "";
}

// Reads an initializer's bytes from its external data file (relative to the source model's folder).
Status read_external(const onnx::TensorProto& t, const fs::path& base, std::string* bytes) {
  std::string loc = external_key(t, "location");
  int64_t offset = std::strtoll(external_key(t, "offset").c_str(), nullptr, 10);
  std::string len_s = external_key(t, "length");
  fs::path file = base / loc;
  std::ifstream in(file, std::ios::binary);
  if (!in) return io_error("cannot open external data '" + file.string() + "' of initializer '" + t.name() + "'");
  in.seekg(0, std::ios::end);
  int64_t size = in.tellg();
  int64_t len = len_s.empty() ? size - offset : std::strtoll(len_s.c_str(), nullptr, 10);
  if (offset < 0 || len < 0 || offset + len > size) return corrupt("external data '" + file.string() + "' is too short for '" + t.name() + "'");
  bytes->resize(static_cast<size_t>(len));
  in.seekg(offset);
  in.read(bytes->data(), len);
  return Status::ok();
}

void set_external(onnx::TensorProto* t, const std::string& location, int64_t offset, int64_t length) {
  t->clear_raw_data();
  t->clear_external_data();
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  auto add = [&](const std::string& k, const std::string& v) {
    auto* e = t->add_external_data();
    e->set_key(k);
    e->set_value(v);
  };
  add("location", location);
  add("offset", std::to_string(offset));
  add("length", std::to_string(length));
}

void clear_payload(onnx::TensorProto* t) {
  t->clear_float_data();
  t->clear_int32_data();
  t->clear_int64_data();
  t->clear_double_data();
  t->clear_uint64_data();
  t->clear_string_data();
  t->clear_raw_data();
  t->clear_external_data();
  t->set_data_location(onnx::TensorProto::DEFAULT);
}

}  // namespace

Status export_onnx_with_weights(const std::string& source_model, const std::string& out_path,
                                const std::map<std::string, Tensor>& weights) {
  onnx::ModelProto model;
  GV_RETURN_IF_ERROR(read_model(source_model, &model));
  const fs::path src_base = fs::path(source_model).parent_path();
  auto* graph = model.mutable_graph();

  // New payload of every initializer: replaced weights, or the original bytes when the source kept them external.
  int64_t total = 0;
  bool any_external = false;
  std::map<int, std::string> payload;
  size_t replaced = 0;
  for (int i = 0; i < graph->initializer_size(); ++i) {
    auto* t = graph->mutable_initializer(i);
    auto it = weights.find(t->name());
    if (it != weights.end()) {
      const Tensor& w = it->second;
      if (static_cast<int>(w.dtype()) != t->data_type()) {
        return invalid_argument("export: weight '" + t->name() + "' is " + dtype_name(w.dtype()) +
                                ", the model's initializer has ONNX type " + std::to_string(t->data_type()));
      }
      Shape dims(t->dims().begin(), t->dims().end());
      if (dims != w.shape()) {
        return invalid_argument("export: weight '" + t->name() + "' has shape " + shape_str(w.shape()) +
                                ", the model's initializer " + shape_str(dims));
      }
      payload[i].assign(static_cast<const char*>(w.data()), w.nbytes());
      ++replaced;
    } else if (t->data_location() == onnx::TensorProto::EXTERNAL) {
      GV_RETURN_IF_ERROR(read_external(*t, src_base, &payload[i]));
    } else {
      continue;
    }
    any_external = any_external || t->data_location() == onnx::TensorProto::EXTERNAL;
    total += static_cast<int64_t>(payload[i].size());
  }
  if (replaced != weights.size()) {
    for (const auto& kv : weights) {
      bool found = false;
      for (const auto& t : graph->initializer()) found = found || t.name() == kv.first;
      if (!found) return not_found("export: the model has no initializer named '" + kv.first + "'");
    }
  }

  const bool external = any_external || total > kInlineLimit;
  const fs::path out(out_path);
  const std::string data_name = out.filename().string() + ".data";
  const fs::path data_path = out.parent_path() / data_name;
  const std::string tmp_data = data_path.string() + ".tmp";
  const std::string tmp_model = out_path + ".tmp";
  if (external) {
    std::ofstream d(tmp_data, std::ios::binary | std::ios::trunc);
    if (!d) return io_error("cannot write '" + tmp_data + "'");
    int64_t offset = 0;
    for (auto& [i, bytes] : payload) {
      auto* t = graph->mutable_initializer(i);
      clear_payload(t);
      // 4 KB alignment lets readers map the file.
      int64_t aligned = (offset + 4095) / 4096 * 4096;
      if (aligned > offset) d.write(std::string(static_cast<size_t>(aligned - offset), '\0').data(), aligned - offset);
      d.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      set_external(t, data_name, aligned, static_cast<int64_t>(bytes.size()));
      offset = aligned + static_cast<int64_t>(bytes.size());
    }
    if (!d.good()) {
      std::remove(tmp_data.c_str());
      return io_error("writing '" + tmp_data + "' failed (disk full?)");
    }
  } else {
    for (auto& [i, bytes] : payload) {
      auto* t = graph->mutable_initializer(i);
      clear_payload(t);
      t->set_raw_data(bytes);
    }
  }
  {
    std::ofstream o(tmp_model, std::ios::binary | std::ios::trunc);
    if (!o || !model.SerializeToOstream(&o)) {
      std::remove(tmp_model.c_str());
      std::remove(tmp_data.c_str());
      return io_error("cannot write '" + tmp_model + "'");
    }
  }
  std::error_code ec;
  if (external) fs::rename(tmp_data, data_path, ec);
  if (!ec) fs::rename(tmp_model, out, ec);
  if (ec) return io_error("cannot rename the exported model into place: " + ec.message());
  return Status::ok();
}

}  // namespace gv

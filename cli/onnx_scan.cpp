#include "cli/onnx_scan.h"

#include <fcntl.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <google/protobuf/wire_format_lite.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

namespace gv::cli {
namespace {

using google::protobuf::io::CodedInputStream;
using google::protobuf::internal::WireFormatLite;

constexpr int kVarint = WireFormatLite::WIRETYPE_VARINT;
constexpr int kBytes = WireFormatLite::WIRETYPE_LENGTH_DELIMITED;

int field_of(uint32_t tag) { return static_cast<int>(WireFormatLite::GetTagFieldNumber(tag)); }
int wire_of(uint32_t tag) { return static_cast<int>(WireFormatLite::GetTagWireType(tag)); }

bool read_string(CodedInputStream& in, std::string* s) {
  uint32_t len = 0;
  return in.ReadVarint32(&len) && in.ReadString(s, static_cast<int>(len));
}

bool read_i64(CodedInputStream& in, int64_t* v) {
  uint64_t u = 0;
  if (!in.ReadVarint64(&u)) return false;
  *v = static_cast<int64_t>(u);
  return true;
}

// Runs `body(tag)` for each field of the length-delimited message at the cursor; body returns false on a parse error
// and must consume the field (or call skip).
template <typename Body>
bool for_each_field_of_submessage(CodedInputStream& in, Body body) {
  uint32_t len = 0;
  if (!in.ReadVarint32(&len)) return false;
  auto limit = in.PushLimit(static_cast<int>(len));
  while (true) {
    uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    if (!body(tag)) return false;
  }
  bool clean = in.ConsumedEntireMessage();
  in.PopLimit(limit);
  return clean;
}

bool skip(CodedInputStream& in, uint32_t tag) { return WireFormatLite::SkipField(&in, tag); }

// TensorShapeProto.Dimension
bool parse_dim(CodedInputStream& in, OnnxDim* d) {
  return for_each_field_of_submessage(in, [&](uint32_t tag) {
    if (field_of(tag) == 1 && wire_of(tag) == kVarint) return read_i64(in, &d->value);
    if (field_of(tag) == 2 && wire_of(tag) == kBytes) return read_string(in, &d->param);
    return skip(in, tag);
  });
}

// ValueInfoProto -> TypeProto -> TypeProto.Tensor -> TensorShapeProto
bool parse_value_info(CodedInputStream& in, OnnxInput* v) {
  return for_each_field_of_submessage(in, [&](uint32_t tag) {
    if (field_of(tag) == 1 && wire_of(tag) == kBytes) return read_string(in, &v->name);
    if (field_of(tag) == 2 && wire_of(tag) == kBytes) {  // type
      return for_each_field_of_submessage(in, [&](uint32_t t2) {
        if (field_of(t2) == 1 && wire_of(t2) == kBytes) {  // tensor_type
          return for_each_field_of_submessage(in, [&](uint32_t t3) {
            if (field_of(t3) == 1 && wire_of(t3) == kVarint) {
              uint32_t e = 0;
              if (!in.ReadVarint32(&e)) return false;
              v->elem_type = static_cast<int32_t>(e);
              return true;
            }
            if (field_of(t3) == 2 && wire_of(t3) == kBytes) {  // shape
              v->has_shape = true;
              return for_each_field_of_submessage(in, [&](uint32_t t4) {
                if (field_of(t4) == 1 && wire_of(t4) == kBytes) {
                  OnnxDim d;
                  if (!parse_dim(in, &d)) return false;
                  v->dims.push_back(std::move(d));
                  return true;
                }
                return skip(in, t4);
              });
            }
            return skip(in, t3);
          });
        }
        return skip(in, t2);
      });
    }
    return skip(in, tag);
  });
}

struct GraphScan {
  std::vector<OnnxInput> inputs;
  std::set<std::string> initializer_names;
  std::vector<std::string> outputs;
  std::map<std::string, int64_t> ops;
  int64_t nodes = 0;
};

bool parse_graph(CodedInputStream& in, GraphScan* g) {
  return for_each_field_of_submessage(in, [&](uint32_t tag) {
    const int f = field_of(tag);
    if (wire_of(tag) != kBytes) return skip(in, tag);
    if (f == 1) {  // node: op_type (4), domain (7)
      std::string op, domain;
      bool ok = for_each_field_of_submessage(in, [&](uint32_t t) {
        if (field_of(t) == 4 && wire_of(t) == kBytes) return read_string(in, &op);
        if (field_of(t) == 7 && wire_of(t) == kBytes) return read_string(in, &domain);
        return skip(in, t);
      });
      if (!ok) return false;
      ++g->nodes;
      ++g->ops[domain.empty() || domain == "ai.onnx" ? op : domain + ":" + op];
      return true;
    }
    if (f == 5) {  // initializer: name (8); the data is skipped
      std::string name;
      bool ok = for_each_field_of_submessage(in, [&](uint32_t t) {
        if (field_of(t) == 8 && wire_of(t) == kBytes) return read_string(in, &name);
        return skip(in, t);
      });
      if (ok) g->initializer_names.insert(name);
      return ok;
    }
    if (f == 11 || f == 12) {  // input, output
      OnnxInput v;
      if (!parse_value_info(in, &v)) return false;
      if (f == 11) g->inputs.push_back(std::move(v));
      else g->outputs.push_back(v.name);
      return true;
    }
    return skip(in, tag);
  });
}

struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

}  // namespace

Expected<OnnxFileInfo> scan_onnx(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return not_found(path + ": no such file");
    return io_error(path + ": cannot open: " + std::strerror(err));
  }
  FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return io_error(path + ": cannot stat: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return invalid_argument(path + ": is a directory, expected an .onnx file");
  if (st.st_size == 0) return corrupt(path + ": empty file, expected an ONNX model");

  google::protobuf::io::FileInputStream file(fd);
  CodedInputStream in(&file);
  OnnxFileInfo info;
  GraphScan graph;
  bool has_graph = false;
  bool ok = true;
  while (ok) {
    uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    const int f = field_of(tag), w = wire_of(tag);
    if (f == 1 && w == kVarint) ok = read_i64(in, &info.ir_version);
    else if (f == 2 && w == kBytes) ok = read_string(in, &info.producer_name);
    else if (f == 3 && w == kBytes) ok = read_string(in, &info.producer_version);
    else if (f == 7 && w == kBytes) {
      has_graph = true;
      ok = parse_graph(in, &graph);
    } else if (f == 8 && w == kBytes) {  // opset_import: domain (1), version (2)
      std::string domain;
      int64_t version = 0;
      ok = for_each_field_of_submessage(in, [&](uint32_t t) {
        if (field_of(t) == 1 && wire_of(t) == kBytes) return read_string(in, &domain);
        if (field_of(t) == 2 && wire_of(t) == kVarint) return read_i64(in, &version);
        return skip(in, t);
      });
      if (domain == "ai.onnx") domain.clear();
      info.opsets[domain] = version;
    } else if (f == 25 && w == kBytes) {
      ++info.local_function_count;
      ok = skip(in, tag);
    } else {
      ok = skip(in, tag);
    }
  }
  if (!ok || file.GetErrno() != 0) {
    if (file.GetErrno() != 0) return io_error(path + ": read failed: " + std::strerror(file.GetErrno()));
    return corrupt(path + ": not an ONNX model (the protobuf does not parse near byte " +
                   std::to_string(in.CurrentPosition()) + ")");
  }
  if (!has_graph || info.ir_version <= 0) {
    return corrupt(path + ": not an ONNX model (" + std::string(!has_graph ? "no graph" : "no IR version") + ")");
  }
  for (auto& v : graph.inputs)
    if (!graph.initializer_names.count(v.name)) info.inputs.push_back(std::move(v));
  info.outputs = std::move(graph.outputs);
  info.op_histogram = std::move(graph.ops);
  info.node_count = graph.nodes;
  info.initializer_count = static_cast<int64_t>(graph.initializer_names.size());
  return info;
}

}  // namespace gv::cli

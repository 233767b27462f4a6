#include "importer/onnx_proto_reader.h"

#include <google/protobuf/io/coded_stream.h>

#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace gv::onnx_import {
namespace fs = std::filesystem;

std::string dir_of(const std::string& path) {
  fs::path p(path);
  std::string d = p.parent_path().string();
  return d.empty() ? "." : d;
}

namespace {

// Reads a whole file; errors name it and say what was wrong.
Status read_file(const std::string& path, const std::string& what, std::string* out) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return not_found(what + " '" + path + "' does not exist");
  if (fs::is_directory(st)) return invalid_argument(what + " '" + path + "' is a directory, not a file");
  std::ifstream f(path, std::ios::binary);
  if (!f) return io_error("cannot open " + what + " '" + path + "' for reading (" + std::strerror(errno) + ")");
  f.seekg(0, std::ios::end);
  std::streamoff size = f.tellg();
  if (size < 0) return io_error("cannot read " + what + " '" + path + "'");
  f.seekg(0, std::ios::beg);
  out->resize(static_cast<size_t>(size));
  if (size > 0 && !f.read(out->data(), size)) return io_error("error while reading " + what + " '" + path + "'");
  return Status::ok();
}

bool checked_numel(const Shape& s, int64_t* n) {
  int64_t r = 1;
  for (int64_t d : s) {
    if (d < 0) return false;
    if (d != 0 && r > (int64_t{1} << 50) / d) return false;
    r *= d;
  }
  *n = r;
  return true;
}

// Copies `count` values of the repeated field into the tensor, converting element by element.
template <typename Src>
Status fill_from_field(const Src* src, int64_t count, Tensor& t, const std::string& what, const char* field) {
  if (count != t.numel()) {
    return corrupt(what + ": " + field + " holds " + std::to_string(count) + " values, the shape " + shape_str(t.shape()) +
                   " needs " + std::to_string(t.numel()));
  }
  for (int64_t i = 0; i < count; ++i) {
    switch (t.dtype()) {
      case DType::kFloat32: t.data_as<float>()[i] = static_cast<float>(src[i]); break;
      case DType::kFloat64: t.data_as<double>()[i] = static_cast<double>(src[i]); break;
      case DType::kInt64: t.data_as<int64_t>()[i] = static_cast<int64_t>(src[i]); break;
      case DType::kInt32: t.data_as<int32_t>()[i] = static_cast<int32_t>(src[i]); break;
      case DType::kInt8: t.data_as<int8_t>()[i] = static_cast<int8_t>(src[i]); break;
      case DType::kUInt8: t.data_as<uint8_t>()[i] = static_cast<uint8_t>(src[i]); break;
      case DType::kBool: t.data_as<uint8_t>()[i] = src[i] != 0 ? 1 : 0; break;
      // float16 / bfloat16 in int32_data: the low 16 bits are the value's bit pattern.
      case DType::kFloat16:
      case DType::kBFloat16: t.data_as<uint16_t>()[i] = static_cast<uint16_t>(static_cast<int64_t>(src[i]) & 0xffff); break;
      default: return internal_error(what + ": unexpected dtype");
    }
  }
  return Status::ok();
}

struct ExternalRange {
  std::string file;
  int64_t offset = 0;
  int64_t length = 0;
};

// Validates a tensor's external data reference: keys, location inside the model's directory, the file's existence
// and size.
Expected<ExternalRange> check_external(const onnx::TensorProto& tp, const TensorSource& src, const std::string& what,
                                       size_t nbytes) {
  std::string location;
  int64_t offset = 0, length = -1;
  for (const auto& kv : tp.external_data()) {
    try {
      if (kv.key() == "location") location = kv.value();
      else if (kv.key() == "offset") offset = std::stoll(kv.value());
      else if (kv.key() == "length") length = std::stoll(kv.value());
    } catch (const std::exception&) {
      return corrupt(what + ": external data key '" + kv.key() + "' has the non-numeric value '" + kv.value() + "'");
    }
  }
  if (location.empty()) return corrupt(what + ": stored as external data but has no 'location' key");
  fs::path loc(location);
  if (loc.is_absolute()) {
    return invalid_argument(what + ": external data location '" + location +
                            "' is an absolute path; ONNX requires a path relative to the model's directory");
  }
  for (const auto& part : loc) {
    if (part == "..") {
      return invalid_argument(what + ": external data location '" + location + "' leaves the model's directory");
    }
  }
  ExternalRange r;
  r.file = (fs::path(src.base_dir) / loc).string();
  r.offset = offset;
  r.length = static_cast<int64_t>(nbytes);
  if (offset < 0) return corrupt(what + ": negative external data offset " + std::to_string(offset));
  if (length >= 0 && length != r.length) {
    return corrupt(what + ": external data length " + std::to_string(length) + " does not match its shape (" +
                   std::to_string(nbytes) + " bytes)");
  }
  std::error_code ec;
  if (!fs::exists(r.file, ec)) {
    return not_found(what + " in '" + src.owner + "' refers to the external data file '" + r.file +
                     "', which does not exist (it must be beside the model file)");
  }
  const auto size = fs::file_size(r.file, ec);
  if (ec) return io_error("cannot read external data file '" + r.file + "' of '" + src.owner + "'");
  if (static_cast<int64_t>(size) < offset + r.length) {
    return corrupt("external data file '" + r.file + "' has " + std::to_string(size) + " bytes, but " + what + " of '" +
                   src.owner + "' needs bytes [" + std::to_string(offset) + ", " + std::to_string(offset + r.length) +
                   ") (the file is truncated or does not belong to this model)");
  }
  return r;
}

Status read_external(const ExternalRange& r, const TensorSource& src, const std::string& what, Tensor& t) {
  std::ifstream f(r.file, std::ios::binary);
  if (!f) return io_error("cannot open external data file '" + r.file + "' of '" + src.owner + "'");
  f.seekg(r.offset, std::ios::beg);
  if (r.length > 0 && !f.read(static_cast<char*>(t.data()), r.length)) {
    return io_error("error while reading " + what + " from external data file '" + r.file + "' of '" + src.owner + "'");
  }
  return Status::ok();
}

}  // namespace

std::string onnx_type_name(int32_t onnx_type) {
  if (onnx::TensorProto_DataType_IsValid(onnx_type)) {
    return onnx::TensorProto_DataType_Name(static_cast<onnx::TensorProto_DataType>(onnx_type));
  }
  switch (onnx_type) {  // types newer than the protobuf definitions installed here
    case 17: return "FLOAT8E4M3FN";
    case 18: return "FLOAT8E4M3FNUZ";
    case 19: return "FLOAT8E5M2";
    case 20: return "FLOAT8E5M2FNUZ";
    case 21: return "UINT4";
    case 22: return "INT4";
    case 23: return "FLOAT4E2M1";
    default: return "type " + std::to_string(onnx_type);
  }
}

Expected<DType> dtype_from_proto(int32_t onnx_type, const std::string& what) {
  DType d = dtype_from_onnx(onnx_type);
  if (d == DType::kUndefined) {
    return unsupported(what + " has element type " + onnx_type_name(onnx_type) +
                       ", which is not supported (supported: float32, float16, bfloat16, float64, int64, int32, int8, "
                       "uint8, bool)");
  }
  return d;
}

Status read_model_proto(const std::string& path, onnx::ModelProto* model) {
  std::string bytes;
  GV_RETURN_IF_ERROR(read_file(path, "model file", &bytes));
  if (bytes.empty()) return corrupt("model file '" + path + "' is empty");
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return unsupported("model file '" + path + "' is larger than 2 GB; ONNX files this large must store their weights "
                       "as external data");
  }
  google::protobuf::io::CodedInputStream cis(reinterpret_cast<const uint8_t*>(bytes.data()),
                                             static_cast<int>(bytes.size()));
  cis.SetTotalBytesLimit(INT_MAX);
  cis.SetRecursionLimit(256);
  if (!model->ParseFromCodedStream(&cis) || !cis.ConsumedEntireMessage()) {
    return corrupt("cannot parse '" + path + "' as an ONNX model: the protobuf data is invalid (the file is truncated, "
                   "corrupt, or not an ONNX file)");
  }
  if (!model->has_graph()) {
    return corrupt("'" + path + "' is not an ONNX model: it has no graph (the file is truncated or not an ONNX file)");
  }
  if (model->ir_version() <= 0) {
    return corrupt("'" + path + "' is not an ONNX model: it has no ir_version (the file is truncated or not an ONNX file)");
  }
  return Status::ok();
}

Expected<Tensor> tensor_from_proto(const onnx::TensorProto& tp, const TensorSource& src) {
  const std::string what = "tensor '" + tp.name() + "'";
  if (tp.has_segment()) return unsupported(what + " in '" + src.owner + "' is segmented, which is not supported");
  GV_ASSIGN_OR_RETURN(DType dtype, dtype_from_proto(tp.data_type(), what + " in '" + src.owner + "'"));
  Shape shape(tp.dims().begin(), tp.dims().end());
  int64_t numel = 0;
  if (!checked_numel(shape, &numel)) {
    return corrupt(what + " in '" + src.owner + "' has an invalid shape " + shape_str(shape));
  }
  const size_t nbytes = static_cast<size_t>(numel) * dtype_size(dtype);
  const std::string where = what + " in '" + src.owner + "'";
  // Sizes are checked against the data actually present before anything is allocated: a corrupt header cannot make
  // the reader allocate more than the file holds.
  // zero: false where every byte is written next (raw data, external data).
  auto allocate = [&](bool zero = true) -> Expected<Tensor> {
    try {
      return zero ? Tensor(dtype, shape) : Tensor::uninitialized(dtype, shape);
    } catch (const std::bad_alloc&) {
      return Status(StatusCode::kOutOfMemory,
                    where + ": cannot allocate " + std::to_string(nbytes) + " bytes for " + shape_str(shape));
    }
  };

  if (tp.data_location() == onnx::TensorProto_DataLocation_EXTERNAL) {
    GV_ASSIGN_OR_RETURN(ExternalRange range, check_external(tp, src, what, nbytes));
    GV_ASSIGN_OR_RETURN(Tensor t, allocate());
    GV_RETURN_IF_ERROR(read_external(range, src, what, t));
    return t;
  }
  if (tp.has_raw_data()) {
    if (tp.raw_data().size() != nbytes) {
      return corrupt(where + ": raw_data has " + std::to_string(tp.raw_data().size()) + " bytes, its " +
                     dtype_name(dtype) + " " + shape_str(shape) + " shape needs " + std::to_string(nbytes));
    }
    GV_ASSIGN_OR_RETURN(Tensor t, allocate(false));
    if (nbytes) std::memcpy(t.data(), tp.raw_data().data(), nbytes);
    if (dtype == DType::kBool) {
      for (int64_t i = 0; i < numel; ++i) t.data_as<uint8_t>()[i] = t.data_as<uint8_t>()[i] ? 1 : 0;
    }
    return t;
  }
  if (numel == 0) return allocate();
  // The typed repeated field that holds this dtype.
  int64_t count = 0;
  const char* field = "";
  switch (dtype) {
    case DType::kFloat32: count = tp.float_data_size(); field = "float_data"; break;
    case DType::kFloat64: count = tp.double_data_size(); field = "double_data"; break;
    case DType::kInt64: count = tp.int64_data_size(); field = "int64_data"; break;
    default: count = tp.int32_data_size(); field = "int32_data"; break;
  }
  if (count == 0) return corrupt(where + " (" + dtype_name(dtype) + " " + shape_str(shape) + ") holds no data");
  if (count != numel) {
    return corrupt(where + ": " + field + " holds " + std::to_string(count) + " values, the shape " + shape_str(shape) +
                   " needs " + std::to_string(numel));
  }
  GV_ASSIGN_OR_RETURN(Tensor t, allocate());
  switch (dtype) {
    case DType::kFloat32: GV_RETURN_IF_ERROR(fill_from_field(tp.float_data().data(), count, t, where, field)); break;
    case DType::kFloat64: GV_RETURN_IF_ERROR(fill_from_field(tp.double_data().data(), count, t, where, field)); break;
    case DType::kInt64: GV_RETURN_IF_ERROR(fill_from_field(tp.int64_data().data(), count, t, where, field)); break;
    default: GV_RETURN_IF_ERROR(fill_from_field(tp.int32_data().data(), count, t, where, field)); break;
  }
  return t;
}

Expected<Attributes> attributes_from_proto(const onnx::NodeProto& node, const TensorSource& src) {
  Attributes attrs;
  const std::string where = "node '" + node.name() + "' (" + node.op_type() + ")";
  for (const onnx::AttributeProto& a : node.attribute()) {
    if (!a.ref_attr_name().empty()) {
      return corrupt(where + ": attribute '" + a.name() + "' refers to the function attribute '" + a.ref_attr_name() +
                     "' outside of a function");
    }
    auto type = a.type();
    if (type == onnx::AttributeProto_AttributeType_UNDEFINED) {  // very old files: infer it from the set fields
      if (a.has_g() || a.graphs_size()) type = onnx::AttributeProto_AttributeType_GRAPH;
      else if (a.has_t()) type = onnx::AttributeProto_AttributeType_TENSOR;
      else if (a.has_f()) type = onnx::AttributeProto_AttributeType_FLOAT;
      else if (a.has_i()) type = onnx::AttributeProto_AttributeType_INT;
      else if (a.has_s()) type = onnx::AttributeProto_AttributeType_STRING;
      else if (a.floats_size()) type = onnx::AttributeProto_AttributeType_FLOATS;
      else if (a.ints_size()) type = onnx::AttributeProto_AttributeType_INTS;
      else if (a.strings_size()) type = onnx::AttributeProto_AttributeType_STRINGS;
    }
    Attribute out;
    switch (type) {
      case onnx::AttributeProto_AttributeType_INT: out.kind = Attribute::Kind::kInt; out.i = a.i(); break;
      case onnx::AttributeProto_AttributeType_FLOAT:
        out.kind = Attribute::Kind::kFloat;
        out.f = a.f();
        out.d = a.f();
        break;
      case onnx::AttributeProto_AttributeType_STRING: out.kind = Attribute::Kind::kString; out.s = a.s(); break;
      case onnx::AttributeProto_AttributeType_INTS:
        out.kind = Attribute::Kind::kInts;
        out.ints.assign(a.ints().begin(), a.ints().end());
        break;
      case onnx::AttributeProto_AttributeType_FLOATS:
        out.kind = Attribute::Kind::kFloats;
        out.floats.assign(a.floats().begin(), a.floats().end());
        break;
      case onnx::AttributeProto_AttributeType_STRINGS:
        out.kind = Attribute::Kind::kStrings;
        out.strings.assign(a.strings().begin(), a.strings().end());
        break;
      case onnx::AttributeProto_AttributeType_TENSOR: {
        out.kind = Attribute::Kind::kTensor;
        auto t = tensor_from_proto(a.t(), src);
        if (!t) return t.status().with_context(where + ", attribute '" + a.name() + "'");
        out.t = *t;
        break;
      }
      case onnx::AttributeProto_AttributeType_GRAPH:
      case onnx::AttributeProto_AttributeType_GRAPHS:
        return unsupported(where + ": attribute '" + a.name() +
                           "' holds a subgraph; control flow ops (If, Loop, Scan) are not supported");
      case onnx::AttributeProto_AttributeType_SPARSE_TENSOR:
      case onnx::AttributeProto_AttributeType_SPARSE_TENSORS:
        return unsupported(where + ": attribute '" + a.name() + "' holds a sparse tensor, which is not supported");
      case onnx::AttributeProto_AttributeType_TENSORS:
        return unsupported(where + ": attribute '" + a.name() + "' holds a list of tensors, which is not supported");
      case onnx::AttributeProto_AttributeType_TYPE_PROTO:
      case onnx::AttributeProto_AttributeType_TYPE_PROTOS:
        return unsupported(where + ": attribute '" + a.name() + "' holds a type, which is not supported");
      default:
        return corrupt(where + ": attribute '" + a.name() + "' has an unknown type " + std::to_string(type));
    }
    attrs.set(a.name(), std::move(out));
  }
  return attrs;
}

}  // namespace gv::onnx_import

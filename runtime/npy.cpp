#include "runtime/npy.h"

#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace gv {

static_assert(std::endian::native == std::endian::little, "the .npy and .bin readers assume a little-endian host");

namespace {

constexpr char kMagic[] = "\x93NUMPY";  // 6 bytes

// ---- a tiny reader for the Python dict literal in the header: {'descr': '<f4', 'fortran_order': False,
// 'shape': (2, 3), }

struct DictParser {
  const std::string& s;
  size_t i = 0;
  void skip_ws() {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  }
  bool eat(char c) {
    skip_ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  bool string(std::string* out) {
    skip_ws();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) return false;
    char q = s[i++];
    size_t end = s.find(q, i);
    if (end == std::string::npos) return false;
    *out = s.substr(i, end - i);
    i = end + 1;
    return true;
  }
  bool word(std::string* out) {
    skip_ws();
    size_t b = i;
    while (i < s.size() && std::isalnum(static_cast<unsigned char>(s[i]))) ++i;
    *out = s.substr(b, i - b);
    return i > b;
  }
  bool tuple(Shape* out) {
    if (!eat('(')) return false;
    out->clear();
    while (true) {
      if (eat(')')) return true;
      std::string w;
      if (!word(&w)) return false;
      for (char c : w)
        if (!std::isdigit(static_cast<unsigned char>(c))) return false;
      if (w.size() > 18) return false;
      out->push_back(std::stoll(w));
      if (!eat(',')) return eat(')');
    }
  }
};

struct NpyType {
  char kind;
  size_t itemsize;
  const char* descr;  // the little-endian spelling written by write_npy
  DType read_as;      // the DType read_npy returns (kUndefined: refused)
  DType written_from;
};

// Every numeric dtype the reader understands; the first entry with a given written_from is what write_npy writes.
constexpr NpyType kTypes[] = {
    {'b', 1, "|b1", DType::kBool, DType::kBool},         {'i', 1, "|i1", DType::kInt8, DType::kInt8},
    {'u', 1, "|u1", DType::kUInt8, DType::kUInt8},       {'i', 2, "<i2", DType::kInt32, DType::kUndefined},
    {'u', 2, "<u2", DType::kInt32, DType::kUndefined},   {'i', 4, "<i4", DType::kInt32, DType::kInt32},
    {'u', 4, "<u4", DType::kInt64, DType::kUndefined},   {'i', 8, "<i8", DType::kInt64, DType::kInt64},
    {'f', 2, "<f2", DType::kFloat16, DType::kFloat16},   {'f', 4, "<f4", DType::kFloat32, DType::kFloat32},
    {'f', 8, "<f8", DType::kFloat64, DType::kFloat64},   {'u', 8, "<u8", DType::kUndefined, DType::kUndefined},
};

const NpyType* find_type(char kind, size_t itemsize) {
  for (const NpyType& t : kTypes)
    if (t.kind == kind && t.itemsize == itemsize) return &t;
  return nullptr;
}

}  // namespace

Expected<std::vector<uint8_t>> read_file_bytes(const std::string& path) {
  std::error_code ec;
  auto st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) return not_found(path + ": no such file; check the path");
  if (std::filesystem::is_directory(st)) return invalid_argument(path + ": is a directory, expected a file");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return io_error(path + ": cannot open: " + std::strerror(errno));
  std::vector<uint8_t> bytes;
  if (std::fseek(f, 0, SEEK_END) == 0) {
    long n = std::ftell(f);
    if (n > 0) bytes.resize(static_cast<size_t>(n));
    std::fseek(f, 0, SEEK_SET);
  }
  size_t got = bytes.empty() ? 0 : std::fread(bytes.data(), 1, bytes.size(), f);
  bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed || got != bytes.size()) return io_error(path + ": read failed after " + std::to_string(got) + " bytes");
  return bytes;
}

Status write_file_atomic(const std::string& path, const void* data, size_t size) {
  std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return io_error(tmp + ": cannot create: " + std::strerror(errno));
  size_t put = size ? std::fwrite(data, 1, size, f) : 0;
  bool failed = put != size || std::fflush(f) != 0;
  failed = (std::fclose(f) != 0) || failed;
  if (failed) {
    std::remove(tmp.c_str());
    return io_error(tmp + ": write failed (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    return io_error("cannot rename " + tmp + " to " + path + ": " + std::strerror(err));
  }
  return Status::ok();
}

Expected<NpyHeader> parse_npy_header(const uint8_t* data, size_t size, const std::string& path) {
  if (size == 0) return corrupt(path + ": the file is empty");
  if (size < 10 || std::memcmp(data, kMagic, 6) != 0)
    return corrupt(path + ": not a .npy file (no \\x93NUMPY magic); save arrays with numpy.save");
  int major = data[6];
  size_t hlen, pre;
  if (major == 1) {
    hlen = data[8] | (size_t(data[9]) << 8);
    pre = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) return corrupt(path + ": truncated .npy header");
    hlen = data[8] | (size_t(data[9]) << 8) | (size_t(data[10]) << 16) | (size_t(data[11]) << 24);
    pre = 12;
  } else {
    return unsupported(path + ": .npy format version " + std::to_string(major) + " is not supported (1, 2, 3 are)");
  }
  if (pre + hlen > size) return corrupt(path + ": truncated .npy header");
  std::string text(reinterpret_cast<const char*>(data + pre), hlen);

  NpyHeader h;
  h.data_offset = pre + hlen;
  bool have_descr = false, have_order = false, have_shape = false, fortran = false;
  DictParser p{text};
  auto bad = [&] { return corrupt(path + ": malformed .npy header: " + text); };
  if (!p.eat('{')) return bad();
  while (!p.eat('}')) {
    std::string key;
    if (!p.string(&key) || !p.eat(':')) return bad();
    if (key == "descr") {
      if (!p.string(&h.descr)) {
        return unsupported(path + ": structured .npy dtypes are not supported; save a plain numeric array");
      }
      have_descr = true;
    } else if (key == "fortran_order") {
      std::string w;
      if (!p.word(&w) || (w != "True" && w != "False")) return bad();
      fortran = w == "True";
      have_order = true;
    } else if (key == "shape") {
      if (!p.tuple(&h.shape)) return bad();
      have_shape = true;
    } else {
      return bad();
    }
    if (!p.eat(',')) {
      if (!p.eat('}')) return bad();
      break;
    }
  }
  if (!have_descr || !have_order || !have_shape) return bad();
  if (fortran) {
    return unsupported(path + ": the array is in Fortran order; save it in C order (numpy.ascontiguousarray) first");
  }
  const std::string& d = h.descr;
  char order = d.empty() ? 0 : d[0];
  bool digits = d.size() >= 3;
  for (size_t k = 2; k < d.size(); ++k) digits = digits && std::isdigit(static_cast<unsigned char>(d[k]));
  if (!digits || (order != '<' && order != '|' && order != '=' && order != '>')) {
    return unsupported(path + ": .npy dtype '" + d + "' is not supported; use bool, int8/16/32/64, uint8/16/32, "
                       "float16/32/64");
  }
  h.kind = d[1];
  h.itemsize = static_cast<size_t>(std::stoul(d.substr(2)));
  if (order == '>' && h.itemsize > 1) {
    return unsupported(path + ": the array is big-endian ('" + d + "'); convert it with arr.astype(arr.dtype."
                       "newbyteorder('<'))");
  }
  const NpyType* t = find_type(h.kind, h.itemsize);
  if (!t || t->read_as == DType::kUndefined) {
    return unsupported(path + ": .npy dtype '" + d + "' is not supported; use bool, int8/16/32/64, uint8/16/32, "
                       "float16/32/64");
  }
  size_t n = 1;
  for (int64_t dim : h.shape) {
    if (__builtin_mul_overflow(n, static_cast<size_t>(dim), &n)) return bad();
  }
  size_t nbytes;
  if (__builtin_mul_overflow(n, h.itemsize, &nbytes)) return bad();
  if (size - h.data_offset < nbytes) {
    return corrupt(path + ": truncated: shape " + shape_str(h.shape) + " of '" + d + "' needs " +
                   std::to_string(nbytes) + " data bytes but the file has " + std::to_string(size - h.data_offset));
  }
  return h;
}

Expected<Tensor> read_npy(const std::string& path) {
  GV_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, read_file_bytes(path));
  GV_ASSIGN_OR_RETURN(NpyHeader h, parse_npy_header(bytes.data(), bytes.size(), path));
  const NpyType* t = find_type(h.kind, h.itemsize);
  Tensor out(t->read_as, h.shape);
  const uint8_t* src = bytes.data() + h.data_offset;
  int64_t n = h.numel();
  if (h.kind == 'u' && h.itemsize == 2) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, src + 2 * i, 2);
      out.data_as<int32_t>()[i] = v;
    }
  } else if (h.kind == 'i' && h.itemsize == 2) {
    for (int64_t i = 0; i < n; ++i) {
      int16_t v;
      std::memcpy(&v, src + 2 * i, 2);
      out.data_as<int32_t>()[i] = v;
    }
  } else if (h.kind == 'u' && h.itemsize == 4) {
    for (int64_t i = 0; i < n; ++i) {
      uint32_t v;
      std::memcpy(&v, src + 4 * i, 4);
      out.data_as<int64_t>()[i] = v;
    }
  } else {
    if (n) std::memcpy(out.data(), src, out.nbytes());
    if (h.kind == 'b') {
      for (int64_t i = 0; i < n; ++i) out.data_as<uint8_t>()[i] = out.data_as<uint8_t>()[i] ? 1 : 0;
    }
  }
  return out;
}

Status write_npy(const std::string& path, const Tensor& tensor) {
  const NpyType* t = nullptr;
  for (const NpyType& c : kTypes)
    if (c.written_from == tensor.dtype() && tensor.dtype() != DType::kUndefined) {
      t = &c;
      break;
    }
  if (!t) {
    return unsupported(path + ": cannot write a " + std::string(dtype_name(tensor.dtype())) +
                       " tensor as .npy (NumPy has no such dtype); cast it to float32 first");
  }
  std::string shape = "(";
  for (size_t i = 0; i < tensor.shape().size(); ++i) {
    shape += std::to_string(tensor.shape()[i]);
    shape += tensor.shape().size() == 1 ? "," : (i + 1 < tensor.shape().size() ? ", " : "");
  }
  shape += ")";
  std::string header = std::string("{'descr': '") + t->descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad with spaces and a final newline so that the data starts on a 64-byte boundary, as numpy does.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  if (header.size() > 65535) return unsupported(path + ": .npy header too long (rank " +
                                                std::to_string(tensor.rank()) + ")");
  std::vector<uint8_t> bytes(10 + header.size() + tensor.nbytes());
  std::memcpy(bytes.data(), kMagic, 6);
  bytes[6] = 1;
  bytes[7] = 0;
  bytes[8] = static_cast<uint8_t>(header.size() & 0xff);
  bytes[9] = static_cast<uint8_t>(header.size() >> 8);
  std::memcpy(bytes.data() + 10, header.data(), header.size());
  if (tensor.nbytes()) std::memcpy(bytes.data() + 10 + header.size(), tensor.data(), tensor.nbytes());
  return write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace gv

#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <vector>

namespace gv {

static_assert(std::endian::native == std::endian::little, "the safetensors reader assumes a little-endian host");

namespace {

using json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we (a garbage length would otherwise make us
// allocate whatever the first 8 bytes say).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr const char* kMetadataKey = "__metadata__";

std::string errno_text(int err) { return std::strerror(err); }

// An open file descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// Reads exactly `n` bytes at `offset`; fails on a short read.
Status pread_all(int fd, void* dst, uint64_t n, uint64_t offset, const std::string& path) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1ull << 30));
    ssize_t r = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return io_error(path + ": read failed: " + errno_text(errno));
    }
    if (r == 0) return corrupt(path + ": unexpected end of file (truncated?)");
    p += r;
    n -= static_cast<uint64_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return Status::ok();
}

Status write_all(int fd, const void* src, size_t n, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(src);
  while (n > 0) {
    size_t chunk = std::min<size_t>(n, 1ull << 30);
    ssize_t w = ::write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return io_error(path + ": write failed: " + errno_text(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::ok();
}

struct OpenFile {
  std::unique_ptr<Fd> fd;
  uint64_t size = 0;
};

Expected<OpenFile> open_for_reading(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return not_found(path + ": no such file");
    return io_error(path + ": cannot open: " + errno_text(err));
  }
  OpenFile f;
  f.fd = std::make_unique<Fd>(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return io_error(path + ": cannot stat: " + errno_text(errno));
  if (S_ISDIR(st.st_mode)) return invalid_argument(path + ": is a directory, expected a .safetensors file");
  if (!S_ISREG(st.st_mode)) return invalid_argument(path + ": not a regular file");
  f.size = static_cast<uint64_t>(st.st_size);
  return f;
}

std::string json_type(const json& j) { return j.type_name(); }

bool as_u64(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

struct Header {
  std::map<std::string, SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // file offset of the data section
};

// Parses and validates the header of an open file.
Expected<Header> parse_header(int fd, uint64_t file_size, const std::string& path) {
  if (file_size < 8) {
    return corrupt(path + ": not a safetensors file: " + std::to_string(file_size) +
                   " bytes, shorter than the 8-byte header length");
  }
  uint64_t n = 0;
  GV_RETURN_IF_ERROR(pread_all(fd, &n, 8, 0, path));
  if (n > file_size - 8) {
    return corrupt(path + ": not a safetensors file (or truncated): header length " + std::to_string(n) +
                   " exceeds the " + std::to_string(file_size - 8) + " bytes after it");
  }
  if (n > kMaxHeaderBytes) {
    return corrupt(path + ": header length " + std::to_string(n) + " exceeds the 100 MB limit of the format");
  }
  if (n < 2) return corrupt(path + ": header length " + std::to_string(n) + " is too short for a JSON object");
  std::string text(static_cast<size_t>(n), '\0');
  GV_RETURN_IF_ERROR(pread_all(fd, text.data(), n, 8, path));

  // Parse, noting duplicate top-level keys (nlohmann silently keeps the last one).
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, cb);
  } catch (const json::exception& e) {
    return corrupt(path + ": header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) return corrupt(path + ": header is a JSON " + json_type(header) + ", expected an object");
  if (!duplicate.empty()) return corrupt(path + ": header names tensor '" + duplicate + "' twice");

  Header h;
  h.data_start = 8 + n;
  const uint64_t data_size = file_size - h.data_start;
  for (const auto& [name, e] : header.items()) {
    if (name == kMetadataKey) {
      if (!e.is_object()) return corrupt(path + ": __metadata__ is a JSON " + json_type(e) + ", expected an object");
      for (const auto& [k, v] : e.items()) {
        if (!v.is_string()) {
          return corrupt(path + ": __metadata__ entry '" + k + "' is a JSON " + json_type(v) +
                         ", expected a string");
        }
        h.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (!e.is_object()) return corrupt(where + ": entry is a JSON " + json_type(e) + ", expected an object");
    auto dt = e.find("dtype");
    auto sh = e.find("shape");
    auto off = e.find("data_offsets");
    if (dt == e.end() || !dt->is_string()) return corrupt(where + ": missing or non-string \"dtype\"");
    if (sh == e.end() || !sh->is_array()) return corrupt(where + ": missing or non-array \"shape\"");
    if (off == e.end() || !off->is_array() || off->size() != 2) {
      return corrupt(where + ": missing \"data_offsets\" or not an array [begin, end]");
    }
    SafetensorsEntry entry;
    const std::string dts = dt->get<std::string>();
    entry.dtype = dtype_from_safetensors(dts);
    if (entry.dtype == DType::kUndefined) {
      return unsupported(where + ": unsupported dtype '" + dts + "' (supported: F32 F64 F16 BF16 I64 I32 I8 U8 BOOL)");
    }
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      uint64_t v = 0;
      if (!as_u64(d, &v) || v > static_cast<uint64_t>(INT64_MAX)) {
        return corrupt(where + ": shape " + sh->dump() + " must hold non-negative integers");
      }
      if (__builtin_mul_overflow(numel, v, &numel)) return corrupt(where + ": shape " + sh->dump() + " overflows");
      entry.shape.push_back(static_cast<int64_t>(v));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(entry.dtype)), &nbytes) ||
        nbytes > static_cast<uint64_t>(INT64_MAX)) {
      return corrupt(where + ": shape " + sh->dump() + " overflows");
    }
    if (!as_u64((*off)[0], &entry.begin) || !as_u64((*off)[1], &entry.end)) {
      return corrupt(where + ": data_offsets " + off->dump() + " must be two non-negative integers");
    }
    if (entry.begin > entry.end) return corrupt(where + ": data_offsets " + off->dump() + " has begin > end");
    if (entry.end > data_size) {
      return corrupt(where + ": data_offsets " + off->dump() + " run past the data section (" +
                     std::to_string(data_size) + " bytes; file truncated?)");
    }
    if (entry.end - entry.begin != nbytes) {
      return corrupt(where + ": data_offsets " + off->dump() + " hold " + std::to_string(entry.end - entry.begin) +
                     " bytes but " + dts + " " + shape_str(entry.shape) + " needs " + std::to_string(nbytes));
    }
    h.entries.emplace(name, std::move(entry));
  }

  // No two tensors may share bytes.
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> order;
  for (const auto& [name, e] : h.entries)
    if (e.end > e.begin) order.emplace_back(&name, &e);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = order[i - 1];
    const auto& cur = order[i];
    if (cur.second->begin < prev.second->end) {
      return corrupt(path + ": tensors '" + *prev.first + "' [" + std::to_string(prev.second->begin) + ", " +
                     std::to_string(prev.second->end) + ") and '" + *cur.first + "' [" +
                     std::to_string(cur.second->begin) + ", " + std::to_string(cur.second->end) + ") overlap");
    }
  }
  return h;
}

Expected<Header> read_header_of(const std::string& path, OpenFile* file) {
  GV_ASSIGN_OR_RETURN(*file, open_for_reading(path));
  return parse_header(file->fd->fd, file->size, path);
}

bool valid_utf8(const std::string& s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > n) return false;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (int k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += len;
  }
  return true;
}

std::string temp_path_for(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  std::string dir, base;
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) {
    base = path;
  } else {
    dir = path.substr(0, slash + 1);
    base = path.substr(slash + 1);
  }
  std::random_device rd;
  return dir + "." + base + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
         std::to_string(rd() & 0xffffff);
}

}  // namespace

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "F32";
    case DType::kFloat64: return "F64";
    case DType::kFloat16: return "F16";
    case DType::kBFloat16: return "BF16";
    case DType::kInt64: return "I64";
    case DType::kInt32: return "I32";
    case DType::kInt8: return "I8";
    case DType::kUInt8: return "U8";
    case DType::kUInt16:
      return "U16";
    case DType::kBool: return "BOOL";
    case DType::kUndefined: return nullptr;
  }
  return nullptr;
}

DType dtype_from_safetensors(const std::string& s) {
  if (s == "F32") return DType::kFloat32;
  if (s == "F64") return DType::kFloat64;
  if (s == "F16") return DType::kFloat16;
  if (s == "BF16") return DType::kBFloat16;
  if (s == "I64") return DType::kInt64;
  if (s == "I32") return DType::kInt32;
  if (s == "I8") return DType::kInt8;
  if (s == "U8") return DType::kUInt8;
  if (s == "U16") return DType::kUInt16;
  if (s == "BOOL") return DType::kBool;
  return DType::kUndefined;
}

Expected<std::map<std::string, SafetensorsEntry>> read_safetensors_header(const std::string& path) {
  OpenFile file;
  GV_ASSIGN_OR_RETURN(Header h, read_header_of(path, &file));
  return std::move(h.entries);
}

Expected<std::map<std::string, std::string>> read_safetensors_metadata(const std::string& path) {
  OpenFile file;
  GV_ASSIGN_OR_RETURN(Header h, read_header_of(path, &file));
  return std::move(h.metadata);
}

Expected<std::map<std::string, Tensor>> read_safetensors(const std::string& path) {
  OpenFile file;
  GV_ASSIGN_OR_RETURN(Header h, read_header_of(path, &file));
  std::map<std::string, Tensor> out;
  for (const auto& [name, e] : h.entries) {
    Tensor t;
    try {
      t = Tensor(e.dtype, e.shape);
    } catch (const std::bad_alloc&) {
      return Status(StatusCode::kOutOfMemory, path + ": tensor '" + name + "': cannot allocate " +
                                                  std::to_string(e.end - e.begin) + " bytes");
    }
    GV_RETURN_IF_ERROR(pread_all(file.fd->fd, t.data(), e.end - e.begin, h.data_start + e.begin, path)
                           .with_context("tensor '" + name + "'"));
    out.emplace(name, std::move(t));
  }
  return out;
}

Status write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  // Lay tensors out by decreasing element size, so each starts aligned to its element size (the header is padded
  // to a multiple of 8 bytes).
  std::vector<std::pair<const std::string*, const Tensor*>> order;
  for (const auto& [name, t] : tensors) {
    if (name == kMetadataKey) return invalid_argument(path + ": '__metadata__' is reserved and cannot name a tensor");
    if (!valid_utf8(name)) return invalid_argument(path + ": tensor name '" + name + "' is not valid UTF-8");
    if (!t.defined() || !safetensors_dtype_name(t.dtype())) {
      return invalid_argument(path + ": tensor '" + name + "' is undefined (no dtype)");
    }
    if (t.nbytes() > 0 && !t.data()) return invalid_argument(path + ": tensor '" + name + "' has no data");
    order.emplace_back(&name, &t);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second->dtype()) > dtype_size(b.second->dtype());
  });

  json header = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata) {
      if (!valid_utf8(k) || !valid_utf8(v)) {
        return invalid_argument(path + ": metadata entry '" + k + "' is not valid UTF-8");
      }
      m[k] = v;
    }
    header[kMetadataKey] = std::move(m);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    uint64_t nb = t->nbytes();
    header[*name] = {{"dtype", safetensors_dtype_name(t->dtype())},
                     {"shape", t->shape()},
                     {"data_offsets", {offset, offset + nb}}};
    offset += nb;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();

  const std::string tmp = temp_path_for(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return io_error(path + ": cannot create temporary file " + tmp + ": " + errno_text(errno));
  auto fail = [&](Status s) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  Status st = write_all(fd, &n, 8, tmp);
  if (st.is_ok()) st = write_all(fd, text.data(), text.size(), tmp);
  for (size_t i = 0; st.is_ok() && i < order.size(); ++i) {
    st = write_all(fd, order[i].second->data(), order[i].second->nbytes(), tmp);
  }
  if (!st.is_ok()) return fail(st.with_context("while writing " + path));
  if (::fsync(fd) != 0) return fail(io_error(path + ": fsync of " + tmp + " failed: " + errno_text(errno)));
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) return fail(io_error(path + ": close of " + tmp + " failed: " + errno_text(errno)));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return fail(io_error(path + ": cannot rename " + tmp + " to it: " + errno_text(errno)));
  }
  // Make the rename itself durable (best effort: some file systems refuse to fsync a directory).
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return Status::ok();
}

}  // namespace gv

#include "cli/common.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace gv::cli {

std::string one_line(const std::string& message) {
  std::string out;
  out.reserve(message.size());
  for (size_t i = 0; i < message.size(); ++i) {
    char c = message[i];
    if (c == '\r') continue;
    if (c == '\n') {
      while (!out.empty() && out.back() == ' ') out.pop_back();
      if (!out.empty() && i + 1 < message.size()) out += "; ";
      continue;
    }
    out += c;
  }
  while (!out.empty() && (out.back() == ' ' || out.back() == ';')) out.pop_back();
  return out;
}

std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof(buf), "%.1f %s", v, units[u]);
  return buf;
}

std::string onnx_type_name(int32_t elem_type) {
  DType t = dtype_from_onnx(elem_type);
  if (t != DType::kUndefined) return dtype_name(t);
  return "onnx type " + std::to_string(elem_type);
}

std::string declared_shape_str(const OnnxInput& input) {
  if (!input.has_shape) return "(unknown rank)";
  std::string s = "[";
  for (size_t i = 0; i < input.dims.size(); ++i) {
    if (i) s += ",";
    const auto& d = input.dims[i];
    s += d.value >= 0 ? std::to_string(d.value) : (d.param.empty() ? "?" : d.param);
  }
  return s + "]";
}

std::string domain_name(const std::string& domain) { return domain.empty() ? "ai.onnx" : domain; }

FlagSpec dim_flag() {
  return string_flag("dim", "NAME=N", "", "Value of a named symbolic input dimension (e.g. --dim past_len=0).")
      .with_repeated();
}

FlagSpec device_flag() { return string_flag("device", "DEVICE", "cpu", "Where to run: cpu, or cuda (when built with CUDA)."); }

Status check_device_flag(const ParsedArgs& args, CommandContext& ctx) {
  const std::string& d = args.str("device");
  if (d != "cpu" && d != "cuda") return ctx.usage("--device must be cpu or cuda, got '" + d + "'");
  return Status::ok();
}

Status parse_dim_flags(const ParsedArgs& args, CommandContext& ctx, std::map<std::string, int64_t>* dims) {
  for (const std::string& d : args.all("dim")) {
    size_t eq = d.find('=');
    if (eq == std::string::npos || eq == 0) return ctx.usage("--dim expects NAME=VALUE, got '" + d + "'");
    std::string value = d.substr(eq + 1);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || errno != 0 || *end != '\0' || v < 0) {
      return ctx.usage("--dim " + d.substr(0, eq) + ": expected a non-negative integer, got '" + value + "'");
    }
    (*dims)[d.substr(0, eq)] = v;
  }
  return Status::ok();
}

Status check_output_path(const std::string& path, const std::string& flag) {
  if (path.empty()) return invalid_argument(flag + ": empty path");
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return invalid_argument(flag + " " + path + ": is a directory; give a file name");
  }
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  if (::stat(dir.c_str(), &st) != 0) {
    return not_found(flag + " " + path + ": directory " + dir + " does not exist");
  }
  if (!S_ISDIR(st.st_mode)) return invalid_argument(flag + " " + path + ": " + dir + " is not a directory");
  if (::access(dir.c_str(), W_OK) != 0) {
    return io_error(flag + " " + path + ": cannot write to directory " + dir + ": " + std::strerror(errno));
  }
  return Status::ok();
}

}  // namespace gv::cli

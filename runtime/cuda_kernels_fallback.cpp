// The CUDA backend's fallback kernel: host copies of the operands, the CPU kernel, copies back.
#ifdef GALVATRON_HAVE_CUDA
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "runtime/cuda_kernels.h"

namespace gv {
namespace {

std::mutex g_mu;
std::set<std::string>& fallback_set() {
  static auto* s = new std::set<std::string>();
  return *s;
}
// Native kernels that handed a call to the host (a dtype they lack): "domain::op (dtype, ...)".
std::set<std::string>& runtime_fallback_set() {
  static auto* s = new std::set<std::string>();
  return *s;
}

struct HostBuf {
  std::vector<uint64_t> words;  // 8-byte aligned storage
  void* resize(size_t bytes) {
    words.resize(bytes / 8 + 1);
    return words.data();
  }
};

struct Timing {
  std::string name;
  void* start;
  void* stop;
};
// Never destroyed: print_profile runs at exit, after function-local statics constructed later would be gone.
std::vector<Timing>& timings() {
  static auto* t = new std::vector<Timing>();
  return *t;
}

// GALVATRON_CUDA_PROFILE: 1 times each op; 2 also prints a table by operand shapes and kernel notes.
int profile_level() {
  static const int level = [] {
    const char* e = std::getenv("GALVATRON_CUDA_PROFILE");
    if (!e) return 0;
    if (std::strcmp(e, "1") == 0) return 1;
    if (std::strcmp(e, "2") == 0) return 2;
    return 0;
  }();
  return level;
}

// Level 2: one "shapes  note" string per timing.
std::vector<std::string>& details() {
  static auto* d = new std::vector<std::string>();
  return *d;
}

void print_profile() {
  std::map<std::string, std::pair<double, int64_t>> by_op;
  double total = 0;
  for (const Timing& t : timings()) {
    const double ms = t.start && t.stop ? cuda::event_elapsed_ms(t.start, t.stop) : 0.0;
    by_op[t.name].first += ms;
    by_op[t.name].second += 1;
    total += ms;
  }
  std::vector<std::pair<double, std::string>> rows;
  for (const auto& [name, v] : by_op) rows.emplace_back(v.first, name);
  std::sort(rows.rbegin(), rows.rend());
  std::fprintf(stderr, "cuda profile: %.1f ms of kernels over %zu runs\n%-40s %10s %8s %6s\n", total,
               timings().size(), "op", "ms", "calls", "share");
  for (const auto& [ms, name] : rows) {
    std::fprintf(stderr, "%-40s %10.2f %8lld %5.1f%%\n", name.c_str(), ms,
                 static_cast<long long>(by_op[name].second), total > 0 ? 100.0 * ms / total : 0.0);
  }
  if (profile_level() < 2) return;
  // Per op, operand shapes and the kernel's note (products: the route and gemm path): the median per call is the
  // steady-state cost (the first step's one-off costs land in the total only).
  std::map<std::string, std::vector<double>> by_shape;
  for (size_t i = 0; i < timings().size(); ++i) {
    const Timing& t = timings()[i];
    const double ms = t.start && t.stop ? cuda::event_elapsed_ms(t.start, t.stop) : 0.0;
    by_shape[t.name + "  " + details()[i]].push_back(ms);
  }
  std::vector<std::pair<double, std::string>> srows;
  for (auto& [key, v] : by_shape) {
    double sum = 0;
    for (double x : v) sum += x;
    srows.emplace_back(sum, key);
  }
  std::sort(srows.rbegin(), srows.rend());
  std::fprintf(stderr, "\ncuda profile by shape:\n%10s %8s %10s %10s  %s\n", "ms", "calls", "median", "min",
               "op  shapes  note");
  for (const auto& [ms, key] : srows) {
    std::vector<double>& v = by_shape[key];
    std::sort(v.begin(), v.end());
    std::fprintf(stderr, "%10.2f %8zu %10.4f %10.4f  %s\n", ms, v.size(), v[v.size() / 2], v[0], key.c_str());
  }
}

std::string& profile_note() {
  static thread_local std::string note;
  return note;
}

std::string shapes_of(const KernelContext& ctx) {
  std::string s;
  auto one = [&s](const TensorRef& t) {
    s += "[";
    for (size_t d = 0; d < t.shape.size(); ++d) s += (d ? "," : "") + std::to_string(t.shape[d]);
    s += "]";
  };
  for (size_t i = 0; i < ctx.inputs.size(); ++i) {
    if (i) s += " ";
    one(ctx.inputs[i]);
  }
  s += " ->";
  for (const TensorRef& t : ctx.outputs) {
    s += " ";
    one(t);
  }
  return s;
}

}  // namespace

bool cuda_profiling() {
  static const bool on = [] {
    if (profile_level() == 0) return false;
    timings().reserve(1 << 16);
    std::atexit(print_profile);
    return true;
  }();
  return on;
}

Status cuda_profiled_run(const std::string& name, KernelFn k, KernelContext& ctx) {
  if (profile_level() >= 2) profile_note().clear();
  void* a = cuda::event_record();
  Status st = k(ctx);
  void* b = cuda::event_record();
  std::lock_guard<std::mutex> lock(g_mu);
  timings().push_back({name, a, b});
  if (profile_level() >= 2) {
    details().push_back(shapes_of(ctx) + (profile_note().empty() ? "" : "  " + profile_note()));
    profile_note().clear();
  }
  return st;
}

bool cuda_profile_detail() { return cuda_profiling() && profile_level() >= 2; }

void cuda_profile_note(const std::string& note) {
  std::string& n = profile_note();
  if (!n.empty()) n += "; ";
  n += note;
}

void note_cuda_fallback(const OpSchema& schema) {
  const std::string name = schema.domain + "::" + schema.name;
  std::lock_guard<std::mutex> lock(g_mu);
  if (fallback_set().insert(name).second && std::getenv("GALVATRON_VERBOSE")) {
    std::fprintf(stderr, "cuda: no native kernel for %s; it runs on the CPU (host copies of its operands)\n",
                 name.c_str());
  }
}

std::vector<std::string> cuda_fallback_ops() {
  std::lock_guard<std::mutex> lock(g_mu);
  return {fallback_set().begin(), fallback_set().end()};
}

std::vector<std::string> cuda_runtime_fallbacks() {
  std::lock_guard<std::mutex> lock(g_mu);
  return {runtime_fallback_set().begin(), runtime_fallback_set().end()};
}

namespace {
Status fallback_run(KernelContext& ctx);
}

Status cuda_fallback_kernel(KernelContext& ctx) {
  if (cuda_profiling()) return cuda_profiled_run("fallback " + ctx.node->domain + "::" + ctx.node->op_type, fallback_run, ctx);
  return fallback_run(ctx);
}

namespace {
Status fallback_run(KernelContext& ctx) {
  const OpSchema* schema = OpRegistry::global().find(ctx.node->domain, ctx.node->op_type);
  if (!schema || !schema->cpu) return ctx.fail("no CPU kernel to fall back to on CUDA");
  if (schema->cuda) {  // a native kernel without a path for these operands
    std::string types;
    for (const TensorRef& t : ctx.inputs) {
      if (!t.data) continue;
      const std::string d = dtype_name(t.dtype);
      if (types.find(d) == std::string::npos) types += (types.empty() ? "" : ", ") + d;
    }
    std::lock_guard<std::mutex> lock(g_mu);
    runtime_fallback_set().insert(ctx.node->domain + "::" + ctx.node->op_type + " (" + types + ")");
  }
  KernelContext host = ctx;
  const size_t n_in = ctx.inputs.size(), n_out = ctx.outputs.size();
  std::vector<HostBuf> in(n_in), out(n_out);
  std::vector<std::vector<uint8_t>> before(n_in);
  for (size_t i = 0; i < n_in; ++i) {
    const TensorRef& t = ctx.inputs[i];
    if (!t.data) continue;
    const size_t bytes = t.nbytes();
    void* h = in[i].resize(bytes);
    if (bytes && !cuda::memcpy_d2h(h, t.data, bytes)) {
      return ctx.fail(std::string("cuda fallback: copying input to the host: ") + cuda::last_error());
    }
    before[i].assign(static_cast<uint8_t*>(h), static_cast<uint8_t*>(h) + bytes);
    host.inputs[i].data = h;
  }
  for (size_t i = 0; i < n_out; ++i) {
    if (!ctx.outputs[i].data) continue;
    host.outputs[i].data = out[i].resize(ctx.outputs[i].nbytes());
  }
  Status st = schema->cpu(host);
  if (!st.is_ok()) return st;
  // In-place updates first, so that an output sharing memory with a dead input is written last.
  for (size_t i = 0; i < n_in; ++i) {
    if (!ctx.inputs[i].data) continue;
    const size_t bytes = ctx.inputs[i].nbytes();
    if (bytes == 0 || std::memcmp(before[i].data(), host.inputs[i].data, bytes) == 0) continue;
    if (!cuda::memcpy_h2d(ctx.inputs[i].data, host.inputs[i].data, bytes)) {
      return ctx.fail(std::string("cuda fallback: copying an updated input back: ") + cuda::last_error());
    }
  }
  for (size_t i = 0; i < n_out; ++i) {
    const size_t bytes = ctx.outputs[i].nbytes();
    if (!ctx.outputs[i].data || bytes == 0) continue;
    if (!cuda::memcpy_h2d(ctx.outputs[i].data, host.outputs[i].data, bytes)) {
      return ctx.fail(std::string("cuda fallback: copying an output back: ") + cuda::last_error());
    }
  }
  return Status::ok();
}
}  // namespace

}  // namespace gv
#endif

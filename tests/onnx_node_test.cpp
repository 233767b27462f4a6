// ONNX's backend node tests (GV_ONNX_NODE_TESTS_DIR: one folder per test with model.onnx and
// test_data_set_0/{input,output}_N.pb). Every test whose ops are all in the registry is imported with static shapes
// taken from its inputs (the inputs are fed, not constants), run on the CPU with the Executor and compared with the
// expected outputs (numpy allclose: rtol 1e-3, atol 1e-5, NaN equal; integers and bools exact).
//
// Skipped: models below opset 13 (the importer refuses them), tests using an op the registry lacks, and the entries
// of tests/onnx_node_skiplist.txt (deliberately unsupported variants, each with its reason). Every other test must
// pass; failures are listed grouped by op type.
//
// Each test runs in a child process so that a crashing kernel is reported as that test's failure instead of taking
// the whole test binary down.
#include <gtest/gtest.h>
#include <omp.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "importer/onnx_importer.h"
#include "importer/onnx_proto_reader.h"
#include "runtime/executor.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

namespace fs = std::filesystem;

constexpr double kRtol = 1e-3, kAtol = 1e-5;
constexpr int kTimeoutSeconds = 60;

struct SkipList {
  std::map<std::string, std::string> reasons;
  std::vector<std::string> errors;  // malformed entries
};

SkipList read_skiplist(const std::string& path) {
  SkipList s;
  std::ifstream f(path);
  if (!f) {
    s.errors.push_back("cannot read " + path);
    return s;
  }
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    auto trim = [](std::string x) {
      x.erase(0, x.find_first_not_of(" \t\r"));
      x.erase(x.find_last_not_of(" \t\r") + 1);
      return x;
    };
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    size_t hash = line.find(" # ");
    std::string name = trim(line.substr(0, hash));
    std::string reason = hash == std::string::npos ? "" : trim(line.substr(hash + 3));
    if (reason.empty()) {
      s.errors.push_back(path + ":" + std::to_string(lineno) + ": entry '" + name + "' gives no reason (NAME # REASON)");
    } else if (!s.reasons.emplace(name, reason).second) {
      s.errors.push_back(path + ":" + std::to_string(lineno) + ": '" + name + "' is listed twice");
    }
  }
  return s;
}

// Compares one output; returns "" when equal.
std::string compare(const Tensor& got, const Tensor& want, const std::string& what) {
  if (got.dtype() != want.dtype()) {
    return what + ": dtype " + dtype_name(got.dtype()) + ", expected " + dtype_name(want.dtype());
  }
  if (got.shape() != want.shape()) {
    return what + ": shape " + shape_str(got.shape()) + ", expected " + shape_str(want.shape());
  }
  const bool is_float = dtype_is_float(want.dtype());
  int64_t bad = 0, first = -1;
  double worst = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    bool ok;
    if (is_float) {
      const double a = got.scalar_f64(i), b = want.scalar_f64(i);
      if (std::isnan(a) || std::isnan(b)) ok = std::isnan(a) && std::isnan(b);
      else if (std::isinf(a) || std::isinf(b)) ok = a == b;
      else ok = std::fabs(a - b) <= kAtol + kRtol * std::fabs(b);
      if (!ok && !std::isnan(a - b)) worst = std::max(worst, std::fabs(a - b));
    } else {
      ok = got.scalar_i64(i) == want.scalar_i64(i);
    }
    if (!ok) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  if (bad == 0) return "";
  std::ostringstream os;
  os << what << ": " << bad << " of " << want.numel() << " elements differ; first at " << first << ": got "
     << (is_float ? std::to_string(got.scalar_f64(first)) : std::to_string(got.scalar_i64(first))) << ", expected "
     << (is_float ? std::to_string(want.scalar_f64(first)) : std::to_string(want.scalar_i64(first)));
  if (is_float) os << " (max abs diff " << worst << ")";
  return os.str();
}

struct IoSpec {
  std::string name;
  int32_t elem_type = 0;  // declared ONNX element type (0 when not a tensor)
};

// Reads a test's TensorProto file. The ONNX test data of this era stores bfloat16 tensors as UINT16 bit patterns
// (numpy has no bfloat16); those are read as the bfloat16 the model declares.
Expected<Tensor> read_test_tensor(const fs::path& p, int32_t declared) {
  onnx::TensorProto tp;
  std::ifstream f(p, std::ios::binary);
  if (!f || !tp.ParseFromIstream(&f)) return corrupt("cannot parse '" + p.string() + "' as a TensorProto");
  if (declared == onnx::TensorProto_DataType_BFLOAT16 && tp.data_type() == onnx::TensorProto_DataType_UINT16) {
    tp.set_data_type(onnx::TensorProto_DataType_BFLOAT16);
  }
  return onnx_import::tensor_from_proto(tp, onnx_import::TensorSource{p.parent_path().string(), p.string()});
}

// Imports, runs and compares one test. Returns "" on success, else the reason it failed.
// `bound` tells whether integer inputs had to be bound as constants.
std::string run_one(const fs::path& dir, const std::vector<IoSpec>& inputs, const std::vector<IoSpec>& outputs,
                    bool* bound) {
  *bound = false;
  const fs::path data = dir / "test_data_set_0";
  const std::string model_path = (dir / "model.onnx").string();
  std::map<std::string, Tensor> feeds;
  ImportOptions opt;
  opt.detect_layers = false;
  for (size_t i = 0; i < inputs.size(); ++i) {
    fs::path p = data / ("input_" + std::to_string(i) + ".pb");
    if (!fs::exists(p)) break;  // trailing optional inputs left out
    auto t = read_test_tensor(p, inputs[i].elem_type);
    if (!t) return "cannot read " + p.filename().string() + ": " + t.status().message();
    feeds[inputs[i].name] = *t;
    opt.input_shapes[inputs[i].name] = t->shape();
  }
  auto model = import_onnx(model_path, opt);
  if (!model) {
    // Inputs that shape inference must read (Reshape's shape, Expand's shape, Slice's starts, Range's limit...):
    // bind the integer inputs as constants, first without folding (the kernels still run in the executor), then
    // with folding (what depends only on them is evaluated at import, by the same CPU kernels).
    ImportOptions retry = opt;
    for (const auto& [name, t] : feeds) {
      if (dtype_is_integer(t.dtype())) retry.constant_inputs[name] = t;
    }
    if (!retry.constant_inputs.empty()) {
      retry.fold_constants = false;
      auto second = import_onnx(model_path, retry);
      if (!second) {
        retry.fold_constants = true;
        second = import_onnx(model_path, retry);
      }
      if (second) {
        *bound = true;
        model = std::move(second);
        for (const auto& kv : retry.constant_inputs) feeds.erase(kv.first);
      }
    }
    if (!model) return "import: " + model.status().message();
  }
  const Graph& g = model->graph;
  auto backend = make_cpu_backend();
  auto ex = Executor::create(g, *backend);
  if (!ex) return "executor: " + ex.status().message();
  Status st = (*ex)->set_inputs(feeds, "test inputs");
  if (!st.is_ok()) return st.message();
  st = (*ex)->run();
  if (!st.is_ok()) return "run: " + st.message();
  if (g.outputs.size() != outputs.size()) {
    return "graph has " + std::to_string(g.outputs.size()) + " outputs, the model declares " +
           std::to_string(outputs.size());
  }
  std::string failures;
  for (size_t i = 0; i < outputs.size(); ++i) {
    fs::path p = data / ("output_" + std::to_string(i) + ".pb");
    auto want = read_test_tensor(p, outputs[i].elem_type);
    if (!want) return "cannot read " + p.filename().string() + ": " + want.status().message();
    auto got = (*ex)->fetch(g.outputs[i]);
    if (!got) return "fetch: " + got.status().message();
    std::string diff = compare(*got, *want, "output '" + outputs[i].name + "'");
    if (!diff.empty()) failures += (failures.empty() ? "" : "; ") + diff;
  }
  return failures;
}

extern "C" void openblas_set_num_threads(int);

// Runs run_one in a child process; a crash or a hang becomes the test's failure. The child runs single-threaded:
// libgomp's thread pool does not survive fork(), and an OpenMP team started in a child of a process that already
// used one hangs.
std::string run_isolated(const fs::path& dir, const std::vector<IoSpec>& inputs, const std::vector<IoSpec>& outputs,
                         bool* bound) {
  int fds[2];
  if (pipe(fds) != 0) return run_one(dir, inputs, outputs, bound);
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return run_one(dir, inputs, outputs, bound);
  }
  if (pid == 0) {
    close(fds[0]);
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    bool b = false;
    std::string r = run_one(dir, inputs, outputs, &b);
    std::string msg = std::string("R") + (b ? "1" : "0") + r;
    size_t off = 0;
    while (off < msg.size()) {
      ssize_t w = write(fds[1], msg.data() + off, msg.size() - off);
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    close(fds[1]);
    _exit(0);
  }
  close(fds[1]);
  std::string msg;
  char buf[4096];
  bool timed_out = false;
  for (;;) {
    pollfd pfd{fds[0], POLLIN, 0};
    int pr = poll(&pfd, 1, kTimeoutSeconds * 1000);
    if (pr == 0) {
      timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    if (pr < 0) break;
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    msg.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (timed_out) return "timed out after " + std::to_string(kTimeoutSeconds) + " s";
  if (WIFSIGNALED(status)) return std::string("crashed: ") + strsignal(WTERMSIG(status));
  if (msg.size() < 2 || msg[0] != 'R') return "the test process exited without a result";
  *bound = msg[1] == '1';
  return msg.substr(2);
}

TEST(OnnxNodeTests, BackendNodeTests) {
  const fs::path root = GV_ONNX_NODE_TESTS_DIR;
  if (!fs::is_directory(root)) GTEST_SKIP() << "no ONNX node tests at " << root;
  const std::string skip_path = std::string(GV_SOURCE_DIR) + "/tests/onnx_node_skiplist.txt";
  SkipList skip = read_skiplist(skip_path);
  for (const std::string& e : skip.errors) ADD_FAILURE() << e;

  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root)) {
    if (fs::exists(e.path() / "model.onnx")) dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  std::set<std::string> present;
  for (const auto& d : dirs) present.insert(d.filename().string());
  for (const auto& [name, reason] : skip.reasons) {
    if (!present.count(name)) ADD_FAILURE() << skip_path << ": '" << name << "' is not a test in " << root;
  }

  const OpRegistry& reg = OpRegistry::global();
  int passed = 0, passed_bound = 0, skipped_op = 0, skipped_opset = 0, listed = 0;
  std::map<std::string, int> missing_ops;                          // op -> tests skipped for it
  std::map<std::string, std::vector<std::string>> failures_by_op;  // op types of the model -> failures
  std::vector<std::string> failures;
  for (const fs::path& dir : dirs) {
    const std::string name = dir.filename().string();
    if (skip.reasons.count(name)) {
      ++listed;
      continue;
    }
    onnx::ModelProto proto;
    Status st = onnx_import::read_model_proto((dir / "model.onnx").string(), &proto);
    if (!st.is_ok()) {
      failures.push_back(name + ": " + st.message());
      failures_by_op["(unreadable)"].push_back(failures.back());
      continue;
    }
    int opset = 0;
    for (const auto& op : proto.opset_import()) {
      if (op.domain().empty() || op.domain() == "ai.onnx") opset = static_cast<int>(op.version());
    }
    if (opset < kMinOpset) {
      ++skipped_opset;
      continue;
    }
    std::set<std::string> ops, missing;
    for (const auto& n : proto.graph().node()) {
      const std::string domain = n.domain() == "ai.onnx" ? "" : n.domain();
      const std::string label = domain.empty() ? n.op_type() : domain + "::" + n.op_type();
      ops.insert(label);
      const bool importer_op = domain.empty() && (n.op_type() == "Constant");
      if (!importer_op && !reg.find(domain, n.op_type())) missing.insert(label);
    }
    if (!missing.empty()) {
      ++skipped_op;
      for (const auto& m : missing) ++missing_ops[m];
      continue;
    }
    std::set<std::string> init_names;
    for (const auto& t : proto.graph().initializer()) init_names.insert(t.name());
    std::vector<IoSpec> inputs, outputs;
    auto spec = [](const onnx::ValueInfoProto& vi) {
      return IoSpec{vi.name(), vi.type().has_tensor_type() ? vi.type().tensor_type().elem_type() : 0};
    };
    for (const auto& vi : proto.graph().input()) {
      if (!init_names.count(vi.name())) inputs.push_back(spec(vi));
    }
    for (const auto& vi : proto.graph().output()) outputs.push_back(spec(vi));
    bool bound = false;
    std::string r = run_isolated(dir, inputs, outputs, &bound);
    if (r.empty()) {
      ++passed;
      passed_bound += bound;
      continue;
    }
    std::string op_key;
    for (const auto& o : ops) op_key += (op_key.empty() ? "" : "+") + o;
    failures.push_back(name + " [" + op_key + "]: " + r);
    failures_by_op[op_key].push_back(name + ": " + r);
  }
  std::printf("onnx node tests: %d passed, %d skipped (unsupported op), %d on the skip list, %d skipped (opset < %d), "
              "%zu failed\n",
              passed, skipped_op, listed, skipped_opset, kMinOpset, failures.size());
  std::printf("(%d of the passed tests bound their integer inputs as constants: shape inference needs their values)\n",
              passed_bound);
  if (!missing_ops.empty()) {
    std::string m;
    for (const auto& [op, n] : missing_ops) m += " " + op + "(" + std::to_string(n) + ")";
    std::printf("ops missing from the registry (tests skipped):%s\n", m.c_str());
  }
  if (!failures.empty()) {
    std::string report;
    for (const auto& [op, list] : failures_by_op) {
      report += "\n  " + op + ": " + std::to_string(list.size()) + " failed";
      for (const auto& f : list) report += "\n    " + f;
    }
    ADD_FAILURE() << failures.size() << " ONNX node tests failed, by op:" << report;
  }
}

}  // namespace
}  // namespace gv

#include "cli/auto_plan.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/common.h"

namespace gv::cli {
namespace {

namespace fs = std::filesystem;

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string tail_of(const std::string& path, size_t lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += "\n  " + all[i];
  return out;
}

// Runs this binary with `args`, output appended to `log`.
Status run_self(const std::vector<std::string>& args, const std::string& log, const std::string& what) {
  std::error_code ec;
  const std::string exe = fs::read_symlink("/proc/self/exe", ec).string();
  if (ec) return internal_error("cannot find this program's path to run " + what);
  std::string cmd = quote(exe);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " >>" + quote(log) + " 2>&1 </dev/null";
  std::ofstream(log, std::ios::app) << "$ " << cmd << "\n";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) return invalid_argument("--auto: " + what + " failed; its output (" + log + "):" + tail_of(log, 12));
  return Status::ok();
}

double detect_memory_gb(int devices) {
  const double bytes = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  return bytes / (1024.0 * 1024.0 * 1024.0) / std::max(devices, 1);
}

// Batch sizes timed for the search's batch time mode (it fits time = m * batch + c and needs 8 of them): 1 up to the
// largest micro-batch one device can get under a plan (global batch / chunks, data parallelism 1), at least 8 and at
// most 16 (the 1-layer model's logits at 16 x seq rows are the biggest buffer), 8 sizes spread evenly.
std::vector<int> timing_batches(int64_t global_batch, int chunks) {
  const int64_t c = std::max(chunks, 1);
  const int top = static_cast<int>(std::clamp<int64_t>((global_batch + c - 1) / c, 8, 16));
  std::vector<int> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<int>(std::lround(1 + i * (top - 1) / 7.0)));
  return out;
}

std::string join_ints(const std::vector<int>& v) {
  std::string out;
  for (int b : v) {
    if (!out.empty()) out += ',';
    out += std::to_string(b);
  }
  return out;
}

// The zoo flags that make `galvatron profile` build `c` itself (1-layer builds at each batch size it times; a zoo ONNX
// file has its batch fixed, so it cannot be timed at other batch sizes).
std::vector<std::string> zoo_flags(const ModelConfig& c) {
  std::vector<std::string> f = {"--model-type", model_type_name(c.type)};
  const std::string base = c.size.substr(0, c.size.find("-custom"));
  if (c.size != "custom" && zoo_config(model_type_name(c.type), base).has_value()) {
    f.insert(f.end(), {"--model-size", base});
  }
  auto add = [&](const char* flag, int64_t v) {
    if (v > 0) f.insert(f.end(), {flag, std::to_string(v)});
  };
  add("--hidden-size", c.hidden_size);
  add("--num-layers", c.num_layers);
  add("--num-heads", c.num_heads);
  add("--ffn-size", c.ffn_size);
  add("--kv-heads", c.kv_heads);
  add("--seq-length", c.seq_length);
  add("--vocab-size", c.vocab_size);
  return f;
}

// The compute profile for a search on a GPU, timed on this run's device and precision. Zoo models: `galvatron profile`
// (a child process, before this rank's trainer has put anything on the GPU; its CUDA context and buffers go when it
// exits) times a 1-layer build with the real vocabulary at 8 batch sizes, and the search reads them in the batch time
// mode. ONNX models (no 1-layer build): the search times the whole model inline on the device, batch 1, static mode.
// Returns the search's extra flags.
Expected<std::vector<std::string>> gpu_time_profile(const TrainModelSource& source, const AutoPlanRequest& req,
                                                    const std::string& dir, const std::string& log,
                                                    CommandContext& ctx) {
  const std::string prec = req.compute_precision.empty() ? "fp32" : req.compute_precision;
  const std::string where = req.device + " (" + prec + ")";
  if (!source.from_zoo) {
    ctx.note("--auto: search: compute profile timed on " + where + ", 1 batch size (the whole ONNX model, batch 1, "
             "static mode) by the search");
    return std::vector<std::string>{"--device", req.device, "--precision", prec};
  }
  ModelConfig cfg = source.zoo_config;
  cfg.seq_length = source.seq;
  const std::string out = dir + "/compute";
  const std::vector<int> batches = timing_batches(req.global_batch, req.chunks);
  // The layer at each TP degree the plan could use (powers of two up to the devices), so that the search prices TP
  // from measured times rather than Galvatron's TP 1 time / degree.
  std::vector<int> tps;
  for (int k = 2; k <= req.devices; k *= 2) tps.push_back(k);
  std::vector<std::string> pargs = {"profile"};
  for (const std::string& f : zoo_flags(cfg)) pargs.push_back(f);
  pargs.insert(pargs.end(), {"--model-name", "auto", "--mixed-precision", req.precision, "--device", req.device,
                             "--precision", prec, "--profile-batch-sizes", join_ints(batches), "--repeats", "3",
                             "--output-dir", out});
  if (!tps.empty()) pargs.insert(pargs.end(), {"--profile-tp-degrees", join_ints(tps)});
  const auto t0 = std::chrono::steady_clock::now();
  GV_RETURN_IF_ERROR(run_self(pargs, log, "galvatron profile --device " + req.device));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", s);
  ctx.note("--auto: search: compute profile timed on " + where + ", " + std::to_string(batches.size()) +
           " batch sizes (" + join_ints(batches) + ", 1-layer build, " + secs + " s)");
  return std::vector<std::string>{"--time-profiling-path",
                                  out + "/computation_profiling_" + req.precision + "_auto.json",
                                  "--time-profile-mode", "batch"};
}

Expected<std::string> search_on_rank0(const TrainModelSource& source, const AutoPlanRequest& req,
                                      CommandContext& ctx) {
  char tmpl[] = "/tmp/galvatron-auto-XXXXXX";
  if (!mkdtemp(tmpl)) return io_error("--auto: cannot create a scratch folder in /tmp");
  const std::string dir = tmpl;
  const std::string log = dir + "/search.log";
  std::string model = source.onnx_path;
  if (source.from_zoo) {
    // The search reads the model from a file: write the zoo model's graph (no weights needed).
    GV_ASSIGN_OR_RETURN(auto proto, build_model(source.zoo_config, 1, source.seq, WeightInit::kNone));
    model = dir + "/model.onnx";
    GV_RETURN_IF_ERROR(write_model(proto, model));
  }
  const std::string n = std::to_string(req.devices);
  GV_RETURN_IF_ERROR(run_self({"profile", "--hardware", "--num-nodes", "1", "--num-gpus-per-node", n, "--output-dir",
                               dir},
                              log, "galvatron profile --hardware"));
  const double mem = req.memory_gb > 0 ? req.memory_gb : detect_memory_gb(req.devices);
  char mem_s[32];
  std::snprintf(mem_s, sizeof mem_s, "%.3f", mem);
  std::vector<std::string> search = {"search", model, "--seq-length", std::to_string(source.seq),
                                     "--num-nodes", "1", "--num-gpus-per-node", n, "--memory-constraint", mem_s,
                                     "--settle-bsz", std::to_string(req.global_batch),
                                     "--mixed-precision", req.precision, "--default-dp-type",
                                     req.default_dp_type == "zero2" ? "zero2" : "ddp",
                                     "--grad-reduce-dtype", req.grad_reduce_dtype,
                                     "--hardware-profiling-path", dir, "--output-config-path", dir + "/plan.json"};
  if (req.chunks > 0) search.insert(search.end(), {"--settle-chunk", std::to_string(req.chunks)});
  if (req.device != "cpu") {
    GV_ASSIGN_OR_RETURN(std::vector<std::string> timing, gpu_time_profile(source, req, dir, log, ctx));
    search.insert(search.end(), timing.begin(), timing.end());
  } else {
    ctx.note("--auto: search: compute profile timed on the CPU (fp32), batch 1, by the search");
  }
  ctx.note("--auto: searching a plan for " + n + " devices, " + mem_s + " GB each, batch " +
           std::to_string(req.global_batch) + " (log: " + log + ")");
  GV_RETURN_IF_ERROR(run_self(search, log, "galvatron search"));
  ctx.note("--auto: plan written to " + dir + "/plan.json (reuse it with --galvatron-config-path)");
  std::ifstream in(dir + "/plan.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

Expected<partitioner::ParallelPlan> search_plan_for_training(const TrainModelSource& source,
                                                             const AutoPlanRequest& req, Communicator* comm,
                                                             CommandContext& ctx) {
  const bool parallel = comm && comm->size() > 1;
  const bool root = !parallel || comm->rank() == 0;
  std::string text;
  Status st;
  if (root) {
    auto r = search_on_rank0(source, req, ctx);
    if (r) text = *r;
    else st = r.status();
  }
  if (parallel) {
    // Every rank learns the outcome (an empty plan: the search failed on rank 0, which reports why).
    int64_t len = st.is_ok() ? static_cast<int64_t>(text.size()) : -1;
    GV_RETURN_IF_ERROR(comm->broadcast(&len, sizeof len, 0));
    if (len < 0) return root ? st : invalid_argument("--auto: the search failed on rank 0");
    text.resize(static_cast<size_t>(len));
    GV_RETURN_IF_ERROR(comm->broadcast(text.data(), text.size(), 0));
  } else if (!st.is_ok()) {
    return st;
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return corrupt(std::string("--auto: the search wrote an unreadable plan: ") + e.what());
  }
  return partitioner::plan_from_json(j, "the searched plan");
}

}  // namespace gv::cli

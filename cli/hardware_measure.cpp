#include "cli/hardware_measure.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>
#include <vector>

#include "runtime/executor.h"

namespace gv::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A device buffer of `bytes`, released at scope exit.
struct DeviceBuffer {
  Backend& backend;
  void* ptr = nullptr;
  DeviceBuffer(Backend& b, size_t bytes) : backend(b) {
    auto p = b.allocate(std::max<size_t>(bytes, 4));
    if (p) ptr = *p, b.zero(ptr, bytes);
  }
  ~DeviceBuffer() {
    if (ptr) backend.release(ptr);
  }
};

// The slowest rank's median time of `op` (seconds).
Expected<double> time_collective(Communicator& world, Backend& backend, int iters, const std::function<Status()>& op) {
  GV_RETURN_IF_ERROR(op());  // warm-up
  GV_RETURN_IF_ERROR(backend.synchronize());
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    GV_RETURN_IF_ERROR(world.barrier());
    auto t0 = Clock::now();
    GV_RETURN_IF_ERROR(op());
    GV_RETURN_IF_ERROR(backend.synchronize());
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  double med = t[t.size() / 2];
  // The slowest rank decides; the communicator has sum and mean only: gather everyone's time.
  std::vector<double> all(world.size());
  GV_RETURN_IF_ERROR(world.all_gather(&med, all.data(), std::vector<size_t>(world.size(), 1), DType::kFloat64));
  return *std::max_element(all.begin(), all.end());
}

std::vector<int> consecutive_group(int rank, int g) {
  std::vector<int> r;
  for (int j = 0; j < g; ++j) r.push_back(rank / g * g + j);
  return r;
}
std::vector<int> strided_group(int rank, int g, int world) {
  const int stride = world / g;
  std::vector<int> r;
  for (int j = 0; j < g; ++j) r.push_back(rank % stride + j * stride);
  return r;
}

// A square float32 matrix product through the executor (the backend's own MatMul kernel).
struct MatmulProbe {
  Graph graph;
  std::unique_ptr<Executor> ex;
  static Expected<std::unique_ptr<MatmulProbe>> make(Backend& backend, int64_t n) {
    auto p = std::make_unique<MatmulProbe>();
    ValueId a = p->graph.add_input("a", DType::kFloat32, {n, n});
    ValueId b = p->graph.add_input("b", DType::kFloat32, {n, n});
    p->graph.opsets[""] = 17;
    Node mm;
    mm.op_type = "MatMul";
    mm.opset = 17;
    mm.name = "probe";
    mm.inputs = {a, b};
    GV_ASSIGN_OR_RETURN(auto outs, p->graph.add_node(std::move(mm)));
    p->graph.outputs = outs;
    GV_ASSIGN_OR_RETURN(p->ex, Executor::create(p->graph, backend));
    Tensor x(DType::kFloat32, {n, n});
    for (int64_t i = 0; i < n * n; ++i) x.data_as<float>()[i] = static_cast<float>((i % 7) - 3) * 0.01f;
    GV_RETURN_IF_ERROR(p->ex->set_value(a, x));
    GV_RETURN_IF_ERROR(p->ex->set_value(b, x));
    return p;
  }
  Status run(int times) {
    for (int i = 0; i < times; ++i) GV_RETURN_IF_ERROR(ex->run());
    return Status::ok();
  }
};

}  // namespace

Expected<partitioner::MeasuredHardware> measure_hardware(Communicator& world, Backend& backend,
                                                         const HardwareMeasureOptions& o, CommandContext& ctx) {
  const int n = world.size();
  if (n < 2) return invalid_argument("measuring the hardware needs at least 2 devices (--devices N)");
  if (backend.kind() == DeviceKind::kCuda && std::string(world.backend_name()) != "nccl") {
    return unsupported("measuring GPUs needs the NCCL backend (this build's communicator is " +
                       std::string(world.backend_name()) + ")");
  }
  partitioner::MeasuredHardware m;
  m.gpus_per_node = n;
  std::vector<std::vector<int>> groups;
  for (int g = 2; g <= n; g *= 2) {
    for (int r = 0; r < n; ++r) groups.push_back(consecutive_group(r, g)), groups.push_back(strided_group(r, g, n));
  }
  std::sort(groups.begin(), groups.end());
  groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
  GV_RETURN_IF_ERROR(world.prepare_groups(groups));
  const size_t max_bytes = static_cast<size_t>(o.end_mb * 1024 * 1024);
  DeviceBuffer buf(backend, max_bytes), buf2(backend, max_bytes);
  if (!buf.ptr || !buf2.ptr) return internal_error("out of device memory: cannot allocate two buffers of " + std::to_string(o.end_mb) + " MB");

  // All-reduce bus bandwidth: every rank in its group at once, as Galvatron's profiler runs nccl-tests.
  for (int g = 2; g <= n; g *= 2) {
    for (int consec : {1, 0}) {
      if (consec == 0 && g == n) continue;  // the whole world is one layout
      GV_ASSIGN_OR_RETURN(Communicator* c, world.group(consec ? consecutive_group(world.rank(), g)
                                                              : strided_group(world.rank(), g, n)));
      const size_t count = max_bytes / 4;
      GV_ASSIGN_OR_RETURN(double t, time_collective(world, backend, o.iters, [&] {
        return c->all_reduce(buf.ptr, count, DType::kFloat32, ReduceOp::kSum);
      }));
      const double busbw = 2.0 * (g - 1) / g * static_cast<double>(max_bytes) / t / 1e9;
      m.allreduce_gbps["allreduce_size_" + std::to_string(g) + "_consec_" + std::to_string(consec)] = busbw;
      ctx.note("all-reduce, " + std::to_string(g) + " ranks " + (consec ? "consecutive" : "strided") + ": " +
               std::to_string(busbw) + " GB/s bus bandwidth");
    }
  }
  // Pipeline p2p: for p stages, each rank sends to the same position of the next stage (ring) and receives.
  for (int p = 2; p <= n; p *= 2) {
    const int stage = n / p;
    const int next = (world.rank() + stage) % n, prev = (world.rank() - stage + n) % n;
    GV_ASSIGN_OR_RETURN(double t, time_collective(world, backend, o.iters, [&]() -> Status {
      GV_RETURN_IF_ERROR(world.send(buf.ptr, max_bytes, next, 7));
      GV_RETURN_IF_ERROR(world.recv(buf2.ptr, max_bytes, prev, 7));
      return world.wait_sends();
    }));
    m.p2p_gbps["pp_size_" + std::to_string(p)] = static_cast<double>(max_bytes) / t / 1e9;
  }
  // sp_time: all-reduce and all-gather (standing in for all-to-all: the same bytes per rank) over sizes.
  for (int g = 2; g <= n; g *= 2) {
    GV_ASSIGN_OR_RETURN(Communicator* c, world.group(consecutive_group(world.rank(), g)));
    for (double mb = 1; mb <= 1024; mb *= 2) {
      const size_t bytes = static_cast<size_t>(std::min(mb, o.end_mb) * 1024 * 1024);
      const double scale = mb <= o.end_mb ? 1.0 : mb / o.end_mb;  // larger sizes: linear in bytes from the largest
      GV_ASSIGN_OR_RETURN(double ta, time_collective(world, backend, std::max(1, o.iters / 2), [&] {
        return c->all_reduce(buf.ptr, bytes / 4, DType::kFloat32, ReduceOp::kSum);
      }));
      const size_t piece = bytes / g / 4;
      GV_ASSIGN_OR_RETURN(double tg, time_collective(world, backend, std::max(1, o.iters / 2), [&] {
        return c->all_gather(buf.ptr, buf2.ptr, std::vector<size_t>(g, piece), DType::kFloat32);
      }));
      const std::string size = std::to_string(g) + "_" + std::to_string(static_cast<int>(mb)) + "MB_time";
      m.sp_time_ms["allreduce_size_" + size] = ta * 1e3 * scale;
      m.sp_time_ms["all2all_size_" + size] = tg * 1e3 * scale;
      if (mb >= o.end_mb) {
        for (double more = mb * 2; more <= 1024; more *= 2) {
          const std::string s2 = std::to_string(g) + "_" + std::to_string(static_cast<int>(more)) + "MB_time";
          m.sp_time_ms["allreduce_size_" + s2] = ta * 1e3 * more / mb;
          m.sp_time_ms["all2all_size_" + s2] = tg * 1e3 * more / mb;
        }
        break;
      }
    }
  }
  // Overlap: a matrix product and an all-reduce, each alone and then at the same time (the all-reduce from a
  // second thread); the coefficient is the wall time of both over the longer alone, at least 1 (Galvatron's
  // profile_overlap.py takes the larger slowdown of either, which equals it when the two really overlap).
  {
    const int64_t dim = backend.kind() == DeviceKind::kCuda ? 8192 : 512;
    const int reps = backend.kind() == DeviceKind::kCuda ? 20 : 3;
    GV_ASSIGN_OR_RETURN(auto probe, MatmulProbe::make(backend, dim));
    const size_t count = max_bytes / 4;
    auto comm_op = [&] { return world.all_reduce(buf.ptr, count, DType::kFloat32, ReduceOp::kSum); };
    GV_ASSIGN_OR_RETURN(double t_comm, time_collective(world, backend, 3, comm_op));
    GV_ASSIGN_OR_RETURN(double t_comp, time_collective(world, backend, 3, [&] { return probe->run(reps); }));
    GV_RETURN_IF_ERROR(world.barrier());
    double comm_both = 0;
    Status comm_st;
    auto t0 = Clock::now();
    std::thread th([&] {
      auto c0 = Clock::now();
      comm_st = comm_op();
      if (comm_st.is_ok()) comm_st = backend.synchronize();
      comm_both = seconds_since(c0);
    });
    Status comp_st = probe->run(reps);
    if (comp_st.is_ok()) comp_st = backend.synchronize();
    const double comp_both = seconds_since(t0);
    th.join();
    GV_RETURN_IF_ERROR(comm_st);
    GV_RETURN_IF_ERROR(comp_st);
    // Galvatron takes the larger slowdown of either side while both run. Where they cannot run at the same time
    // (this runtime issues NCCL on the compute stream) that ratio only measures waiting; the wall time of both
    // against the longer one alone is the same quantity without it: 1 = perfect overlap, 2 = fully serialised halves.
    const double wall = std::max(comm_both, comp_both);
    double coe = std::max(1.0, wall / std::max(t_comm, t_comp));
    std::vector<double> all(n);
    GV_RETURN_IF_ERROR(world.all_gather(&coe, all.data(), std::vector<size_t>(n, 1), DType::kFloat64));
    m.overlap_coe = *std::max_element(all.begin(), all.end());
  }
  return m;
}

}  // namespace gv::cli

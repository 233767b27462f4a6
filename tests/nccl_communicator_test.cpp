// The NCCL communicator (runtime/nccl_communicator.h) and GPU runs of parallel plans. Label `gpu` (gv_gpu_tests):
// skipped where NCCL is not built or no CUDA device is visible; the multi-GPU runs also need two GPUs and mpirun.
//   - one rank: every communicator call on device buffers, host buffers forwarded, groups, errors;
//   - the gpt2 fixture trained with a plan on one GPU equals the CPU run within float32 tolerance;
//   - on two GPUs (one process each, NCCL bootstrapped through MPI): DDP, ZeRO-2, TP 2 and a 1F1B pipeline equal the
//     one-GPU run that uses the same micro-batches (tests/parallel_equivalence.h).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/device.h"
#include "runtime/communicator.h"
#include "runtime/nccl_communicator.h"
#include "runtime/npy.h"
#include "tests/parallel_equivalence.h"

namespace gv {
namespace {

bool have_gpu_and_nccl() { return nccl_backend_built() && cuda::device_count() > 0; }

// A device buffer of float32 or float64 values.
template <typename T>
struct DeviceBuf {
  void* p = nullptr;
  size_t n = 0;
  explicit DeviceBuf(const std::vector<T>& v) : n(v.size()) {
    EXPECT_TRUE(cuda::malloc_device(&p, std::max<size_t>(1, n) * sizeof(T)));
    if (n) {
      EXPECT_TRUE(cuda::memcpy_h2d(p, v.data(), n * sizeof(T)));
    }
  }
  explicit DeviceBuf(size_t count) : n(count) {
    EXPECT_TRUE(cuda::malloc_device(&p, std::max<size_t>(1, n) * sizeof(T)));
    EXPECT_TRUE(cuda::memset_device(p, std::max<size_t>(1, n) * sizeof(T)));
  }
  ~DeviceBuf() { cuda::free_device(p); }
  std::vector<T> get() const {
    std::vector<T> v(n);
    if (n) {
      EXPECT_TRUE(cuda::memcpy_d2h(v.data(), p, n * sizeof(T)));
    }
    return v;
  }
  T* ptr(size_t off = 0) const { return static_cast<T*>(p) + off; }
};

class NcclOneRank : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_gpu_and_nccl()) GTEST_SKIP() << "NCCL is not built or no CUDA device is visible";
    select_cuda_device_for_local_rank();
    auto c = make_nccl_communicator(make_single_process_communicator());
    ASSERT_TRUE(c.has_value()) << c.status().message();
    comm_ = std::move(*c);
  }
  std::unique_ptr<Communicator> comm_;
};

TEST_F(NcclOneRank, Identity) {
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
  EXPECT_STREQ(comm_->backend_name(), "nccl");
}

TEST_F(NcclOneRank, AllReduceAndBroadcastOnTheDevice) {
  DeviceBuf<float> f({1.5f, -2.0f, 3.25f});
  ASSERT_TRUE(comm_->all_reduce(f.p, 3, DType::kFloat32, ReduceOp::kSum).is_ok());
  EXPECT_EQ(f.get(), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  ASSERT_TRUE(comm_->all_reduce(f.p, 3, DType::kFloat32, ReduceOp::kAvg).is_ok());
  EXPECT_EQ(f.get(), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  DeviceBuf<double> d({0.125, 7.0});
  ASSERT_TRUE(comm_->all_reduce(d.p, 2, DType::kFloat64, ReduceOp::kAvg).is_ok());
  EXPECT_EQ(d.get(), (std::vector<double>{0.125, 7.0}));
  EXPECT_FALSE(comm_->all_reduce(d.p, 2, DType::kInt64, ReduceOp::kSum).is_ok());
  ASSERT_TRUE(comm_->all_reduce(f.p, 0, DType::kFloat32, ReduceOp::kSum).is_ok());
  ASSERT_TRUE(comm_->broadcast(f.p, 12, 0).is_ok());
  EXPECT_EQ(f.get(), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  EXPECT_FALSE(comm_->broadcast(f.p, 12, 1).is_ok());
  EXPECT_TRUE(comm_->barrier().is_ok());
}

// all_reduce_async + wait_async (the comm stream, runtime/nccl_communicator.h) give what the blocking all_reduce gives,
// ordered after the stream-0 work before them and before the stream-0 work after wait_async.
TEST_F(NcclOneRank, AsyncAllReduceEqualsBlocking) {
  const size_t n = size_t{1} << 22;  // 16 MB: big enough for a missing dependency to show as a race
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(i % 1000) * 0.25f - 7.0f;
  DeviceBuf<float> src(host), a(n), b(n), after(n);
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
    ASSERT_TRUE(cuda::memset_device(a.p, n * sizeof(float)));
    ASSERT_TRUE(cuda::memset_device(b.p, n * sizeof(float)));
    // Stream 0 writes the buffers, the async all-reduce must see those bytes.
    ASSERT_TRUE(cuda::memcpy_d2d_async(a.p, src.p, n * sizeof(float)));
    ASSERT_TRUE(cuda::memcpy_d2d_async(b.p, src.p, n * sizeof(float)));
    ASSERT_TRUE(comm_->all_reduce_async(a.p, n, DType::kFloat32, op).is_ok());
    ASSERT_TRUE(comm_->all_reduce(b.p, n, DType::kFloat32, op).is_ok());  // fences the async one first
    ASSERT_TRUE(comm_->all_reduce_async(a.p, n, DType::kFloat32, op).is_ok());
    ASSERT_TRUE(comm_->wait_async().is_ok());
    // Stream-0 work after wait_async sees the reduced buffer.
    ASSERT_TRUE(cuda::memcpy_d2d_async(after.p, a.p, n * sizeof(float)));
    ASSERT_TRUE(comm_->all_reduce(b.p, n, DType::kFloat32, op).is_ok());
    EXPECT_EQ(after.get(), b.get());
    EXPECT_EQ(a.get(), host);
  }
  // float64, a group of one (the world itself), zero elements, wait without pending work, host buffers (blocking).
  DeviceBuf<double> d({0.5, -3.0, 8.0});
  auto g = comm_->group({0});
  ASSERT_TRUE(g.has_value());
  ASSERT_TRUE((*g)->all_reduce_async(d.p, 3, DType::kFloat64, ReduceOp::kSum).is_ok());
  ASSERT_TRUE(comm_->wait_async().is_ok());
  EXPECT_EQ(d.get(), (std::vector<double>{0.5, -3.0, 8.0}));
  ASSERT_TRUE(comm_->all_reduce_async(d.p, 0, DType::kFloat64, ReduceOp::kSum).is_ok());
  EXPECT_FALSE(comm_->all_reduce_async(d.p, 3, DType::kInt64, ReduceOp::kSum).is_ok());
  ASSERT_TRUE(comm_->wait_async().is_ok());
  ASSERT_TRUE(comm_->wait_async().is_ok());
  double loss = 1.25;
  ASSERT_TRUE(comm_->all_reduce_async(&loss, 1, DType::kFloat64, ReduceOp::kSum).is_ok());
  EXPECT_EQ(loss, 1.25);
  // Pending async work is completed by wait_sends (the end of a step) and by the destructor.
  ASSERT_TRUE(comm_->all_reduce_async(a.p, n, DType::kFloat32, ReduceOp::kSum).is_ok());
  ASSERT_TRUE(comm_->wait_sends().is_ok());
  EXPECT_EQ(a.get(), host);
  ASSERT_TRUE(comm_->all_reduce_async(a.p, n, DType::kFloat32, ReduceOp::kSum).is_ok());
  comm_.reset();
  EXPECT_EQ(a.get(), host);
}

TEST_F(NcclOneRank, AllGatherAndReduceScatterOnTheDevice) {
  DeviceBuf<float> x({1, 2, 3, 4});
  DeviceBuf<float> y(4);
  ASSERT_TRUE(comm_->all_gather(x.p, y.p, {4}, DType::kFloat32).is_ok());
  EXPECT_EQ(y.get(), x.get());
  ASSERT_TRUE(comm_->all_gather(y.p, y.p, {4}, DType::kFloat32).is_ok());  // in place
  EXPECT_EQ(y.get(), x.get());
  DeviceBuf<double> z({5, 6});
  DeviceBuf<double> w(2);
  ASSERT_TRUE(comm_->reduce_scatter(z.p, w.p, {2}, DType::kFloat64, ReduceOp::kSum).is_ok());
  EXPECT_EQ(w.get(), z.get());
  EXPECT_FALSE(comm_->all_gather(x.p, y.p, {2, 2}, DType::kFloat32).is_ok());
  EXPECT_FALSE(comm_->reduce_scatter(z.p, w.p, {1, 1}, DType::kFloat64, ReduceOp::kSum).is_ok());
  // A host piece gathered into device memory.
  std::vector<float> host = {9, 8};
  DeviceBuf<float> g(2);
  ASSERT_TRUE(comm_->all_gather(host.data(), g.p, {2}, DType::kFloat32).is_ok());
  EXPECT_EQ(g.get(), host);
}

TEST_F(NcclOneRank, SendAndReceiveToItself) {
  DeviceBuf<float> x({1, 2, 3});
  DeviceBuf<float> y(3), z(3);
  ASSERT_TRUE(comm_->send(x.p, 12, 0, 7).is_ok());
  ASSERT_TRUE(comm_->send(y.p, 12, 0, 8).is_ok());  // zeros, tag 8
  ASSERT_TRUE(cuda::memset_device(x.p, 12));        // the caller may reuse the buffer at once
  ASSERT_TRUE(comm_->recv(z.p, 12, 0, 8).is_ok());   // matched by tag, not order
  ASSERT_TRUE(comm_->recv(y.p, 12, 0, 7).is_ok());
  EXPECT_EQ(y.get(), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(z.get(), (std::vector<float>{0, 0, 0}));
  EXPECT_FALSE(comm_->recv(y.p, 12, 0, 9).is_ok());  // nothing sent with tag 9
  EXPECT_FALSE(comm_->send(x.p, 12, 1, 0).is_ok());
  EXPECT_TRUE(comm_->wait_sends().is_ok());
}

TEST_F(NcclOneRank, HostBuffersAreForwarded) {
  double loss = 2.5;
  ASSERT_TRUE(comm_->all_reduce(&loss, 1, DType::kFloat64, ReduceOp::kSum).is_ok());
  EXPECT_EQ(loss, 2.5);
  std::vector<uint8_t> bytes = {1, 2, 3}, out(3);
  ASSERT_TRUE(comm_->all_gather(bytes.data(), out.data(), {3}, DType::kUInt8).is_ok());
  EXPECT_EQ(out, bytes);
  int64_t n = 4;
  ASSERT_TRUE(comm_->broadcast(&n, sizeof n, 0).is_ok());
  std::vector<float> s = {1, 2}, r(2);
  ASSERT_TRUE(comm_->reduce_scatter(s.data(), r.data(), {2}, DType::kFloat32, ReduceOp::kAvg).is_ok());
  EXPECT_EQ(r, s);
  ASSERT_TRUE(comm_->send(s.data(), 8, 0, 3).is_ok());
  ASSERT_TRUE(comm_->recv(r.data(), 8, 0, 3).is_ok());
  EXPECT_EQ(r, s);
}

TEST_F(NcclOneRank, Groups) {
  auto g = comm_->group({0});
  ASSERT_TRUE(g.has_value()) << g.status().message();
  EXPECT_EQ(*g, comm_.get());
  EXPECT_TRUE(comm_->prepare_groups({{0}}).is_ok());
  EXPECT_FALSE(comm_->group({1}).has_value());
  EXPECT_FALSE(comm_->group({0, 1}).has_value());
}

// ---- training through the CLI -------------------------------------------------------------------------------------

constexpr int kSteps = 5;

class GpuPlans : public Cli {
 protected:
  void SetUp() override {
    if (!have_gpu_and_nccl()) GTEST_SKIP() << "NCCL is not built or no CUDA device is visible";
    Cli::SetUp();
    setenv("OMP_NUM_THREADS", "2", 1);
    setenv("NCCL_NVLS_ENABLE", "0", 0);  // no NVLink multicast
  }
  std::vector<std::string> args(const std::string& device, const std::string& tag) const {
    return {"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"),
            "--batch-size", "4", "--steps", std::to_string(kSteps), "--optimizer", "adamw", "--lr", "1e-3",
            "--eps", "1e-6", "--quiet", "--device", device, "--metrics", path(tag + ".jsonl"),
            "--checkpoint-dir", path(tag)};
  }
  std::string ckpt(const std::string& tag) const {
    char name[32];
    std::snprintf(name, sizeof name, "/step-%06d.safetensors", kSteps);
    return path(tag + name);
  }
  void train(const std::string& device, const std::string& tag, const std::vector<std::string>& extra) {
    auto a = args(device, tag);
    a.insert(a.end(), extra.begin(), extra.end());
    auto r = run(a);
    ASSERT_EQ(r.code, 0) << tag << ":\n" << r.err << r.out;
  }
  bool two_gpus() const { return cuda::device_count() >= 2 && mpi_backend_built() && mpirun_on_path(); }
};

// Float32 on two devices: the losses, gradient norms and weights agree to float32 rounding over a few steps.
void expect_close_training(const std::string& ma, const std::string& mb, const std::string& ca, const std::string& cb) {
  auto a = read_metrics(ma), b = read_metrics(mb);
  ASSERT_EQ(a.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(b.size(), static_cast<size_t>(kSteps));
  for (int i = 0; i < kSteps; ++i) {
    EXPECT_LT(rel_diff(b[i]["loss"].get<double>(), a[i]["loss"].get<double>()), 1e-4) << "step " << i + 1;
    EXPECT_LT(rel_diff(b[i]["grad_norm"].get<double>(), a[i]["grad_norm"].get<double>()), 1e-3) << "step " << i + 1;
  }
  auto wa = read_safetensors(ca), wb = read_safetensors(cb);
  ASSERT_TRUE(wa.has_value() && wb.has_value());
  for (const auto& [name, t] : *wa) {
    if (name.rfind("optimizer.", 0) == 0 || t.dtype() != DType::kFloat32) continue;
    ASSERT_TRUE(wb->count(name)) << name;
    const Tensor& u = wb->at(name);
    double max_diff = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double x = t.data_as<float>()[i], y = u.data_as<float>()[i];
      max_diff = std::max(max_diff, std::fabs(x - y) / std::max(std::fabs(x), 1.0));
    }
    EXPECT_LE(max_diff, 1e-4) << name;
  }
}

TEST_F(GpuPlans, PlanOnOneGpuEqualsTheCpuRun) {
  const std::vector<std::string> plan = {"--chunks", "2", "--global-checkpoint", "1"};
  train("cpu", "cpu", plan);
  train("cuda", "cuda", plan);
  expect_close_training(path("cpu.jsonl"), path("cuda.jsonl"), ckpt("cpu"), ckpt("cuda"));
}

TEST_F(GpuPlans, TwoGpusEqualOneGpu) {
  if (!two_gpus()) GTEST_SKIP() << "needs two CUDA devices, MPI and mpirun";
  train("cuda", "single", {"--grad-accum", "2"});
  struct Plan {
    std::string tag;
    std::vector<std::string> flags;
  };
  for (const Plan& p : std::vector<Plan>{{"ddp", {"--default-dp-type", "ddp"}},
                                         {"tp2", {"--global-tp-deg", "2"}},
                                         {"zero2", {"--default-dp-type", "zero2"}},
                                         {"zero3", {"--sdp", "1"}},
                                         {"pp2-1f1b", {"--pp-deg", "2", "--pipeline-type", "pipedream_flush"}}}) {
    SCOPED_TRACE(p.tag);
    std::vector<std::string> extra = {"--devices", "2", "--chunks", "2"};
    extra.insert(extra.end(), p.flags.begin(), p.flags.end());
    train("cuda", p.tag, extra);
    if (HasFatalFailure()) return;
    expect_same_training(path("single.jsonl"), path(p.tag + ".jsonl"), ckpt("single"), ckpt(p.tag), kSteps);
  }
}

// DDP with the gradient all-reduces overlapped with the backward pass (--overlap-grad-sync on, the default with one
// micro-batch per step; runtime/training_graph.h) on two and four GPUs: equals the same run without overlap, and the
// one-GPU run of the same batch (4 rows: one micro-batch, split over the ranks).
TEST_F(GpuPlans, DdpOverlapEqualsNoOverlap) {
  if (!two_gpus()) GTEST_SKIP() << "needs two CUDA devices, MPI and mpirun";
  train("cuda", "single1", {});
  for (int devices : {2, 4}) {
    if (cuda::device_count() < devices) continue;
    SCOPED_TRACE(std::to_string(devices) + " GPUs");
    const std::string n = std::to_string(devices);
    train("cuda", "on" + n, {"--devices", n, "--overlap-grad-sync", "on"});
    if (HasFatalFailure()) return;
    train("cuda", "off" + n, {"--devices", n, "--overlap-grad-sync", "off"});
    if (HasFatalFailure()) return;
    expect_same_training(path("off" + n + ".jsonl"), path("on" + n + ".jsonl"), ckpt("off" + n), ckpt("on" + n),
                         kSteps);
    if (devices == 2) {
      expect_same_training(path("single1.jsonl"), path("on2.jsonl"), ckpt("single1"), ckpt("on2"), kSteps);
    }
  }
  // With tensor parallelism inside (blocking all-reduces in the backward pass, fenced after the pending async ones).
  if (cuda::device_count() >= 4) {
    train("cuda", "dp2tp2", {"--devices", "4", "--global-tp-deg", "2", "--default-dp-type", "ddp", "--chunks", "1"});
    if (HasFatalFailure()) return;
    train("cuda", "dp2tp2-off", {"--devices", "4", "--global-tp-deg", "2", "--default-dp-type", "ddp", "--chunks",
                                 "1", "--overlap-grad-sync", "off"});
    if (HasFatalFailure()) return;
    expect_same_training(path("dp2tp2-off.jsonl"), path("dp2tp2.jsonl"), ckpt("dp2tp2-off"), ckpt("dp2tp2"), kSteps);
  }
}

// --grad-reduce-dtype bf16 (runtime/training_graph.h bf16_grad_reduce) on two GPUs, in fp32 and in bf16 precision
// (where the weights' dW products write the bf16 copies the NCCL all-reduces read): within bf16 precision of the
// same run with float32 all-reduces (losses 2e-3, norms 5e-3 relative), and not equal to it.
TEST_F(GpuPlans, DdpBf16GradReduceFollowsFloat32) {
  if (!two_gpus()) GTEST_SKIP() << "needs two CUDA devices, MPI and mpirun";
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    const std::string p = precision;
    train("cuda", "f32-" + p, {"--devices", "2", "--precision", p});
    if (HasFatalFailure()) return;
    train("cuda", "b16-" + p, {"--devices", "2", "--precision", p, "--grad-reduce-dtype", "bf16",
                                   "--grad-reduce-bf16-min-numel", "0"});
    if (HasFatalFailure()) return;
    auto a = read_metrics(path("b16-" + p + ".jsonl")), b = read_metrics(path("f32-" + p + ".jsonl"));
    ASSERT_EQ(a.size(), static_cast<size_t>(kSteps));
    ASSERT_EQ(b.size(), static_cast<size_t>(kSteps));
    bool differs = false;
    for (int i = 0; i < kSteps; ++i) {
      EXPECT_LT(rel_diff(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()), 2e-3) << "step " << i + 1;
      EXPECT_LT(rel_diff(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()), 5e-3) << "step " << i + 1;
      differs = differs || a[i]["grad_norm"].get<double>() != b[i]["grad_norm"].get<double>();
    }
    EXPECT_TRUE(differs);
  }
}

// ZeRO-2 with one micro-batch: the gradient reduce-scatters run async during the backward pass and the parameter
// gathers async during the optimizer step (runtime/training_graph.h); equal to the blocking order and to one GPU.
TEST_F(GpuPlans, Zero2OverlapEqualsNoOverlap) {
  if (!two_gpus()) GTEST_SKIP() << "needs two CUDA devices, MPI and mpirun";
  train("cuda", "z-single", {});
  for (int devices : {2, 4}) {
    if (cuda::device_count() < devices) continue;
    SCOPED_TRACE(std::to_string(devices) + " GPUs");
    const std::string n = std::to_string(devices);
    const std::vector<std::string> plan = {"--devices", n, "--default-dp-type", "zero2", "--chunks", "1"};
    auto with = [&](const char* overlap) {
      std::vector<std::string> a = plan;
      a.insert(a.end(), {"--overlap-grad-sync", overlap});
      return a;
    };
    train("cuda", "z-on" + n, with("on"));
    if (HasFatalFailure()) return;
    train("cuda", "z-off" + n, with("off"));
    if (HasFatalFailure()) return;
    expect_same_training(path("z-off" + n + ".jsonl"), path("z-on" + n + ".jsonl"), ckpt("z-off" + n),
                         ckpt("z-on" + n), kSteps);
    expect_same_training(path("z-single.jsonl"), path("z-on" + n + ".jsonl"), ckpt("z-single"), ckpt("z-on" + n),
                         kSteps);
  }
}

// ZeRO-2 in bf16 (--grad-reduce-dtype bf16 in bf16 precision; runtime/training_graph.h) on gpt-1.5b cut to 2 layers,
// 256 tokens per row (so that its products take bf16 copies of their weights: the fixture's are too small, and so are
// those of sequences of 64): the weights' gradients
// reduce-scattered in bf16 and their bf16 copies gathered during the next forward pass. Within bf16 precision of
// float32 ZeRO-2 and of DDP with bf16 all-reduces (losses 2e-3, norms 5e-3 relative), not equal to float32 ZeRO-2;
// the gathers prefetched into the forward pass (async, waited before each copy's first reader) train as gathering
// them at the end of the step does (GALVATRON_ZERO2_PREFETCH=0), to float32 rounding (the embedding gradient's atomics
// are the only difference between two runs).
TEST_F(GpuPlans, Zero2Bf16FollowsFloat32AndPrefetchChangesNothing) {
  if (!two_gpus()) GTEST_SKIP() << "needs two CUDA devices, MPI and mpirun";
  Tensor tokens(DType::kInt64, {int64_t{1} << 16});
  uint64_t x = 88172645463325252ull;
  for (int64_t i = 0; i < tokens.numel(); ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    tokens.data_as<int64_t>()[i] = static_cast<int64_t>(x % 256);
  }
  ASSERT_TRUE(write_npy(path("tokens.npy"), tokens).is_ok());
  auto zoo = [&](const std::string& tag, const std::vector<std::string>& extra) {
    std::vector<std::string> a = {"train", "--model-type", "gpt", "--model-size", "gpt-1.5b", "--num-layers", "2",
                                  "--seq-len", "256", "--batch-size", "4", "--steps",
                                  std::to_string(kSteps), "--lr", "1e-3", "--data", path("tokens.npy"), "--device",
                                  "cuda", "--precision", "bf16", "--devices", "2", "--metrics", path(tag + ".jsonl"),
                                  "--checkpoint-dir", path(tag)};
    a.insert(a.end(), extra.begin(), extra.end());
    return run(a);
  };
  const std::vector<std::string> z2 = {"--default-dp-type", "zero2", "--chunks", "1"};
  auto plus = [](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const std::vector<std::string> b16 = {"--grad-reduce-dtype", "bf16"};
  auto r = zoo("z2-b16", plus(plus(z2, b16), {"--checkpoint-every", "1"}));
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  // 2 layers x 4 matrices; the tied embedding (also read by its Gather) and the position embedding keep fp32.
  EXPECT_NE((r.out + r.err).find("8 ZeRO-2 updates in bf16"), std::string::npos) << r.err << r.out;
  for (const auto& [tag, flags] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"z2-f32", z2}, {"ddp-b16", b16}}) {
    r = zoo(tag, flags);
    ASSERT_EQ(r.code, 0) << tag << ":\n" << r.err << r.out;
  }
  setenv("GALVATRON_ZERO2_PREFETCH", "0", 1);
  r = zoo("z2-b16-end", plus(z2, b16));
  unsetenv("GALVATRON_ZERO2_PREFETCH");
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  auto m = read_metrics(path("z2-b16.jsonl")), f = read_metrics(path("z2-f32.jsonl")),
       d = read_metrics(path("ddp-b16.jsonl"));
  ASSERT_EQ(m.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(f.size(), m.size());
  ASSERT_EQ(d.size(), m.size());
  bool differs = false;
  for (int i = 0; i < kSteps; ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    for (const auto* ref : {&f, &d}) {
      EXPECT_LT(rel_diff(m[i]["loss"].get<double>(), (*ref)[i]["loss"].get<double>()), 2e-3);
      EXPECT_LT(rel_diff(m[i]["grad_norm"].get<double>(), (*ref)[i]["grad_norm"].get<double>()), 5e-3);
    }
    differs = differs || m[i]["grad_norm"].get<double>() != f[i]["grad_norm"].get<double>();
  }
  EXPECT_TRUE(differs);
  auto e = read_metrics(path("z2-b16-end.jsonl"));
  ASSERT_EQ(e.size(), m.size());
  for (int i = 0; i < kSteps; ++i) {
    EXPECT_LT(rel_diff(m[i]["loss"].get<double>(), e[i]["loss"].get<double>()), 1e-4) << "step " << i + 1;
    EXPECT_LT(rel_diff(m[i]["grad_norm"].get<double>(), e[i]["grad_norm"].get<double>()), 1e-3) << "step " << i + 1;
  }
  // The matrices (the bf16-sharded weights, and the embeddings): the mean gap per element against how far steps 2-5
  // moved them (runs differ by the atomics' rounding, which Adam turns into steps of either sign wherever a gradient
  // is near zero: ~1% measured; stale copies would leave ranges a step behind).
  auto wm = read_safetensors(ckpt("z2-b16")), we = read_safetensors(ckpt("z2-b16-end")),
       w1 = read_safetensors(path("z2-b16/step-000001.safetensors"));
  ASSERT_TRUE(wm.has_value() && we.has_value() && w1.has_value());
  for (const auto& [name, t] : *wm) {
    if (name.rfind("optimizer.", 0) == 0 || t.dtype() != DType::kFloat32 || t.shape().size() != 2) continue;
    ASSERT_TRUE(we->count(name) && w1->count(name)) << name;
    double gap = 0, moved = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      gap += std::fabs(t.data_as<float>()[i] - we->at(name).data_as<float>()[i]);
      moved += std::fabs(t.data_as<float>()[i] - w1->at(name).data_as<float>()[i]);
    }
    EXPECT_GT(moved, 0.0) << name;
    EXPECT_LT(gap, 0.05 * moved) << name;
  }
}

}  // namespace
}  // namespace gv

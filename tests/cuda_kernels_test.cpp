// Every native CUDA kernel against its CPU kernel, on fresh random inputs (device/METHOD.md: float32 arithmetic,
// ||cuda - cpu|| / ||cpu|| far under 1e-3; we ask 1e-5, NaN never passes). Each case builds a one-node graph, runs
// it through the executor on both backends, and compares every output and every input (in-place ops update inputs).
// Label `gpu`: needs a CUDA device; skipped where none is visible.
#include "runtime/cuda_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>

#include "kernels/cuda/ops.h"
#include "kernels/split_float32.h"
#include "runtime/executor.h"

namespace gv {
namespace {

std::mt19937_64& rng() {
  static std::mt19937_64 r(std::random_device{}());
  return r;
}

Tensor randn(Shape s, double scale = 1.0, double shift = 0.0) {
  Tensor t(DType::kFloat32, std::move(s));
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = static_cast<float>(d(rng()) * scale + shift);
  return t;
}
Tensor positive(Shape s) {
  Tensor t = randn(std::move(s));
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = std::fabs(t.data_as<float>()[i]) + 0.1f;
  return t;
}
Tensor randint(Shape s, int64_t lo, int64_t hi) {
  Tensor t(DType::kInt64, std::move(s));
  std::uniform_int_distribution<int64_t> d(lo, hi - 1);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<int64_t>()[i] = d(rng());
  return t;
}
Tensor boolean(Shape s) {
  Tensor t(DType::kBool, std::move(s));
  std::bernoulli_distribution d(0.5);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<uint8_t>()[i] = d(rng());
  return t;
}
Tensor ints(std::vector<int64_t> v) { return Tensor::from_i64(v, {static_cast<int64_t>(v.size())}); }

struct Case {
  std::string op;
  std::vector<Tensor> inputs;
  Attributes attrs = {};
  int num_outputs = 1;
  std::string domain = "";
  int opset = 20;
  std::vector<int> constants = {};  // input indices that are graph constants (read by inference)
  double tol = 1e-5;
};

struct Ran {
  std::vector<Tensor> outputs, inputs;
};

Expected<Ran> run_case(const Case& c, Backend& backend) {
  Graph g;
  g.opsets[c.domain] = c.opset;
  Node n;
  n.name = "node";
  n.op_type = c.op;
  n.domain = c.domain;
  n.opset = c.opset;
  n.attrs = c.attrs;
  std::map<std::string, Tensor> feeds;
  std::vector<ValueId> fed;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (!c.inputs[i].defined()) {
      n.inputs.push_back(kNoValue);
      continue;
    }
    const std::string name = "in" + std::to_string(i);
    if (std::find(c.constants.begin(), c.constants.end(), static_cast<int>(i)) != c.constants.end()) {
      n.inputs.push_back(g.add_initializer(name, c.inputs[i], ValueKind::kConstant));
    } else {
      ValueId v = g.add_input(name, c.inputs[i].dtype(), c.inputs[i].shape());
      n.inputs.push_back(v);
      fed.push_back(v);
      feeds[name] = c.inputs[i];
    }
  }
  std::vector<std::string> outs;
  for (int i = 0; i < c.num_outputs; ++i) outs.push_back("out" + std::to_string(i));
  GV_ASSIGN_OR_RETURN(g.outputs, g.add_node(std::move(n), outs));
  ExecutorOptions eo;
  eo.keep_alive = fed;
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(g, backend, eo));
  GV_RETURN_IF_ERROR(ex->set_inputs(feeds));
  GV_RETURN_IF_ERROR(ex->run());
  GV_RETURN_IF_ERROR(backend.synchronize());
  Ran r;
  for (ValueId o : g.outputs) {
    GV_ASSIGN_OR_RETURN(Tensor t, ex->fetch(o));
    r.outputs.push_back(t);
  }
  for (ValueId v : fed) {
    GV_ASSIGN_OR_RETURN(Tensor t, ex->fetch(v));
    r.inputs.push_back(t);
  }
  return r;
}

// ||a - b|| / ||b|| of two float tensors of one shape, NaN and inf skipped.
double relative_error(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.scalar_f64(i), y = b.scalar_f64(i);
    if (!std::isfinite(x) || !std::isfinite(y)) continue;
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

// ||a - b|| / ||b|| over float tensors (exact equality for integer and bool tensors); NaN in a fails unless b has it
// at the same place.
void expect_close(const Tensor& a, const Tensor& b, double tol, const std::string& what) {
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  if (a.dtype() != DType::kFloat32 && a.dtype() != DType::kFloat64 && a.dtype() != DType::kBFloat16) {
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << what << ": integer results differ";
    return;
  }
  double num = 0, den = 0;
  int64_t nan_mismatch = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.scalar_f64(i), y = b.scalar_f64(i);
    if (std::isnan(x) || std::isnan(y)) {
      nan_mismatch += std::isnan(x) != std::isnan(y);
      continue;
    }
    if (std::isinf(x) || std::isinf(y)) {
      nan_mismatch += x != y;
      continue;
    }
    num += (x - y) * (x - y);
    den += y * y;
  }
  EXPECT_EQ(nan_mismatch, 0) << what << ": NaN/inf at different places";
  const double rel = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
  EXPECT_LE(rel, tol) << what << ": relative error " << rel;
}

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = make_backend("cuda");
    if (!b) GTEST_SKIP() << b.status().message();
    cuda_ = std::move(*b);
    cpu_ = make_cpu_backend();
  }
  void check(const Case& c) {
    SCOPED_TRACE(c.domain + "::" + c.op);
    auto want = run_case(c, *cpu_);
    ASSERT_TRUE(want.has_value()) << want.status().message();
    auto got = run_case(c, *cuda_);
    ASSERT_TRUE(got.has_value()) << got.status().message();
    for (size_t i = 0; i < want->outputs.size(); ++i) {
      expect_close(got->outputs[i], want->outputs[i], c.tol, c.op + " output " + std::to_string(i));
    }
    for (size_t i = 0; i < want->inputs.size(); ++i) {
      expect_close(got->inputs[i], want->inputs[i], c.tol, c.op + " input " + std::to_string(i) + " after the run");
    }
  }
  std::unique_ptr<Backend> cuda_, cpu_;
};

Attributes attrs(std::initializer_list<std::pair<const char*, int64_t>> ints) {
  Attributes a;
  for (auto& [k, v] : ints) a.set_int(k, v);
  return a;
}

TEST_F(CudaKernels, Binary) {
  check({"Add", {randn({2, 3, 4}), randn({4})}});
  check({"Add", {randn({8, 128, 64}), randn({8, 128, 64})}});
  check({"Sub", {randn({2, 1, 4}), randn({3, 1})}});
  check({"Mul", {randn({5, 7}), randn({})}});
  check({"Mul", {randn({2, 3, 5, 7}), randn({2, 1, 5, 1})}});
  check({"Div", {randn({3, 9}), positive({9})}});
  check({"Pow", {randn({4, 33}), Tensor::scalar(DType::kFloat32, 2.0)}});
  check({"Pow", {randn({4, 33}), Tensor::scalar(DType::kFloat32, 3.0)}});
  check({"Pow", {positive({4, 33}), randn({33})}});
  check({"Add", {randint({3, 4}, -50, 50), randint({4}, -50, 50)}});
  check({"Equal", {randint({3, 4}, 0, 3), randint({4}, 0, 3)}});
  check({"Less", {randn({3, 4}), randn({3, 1})}});
  check({"Where", {boolean({3, 1, 5}), randn({4, 5}), randn({3, 4, 1})}});
}

// The index paths of the broadcasting kernels (kernels/cuda/elementwise.cu): rank <= 2 after collapsing with rows of
// 128 or more (2-D grid), shorter rows and higher ranks (32-bit FastDiv), more rows than a grid's y dimension.
TEST_F(CudaKernels, BroadcastPaths) {
  check({"Add", {randn({64, 256}), randn({256})}});                       // bias: trailing vector
  check({"Add", {randn({2, 3, 128, 128}), randn({1, 1, 128, 128})}});     // causal mask over [B*H, T*T]
  check({"Mul", {randn({300, 200}), randn({300, 1})}});                   // column vector
  check({"Sub", {randn({1, 200}), randn({7, 200})}});                     // leading operand broadcast
  check({"Div", {randn({5, 1, 130}), positive({1, 9, 130})}});            // both broadcast, rank 3
  check({"Add", {randn({300, 20}), randn({20})}});                        // short rows: FastDiv path
  check({"Add", {randn({70000, 128}), randn({128})}});                    // rows beyond gridDim.y
  check({"Mul", {randn({3, 4, 5, 6, 7}), randn({4, 1, 6, 1})}});          // rank 4 after collapsing
  check({"Add", {randint({3, 200}, -50, 50), randint({200}, -50, 50)}});
  check({"Greater", {randn({9, 160}), randn({160})}});
  check({"Where", {boolean({1, 256}), randn({6, 256}), randn({6, 1})}});
  check({"Where", {boolean({4, 1, 6}), randn({5, 1}), randn({4, 5, 6})}});
  Attributes perm;
  perm.set_ints("perm", {0, 2, 1, 3});
  check({"Transpose", {randn({2, 130, 3, 64})}, perm});
  check({"Transpose", {randn({300, 200})}});
  check({"Expand", {randn({200}), ints({5, 200})}, {}, 1, "", 20, {1}});
  check({"Expand", {randn({3, 1, 7}), ints({3, 11, 7})}, {}, 1, "", 20, {1}});
  check({"Concat", {randn({4, 300}), randn({4, 200})}, attrs({{"axis", 1}})});
  check({"Split", {randn({3, 5, 400})}, attrs({{"axis", 2}}), 2});
}

TEST_F(CudaKernels, Unary) {
  for (const char* op : {"Neg", "Abs", "Relu", "Exp", "Tanh", "Erf", "Sigmoid", "Gelu"}) check({op, {randn({3, 1000})}});
  for (const char* op : {"Sqrt", "Reciprocal", "Log"}) check({op, {positive({7, 130})}});
  Attributes a;
  a.set_string("approximate", "tanh");
  check({"Gelu", {randn({3, 1000}, 3.0)}, a});
  check({"Not", {boolean({40})}});
  // IsNaN / IsInf natively (not through the host fallback) on values with NaN and both infinities sprinkled in.
  Tensor special = randn({5, 301});
  for (int64_t i = 0; i < special.numel(); i += 7) {
    const float s[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity()};
    special.data_as<float>()[i] = s[(i / 7) % 3];
  }
  check({"IsNaN", {special}});
  for (int64_t neg : {0, 1})
    for (int64_t pos : {0, 1}) check({"IsInf", {special}, attrs({{"detect_negative", neg}, {"detect_positive", pos}})});
  for (const std::string& op : cuda_fallback_ops()) EXPECT_TRUE(op != "::IsNaN" && op != "::IsInf") << op;
  const std::string G = kGalvatronDomain;
  check({"TanhGrad", {randn({5, 300}), randn({5, 300}, 0.5)}, {}, 1, G});
  check({"SigmoidGrad", {randn({5, 300}), positive({5, 300})}, {}, 1, G});
  check({"ErfGrad", {randn({5, 300}), randn({5, 300})}, {}, 1, G});
  check({"GeluGrad", {randn({5, 300}), randn({5, 300}, 3.0)}, {}, 1, G});
  check({"GeluGrad", {randn({5, 300}), randn({5, 300}, 3.0)}, a, 1, G});
}

// An op without a native kernel gets the host fallback, and the backend says so (galvatron train warns with it).
TEST_F(CudaKernels, HostFallbacksAreReported) {
  const OpSchema* hosted = nullptr;
  for (const OpSchema* s : OpRegistry::global().all())
    if (s->cpu && !s->cuda) hosted = s;
  if (!hosted) GTEST_SKIP() << "every op has a native kernel";
  EXPECT_NE(cuda_->kernel(*hosted), nullptr);
  const std::vector<std::string> ops = cuda_->host_fallback_ops();
  EXPECT_NE(std::find(ops.begin(), ops.end(), hosted->domain + "::" + hosted->name), ops.end()) << hosted->name;
  EXPECT_TRUE(cpu_->host_fallback_ops().empty());
}

// A native kernel handed operands of a dtype it lacks runs them on the host, and the backend says so once it has run
// (galvatron train warns after the first step): IsNaN on float64 (the device kernel takes float32).
TEST_F(CudaKernels, RuntimeHostFallbacksAreReported) {
  Tensor x(DType::kFloat64, {3, 7});
  for (int64_t i = 0; i < x.numel(); ++i) x.data_as<double>()[i] = i % 4 == 0 ? std::nan("") : 0.5 * i;
  check({"IsNaN", {x}});
  const std::vector<std::string> ops = cuda_->runtime_host_fallbacks();
  EXPECT_NE(std::find(ops.begin(), ops.end(), "::IsNaN (float64)"), ops.end());
  for (const std::string& op : ops) EXPECT_EQ(op.find("::IsNaN (float32"), std::string::npos) << op;
  EXPECT_TRUE(cpu_->runtime_host_fallbacks().empty());
}

TEST_F(CudaKernels, Cast) {
  Attributes to_i64, to_f32, to_bool;
  to_i64.set_int("to", 7);
  to_f32.set_int("to", 1);
  to_bool.set_int("to", 9);
  check({"Cast", {randn({50}, 1e3)}, to_i64});
  check({"Cast", {randint({50}, -1000, 1000)}, to_f32});
  check({"Cast", {randint({50}, -2, 2)}, to_bool});
}

TEST_F(CudaKernels, Layout) {
  Attributes perm;
  perm.set_ints("perm", {0, 2, 1, 3});
  check({"Transpose", {randn({2, 5, 3, 8})}, perm});
  check({"Transpose", {randn({6, 9})}});
  check({"Expand", {randn({3, 1}), ints({2, 3, 4})}, {}, 1, "", 20, {1}});
  check({"Reshape", {randn({2, 3, 4}), ints({6, -1})}, {}, 1, "", 20, {1}});
  check({"Concat", {randn({2, 3, 4}), randn({2, 1, 4}), randn({2, 5, 4})}, attrs({{"axis", 1}})});
  check({"Concat", {randint({3}, 0, 9), randint({2}, 0, 9)}, attrs({{"axis", 0}})});
  check({"Split", {randn({2, 4, 9})}, attrs({{"axis", 2}}), 3});
  check({"Split", {randn({2, 6, 3}), ints({1, 5})}, attrs({{"axis", 1}}), 2, "", 20, {1}});
  Attributes sg;
  sg.set_ints("shape", {4, 10, 6});
  sg.set_ints("starts", {1, 2, 0});
  sg.set_ints("steps", {1, 3, 2});
  check({"SliceGrad", {randn({2, 3, 3})}, sg, 1, kGalvatronDomain});
  // Slice (its index inputs are graph constants, read on the host: KernelContext::host_inputs).
  check({"Slice", {randn({4, 10}), ints({1, 2}), ints({3, 9}), ints({0, 1}), ints({1, 2})}, {}, 1, "", 20,
         {1, 2, 3, 4}});
  // RoPE's halves of the last dim of [B, H, S, D], negative starts / ends, reversed steps, clamped ends.
  check({"Slice", {randn({2, 4, 16, 8}), ints({0}), ints({4}), ints({-1})}, {}, 1, "", 20, {1, 2, 3}});
  check({"Slice", {randn({2, 4, 16, 8}), ints({4}), ints({1000}), ints({3})}, {}, 1, "", 20, {1, 2, 3}});
  check({"Slice", {randn({5, 7, 3}), ints({-1, 6}), ints({-6, -100}), ints({0, 1}), ints({-2, -3})}, {}, 1, "",
         20, {1, 2, 3, 4}});
  check({"Slice", {randint({6, 9}, -50, 50), ints({2}), ints({8}), ints({1}), ints({3})}, {}, 1, "", 20,
         {1, 2, 3, 4}});
}

TEST_F(CudaKernels, MatMul) {
  check({"MatMul", {randn({2, 3, 5, 7}), randn({2, 3, 7, 4})}});
  check({"MatMul", {randn({4, 5, 64}), randn({64, 96})}});
  check({"MatMul", {randn({2, 1, 5, 7}), randn({3, 7, 4})}});
  check({"MatMul", {randn({7}), randn({3, 7, 4})}});
  check({"MatMul", {randn({3, 5, 7}), randn({7})}});
  const std::string G = kGalvatronDomain;
  Attributes ta = attrs({{"transA", 1}});
  ta.set_ints("out_batch", {});
  check({"FusedMatMul", {randn({4, 6, 5}), randn({4, 6, 3})}, ta, 1, G});
  Attributes tb = attrs({{"transB", 1}});
  tb.set_float("alpha", 0.5f);
  check({"FusedMatMul", {randn({2, 3, 5, 7}), randn({2, 3, 4, 7})}, tb, 1, G});
  Attributes sum_b = attrs({{"transA", 0}, {"transB", 1}});
  sum_b.set_ints("out_batch", {1, 3});
  check({"FusedMatMul", {randn({2, 3, 5, 7}), randn({2, 3, 4, 7})}, sum_b, 1, G});
  check({"Gemm", {randn({5, 7}), randn({4, 7}), randn({4})}, attrs({{"transB", 1}})});
  Attributes gab = attrs({{"transA", 1}});
  gab.set_float("alpha", 2.0f);
  gab.set_float("beta", 0.5f);
  check({"Gemm", {randn({7, 5}), randn({7, 4}), randn({5, 4})}, gab});
  check({"Gemm", {randn({16, 768}), randn({768, 2304}), randn({2304})}});
}

// Sets the process-wide product precision (Backend::set_precision) for one test; back to fp32 at the end.
class PrecisionScope {
 public:
  PrecisionScope(Backend& b, const std::string& p) : b_(b) { EXPECT_TRUE(b_.set_precision(p).is_ok()) << p; }
  ~PrecisionScope() { EXPECT_TRUE(b_.set_precision("fp32").is_ok()); }

 private:
  Backend& b_;
};

// Shared bf16 operands (runtime/bf16_operands.h): FusedMatMul with one or both operands bfloat16 and a float32 result,
// against the CPU's float32 product of the same (exactly widened) values: 1e-5 in fp32 mode (a float32 operand keeps
// its precision) and where both operands are bf16 in any mode; in bf16 mode a float32 operand is rounded too
// (device/METHOD.md's 1e-3 to 1e-2 for bf16 operands; the random normal inputs give ~1.6e-3 with one rounded).
void check_shared_bf16(const std::function<void(const Case&)>& check, double mixed_tol) {
  const std::string G = kGalvatronDomain;
  auto bf16 = [](Tensor t) { return t.cast(DType::kBFloat16); };
  Attributes plain = attrs({{"out_dtype", 1}});
  check({"FusedMatMul", {bf16(randn({4, 96, 64})), bf16(randn({64, 96}))}, plain, 1, G});  // stacked rows
  check({"FusedMatMul", {bf16(randn({256, 768})), bf16(randn({768, 2304}))}, plain, 1, G});
  Attributes tb = attrs({{"transB", 1}, {"out_dtype", 1}});
  check({"FusedMatMul", {bf16(randn({2, 3, 40, 64})), bf16(randn({2, 3, 24, 64}))}, tb, 1, G});  // strided batch
  check({"FusedMatMul", {randn({4, 96, 64}), bf16(randn({64, 96}))}, plain, 1, G, 20, {}, mixed_tol});  // B given
  check({"FusedMatMul", {bf16(randn({96, 64})), randn({80, 64})}, tb, 1, G, 20, {}, mixed_tol});  // A given, op(B)
  check({"FusedMatMul", {bf16(randn({2, 3, 40, 64})), randn({2, 3, 24, 64})}, tb, 1, G, 20, {}, mixed_tol});
  Attributes ta = attrs({{"transA", 1}, {"out_dtype", 1}});
  ta.set_ints("out_batch", {});
  check({"FusedMatMul", {randn({4, 96, 48}), bf16(randn({4, 96, 32}))}, ta, 1, G, 20, {}, mixed_tol});  // dW form
  check({"FusedMatMul", {bf16(randn({2, 1, 5, 8})), randn({3, 8, 16})}, plain, 1, G, 20, {}, mixed_tol});  // loop
  // bf16 results (a weight gradient all-reduced in bf16, runtime/training_graph.h bf16_grad_reduce): the bf16 product
  // in every math mode, float32 sums rounded once: bf16's 1e-2.
  Attributes ta16 = ta, p16 = attrs({{"out_dtype", 16}}), tb16 = attrs({{"transB", 1}, {"out_dtype", 16}});
  ta16.set_int("out_dtype", 16);
  check({"FusedMatMul", {randn({4, 96, 48}), bf16(randn({4, 96, 32}))}, ta16, 1, G, 20, {}, 1e-2});  // dW form
  check({"FusedMatMul", {randn({4, 96, 48}), randn({4, 96, 32})}, ta16, 1, G, 20, {}, 1e-2});
  check({"FusedMatMul", {bf16(randn({4, 96, 64})), randn({64, 96})}, p16, 1, G, 20, {}, 1e-2});  // stacked rows
  check({"FusedMatMul", {randn({2, 3, 40, 64}), randn({2, 3, 24, 64})}, tb16, 1, G, 20, {}, 1e-2});  // strided
  check({"FusedMatMul", {randn({2, 1, 5, 8}), randn({3, 8, 16})}, p16, 1, G, 20, {}, 1e-2});  // loop
}

TEST_F(CudaKernels, MatMulSharedBf16Operands) {
  check_shared_bf16([this](const Case& c) { check(c); }, 1e-5);
  // Cast to bf16 and back: rounding to nearest even on both backends, bit for bit.
  check({"Cast", {randn({3, 1001}, 100.0)}, attrs({{"to", 16}}), 1, "", 20, {}, 0.0});
  check({"Cast", {randn({4, 1024}).cast(DType::kBFloat16)}, attrs({{"to", 1}}), 1, "", 20, {}, 0.0});
}

TEST_F(CudaKernels, MatMulSharedBf16OperandsInBf16Mode) {
  PrecisionScope scope(*cuda_, "bf16");
  check_shared_bf16([this](const Case& c) { check(c); }, 1e-2);
}

// galvatron Linear: the cuBLASLt epilogue paths (bias, tanh GELU with the pre-activation as its auxiliary output, both,
// neither) on bf16 operands, and the product + bias/activation pass (erf GELU, float32 operands in fp32 mode, widths
// that are not a multiple of 8), against the CPU on the same (exactly widened) operand values; then float32 operands
// in bf16 mode, which rounds them (1e-2).
void check_linear(const std::function<void(const Case&)>& check, bool bf16_given, double tol) {
  const std::string G = kGalvatronDomain;
  auto op = [&](Tensor t) { return bf16_given ? t.cast(DType::kBFloat16) : t; };
  auto lin = [](const char* act, int tb) {
    Attributes a;
    a.set_string("activation", act);
    a.set_int("transB", tb);
    return a;
  };
  for (const char* act : {"none", "gelu_tanh", "gelu"}) {
    const int outs = std::string(act) == "none" ? 1 : 2;
    check({"Linear", {op(randn({4, 96, 64})), op(randn({64, 96})), randn({96})}, lin(act, 0), outs, G, 20, {}, tol});
    check({"Linear", {op(randn({256, 64})), op(randn({80, 64})), randn({80})}, lin(act, 1), outs, G, 20, {}, tol});
    check({"Linear", {op(randn({256, 64})), op(randn({80, 64}))}, lin(act, 1), outs, G, 20, {}, tol});  // no bias
    check({"Linear", {op(randn({50, 24})), op(randn({24, 20})), randn({20})}, lin(act, 0), outs, G, 20, {}, tol});
    // bf16 outputs (and pre-activation): float32 results rounded once, so a float32 sum that differs in its last
    // bits may round the other way: bf16's 1e-2.
    Attributes a16 = lin(act, 0);
    a16.set_int("out_dtype", 16);
    check({"Linear", {op(randn({4, 96, 64})), op(randn({64, 96})), randn({96})}, a16, outs, G, 20, {}, 1e-2});
    check({"Linear", {op(randn({50, 24})), op(randn({24, 20})), randn({20})}, a16, outs, G, 20, {}, 1e-2});
  }
  // With a Residual input (the folded residual add, no activation, float32 Y): cuBLASLt's C matrix on the epilogue
  // path (with and without bias), a copy of R under the product elsewhere (a width not a multiple of 8).
  check({"Linear", {op(randn({4, 96, 64})), op(randn({64, 96})), randn({96}), randn({4, 96, 96})}, lin("none", 0), 1,
         G, 20, {}, tol});
  check({"Linear", {op(randn({256, 64})), op(randn({80, 64})), Tensor(), randn({256, 80})}, lin("none", 1), 1, G, 20,
         {}, tol});
  check({"Linear", {op(randn({50, 24})), op(randn({24, 20})), randn({20}), randn({50, 20})}, lin("none", 0), 1, G, 20,
         {}, tol});
  // GeluGrad reading a bf16 pre-activation (such a Linear's second output).
  Attributes tanh_grad;
  tanh_grad.set_string("approximate", "tanh");
  check({"GeluGrad", {randn({4, 1000}), randn({4, 1000}).cast(DType::kBFloat16)}, tanh_grad, 1, G});
  check({"GeluGrad", {randn({3, 333}), randn({3, 333}).cast(DType::kBFloat16)}, {}, 1, G});
}

TEST_F(CudaKernels, Linear) {
  check_linear([this](const Case& c) { check(c); }, true, 1e-5);
  check_linear([this](const Case& c) { check(c); }, false, 1e-5);
}

TEST_F(CudaKernels, LinearBf16) {
  PrecisionScope scope(*cuda_, "bf16");
  check_linear([this](const Case& c) { check(c); }, true, 1e-5);
  check_linear([this](const Case& c) { check(c); }, false, 1e-2);
}

// Tuned cuBLASLt products (kernels/cuda/lt_matmul.h, GALVATRON_CUDA_GEMM_TUNE): a shape's first call runs the
// heuristic's first algorithm and times the others on the stream; a later call (here: the next run, after run_case's
// synchronize) uses the fastest.
// Each shape runs three times against the CPU (bf16's 1e-2), and the second and third runs, which use the chosen
// algorithm, agree bit for bit. The shapes are big enough that cuBLASLt offers several algorithms: a plain product,
// the dW form (transA), a bias + tanh GELU epilogue writing bf16 and its pre-activation, and the DGELU epilogue.
TEST_F(CudaKernels, TunedProducts) {
  PrecisionScope scope(*cuda_, "bf16");
  // Tuning is opt-in, read for each new shape: on for this test's shapes (unique to it).
  const char* before = std::getenv("GALVATRON_CUDA_GEMM_TUNE");
  const std::string saved = before ? before : "";
  setenv("GALVATRON_CUDA_GEMM_TUNE", "16", 1);
  struct Restore {
    std::string v;
    bool had;
    ~Restore() { had ? setenv("GALVATRON_CUDA_GEMM_TUNE", v.c_str(), 1) : unsetenv("GALVATRON_CUDA_GEMM_TUNE"); }
  } restore{saved, before != nullptr};
  const std::string G = kGalvatronDomain;
  auto bf16 = [](Tensor t) { return t.cast(DType::kBFloat16); };
  Attributes ta = attrs({{"transA", 1}, {"out_dtype", 1}});
  ta.set_ints("out_batch", {});
  Attributes gelu;
  gelu.set_string("activation", "gelu_tanh");
  gelu.set_int("transB", 1);
  gelu.set_int("out_dtype", 16);
  Attributes dgelu = attrs({{"transB", 0}, {"out_dtype", 16}});
  dgelu.set_string("approximate", "tanh");
  const std::vector<Case> cases = {
      {"FusedMatMul", {bf16(randn({512, 768})), bf16(randn({768, 1024}))}, attrs({{"out_dtype", 1}}), 1, G},
      {"FusedMatMul", {bf16(randn({1024, 384})), bf16(randn({1024, 512}))}, ta, 1, G},
      {"Linear", {bf16(randn({512, 256})), bf16(randn({1024, 256})), randn({1024})}, gelu, 2, G},
      {"GeluGradMatMul", {bf16(randn({512, 256})), bf16(randn({256, 1024})), bf16(randn({512, 1024}))}, dgelu, 1, G},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.op);
    auto want = run_case(c, *cpu_);
    ASSERT_TRUE(want.has_value()) << want.status().message();
    std::vector<Ran> runs;
    for (int i = 0; i < 3; ++i) {
      auto got = run_case(c, *cuda_);
      ASSERT_TRUE(got.has_value()) << got.status().message();
      for (size_t o = 0; o < want->outputs.size(); ++o) {
        expect_close(got->outputs[o], want->outputs[o], 1e-2, c.op + " run " + std::to_string(i));
      }
      runs.push_back(*got);
    }
    for (size_t o = 0; o < want->outputs.size(); ++o) {
      EXPECT_EQ(std::memcmp(runs[1].outputs[o].data(), runs[2].outputs[o].data(), runs[1].outputs[o].nbytes()), 0)
          << c.op << " output " << o << ": the chosen algorithm's runs differ";
    }
  }
}

// galvatron GeluGradMatMul (the backward product into a GELU with the GELU and bias gradients): the cuBLASLt DGELU
// path (bf16 mode, tanh, bf16 pre-activation and dP, width a multiple of 8; the bias gradient summed from the bf16
// dP) and the product + passes fallback (erf GELU, float32 dP, other widths, float32
// mode), against the CPU: bf16's 1e-2 where the GPU rounds, 1e-5 on the fallback in fp32 mode.
TEST_F(CudaKernels, GeluGradMatMul) {
  const std::string G = kGalvatronDomain;
  auto bf16 = [](Tensor t) { return t.cast(DType::kBFloat16); };
  auto a = [](int tb, const char* approx, int out) {
    Attributes x;
    x.set_int("transB", tb);
    x.set_string("approximate", approx);
    x.set_int("out_dtype", out);
    return x;
  };
  {
    PrecisionScope scope(*cuda_, "bf16");
    // GPT-2's MLP: dY [.., 768] @ W_proj^T ([3072, 768] stored, transB) into the c_fc pre-activation's shape.
    check({"GeluGradMatMul", {bf16(randn({4, 64, 96})), bf16(randn({256, 96})), bf16(randn({4, 64, 256}))},
           a(1, "tanh", 16), 2, G, 20, {}, 1e-2});
    check({"GeluGradMatMul", {randn({256, 64}), randn({64, 128}), bf16(randn({256, 128}))}, a(0, "tanh", 16), 2, G, 20,
           {}, 1e-2});
    check({"GeluGradMatMul", {bf16(randn({256, 64})), bf16(randn({64, 128})), bf16(randn({256, 128}))},
           a(0, "tanh", 16), 1, G, 20, {}, 1e-2});  // no bias gradient: DGELU alone
    check({"GeluGradMatMul", {bf16(randn({100, 48})), bf16(randn({48, 60})), randn({100, 60})}, a(0, "none", 1), 2, G, 20,
           {}, 1e-2});  // erf, float32 dP and Pre: the fallback
    check({"GeluGradMatMul", {bf16(randn({50, 24})), bf16(randn({20, 24})), bf16(randn({50, 20}))}, a(1, "tanh", 16), 2,
           G, 20, {}, 1e-2});  // width 20: the fallback writing bf16
  }
  // fp32 mode with float32 operands: the float32 product, exact passes.
  check({"GeluGradMatMul", {randn({2, 30, 40}), randn({40, 24}), randn({60, 24})}, a(0, "tanh", 1), 2, G});
  // galvatron BiasGrad (bias sums of an output gradient's bf16 copy): the column sums over float32 or bf16.
  Attributes keep = attrs({{"keepdims", 1}});
  check({"BiasGrad", {randn({4, 256, 96})}, keep, 1, G});
  check({"BiasGrad", {bf16(randn({4, 256, 96}))}, {}, 1, G});
  check({"BiasGrad", {bf16(randn({1000, 30}))}, keep, 1, G});  // width not a multiple of 4: scalar loads
}

// galvatron AttentionPacked / AttentionPackedGrad: the flash kernels reading Q, K, V (and writing dQ, dK, dV) in place
// in one [B, S, 3 * H * D] tensor, and cuDNN's fused attention (the default where it is built), against the CPU
// (bf16 mode: the flash path's 2e-2, as tests/cuda_attention_test.cpp); the backward gets the CPU forward's Y and LSE.
// gpt-1.5b's heads of 50 (padded to 64 in the flash tiles, to 56 for cuDNN) and GPT-2's 64.
TEST_F(CudaKernels, AttentionPackedBf16) {
  PrecisionScope scope(*cuda_, "bf16");
  const std::string G = kGalvatronDomain;
  auto bf16 = [](Tensor t) { return t.cast(DType::kBFloat16); };
  auto same_bits = [](const Tensor& x, const Tensor& y) {
    return x.dtype() == y.dtype() && x.shape() == y.shape() && std::memcmp(x.data(), y.data(), x.nbytes()) == 0;
  };
  struct Shape4 {
    int64_t b, s, h, d;
    int causal;
  };
  for (bool cudnn : {false, true}) {
    SCOPED_TRACE(cudnn ? "cuDNN" : "flash");
    setenv("GALVATRON_CUDA_CUDNN_ATTENTION", cudnn ? "1" : "0", 1);
    if (cudnn && !cuda::cudnn_attention_enabled()) {
      std::printf("[ skipped ] cuDNN attention: not built\n");
      continue;
    }
    for (const Shape4& c : {Shape4{2, 130, 4, 50, 1}, Shape4{1, 256, 3, 64, 0}, Shape4{2, 67, 2, 64, 1}}) {
      Attributes a = attrs({{"num_heads", c.h}, {"is_causal", c.causal}});
      const Tensor qkv = randn({c.b, c.s, 3 * c.h * c.d});
      const int64_t before = cuda::flash_attention_calls();
      check({"AttentionPacked", {qkv}, a, 2, G, 20, {}, 2e-2});
      Case fwd{"AttentionPacked", {qkv}, a, 2, G};
      auto ref = run_case(fwd, *cpu_);
      ASSERT_TRUE(ref.has_value()) << ref.status().message();
      const Tensor dy = randn({c.b, c.s, c.h * c.d});
      check({"AttentionPackedGrad", {qkv, dy, ref->outputs[0], ref->outputs[1]}, a, 1, G, 20, {}, 2e-2});
      Attributes a16 = a;  // dQKV written in bf16 (its copy for the QKV product's backward)
      a16.set_int("out_dtype", 16);
      check({"AttentionPackedGrad", {qkv, dy, ref->outputs[0], ref->outputs[1]}, a16, 1, G, 20, {}, 2e-2});
      {
        // dQKVSums (runtime/attention_grad_bias_sums.cpp; cuDNN's path with heads of 50 sums while it unpacks):
        // against the CPU, and against BiasGrad of the dQKV this very call wrote (the same values, summed in
        // another order).
        const Case sums{"AttentionPackedGrad", {qkv, dy, ref->outputs[0], ref->outputs[1]}, a16, 2, G, 20, {}, 2e-2};
        check(sums);
        auto got = run_case(sums, *cuda_);
        ASSERT_TRUE(got.has_value()) << got.status().message();
        auto want = run_case({"BiasGrad", {got->outputs[0]}, attrs({{"keepdims", 1}}), 1, G, 1}, *cpu_);
        ASSERT_TRUE(want.has_value()) << want.status().message();
        expect_close(got->outputs[1], want->outputs[0], 1e-5, "dQKVSums against BiasGrad of the kernel's dQKV");
      }
      // bf16 attention I/O (runtime/bf16_attention_io.cpp): bf16 QKV, Y and dY, Y written in bf16, against the CPU on
      // the same bf16 inputs; and against the CUDA kernels on the widened float32 values: the same bits on cuDNN's
      // path (it rounds its float32 inputs to bf16 itself), Y the rounding of the float32 Y.
      const Tensor qkv16 = bf16(qkv), dy16 = bf16(dy);
      Attributes ay = a;
      ay.set_int("y_dtype", 16);
      check({"AttentionPacked", {qkv16}, ay, 2, G, 20, {}, 2e-2});
      auto y16 = run_case({"AttentionPacked", {qkv16}, ay, 2, G}, *cuda_);
      ASSERT_TRUE(y16.has_value()) << y16.status().message();
      const Tensor lse = y16->outputs[1];
      check({"AttentionPackedGrad", {qkv16, dy16, y16->outputs[0], lse}, a, 1, G, 20, {}, 2e-2});
      check({"AttentionPackedGrad", {qkv16, dy16, y16->outputs[0], lse}, a16, 1, G, 20, {}, 2e-2});
      if (cudnn) {
        auto y32 = run_case({"AttentionPacked", {qkv16.cast(DType::kFloat32)}, a, 2, G}, *cuda_);
        ASSERT_TRUE(y32.has_value()) << y32.status().message();
        EXPECT_TRUE(same_bits(y16->outputs[0], bf16(y32->outputs[0]))) << "Y";
        EXPECT_TRUE(same_bits(y16->outputs[1], y32->outputs[1])) << "LSE";
        auto g16 = run_case({"AttentionPackedGrad", {qkv16, dy16, y16->outputs[0], lse}, a16, 1, G}, *cuda_);
        auto g32 = run_case({"AttentionPackedGrad",
                             {qkv16.cast(DType::kFloat32), dy16.cast(DType::kFloat32),
                              y16->outputs[0].cast(DType::kFloat32), lse},
                             a, 1, G},
                            *cuda_);
        ASSERT_TRUE(g16.has_value() && g32.has_value());
        EXPECT_TRUE(same_bits(g16->outputs[0], bf16(g32->outputs[0]))) << "dQKV";
      }
      // cuDNN takes these shapes, or the flash kernels do (9 calls above): never the CPU fallback.
      EXPECT_EQ(cuda::flash_attention_calls() - before, cudnn ? 0 : 9) << "the expected kernels did not run";
      // Saved padded heads (runtime/attention_saved_heads.cpp), of cuDNN's size (its own operands) and of another
      // (copied after the kernels): all four outputs against the CPU, Y the same bits as without them, and the
      // gradient that reads them the same bits as the one that pads QKV and Y itself.
      for (int64_t dp : {cuda::cudnn_padded_head_dim(c.d), cuda::cudnn_padded_head_dim(c.d) + 8}) {
        SCOPED_TRACE("saved_head_dim " + std::to_string(dp));
        Attributes as = ay, ag = a16;
        as.set_int("saved_head_dim", dp);
        ag.set_int("saved_head_dim", dp);
        check({"AttentionPacked", {qkv16}, as, 4, G, 20, {}, 2e-2});
        auto sv = run_case({"AttentionPacked", {qkv16}, as, 4, G}, *cuda_);
        ASSERT_TRUE(sv.has_value()) << sv.status().message();
        EXPECT_TRUE(same_bits(sv->outputs[0], y16->outputs[0])) << "Y with saved heads";
        EXPECT_TRUE(same_bits(sv->outputs[1], lse)) << "LSE with saved heads";
        auto gs = run_case({"AttentionPackedGrad",
                            {qkv16, dy16, sv->outputs[0], sv->outputs[1], sv->outputs[2], sv->outputs[3]}, ag, 1, G},
                           *cuda_);
        auto gp = run_case({"AttentionPackedGrad", {qkv16, dy16, y16->outputs[0], lse}, a16, 1, G}, *cuda_);
        ASSERT_TRUE(gs.has_value() && gp.has_value());
        if (cudnn) {
          EXPECT_TRUE(same_bits(gs->outputs[0], gp->outputs[0])) << "dQKV from the saved heads";
        } else {
          // The flash backward adds dQ with float32 atomics in no fixed order (flash_attention.cu): run to run its
          // dQ differs in the last bits, which the bf16 rounding of dQKV mostly hides.
          expect_close(gs->outputs[0], gp->outputs[0], 1e-3, "dQKV from the saved heads (flash)");
        }
      }
    }
  }
  for (const std::string& op : cuda_fallback_ops()) {
    EXPECT_EQ(op.find("AttentionPacked"), std::string::npos) << op << " took the CUDA fallback";
  }
  unsetenv("GALVATRON_CUDA_CUDNN_ATTENTION");
}

// --precision bf16 / tf32: the products' operands rounded to bf16 / tf32 inside cuBLAS, float32 accumulation,
// against the CPU's float32 products (device/METHOD.md: bf16 operands 1e-3 to 1e-2, tf32 near 3e-4).
void check_products(const std::function<void(const Case&)>& check, double tol) {
  const std::string G = kGalvatronDomain;
  check({"MatMul", {randn({2, 3, 5, 7}), randn({2, 3, 7, 4})}, {}, 1, "", 20, {}, tol});
  check({"MatMul", {randn({4, 5, 64}), randn({64, 96})}, {}, 1, "", 20, {}, tol});
  check({"MatMul", {randn({2, 1, 5, 7}), randn({3, 7, 4})}, {}, 1, "", 20, {}, tol});
  check({"MatMul", {randn({8, 64, 64}), randn({8, 64, 64})}, {}, 1, "", 20, {}, tol});
  Attributes ta = attrs({{"transA", 1}});
  ta.set_ints("out_batch", {});
  check({"FusedMatMul", {randn({4, 96, 48}), randn({4, 96, 32})}, ta, 1, G, 20, {}, tol});
  Attributes tb = attrs({{"transB", 1}});
  tb.set_float("alpha", 0.5f);
  check({"FusedMatMul", {randn({2, 3, 50, 64}), randn({2, 3, 40, 64})}, tb, 1, G, 20, {}, tol});
  Attributes gab = attrs({{"transA", 1}});
  gab.set_float("alpha", 2.0f);
  gab.set_float("beta", 0.5f);
  check({"Gemm", {randn({70, 50}), randn({70, 40}), randn({50, 40})}, gab, 1, "", 20, {}, tol});
  check({"Gemm", {randn({16, 768}), randn({768, 2304}), randn({2304})}, {}, 1, "", 20, {}, tol});
}

TEST_F(CudaKernels, MatMulBf16) {
  PrecisionScope scope(*cuda_, "bf16");
  check_products([this](const Case& c) { check(c); }, 1e-2);
  // The mode rounds both operands to bf16 (gemm_f32 converts them and calls gemm_bf16): ~2.3e-3 relative for
  // random normal inputs (an 8-bit significand: 2^-7 * 0.72 / sqrt(12) per operand, times sqrt(2)). Before the
  // conversion (FAST_16BF on float32 operands) this measured 2.9e-4 on an H200, 2026-11-26: cuBLAS ran TF32 kernels
  // (bench/cuda_notes.md, 4). The lower bound 1e-3 sits between the two, so the test fails if bf16 is not used.
  Case big{"MatMul", {randn({256, 768}), randn({768, 768})}};
  auto want = run_case(big, *cpu_);
  auto got = run_case(big, *cuda_);
  ASSERT_TRUE(want.has_value() && got.has_value());
  const double rel = relative_error(got->outputs[0], want->outputs[0]);
  std::printf("[ bf16 ] [256 x 768] @ [768 x 768]: relative error vs CPU float32 %.3g\n", rel);
  EXPECT_GT(rel, 1e-3);
  EXPECT_LE(rel, 1e-2);
}

TEST_F(CudaKernels, MatMulTf32) {
  PrecisionScope scope(*cuda_, "tf32");
  check_products([this](const Case& c) { check(c); }, 2e-3);
}

TEST_F(CudaKernels, PrecisionNames) {
  EXPECT_FALSE(cuda_->set_precision("fp16").is_ok());
  EXPECT_TRUE(cpu_->set_precision("fp32").is_ok());
  EXPECT_FALSE(cpu_->set_precision("bf16").is_ok());
  EXPECT_FALSE(cpu_->set_precision("tf32").is_ok());
}

TEST_F(CudaKernels, SoftmaxAndNorms) {
  const std::string G = kGalvatronDomain;
  check({"Softmax", {randn({4, 5, 37}, 3.0)}});
  check({"Softmax", {randn({2, 8, 64, 64}, 3.0)}});
  check({"Softmax", {randn({4, 5, 6})}, attrs({{"axis", 1}})});
  check({"LogSoftmax", {randn({4, 1000}, 3.0)}});
  Tensor y = randn({4, 5, 37});
  check({"SoftmaxGrad", {randn({4, 5, 37}), y}, {}, 1, G});
  check({"LogSoftmaxGrad", {randn({4, 5, 37}), y}, {}, 1, G});
  check({"SoftmaxGrad", {randn({4, 5, 6}), randn({4, 5, 6})}, attrs({{"axis", 1}}), 1, G});
  check({"LogSoftmaxGrad", {randn({4, 5, 6}), randn({4, 5, 6})}, attrs({{"axis", 1}}), 1, G});
  check({"LayerNormalization", {randn({4, 7, 96}, 2.0, 1.0), randn({96}), randn({96})}, {}, 3, "", 17});
  check({"LayerNormalization", {randn({3, 4, 5}), randn({4, 5})}, attrs({{"axis", 1}}), 1, "", 17});
  check({"LayerNormalizationGrad", {randn({64, 96}), randn({64, 96}, 2.0, 1.0), randn({96})}, {}, 3, G, 17});
  // With saved statistics: those the forward kernel wrote.
  Tensor x = randn({32, 48}, 2.0, 1.0), scale = randn({48});
  auto fw = run_case({"LayerNormalization", {x, scale, randn({48})}, {}, 3, "", 17}, *cpu_);
  ASSERT_TRUE(fw.has_value());
  check({"LayerNormalizationGrad", {randn({32, 48}), x, scale, fw->outputs[1], fw->outputs[2]}, {}, 3, G, 17});
  check({"RMSNormalization", {randn({6, 64}), randn({64})}, {}, 1, "", 23});
  check({"RMSNormalizationGrad", {randn({6, 64}), randn({6, 64}), randn({64})}, {}, 2, G, 23});
  // Rows held in registers (kernels/cuda/norm_rows.cu): a warp per row (64 with idle lanes, GPT-2's 768 with several
  // rows per warp, gpt-1.5b's 1600 with a half-filled last vector, 2048), 2, 4 or 8 warps per row (forward 4096 and
  // up, backward 2048 and up; 4100 with a partial last vector, the 8192 limit), more rows than blocks (partial column
  // sums over blocks), row counts that leave groups idle, saved statistics, and the one-block-per-row kernels past the
  // limit (8196) or with cols % 4 != 0 (1602).
  // The backward twice more on the GPU: bit-identical run to run (the column sums are added in a fixed order).
  auto same_bits = [&](const Case& c) {
    SCOPED_TRACE(c.op + " twice");
    auto a = run_case(c, *cuda_);
    auto b = run_case(c, *cuda_);
    ASSERT_TRUE(a.has_value() && b.has_value());
    for (size_t i = 0; i < a->outputs.size(); ++i) {
      EXPECT_EQ(std::memcmp(a->outputs[i].data(), b->outputs[i].data(), a->outputs[i].nbytes()), 0) << "output " << i;
    }
  };
  const std::pair<int64_t, int64_t> shapes[] = {{1001, 64}, {8192, 768}, {600, 1600}, {333, 2048}, {600, 4096},
                                                {600, 4100}, {300, 8192}, {300, 8196}, {600, 1602}};
  for (const auto& [rows, cols] : shapes) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(cols));
    check({"LayerNormalization", {randn({rows, cols}, 2.0, 1.0), randn({cols}), randn({cols})}, {}, 3, "", 17});
    {
      // galvatron LayerNormalization writing Y in bf16 (out_dtype 16): against the CPU, and exactly the rounding of
      // the float32 kernel's Y (both the row kernels and the fallback through float32 scratch).
      const std::vector<Tensor> in = {randn({rows, cols}, 2.0, 1.0), randn({cols}), randn({cols})};
      const Attributes a16 = attrs({{"out_dtype", 16}});
      check({"LayerNormalization", in, a16, 3, G, 1, {}, 1e-3});
      auto y16 = run_case({"LayerNormalization", in, a16, 3, G, 1}, *cuda_);
      auto y32 = run_case({"LayerNormalization", in, {}, 3, "", 17}, *cuda_);
      ASSERT_TRUE(y16.has_value() && y32.has_value());
      const Tensor want = y32->outputs[0].cast(DType::kBFloat16);
      EXPECT_EQ(y16->outputs[0].dtype(), DType::kBFloat16);
      EXPECT_EQ(std::memcmp(y16->outputs[0].data(), want.data(), want.nbytes()), 0) << "bf16 Y";
      for (int o : {1, 2}) {
        EXPECT_EQ(std::memcmp(y16->outputs[o].data(), y32->outputs[o].data(), want.numel() / cols * 4), 0) << o;
      }
    }
    for (DType xt : {DType::kFloat32, DType::kBFloat16}) {
      for (int64_t out : {1, 16}) {
        // galvatron SkipLayerNormalization (the residual add in the norm; runtime/fuse_skip_norm.cpp), X float32 or
        // bf16, Y float32 or bf16: against the CPU; Sum exactly X + Skip, and Y and the statistics the same bits as
        // the LayerNorm kernel's on that Sum (row kernels and, for 1602 and 8196 columns, add then norm).
        SCOPED_TRACE(std::string("SkipLayerNormalization ") + dtype_name(xt) + " X, out_dtype " + std::to_string(out));
        const std::vector<Tensor> in = {randn({rows, cols}).cast(xt), randn({rows, cols}, 2.0, 1.0), randn({cols}),
                                        randn({cols})};
        const Attributes a = attrs({{"out_dtype", out}});
        check({"SkipLayerNormalization", in, a, 4, G, 1, {}, out == 16 ? 1e-3 : 1e-5});
        auto got = run_case({"SkipLayerNormalization", in, a, 4, G, 1}, *cuda_);
        ASSERT_TRUE(got.has_value()) << got.status().message();
        Tensor sum = in[0].cast(DType::kFloat32);
        for (int64_t i = 0; i < sum.numel(); ++i) sum.data_as<float>()[i] += in[1].data_as<float>()[i];
        EXPECT_EQ(std::memcmp(got->outputs[3].data(), sum.data(), sum.nbytes()), 0) << "Sum";
        auto ln = out == 16 ? run_case({"LayerNormalization", {sum, in[2], in[3]}, a, 3, G, 1}, *cuda_)
                            : run_case({"LayerNormalization", {sum, in[2], in[3]}, {}, 3, "", 17}, *cuda_);
        ASSERT_TRUE(ln.has_value()) << ln.status().message();
        for (int o = 0; o < 3; ++o) {
          ASSERT_EQ(got->outputs[o].nbytes(), ln->outputs[o].nbytes()) << o;
          EXPECT_EQ(std::memcmp(got->outputs[o].data(), ln->outputs[o].data(), ln->outputs[o].nbytes()), 0) << o;
        }
      }
    }
    const bool rows_kernels = cols % 4 == 0 && cols <= 8192;
    for (DType st : {DType::kFloat32, DType::kBFloat16}) {
      for (int64_t out : {1, 16}) {
        // The residual stream in bf16 (sum_dtype 16; runtime/bf16_residual_stream.cpp): X bf16, Skip float32 or
        // bf16, Y float32 or bf16: against the CPU; Sum exactly the rounding of X + Skip, and (row kernels) Y and the
        // statistics the same bits as the LayerNorm kernel's on that rounded Sum.
        SCOPED_TRACE(std::string("bf16 stream, Skip ") + dtype_name(st) + ", out_dtype " + std::to_string(out));
        const std::vector<Tensor> in = {randn({rows, cols}).cast(DType::kBFloat16),
                                        randn({rows, cols}, 2.0, 1.0).cast(st), randn({cols}), randn({cols})};
        const Attributes a = attrs({{"out_dtype", out}, {"sum_dtype", 16}});
        check({"SkipLayerNormalization", in, a, 4, G, 1, {}, out == 16 ? 1e-3 : 1e-5});
        auto got = run_case({"SkipLayerNormalization", in, a, 4, G, 1}, *cuda_);
        ASSERT_TRUE(got.has_value()) << got.status().message();
        Tensor sum = in[0].cast(DType::kFloat32);
        const Tensor skip = in[1].cast(DType::kFloat32);
        for (int64_t i = 0; i < sum.numel(); ++i) sum.data_as<float>()[i] += skip.data_as<float>()[i];
        const Tensor sum16 = sum.cast(DType::kBFloat16);
        EXPECT_EQ(std::memcmp(got->outputs[3].data(), sum16.data(), sum16.nbytes()), 0) << "Sum";
        if (!rows_kernels) continue;
        const std::vector<Tensor> ln_in = {sum16.cast(DType::kFloat32), in[2], in[3]};
        auto ln = out == 16 ? run_case({"LayerNormalization", ln_in, attrs({{"out_dtype", 16}}), 3, G, 1}, *cuda_)
                            : run_case({"LayerNormalization", ln_in, {}, 3, "", 17}, *cuda_);
        ASSERT_TRUE(ln.has_value()) << ln.status().message();
        for (int o = 0; o < 3; ++o) {
          ASSERT_EQ(got->outputs[o].nbytes(), ln->outputs[o].nbytes()) << o;
          EXPECT_EQ(std::memcmp(got->outputs[o].data(), ln->outputs[o].data(), ln->outputs[o].nbytes()), 0) << o;
        }
      }
    }
    for (int variant = 0; variant < 3; ++variant) {
      // Its backward: X and Addend bf16 (dY float32 or bf16), dX with its bf16 copy and the copy's sums: against the
      // CPU, and (row kernels) the same bits as the float32 kernel on the widened inputs.
      const bool addend = variant > 0, dy16 = variant == 2;
      SCOPED_TRACE(std::string("bf16 stream gradient") + (addend ? ", addend" : "") + (dy16 ? ", bf16 dY" : ""));
      const Tensor x16 = randn({rows, cols}, 2.0, 1.0).cast(DType::kBFloat16), scale = randn({cols});
      auto stats = run_case({"LayerNormalization", {x16.cast(DType::kFloat32), scale}, {}, 3, "", 17}, *cpu_);
      ASSERT_TRUE(stats.has_value()) << stats.status().message();
      const Tensor dy = dy16 ? randn({rows, cols}).cast(DType::kBFloat16) : randn({rows, cols}),
                   add16 = addend ? randn({rows, cols}).cast(DType::kBFloat16) : Tensor();
      const Case c16{"LayerNormalizationGrad",
                     {dy, x16, scale, stats->outputs[1], stats->outputs[2], Tensor(), Tensor(), add16},
                     {},
                     5,
                     G,
                     1,
                     {},
                     1e-3};
      check(c16);
      if (!rows_kernels) continue;
      const Case c32{"LayerNormalizationGrad",
                     {dy.cast(DType::kFloat32), x16.cast(DType::kFloat32), scale, stats->outputs[1], stats->outputs[2],
                      Tensor(), Tensor(), addend ? add16.cast(DType::kFloat32) : Tensor()},
                     {},
                     5,
                     G,
                     1};
      auto got = run_case(c16, *cuda_);
      auto want = run_case(c32, *cuda_);
      ASSERT_TRUE(got.has_value() && want.has_value());
      for (int o = 0; o < 5; ++o) {
        EXPECT_EQ(std::memcmp(got->outputs[o].data(), want->outputs[o].data(), want->outputs[o].nbytes()), 0) << o;
      }
    }
    for (int variant = 0; variant < 4; ++variant) {
      // Llama's stream in bf16: SkipRMSNormalization with sum_dtype 16 (Skip float32 or bf16) against the CPU and
      // its Sum the rounding of X + Skip; RMSNormalizationGrad with X and Addend bf16 (dY float32 or bf16) against
      // the CPU and (row kernels) the same bits as the float32 kernel on the widened inputs.
      const bool skip16 = variant & 1, dy16 = variant & 2;
      SCOPED_TRACE(std::string("RMS bf16 stream") + (skip16 ? ", bf16 Skip" : "") + (dy16 ? ", bf16 dY" : ""));
      const std::vector<Tensor> in = {
          randn({rows, cols}).cast(DType::kBFloat16),
          skip16 ? randn({rows, cols}, 2.0, 1.0).cast(DType::kBFloat16) : randn({rows, cols}, 2.0, 1.0), randn({cols})};
      const Attributes a = attrs({{"out_dtype", 16}, {"sum_dtype", 16}});
      check({"SkipRMSNormalization", in, a, 2, G, 1, {}, 1e-3});
      auto fw = run_case({"SkipRMSNormalization", in, a, 2, G, 1}, *cuda_);
      ASSERT_TRUE(fw.has_value()) << fw.status().message();
      Tensor sum = in[0].cast(DType::kFloat32);
      const Tensor skip = in[1].cast(DType::kFloat32);
      for (int64_t i = 0; i < sum.numel(); ++i) sum.data_as<float>()[i] += skip.data_as<float>()[i];
      const Tensor sum16 = sum.cast(DType::kBFloat16);
      EXPECT_EQ(std::memcmp(fw->outputs[1].data(), sum16.data(), sum16.nbytes()), 0) << "Sum";
      const Tensor dy = dy16 ? randn({rows, cols}).cast(DType::kBFloat16) : randn({rows, cols});
      const Tensor add16 = randn({rows, cols}).cast(DType::kBFloat16), scale = randn({cols});
      const Case g16{"RMSNormalizationGrad", {dy, sum16, scale, add16}, {}, 3, G, 1, {}, 1e-3};
      check(g16);
      if (!rows_kernels) continue;
      auto got = run_case(g16, *cuda_);
      auto want = run_case({"RMSNormalizationGrad",
                            {dy.cast(DType::kFloat32), sum16.cast(DType::kFloat32), scale, add16.cast(DType::kFloat32)},
                            {},
                            3,
                            G,
                            1},
                           *cuda_);
      ASSERT_TRUE(got.has_value() && want.has_value());
      for (int o = 0; o < 3; ++o) {
        EXPECT_EQ(std::memcmp(got->outputs[o].data(), want->outputs[o].data(), want->outputs[o].nbytes()), 0) << o;
      }
    }
    const Case ln_grad{"LayerNormalizationGrad", {randn({rows, cols}), randn({rows, cols}, 2.0, 1.0), randn({cols})},
                       {}, 3, G, 17};
    check(ln_grad);
    // With an Addend (the residual stream's gradient, folded into the store of dX).
    check({"LayerNormalizationGrad",
           {randn({rows, cols}), randn({rows, cols}, 2.0, 1.0), randn({cols}), Tensor(), Tensor(), Tensor(), Tensor(),
            randn({rows, cols})},
           {}, 3, G, 17});
    {
      // With the bf16 copy of dX and its column sums (runtime/fuse_norm_grad_outputs.cpp): against the CPU, the copy
      // exactly the rounding of the kernel's own dX, the sums those of the copy (BiasGrad's kernel on it).
      const Case full{"LayerNormalizationGrad",
                      {randn({rows, cols}), randn({rows, cols}, 2.0, 1.0), randn({cols}), Tensor(), Tensor(), Tensor(),
                       Tensor(), randn({rows, cols})},
                      {}, 5, G, 1, {}, 1e-3};
      check(full);
      auto got = run_case(full, *cuda_);
      ASSERT_TRUE(got.has_value()) << got.status().message();
      const Tensor want16 = got->outputs[0].cast(DType::kBFloat16);
      EXPECT_EQ(std::memcmp(got->outputs[3].data(), want16.data(), want16.nbytes()), 0) << "bf16 dX";
      auto sums = run_case({"BiasGrad", {want16}, attrs({{"keepdims", 1}}), 1, G, 1}, *cpu_);
      ASSERT_TRUE(sums.has_value()) << sums.status().message();
      expect_close(got->outputs[4], sums->outputs[0], 1e-5, "column sums of the bf16 dX");
    }
    check({"RMSNormalization", {randn({rows, cols}, 2.0, 1.0), randn({cols})}, {}, 1, "", 23});
    const Case rms_grad{"RMSNormalizationGrad", {randn({rows, cols}), randn({rows, cols}, 2.0, 1.0), randn({cols})},
                        {}, 2, G, 23};
    check(rms_grad);
    for (bool addend : {false, true}) {
      // With the bf16 copy of dX (runtime/fuse_norm_grad_outputs.cpp), with and without an Addend: against the CPU,
      // the copy exactly the rounding of the kernel's own dX.
      std::vector<Tensor> in = {randn({rows, cols}), randn({rows, cols}, 2.0, 1.0), randn({cols})};
      if (addend) in.push_back(randn({rows, cols}));
      const Case copy{"RMSNormalizationGrad", in, {}, 3, G, 1, {}, 1e-3};
      check(copy);
      auto got = run_case(copy, *cuda_);
      ASSERT_TRUE(got.has_value()) << got.status().message();
      const Tensor want16 = got->outputs[0].cast(DType::kBFloat16);
      EXPECT_EQ(std::memcmp(got->outputs[2].data(), want16.data(), want16.nbytes()), 0) << "bf16 dX, rms";
    }
    if (cols % 4 != 0 || cols > 8192) continue;
    same_bits(ln_grad);
    same_bits(rms_grad);
    Tensor xs = randn({rows, cols}, 2.0, 1.0), ss = randn({cols});
    auto saved = run_case({"LayerNormalization", {xs, ss, randn({cols})}, {}, 3, "", 17}, *cpu_);
    ASSERT_TRUE(saved.has_value());
    check({"LayerNormalizationGrad", {randn({rows, cols}), xs, ss, saved->outputs[1], saved->outputs[2]}, {}, 3, G,
           17});
  }
}

// The ops Llama-style models add (runtime/cuda_kernels_llama_ops.cpp): SwiGLU's gate and its gradient in float32 and
// with bf16 operands or output (tails past the last 4-element group), RotaryEmbedding in its 4-D and 3-D forms,
// interleaved, partial, on bf16 heads; SkipRMSNormalization. bf16 results compare at 1e-2 (a rounding step apart at
// most per element).
TEST_F(CudaKernels, LlamaOps) {
  const std::string G = kGalvatronDomain;
  auto bf16 = [](Tensor t) { return t.cast(DType::kBFloat16); };
  for (const Shape& s : {Shape{64, 172}, Shape{5, 7}}) {
    check({"SiluMul", {randn(s, 3.0), randn(s)}, {}, 1, G});
    check({"SiluMulGrad", {randn(s), randn(s, 3.0), randn(s)}, {}, 2, G});
    check({"SiluMul", {bf16(randn(s, 3.0)), bf16(randn(s))}, attrs({{"out_dtype", 1}}), 1, G});
    check({"SiluMul", {randn(s, 3.0), randn(s)}, attrs({{"out_dtype", 16}}), 1, G, 20, {}, 1e-2});
    check({"SiluMul", {bf16(randn(s, 3.0)), bf16(randn(s))}, {}, 1, G, 20, {}, 1e-2});
    check({"SiluMulGrad", {randn(s), bf16(randn(s, 3.0)), bf16(randn(s))}, {}, 2, G});
    check({"SiluMulGrad",
           {randn(s), bf16(randn(s, 3.0)), bf16(randn(s))},
           attrs({{"out_dtype", 16}}),
           2,
           G,
           20,
           {},
           1e-2});
    // dY in bf16 too (the down projection's dX product writes it so), results in bf16 or float32.
    for (int64_t out : {16, 1}) {
      check({"SiluMulGrad",
             {bf16(randn(s)), bf16(randn(s, 3.0)), bf16(randn(s))},
             attrs({{"out_dtype", out}}),
             2,
             G,
             20,
             {},
             1e-2});
    }
  }
  check({"RotaryEmbedding", {randn({2, 4, 16, 64}), randn({2, 16, 32}), randn({2, 16, 32})}, {}, 1, "", 23});
  check({"RotaryEmbedding",
         {randn({2, 16, 256}), randn({2, 16, 32}), randn({2, 16, 32})},
         attrs({{"num_heads", 4}}),
         1,
         "",
         23});
  check({"RotaryEmbedding",
         {randn({2, 16, 256}), randn({2, 16, 32}), randn({2, 16, 32})},
         attrs({{"num_heads", 4}, {"interleaved", 1}}),
         1,
         "",
         23});
  check({"RotaryEmbedding",
         {randn({2, 3, 16, 50}), randn({2, 16, 12}), randn({2, 16, 12})},
         attrs({{"rotary_embedding_dim", 24}}),
         1,
         "",
         23});
  check({"RotaryEmbedding",
         {bf16(randn({2, 16, 256})), randn({2, 16, 32}), randn({2, 16, 32})},
         attrs({{"num_heads", 4}}),
         1,
         "",
         23,
         {},
         1e-2});
  // The rotate-half kernel's 16-byte chunks: heads-first bf16, heads of 16 (one chunk of 8 pairs), odd head counts.
  check({"RotaryEmbedding",
         {bf16(randn({3, 5, 16, 64})), randn({3, 16, 32}), randn({3, 16, 32})},
         {},
         1,
         "",
         23,
         {},
         1e-2});
  check({"RotaryEmbedding",
         {bf16(randn({2, 16, 48})), randn({2, 16, 8}), randn({2, 16, 8})},
         attrs({{"num_heads", 3}}),
         1,
         "",
         23,
         {},
         1e-2});
  check({"RotaryEmbedding",
         {randn({2, 16, 40}), randn({2, 16, 4}), randn({2, 16, 4})},
         attrs({{"num_heads", 5}}),
         1,
         "",
         23});
  check({"RotaryEmbedding",
         {bf16(randn({2, 4, 16, 64})), bf16(randn({2, 16, 32})), bf16(randn({2, 16, 32}))},
         {},
         1,
         "",
         23,
         {},
         1e-2});  // bf16 tables: the fallback
  // SkipRMSNormalization: the residual add in the RMS row kernel, X float32 or bf16 (the branch), Y float32 or bf16.
  for (int64_t out : {1, 16}) {
    for (bool x16 : {false, true}) {
      Tensor x = randn({4, 32, 256}, 2.0);
      check({"SkipRMSNormalization",
             {x16 ? bf16(x) : x, randn({4, 32, 256}), randn({256})},
             attrs({{"out_dtype", out}}),
             2,
             G,
             1,
             {},
             out == 16 || x16 ? 1e-2 : 1e-5});
    }
  }
  for (const std::string& op : cuda_fallback_ops()) {
    EXPECT_EQ(op.find("SkipRMSNormalization"), std::string::npos) << op << " took the CUDA fallback";
  }
}

TEST_F(CudaKernels, Reductions) {
  check({"ReduceSum", {randn({4, 6, 32}), ints({-1})}, {}, 1, "", 13, {1}});
  check({"ReduceSum", {randn({4, 6, 320}), ints({0, 1})}, attrs({{"keepdims", 0}}), 1, "", 13, {1}});
  check({"ReduceSum", {randn({4, 6, 32}), ints({1})}, attrs({{"keepdims", 0}}), 1, "", 13, {1}});
  check({"ReduceSum", {randn({3, 5})}, {}, 1, "", 13});
  check({"ReduceMean", {randn({4, 6, 32}), ints({-1})}, {}, 1, "", 18, {1}});
  check({"ReduceMean", {randn({4, 6, 32})}, [] {
          Attributes a;
          a.set_ints("axes", {1});
          return a;
        }(), 1, "", 17});
  for (const char* kind : {"ReduceSum", "ReduceMean"}) {
    Attributes a;
    a.set_string("kind", kind);
    a.set_ints("axes", {0, 2});
    a.set_ints("shape", {4, 6, 32});
    check({"ReduceGrad", {randn({1, 6, 1}), Tensor(), Tensor()}, a, 1, kGalvatronDomain});
  }
}

TEST_F(CudaKernels, Indexing) {
  check({"Gather", {randn({50, 16}), randint({3, 7}, -50, 50)}});
  check({"Gather", {randn({4, 10, 3}), randint({5}, 0, 10)}, attrs({{"axis", 1}})});
  Attributes gg;
  gg.set_int("axis", 0);
  gg.set_ints("shape", {30, 16});
  check({"GatherGrad", {randn({4, 64, 16}), randint({4, 64}, 0, 30)}, gg, 1, kGalvatronDomain});
  gg.set_int("padding_idx", 3);
  check({"GatherGrad", {randn({4, 64, 16}), randint({4, 64}, 0, 30)}, gg, 1, kGalvatronDomain});
  // GatherGradAdd (a tied embedding's gradient sum): Base plus the rows, against the CPU.
  Attributes ga;
  ga.set_int("axis", 0);
  check({"GatherGradAdd", {randn({30, 16}), randn({4, 64, 16}), randint({4, 64}, -30, 30)}, ga, 1, kGalvatronDomain});
  ga.set_int("padding_idx", 3);
  check({"GatherGradAdd", {randn({30, 16}), randn({4, 64, 16}), randint({4, 64}, 0, 30)}, ga, 1, kGalvatronDomain});
  // Gather of whole 16-byte rows moves uint4 (an embedding lookup); 12 floats a row, and 3 (the element path).
  check({"Gather", {randn({50, 12}), randint({2, 33}, -50, 50)}});
  check({"Gather", {randn({50, 3}), randint({2, 33}, 0, 50)}});
}

TEST_F(CudaKernels, Loss) {
  const std::string G = kGalvatronDomain;
  Tensor labels = randint({16}, 0, 37);
  labels.data_as<int64_t>()[3] = -100;
  Attributes ign = attrs({{"ignore_index", -100}});
  check({"SoftmaxCrossEntropyLoss", {randn({16, 37}, 3.0), labels}, ign, 2});
  Attributes sum = ign;
  sum.set_string("reduction", "sum");
  check({"SoftmaxCrossEntropyLoss", {randn({16, 37}, 3.0), labels}, sum});
  Attributes none = ign;
  none.set_string("reduction", "none");
  check({"SoftmaxCrossEntropyLoss", {randn({4, 37, 5}, 3.0), randint({4, 5}, 0, 37)}, none});
  check({"SoftmaxCrossEntropyLoss", {randn({16, 37}), labels, positive({37})}, ign});
  check({"SoftmaxCrossEntropyLossGrad", {randn({}), randn({16, 37}, 3.0), labels}, ign, 1, G});
  check({"SoftmaxCrossEntropyLossGrad", {randn({}), randn({16, 37}, 3.0), labels, Tensor(), randn({16, 37})}, ign, 1,
         G});
  check({"SoftmaxCrossEntropyLossGrad", {randn({4, 5}), randn({4, 37, 5}), randint({4, 5}, 0, 37)}, none, 1, G});
  check({"SoftmaxCrossEntropyLoss", {randn({64, 50257}, 3.0), randint({64}, 0, 50257)}, ign});
  check({"SoftmaxCrossEntropyLossGrad", {randn({}), randn({64, 50257}, 3.0), randint({64}, 0, 50257)}, ign, 1, G});
}

// galvatron LinearCrossEntropy and its grad: both weight layouts, chunks of rows with a short last one, ignored
// and int32 labels, GPT-2's vocabulary (50,257: the bf16 path's padded rows); float32 products, then the bf16 path
// (bf16 logits and dlogits: ~1e-3 to 1e-2 relative, like the bf16 products).
std::vector<Case> linear_cross_entropy_cases(double tol) {
  const std::string G = kGalvatronDomain;
  std::vector<Case> cases;
  for (int trans : {1, 0}) {
    for (int64_t v : {37, 50257}) {
      const int64_t n = v == 37 ? 16 : 96, k = v == 37 ? 24 : 64;
      Tensor labels = randint({n}, 0, v);
      labels.data_as<int64_t>()[3] = -100;
      Attributes a = attrs({{"ignore_index", -100}, {"trans_w", trans}, {"chunk_rows", v == 37 ? 5 : 40}});
      if (v == 37) a.set_string("reduction", "sum");
      const Tensor x = randn({n, k}), w = randn(trans ? Shape{v, k} : Shape{k, v}, 0.3);
      cases.push_back({"LinearCrossEntropy", {x, w, labels}, a, 1, G, 20, {}, tol});
      cases.push_back({"LinearCrossEntropy", {x, w, labels}, a, 3, G, 20, {}, tol});  // with dX, dW for dLoss = 1
      cases.push_back({"LinearCrossEntropyGrad", {randn({}), x, w, labels}, a, 2, G, 20, {}, tol});
    }
  }
  Tensor l32(DType::kInt32, {8});
  for (int i = 0; i < 8; ++i) l32.data_as<int32_t>()[i] = (i * 7) % 37;
  cases.push_back({"LinearCrossEntropyGrad", {randn({}), randn({8, 13}), randn({37, 13}), l32}, {}, 2, G, 20, {}, tol});
  return cases;
}

TEST_F(CudaKernels, LinearCrossEntropy) {
  for (const Case& c : linear_cross_entropy_cases(1e-5)) check(c);
}

TEST_F(CudaKernels, LinearCrossEntropyBf16) {
  PrecisionScope scope(*cuda_, "bf16");
  for (const Case& c : linear_cross_entropy_cases(2e-2)) check(c);
}

TEST_F(CudaKernels, Training) {
  const std::string G = kGalvatronDomain;
  check({"AccumulateGrad", {randn({1000}), randn({1000})}, {}, 0, G});
  // A weight gradient's product adding into its accumulator (beta = 1): the dW forms, float32 and both operands bf16.
  Attributes dw = attrs({{"transA", 1}});
  dw.set_ints("out_batch", {});
  check({"MatMulAccumulate", {randn({48, 32}), randn({4, 96, 48}), randn({4, 96, 32})}, dw, 0, G});  // stacked k
  check({"MatMulAccumulate",
         {randn({768, 2304}), randn({256, 768}).cast(DType::kBFloat16), randn({256, 2304}).cast(DType::kBFloat16)},
         attrs({{"transA", 1}}),
         0,
         G});
  check({"MatMulAccumulate", {randn({2, 5, 4}), randn({2, 5, 8}), randn({4, 8})}, attrs({{"transB", 1}}), 0, G});
  Attributes gn;
  gn.set_float("scale", 0.5f);
  check({"GradNorm", {randn({1000}), randn({3, 7}), randn({70000})}, gn, 1, G});
  Tensor step = Tensor(DType::kInt64, {});
  step.data_as<int64_t>()[0] = 3;
  Attributes a;
  a.set_float("weight_decay", 0.1f);
  a.set_float("grad_scale", 0.5f);
  check({"AdamW", {randn({5000}), randn({5000}), randn({5000}, 0.1), positive({5000}),
                   Tensor::scalar(DType::kFloat64, 1e-2), step},
         a, 0, G});
  Attributes shard = a;
  shard.set_int("shard_offset", 2000);
  check({"AdamW", {randn({5000}), randn({1000}), randn({1000}, 0.1), positive({1000}),
                   Tensor::scalar(DType::kFloat64, 1e-2), step},
         shard, 0, G});
  Attributes gw;
  gw.set_floats("weights", {1.0f, 0.0f, 0.5f});
  check({"GradNorm", {randn({1000}), randn({3, 7}), randn({70000})}, gw, 1, G});
  {
    // A model's worth of gradients: 130 tensors (launched in chunks of 48) from 1 to 3M elements, some weighted.
    std::vector<Tensor> grads;
    std::vector<float> weights;
    for (int i = 0; i < 130; ++i) {
      const int64_t n = i % 13 == 0 ? 3000001 : i % 5 == 0 ? 1 : 37 * (i + 1);
      grads.push_back(randn({n}));
      weights.push_back(i % 7 == 0 ? 0.25f : 1.0f);
    }
    Attributes many;
    many.set_float("scale", 0.5f);
    many.set_floats("weights", weights);
    check({"GradNorm", grads, many, 1, G});
  }
  {
    // AdamWMulti: 60 parameters (two launches of up to 48) of odd and even sizes, clipping by the norm input and
    // zeroing the gradients, against the CPU (the same rounded operations; coefficients from the device's pow).
    Attributes ma = a;
    ma.set_float("max_norm", 1.0f);
    ma.set_int("zero_grad", 1);
    std::vector<Tensor> in = {Tensor::scalar(DType::kFloat64, 1e-2), step, Tensor::scalar(DType::kFloat32, 7.0)};
    for (int i = 0; i < 60; ++i) {
      const int64_t n = i % 9 == 0 ? 70001 : 3 + 5 * i;
      in.insert(in.end(), {randn({n}), randn({n}), randn({n}, 0.1), positive({n})});
    }
    check({"AdamWMulti", in, ma, 0, G, 20, {}, 1e-6});
  }
  // A reduced bf16 gradient read as it is (exactly widened), zeroed after use, with and without the bf16 copy; the
  // gradient norm over float32 and bf16 gradients.
  Attributes zg = a;
  zg.set_int("zero_grad", 1);
  for (int64_t n : {5000, 5001}) {
    check({"AdamW", {randn({n}), randn({n}).cast(DType::kBFloat16), randn({n}, 0.1), positive({n}),
                     Tensor::scalar(DType::kFloat64, 1e-2), step},
           zg, 0, G});
    check({"AdamW", {randn({n}), randn({n}).cast(DType::kBFloat16), randn({n}, 0.1), positive({n}),
                     Tensor::scalar(DType::kFloat64, 1e-2), step, Tensor(), randn({n}).cast(DType::kBFloat16)},
           a, 0, G});
  }
  check({"GradNorm", {randn({1000}).cast(DType::kBFloat16), randn({3, 7}), randn({70001}).cast(DType::kBFloat16)}, gn,
         1, G});
  // With the parameter's persistent bf16 copy (input 7), rewritten from the update: the quad path, with a tail.
  for (int64_t n : {5000, 5001, 4999}) {
    check({"AdamW", {randn({n}), randn({n}), randn({n}, 0.1), positive({n}), Tensor::scalar(DType::kFloat64, 1e-2), step,
                     Tensor(), randn({n}).cast(DType::kBFloat16)},
           a, 0, G});
  }
  Attributes clip = a;
  clip.set_float("max_norm", 1.0f);
  clip.set_int("zero_grad", 1);
  check({"AdamW", {randn({5000}), randn({5000}), randn({5000}, 0.1), positive({5000}),
                   Tensor::scalar(DType::kFloat64, 1e-2), step, Tensor::scalar(DType::kFloat32, 7.0)},
         clip, 0, G});
  // The gradient norm summed by the updates (attr sum_squares): the squares of float32 and bf16 gradients (quads,
  // tails, the element path of an unaligned view) added to an accumulator that already holds a sum.
  Attributes sq = a;
  sq.set_int("sum_squares", 1);
  for (int64_t n : {5000, 5001, 3}) {
    check({"AdamW",
           {randn({n}), randn({n}).cast(DType::kBFloat16), randn({n}, 0.1), positive({n}),
            Tensor::scalar(DType::kFloat64, 1e-2), step, Tensor(), randn({n}).cast(DType::kBFloat16),
            Tensor::scalar(DType::kFloat64, 2.5)},
           sq,
           0,
           G});
    check({"AdamW",
           {randn({n}), randn({n}), randn({n}, 0.1), positive({n}), Tensor::scalar(DType::kFloat64, 1e-2), step,
            Tensor(), Tensor(), Tensor::scalar(DType::kFloat64, 2.5)},
           sq,
           0,
           G});
  }
  {
    std::vector<Tensor> in = {Tensor::scalar(DType::kFloat64, 1e-2), step, Tensor()};
    for (int i = 0; i < 60; ++i) {
      const int64_t n = i % 9 == 0 ? 70001 : 3 + 5 * i;
      in.insert(in.end(), {randn({n}), randn({n}), randn({n}, 0.1), positive({n})});
    }
    in.push_back(Tensor::scalar(DType::kFloat64, 2.5));
    check({"AdamWMulti", in, sq, 0, G, 20, {}, 1e-6});
  }
  check({"GradNormBegin", {}, {}, 1, G});
  {
    // Split masters (kernels/split_float32.h): SplitFloat32 bit for bit (halfway values included), and AdamW on the
    // halves (quads, a tail, float32 and bf16 gradients, with the norm's squares) against the CPU's update of the
    // same joined float32, compared as the joined values.
    Tensor x = randn({5001});
    const uint32_t ties[] = {0x3f818000u, 0xbf808000u, 0x3c238000u, 0x7f7fffffu};
    for (int i = 0; i < 4; ++i) std::memcpy(x.data_as<float>() + 100 * i, &ties[i], 4);
    check({"SplitFloat32", {x}, {}, 2, G, 20, {}, 0.0});
    for (int64_t n : {5000, 5001, 3}) {
      for (bool g16 : {false, true}) {
        SCOPED_TRACE(std::to_string(n) + (g16 ? " bf16 gradient" : " float32 gradient"));
        const Tensor p = randn({n}, 0.05);
        Tensor hi(DType::kBFloat16, {n}), lo(DType::kUInt16, {n});
        for (int64_t i = 0; i < n; ++i) {
          uint32_t b;
          std::memcpy(&b, p.data_as<float>() + i, 4);
          const SplitFloat32 h = split_float32(b);
          hi.data_as<uint16_t>()[i] = h.hi;
          lo.data_as<uint16_t>()[i] = h.lo;
        }
        const Tensor g = g16 ? randn({n}).cast(DType::kBFloat16) : randn({n});
        const Case c{
            "AdamW",
            {Tensor(DType::kFloat32, {n}), g, randn({n}, 0.1), positive({n}), Tensor::scalar(DType::kFloat64, 1e-2),
             step, Tensor(), hi, Tensor::scalar(DType::kFloat64, 2.5), lo},
            sq,
            0,
            G};
        auto want = run_case(c, *cpu_);
        ASSERT_TRUE(want.has_value()) << want.status().message();
        auto got = run_case(c, *cuda_);
        ASSERT_TRUE(got.has_value()) << got.status().message();
        auto joined = [&](const Ran& r) {
          Tensor t(DType::kFloat32, {n});
          for (int64_t i = 0; i < n; ++i) {
            const uint32_t b = join_float32(r.inputs[6].data_as<uint16_t>()[i], r.inputs[8].data_as<uint16_t>()[i]);
            std::memcpy(t.data_as<float>() + i, &b, 4);
          }
          return t;
        };
        expect_close(joined(*got), joined(*want), 1e-6, "joined master");
        // Run's inputs are the fed ones (input 6, the norm, is absent): 0 p, 2 m, 3 v, 6 hi, 7 the sum, 8 lo.
        ASSERT_EQ(got->inputs.size(), 9u);
        for (int i : {0, 2, 3, 7}) expect_close(got->inputs[i], want->inputs[i], 1e-5, "input " + std::to_string(i));
        // The GPU's halves are a split of its own result: hi its rounding (a quad path that mixed lanes would not be).
        const Tensor mine = joined(*got);
        int64_t wrong = 0;
        for (int64_t i = 0; i < n; ++i) {
          uint32_t b;
          std::memcpy(&b, mine.data_as<float>() + i, 4);
          wrong += got->inputs[6].data_as<uint16_t>()[i] != float_to_bf16(mine.data_as<float>()[i]) ||
                   (b & 0xffffu) == 0x8000u;
        }
        EXPECT_EQ(wrong, 0);
      }
    }
  }
  check({"GradNormEnd", {Tensor::scalar(DType::kFloat64, 12.25)}, gn, 1, G});
}

}  // namespace
}  // namespace gv

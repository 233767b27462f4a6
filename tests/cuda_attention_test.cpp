// Fused attention on the CUDA backend (kernels/cuda/attention.cu) against the CPU reference (kernels/cpu/attention.h):
// ONNX Attention and galvatron AttentionGrad as one-node graphs through the executor on both backends, fresh random
// inputs, ||cuda - cpu|| / ||cpu|| per output. fp32 mode asks 1e-5 (device/METHOD.md: float32 arithmetic); tf32
// 2e-3 and bf16 2e-2 (operands rounded to 10 and 7 mantissa bits: ~5e-4 and ~4e-3 per product, two or three products
// deep in the gradients). Also checks that the native kernels ran, not the host fallback.
// Label `gpu`: needs a CUDA device; skipped where none is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>

#include "runtime/cuda_kernels.h"
#include "runtime/executor.h"

namespace gv {
namespace {

std::mt19937_64& rng() {
  static std::mt19937_64 r(std::random_device{}());
  return r;
}

Tensor randn(Shape s, double scale = 1.0) {
  Tensor t(DType::kFloat32, std::move(s));
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = static_cast<float>(d(rng()) * scale);
  return t;
}

// Keep-flags, true with probability p.
Tensor keep_flags(Shape s, double p) {
  Tensor t(DType::kBool, std::move(s));
  std::bernoulli_distribution d(p);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<uint8_t>()[i] = d(rng());
  return t;
}

struct Case {
  std::string name;
  std::vector<Tensor> inputs;  // undefined: an omitted input
  Attributes attrs = {};
  bool grad = false;  // AttentionGrad (Q, K, V, mask, dY) -> 3 outputs; else Attention -> Y
  double tol = 1e-5;
};

struct Ran {
  std::vector<Tensor> outputs;
};

Expected<Ran> run_case(const Case& c, Backend& backend) {
  Graph g;
  const std::string domain = c.grad ? kGalvatronDomain : "";
  const int opset = c.grad ? 1 : 23;
  g.opsets[domain] = opset;
  Node n;
  n.name = "node";
  n.op_type = c.grad ? "AttentionGrad" : "Attention";
  n.domain = domain;
  n.opset = opset;
  n.attrs = c.attrs;
  std::map<std::string, Tensor> feeds;
  std::vector<ValueId> fed;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (!c.inputs[i].defined()) {
      n.inputs.push_back(kNoValue);
      continue;
    }
    const std::string name = "in" + std::to_string(i);
    ValueId v = g.add_input(name, c.inputs[i].dtype(), c.inputs[i].shape());
    n.inputs.push_back(v);
    fed.push_back(v);
    feeds[name] = c.inputs[i];
  }
  std::vector<std::string> outs;
  for (int i = 0; i < (c.grad ? 3 : 1); ++i) outs.push_back("out" + std::to_string(i));
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
  return r;
}

// ||a - b|| / ||b||; every non-finite value counts as a failure unless b has the same one at the same place.
double relative_error(const Tensor& a, const Tensor& b, int64_t* mismatched) {
  double num = 0, den = 0;
  *mismatched = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.scalar_f64(i), y = b.scalar_f64(i);
    if (!std::isfinite(x) || !std::isfinite(y)) {
      *mismatched += !(std::isnan(x) && std::isnan(y)) && x != y;
      continue;
    }
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

// Q [B, Hq, S, D], K [B, Hkv, L, D], V [B, Hkv, L, Dv].
struct Dims {
  int64_t b, hq, hkv, s, l, d, dv;
};

class CudaAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = make_backend("cuda");
    if (!b) GTEST_SKIP() << b.status().message();
    cuda_ = std::move(*b);
    cpu_ = make_cpu_backend();
  }
  void TearDown() override {
    if (!cuda_) return;
    // The native kernels ran: neither op was handed to the host fallback.
    for (const std::string& op : cuda_fallback_ops()) {
      EXPECT_NE(op, "::Attention") << "Attention took the CUDA fallback";
      EXPECT_NE(op, std::string(kGalvatronDomain) + "::AttentionGrad") << "AttentionGrad took the CUDA fallback";
    }
  }

  // Runs c on both backends; returns the largest relative error over the outputs.
  double check(const Case& c) {
    SCOPED_TRACE(c.name);
    auto want = run_case(c, *cpu_);
    EXPECT_TRUE(want.has_value()) << c.name << ": " << want.status().message();
    if (!want.has_value()) return 0;
    auto got = run_case(c, *cuda_);
    EXPECT_TRUE(got.has_value()) << c.name << ": " << got.status().message();
    if (!got.has_value()) return 0;
    double worst = 0;
    for (size_t i = 0; i < want->outputs.size(); ++i) {
      const Tensor &a = got->outputs[i], &b = want->outputs[i];
      EXPECT_EQ(a.shape(), b.shape()) << c.name << " output " << i;
      if (a.shape() != b.shape()) continue;
      int64_t bad = 0;
      const double rel = relative_error(a, b, &bad);
      EXPECT_EQ(bad, 0) << c.name << " output " << i << ": non-finite values differ";
      EXPECT_LE(rel, c.tol) << c.name << " output " << i << ": relative error " << rel;
      worst = std::max(worst, rel);
    }
    return worst;
  }

  // Attention and AttentionGrad on fresh Q, K, V (and dY) with the given mask (undefined: none).
  void both(const std::string& name, const Dims& d, bool causal, const Tensor& mask, double tol,
            Attributes extra = {}) {
    Attributes a = extra;
    if (causal) a.set_int("is_causal", 1);
    Tensor q = randn({d.b, d.hq, d.s, d.d}), k = randn({d.b, d.hkv, d.l, d.d}), v = randn({d.b, d.hkv, d.l, d.dv});
    std::vector<Tensor> in = {q, k, v};
    if (mask.defined()) in.push_back(mask);
    check({name, in, a, false, tol});
    std::vector<Tensor> gin = {q, k, v, mask, randn({d.b, d.hq, d.s, d.dv})};
    check({name + " (grad)", gin, a, true, tol});
  }

  // Every case, at tolerance tol.
  void all_cases(double tol) {
    both("causal B2 H3 S=L=67 D16", {2, 3, 3, 67, 67, 16, 16}, true, Tensor(), tol);
    both("causal B2 H4 S=L=256 D64", {2, 4, 4, 256, 256, 64, 64}, true, Tensor(), tol);
    both("GQA Hq4 Hkv2 causal", {2, 4, 2, 67, 67, 32, 32}, true, Tensor(), tol);
    both("GQA Hq4 Hkv1 S!=L", {1, 4, 1, 40, 90, 16, 24}, false, Tensor(), tol);
    both("no mask S!=L Dv!=D", {2, 2, 2, 37, 90, 32, 48}, false, Tensor(), tol);
    both("causal S>L", {1, 2, 2, 90, 37, 16, 16}, true, Tensor(), tol);
    both("causal S<L", {1, 2, 2, 37, 90, 16, 16}, true, Tensor(), tol);
    {
      // Bool keep-flags [B, 1, 1, L]: batch 0 random with key 0 dropped (causal row 0 sees nothing), batch 1 all
      // dropped (every row fully masked: zeros, zero gradients).
      const int64_t L = 67;
      Tensor m = keep_flags({2, 1, 1, L}, 0.7);
      m.data_as<uint8_t>()[0] = 0;
      std::memset(m.data_as<uint8_t>() + L, 0, L);
      both("bool mask [B,1,1,L] causal", {2, 3, 3, 67, L, 16, 16}, true, m, tol);
      both("bool mask [B,1,1,L] GQA", {2, 4, 2, 67, L, 16, 16}, false, m, tol);
    }
    both("bool mask [B,H,S,L]", {2, 2, 2, 33, 45, 16, 16}, false, keep_flags({2, 2, 33, 45}, 0.5), tol);
    both("float mask [1,1,S,L]", {2, 3, 3, 50, 50, 16, 16}, false, randn({1, 1, 50, 50}, 2.0), tol);
    both("float mask [S,L] causal", {2, 2, 2, 50, 70, 16, 16}, true, randn({50, 70}, 2.0), tol);
    {
      // A float mask of -inf over a whole query row (row 3 of every head): zeros there.
      Tensor m = randn({1, 2, 40, 40});
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t j = 0; j < 40; ++j) m.data_as<float>()[(h * 40 + 3) * 40 + j] = -INFINITY;
      both("float mask -inf row", {2, 2, 2, 40, 40, 16, 16}, false, m, tol);
    }
    Attributes sc;
    sc.set_float("scale", 0.3);
    both("scale 0.3", {2, 2, 2, 30, 30, 16, 16}, true, Tensor(), tol, sc);
    // Rows longer than the row kernels keep in registers (8 * 1024 keys): the three-pass path.
    both("long rows L=9000", {1, 2, 2, 5, 9000, 16, 16}, false, keep_flags({1, 1, 1, 9000}, 0.9), tol);
    both("long rows L=8400 causal", {1, 1, 1, 8300, 8400, 8, 8}, true, Tensor(), tol);
  }

  std::unique_ptr<Backend> cuda_, cpu_;
};

// Sets the process-wide product precision (Backend::set_precision) for one test; back to fp32 at the end.
class PrecisionScope {
 public:
  PrecisionScope(Backend& b, const std::string& p) : b_(b) { EXPECT_TRUE(b_.set_precision(p).is_ok()) << p; }
  ~PrecisionScope() { EXPECT_TRUE(b_.set_precision("fp32").is_ok()); }

 private:
  Backend& b_;
};

TEST_F(CudaAttention, Float32) { all_cases(1e-5); }

TEST_F(CudaAttention, Tf32) {
  PrecisionScope scope(*cuda_, "tf32");
  all_cases(2e-3);
}

TEST_F(CudaAttention, Bf16) {
  PrecisionScope scope(*cuda_, "bf16");
  all_cases(2e-2);
  // The bf16 operands are visibly engaged: GPT-2's head shape is off float32 by far more than 1e-4.
  const double rel = check({"bf16 engaged", {randn({2, 4, 256, 64}), randn({2, 4, 256, 64}), randn({2, 4, 256, 64})},
                            [] {
                              Attributes a;
                              a.set_int("is_causal", 1);
                              return a;
                            }(),
                            false, 2e-2});
  std::printf("[ bf16 ] Attention [2, 4, 256, 64] causal: relative error vs CPU float32 %.3g\n", rel);
  EXPECT_GT(rel, 1e-4);
}

// GPT-2 124M's shape at batch 1 (one batch row of the bench's b8), fp32: the workspace and products at size.
TEST_F(CudaAttention, Gpt2Shape) {
  both("GPT-2 B1 H12 S=L=1024 D64 causal", {1, 12, 12, 1024, 1024, 64, 64}, true, Tensor(), 1e-5);
}

}  // namespace
}  // namespace gv

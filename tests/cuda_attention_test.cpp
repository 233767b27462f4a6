// Fused attention on the CUDA backend (kernels/cuda/attention.cu) against the CPU reference (kernels/cpu/attention.h):
// ONNX Attention and galvatron AttentionGrad as one-node graphs through the executor on both backends, fresh random
// inputs, ||cuda - cpu|| / ||cpu|| per output. fp32 mode asks 1e-5 (device/METHOD.md: float32 arithmetic); tf32
// 2e-3 and bf16 2e-2 (operands rounded to 10 and 7 mantissa bits: ~5e-4 and ~4e-3 per product, two or three products
// deep in the gradients). Also checks that the native kernels ran, not the host fallback.
// The bf16 flash path (kernels/cuda/flash_attention.cu): its cases run three times, flash with the mma and the wmma
// kernels (GALVATRON_CUDA_FLASH=1) and v1 (=0), each against the CPU, and cuda::flash_attention_calls() says which path
// ran. The other bf16 cases run with the variable unset (the default): flash forward and backward where eligible. FlashTiming
// times the three paths at GPT-2's b8 shape and compares the flash results with v1's.
// Label `gpu`: needs a CUDA device; skipped where none is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <random>

#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
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
  bool with_lse = false;  // galvatron AttentionWithLse -> Y, LSE (instead of Attention)
};

struct Ran {
  std::vector<Tensor> outputs;
};

Expected<Ran> run_case(const Case& c, Backend& backend) {
  Graph g;
  const std::string domain = c.grad || c.with_lse ? kGalvatronDomain : "";
  const int opset = c.grad || c.with_lse ? 1 : 23;
  g.opsets[domain] = opset;
  Node n;
  n.name = "node";
  n.op_type = c.grad ? "AttentionGrad" : c.with_lse ? "AttentionWithLse" : "Attention";
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
  for (int i = 0; i < (c.grad ? 3 : c.with_lse ? 2 : 1); ++i) outs.push_back("out" + std::to_string(i));
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

// Self-attention dims: B batch rows, H heads (as many key/value heads), S positions, heads of D, scale 1/sqrt(D).
cuda::AttentionDims self_attention(int64_t b, int64_t h, int64_t s, int64_t d, bool causal, bool seq_major) {
  cuda::AttentionDims a;
  a.batch = b;
  a.q_heads = a.kv_heads = h;
  a.q_len = a.kv_len = s;
  a.head_dim = a.v_head_dim = d;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  a.causal = causal;
  a.seq_major = seq_major;
  return a;
}

// Milliseconds per call of f on the default stream: 3 warm-up calls, then the mean of 20 between two events.
float time_ms(const std::function<bool()>& f) {
  for (int w = 0; w < 3; ++w) EXPECT_TRUE(f());
  void* a = cuda::event_record();
  for (int r = 0; r < 20; ++r) EXPECT_TRUE(f());
  void* b = cuda::event_record();
  const float ms = cuda::event_elapsed_ms(a, b) / 20;
  cuda::event_destroy(a);
  cuda::event_destroy(b);
  return ms;
}

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
      EXPECT_NE(op, std::string(kGalvatronDomain) + "::AttentionWithLse") << "AttentionWithLse took the CUDA fallback";
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

  // Attention and AttentionGrad on fresh Q, K, V (and dY) with the given mask (undefined: none); three_d: ONNX's 3-D
  // form (Q [B, S, Hq * D], ...; heads read in place by the flash kernels, permuted through scratch by v1).
  void both(const std::string& name, const Dims& d, bool causal, const Tensor& mask, double tol,
            Attributes extra = {}, bool three_d = false) {
    Attributes a = extra;
    if (causal) a.set_int("is_causal", 1);
    auto shape = [&](int64_t h, int64_t len, int64_t dim) {
      return three_d ? Shape{d.b, len, h * dim} : Shape{d.b, h, len, dim};
    };
    if (three_d) {
      a.set_int("q_num_heads", d.hq);
      a.set_int("kv_num_heads", d.hkv);
    }
    Tensor q = randn(shape(d.hq, d.s, d.d)), k = randn(shape(d.hkv, d.l, d.d)), v = randn(shape(d.hkv, d.l, d.dv));
    std::vector<Tensor> in = {q, k, v};
    if (mask.defined()) in.push_back(mask);
    check({name, in, a, false, tol});
    std::vector<Tensor> gin = {q, k, v, mask, randn(shape(d.hq, d.s, d.dv))};
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
    // The 3-D form.
    both("3-D GQA Hq4 Hkv2 causal", {2, 4, 2, 67, 67, 32, 32}, true, Tensor(), tol, {}, true);
    both("3-D Dv!=D S!=L", {2, 2, 2, 37, 90, 32, 48}, false, Tensor(), tol, {}, true);
    both("3-D bool mask [B,1,1,L]", {2, 3, 3, 40, 40, 16, 16}, true, keep_flags({2, 1, 1, 40}, 0.7), tol, {}, true);
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

// The attention paths of the bf16 mode: flash with mma.sync kernels (the default, forward and backward), flash with wmma kernels
// (GALVATRON_CUDA_FLASH_WMMA=1), v1 (GALVATRON_CUDA_FLASH=0). The launchers read the variables per call.
enum class Path { kMma, kWmma, kV1 };
const char* path_name(Path p) { return p == Path::kMma ? "flash mma" : p == Path::kWmma ? "flash wmma" : "v1"; }

// cuDNN's attention off for Q, K, V apart (it would take these shapes first), so that the flash and v1 paths run.
class CudnnOff {
 public:
  CudnnOff() { setenv("GALVATRON_CUDA_CUDNN_ATTENTION", "0", 1); }
  ~CudnnOff() { unsetenv("GALVATRON_CUDA_CUDNN_ATTENTION"); }
};

class FlashEnv {
 public:
  explicit FlashEnv(Path p) {
    setenv("GALVATRON_CUDA_FLASH", p == Path::kV1 ? "0" : "1", 1);
    setenv("GALVATRON_CUDA_FLASH_WMMA", p == Path::kWmma ? "1" : "0", 1);
  }
  ~FlashEnv() {
    unsetenv("GALVATRON_CUDA_FLASH");
    unsetenv("GALVATRON_CUDA_FLASH_WMMA");
  }

 private:
  CudnnOff cudnn_off_;
};

// Shapes the flash path takes (bf16, no mask, D == Dv <= 128): every case runs flash, then v1, both against the CPU.
TEST_F(CudaAttention, Bf16Flash) {
  PrecisionScope scope(*cuda_, "bf16");
  struct FlashCase {
    std::string name;
    Dims d;
    bool causal;
    bool three_d = false;
  };
  const std::vector<FlashCase> cases = {
      {"D64 causal S=L=256", {2, 4, 4, 256, 256, 64, 64}, true},
      {"D64 S=L=256", {2, 4, 4, 256, 256, 64, 64}, false},
      {"D128 causal S=L=192", {1, 3, 3, 192, 192, 128, 128}, true},
      {"D128 S=100 L=130", {1, 2, 2, 100, 130, 128, 128}, false},
      {"D64 GQA Hq6 Hkv2 causal S=L=67", {2, 6, 2, 67, 67, 64, 64}, true},
      {"D64 GQA Hq4 Hkv1 S=40 L=1000", {1, 4, 1, 40, 1000, 64, 64}, false},
      {"D64 causal S=1000 L=1000", {1, 2, 2, 1000, 1000, 64, 64}, true},
      {"D64 causal S=130 L=67 (S>L)", {1, 2, 2, 130, 67, 64, 64}, true},
      {"D64 causal S=67 L=200 (S<L)", {1, 2, 2, 67, 200, 64, 64}, true},
      {"D50 causal (padded to 64)", {2, 3, 3, 90, 90, 50, 50}, true},
      {"D32 causal", {1, 2, 2, 100, 100, 32, 32}, true},
      {"D80 GQA causal", {1, 4, 2, 70, 70, 80, 80}, true},
      {"D96", {1, 2, 2, 65, 65, 96, 96}, false},
      {"D8 S=1 L=5", {1, 1, 1, 1, 5, 8, 8}, false},
      // The 3-D form (sequence-major, heads in place; the wmma path hands it to the mma kernels).
      {"3-D D50 causal (gpt-1.5b heads)", {2, 4, 4, 130, 130, 50, 50}, true, true},
      {"3-D D64 GQA Hq6 Hkv2 causal", {2, 6, 2, 67, 67, 64, 64}, true, true},
      {"3-D D128 S=100 L=130", {1, 2, 2, 100, 130, 128, 128}, false, true},
  };
  for (Path path : {Path::kMma, Path::kWmma, Path::kV1}) {
    FlashEnv env(path);
    const bool flash = path != Path::kV1;
    for (const FlashCase& c : cases) {
      const int64_t before = cuda::flash_attention_calls();
      both(c.name + " [" + path_name(path) + "]", c.d, c.causal, Tensor(), 2e-2, {}, c.three_d);
      EXPECT_EQ(cuda::flash_attention_calls() - before, flash ? 2 : 0)
          << c.name << ": the flash path " << (flash ? "did not run" : "ran with GALVATRON_CUDA_FLASH=0");
    }
  }
  {
    // GALVATRON_CUDA_FLASH=fwd: the forward only.
    CudnnOff cudnn_off;
    setenv("GALVATRON_CUDA_FLASH", "fwd", 1);
    const int64_t before = cuda::flash_attention_calls();
    both("D64 causal [flash forward only]", {1, 2, 2, 100, 100, 64, 64}, true, Tensor(), 2e-2);
    EXPECT_EQ(cuda::flash_attention_calls() - before, 1);
    unsetenv("GALVATRON_CUDA_FLASH");
  }
  // Not taken: a mask, Dv != D, D > 128, or another precision.
  const int64_t before = cuda::flash_attention_calls();
  both("bool mask", {1, 2, 2, 64, 64, 64, 64}, true, keep_flags({1, 1, 1, 64}, 0.8), 2e-2);
  both("Dv != D", {1, 2, 2, 64, 64, 64, 32}, false, Tensor(), 2e-2);
  both("D 160", {1, 1, 1, 40, 40, 160, 160}, false, Tensor(), 2e-2);
  EXPECT_EQ(cuda::flash_attention_calls(), before) << "the flash path ran on a form it does not take";
}

// Fresh Q, K, V and dY of a case's dims in the 4-D or 3-D form, and the attributes that say which.
struct LseInputs {
  Attributes attrs;
  Tensor q, k, v, dy;
};
LseInputs lse_inputs(const Dims& d, bool causal, bool three_d) {
  LseInputs in;
  if (causal) in.attrs.set_int("is_causal", 1);
  auto shape = [&](int64_t h, int64_t len, int64_t dim) {
    return three_d ? Shape{d.b, len, h * dim} : Shape{d.b, h, len, dim};
  };
  if (three_d) {
    in.attrs.set_int("q_num_heads", d.hq);
    in.attrs.set_int("kv_num_heads", d.hkv);
  }
  in.q = randn(shape(d.hq, d.s, d.d));
  in.k = randn(shape(d.hkv, d.l, d.d));
  in.v = randn(shape(d.hkv, d.l, d.dv));
  in.dy = randn(shape(d.hq, d.s, d.dv));
  return in;
}

// Q, K, V apart through cuDNN (the default for the shapes it takes in the bf16 mode: Llama's 4-D attention with GQA,
// sequence-major 3-D inputs, heads padded from 50 to 56), forward and backward against the CPU; and AttentionWithLse's
// Y and LSE, then AttentionGrad given them. cuda::cudnn_attention_calls() says cuDNN ran, flash_attention_calls() that
// the flash kernels did not.
TEST_F(CudaAttention, Bf16CudnnApart) {
  if (!cuda::cudnn_attention_enabled()) GTEST_SKIP() << "built without the cuDNN frontend (or switched off)";
  PrecisionScope scope(*cuda_, "bf16");
  struct ApartCase {
    std::string name;
    Dims d;
    bool causal, three_d;
  };
  const std::vector<ApartCase> cases = {
      {"D64 causal S=L=256", {2, 4, 4, 256, 256, 64, 64}, true, false},
      {"D64 GQA Hq8 Hkv2 causal S=L=130 (Llama)", {2, 8, 2, 130, 130, 64, 64}, true, false},
      {"D50 S=L=90 (padded to 56)", {1, 3, 3, 90, 90, 50, 50}, false, false},
      {"3-D D64 GQA Hq6 Hkv2 causal S=L=67", {2, 6, 2, 67, 67, 64, 64}, true, true},
  };
  for (const ApartCase& c : cases) {
    const int64_t cudnn_before = cuda::cudnn_attention_calls(), flash_before = cuda::flash_attention_calls();
    both(c.name + " [cuDNN]", c.d, c.causal, Tensor(), 2e-2, {}, c.three_d);
    EXPECT_EQ(cuda::cudnn_attention_calls() - cudnn_before, 2) << c.name << ": cuDNN did not take both directions";
    EXPECT_EQ(cuda::flash_attention_calls(), flash_before) << c.name;
    const LseInputs in = lse_inputs(c.d, c.causal, c.three_d);
    const Attributes& a = in.attrs;
    const Tensor &q = in.q, &k = in.k, &v = in.v, &dy = in.dy;
    Case fwd{c.name + " with LSE [cuDNN]", {q, k, v}, a, false, 2e-2, true};
    check(fwd);
    auto ref = run_case(fwd, *cpu_);
    ASSERT_TRUE(ref.has_value()) << ref.status().message();
    check({c.name + " (grad given Y, LSE) [cuDNN]",
           {q, k, v, Tensor(), dy, ref->outputs[0], ref->outputs[1]},
           a,
           true,
           2e-2});
  }
  // Not taken: a mask, or query and key lengths that differ (the flash kernels run).
  const int64_t before = cuda::cudnn_attention_calls();
  both("bool mask", {1, 2, 2, 64, 64, 64, 64}, true, keep_flags({1, 1, 1, 64}, 0.8), 2e-2);
  both("S=100 L=130", {1, 2, 2, 100, 130, 64, 64}, false, Tensor(), 2e-2);
  EXPECT_EQ(cuda::cudnn_attention_calls(), before) << "cuDNN ran on a form it does not take";
}

// Q, K, V apart with bf16 operands and results (the training graph's bf16 attention I/O for Llama,
// runtime/bf16_attention_io.cpp): AttentionWithLse (Y bf16, LSE float32) and AttentionGrad (dY, Y bf16; dQ, dK, dV
// bf16) against the CPU, which computes on the widened values and rounds. cuDNN reads and writes heads of 64 in place
// and pads heads of 50; with cuDNN off the operands are widened for the flash kernels.
TEST_F(CudaAttention, Bf16OperandsApart) {
  PrecisionScope scope(*cuda_, "bf16");
  struct OperandCase {
    std::string name;
    Dims d;
    bool causal, cudnn;
  };
  const std::vector<OperandCase> cases = {
      {"3-D D64 GQA Hq8 Hkv2 causal S=L=130 (Llama) [cuDNN]", {2, 8, 2, 130, 130, 64, 64}, true, true},
      {"3-D D50 causal S=L=90 (padded to 56) [cuDNN]", {1, 3, 3, 90, 90, 50, 50}, true, true},
      {"3-D D64 GQA Hq6 Hkv2 causal S=L=67 [flash]", {2, 6, 2, 67, 67, 64, 64}, true, false},
  };
  auto bf16 = [](const Tensor& t) { return t.cast(DType::kBFloat16); };
  for (const OperandCase& c : cases) {
    if (c.cudnn && !cuda::cudnn_attention_enabled()) continue;
    std::optional<CudnnOff> off;
    if (!c.cudnn) off.emplace();
    const LseInputs in = lse_inputs(c.d, c.causal, true);
    const int64_t cudnn_before = cuda::cudnn_attention_calls(), flash_before = cuda::flash_attention_calls();
    Case fwd{c.name + " with LSE", {bf16(in.q), bf16(in.k), bf16(in.v)}, in.attrs, false, 2e-2, true};
    check(fwd);
    auto ref = run_case(fwd, *cpu_);
    ASSERT_TRUE(ref.has_value()) << ref.status().message();
    EXPECT_EQ(ref->outputs[0].dtype(), DType::kBFloat16);
    EXPECT_EQ(ref->outputs[1].dtype(), DType::kFloat32);
    check({c.name + " (grad given Y, LSE)",
           {bf16(in.q), bf16(in.k), bf16(in.v), Tensor(), bf16(in.dy), ref->outputs[0], ref->outputs[1]},
           in.attrs,
           true,
           2e-2});
    if (c.cudnn) {
      EXPECT_EQ(cuda::cudnn_attention_calls() - cudnn_before, 2) << c.name << ": cuDNN did not take both directions";
    } else {
      EXPECT_EQ(cuda::flash_attention_calls() - flash_before, 2) << c.name << ": the flash kernels did not run";
    }
  }
}

// galvatron AttentionWithLse on the flash path (Y and each row's log-sum-exp against the CPU), and AttentionGrad given
// the forward's Y and LSE (the flash backward then skips its statistics rerun) against the CPU, in both forms.
TEST_F(CudaAttention, Bf16FlashWithLse) {
  PrecisionScope scope(*cuda_, "bf16");
  CudnnOff cudnn_off;
  struct LseCase {
    std::string name;
    Dims d;
    bool causal, three_d;
  };
  const std::vector<LseCase> cases = {
      {"D64 causal S=L=256", {2, 4, 4, 256, 256, 64, 64}, true, false},
      {"D50 causal S=L=130 3-D", {2, 4, 4, 130, 130, 50, 50}, true, true},
      {"D64 GQA Hq6 Hkv2 S=67 L=90 3-D", {2, 6, 2, 67, 90, 64, 64}, false, true},
      {"D128 causal S=130 L=67 (S>L)", {1, 2, 2, 130, 67, 128, 128}, true, false},
  };
  for (const LseCase& c : cases) {
    const LseInputs in = lse_inputs(c.d, c.causal, c.three_d);
    const Attributes& a = in.attrs;
    const Tensor &q = in.q, &k = in.k, &v = in.v, &dy = in.dy;
    int64_t before = cuda::flash_attention_calls();
    Case fwd{c.name + " with LSE", {q, k, v}, a, false, 2e-2, true};
    check(fwd);
    EXPECT_EQ(cuda::flash_attention_calls() - before, 1) << c.name << ": the forward did not take the flash path";
    auto ref = run_case(fwd, *cpu_);
    ASSERT_TRUE(ref.has_value()) << ref.status().message();
    before = cuda::flash_attention_calls();
    check({c.name + " (grad given Y, LSE)", {q, k, v, Tensor(), dy, ref->outputs[0], ref->outputs[1]}, a, true, 2e-2});
    EXPECT_EQ(cuda::flash_attention_calls() - before, 1) << c.name << ": the backward did not take the flash path";
  }
}

// GPT-2 124M's attention at b8 (B8 H12 S=L=1024 D64 causal), bf16, called directly on device buffers: milliseconds per
// forward and backward call, flash against v1, and the two paths' results against each other.
TEST_F(CudaAttention, FlashTiming) {
  PrecisionScope scope(*cuda_, "bf16");
  const cuda::AttentionDims d = self_attention(8, 12, 1024, 64, true, false);  // scale 1/8
  const int64_t n = d.batch * d.q_heads * d.q_len * d.head_dim;
  std::vector<float*> buf(8, nullptr);  // q k v dy, then y dq dk dv (written by each path in turn)
  for (auto& p : buf) ASSERT_TRUE(cuda::malloc_device(reinterpret_cast<void**>(&p), n * sizeof(float)));
  for (int i = 0; i < 4; ++i) {
    Tensor t = randn({n});
    ASSERT_TRUE(cuda::memcpy_h2d(buf[i], t.data_as<float>(), n * sizeof(float)));
  }
  const Path paths[3] = {Path::kMma, Path::kWmma, Path::kV1};
  double ms[3][2];  // [path][forward, backward]
  std::vector<std::vector<float>> out[3];
  for (int path = 0; path < 3; ++path) {
    FlashEnv env(paths[path]);
    const int64_t before = cuda::flash_attention_calls();
    float *y = buf[4], *dq = buf[5], *dk = buf[6], *dv = buf[7];
    ms[path][0] = time_ms([&] { return cuda::attention_f32(d, buf[0], buf[1], buf[2], y); });
    ms[path][1] = time_ms([&] { return cuda::attention_grad_f32(d, buf[0], buf[1], buf[2], buf[3], dq, dk, dv); });
    EXPECT_EQ(cuda::flash_attention_calls() - before, paths[path] != Path::kV1 ? 46 : 0);
    ASSERT_TRUE(cuda::synchronize()) << cuda::last_error();
    for (float* p : {y, dq, dk, dv}) {
      std::vector<float> h(n);
      ASSERT_TRUE(cuda::memcpy_d2h(h.data(), p, n * sizeof(float)));
      out[path].push_back(std::move(h));
    }
  }
  const char* names[4] = {"Y", "dQ", "dK", "dV"};
  for (int f = 0; f < 2; ++f) {
    for (int o = 0; o < 4; ++o) {
    double num = 0, den = 0;
    bool finite = true;
    for (int64_t i = 0; i < n; ++i) {
      const double a = out[f][o][i], b = out[2][o][i];
      finite = finite && std::isfinite(a);
      num += (a - b) * (a - b);
      den += b * b;
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    EXPECT_TRUE(finite) << names[o];
    EXPECT_LE(rel, 2e-2) << names[o] << ": " << path_name(paths[f]) << " vs v1 relative difference " << rel;
    std::printf("[ flash ] GPT-2 b8 %s: %s vs v1 relative difference %.3g\n", names[o], path_name(paths[f]), rel);
    }
  }
  const double flop_fwd = 4.0 * d.batch * d.q_heads * d.q_len * d.kv_len * d.head_dim / 2;  // causal: half
  for (int p = 0; p < 3; ++p) {
    std::printf("[ flash ] GPT-2 b8 attention per call, %s: forward %.3f ms (%.0f TFLOP/s), backward %.3f ms\n",
                path_name(paths[p]), ms[p][0], flop_fwd / ms[p][0] / 1e9, ms[p][1]);
  }
  for (float* p : buf) cuda::free_device(p);
}

// The flash kernels on the 3-D form's layout (heads read in place, sequence-major) against the 4-D form's, at GPT-2
// b8's and gpt-1.5b b4's shapes: the same results (up to dQ's atomic summation order) and the time per call of each.
TEST_F(CudaAttention, FlashLayoutTiming) {
  PrecisionScope scope(*cuda_, "bf16");
  struct Shape4 {
    const char* name;
    int64_t b, h, s, d;
  };
  for (const Shape4& sh : {Shape4{"GPT-2 b8", 8, 12, 1024, 64}, Shape4{"gpt-1.5b b4", 4, 32, 1024, 50}}) {
    const cuda::AttentionDims d = self_attention(sh.b, sh.h, sh.s, sh.d, true, false);
    const int64_t n = sh.b * sh.h * sh.s * sh.d;
    // [layout][q k v dy y dq dk dv]
    std::vector<float*> buf[2];
    for (auto& b : buf) {
      b.assign(8, nullptr);
      for (auto& p : b) ASSERT_TRUE(cuda::malloc_device(reinterpret_cast<void**>(&p), n * sizeof(float)));
    }
    // Head-major inputs, and the same tensors sequence-major.
    for (int i = 0; i < 4; ++i) {
      Tensor t = randn({sh.b, sh.h, sh.s, sh.d});
      Tensor u(DType::kFloat32, {sh.b, sh.s, sh.h, sh.d});
      for (int64_t b = 0; b < sh.b; ++b)
        for (int64_t h = 0; h < sh.h; ++h)
          for (int64_t s = 0; s < sh.s; ++s)
            std::memcpy(u.data_as<float>() + ((b * sh.s + s) * sh.h + h) * sh.d,
                        t.data_as<float>() + ((b * sh.h + h) * sh.s + s) * sh.d, sh.d * sizeof(float));
      ASSERT_TRUE(cuda::memcpy_h2d(buf[0][i], t.data_as<float>(), n * sizeof(float)));
      ASSERT_TRUE(cuda::memcpy_h2d(buf[1][i], u.data_as<float>(), n * sizeof(float)));
    }
    double ms[2][2];
    std::vector<float> out[2][4];
    for (int l = 0; l < 2; ++l) {
      cuda::AttentionDims dl = d;
      dl.seq_major = l == 1;
      const std::vector<float*>& b = buf[l];
      const int64_t before = cuda::flash_attention_calls();
      ms[l][0] = time_ms([&] { return cuda::attention_f32(dl, b[0], b[1], b[2], b[4]); });
      ms[l][1] = time_ms([&] { return cuda::attention_grad_f32(dl, b[0], b[1], b[2], b[3], b[5], b[6], b[7]); });
      EXPECT_EQ(cuda::flash_attention_calls() - before, 46);
      ASSERT_TRUE(cuda::synchronize()) << cuda::last_error();
      for (int o = 0; o < 4; ++o) {
        out[l][o].resize(n);
        ASSERT_TRUE(cuda::memcpy_d2h(out[l][o].data(), b[4 + o], n * sizeof(float)));
      }
    }
    const char* names[4] = {"Y", "dQ", "dK", "dV"};
    for (int o = 0; o < 4; ++o) {
      double num = 0, den = 0;
      for (int64_t b = 0; b < sh.b; ++b)
        for (int64_t h = 0; h < sh.h; ++h)
          for (int64_t s = 0; s < sh.s; ++s)
            for (int64_t c = 0; c < sh.d; ++c) {
              const double x = out[0][o][((b * sh.h + h) * sh.s + s) * sh.d + c];
              const double y = out[1][o][((b * sh.s + s) * sh.h + h) * sh.d + c];
              num += (x - y) * (x - y);
              den += x * x;
            }
      const double rel = std::sqrt(num / std::max(den, 1e-30));
      EXPECT_LE(rel, 1e-5) << sh.name << " " << names[o] << ": 3-D vs 4-D layout relative difference " << rel;
    }
    std::printf("[ flash ] %s per call: 4-D forward %.3f ms, backward %.3f ms; 3-D forward %.3f ms, backward %.3f ms\n",
                sh.name, ms[0][0], ms[0][1], ms[1][0], ms[1][1]);
    for (auto& b : buf)
      for (float* p : b) cuda::free_device(p);
  }
}

// cuDNN's fused attention on packed QKV (kernels/cuda/cudnn_attention.cpp) against the flash kernels on the same
// inputs: Y, LSE and dQKV (each backward fed its own forward's Y and LSE) within bf16's 2e-2; both per-call times at
// the bench's shapes. gpt-1.5b's heads of 50 go through cuDNN padded to 56. (The CPU reference of the same op, which
// the runtime now sends to cuDNN: CudaKernels.AttentionPackedBf16.)
TEST_F(CudaAttention, CudnnPackedAgainstFlash) {
  if (!cuda::cudnn_attention_enabled()) GTEST_SKIP() << "built without the cuDNN frontend (or switched off)";
  PrecisionScope scope(*cuda_, "bf16");
  struct Shape4 {
    const char* name;
    int64_t b, h, s, d;
    bool causal, timed;
  };
  for (const Shape4& sh : {Shape4{"B2 S130 H4 D50 causal", 2, 4, 130, 50, true, false},
                           Shape4{"B1 S256 H3 D64", 1, 3, 256, 64, false, false},
                           Shape4{"GPT-2 b8", 8, 12, 1024, 64, true, true},
                           Shape4{"gpt-1.5b b4", 4, 32, 1024, 50, true, true}}) {
    SCOPED_TRACE(sh.name);
    const cuda::AttentionDims d = self_attention(sh.b, sh.h, sh.s, sh.d, sh.causal, true);
    ASSERT_TRUE(cuda::cudnn_attention_supported(d, true)) << "cuDNN declined the shape";
    const int64_t nqkv = sh.b * sh.s * 3 * sh.h * sh.d, ny = sh.b * sh.s * sh.h * sh.d, nl = sh.b * sh.h * sh.s;
    // [path][qkv dy y lse dqkv]
    float* buf[2][5];
    const int64_t sizes[5] = {nqkv, ny, ny, nl, nqkv};
    Tensor qkv = randn({nqkv}), dy = randn({ny});
    for (auto& b : buf) {
      for (int i = 0; i < 5; ++i) ASSERT_TRUE(cuda::malloc_device(reinterpret_cast<void**>(&b[i]), sizes[i] * 4));
      ASSERT_TRUE(cuda::memcpy_h2d(b[0], qkv.data(), nqkv * 4));
      ASSERT_TRUE(cuda::memcpy_h2d(b[1], dy.data(), ny * 4));
    }
    auto fwd = [&](int p) {
      float* const* b = buf[p];
      return p == 0 ? cuda::flash_attention_packed_f32(d, b[0], b[2], b[3])
                    : cuda::cudnn_attention_packed(d, {b[0], false}, b[2], false, b[3]);
    };
    auto bwd = [&](int p) {
      float* const* b = buf[p];
      return p == 0 ? cuda::flash_attention_packed_grad_f32(d, b[0], b[1], b[2], b[3], b[4])
                    : cuda::cudnn_attention_packed_grad(d, {b[0], false}, {b[1], false}, {b[2], false}, b[3], b[4],
                                                        false);
    };
    double ms[2][2] = {};
    std::vector<float> out[2][3];
    for (int p = 0; p < 2; ++p) {
      ASSERT_TRUE(fwd(p)) << cuda::last_error();
      ASSERT_TRUE(bwd(p)) << cuda::last_error();
      if (sh.timed) {
        ms[p][0] = time_ms([&] { return fwd(p); });
        ms[p][1] = time_ms([&] { return bwd(p); });
      }
      ASSERT_TRUE(cuda::synchronize()) << cuda::last_error();
      const int idx[3] = {2, 3, 4};
      for (int o = 0; o < 3; ++o) {
        out[p][o].resize(sizes[idx[o]]);
        ASSERT_TRUE(cuda::memcpy_d2h(out[p][o].data(), buf[p][idx[o]], sizes[idx[o]] * 4));
      }
    }
    const char* names[3] = {"Y", "LSE", "dQKV"};
    for (int o = 0; o < 3; ++o) {
      double num = 0, den = 0;
      for (size_t i = 0; i < out[0][o].size(); ++i) {
        const double x = out[0][o][i], y = out[1][o][i];
        num += (x - y) * (x - y);
        den += x * x;
      }
      const double rel = std::sqrt(num / std::max(den, 1e-30));
      EXPECT_LE(rel, 2e-2) << names[o] << ": cuDNN vs flash relative difference " << rel;
      std::printf("[ cudnn ] %s %s: cuDNN vs flash relative difference %.3g\n", sh.name, names[o], rel);
    }
    if (sh.timed) {
      std::printf("[ cudnn ] %s per call: flash forward %.3f ms, backward %.3f ms; cuDNN forward %.3f ms, backward "
                  "%.3f ms\n", sh.name, ms[0][0], ms[0][1], ms[1][0], ms[1][1]);
    }
    for (auto& b : buf)
      for (float* q : b) cuda::free_device(q);
  }
}

// The saved padded heads of galvatron AttentionPacked (runtime/attention_saved_heads.cpp): cuDNN's forward writing its
// padded Q, K, V and O into the given buffers, and its backward reading them instead of packing QKV and Y again, give
// the same Y, LSE and dQKV bits as the calls that pack into scratch; the buffers hold QKV and Y rounded to bf16 with
// each head of 50 padded to 56 by zeros.
TEST_F(CudaAttention, CudnnSavedHeadsSameBits) {
  if (!cuda::cudnn_attention_enabled()) GTEST_SKIP() << "built without the cuDNN frontend (or switched off)";
  PrecisionScope scope(*cuda_, "bf16");
  const int64_t B = 2, H = 4, S = 130, D = 50, Dp = cuda::cudnn_padded_head_dim(D);
  ASSERT_EQ(Dp, 56);
  const cuda::AttentionDims d = self_attention(B, H, S, D, true, true);
  ASSERT_TRUE(cuda::cudnn_attention_supported(d, true)) << "cuDNN declined the shape";
  const int64_t rows = B * S, nqkv = rows * 3 * H * D, ny = rows * H * D, nl = B * H * S;
  const Tensor qkv = randn({nqkv}), dy = randn({ny});
  // [path][qkv dy y lse dqkv], path 1 with the padded buffers
  float* buf[2][5];
  const int64_t sizes[5] = {nqkv, ny, ny, nl, nqkv};
  uint16_t *qkv_p = nullptr, *y_p = nullptr;
  ASSERT_TRUE(cuda::malloc_device(reinterpret_cast<void**>(&qkv_p), rows * 3 * H * Dp * 2));
  ASSERT_TRUE(cuda::malloc_device(reinterpret_cast<void**>(&y_p), rows * H * Dp * 2));
  std::vector<float> out[2][3];
  for (int p = 0; p < 2; ++p) {
    float** b = buf[p];
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(cuda::malloc_device(reinterpret_cast<void**>(&b[i]), sizes[i] * 4));
    ASSERT_TRUE(cuda::memcpy_h2d(b[0], qkv.data(), nqkv * 4));
    ASSERT_TRUE(cuda::memcpy_h2d(b[1], dy.data(), ny * 4));
    ASSERT_TRUE(cuda::cudnn_attention_packed(d, {b[0], false}, b[2], false, b[3], p ? qkv_p : nullptr,
                                             p ? y_p : nullptr))
        << cuda::last_error();
    ASSERT_TRUE(cuda::cudnn_attention_packed_grad(d, {b[0], false}, {b[1], false}, {b[2], false}, b[3], b[4], false,
                                                  p ? qkv_p : nullptr, p ? y_p : nullptr))
        << cuda::last_error();
    ASSERT_TRUE(cuda::synchronize()) << cuda::last_error();
    const int idx[3] = {2, 3, 4};
    for (int o = 0; o < 3; ++o) {
      out[p][o].resize(sizes[idx[o]]);
      ASSERT_TRUE(cuda::memcpy_d2h(out[p][o].data(), b[idx[o]], sizes[idx[o]] * 4));
    }
  }
  const char* names[3] = {"Y", "LSE", "dQKV"};
  for (int o = 0; o < 3; ++o) {
    EXPECT_EQ(std::memcmp(out[0][o].data(), out[1][o].data(), out[0][o].size() * 4), 0) << names[o];
  }
  // The buffers: bf16 QKV and Y (Y is the widened bf16 O) with zero padding.
  auto expect_padded = [&](const uint16_t* dev, const float* src, int64_t heads, const char* what) {
    std::vector<uint16_t> got(static_cast<size_t>(heads * Dp));
    ASSERT_TRUE(cuda::memcpy_d2h(got.data(), dev, got.size() * 2));
    int64_t bad = 0;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < Dp; ++i) bad += got[h * Dp + i] != (i < D ? float_to_bf16(src[h * D + i]) : 0);
    EXPECT_EQ(bad, 0) << what;
  };
  expect_padded(qkv_p, qkv.data_as<float>(), rows * 3 * H, "QKVp");
  expect_padded(y_p, out[0][0].data(), rows * H, "Yp");
  for (auto& b : buf)
    for (float* q : b) cuda::free_device(q);
  cuda::free_device(qkv_p);
  cuda::free_device(y_p);
}

// The head (un)packing around cuDNN's attention (kernels/cuda/attention_pack.cu) against a host loop, bit for bit:
// float32 and bf16 sources to bf16 heads padded to Dp (zeros past D), and back to float32 and bf16, for even and odd
// head dims (the 32-bit-word paths and the per-element one). Prints the per-call time at gpt-1.5b b4's packed QKV.
TEST_F(CudaAttention, HeadPacking) {
  struct Dims {
    int64_t heads, d, dp;
    bool timed;
  };
  for (const Dims& c : {Dims{7, 50, 56, false}, Dims{5, 13, 16, false}, Dims{3, 3, 8, false},
                        Dims{11, 64, 64, false}, Dims{4096 * 96, 50, 56, true}}) {
    SCOPED_TRACE("heads " + std::to_string(c.heads) + " D " + std::to_string(c.d) + " Dp " + std::to_string(c.dp));
    const int64_t n = c.heads * c.d, np = c.heads * c.dp;
    Tensor src = randn({n});
    std::vector<uint16_t> src16(n), want(np, 0);
    for (int64_t i = 0; i < n; ++i) src16[i] = float_to_bf16(src.data_as<float>()[i]);
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t k = 0; k < c.d; ++k) want[h * c.dp + k] = src16[h * c.d + k];
    void *s32 = nullptr, *s16 = nullptr, *packed = nullptr, *back32 = nullptr, *back16 = nullptr;
    ASSERT_TRUE(cuda::malloc_device(&s32, n * 4) && cuda::malloc_device(&s16, n * 2) &&
                cuda::malloc_device(&packed, np * 2) && cuda::malloc_device(&back32, n * 4) &&
                cuda::malloc_device(&back16, n * 2));
    ASSERT_TRUE(cuda::memcpy_h2d(s32, src.data(), n * 4) && cuda::memcpy_h2d(s16, src16.data(), n * 2));
    auto* p16 = static_cast<uint16_t*>(packed);
    const std::vector<uint16_t> garbage(np, 0xffff);
    for (bool from_bf16 : {false, true}) {
      SCOPED_TRACE(from_bf16 ? "bf16 source" : "float32 source");
      ASSERT_TRUE(cuda::memcpy_h2d(packed, garbage.data(), np * 2));  // the padding must be written, not left
      ASSERT_TRUE(cuda::pack_heads_bf16({from_bf16 ? s16 : s32, from_bf16}, c.heads, c.d, c.dp, p16))
          << cuda::last_error();
      std::vector<uint16_t> got(np);
      ASSERT_TRUE(cuda::memcpy_d2h(got.data(), packed, np * 2));
      int64_t bad = 0;
      for (int64_t i = 0; i < np; ++i) bad += got[i] != want[i];
      EXPECT_EQ(bad, 0) << "of " << np << " packed elements differ";
    }
    ASSERT_TRUE(cuda::unpack_heads_f32(p16, c.heads, c.d, c.dp, static_cast<float*>(back32)) &&
                cuda::unpack_heads_bf16(p16, c.heads, c.d, c.dp, static_cast<uint16_t*>(back16)))
        << cuda::last_error();
    std::vector<float> got32(n);
    std::vector<uint16_t> got16(n);
    ASSERT_TRUE(cuda::memcpy_d2h(got32.data(), back32, n * 4) && cuda::memcpy_d2h(got16.data(), back16, n * 2));
    int64_t bad32 = 0, bad16 = 0;
    for (int64_t i = 0; i < n; ++i) {
      bad32 += got32[i] != bf16_to_float(src16[i]);
      bad16 += got16[i] != src16[i];
    }
    EXPECT_EQ(bad32, 0) << "of " << n << " float32 results differ";
    EXPECT_EQ(bad16, 0) << "of " << n << " bf16 results differ";
    if (c.timed) {
      const float pack_ms = time_ms([&] { return cuda::pack_heads_bf16({s16, true}, c.heads, c.d, c.dp, p16); });
      const float unpack_ms = time_ms(
          [&] { return cuda::unpack_heads_bf16(p16, c.heads, c.d, c.dp, static_cast<uint16_t*>(back16)); });
      const double bytes = 2.0 * (n + np);
      std::printf("[ pack ] bf16 heads %lld x %lld -> %lld: pack %.4f ms (%.2f TB/s), unpack %.4f ms (%.2f TB/s)\n",
                  static_cast<long long>(c.heads), static_cast<long long>(c.d), static_cast<long long>(c.dp),
                  pack_ms, bytes / pack_ms / 1e9, unpack_ms, bytes / unpack_ms / 1e9);
    }
    for (void* p : {s32, s16, packed, back32, back16}) cuda::free_device(p);
  }
}

// GPT-2 124M's shape at batch 1 (one batch row of the bench's b8), fp32: the workspace and products at size.
TEST_F(CudaAttention, Gpt2Shape) {
  both("GPT-2 B1 H12 S=L=1024 D64 causal", {1, 12, 12, 1024, 1024, 64, 64}, true, Tensor(), 1e-5);
}

}  // namespace
}  // namespace gv

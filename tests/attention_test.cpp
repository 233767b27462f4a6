// The CPU attention kernels (kernels/cpu/attention.h) against a naive float64 composition (explicit scores, masked
// softmax, product), their backward against central differences of that composition, and the Attention /
// AttentionGrad ops' inference errors and glue (mask broadcasting through the op).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/cpu/attention.h"
#include "runtime/autograd.h"
#include "tests/op_test_util.h"

namespace gv {
namespace {

struct Case {
  std::string label;
  cpu::AttentionShape s;
  enum MaskKind { kNone, kBool, kFloat } mask = kNone;
  Shape mask_shape;  // rank <= 4, broadcast to [B, Hq, S, L]
  bool fully_masked_row = false;  // bool masks: query row 1 masks every key (of every batch and head)
};

cpu::AttentionShape shape(int64_t b, int64_t hq, int64_t hkv, int64_t s, int64_t l, int64_t d, int64_t dv, bool causal) {
  cpu::AttentionShape a;
  a.batch = b, a.q_heads = hq, a.kv_heads = hkv, a.q_len = s, a.kv_len = l, a.head_dim = d, a.v_head_dim = dv;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  a.causal = causal;
  return a;
}

std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({"plain", shape(2, 3, 3, 5, 5, 4, 4, false), Case::kNone, {}});
  c.push_back({"causal", shape(2, 2, 2, 7, 7, 3, 5, true), Case::kNone, {}});
  c.push_back({"gqa causal, S < L", shape(1, 4, 2, 3, 6, 4, 2, true), Case::kNone, {}});
  c.push_back({"mqa, S > L", shape(2, 4, 1, 6, 4, 3, 3, false), Case::kNone, {}});
  c.push_back({"float mask [L]", shape(2, 2, 2, 4, 5, 3, 3, false), Case::kFloat, {5}, false});
  c.push_back({"float mask [B,1,S,L], causal, gqa", shape(2, 4, 2, 5, 5, 3, 2, true), Case::kFloat, {2, 1, 5, 5}, false});
  c.push_back({"bool mask [B,1,1,L]", shape(2, 2, 1, 4, 6, 3, 3, false), Case::kBool, {2, 1, 1, 6}, false});
  c.push_back({"bool mask [Hq,S,L], fully masked row", shape(2, 2, 2, 4, 4, 3, 3, false), Case::kBool, {2, 4, 4}, true});
  c.push_back({"causal, S > L", shape(1, 2, 2, 6, 3, 2, 2, true), Case::kNone, {}});
  c.push_back({"rows over the block size", shape(1, 1, 1, 150, 140, 8, 8, true), Case::kFloat, {150, 140}, false});
  return c;
}

std::vector<double> randn(int64_t n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = d(rng);
  return v;
}

struct Data {
  std::vector<double> q, k, v, dy, mask_f;
  std::vector<uint8_t> mask_b;
  int64_t strides[4] = {0, 0, 0, 0};
};

Data make_data(const Case& c, uint64_t seed) {
  const cpu::AttentionShape& s = c.s;
  std::mt19937_64 rng(seed);
  Data d;
  d.q = randn(s.batch * s.q_heads * s.q_len * s.head_dim, rng);
  d.k = randn(s.batch * s.kv_heads * s.kv_len * s.head_dim, rng);
  d.v = randn(s.batch * s.kv_heads * s.kv_len * s.v_head_dim, rng);
  d.dy = randn(s.batch * s.q_heads * s.q_len * s.v_head_dim, rng);
  const int64_t mn = shape_numel(c.mask_shape);
  if (c.mask == Case::kFloat) d.mask_f = randn(mn, rng, 2.0);
  if (c.mask == Case::kBool) {
    std::bernoulli_distribution keep(0.7);
    d.mask_b.resize(static_cast<size_t>(mn));
    for (auto& x : d.mask_b) x = keep(rng);
  }
  if (c.mask != Case::kNone) {
    const Shape full = {s.batch, s.q_heads, s.q_len, s.kv_len};
    const int r = static_cast<int>(c.mask_shape.size());
    int64_t stride = 1;
    for (int dd = 3; dd >= 0; --dd) {
      const int md = dd - (4 - r);
      d.strides[dd] = (md < 0 || c.mask_shape[md] != full[dd]) ? 0 : stride;
      if (md >= 0) stride *= c.mask_shape[md];
    }
  }
  if (c.fully_masked_row) {
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t j = 0; j < s.kv_len; ++j) d.mask_b[h * d.strides[1] + 1 * d.strides[2] + j * d.strides[3]] = 0;
  }
  return d;
}

// y = softmax(scale q k^T + mask, causal) v with everything spelled out, in float64. A row with every key masked
// gives zeros.
std::vector<double> naive_forward(const Case& c, const Data& d, const std::vector<double>& q,
                                  const std::vector<double>& k, const std::vector<double>& v) {
  const cpu::AttentionShape& s = c.s;
  const int64_t group = s.q_heads / s.kv_heads;
  std::vector<double> y(static_cast<size_t>(s.batch * s.q_heads * s.q_len * s.v_head_dim), 0.0);
  std::vector<double> sc(static_cast<size_t>(s.kv_len));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        const int64_t kh = h / group;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < s.kv_len; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < s.head_dim; ++e)
            dot += q[((b * s.q_heads + h) * s.q_len + i) * s.head_dim + e] *
                   k[((b * s.kv_heads + kh) * s.kv_len + j) * s.head_dim + e];
          double x = static_cast<double>(s.scale) * dot;
          const int64_t mi = b * d.strides[0] + h * d.strides[1] + i * d.strides[2] + j * d.strides[3];
          if (c.mask == Case::kFloat) x += d.mask_f[mi];
          if (c.mask == Case::kBool && !d.mask_b[mi]) x = -std::numeric_limits<double>::infinity();
          if (s.causal && j > i) x = -std::numeric_limits<double>::infinity();
          sc[j] = x;
          mx = std::max(mx, x);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;
        double sum = 0;
        for (double& x : sc) sum += (x = std::exp(x - mx));
        for (int64_t e = 0; e < s.v_head_dim; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < s.kv_len; ++j)
            acc += sc[j] / sum * v[((b * s.kv_heads + kh) * s.kv_len + j) * s.v_head_dim + e];
          y[((b * s.q_heads + h) * s.q_len + i) * s.v_head_dim + e] = acc;
        }
      }
  return y;
}

cpu::AttentionMask float_mask_view(const Case& c, const Data& d, const std::vector<float>& mf) {
  cpu::AttentionMask m;
  if (c.mask == Case::kNone) return m;
  m.is_bool = c.mask == Case::kBool;
  m.data = m.is_bool ? static_cast<const void*>(d.mask_b.data()) : static_cast<const void*>(mf.data());
  std::copy(d.strides, d.strides + 4, m.strides);
  return m;
}

cpu::AttentionMask double_mask_view(const Case& c, const Data& d) {
  cpu::AttentionMask m;
  if (c.mask == Case::kNone) return m;
  m.is_bool = c.mask == Case::kBool;
  m.data = m.is_bool ? static_cast<const void*>(d.mask_b.data()) : static_cast<const void*>(d.mask_f.data());
  std::copy(d.strides, d.strides + 4, m.strides);
  return m;
}

std::vector<float> to_f32(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

double max_abs_diff(const std::vector<double>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

TEST(AttentionKernel, ForwardMatchesNaiveComposition) {
  uint64_t seed = 1;
  for (const Case& c : cases()) {
    const Data d = make_data(c, seed++);
    const std::vector<double> ref = naive_forward(c, d, d.q, d.k, d.v);
    const std::vector<float> mf = to_f32(d.mask_f);
    std::vector<float> y(ref.size(), std::nanf(""));
    cpu::attention_forward(c.s, to_f32(d.q).data(), to_f32(d.k).data(), to_f32(d.v).data(), float_mask_view(c, d, mf),
                           y.data());
    EXPECT_LE(max_abs_diff(ref, y), 2e-5) << c.label;
    std::vector<double> y64(ref.size(), std::nan(""));
    cpu::attention_forward(c.s, d.q.data(), d.k.data(), d.v.data(), double_mask_view(c, d), y64.data());
    double m = 0;
    for (size_t i = 0; i < ref.size(); ++i) m = std::max(m, std::fabs(ref[i] - y64[i]));
    EXPECT_LE(m, 1e-12) << c.label;
    if (c.fully_masked_row) {
      for (int64_t bh = 0; bh < c.s.batch * c.s.q_heads; ++bh)
        for (int64_t e = 0; e < c.s.v_head_dim; ++e) EXPECT_EQ(y[(bh * c.s.q_len + 1) * c.s.v_head_dim + e], 0.0f);
    }
  }
}

// Gradients of sum(y * dy) by central differences of the naive float64 composition, against the float64 kernel;
// the float32 kernel against the float64 one.
TEST(AttentionKernel, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 100;
  for (const Case& c : cases()) {
    if (c.s.q_len > 64) continue;  // finite differences over every element: the small cases suffice
    const Data d = make_data(c, seed++);
    std::vector<double> dq(d.q.size()), dk(d.k.size()), dv(d.v.size());
    cpu::attention_backward(c.s, d.q.data(), d.k.data(), d.v.data(), double_mask_view(c, d), d.dy.data(), dq.data(),
                            dk.data(), dv.data());
    auto objective = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
      const std::vector<double> y = naive_forward(c, d, q, k, v);
      double s = 0;
      for (size_t i = 0; i < y.size(); ++i) s += y[i] * d.dy[i];
      return s;
    };
    const double eps = 1e-6;
    auto check = [&](int which, const std::vector<double>& grad, const char* name) {
      std::vector<double> q = d.q, k = d.k, v = d.v;
      std::vector<double>& x = which == 0 ? q : which == 1 ? k : v;
      double worst = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        const double x0 = x[i];
        x[i] = x0 + eps;
        const double up = objective(q, k, v);
        x[i] = x0 - eps;
        const double down = objective(q, k, v);
        x[i] = x0;
        worst = std::max(worst, std::fabs((up - down) / (2 * eps) - grad[i]));
      }
      EXPECT_LE(worst, 1e-7) << c.label << ": d" << name;
    };
    check(0, dq, "Q");
    check(1, dk, "K");
    check(2, dv, "V");
    const std::vector<float> mf = to_f32(d.mask_f);
    std::vector<float> fq(dq.size()), fk(dk.size()), fv(dv.size());
    cpu::attention_backward(c.s, to_f32(d.q).data(), to_f32(d.k).data(), to_f32(d.v).data(), float_mask_view(c, d, mf),
                            to_f32(d.dy).data(), fq.data(), fk.data(), fv.data());
    EXPECT_LE(max_abs_diff(dq, fq), 1e-4) << c.label;
    EXPECT_LE(max_abs_diff(dk, fk), 1e-4) << c.label;
    EXPECT_LE(max_abs_diff(dv, fv), 1e-4) << c.label;
    if (c.fully_masked_row) {
      for (int64_t bh = 0; bh < c.s.batch * c.s.q_heads; ++bh)
        for (int64_t e = 0; e < c.s.head_dim; ++e) EXPECT_EQ(fq[(bh * c.s.q_len + 1) * c.s.head_dim + e], 0.0f);
    }
  }
}

Tensor rand_tensor(const Shape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Tensor t(DType::kFloat32, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = d(rng);
  return t;
}

// The op reads the scale attribute (default 1/sqrt(D)), is_causal and a broadcast float mask as the kernel does.
TEST(AttentionOp, RunsThroughTheRegistry) {
  Case c{"op", shape(2, 4, 2, 3, 5, 4, 6, true), Case::kFloat, {1, 1, 3, 5}};
  c.s.scale = 0.3f;
  const Data d = make_data(c, 7);
  const std::vector<double> ref = naive_forward(c, d, d.q, d.k, d.v);
  auto tensor = [](const std::vector<double>& v, Shape s) {
    Tensor t(DType::kFloat32, std::move(s));
    for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = static_cast<float>(v[i]);
    return t;
  };
  Attributes a;
  a.set_float("scale", 0.3f);
  a.set_int("is_causal", 1);
  auto r = testing::run_op("Attention",
                           {tensor(d.q, {2, 4, 3, 4}), tensor(d.k, {2, 2, 5, 4}), tensor(d.v, {2, 2, 5, 6}),
                            tensor(d.mask_f, {1, 1, 3, 5})},
                           a, 1, 23);
  ASSERT_TRUE(r.has_value()) << r.status().message();
  ASSERT_EQ(r->outputs[0].shape(), (Shape{2, 4, 3, 6}));
  double m = 0;
  for (size_t i = 0; i < ref.size(); ++i) m = std::max(m, std::fabs(ref[i] - r->outputs[0].data_as<float>()[i]));
  EXPECT_LE(m, 2e-5);
  // Default scale: 1/sqrt(D).
  c.s.scale = 0.5f;
  const std::vector<double> ref2 = naive_forward(c, d, d.q, d.k, d.v);
  Attributes causal;
  causal.set_int("is_causal", 1);
  auto r2 = testing::run_op("Attention",
                            {tensor(d.q, {2, 4, 3, 4}), tensor(d.k, {2, 2, 5, 4}), tensor(d.v, {2, 2, 5, 6}),
                             tensor(d.mask_f, {1, 1, 3, 5})},
                            causal, 1, 23);
  ASSERT_TRUE(r2.has_value()) << r2.status().message();
  m = 0;
  for (size_t i = 0; i < ref2.size(); ++i) m = std::max(m, std::fabs(ref2[i] - r2->outputs[0].data_as<float>()[i]));
  EXPECT_LE(m, 2e-5);
}

TEST(AttentionOp, InferenceErrorsNameTheProblem) {
  const Tensor q = rand_tensor({1, 2, 3, 4}, 1), k = rand_tensor({1, 2, 5, 4}, 2), v = rand_tensor({1, 2, 5, 4}, 3);
  auto error_of = [](std::vector<Tensor> in, Attributes a = {}, int outputs = 1) {
    auto r = testing::run_op("Attention", in, a, outputs, 23);
    return r.has_value() ? std::string("ok") : r.status().message();
  };
  EXPECT_EQ(error_of({q, k, v}), "ok");
  EXPECT_NE(error_of({q, k, v, Tensor(), rand_tensor({1, 2, 1, 4}, 4), rand_tensor({1, 2, 1, 4}, 5)}).find("past_key"),
            std::string::npos);
  EXPECT_NE(error_of({q, k, v}, {}, 3).find("present_key"), std::string::npos);
  Attributes cap;
  cap.set_float("softcap", 30.0f);
  EXPECT_NE(error_of({q, k, v}, cap).find("softcap"), std::string::npos);
  Attributes mode;
  mode.set_int("qk_matmul_output_mode", 1);
  EXPECT_NE(error_of({q, k, v}, mode).find("qk_matmul_output_mode"), std::string::npos);
  // The 3-D form needs the head counts; ranks cannot be mixed.
  EXPECT_NE(error_of({rand_tensor({1, 3, 4}, 6), rand_tensor({1, 5, 4}, 7), rand_tensor({1, 5, 4}, 8)})
                .find("q_num_heads"),
            std::string::npos);
  EXPECT_NE(error_of({rand_tensor({1, 3, 8}, 6), k, v}).find("rank 4"), std::string::npos);
  Attributes heads;
  heads.set_int("q_num_heads", 3);
  heads.set_int("kv_num_heads", 3);
  EXPECT_NE(error_of({rand_tensor({1, 3, 8}, 6), rand_tensor({1, 5, 6}, 7), rand_tensor({1, 5, 6}, 8)}, heads)
                .find("multiples of q_num_heads"),
            std::string::npos);
  EXPECT_NE(error_of({q, rand_tensor({1, 3, 5, 4}, 9), rand_tensor({1, 3, 5, 4}, 10)}).find("heads"), std::string::npos);
  EXPECT_NE(error_of({q, k, v, rand_tensor({4, 5}, 11)}).find("does not broadcast"), std::string::npos);
  EXPECT_NE(error_of({q, k, v, Tensor::from_i64({0}, {1})}).find("attn_mask must be bool"), std::string::npos);
  EXPECT_NE(error_of({q, k, v}).find("ok"), std::string::npos);
  const std::string msg = error_of({q, rand_tensor({1, 2, 5, 3}, 12), v});
  EXPECT_NE(msg.find("test_node"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Attention"), std::string::npos) << msg;
}

// galvatron AttentionPacked / AttentionPackedGrad: QKV must be [B, S, 3 * num_heads * D] float, and the gradient's
// dY, Y, LSE must have the forward's shapes; each error names the node and what is wrong.
TEST(AttentionOp, PackedInferenceErrorsNameTheProblem) {
  auto error_of = [](const char* op, std::vector<Tensor> in, int64_t heads, int outputs) {
    Attributes a;
    if (heads > 0) a.set_int("num_heads", heads);
    auto r = testing::run_op(op, in, a, outputs, 1, {}, kGalvatronDomain);
    return r.has_value() ? std::string("ok") : r.status().message();
  };
  const Tensor qkv = rand_tensor({2, 3, 24}, 1);  // 2 heads of 4
  EXPECT_EQ(error_of("AttentionPacked", {qkv}, 2, 2), "ok");
  for (const auto& [in, heads] : std::vector<std::pair<Tensor, int64_t>>{
           {qkv, 0}, {qkv, 5}, {rand_tensor({2, 24}, 2), 2}, {rand_tensor({2, 3, 25}, 3), 2}}) {
    const std::string msg = error_of("AttentionPacked", {in}, heads, 2);
    EXPECT_NE(msg.find("3 * num_heads"), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_node"), std::string::npos) << msg;
  }
  EXPECT_NE(error_of("AttentionPacked", {Tensor::from_i64(std::vector<int64_t>(24, 1), {1, 1, 24})}, 2, 2)
                .find("QKV must be float32, bfloat16 or float64"),
            std::string::npos);
  const Tensor y = rand_tensor({2, 3, 8}, 4), lse = rand_tensor({2, 2, 3}, 5);
  EXPECT_EQ(error_of("AttentionPackedGrad", {qkv, y, y, lse}, 2, 1), "ok");
  EXPECT_NE(error_of("AttentionPackedGrad", {qkv, rand_tensor({2, 3, 9}, 6), y, lse}, 2, 1).find("dY must be"),
            std::string::npos);
  EXPECT_NE(error_of("AttentionPackedGrad", {qkv, y, y, rand_tensor({2, 3, 2}, 7)}, 2, 1).find("LSE must be"),
            std::string::npos);
}

}  // namespace
}  // namespace gv

namespace gv {
namespace {

// [B, H, S, D] -> [B, S, H * D] (the 3-D form's layout) and back.
Tensor to_3d(const Tensor& t) {
  const Shape& s = t.shape();
  Tensor r(DType::kFloat32, {s[0], s[2], s[1] * s[3]});
  for (int64_t b = 0; b < s[0]; ++b)
    for (int64_t h = 0; h < s[1]; ++h)
      for (int64_t i = 0; i < s[2]; ++i)
        for (int64_t d = 0; d < s[3]; ++d)
          r.data_as<float>()[((b * s[2] + i) * s[1] + h) * s[3] + d] = t.data_as<float>()[((b * s[1] + h) * s[2] + i) * s[3] + d];
  return r;
}

// ONNX's 3-D form is the 4-D form with the heads interleaved along the last axis: same outputs and gradients, bit for
// bit (the CPU kernel permutes and runs the same code), with grouped-query heads, a mask and causal masking.
TEST(AttentionOp, ThreeDFormIsTheFourDFormWithHeadsInterleaved) {
  const Tensor q = rand_tensor({2, 4, 3, 4}, 21), k = rand_tensor({2, 2, 5, 4}, 22), v = rand_tensor({2, 2, 5, 6}, 23);
  const Tensor mask = rand_tensor({1, 1, 3, 5}, 24), dy = rand_tensor({2, 4, 3, 6}, 25);
  Attributes a4;
  a4.set_int("is_causal", 1);
  Attributes a3 = a4;
  a3.set_int("q_num_heads", 4);
  a3.set_int("kv_num_heads", 2);
  auto y4 = testing::run_op("Attention", {q, k, v, mask}, a4, 1, 23);
  auto y3 = testing::run_op("Attention", {to_3d(q), to_3d(k), to_3d(v), mask}, a3, 1, 23);
  ASSERT_TRUE(y4.has_value()) << y4.status().message();
  ASSERT_TRUE(y3.has_value()) << y3.status().message();
  ASSERT_EQ(y3->outputs[0].shape(), (Shape{2, 3, 24}));
  const Tensor want = to_3d(y4->outputs[0]);
  EXPECT_EQ(std::memcmp(want.data(), y3->outputs[0].data(), want.nbytes()), 0);
  auto g4 = testing::run_op("AttentionGrad", {q, k, v, mask, dy}, a4, 3, 1, {}, kGalvatronDomain);
  auto g3 = testing::run_op("AttentionGrad", {to_3d(q), to_3d(k), to_3d(v), mask, to_3d(dy)}, a3, 3, 1, {},
                            kGalvatronDomain);
  ASSERT_TRUE(g4.has_value()) << g4.status().message();
  ASSERT_TRUE(g3.has_value()) << g3.status().message();
  for (int i = 0; i < 3; ++i) {
    const Tensor w = to_3d(g4->outputs[i]);
    ASSERT_EQ(w.shape(), g3->outputs[i].shape()) << i;
    EXPECT_EQ(std::memcmp(w.data(), g3->outputs[i].data(), w.nbytes()), 0) << "gradient " << i;
  }
}

// galvatron AttentionWithLse: Y as Attention's, bit for bit, and LSE each query row's log-sum-exp of its masked,
// scaled scores (computed here in double), +inf for a row whose every score is masked; in both forms. AttentionGrad
// takes Y and LSE as optional inputs and gives the same gradients.
TEST(AttentionOp, WithLseReturnsTheRowLogSumExp) {
  const int64_t B = 2, H = 4, Hk = 2, S = 3, L = 5, D = 4;
  const Tensor q = rand_tensor({B, H, S, D}, 31), k = rand_tensor({B, Hk, L, D}, 32), v = rand_tensor({B, Hk, L, D}, 33);
  Tensor keep(DType::kBool, {B, 1, S, L});
  std::mt19937_64 rng(34);
  for (int64_t i = 0; i < keep.numel(); ++i) keep.data_as<uint8_t>()[i] = rng() % 4 != 0;
  for (int64_t j = 0; j < L; ++j) keep.data_as<uint8_t>()[(1 * S + 2) * L + j] = 0;  // batch 1, row 2: all masked
  Attributes a4;
  a4.set_int("is_causal", 1);
  auto plain = testing::run_op("Attention", {q, k, v, keep}, a4, 1, 23);
  auto with = testing::run_op("AttentionWithLse", {q, k, v, keep}, a4, 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  ASSERT_TRUE(with.has_value()) << with.status().message();
  EXPECT_EQ(std::memcmp(plain->outputs[0].data(), with->outputs[0].data(), plain->outputs[0].nbytes()), 0);
  const Tensor& lse = with->outputs[1];
  ASSERT_EQ(lse.shape(), (Shape{B, H, S}));
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  int infinite = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < S; ++i) {
        double mx = -INFINITY, sum = 0;
        std::vector<double> sc;
        for (int64_t j = 0; j <= i && j < L; ++j) {
          if (!keep.data_as<uint8_t>()[(b * S + i) * L + j]) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += static_cast<double>(q.data_as<float>()[((b * H + h) * S + i) * D + d]) *
                   k.data_as<float>()[((b * Hk + h / 2) * L + j) * D + d];
          sc.push_back(dot * scale);
          mx = std::max(mx, dot * scale);
        }
        for (double x : sc) sum += std::exp(x - mx);
        const float got = lse.data_as<float>()[(b * H + h) * S + i];
        if (sc.empty()) {
          EXPECT_TRUE(std::isinf(got) && got > 0) << b << " " << h << " " << i;
          ++infinite;
        } else {
          EXPECT_NEAR(got, mx + std::log(sum), 1e-5) << b << " " << h << " " << i;
        }
      }
  EXPECT_GE(infinite, H);  // the fully masked row of batch 1, in every head
  // The 3-D form: the same LSE.
  Attributes a3 = a4;
  a3.set_int("q_num_heads", H);
  a3.set_int("kv_num_heads", Hk);
  auto with3 = testing::run_op("AttentionWithLse", {to_3d(q), to_3d(k), to_3d(v), keep}, a3, 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(with3.has_value()) << with3.status().message();
  EXPECT_EQ(std::memcmp(lse.data(), with3->outputs[1].data(), lse.nbytes()), 0);
  // AttentionGrad with and without Y, LSE.
  const Tensor dy = rand_tensor({B, H, S, D}, 35);
  auto g0 = testing::run_op("AttentionGrad", {q, k, v, keep, dy}, a4, 3, 1, {}, kGalvatronDomain);
  auto g1 = testing::run_op("AttentionGrad", {q, k, v, keep, dy, with->outputs[0], lse}, a4, 3, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(g0.has_value()) << g0.status().message();
  ASSERT_TRUE(g1.has_value()) << g1.status().message();
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(std::memcmp(g0->outputs[i].data(), g1->outputs[i].data(), g0->outputs[i].nbytes()), 0) << i;
  auto bad = testing::run_op("AttentionGrad", {q, k, v, keep, dy, with->outputs[0], rand_tensor({B, H, S + 1}, 36)},
                             a4, 3, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("LSE must be"), std::string::npos) << bad.status().message();
}

// LSE is declared non-differentiable: a loss that reads it is an error naming the node, not a silently wrong gradient.
TEST(AttentionOp, WithLseRefusesALossThatReadsLse) {
  Graph g;
  g.opsets[""] = 23;
  g.opsets[kGalvatronDomain] = 1;
  const ValueId q = g.add_initializer("q", rand_tensor({1, 2, 3, 4}, 41), ValueKind::kParameter);
  const ValueId k = g.add_initializer("k", rand_tensor({1, 2, 3, 4}, 42), ValueKind::kParameter);
  const ValueId v = g.add_initializer("v", rand_tensor({1, 2, 3, 4}, 43), ValueKind::kParameter);
  Node att;
  att.name = "att";
  att.op_type = "AttentionWithLse";
  att.domain = kGalvatronDomain;
  att.opset = 1;
  att.inputs = {q, k, v};
  auto outs = g.add_node(att);
  ASSERT_TRUE(outs.has_value()) << outs.status().message();
  Node sum;
  sum.op_type = "ReduceSum";
  sum.opset = 23;
  sum.attrs.set_int("keepdims", 0);
  sum.inputs = {(*outs)[1]};
  auto loss = g.add_node(sum);
  ASSERT_TRUE(loss.has_value()) << loss.status().message();
  g.outputs = {(*loss)[0]};
  auto ag = build_backward(g, (*loss)[0], {q, k, v});
  ASSERT_FALSE(ag.has_value());
  EXPECT_NE(ag.status().message().find("'att'"), std::string::npos) << ag.status().message();
  EXPECT_NE(ag.status().message().find("LSE output is not differentiable"), std::string::npos)
      << ag.status().message();
}

}  // namespace
}  // namespace gv

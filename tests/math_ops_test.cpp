// Math family ops against naive reference implementations written here: MatMul, Gemm, Softmax, LogSoftmax,
// LayerNormalization, RMSNormalization, Reduce*, ArgMax/ArgMin, Dropout, SoftmaxCrossEntropyLoss,
// NegativeLogLikelihoodLoss and the fused gradient ops; opset differences and error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "runtime/autograd.h"
#include "tests/op_test_util.h"

namespace gv::testing {
namespace {

using Vec = std::vector<double>;

Tensor random_tensor(DType dt, const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  Tensor t64(DType::kFloat64, shape);
  for (int64_t i = 0; i < t64.numel(); ++i) {
    double v = d(rng);
    t64.data_as<double>()[i] = dtype_is_integer(dt) ? std::floor(v) : v;
  }
  return dt == DType::kFloat64 ? t64 : t64.cast(dt);
}

Tensor from_vec(const Vec& v, const Shape& shape, DType dt = DType::kFloat64) {
  Tensor t(DType::kFloat64, shape);
  for (size_t i = 0; i < v.size(); ++i) t.data_as<double>()[i] = v[i];
  return dt == DType::kFloat64 ? t : t.cast(dt);
}

Vec values(const Tensor& t) {
  Tensor d = t.cast(DType::kFloat64);
  return Vec(d.data_as<double>(), d.data_as<double>() + d.numel());
}

Tensor ints(const std::vector<int64_t>& v, Shape s) { return Tensor::from_i64(v, std::move(s)); }
Tensor bool_scalar(bool b) {
  Tensor t(DType::kBool, {});
  t.data_as<uint8_t>()[0] = b;
  return t;
}

void expect_close(const Tensor& got, const Vec& want, const Shape& shape, double tol, const std::string& what = "") {
  EXPECT_EQ(got.shape(), shape) << what;
  Vec g = values(got);
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(g[i])) << what << " element " << i;
      continue;
    }
    EXPECT_NEAR(g[i], want[i], tol * (1.0 + std::fabs(want[i]))) << what << " element " << i;
  }
}

// Runs one op and returns its outputs; a failure is reported and leaves the list empty.
std::vector<Tensor> run(const std::string& op, const std::vector<Tensor>& in, Attributes attrs = {}, int outputs = 1,
                        int opset = 20, std::vector<bool> constants = {}, const std::string& domain = "") {
  auto r = run_op(op, in, std::move(attrs), outputs, opset, std::move(constants), domain);
  EXPECT_TRUE(r.has_value()) << op << ": " << r.status().message();
  return r ? r->outputs : std::vector<Tensor>{};
}

// The error message of a run expected to fail.
std::string run_error(const std::string& op, const std::vector<Tensor>& in, Attributes attrs = {}, int outputs = 1,
                      int opset = 20, std::vector<bool> constants = {}) {
  auto r = run_op(op, in, std::move(attrs), outputs, opset, std::move(constants));
  EXPECT_FALSE(r.has_value()) << op << " should have failed";
  return r ? "" : r.status().message();
}

// ---- index helpers for the references ----
std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (size_t d = s.size(); d-- > 0;) {
    idx[d] = i % s[d];
    i /= s[d];
  }
  return idx;
}
// Flat index into `s` of the trailing, right-aligned part of idx (size-1 dims broadcast).
int64_t ravel_broadcast(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t flat = 0;
  const size_t off = idx.size() - s.size();
  for (size_t d = 0; d < s.size(); ++d) flat = flat * s[d] + (s[d] == 1 ? 0 : idx[d + off]);
  return flat;
}

// ---- MatMul ----

// numpy.matmul on doubles.
Vec ref_matmul(const Vec& a, Shape as, const Vec& b, Shape bs, Shape& out_shape) {
  const bool av = as.size() == 1, bv = bs.size() == 1;
  if (av) as.insert(as.begin(), 1);
  if (bv) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2), batch(std::max(ab.size(), bb.size()), 1);
  for (size_t i = 0; i < batch.size(); ++i) {
    int64_t x = i + ab.size() >= batch.size() ? ab[i + ab.size() - batch.size()] : 1;
    int64_t y = i + bb.size() >= batch.size() ? bb[i + bb.size() - batch.size()] : 1;
    batch[i] = std::max(x, y);
  }
  Vec out(shape_numel(batch) * m * n, 0.0);
  for (int64_t bi = 0; bi < shape_numel(batch); ++bi) {
    auto idx = unravel(bi, batch);
    const int64_t ai = ravel_broadcast(idx, ab), bj = ravel_broadcast(idx, bb);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t p = 0; p < k; ++p) s += a[ai * m * k + i * k + p] * b[bj * k * n + p * n + j];
        out[bi * m * n + i * n + j] = s;
      }
  }
  out_shape = batch;
  if (!av) out_shape.push_back(m);
  if (!bv) out_shape.push_back(n);
  return out;
}

TEST(MathMatMul, BroadcastingAndVectorsMatchReference) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{3, 4}, {4, 5}},       {{2, 3, 4}, {4, 5}},       {{4}, {4, 5}},          {{3, 4}, {4}},
      {{4}, {4}},             {{2, 3, 4}, {4}},          {{4}, {2, 4, 3}},       {{3, 4}, {2, 4, 5}},
      {{1, 3, 4}, {2, 4, 5}}, {{2, 3, 4}, {2, 4, 5}},    {{2, 1, 3, 4}, {3, 4, 2}}, {{5, 0}, {0, 3}},
      {{64, 33}, {33, 70}}};
  uint64_t seed = 1;
  for (DType dt : {DType::kFloat32, DType::kFloat64, DType::kInt64, DType::kInt32}) {
    for (const auto& [as, bs] : cases) {
      Tensor a = random_tensor(dt, as, seed++, -3, 3), b = random_tensor(dt, bs, seed++, -3, 3);
      Shape out_shape;
      Vec want = ref_matmul(values(a), as, values(b), bs, out_shape);
      auto out = run("MatMul", {a, b});
      ASSERT_EQ(out.size(), 1u);
      EXPECT_EQ(out[0].dtype(), dt);
      expect_close(out[0], want, out_shape, dt == DType::kFloat32 ? 1e-5 : 1e-12,
                   std::string(dtype_name(dt)) + " " + shape_str(as) + " x " + shape_str(bs));
    }
  }
}

TEST(MathMatMul, ErrorsNameTheNode) {
  Tensor a = random_tensor(DType::kFloat32, {3, 4}, 1);
  std::string e = run_error("MatMul", {a, random_tensor(DType::kFloat32, {5, 2}, 2)});
  EXPECT_NE(e.find("test_node"), std::string::npos) << e;
  EXPECT_NE(e.find("MatMul"), std::string::npos) << e;
  EXPECT_NE(e.find("inner dimensions"), std::string::npos) << e;
  e = run_error("MatMul", {random_tensor(DType::kFloat32, {2, 3, 4}, 1), random_tensor(DType::kFloat32, {3, 4, 5}, 2)});
  EXPECT_NE(e.find("broadcast"), std::string::npos) << e;
  e = run_error("MatMul", {a, random_tensor(DType::kFloat64, {4, 2}, 2)});
  EXPECT_NE(e.find("float64"), std::string::npos) << e;
  e = run_error("MatMul", {Tensor::scalar(DType::kFloat32, 1.0), a});
  EXPECT_NE(e.find("rank"), std::string::npos) << e;
}

// FusedMatMul (the backward's product): transposes and summing the broadcast batch into out_batch.
TEST(MathMatMul, FusedMatMulTransposesAndSumsBatch) {
  Tensor a = random_tensor(DType::kFloat64, {2, 3, 4, 5}, 7), b = random_tensor(DType::kFloat64, {3, 4, 6}, 8);
  // sum over the batch of A_b^T @ B_b into out_batch [1, 3] and [] (all summed).
  Shape s;
  Vec av = values(a), bv = values(b);
  for (const Shape& out_batch : {Shape{1, 3}, Shape{}, Shape{3}}) {
    Attributes attrs;
    attrs.set_int("transA", 1);
    attrs.set_ints("out_batch", out_batch);
    auto out = run("FusedMatMul", {a, b}, attrs, 1, 1, {}, kGalvatronDomain);
    ASSERT_EQ(out.size(), 1u);
    Shape want_shape = out_batch;
    want_shape.insert(want_shape.end(), {5, 6});
    Vec want(shape_numel(want_shape), 0.0);
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 3; ++j)
        for (int64_t r = 0; r < 5; ++r)
          for (int64_t c = 0; c < 6; ++c) {
            double acc = 0;
            for (int64_t p = 0; p < 4; ++p) acc += av[((i * 3 + j) * 4 + p) * 5 + r] * bv[(j * 4 + p) * 6 + c];
            const int64_t cb = out_batch.empty() ? 0 : j;
            want[(cb * 5 + r) * 6 + c] += acc;
          }
    expect_close(out[0], want, want_shape, 1e-12, "out_batch " + shape_str(out_batch));
  }
}

// ---- Gemm ----

TEST(MathGemm, TransposesAlphaBetaAndBiasBroadcast) {
  const int64_t m = 3, k = 4, n = 5;
  uint64_t seed = 20;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (const Shape& cs : {Shape{}, Shape{n}, Shape{1, n}, Shape{m, 1}, Shape{m, n}, Shape{1}}) {
        Shape as = ta ? Shape{k, m} : Shape{m, k}, bs = tb ? Shape{n, k} : Shape{k, n};
        Tensor a = random_tensor(DType::kFloat32, as, seed++), b = random_tensor(DType::kFloat32, bs, seed++);
        Tensor c = random_tensor(DType::kFloat32, cs, seed++);
        Attributes attrs;
        attrs.set_int("transA", ta);
        attrs.set_int("transB", tb);
        attrs.set_float("alpha", 0.5);
        attrs.set_float("beta", 2.0);
        Vec av = values(a), bv = values(b), cv = values(c), want(m * n);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double s = 0;
            for (int64_t p = 0; p < k; ++p) s += (ta ? av[p * m + i] : av[i * k + p]) * (tb ? bv[j * k + p] : bv[p * n + j]);
            const int64_t cr = cs.size() == 2 ? cs[0] : 1, cc = cs.empty() ? 1 : cs.back();
            want[i * n + j] = 0.5 * s + 2.0 * cv[(cr == 1 ? 0 : i) * cc + (cc == 1 ? 0 : j)];
          }
        auto out = run("Gemm", {a, b, c}, attrs);
        ASSERT_EQ(out.size(), 1u);
        expect_close(out[0], want, {m, n}, 1e-5, "C " + shape_str(cs));
      }
  // No C.
  Tensor a = random_tensor(DType::kFloat64, {2, 3}, 1), b = random_tensor(DType::kFloat64, {3, 2}, 2);
  Shape s;
  auto out = run("Gemm", {a, b});
  expect_close(out[0], ref_matmul(values(a), {2, 3}, values(b), {3, 2}, s), {2, 2}, 1e-12);
  std::string e = run_error("Gemm", {a, b, random_tensor(DType::kFloat64, {3}, 3)});
  EXPECT_NE(e.find("does not broadcast"), std::string::npos) << e;
}

// ---- Softmax / LogSoftmax ----

Vec ref_softmax(const Vec& x, const Shape& s, int64_t axis, bool log) {
  const int64_t n = s[axis];
  int64_t inner = 1;
  for (size_t d = axis + 1; d < s.size(); ++d) inner *= s[d];
  const int64_t outer = static_cast<int64_t>(x.size()) / (n * inner);
  Vec y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t k = 0; k < inner; ++k) {
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, x[(o * n + j) * inner + k]);
      for (int64_t j = 0; j < n; ++j) sum += std::exp(x[(o * n + j) * inner + k] - mx);
      for (int64_t j = 0; j < n; ++j) {
        const double v = x[(o * n + j) * inner + k] - mx;
        y[(o * n + j) * inner + k] = log ? v - std::log(sum) : std::exp(v) / sum;
      }
    }
  return y;
}

TEST(MathSoftmax, AxesAndLargeValues) {
  const Shape s{2, 3, 4};
  for (bool log : {false, true}) {
    const std::string op = log ? "LogSoftmax" : "Softmax";
    for (int64_t axis : {0, 1, 2, -1, -3}) {
      Tensor x = random_tensor(DType::kFloat32, s, 30 + axis, -3, 3);
      Attributes a;
      a.set_int("axis", axis);
      auto out = run(op, {x}, a);
      ASSERT_EQ(out.size(), 1u);
      expect_close(out[0], ref_softmax(values(x), s, axis < 0 ? axis + 3 : axis, log), s, 1e-5, op);
    }
    // Default axis is -1 from opset 13; large inputs do not overflow.
    Tensor big = from_vec({1000, 1001, 1002, -1000, 0, 1000}, {2, 3}, DType::kFloat32);
    auto out = run(op, {big}, {}, 1, 13);
    ASSERT_EQ(out.size(), 1u);
    expect_close(out[0], ref_softmax(values(big), {2, 3}, 1, log), {2, 3}, 1e-5, op + " large");
  }
  Attributes bad;
  bad.set_int("axis", 3);
  std::string e = run_error("Softmax", {random_tensor(DType::kFloat32, {2, 3, 4}, 1)}, bad);
  EXPECT_NE(e.find("axis 3 is out of range"), std::string::npos) << e;
  e = run_error("Softmax", {ints({1, 2}, {2})});
  EXPECT_NE(e.find("float32 or float64"), std::string::npos) << e;
}

TEST(MathSoftmax, GradOpsMatchFormulas) {
  const Shape s{3, 4};
  Tensor x = random_tensor(DType::kFloat64, s, 40), dy = random_tensor(DType::kFloat64, s, 41);
  Vec y = ref_softmax(values(x), s, 1, false), ly = ref_softmax(values(x), s, 1, true), g = values(dy);
  Vec want(y.size()), want_log(y.size());
  for (int r = 0; r < 3; ++r) {
    double dot = 0, sum = 0;
    for (int j = 0; j < 4; ++j) dot += g[r * 4 + j] * y[r * 4 + j], sum += g[r * 4 + j];
    for (int j = 0; j < 4; ++j) {
      want[r * 4 + j] = y[r * 4 + j] * (g[r * 4 + j] - dot);
      want_log[r * 4 + j] = g[r * 4 + j] - y[r * 4 + j] * sum;
    }
  }
  auto out = run("SoftmaxGrad", {dy, from_vec(y, s)}, {}, 1, 1, {}, kGalvatronDomain);
  expect_close(out[0], want, s, 1e-12, "SoftmaxGrad");
  out = run("LogSoftmaxGrad", {dy, from_vec(ly, s)}, {}, 1, 1, {}, kGalvatronDomain);
  expect_close(out[0], want_log, s, 1e-12, "LogSoftmaxGrad");
}

// ---- LayerNormalization / RMSNormalization ----

// Normalizes rows of `cols`; returns y and fills mean / inv_std (rms: no mean subtraction).
Vec ref_norm(const Vec& x, int64_t cols, const Vec& scale, const Vec* bias, double eps, bool rms, Vec& mean,
             Vec& inv_std) {
  const int64_t rows = static_cast<int64_t>(x.size()) / cols;
  Vec y(x.size());
  mean.assign(rows, 0);
  inv_std.assign(rows, 0);
  for (int64_t r = 0; r < rows; ++r) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < cols; ++j) m += x[r * cols + j];
    m = rms ? 0 : m / cols;
    for (int64_t j = 0; j < cols; ++j) v += (x[r * cols + j] - m) * (x[r * cols + j] - m);
    const double is = 1 / std::sqrt(v / cols + eps);
    mean[r] = m;
    inv_std[r] = is;
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = (x[r * cols + j] - m) * is * scale[j] + (bias ? (*bias)[j] : 0);
  }
  return y;
}

TEST(MathLayerNorm, OutputsAndStatistics) {
  const Shape s{2, 3, 4};
  for (int64_t axis : {-1, 1, 0, -2}) {
    const int64_t ax = axis < 0 ? axis + 3 : axis;
    Shape ns(s.begin() + ax, s.end()), stats = s;
    for (size_t d = ax; d < 3; ++d) stats[d] = 1;
    Tensor x = random_tensor(DType::kFloat32, s, 50 + ax, -2, 2);
    Tensor scale = random_tensor(DType::kFloat32, ns, 60), bias = random_tensor(DType::kFloat32, ns, 61);
    Attributes a;
    a.set_int("axis", axis);
    a.set_float("epsilon", 1e-3);
    auto out = run("LayerNormalization", {x, scale, bias}, a, 3, 17);
    ASSERT_EQ(out.size(), 3u);
    Vec mean, is, bv = values(bias);
    Vec y = ref_norm(values(x), shape_numel(ns), values(scale), &bv, 1e-3, false, mean, is);
    expect_close(out[0], y, s, 1e-5, "Y axis " + std::to_string(axis));
    EXPECT_EQ(out[1].dtype(), DType::kFloat32);
    expect_close(out[1], mean, stats, 1e-5, "Mean");
    expect_close(out[2], is, stats, 1e-5, "InvStdDev");
  }
  // No bias, one output; stash_type 11 keeps float64 statistics.
  Tensor x = random_tensor(DType::kFloat32, {3, 5}, 70), scale = random_tensor(DType::kFloat32, {5}, 71);
  Vec mean, is;
  auto out = run("LayerNormalization", {x, scale}, {}, 1, 17);
  expect_close(out[0], ref_norm(values(x), 5, values(scale), nullptr, 1e-5, false, mean, is), {3, 5}, 1e-5);
  Attributes stash;
  stash.set_int("stash_type", 11);
  out = run("LayerNormalization", {x, scale}, stash, 3, 17);
  EXPECT_EQ(out[1].dtype(), DType::kFloat64);
  std::string e = run_error("LayerNormalization", {x, random_tensor(DType::kFloat32, {4}, 1)}, {}, 1, 17);
  EXPECT_NE(e.find("normalized shape"), std::string::npos) << e;
}

TEST(MathLayerNorm, GradMatchesAnalyticFormula) {
  // With saved statistics and recomputed ones (dMean/dInvStdDev absent), both agree with the closed form.
  const int64_t rows = 3, cols = 4;
  Tensor x = random_tensor(DType::kFloat64, {rows, cols}, 80), scale = random_tensor(DType::kFloat64, {cols}, 81);
  Tensor dy = random_tensor(DType::kFloat64, {rows, cols}, 82);
  Vec mean, is, xv = values(x), sv = values(scale), g = values(dy);
  ref_norm(xv, cols, sv, nullptr, 1e-5, false, mean, is);
  Vec dx(rows * cols), ds(cols, 0), db(cols, 0);
  for (int64_t r = 0; r < rows; ++r) {
    double mg = 0, mgx = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double xh = (xv[r * cols + j] - mean[r]) * is[r];
      mg += g[r * cols + j] * sv[j] / cols;
      mgx += g[r * cols + j] * sv[j] * xh / cols;
      ds[j] += g[r * cols + j] * xh;
      db[j] += g[r * cols + j];
    }
    for (int64_t j = 0; j < cols; ++j) {
      const double xh = (xv[r * cols + j] - mean[r]) * is[r];
      dx[r * cols + j] = is[r] * (g[r * cols + j] * sv[j] - mg - xh * mgx);
    }
  }
  Tensor none;
  for (bool saved : {true, false}) {
    std::vector<Tensor> in = {dy, x, scale};
    if (saved) in.insert(in.end(), {from_vec(mean, {rows, 1}), from_vec(is, {rows, 1})});
    auto out = run("LayerNormalizationGrad", in, {}, 3, 1, {}, kGalvatronDomain);
    ASSERT_EQ(out.size(), 3u);
    expect_close(out[0], dx, {rows, cols}, 1e-10, "dX");
    expect_close(out[1], ds, {cols}, 1e-10, "dScale");
    expect_close(out[2], db, {cols}, 1e-10, "dBias");
  }
}

TEST(MathRMSNorm, MatchesReference) {
  const Shape s{2, 3, 4};
  for (int64_t axis : {-1, 1}) {
    Shape ns(s.begin() + (axis < 0 ? 2 : 1), s.end());
    Tensor x = random_tensor(DType::kFloat32, s, 90), scale = random_tensor(DType::kFloat32, ns, 91);
    Attributes a;
    a.set_int("axis", axis);
    auto out = run("RMSNormalization", {x, scale}, a, 1, 23);
    ASSERT_EQ(out.size(), 1u);
    Vec mean, is;
    expect_close(out[0], ref_norm(values(x), shape_numel(ns), values(scale), nullptr, 1e-5, true, mean, is), s, 1e-5);
  }
}

// ---- Reductions ----

Vec ref_reduce(const std::string& op, const Vec& x, const Shape& s, const std::vector<bool>& red, Shape& out_shape,
               bool keepdims) {
  Shape full;
  out_shape.clear();
  for (size_t d = 0; d < s.size(); ++d) {
    full.push_back(red[d] ? 1 : s[d]);
    if (!red[d] || keepdims) out_shape.push_back(red[d] ? 1 : s[d]);
  }
  const int64_t n_out = shape_numel(full);
  std::vector<Vec> groups(n_out);
  for (int64_t i = 0; i < static_cast<int64_t>(x.size()); ++i) groups[ravel_broadcast(unravel(i, s), full)].push_back(x[i]);
  Vec out(n_out);
  for (int64_t o = 0; o < n_out; ++o) {
    const Vec& g = groups[o];
    double acc = 0;
    if (op == "ReduceSum") for (double v : g) acc += v;
    if (op == "ReduceMean") { for (double v : g) acc += v; acc /= g.size(); }
    if (op == "ReduceMax") { acc = -INFINITY; for (double v : g) acc = std::max(acc, v); }
    if (op == "ReduceMin") { acc = INFINITY; for (double v : g) acc = std::min(acc, v); }
    if (op == "ReduceProd") { acc = 1; for (double v : g) acc *= v; }
    if (op == "ReduceL1") for (double v : g) acc += std::fabs(v);
    if (op == "ReduceL2") { for (double v : g) acc += v * v; acc = std::sqrt(acc); }
    if (op == "ReduceSumSquare") for (double v : g) acc += v * v;
    if (op == "ReduceLogSum") { for (double v : g) acc += v; acc = std::log(acc); }
    if (op == "ReduceLogSumExp") { for (double v : g) acc += std::exp(v); acc = std::log(acc); }
    out[o] = acc;
  }
  return out;
}

const char* kReduceOps[] = {"ReduceSum", "ReduceMean",      "ReduceMax",    "ReduceMin",      "ReduceProd",
                            "ReduceL1",  "ReduceL2",        "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"};

TEST(MathReduce, AllKindsAxesAndKeepdims) {
  const Shape s{2, 3, 4};
  const std::vector<std::vector<int64_t>> axes_sets = {{}, {0}, {1}, {2}, {-1}, {0, 2}, {1, 2}, {0, 1, 2}, {2, 0}};
  uint64_t seed = 100;
  for (const char* op : kReduceOps) {
    const std::string name = op;
    const double lo = name == "ReduceLogSum" ? 0.1 : -2.0;
    for (DType dt : {DType::kFloat32, DType::kFloat64}) {
      for (const auto& axes : axes_sets) {
        for (int keep : {0, 1}) {
          Tensor x = random_tensor(dt, s, seed++, lo, 2.0);
          std::vector<bool> red(3, axes.empty());
          for (int64_t a : axes) red[a < 0 ? a + 3 : a] = true;
          Shape want_shape;
          Vec want = ref_reduce(name, values(x), s, red, want_shape, keep);
          Attributes attrs;
          attrs.set_int("keepdims", keep);
          const std::string what = name + " axes " + shape_str(axes) + " keepdims " + std::to_string(keep);
          // opset 18: axes as an input (omitted when empty); opset 13: as an attribute (ReduceSum: input already).
          std::vector<Tensor> in = {x};
          if (!axes.empty()) in.push_back(ints(axes, {static_cast<int64_t>(axes.size())}));
          auto out = run(op, in, attrs, 1, 18, {false, true});
          ASSERT_EQ(out.size(), 1u) << what;
          expect_close(out[0], want, want_shape, dt == DType::kFloat32 ? 1e-5 : 1e-12, what + " opset 18");
          if (name != "ReduceSum") {
            Attributes old = attrs;
            if (!axes.empty()) old.set_ints("axes", axes);
            out = run(op, {x}, old, 1, 13);
            ASSERT_EQ(out.size(), 1u) << what;
            expect_close(out[0], want, want_shape, dt == DType::kFloat32 ? 1e-5 : 1e-12, what + " opset 13");
          }
        }
      }
    }
  }
}

TEST(MathReduce, IntegersNoopAndErrors) {
  Tensor x = ints({1, -2, 3, 4, 5, -6}, {2, 3});
  auto out = run("ReduceSum", {x, ints({1}, {1})}, {}, 1, 13, {false, true});
  expect_close(out[0], {2, 3}, {2, 1}, 0);
  out = run("ReduceMax", {x.cast(DType::kInt32)}, {}, 1, 18);
  EXPECT_EQ(out[0].dtype(), DType::kInt32);
  expect_close(out[0], {5}, {1, 1}, 0);
  // noop_with_empty_axes: empty axes leave the input (squared for SumSquare); without it they reduce everything.
  Tensor f = from_vec({1, 2, 3, 4}, {2, 2});
  Attributes noop;
  noop.set_int("noop_with_empty_axes", 1);
  out = run("ReduceSum", {f, ints({}, {0})}, noop, 1, 13, {false, true});
  expect_close(out[0], {1, 2, 3, 4}, {2, 2}, 0, "noop sum");
  out = run("ReduceSumSquare", {f, ints({}, {0})}, noop, 1, 18, {false, true});
  expect_close(out[0], {1, 4, 9, 16}, {2, 2}, 0, "noop sum square");
  out = run("ReduceMean", {f}, noop, 1, 18);  // an omitted axes input counts as empty
  expect_close(out[0], {1, 2, 3, 4}, {2, 2}, 0, "noop without axes input");
  out = run("ReduceSum", {f, ints({}, {0})}, {}, 1, 13, {false, true});
  expect_close(out[0], {10}, {1, 1}, 0, "empty axes reduce all");
  // Errors: axes input before opset 18, non-constant axes, bad axis, repeated axis, float-only reductions.
  std::string e = run_error("ReduceMean", {f, ints({0}, {1})}, {}, 1, 13, {false, true});
  EXPECT_NE(e.find("attribute before opset 18"), std::string::npos) << e;
  e = run_error("ReduceSum", {f, ints({0}, {1})}, {}, 1, 18);
  EXPECT_NE(e.find("must be a constant"), std::string::npos) << e;
  e = run_error("ReduceSum", {f, ints({2}, {1})}, {}, 1, 18, {false, true});
  EXPECT_NE(e.find("out of range"), std::string::npos) << e;
  e = run_error("ReduceSum", {f, ints({1, -1}, {2})}, {}, 1, 18, {false, true});
  EXPECT_NE(e.find("repeated"), std::string::npos) << e;
  e = run_error("ReduceL2", {x});
  EXPECT_NE(e.find("unsupported dtype"), std::string::npos) << e;
}

TEST(MathReduce, GradOpRoutesMaxAndProd) {
  // ReduceMax splits the gradient between ties; ReduceProd with one zero gives the zero the product of the others.
  Tensor x = from_vec({1, 3, 3, 0, 2, 5}, {2, 3}), dy = from_vec({6, 10}, {2, 1});
  Attributes a;
  a.set_string("kind", "ReduceMax");
  a.set_ints("axes", {1});
  a.set_ints("shape", {2, 3});
  auto out = run("ReduceGrad", {dy, x, from_vec({3, 5}, {2, 1})}, a, 1, 1, {}, kGalvatronDomain);
  expect_close(out[0], {0, 3, 3, 0, 0, 10}, {2, 3}, 1e-12, "max");
  a.set_string("kind", "ReduceProd");
  out = run("ReduceGrad", {dy, x, Tensor()}, a, 1, 1, {}, kGalvatronDomain);
  expect_close(out[0], {54, 18, 18, 100, 0, 0}, {2, 3}, 1e-12, "prod");
}

TEST(MathArg, MaxMinKeepdimsAndLastIndex) {
  Tensor x = from_vec({1, 5, 5, 2, 0, 0, 7, -1}, {2, 4}, DType::kFloat32);
  Attributes a;
  a.set_int("axis", 1);
  auto out = run("ArgMax", {x}, a);
  EXPECT_EQ(out[0].dtype(), DType::kInt64);
  expect_close(out[0], {1, 2}, {2, 1}, 0);
  a.set_int("select_last_index", 1);
  out = run("ArgMax", {x}, a);
  expect_close(out[0], {2, 2}, {2, 1}, 0);
  out = run("ArgMin", {x}, a);
  expect_close(out[0], {0, 3}, {2, 1}, 0);
  Attributes drop;
  drop.set_int("keepdims", 0);
  out = run("ArgMin", {x}, drop);  // axis 0 by default
  expect_close(out[0], {1, 1, 0, 1}, {4}, 0);
  out = run("ArgMin", {from_vec({2, 0, 0}, {3})}, drop);
  expect_close(out[0], {1}, {}, 0, "first of tied minima");
  out = run("ArgMax", {ints({3, 9, 2}, {3})}, drop);
  expect_close(out[0], {1}, {}, 0);
}

// ---- Dropout ----

// Runs Dropout(x, ratio, training) with the executor's seed and counter; returns (output, mask).
std::vector<Tensor> run_dropout(const Tensor& x, double ratio, bool training, uint64_t seed, uint64_t counter,
                                const std::string& name = "drop") {
  Graph g;
  g.opsets[""] = 20;
  Node n;
  n.name = name;
  n.op_type = "Dropout";
  n.opset = 20;
  n.inputs = {g.add_input("x", x.dtype(), x.shape()),
              g.add_initializer("ratio", Tensor::scalar(DType::kFloat32, ratio), ValueKind::kConstant),
              g.add_initializer("training", bool_scalar(training), ValueKind::kConstant)};
  auto outs = g.add_node(n, {"y", "mask"});
  EXPECT_TRUE(outs.has_value()) << outs.status().message();
  if (!outs) return {};
  g.outputs = *outs;
  auto backend = make_cpu_backend();
  ExecutorOptions opts;
  opts.rng_seed = seed;
  auto ex = Executor::create(g, *backend, opts);
  EXPECT_TRUE(ex.has_value());
  (*ex)->rng_counter = counter;
  EXPECT_TRUE((*ex)->set_inputs({{"x", x}}).is_ok());
  EXPECT_TRUE((*ex)->run().is_ok());
  return {*(*ex)->fetch(g.outputs[0]), *(*ex)->fetch(g.outputs[1])};
}

TEST(MathDropout, InferenceIsIdentityWithTrueMask) {
  Tensor x = random_tensor(DType::kFloat32, {3, 7}, 200);
  auto out = run("Dropout", {x}, {}, 2);
  ASSERT_EQ(out.size(), 2u);
  expect_close(out[0], values(x), {3, 7}, 0);
  EXPECT_EQ(out[1].dtype(), DType::kBool);
  expect_close(out[1], Vec(21, 1.0), {3, 7}, 0);
  out = run_dropout(x, 0.5, false, 1, 1);
  expect_close(out[0], values(x), {3, 7}, 0);
  out = run_dropout(x, 0.0, true, 1, 1);  // ratio 0 in training: identity as well
  expect_close(out[0], values(x), {3, 7}, 0);
  expect_close(out[1], Vec(21, 1.0), {3, 7}, 0);
}

TEST(MathDropout, TrainingMaskIsDeterministicPerSeedAndCounter) {
  const int64_t n = 20000;
  Tensor x = random_tensor(DType::kFloat32, {n}, 201, 0.5, 1.5);
  const double ratio = 0.3;
  auto a = run_dropout(x, ratio, true, 42, 7), b = run_dropout(x, ratio, true, 42, 7);
  auto c = run_dropout(x, ratio, true, 42, 8), d = run_dropout(x, ratio, true, 42, 7, "other");
  ASSERT_EQ(a.size(), 2u);
  Vec xv = values(x), ya = values(a[0]), ma = values(a[1]);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    kept += ma[i] != 0;
    EXPECT_NEAR(ya[i], ma[i] != 0 ? xv[i] / (1 - ratio) : 0.0, 1e-5);
  }
  EXPECT_NEAR(static_cast<double>(kept) / n, 1 - ratio, 0.02);
  EXPECT_EQ(values(b[1]), ma) << "same seed and counter, same mask";
  EXPECT_NE(values(c[1]), ma) << "the counter changes the mask";
  EXPECT_NE(values(d[1]), ma) << "two Dropout nodes draw different masks";
  std::string e = run_error("Dropout", {x, Tensor::scalar(DType::kFloat32, 1.5)}, {}, 1, 20, {false, true});
  EXPECT_NE(e.find("outside [0, 1]"), std::string::npos) << e;
}

TEST(MathDropout, GradUsesOrRegeneratesTheMask) {
  Tensor dy = random_tensor(DType::kFloat64, {50}, 202);
  Tensor mask(DType::kBool, {50});
  for (int i = 0; i < 50; ++i) mask.data_as<uint8_t>()[i] = i % 3 != 0;
  auto out = run("DropoutGrad", {dy, mask, Tensor::scalar(DType::kFloat64, 0.25), bool_scalar(true)}, {}, 1, 1, {},
                 kGalvatronDomain);
  Vec g = values(dy), want(50);
  for (int i = 0; i < 50; ++i) want[i] = i % 3 != 0 ? g[i] / 0.75 : 0.0;
  expect_close(out[0], want, {50}, 1e-12, "with mask");
  // Regenerated from (seed 0, counter 0, stream = hash of the forward node's name) it matches the forward's mask.
  auto fwd = run_dropout(random_tensor(DType::kFloat64, {50}, 203), 0.25, true, 0, 0, "test_node");
  Vec m = values(fwd[1]);
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a of the name, as kernels/cpu/random.h computes it
  for (char ch : std::string("test_node")) h = (h ^ static_cast<uint8_t>(ch)) * 0x100000001b3ULL;
  Attributes a;
  a.set_int("stream", static_cast<int64_t>(h));
  out = run("DropoutGrad", {dy, Tensor(), Tensor::scalar(DType::kFloat64, 0.25), bool_scalar(true)}, a, 1, 1, {},
            kGalvatronDomain);
  for (int i = 0; i < 50; ++i) want[i] = m[i] != 0 ? g[i] / 0.75 : 0.0;
  expect_close(out[0], want, {50}, 1e-12, "regenerated");
}

// ---- Losses ----

// PyTorch cross_entropy / nll_loss on [n, c, d] scores; returns the loss (vector for "none").
Vec ref_loss(bool softmax, const Vec& x, int64_t n, int64_t c, int64_t d, const std::vector<int64_t>& labels,
             const Vec* weights, int64_t ignore, const std::string& reduction, Vec* log_prob = nullptr) {
  Vec per(n * d, 0.0);
  double total_w = 0, sum = 0;
  if (log_prob) log_prob->assign(x.size(), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < d; ++t) {
      auto at = [&](int64_t j) { return x[(i * c + j) * d + t]; };
      double mx = -INFINITY, se = 0;
      for (int64_t j = 0; j < c; ++j) mx = std::max(mx, at(j));
      for (int64_t j = 0; j < c; ++j) se += std::exp(at(j) - mx);
      if (log_prob)
        for (int64_t j = 0; j < c; ++j) (*log_prob)[(i * c + j) * d + t] = at(j) - mx - std::log(se);
      const int64_t y = labels[i * d + t];
      if (y == ignore) continue;
      const double w = weights ? (*weights)[y] : 1.0;
      const double lp = softmax ? at(y) - mx - std::log(se) : at(y);
      per[i * d + t] = -w * lp;
      total_w += w;
      sum += -w * lp;
    }
  if (reduction == "none") return per;
  if (reduction == "sum") return {sum};
  return {total_w > 0 ? sum / total_w : 0.0};
}

TEST(MathLoss, CrossEntropyAndNllMatchPyTorch) {
  struct Case {
    Shape scores;
    bool weights;
    bool ignore;
  };
  const std::vector<Case> cases = {{{5, 4}, false, false}, {{5, 4}, true, false}, {{5, 4}, false, true},
                                   {{5, 4}, true, true},   {{2, 3, 4}, true, true}, {{2, 3, 2, 2}, false, true}};
  uint64_t seed = 300;
  for (bool softmax : {true, false}) {
    const std::string op = softmax ? "SoftmaxCrossEntropyLoss" : "NegativeLogLikelihoodLoss";
    for (const Case& k : cases) {
      for (const char* red : {"mean", "sum", "none"}) {
        for (DType lt : {DType::kInt64, DType::kInt32}) {
          const int64_t n = k.scores[0], c = k.scores[1], d = shape_numel(k.scores) / (n * c);
          Tensor x = random_tensor(DType::kFloat32, k.scores, seed++, -3, 3);
          std::vector<int64_t> lab(n * d);
          std::mt19937 rng(static_cast<uint32_t>(seed));
          for (auto& v : lab) v = rng() % c;
          const int64_t ignore = 1;
          Shape ls = k.scores;
          ls.erase(ls.begin() + 1);
          Tensor w = random_tensor(DType::kFloat32, {c}, seed++, 0.1, 2.0);
          Vec wv = values(w);
          Attributes a;
          a.set_string("reduction", red);
          if (k.ignore) a.set_int("ignore_index", ignore);
          std::vector<Tensor> in = {x, ints(lab, ls).cast(lt)};
          if (k.weights) in.push_back(w);
          Vec lp;
          Vec want = ref_loss(softmax, values(x), n, c, d, lab, k.weights ? &wv : nullptr, k.ignore ? ignore : -999,
                              red, &lp);
          auto out = run(op, in, a, softmax ? 2 : 1);
          ASSERT_FALSE(out.empty());
          const std::string what = op + " " + shape_str(k.scores) + " " + red + (k.weights ? " weights" : "") +
                                   (k.ignore ? " ignore_index" : "");
          expect_close(out[0], want, std::string(red) == "none" ? ls : Shape{}, 1e-5, what);
          if (softmax) expect_close(out[1], lp, k.scores, 1e-5, what + " log_prob");
        }
      }
    }
  }
}

TEST(MathLoss, AllIgnoredMeanIsZeroAndBadLabelsFail) {
  Tensor x = random_tensor(DType::kFloat32, {3, 4}, 310);
  Attributes a;
  a.set_int("ignore_index", -100);
  auto out = run("SoftmaxCrossEntropyLoss", {x, ints({-100, -100, -100}, {3})}, a);
  expect_close(out[0], {0.0}, {}, 0, "all ignored");
  std::string e = run_error("SoftmaxCrossEntropyLoss", {x, ints({0, 4, 1}, {3})}, a);
  EXPECT_NE(e.find("label 4 at position 1"), std::string::npos) << e;
  e = run_error("NegativeLogLikelihoodLoss", {x, ints({0, -1, 1}, {3})});
  EXPECT_NE(e.find("label -1"), std::string::npos) << e;
  e = run_error("SoftmaxCrossEntropyLoss", {x, ints({0, 1}, {2})});
  EXPECT_NE(e.find("labels [2] must have shape [3]"), std::string::npos) << e;
  Attributes bad;
  bad.set_string("reduction", "avg");
  e = run_error("SoftmaxCrossEntropyLoss", {x, ints({0, 1, 2}, {3})}, bad);
  EXPECT_NE(e.find("reduction 'avg'"), std::string::npos) << e;
}

// The fused gradient equals PyTorch's: (softmax - onehot) * w[label] / sum of counted weights.
TEST(MathLoss, CrossEntropyGradIsSoftmaxMinusOneHot) {
  const int64_t n = 4, c = 5;
  Tensor x = random_tensor(DType::kFloat64, {n, c}, 320, -2, 2), w = random_tensor(DType::kFloat64, {c}, 321, 0.5, 2);
  const std::vector<int64_t> lab = {1, 3, 0, 3};
  Attributes a;
  a.set_int("ignore_index", 0);
  auto out = run("SoftmaxCrossEntropyLossGrad", {Tensor::scalar(DType::kFloat64, 2.0), x, ints(lab, {n}), w}, a, 1, 1,
                 {}, kGalvatronDomain);
  Vec p = ref_softmax(values(x), {n, c}, 1, false), wv = values(w), want(n * c, 0.0);
  const double total = wv[1] + wv[3] + wv[3];
  for (int64_t i = 0; i < n; ++i) {
    if (lab[i] == 0) continue;
    for (int64_t j = 0; j < c; ++j) want[i * c + j] = 2.0 * wv[lab[i]] / total * (p[i * c + j] - (j == lab[i]));
  }
  expect_close(out[0], want, {n, c}, 1e-12);
  out = run("NegativeLogLikelihoodLossGrad", {Tensor::scalar(DType::kFloat64, 2.0), ints(lab, {n}), w},
            [&] {
              Attributes b = a;
              b.set_ints("shape", {n, c});
              return b;
            }(),
            1, 1, {}, kGalvatronDomain);
  Vec want_nll(n * c, 0.0);
  for (int64_t i = 0; i < n; ++i)
    if (lab[i] != 0) want_nll[i * c + lab[i]] = -2.0 * wv[lab[i]] / total;
  expect_close(out[0], want_nll, {n, c}, 1e-12);
}

// A small training graph through the backward rules: logits = X @ W + b, loss = cross-entropy; the gradient of W
// equals X^T @ (softmax - onehot) / N.
TEST(MathBackward, LinearCrossEntropyGradient) {
  const int64_t n = 6, k = 5, c = 4;
  Graph g;
  g.opsets[""] = 20;
  Tensor xt = random_tensor(DType::kFloat64, {n, k}, 330), wt = random_tensor(DType::kFloat64, {k, c}, 331);
  const std::vector<int64_t> lab = {0, 1, 2, 3, 1, 2};
  ValueId x = g.add_initializer("x", xt, ValueKind::kConstant);
  ValueId w = g.add_initializer("w", wt, ValueKind::kParameter);
  ValueId y = g.add_initializer("y", ints(lab, {n}), ValueKind::kConstant);
  Node mm;
  mm.name = "mm";
  mm.op_type = "MatMul";
  mm.opset = 20;
  mm.inputs = {x, w};
  auto logits = g.add_node(mm);
  ASSERT_TRUE(logits.has_value()) << logits.status().message();
  Node ce;
  ce.name = "ce";
  ce.op_type = "SoftmaxCrossEntropyLoss";
  ce.opset = 20;
  ce.inputs = {(*logits)[0], y};
  auto loss = g.add_node(ce);
  ASSERT_TRUE(loss.has_value()) << loss.status().message();
  auto ag = build_backward(g, (*loss)[0], {w});
  ASSERT_TRUE(ag.has_value()) << ag.status().message();
  const ValueId gw = ag->grads[w];
  g.outputs = {(*loss)[0], gw};
  auto backend = make_cpu_backend();
  auto ex = Executor::create(g, *backend);
  ASSERT_TRUE(ex.has_value()) << ex.status().message();
  ASSERT_TRUE((*ex)->run().is_ok());
  Tensor got = *(*ex)->fetch(gw);
  Shape s;
  Vec logit = ref_matmul(values(xt), {n, k}, values(wt), {k, c}, s), p = ref_softmax(logit, {n, c}, 1, false);
  Vec xv = values(xt), want(k * c, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t a = 0; a < k; ++a)
      for (int64_t j = 0; j < c; ++j) want[a * c + j] += xv[i * k + a] * (p[i * c + j] - (j == lab[i])) / n;
  expect_close(got, want, {k, c}, 1e-12);
}

}  // namespace
}  // namespace gv::testing

namespace gv {
namespace {

// galvatron LinearCrossEntropy's bad inputs: clear errors naming what is wrong (shape inference and the CPU kernel).
TEST(LinearCrossEntropyErrors, ShapesReductionAndLabels) {
  auto error = [](const std::vector<Tensor>& in, Attributes a, int outputs = 1) -> std::string {
    auto r = testing::run_op("LinearCrossEntropy", in, std::move(a), outputs, 20, {}, kGalvatronDomain);
    EXPECT_FALSE(r.has_value()) << "should have failed";
    return r ? "" : r.status().message();
  };
  const Tensor x(DType::kFloat32, {4, 3}), w(DType::kFloat32, {6, 3}), labels = Tensor::from_i64({0, 1, 2, 3}, {4});
  EXPECT_NE(error({x, Tensor(DType::kFloat32, {6, 5}), labels}, {}).find("does not match X"), std::string::npos);
  Attributes kv;
  kv.set_int("trans_w", 0);
  EXPECT_NE(error({x, w, labels}, kv).find("trans_w = 0: W is [K, V]"), std::string::npos);
  EXPECT_NE(error({x, w, Tensor::from_i64({0, 1, 2}, {3})}, {}).find("labels must be"), std::string::npos);
  Attributes none;
  none.set_string("reduction", "none");
  EXPECT_NE(error({x, w, labels}, none).find("mean or sum"), std::string::npos);
  EXPECT_NE(error({x, w, labels}, {}, 2).find("has 2 outputs"), std::string::npos);
  EXPECT_NE(error({x, w, Tensor::from_i64({0, 1, 9, 3}, {4})}, {}).find("label 9 at position 2 is outside [0, 6)"),
            std::string::npos);
}

}  // namespace
}  // namespace gv

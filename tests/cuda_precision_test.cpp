// bf16 products and the vectorized flat elementwise kernels, called directly through kernels/cuda/ops.h:
//  - to_bf16 against a CPU round-to-nearest-even on hand-picked bit patterns (ties, NaN, inf, overflow, subnormals)
//    and on random arrays of awkward sizes and misaligned pointers, bit for bit;
//  - gemm_bf16 on bf16-representable inputs against a double CPU product (exact inputs, float32 accumulation: 1e-5);
//  - gemm_f32 in MathMode::kBf16: exact on bf16-representable inputs over every layout (transposes, batches, stride 0,
//    padded and overlapping strides), and on random float32 inputs an error that only bf16 operands give (> 1e-3,
//    where tf32 gives ~3e-4) and that bf16 bounds (< 1e-2);
//  - binary, unary, scale, activation-gradient, accumulate and AdamW flat paths: the 16-byte path (aligned pointers)
//    and the element path (pointers offset by one float) agree bit for bit and follow the CPU.
//  - gemm_f32's padded-C route (C rows not 16-byte aligned, beta 0, one matrix) in tf32 and bf16, one chunk and two;
//  - reduce_sum_f32 over leading dims (the column-sum path) and softmax cross-entropy over contiguous rows (one-read
//    statistics) against double CPU sums (1e-5 relative).
// Label `gpu`: needs a CUDA device; skipped where none is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/optimizer.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "runtime/tensor.h"

namespace gv {
namespace {

std::mt19937_64& rng() {
  static std::mt19937_64 r(std::random_device{}());
  return r;
}

std::vector<float> randn(size_t n, double scale = 1.0, double shift = 0.0) {
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(rng()) * scale + shift);
  return v;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Reference rounding, by value rather than by the kernel's bit trick: the nearer of the two bf16 neighbours (the
// truncation and the next one up in magnitude), ties to the even one; NaN to a NaN.
uint16_t ref_bf16(float f) {
  const uint32_t u = bits(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);
  if ((u & 0xffffu) == 0) return lo;
  const uint16_t hi = static_cast<uint16_t>(lo + 1);  // next magnitude up (0x7f80 after the largest: infinity)
  const double x = std::fabs(static_cast<double>(f));
  const double dl = x - std::fabs(static_cast<double>(bf16_to_float(lo)));
  const double hv = (hi & 0x7fffu) == 0x7f80u ? std::ldexp(1.0, 128) : std::fabs(static_cast<double>(bf16_to_float(hi)));
  const double dh = hv - x;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1u) ? hi : lo;
}

std::vector<float> bf16_exact(size_t n, double scale = 1.0) {
  std::vector<float> v = randn(n, scale);
  for (auto& x : v) x = bf16_to_float(ref_bf16(x));
  return v;
}

// Device buffer of T with `pad` spare elements in front (pointer offset by pad elements).
template <typename T>
class Dev {
 public:
  explicit Dev(size_t n, size_t pad = 0) : n_(n), pad_(pad) {
    EXPECT_TRUE(cuda::malloc_device(&raw_, sizeof(T) * (n + pad + 4))) << cuda::last_error();
  }
  Dev(const std::vector<T>& v, size_t pad = 0) : Dev(v.size(), pad) { upload(v); }
  ~Dev() { cuda::free_device(raw_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  T* get() const { return static_cast<T*>(raw_) + pad_; }
  void upload(const std::vector<T>& v) {
    if (!v.empty()) {
      EXPECT_TRUE(cuda::memcpy_h2d(get(), v.data(), sizeof(T) * v.size())) << cuda::last_error();
    }
  }
  std::vector<T> download() const {
    std::vector<T> v(n_);
    EXPECT_TRUE(cuda::synchronize()) << cuda::last_error();
    if (n_) {
      EXPECT_TRUE(cuda::memcpy_d2h(v.data(), get(), sizeof(T) * n_)) << cuda::last_error();
    }
    return v;
  }

 private:
  void* raw_ = nullptr;
  size_t n_, pad_;
};

class CudaPrecision : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() < 1) GTEST_SKIP() << "no CUDA device";
    cuda::set_math_mode(cuda::MathMode::kFloat32);
  }
  void TearDown() override { cuda::set_math_mode(cuda::MathMode::kFloat32); }
};

// ---- to_bf16 ----

TEST_F(CudaPrecision, ToBf16Rounding) {
  const std::vector<std::pair<uint32_t, uint16_t>> cases = {
      {0x3f800000u, 0x3f80},  // 1
      {0x3f808000u, 0x3f80},  // 1 + 2^-8: tie, to the even 1
      {0x3f818000u, 0x3f82},  // 1 + 3*2^-8: tie, up to the even 1 + 2^-6
      {0x3f808001u, 0x3f81},  // just above the tie
      {0x3f807fffu, 0x3f80},  // just below it
      {0xbf808000u, 0xbf80},  // the ties with a sign
      {0xbf818000u, 0xbf82},
      {0x80000000u, 0x8000},  // -0
      {0x00000001u, 0x0000},  // smallest subnormal to +0
      {0x00008000u, 0x0000},  // subnormal tie to even 0
      {0x00018000u, 0x0002},  // subnormal tie up to even
      {0x7f800000u, 0x7f80},  // inf
      {0xff800000u, 0xff80},  // -inf
      {0x7f7f0000u, 0x7f7f},  // bf16's largest finite
      {0x7f7f7fffu, 0x7f7f},  // below its half ulp: stays
      {0x7f7f8000u, 0x7f80},  // the tie above the largest: to infinity (even)
      {0x7f7fffffu, 0x7f80},  // float's largest: infinity
      {0xff7fffffu, 0xff80},
  };
  std::vector<float> x;
  for (auto& c : cases) x.push_back(from_bits(c.first));
  const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fbfffffu, 0xff800001u};
  for (uint32_t u : nans) x.push_back(from_bits(u));
  Dev<float> dx(x);
  Dev<uint16_t> dy(x.size());
  ASSERT_TRUE(cuda::to_bf16(dx.get(), dy.get(), static_cast<int64_t>(x.size()))) << cuda::last_error();
  const std::vector<uint16_t> y = dy.download();
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(y[i], cases[i].second) << std::hex << "input 0x" << cases[i].first;
    EXPECT_EQ(ref_bf16(x[i]), cases[i].second) << std::hex << "reference, input 0x" << cases[i].first;
  }
  for (size_t j = 0; j < std::size(nans); ++j) {
    const uint16_t r = y[cases.size() + j];
    EXPECT_TRUE((r & 0x7f80u) == 0x7f80u && (r & 0x7fu) != 0) << std::hex << "NaN 0x" << nans[j] << " gave 0x" << r;
    EXPECT_EQ(r >> 15, nans[j] >> 31) << "NaN sign";
  }
}

TEST_F(CudaPrecision, ToBf16Arrays) {
  for (size_t n : {size_t{1}, size_t{3}, size_t{4}, size_t{5}, size_t{1023}, size_t{4097}, size_t{100003}}) {
    std::vector<float> x = randn(n, 100.0);
    // Random bit patterns too (ties, NaNs, subnormals, huge values).
    std::uniform_int_distribution<uint32_t> ud;
    for (size_t i = 0; i < n; i += 3) x[i] = from_bits(ud(rng()));
    for (size_t i = 1; i < n; i += 7) x[i] = from_bits((bits(x[i]) & 0xffff0000u) | 0x8000u);  // exact ties
    for (size_t xo : {size_t{0}, size_t{1}}) {
      for (size_t yo : {size_t{0}, size_t{1}}) {
        SCOPED_TRACE("n " + std::to_string(n) + " x offset " + std::to_string(xo) + " y offset " +
                     std::to_string(yo));
        Dev<float> dx(x, xo);
        Dev<uint16_t> dy(n, yo);
        ASSERT_TRUE(cuda::to_bf16(dx.get(), dy.get(), static_cast<int64_t>(n))) << cuda::last_error();
        const std::vector<uint16_t> y = dy.download();
        int bad = 0;
        for (size_t i = 0; i < n; ++i) {
          const uint16_t want = ref_bf16(x[i]);
          const bool ok = std::isnan(x[i]) ? ((y[i] & 0x7f80u) == 0x7f80u && (y[i] & 0x7fu) != 0) : y[i] == want;
          if (!ok && ++bad <= 5) ADD_FAILURE() << std::hex << "i " << std::dec << i << ": 0x" << std::hex << bits(x[i])
                                               << " -> 0x" << y[i] << ", want 0x" << want;
        }
        EXPECT_EQ(bad, 0);
      }
    }
  }
}

// ---- products ----

// C[i] = alpha * op(A[i]) op(B[i]) + beta * C[i], in double, row-major, gemm_f32's layout rules.
std::vector<double> ref_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const std::vector<float>& a,
                             int64_t sa, const std::vector<float>& b, int64_t sb, double beta,
                             const std::vector<float>& c, int64_t sc, int64_t batch) {
  std::vector<double> out(c.begin(), c.end());
  for (int64_t t = 0; t < batch; ++t) {
    const float* A = a.data() + t * sa;
    const float* B = b.data() + t * sb;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (int64_t l = 0; l < k; ++l) {
          const double x = ta ? A[l * m + i] : A[i * k + l];
          const double y = tb ? B[j * k + l] : B[l * n + j];
          s += x * y;
        }
        double& o = out[t * sc + i * n + j];
        o = alpha * s + (beta == 0.0 ? 0.0 : beta * static_cast<double>(c[t * sc + i * n + j]));
      }
    }
  }
  return out;
}

// ||got - want|| / ||want|| over the written matrices (and NaN never passes).
double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

struct Layout {
  bool ta, tb;
  int64_t m, n, k, batch;
  int64_t pad_a, pad_b;  // matrix stride = size + pad; -1: stride 0 (one repeated matrix); < -1: overlap by -pad
  float alpha, beta;
};

int64_t stride_of(int64_t size, int64_t pad, int64_t batch) {
  if (batch == 1) return 0;
  if (pad == -1) return 0;
  return size + pad;
}
int64_t extent_of(int64_t size, int64_t stride, int64_t batch) { return (batch - 1) * stride + size; }

// Runs one layout through gemm_f32 (in the current mode) or gemm_bf16 (bf16 copies of the same inputs) and returns
// the relative error against the double product.
double run_layout(const Layout& L, bool use_bf16, bool exact_inputs) {
  const int64_t ca = L.m * L.k, cb = L.k * L.n, cc = L.m * L.n;
  const int64_t sa = stride_of(ca, L.pad_a, L.batch), sb = stride_of(cb, L.pad_b, L.batch), sc = cc + 4;  // gaps between the C matrices stay untouched
  const int64_t ea = extent_of(ca, sa, L.batch), eb = extent_of(cb, sb, L.batch), ec = extent_of(cc, sc, L.batch);
  std::vector<float> a = exact_inputs ? bf16_exact(ea) : randn(ea);
  std::vector<float> b = exact_inputs ? bf16_exact(eb) : randn(eb);
  std::vector<float> c = randn(ec);
  const std::vector<double> want = ref_gemm(L.ta, L.tb, L.m, L.n, L.k, L.alpha, a, sa, b, sb, L.beta, c, sc, L.batch);
  Dev<float> dc(c);
  if (use_bf16) {
    std::vector<uint16_t> a16(a.size()), b16(b.size());
    for (size_t i = 0; i < a.size(); ++i) a16[i] = ref_bf16(a[i]);
    for (size_t i = 0; i < b.size(); ++i) b16[i] = ref_bf16(b[i]);
    Dev<uint16_t> da(a16), db(b16);
    EXPECT_TRUE(cuda::gemm_bf16(L.ta, L.tb, L.m, L.n, L.k, L.alpha, da.get(), sa, db.get(), sb, L.beta, dc.get(), sc,
                                L.batch))
        << cuda::last_error();
    const std::vector<float> got = dc.download();
    return rel_error(got, want);
  }
  Dev<float> da(a), db(b);
  EXPECT_TRUE(cuda::gemm_f32(L.ta, L.tb, L.m, L.n, L.k, L.alpha, da.get(), sa, db.get(), sb, L.beta, dc.get(), sc,
                             L.batch))
      << cuda::last_error();
  const std::vector<float> got = dc.download();
  // Inputs unchanged (the conversion reads them only).
  EXPECT_EQ(da.download(), a);
  EXPECT_EQ(db.download(), b);
  return rel_error(got, want);
}

std::string describe(const Layout& L) {
  char s[200];
  std::snprintf(s, sizeof(s), "ta %d tb %d m %lld n %lld k %lld batch %lld pad_a %lld pad_b %lld alpha %g beta %g",
                L.ta, L.tb, static_cast<long long>(L.m), static_cast<long long>(L.n), static_cast<long long>(L.k),
                static_cast<long long>(L.batch), static_cast<long long>(L.pad_a), static_cast<long long>(L.pad_b),
                L.alpha, L.beta);
  return s;
}

// Layouts for the exactness checks: every transpose pair, batches packed, repeated (stride 0), padded by a multiple
// of 4 and by an odd count, overlapping; rows of odd lengths (gemm_f32 pads its bf16 copies' rows to 8 elements);
// shapes on both sides of gemm_f32's conversion threshold (m*n/(m+n) 128) and C rows that keep float32 operands.
std::vector<Layout> layouts() {
  std::vector<Layout> v;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    v.push_back({ta, tb, 7, 5, 3, 1, 0, 0, 1.0f, 0.0f});           // small: below the threshold
    v.push_back({ta, tb, 272, 264, 40, 1, 0, 0, 1.0f, 0.0f});      // above: converted
    v.push_back({ta, tb, 272, 264, 40, 3, 0, 0, 0.5f, 0.25f});     // packed batch, alpha, beta
    v.push_back({ta, tb, 272, 264, 40, 3, 8, -1, 1.0f, 0.0f});     // A padded by 8, B repeated
    v.push_back({ta, tb, 264, 272, 36, 3, -1, 5, 1.0f, 1.0f});     // A repeated, B padded by 5 (no float4)
    v.push_back({ta, tb, 260, 300, 33, 2, 3, 4, 2.0f, 0.0f});      // odd k, odd pads
    v.push_back({ta, tb, 256, 256, 64, 4, -64, 0, 1.0f, 0.0f});    // A matrices overlap (stride = size - 64)
  }
  v.push_back({false, true, 1024, 1024, 64, 2, 0, 0, 0.125f, 0.0f});  // attention-like scores
  v.push_back({false, false, 300, 301, 40, 2, 0, 0, 1.0f, 0.0f});     // C rows unaligned (n % 4): float32 operands
  v.push_back({true, false, 301, 300, 37, 2, 0, 0, 1.0f, 0.5f});      // A and B rows padded in the bf16 copies
  v.push_back({false, true, 400, 400, 1001, 1, 0, 0, 1.0f, 0.0f});    // logits-like: odd k, rows padded
  v.push_back({false, false, 1024, 64, 1024, 2, 0, 0, 1.0f, 0.0f});   // below the threshold (n = 64)
  return v;
}

TEST_F(CudaPrecision, GemmBf16Exact) {
  for (const Layout& L : layouts()) {
    SCOPED_TRACE(describe(L));
    for (auto mode : {cuda::MathMode::kFloat32, cuda::MathMode::kTf32, cuda::MathMode::kBf16}) {
      cuda::set_math_mode(mode);  // gemm_bf16 ignores the mode
      const double rel = run_layout(L, true, true);
      EXPECT_LE(rel, 1e-5) << "gemm_bf16, mode " << static_cast<int>(mode);
    }
  }
}

TEST_F(CudaPrecision, GemmBf16KZero) {
  // k == 0: C = beta * C for every matrix of the batch.
  const int64_t m = 3, n = 4, batch = 3;
  std::vector<float> c = randn(m * n * batch);
  Dev<float> dc(c);
  Dev<uint16_t> dummy(4);
  ASSERT_TRUE(cuda::gemm_bf16(false, false, m, n, 0, 1.0f, dummy.get(), 0, dummy.get(), 0, 0.5f, dc.get(), m * n,
                              batch))
      << cuda::last_error();
  const std::vector<float> got = dc.download();
  for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(got[i], 0.5f * c[i]) << i;
  Dev<float> df(c);
  cuda::set_math_mode(cuda::MathMode::kBf16);
  ASSERT_TRUE(cuda::gemm_f32(false, false, m, n, 0, 1.0f, nullptr, 0, nullptr, 0, 0.0f, df.get(), m * n, batch));
  for (float x : df.download()) EXPECT_EQ(x, 0.0f);
}

TEST_F(CudaPrecision, GemmF32Bf16ModeExactInputs) {
  // bf16-representable inputs: the conversion is exact, so every layout matches the double product to float32
  // accumulation (also where the threshold keeps float32 operands: they are tf32-exact too).
  cuda::set_math_mode(cuda::MathMode::kBf16);
  for (const Layout& L : layouts()) {
    SCOPED_TRACE(describe(L));
    EXPECT_LE(run_layout(L, false, true), 1e-5);
  }
}

TEST_F(CudaPrecision, GemmF32Bf16ModeRoundsToBf16) {
  // Random float32 inputs, converted shapes: bf16 rounding of both operands gives ~2-3e-3 relative; tf32 (what
  // FAST_16BF on float32 operands ran, bench/cuda_notes.md 4) gives ~3e-4, exact float32 ~1e-7.
  cuda::set_math_mode(cuda::MathMode::kBf16);
  const Layout shapes[] = {{false, false, 256, 768, 768, 1, 0, 0, 1.0f, 0.0f},
                           {false, true, 512, 384, 256, 3, 0, 0, 1.0f, 0.0f},
                           {true, false, 300, 280, 200, 2, 4, -1, 1.0f, 0.0f}};
  for (const Layout& L : shapes) {
    SCOPED_TRACE(describe(L));
    const double rel = run_layout(L, false, false);
    std::printf("[ bf16 ] %s: relative error %.3g\n", describe(L).c_str(), rel);
    EXPECT_GT(rel, 1e-3) << "bf16 operands not used";
    EXPECT_LT(rel, 1e-2);
  }
  // The same shape in tf32 mode stays tf32-accurate: the modes differ.
  cuda::set_math_mode(cuda::MathMode::kTf32);
  const double tf32 = run_layout(shapes[0], false, false);
  std::printf("[ tf32 ] %s: relative error %.3g\n", describe(shapes[0]).c_str(), tf32);
  EXPECT_LT(tf32, 1e-3);
}

// ---- flat elementwise: the float4 path (aligned) and the element path (offset by one float) ----

struct FlatRun {
  std::vector<float> vec, one;  // outputs of the aligned and the misaligned launch
};

// Runs `launch(ptrs...)` on copies of `inputs` at offset 0 and at offset 1, returns output `out` of both.
template <class F>
FlatRun run_both(const std::vector<std::vector<float>>& inputs, size_t out, F launch) {
  FlatRun r;
  for (size_t off : {size_t{0}, size_t{1}}) {
    std::vector<std::unique_ptr<Dev<float>>> bufs;
    std::vector<float*> p;
    for (auto& in : inputs) {
      bufs.push_back(std::make_unique<Dev<float>>(in, off));
      p.push_back(bufs.back()->get());
    }
    EXPECT_TRUE(launch(p)) << cuda::last_error();
    (off == 0 ? r.vec : r.one) = bufs[out]->download();
  }
  return r;
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  int bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (bits(a[i]) != bits(b[i]) && ++bad <= 3) ADD_FAILURE() << what << ": element " << i << " " << a[i] << " vs " << b[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

void expect_near_cpu(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    if (std::isnan(w) && std::isnan(g)) continue;
    if (std::isinf(w) && g == w) continue;
    const bool ok = std::fabs(g - w) <= tol * std::max(1.0, std::fabs(w));
    if (!ok && ++bad <= 3) ADD_FAILURE() << what << ": element " << i << " got " << g << " want " << w;
  }
  EXPECT_EQ(bad, 0) << what;
}

const size_t kSizes[] = {1, 3, 4, 5, 1023, 4097};

cuda::Broadcast flat_bc(int64_t n, bool a_scalar, bool b_scalar) {
  cuda::Broadcast bc;
  bc.rank = 1;
  bc.numel = n;
  bc.dims[0] = n;
  bc.strides[0][0] = a_scalar ? 0 : 1;
  bc.strides[1][0] = b_scalar ? 0 : 1;
  bc.strides[2][0] = 1;
  return bc;
}

TEST_F(CudaPrecision, FlatBinary) {
  const cuda::Binary ops[] = {cuda::Binary::kAdd, cuda::Binary::kSub, cuda::Binary::kMul, cuda::Binary::kDiv,
                              cuda::Binary::kPow, cuda::Binary::kMax, cuda::Binary::kMin};
  for (size_t n : kSizes) {
    for (int form = 0; form < 3; ++form) {  // same shape, scalar b, scalar a
      const bool a_scalar = form == 2, b_scalar = form == 1;
      for (cuda::Binary op : ops) {
        SCOPED_TRACE("n " + std::to_string(n) + " form " + std::to_string(form) + " op " +
                     std::to_string(static_cast<int>(op)));
        std::vector<float> a = op == cuda::Binary::kPow ? randn(a_scalar ? 1 : n, 0.5, 2.0) : randn(a_scalar ? 1 : n);
        std::vector<float> b = randn(b_scalar ? 1 : n);
        if (op == cuda::Binary::kPow) {
          for (auto& x : a) x = std::fabs(x) + 0.1f;
          for (size_t i = 0; i < b.size(); ++i) b[i] = b_scalar ? 2.0f : (i % 4 == 0 ? 3.0f : b[i]);
        }
        if (op == cuda::Binary::kMax && n > 3 && !a_scalar) a[2] = NAN;
        std::vector<float> want(n);
        for (size_t i = 0; i < n; ++i) {
          const float x = a[a_scalar ? 0 : i], y = b[b_scalar ? 0 : i];
          switch (op) {
            case cuda::Binary::kAdd: want[i] = x + y; break;
            case cuda::Binary::kSub: want[i] = x - y; break;
            case cuda::Binary::kMul: want[i] = x * y; break;
            case cuda::Binary::kDiv: want[i] = x / y; break;
            case cuda::Binary::kPow: want[i] = y == 2.0f ? x * x : (y == 3.0f ? x * x * x : std::pow(x, y)); break;
            case cuda::Binary::kMax: want[i] = (std::isnan(x) || std::isnan(y)) ? x + y : (x > y ? x : y); break;
            default: want[i] = (std::isnan(x) || std::isnan(y)) ? x + y : (x < y ? x : y); break;
          }
        }
        const cuda::Broadcast bc = flat_bc(static_cast<int64_t>(n), a_scalar, b_scalar);
        FlatRun r = run_both({a, b, std::vector<float>(n, -7.0f)}, 2, [&](const std::vector<float*>& p) {
          return cuda::binary_f32(op, p[0], p[1], p[2], bc);
        });
        expect_same_bits(r.vec, r.one, "float4 vs element path");
        const bool exact = op != cuda::Binary::kPow;
        expect_near_cpu(r.vec, want, exact ? 0.0 : 1e-6, "vs CPU");
      }
    }
  }
}

TEST_F(CudaPrecision, FlatUnaryScaleActGrad) {
  const cuda::Unary uops[] = {cuda::Unary::kNeg,  cuda::Unary::kAbs,     cuda::Unary::kRelu, cuda::Unary::kSqrt,
                              cuda::Unary::kReciprocal, cuda::Unary::kExp, cuda::Unary::kLog, cuda::Unary::kTanh,
                              cuda::Unary::kErf,  cuda::Unary::kSigmoid, cuda::Unary::kGelu, cuda::Unary::kGeluTanh,
                              cuda::Unary::kIdentity};
  const cuda::ActGrad gops[] = {cuda::ActGrad::kSigmoid, cuda::ActGrad::kTanh, cuda::ActGrad::kErf,
                                cuda::ActGrad::kGelu, cuda::ActGrad::kGeluTanh};
  for (size_t n : kSizes) {
    SCOPED_TRACE("n " + std::to_string(n));
    const std::vector<float> x = randn(n, 2.0), pos = [&] {
      std::vector<float> v = randn(n);
      for (auto& e : v) e = std::fabs(e) + 0.05f;
      return v;
    }();
    for (cuda::Unary op : uops) {
      SCOPED_TRACE("unary " + std::to_string(static_cast<int>(op)));
      const bool needs_pos = op == cuda::Unary::kSqrt || op == cuda::Unary::kLog;
      const std::vector<float>& in = needs_pos ? pos : x;
      std::vector<float> want(n);
      for (size_t i = 0; i < n; ++i) {
        const double v = in[i];
        switch (op) {
          case cuda::Unary::kNeg: want[i] = static_cast<float>(-v); break;
          case cuda::Unary::kAbs: want[i] = static_cast<float>(std::fabs(v)); break;
          case cuda::Unary::kRelu: want[i] = static_cast<float>(v > 0 ? v : 0.0); break;
          case cuda::Unary::kSqrt: want[i] = static_cast<float>(std::sqrt(v)); break;
          case cuda::Unary::kReciprocal: want[i] = static_cast<float>(1.0 / v); break;
          case cuda::Unary::kExp: want[i] = static_cast<float>(std::exp(v)); break;
          case cuda::Unary::kLog: want[i] = static_cast<float>(std::log(v)); break;
          case cuda::Unary::kTanh: want[i] = static_cast<float>(std::tanh(v)); break;
          case cuda::Unary::kErf: want[i] = static_cast<float>(std::erf(v)); break;
          case cuda::Unary::kSigmoid: want[i] = static_cast<float>(1.0 / (1.0 + std::exp(-v))); break;
          case cuda::Unary::kGelu: want[i] = static_cast<float>(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))); break;
          case cuda::Unary::kGeluTanh:
            want[i] = static_cast<float>(0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))));
            break;
          default: want[i] = in[i]; break;
        }
      }
      FlatRun r = run_both({in, std::vector<float>(n, -7.0f)}, 1, [&](const std::vector<float*>& p) {
        return cuda::unary_f32(op, p[0], p[1], static_cast<int64_t>(n));
      });
      expect_same_bits(r.vec, r.one, "float4 vs element path");
      expect_near_cpu(r.vec, want, 1e-5, "vs CPU");
    }
    {
      std::vector<float> want(n);
      for (size_t i = 0; i < n; ++i) want[i] = x[i] * 0.37f;
      FlatRun r = run_both({x}, 0, [&](const std::vector<float*>& p) {
        return cuda::scale_f32(p[0], static_cast<int64_t>(n), 0.37f);
      });
      expect_same_bits(r.vec, r.one, "scale: float4 vs element path");
      expect_near_cpu(r.vec, want, 0.0, "scale vs CPU");
    }
    const std::vector<float> dy = randn(n);
    for (cuda::ActGrad op : gops) {
      SCOPED_TRACE("act grad " + std::to_string(static_cast<int>(op)));
      // kSigmoid and kTanh take the forward output.
      std::vector<float> v = x;
      if (op == cuda::ActGrad::kSigmoid)
        for (auto& e : v) e = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(e))));
      if (op == cuda::ActGrad::kTanh)
        for (auto& e : v) e = static_cast<float>(std::tanh(static_cast<double>(e)));
      std::vector<float> want(n);
      for (size_t i = 0; i < n; ++i) {
        const double g = dy[i], t = v[i];
        double d;
        switch (op) {
          case cuda::ActGrad::kSigmoid: d = t * (1 - t); break;
          case cuda::ActGrad::kTanh: d = 1 - t * t; break;
          case cuda::ActGrad::kErf: d = 2.0 / std::sqrt(M_PI) * std::exp(-t * t); break;
          case cuda::ActGrad::kGelu:
            d = 0.5 * (1 + std::erf(t / std::sqrt(2.0))) + t * std::exp(-0.5 * t * t) / std::sqrt(2 * M_PI);
            break;
          default: {
            const double k = 0.7978845608028654, u = k * (t + 0.044715 * t * t * t);
            const double th = std::tanh(u);
            d = 0.5 * (1 + th) + 0.5 * t * (1 - th * th) * k * (1 + 3 * 0.044715 * t * t);
            break;
          }
        }
        want[i] = static_cast<float>(g * d);
      }
      FlatRun r = run_both({dy, v, std::vector<float>(n, -7.0f)}, 2, [&](const std::vector<float*>& p) {
        return cuda::activation_grad_f32(op, p[0], p[1], p[2], static_cast<int64_t>(n));
      });
      expect_same_bits(r.vec, r.one, "float4 vs element path");
      expect_near_cpu(r.vec, want, 1e-5, "vs CPU");
    }
  }
}

TEST_F(CudaPrecision, FlatAccumulateAdamW) {
  for (size_t n : kSizes) {
    SCOPED_TRACE("n " + std::to_string(n));
    const std::vector<float> acc = randn(n), g = randn(n);
    std::vector<float> want(n);
    for (size_t i = 0; i < n; ++i) want[i] = acc[i] + g[i];
    FlatRun r = run_both({acc, g}, 0, [&](const std::vector<float*>& p) {
      return cuda::accumulate_f32(p[0], p[1], static_cast<int64_t>(n));
    });
    expect_same_bits(r.vec, r.one, "accumulate: float4 vs element path");
    expect_near_cpu(r.vec, want, 0.0, "accumulate vs CPU");

    // AdamW: all four buffers, against the CPU kernel (PyTorch's order) and between the paths.
    const std::vector<float> p0 = randn(n), g0 = randn(n, 0.1), m0 = randn(n, 0.01), v0 = [&] {
      std::vector<float> v = randn(n, 0.001);
      for (auto& e : v) e = std::fabs(e);
      return v;
    }();
    const double lr = 3e-4;
    const int64_t step = 7;
    cuda::AdamW a{0.9, 0.95, 1e-8, 0.1, 1.0, 0.0, true};
    Dev<double> dlr(std::vector<double>{lr});
    Dev<int64_t> dstep(std::vector<int64_t>{step});
    std::vector<std::vector<float>> out[2];
    for (int off = 0; off < 2; ++off) {
      Dev<float> dp(p0, off), dg(g0, off), dm(m0, off), dv(v0, off);
      ASSERT_TRUE(cuda::adamw_f32(dp.get(), dg.get(), false, dm.get(), dv.get(), static_cast<int64_t>(n), dlr.get(),
                                  true, dstep.get(), nullptr, a))
          << cuda::last_error();
      out[off] = {dp.download(), dg.download(), dm.download(), dv.download()};
    }
    const char* names[] = {"p", "g", "m", "v"};
    for (int t = 0; t < 4; ++t) expect_same_bits(out[0][t], out[1][t], std::string("adamw ") + names[t]);
    for (float e : out[0][1]) EXPECT_EQ(e, 0.0f) << "zero_grad";
    std::vector<float> p = p0, m = m0, v = v0;
    cpu::AdamWParams cp{lr, a.beta1, a.beta2, a.eps, a.weight_decay, step, a.grad_scale};
    cpu::adamw_update<float>(p.data(), g0.data(), m.data(), v.data(), static_cast<int64_t>(n), cp);
    expect_near_cpu(out[0][0], p, 1e-6, "adamw p vs CPU");
    expect_near_cpu(out[0][2], m, 1e-6, "adamw m vs CPU");
    expect_near_cpu(out[0][3], v, 1e-6, "adamw v vs CPU");
  }
}

// ---- padded C, column sums, cross-entropy rows ----

TEST_F(CudaPrecision, GemmPaddedC) {
  // Unaligned C rows (n % 4 != 0), beta 0, one matrix, m*n >= 2^20: the padded-C route in tf32 and bf16 (exact
  // inputs: every mode is exact to float32 accumulation); the last shape needs two chunks of scratch C (256 MB).
  std::vector<Layout> v;
  for (int t = 0; t < 4; ++t) v.push_back({(t & 1) != 0, (t & 2) != 0, 1100, 1001, 37, 1, 0, 0, 1.0f, 0.0f});
  v.push_back({false, false, 1030, 1027, 40, 1, 0, 0, 0.5f, 0.0f});
  v.push_back({true, true, 9000, 7457, 8, 1, 0, 0, 1.0f, 0.0f});
  for (const Layout& L : v) {
    SCOPED_TRACE(describe(L));
    for (auto mode : {cuda::MathMode::kTf32, cuda::MathMode::kBf16}) {
      cuda::set_math_mode(mode);
      EXPECT_LE(run_layout(L, false, true), 1e-5) << "mode " << static_cast<int>(mode);
      EXPECT_NE(std::string(cuda::gemm_last_path()).find("padded C"), std::string::npos) << cuda::gemm_last_path();
    }
  }
}

TEST_F(CudaPrecision, ColumnSums) {
  struct Case {
    int64_t rows, cols, pad;
  };
  const Case cases[] = {{8192, 768, 0}, {1000, 2304, 0}, {37, 1001, 0}, {8, 4096, 0}, {3, 50, 1}, {513, 132, 1},
                        {1, 64, 0}, {70000, 36, 0}};
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.rows) + " x " + std::to_string(c.cols) + " pad " + std::to_string(c.pad));
    const std::vector<float> x = randn(c.rows * c.cols, 1.0, 0.5);
    Dev<float> dx(x, c.pad), dy(c.cols);
    cuda::Reduce r;
    r.kept_rank = 1;
    r.red_rank = 1;
    r.kept_dims[0] = c.cols;
    r.kept_strides[0] = 1;
    r.red_dims[0] = c.rows;
    r.red_strides[0] = c.cols;
    r.kept_numel = c.cols;
    r.red_numel = c.rows;
    ASSERT_TRUE(cuda::reduce_sum_f32(dx.get(), dy.get(), r, 0.5f)) << cuda::last_error();
    const std::vector<float> got = dy.download();
    for (int64_t j = 0; j < c.cols; ++j) {
      double s = 0, a = 0;
      for (int64_t i = 0; i < c.rows; ++i) {
        s += x[i * c.cols + j];
        a += std::fabs(x[i * c.cols + j]);
      }
      ASSERT_NEAR(got[j], 0.5 * s, 1e-5 * 0.5 * a + 1e-30) << "column " << j;
    }
  }
}

TEST_F(CudaPrecision, CrossEntropyRows) {
  // Contiguous rows (d == 1) of odd widths (unaligned rows), masked (-inf) scores, an ignored label; mean reduction:
  // the loss and the score gradient against double CPU formulas.
  for (int64_t c : {int64_t{1001}, int64_t{50257}, int64_t{4}}) {
    SCOPED_TRACE("classes " + std::to_string(c));
    const int64_t n = 37;
    std::vector<float> x = randn(n * c, 3.0);
    for (int64_t j = 0; j < c; j += 3) x[2 * c + j] = -INFINITY;  // row 2 partly masked
    std::vector<int64_t> labels(n);
    for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int64_t>(rng()() % static_cast<uint64_t>(c));
    labels[2] = 1;
    labels[5] = -100;  // ignored
    Dev<float> dx(x), loss(1), dscores(n * c);
    Dev<int64_t> dl(labels);
    ASSERT_TRUE(cuda::softmax_cross_entropy_f32(dx.get(), dl.get(), true, nullptr, n, c, 1, true, -100, 2, loss.get(),
                                                nullptr))
        << cuda::last_error();
    const float one = 1.0f;
    Dev<float> dloss(std::vector<float>{one});
    ASSERT_TRUE(cuda::softmax_cross_entropy_grad_f32(dloss.get(), dx.get(), dl.get(), true, nullptr, nullptr, n, c, 1,
                                                     true, -100, 2, dscores.get()))
        << cuda::last_error();
    double total = 0, count = 0;
    std::vector<double> lse(n);
    for (int64_t i = 0; i < n; ++i) {
      double m = -INFINITY;
      for (int64_t j = 0; j < c; ++j) m = std::max(m, static_cast<double>(x[i * c + j]));
      double s = 0;
      for (int64_t j = 0; j < c; ++j) s += std::exp(x[i * c + j] - m);
      lse[i] = m + std::log(s);
      if (labels[i] == -100) continue;
      total += lse[i] - x[i * c + labels[i]];
      count += 1;
    }
    const float got_loss = loss.download()[0];
    EXPECT_NEAR(got_loss, total / count, 1e-5 * std::fabs(total / count));
    const std::vector<float> g = dscores.download();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < c; ++j) {
        double want = 0;
        if (labels[i] != -100) want = (std::exp(x[i * c + j] - lse[i]) - (j == labels[i] ? 1.0 : 0.0)) / count;
        // Absolute slack for the label's prob - 1 (float expf near 1: ~1e-7 before the 1/count).
        ASSERT_NEAR(g[i * c + j], want, 1e-5 * std::fabs(want) + 1e-6 / count) << "row " << i << " class " << j;
      }
    }
  }
}

}  // namespace
}  // namespace gv

#include "runtime/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define GV_HAVE_MMAP 1
#endif

namespace gv {
namespace {

struct AlignedDelete {
  void operator()(uint8_t* p) const { std::free(p); }
};

// Zeroed buffers of 1 MiB and more come straight from the kernel as untouched anonymous pages, which read as zeros
// without being cleared or backed by memory until written: the optimizer's zero moments of a large model on its way to
// the GPU (several GB) then cost neither the clearing nor the host memory.
constexpr size_t kMappedZeroBytes = size_t{1} << 20;

std::shared_ptr<uint8_t[]> alloc_aligned(size_t nbytes, bool zero) {
  size_t n = (nbytes + 63) / 64 * 64;
  if (n == 0) n = 64;
#ifdef GV_HAVE_MMAP
  if (zero && n >= kMappedZeroBytes) {
    void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    return std::shared_ptr<uint8_t[]>(static_cast<uint8_t*>(m), [n](uint8_t* q) { munmap(q, n); });
  }
#endif
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, n));
  if (!p) throw std::bad_alloc();
  if (zero) std::memset(p, 0, n);
  else if (n > nbytes) std::memset(p + nbytes, 0, n - nbytes);  // the padding, so no byte is ever undefined
  return std::shared_ptr<uint8_t[]>(p, AlignedDelete());
}

float half_to_float(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7e00);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7c00);
  if (a < 6.103515625e-05f) {  // subnormal
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  int e;
  float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5,1)
  uint32_t mant = static_cast<uint32_t>(std::nearbyint((m * 2.0f - 1.0f) * 1024.0f));
  uint32_t exp = static_cast<uint32_t>(e - 1 + 15);
  if (mant == 1024) { mant = 0; ++exp; }
  return static_cast<uint16_t>(sign | (exp << 10) | mant);
}

double load_as_double(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(p)[i];
    case DType::kFloat64: return static_cast<const double*>(p)[i];
    case DType::kFloat16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kInt64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::kInt32: return static_cast<const int32_t*>(p)[i];
    case DType::kInt8: return static_cast<const int8_t*>(p)[i];
    case DType::kUInt8: return static_cast<const uint8_t*>(p)[i];
    case DType::kUInt16:
      return static_cast<const uint16_t*>(p)[i];
    case DType::kBool: return static_cast<const uint8_t*>(p)[i] ? 1.0 : 0.0;
    default: return 0.0;
  }
}

int64_t load_as_i64(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kInt64: return static_cast<const int64_t*>(p)[i];
    case DType::kInt32: return static_cast<const int32_t*>(p)[i];
    case DType::kInt8: return static_cast<const int8_t*>(p)[i];
    case DType::kUInt8: return static_cast<const uint8_t*>(p)[i];
    case DType::kUInt16:
      return static_cast<const uint16_t*>(p)[i];
    case DType::kBool: return static_cast<const uint8_t*>(p)[i] ? 1 : 0;
    default: {
      double d = load_as_double(p, t, i);
      if (std::isnan(d)) return 0;
      if (d >= 9.2233720368547758e18) return INT64_MAX;
      if (d <= -9.2233720368547758e18) return INT64_MIN;
      return static_cast<int64_t>(d);
    }
  }
}

template <typename T>
void store_from(void* dst, DType to, int64_t i, T v) {
  switch (to) {
    case DType::kFloat32: static_cast<float*>(dst)[i] = static_cast<float>(v); break;
    case DType::kFloat64: static_cast<double*>(dst)[i] = static_cast<double>(v); break;
    case DType::kFloat16: static_cast<uint16_t*>(dst)[i] = float_to_half(static_cast<float>(v)); break;
    case DType::kBFloat16: static_cast<uint16_t*>(dst)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::kInt64: static_cast<int64_t*>(dst)[i] = static_cast<int64_t>(v); break;
    case DType::kInt32: static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(v); break;
    case DType::kInt8: static_cast<int8_t*>(dst)[i] = static_cast<int8_t>(v); break;
    case DType::kUInt8: static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(v); break;
    case DType::kUInt16:
      static_cast<uint16_t*>(dst)[i] = static_cast<uint16_t>(v);
      break;
    case DType::kBool: static_cast<uint8_t*>(dst)[i] = v != T(0) ? 1 : 0; break;
    default: break;
  }
}

}  // namespace

float bf16_to_float(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  uint32_t rounding = 0x7fff + ((x >> 16) & 1);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

void convert_elements(const void* src, DType from, void* dst, DType to, int64_t n) {
  if (n <= 0) return;
  if (from == to) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(from));
    return;
  }
  bool from_int = dtype_is_integer(from) || from == DType::kBool;
  bool to_float = dtype_is_float(to);
  for (int64_t i = 0; i < n; ++i) {
    if (from_int && !to_float) {
      store_from<int64_t>(dst, to, i, load_as_i64(src, from, i));
    } else if (!from_int && !to_float && to != DType::kBool) {
      // float -> int: truncate toward zero like a C cast; NaN becomes 0.
      // Saturate before converting: a float outside int64's range is undefined behaviour in a plain cast.
      double d = load_as_double(src, from, i);
      int64_t v = std::isnan(d) ? 0 : d >= 9.2233720368547758e18 ? INT64_MAX : d <= -9.2233720368547758e18 ? INT64_MIN
                                                                                                         : static_cast<int64_t>(d);
      store_from<int64_t>(dst, to, i, v);
    } else {
      store_from<double>(dst, to, i, load_as_double(src, from, i));
    }
  }
}

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  buf_ = alloc_aligned(nbytes(), true);
}

Tensor Tensor::uninitialized(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.buf_ = alloc_aligned(t.nbytes(), false);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = uninitialized(dtype_, shape_);
  if (nbytes()) std::memcpy(t.data(), data(), nbytes());
  return t;
}

Tensor Tensor::reshaped(Shape shape) const {
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

double Tensor::scalar_f64(int64_t i) const { return load_as_double(data(), dtype_, i); }
int64_t Tensor::scalar_i64(int64_t i) const { return load_as_i64(data(), dtype_, i); }

std::vector<int64_t> Tensor::to_i64_vector() const {
  std::vector<int64_t> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) v[i] = scalar_i64(i);
  return v;
}

Tensor Tensor::cast(DType to) const {
  Tensor t(to, shape_);
  convert_elements(data(), dtype_, t.data(), to, numel());
  return t;
}

Tensor Tensor::from_i64(const std::vector<int64_t>& v, Shape shape) {
  Tensor t(DType::kInt64, std::move(shape));
  const size_t n = std::min<size_t>(v.size(), static_cast<size_t>(t.numel()));
  if (n) std::memcpy(t.data(), v.data(), n * 8);
  return t;
}

Tensor Tensor::from_f32(const std::vector<float>& v, Shape shape) {
  Tensor t(DType::kFloat32, std::move(shape));
  const size_t n = std::min<size_t>(v.size(), static_cast<size_t>(t.numel()));
  if (n) std::memcpy(t.data(), v.data(), n * 4);
  return t;
}

Tensor Tensor::scalar(DType dtype, double value) {
  Tensor t(dtype, {});
  store_from<double>(t.data(), dtype, 0, value);
  return t;
}

}  // namespace gv

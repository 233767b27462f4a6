// Broadcasting binary ops, comparisons, Where, strided copies, unary ops, activation gradients and casts.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gelu_math.cuh"

namespace gv::cuda {
namespace {

using detail::bc_offset;
using detail::grid_for;
using detail::kThreads;
using detail::launched;

template <typename T>
__device__ __forceinline__ T apply_binary(Binary op, T a, T b) {
  switch (op) {
    case Binary::kAdd: return a + b;
    case Binary::kSub: return a - b;
    case Binary::kMul: return a * b;
    case Binary::kDiv:
      if constexpr (std::is_integral_v<T>) return b == 0 ? T(0) : a / b;
      else return a / b;
    case Binary::kPow:
      if constexpr (std::is_integral_v<T>) {
        T r = 1;
        if (b < 0) return a == 1 ? T(1) : (a == -1 ? ((b & 1) ? T(-1) : T(1)) : T(0));
        for (T e = b, x = a; e > 0; e >>= 1, x *= x)
          if (e & 1) r *= x;
        return r;
      } else {
        if (b == T(1)) return a;
        if (b == T(2)) return a * a;
        if (b == T(3)) return a * a * a;
        return pow(a, b);
      }
    case Binary::kMax:
      if constexpr (!std::is_integral_v<T>) {
        if (a != a || b != b) return a + b;
      }
      return a > b ? a : b;
    case Binary::kMin:
      if constexpr (!std::is_integral_v<T>) {
        if (a != a || b != b) return a + b;
      }
      return a < b ? a : b;
  }
  return T(0);
}

// ---- broadcast indexing ----
// Every broadcasting kernel calls f(i, off) for each output element i (row-major) with the element offsets off[k]
// of its K strided operands. Three index paths, chosen on the host (no 64-bit division on the common ones):
//  - rank <= 2 after collapsing, rows of 128 or more (same shapes, a trailing vector such as a bias, a leading scalar, the causal mask
//    over [batch*heads, T*T]): a 2-D grid over (rows, columns), no division at all;
//  - fewer than 2^31 elements: 32-bit indices, one multiply-high division per dimension (FastDiv), the offsets of
//    all K operands from one decomposition;
//  - otherwise 64-bit division per dimension (bc_offset).

template <int K>
struct Rank2 {
  int64_t rows, cols;
  int64_t s[K][2];
};

template <int K>
struct Fast32 {
  int rank;
  uint32_t numel;
  uint32_t dims[kMaxDims];
  detail::FastDiv div[kMaxDims];
  int64_t s[K][kMaxDims];
};

template <int K, class F>
__global__ void each_rank2(Rank2<K> ix, F f) {
  for (int64_t r = blockIdx.y; r < ix.rows; r += gridDim.y) {
    int64_t base[K];
#pragma unroll
    for (int k = 0; k < K; ++k) base[k] = r * ix.s[k][0];
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < ix.cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      int64_t off[K];
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] = base[k] + c * ix.s[k][1];
      f(r * ix.cols + c, off);
    }
  }
}

template <int K, class F>
__global__ void each_fast32(Fast32<K> ix, F f) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < ix.numel; i += gridDim.x * blockDim.x) {
    int64_t off[K];
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = 0;
    uint32_t rest = i;
    for (int d = ix.rank - 1; d > 0; --d) {
      const uint32_t q = ix.div[d].div(rest);
      const uint32_t rem = rest - q * ix.dims[d];
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] += static_cast<int64_t>(rem) * ix.s[k][d];
      rest = q;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += static_cast<int64_t>(rest) * ix.s[k][0];
    f(static_cast<int64_t>(i), off);
  }
}

template <int K, class F>
__global__ void each_wide(Broadcast bc, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < bc.numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t off[K];
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = bc_offset(bc, k, i);
    f(i, off);
  }
}

// Launches f over bc's output elements (operands 0..K-1 of bc.strides).
template <int K, class F>
bool for_each_bc(const Broadcast& bc, F f) {
  if (bc.numel == 0) return true;
  if (bc.rank == 1 || (bc.rank == 2 && bc.dims[1] >= 128)) {  // short rows would idle most of a block
    Rank2<K> ix{};
    ix.rows = bc.rank == 2 ? bc.dims[0] : 1;
    ix.cols = bc.dims[bc.rank - 1];
    for (int k = 0; k < K; ++k) {
      ix.s[k][0] = bc.rank == 2 ? bc.strides[k][0] : 0;
      ix.s[k][1] = bc.strides[k][bc.rank - 1];
    }
    const unsigned by = static_cast<unsigned>(ix.rows < 65535 ? ix.rows : 65535);
    int64_t bx = (ix.cols + kThreads - 1) / kThreads;
    const int64_t cap = (int64_t{1} << 21) / by;  // about 2M blocks in all; the loops stride over the rest
    if (bx > cap) bx = cap;
    if (bx < 1) bx = 1;
    each_rank2<K, F><<<dim3(static_cast<unsigned>(bx), by), kThreads, 0, launch_stream()>>>(ix, f);
  } else if (bc.numel < (int64_t{1} << 31)) {
    Fast32<K> ix{};
    ix.rank = bc.rank;
    ix.numel = static_cast<uint32_t>(bc.numel);
    for (int d = 0; d < bc.rank; ++d) {
      ix.dims[d] = static_cast<uint32_t>(bc.dims[d]);
      ix.div[d].init(ix.dims[d]);
      for (int k = 0; k < K; ++k) ix.s[k][d] = bc.strides[k][d];
    }
    each_fast32<K, F><<<grid_for(bc.numel), kThreads, 0, launch_stream()>>>(ix, f);
  } else {
    each_wide<K, F><<<grid_for(bc.numel), kThreads, 0, launch_stream()>>>(bc, f);
  }
  return launched();
}

// Rank 2 with 16-byte groups: every operand's columns contiguous (column stride 1; a bias row's row stride 0), row
// strides, columns and base pointers multiples of 4 elements / 16 bytes. f.quad4(off) handles the 4 elements at
// off[k] (element offsets) of each operand. The path of bias adds ([rows, n] + [n]) and of Concat / Split box copies
// along the last axis, which the scalar rank-2 path ran at 1.2-1.8 TB/s.
template <int K>
bool rank2_vec4_ok(const Broadcast& bc, const void* const (&ptrs)[K]) {
  if (bc.rank != 2 || bc.dims[1] % 4 != 0 || bc.dims[1] < 128) return false;
  for (int k = 0; k < K; ++k) {
    if (bc.strides[k][1] != 1 || bc.strides[k][0] % 4 != 0 || !detail::aligned16(ptrs[k])) return false;
  }
  return true;
}

template <int K, class F>
__global__ void each_rank2_vec4(Rank2<K> ix, F f) {
  const int64_t groups = ix.cols / 4;
  for (int64_t r = blockIdx.y; r < ix.rows; r += gridDim.y) {
    for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
         g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      int64_t off[K];
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] = r * ix.s[k][0] + g * 4;
      f.quad4(off);
    }
  }
}

template <int K, class F>
bool for_each_rank2_vec4(const Broadcast& bc, F f) {
  Rank2<K> ix{};
  ix.rows = bc.dims[0];
  ix.cols = bc.dims[1];
  for (int k = 0; k < K; ++k) ix.s[k][0] = bc.strides[k][0], ix.s[k][1] = 1;
  const unsigned by = static_cast<unsigned>(ix.rows < 65535 ? ix.rows : 65535);
  int64_t bx = (ix.cols / 4 + kThreads - 1) / kThreads;
  const int64_t cap = (int64_t{1} << 21) / by;
  if (bx > cap) bx = cap;
  if (bx < 1) bx = 1;
  each_rank2_vec4<K, F><<<dim3(static_cast<unsigned>(bx), by), kThreads, 0, launch_stream()>>>(ix, f);
  return launched();
}

// Same-shape operands (or a scalar one): no index arithmetic.
template <typename T>
__global__ void binary_flat(Binary op, const T* a, const T* b, T* out, int64_t n, int sa, int sb) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = apply_binary(op, a[sa ? i : 0], b[sb ? i : 0]);
  }
}

// The float32 flat path with 16-byte accesses (detail::launch_flat); the op is a template argument.
template <Binary OP>
struct BinaryFlatF32 {
  const float *a, *b;
  float* out;
  bool sa, sb;  // operand is an array (else a single element)
  template <class I>
  __device__ __forceinline__ void one(I i) const {
    out[i] = apply_binary(OP, a[sa ? i : 0], b[sb ? i : 0]);
  }
  template <class I>
  __device__ __forceinline__ void quad(I q) const {
    const float4 x = sa ? detail::load4(a, q) : make_float4(a[0], a[0], a[0], a[0]);
    const float4 y = sb ? detail::load4(b, q) : make_float4(b[0], b[0], b[0], b[0]);
    float4 r;
    r.x = apply_binary(OP, x.x, y.x);
    r.y = apply_binary(OP, x.y, y.y);
    r.z = apply_binary(OP, x.z, y.z);
    r.w = apply_binary(OP, x.w, y.w);
    detail::store4(out, q, r);
  }
};

template <Binary OP>
bool binary_flat_f32(const float* a, const float* b, float* out, int64_t n, bool sa, bool sb) {
  const bool vec = detail::aligned16(out) && (!sa || detail::aligned16(a)) && (!sb || detail::aligned16(b));
  return detail::launch_flat(BinaryFlatF32<OP>{a, b, out, sa, sb}, n, vec);
}

bool binary_flat_f32(Binary op, const float* a, const float* b, float* out, int64_t n, bool sa, bool sb) {
  switch (op) {
    case Binary::kAdd: return binary_flat_f32<Binary::kAdd>(a, b, out, n, sa, sb);
    case Binary::kSub: return binary_flat_f32<Binary::kSub>(a, b, out, n, sa, sb);
    case Binary::kMul: return binary_flat_f32<Binary::kMul>(a, b, out, n, sa, sb);
    case Binary::kDiv: return binary_flat_f32<Binary::kDiv>(a, b, out, n, sa, sb);
    case Binary::kPow: return binary_flat_f32<Binary::kPow>(a, b, out, n, sa, sb);
    case Binary::kMax: return binary_flat_f32<Binary::kMax>(a, b, out, n, sa, sb);
    case Binary::kMin: return binary_flat_f32<Binary::kMin>(a, b, out, n, sa, sb);
  }
  return false;
}

template <typename T>
struct BinaryF {
  Binary op;
  const T *a, *b;
  T* out;
  __device__ __forceinline__ void operator()(int64_t i, const int64_t* off) const {
    out[i] = apply_binary(op, a[off[0]], b[off[1]]);
  }
};

// float32 binary ops on the 16-byte rank-2 path; operands 0, 1 are a, b and operand 2 the output.
template <Binary OP>
struct BinaryRowsF32 {
  const float *a, *b;
  float* out;
  __device__ __forceinline__ void quad4(const int64_t* off) const {
    const float4 x = *reinterpret_cast<const float4*>(a + off[0]);
    const float4 y = *reinterpret_cast<const float4*>(b + off[1]);
    *reinterpret_cast<float4*>(out + off[2]) = make_float4(apply_binary(OP, x.x, y.x), apply_binary(OP, x.y, y.y),
                                                           apply_binary(OP, x.z, y.z), apply_binary(OP, x.w, y.w));
  }
};

// The 16-byte rank-2 path for float32 (false: not taken).
bool try_binary_rows_f32(Binary op, const float* a, const float* b, float* out, const Broadcast& bc, bool* ok) {
  const void* const ptrs[3] = {a, b, out};
  Broadcast b3 = bc;  // the output as a third operand, contiguous
  b3.strides[2][0] = bc.dims[1];
  b3.strides[2][1] = 1;
  if (!rank2_vec4_ok<3>(b3, ptrs)) return false;
  switch (op) {
    case Binary::kAdd: *ok = for_each_rank2_vec4<3>(b3, BinaryRowsF32<Binary::kAdd>{a, b, out}); return true;
    case Binary::kSub: *ok = for_each_rank2_vec4<3>(b3, BinaryRowsF32<Binary::kSub>{a, b, out}); return true;
    case Binary::kMul: *ok = for_each_rank2_vec4<3>(b3, BinaryRowsF32<Binary::kMul>{a, b, out}); return true;
    case Binary::kDiv: *ok = for_each_rank2_vec4<3>(b3, BinaryRowsF32<Binary::kDiv>{a, b, out}); return true;
    default: return false;
  }
}

// 0: same layout as the output, 1: a single element, -1: anything else.
int flat_kind(const Broadcast& bc, int k) {
  bool contiguous = true, scalar = true;
  int64_t expect = 1;
  for (int d = bc.rank - 1; d >= 0; --d) {
    if (bc.dims[d] == 1) continue;
    if (bc.strides[k][d] != expect) contiguous = false;
    if (bc.strides[k][d] != 0) scalar = false;
    expect *= bc.dims[d];
  }
  if (contiguous) return 0;
  return scalar ? 1 : -1;
}

template <typename T>
bool run_binary(Binary op, const T* a, const T* b, T* out, const Broadcast& bc) {
  if (bc.numel == 0) return true;
  const int ka = flat_kind(bc, 0), kb = flat_kind(bc, 1);
  if (ka >= 0 && kb >= 0) {
    if constexpr (std::is_same_v<T, float>) {
      return binary_flat_f32(op, a, b, out, bc.numel, ka == 0, kb == 0);
    } else {
      binary_flat<T><<<grid_for(bc.numel), kThreads, 0, launch_stream()>>>(op, a, b, out, bc.numel, ka == 0, kb == 0);
      return launched();
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    bool ok = false;
    if (try_binary_rows_f32(op, a, b, out, bc, &ok)) return ok;
  }
  return for_each_bc<2>(bc, BinaryF<T>{op, a, b, out});
}

template <typename T>
__device__ __forceinline__ uint8_t apply_compare(Compare op, T a, T b) {
  switch (op) {
    case Compare::kEqual: return a == b;
    case Compare::kLess: return a < b;
    case Compare::kLessOrEqual: return a <= b;
    case Compare::kGreater: return a > b;
    case Compare::kGreaterOrEqual: return a >= b;
    case Compare::kAnd: return (a != T(0)) && (b != T(0));
    case Compare::kOr: return (a != T(0)) || (b != T(0));
    case Compare::kXor: return (a != T(0)) != (b != T(0));
  }
  return 0;
}

template <typename T>
struct CompareF {
  Compare op;
  const T *a, *b;
  uint8_t* out;
  __device__ __forceinline__ void operator()(int64_t i, const int64_t* off) const {
    out[i] = apply_compare(op, a[off[0]], b[off[1]]);
  }
};

template <typename T>
bool run_compare(Compare op, const T* a, const T* b, uint8_t* out, const Broadcast& bc) {
  return for_each_bc<2>(bc, CompareF<T>{op, a, b, out});
}

template <typename T>
struct WhereF {
  const uint8_t* c;
  const T *x, *y;
  T* out;
  __device__ __forceinline__ void operator()(int64_t i, const int64_t* off) const {
    out[i] = c[off[0]] ? x[off[1]] : y[off[2]];
  }
};

template <typename T>
struct CopyF {
  const T* x;
  T* out;
  __device__ __forceinline__ void operator()(int64_t i, const int64_t* off) const { out[i] = x[off[0]]; }
};

template <typename T>
struct BoxF {
  const T* x;
  T* out;
  __device__ __forceinline__ void operator()(int64_t, const int64_t* off) const { out[off[1]] = x[off[0]]; }
};

// 4-byte elements on the 16-byte rank-2 path.
struct BoxRows4 {
  const uint32_t* x;
  uint32_t* out;
  __device__ __forceinline__ void quad4(const int64_t* off) const {
    *reinterpret_cast<uint4*>(out + off[1]) = *reinterpret_cast<const uint4*>(x + off[0]);
  }
};

template <typename T>
bool run_box(const void* x, void* out, const Broadcast& bc) {
  if constexpr (sizeof(T) == 4) {
    const void* const ptrs[2] = {x, out};
    if (rank2_vec4_ok<2>(bc, ptrs)) {
      return for_each_rank2_vec4<2>(bc, BoxRows4{static_cast<const uint32_t*>(x), static_cast<uint32_t*>(out)});
    }
  }
  return for_each_bc<2>(bc, BoxF<T>{static_cast<const T*>(x), static_cast<T*>(out)});
}

struct ScaleF {
  float* x;
  float s;
  template <class I>
  __device__ __forceinline__ void one(I i) const {
    x[i] *= s;
  }
  template <class I>
  __device__ __forceinline__ void quad(I q) const {
    float4 v = detail::load4(x, q);
    v.x *= s;
    v.y *= s;
    v.z *= s;
    v.w *= s;
    detail::store4(x, q, v);
  }
};

__device__ __forceinline__ float sigmoidf_(float v) { return detail::stable_sigmoid(v); }

constexpr float kSqrt2 = 1.4142135623730950488f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kTwoOverSqrtPi = 1.1283791670955125739f;
using detail::kGeluTanhC;
using detail::kGeluTanhK;

__device__ __forceinline__ float unary_apply(Unary op, float v) {
  float r;
  switch (op) {
    case Unary::kNeg: r = -v; break;
    case Unary::kAbs: r = fabsf(v); break;
    case Unary::kRelu: r = v > 0.0f ? v : (v == v ? 0.0f : v); break;
    case Unary::kSqrt: r = sqrtf(v); break;
    case Unary::kReciprocal: r = 1.0f / v; break;
    case Unary::kExp: r = expf(v); break;
    case Unary::kLog: r = logf(v); break;
    case Unary::kTanh: r = tanhf(v); break;
    case Unary::kErf: r = erff(v); break;
    case Unary::kSigmoid: r = sigmoidf_(v); break;
    case Unary::kGelu: r = 0.5f * v * (1.0f + erff(v / kSqrt2)); break;
    case Unary::kGeluTanh: r = v * sigmoidf_(2.0f * kGeluTanhK * (v + kGeluTanhC * v * v * v)); break;
    default: r = v; break;
  }
  return r;
}

struct UnaryF {
  Unary op;
  const float* x;
  float* y;
  template <class I>
  __device__ __forceinline__ void one(I i) const {
    y[i] = unary_apply(op, x[i]);
  }
  template <class I>
  __device__ __forceinline__ void quad(I q) const {
    const float4 v = detail::load4(x, q);
    detail::store4(y, q, make_float4(unary_apply(op, v.x), unary_apply(op, v.y), unary_apply(op, v.z),
                                     unary_apply(op, v.w)));
  }
};

__global__ void not_kernel(const uint8_t* x, uint8_t* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = x[i] == 0;
  }
}

__device__ __forceinline__ float act_grad_apply(ActGrad op, float g, float x) {
  float r;
  switch (op) {
    case ActGrad::kSigmoid: r = g * x * (1.0f - x); break;
    case ActGrad::kTanh: r = g * (1.0f - x * x); break;
    case ActGrad::kErf: r = g * kTwoOverSqrtPi * expf(-x * x); break;
    case ActGrad::kGelu: {
      const float cdf = 0.5f * (1.0f + erff(x / kSqrt2));
      const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
      r = g * (cdf + x * pdf);
      break;
    }
    default:
      r = detail::gelu_tanh_grad(g, x);
      break;
  }
  return r;
}

struct ActGradF {
  ActGrad op;
  const float *dy, *v;
  float* dx;
  template <class I>
  __device__ __forceinline__ void one(I i) const {
    dx[i] = act_grad_apply(op, dy[i], v[i]);
  }
  template <class I>
  __device__ __forceinline__ void quad(I q) const {
    const float4 g = detail::load4(dy, q), x = detail::load4(v, q);
    detail::store4(dx, q, make_float4(act_grad_apply(op, g.x, x.x), act_grad_apply(op, g.y, x.y),
                                      act_grad_apply(op, g.z, x.z), act_grad_apply(op, g.w, x.w)));
  }
};

struct ActGradBf16F {
  ActGrad op;
  const float* dy;
  const uint16_t* v;
  float* dx;
  template <class I>
  __device__ __forceinline__ void one(I i) const {
    dx[i] = act_grad_apply(op, dy[i], detail::bf16_float(v[i]));
  }
  template <class I>
  __device__ __forceinline__ void quad(I q) const {
    const float4 g = detail::load4(dy, q);
    const uint2 b = reinterpret_cast<const uint2*>(v)[q];
    const float x0 = detail::bf16_float(b.x & 0xffffu), x1 = detail::bf16_float(b.x >> 16);
    const float x2 = detail::bf16_float(b.y & 0xffffu), x3 = detail::bf16_float(b.y >> 16);
    detail::store4(dx, q, make_float4(act_grad_apply(op, g.x, x0), act_grad_apply(op, g.y, x1),
                                      act_grad_apply(op, g.z, x2), act_grad_apply(op, g.w, x3)));
  }
};

template <typename To, typename From>
__device__ __forceinline__ To convert(From v) {
  if constexpr (std::is_same_v<To, uint8_t>) {
    return v != From(0) ? 1 : 0;
  } else if constexpr (std::is_integral_v<To> && std::is_floating_point_v<From>) {
    if (v != v) return To(0);
    const double d = static_cast<double>(v);
    if (d <= static_cast<double>(std::numeric_limits<To>::lowest())) return std::numeric_limits<To>::lowest();
    if (d >= static_cast<double>(std::numeric_limits<To>::max())) return std::numeric_limits<To>::max();
    return static_cast<To>(v);
  } else {
    return static_cast<To>(v);
  }
}

template <typename From, typename To>
__global__ void cast_kernel(const From* x, To* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = convert<To, From>(x[i]);
  }
}

template <typename From>
bool cast_from(char to, const From* x, void* y, int64_t n) {
  const unsigned g = grid_for(n);
  switch (to) {
    case 'f':
      cast_kernel<From, float><<<g, kThreads, 0, launch_stream()>>>(x, static_cast<float*>(y), n);
      break;
    case 'd':
      cast_kernel<From, double><<<g, kThreads, 0, launch_stream()>>>(x, static_cast<double*>(y), n);
      break;
    case 'l':
      cast_kernel<From, int64_t><<<g, kThreads, 0, launch_stream()>>>(x, static_cast<int64_t*>(y), n);
      break;
    case 'i':
      cast_kernel<From, int32_t><<<g, kThreads, 0, launch_stream()>>>(x, static_cast<int32_t*>(y), n);
      break;
    case 'b':
      cast_kernel<From, uint8_t><<<g, kThreads, 0, launch_stream()>>>(x, static_cast<uint8_t*>(y), n);
      break;
    default: return false;
  }
  return launched();
}

template <typename T>
bool run_where(const uint8_t* c, const void* x, const void* y, void* out, const Broadcast& bc) {
  return for_each_bc<3>(bc, WhereF<T>{c, static_cast<const T*>(x), static_cast<const T*>(y), static_cast<T*>(out)});
}

template <typename T>
bool run_copy(const void* x, void* out, const Broadcast& bc) {
  return for_each_bc<1>(bc, CopyF<T>{static_cast<const T*>(x), static_cast<T*>(out)});
}

}  // namespace

bool binary_f32(Binary op, const float* a, const float* b, float* out, const Broadcast& bc) {
  return run_binary(op, a, b, out, bc);
}
bool binary_i64(Binary op, const int64_t* a, const int64_t* b, int64_t* out, const Broadcast& bc) {
  return run_binary(op, a, b, out, bc);
}
bool compare_f32(Compare op, const float* a, const float* b, uint8_t* out, const Broadcast& bc) {
  return run_compare(op, a, b, out, bc);
}
bool compare_i64(Compare op, const int64_t* a, const int64_t* b, uint8_t* out, const Broadcast& bc) {
  return run_compare(op, a, b, out, bc);
}
bool compare_u8(Compare op, const uint8_t* a, const uint8_t* b, uint8_t* out, const Broadcast& bc) {
  return run_compare(op, a, b, out, bc);
}

bool where(int elem_size, const uint8_t* cond, const void* x, const void* y, void* out, const Broadcast& bc) {
  if (bc.numel == 0) return true;
  switch (elem_size) {
    case 1: return run_where<uint8_t>(cond, x, y, out, bc);
    case 2: return run_where<uint16_t>(cond, x, y, out, bc);
    case 4: return run_where<uint32_t>(cond, x, y, out, bc);
    case 8: return run_where<uint64_t>(cond, x, y, out, bc);
    default: return false;
  }
}

bool strided_copy(int elem_size, const void* x, void* out, const Broadcast& bc) {
  if (bc.numel == 0) return true;
  switch (elem_size) {
    case 1: return run_copy<uint8_t>(x, out, bc);
    case 2: return run_copy<uint16_t>(x, out, bc);
    case 4: return run_copy<uint32_t>(x, out, bc);
    case 8: return run_copy<uint64_t>(x, out, bc);
    default: return false;
  }
}

bool box_copy(int elem_size, const void* x, void* out, const Broadcast& bc) {
  if (bc.numel == 0) return true;
  switch (elem_size) {
    case 1: return run_box<uint8_t>(x, out, bc);
    case 2: return run_box<uint16_t>(x, out, bc);
    case 4: return run_box<uint32_t>(x, out, bc);
    case 8: return run_box<uint64_t>(x, out, bc);
    default: return false;
  }
}

bool scale_f32(float* x, int64_t n, float s) {
  return detail::launch_flat(ScaleF{x, s}, n, detail::aligned16(x));
}

bool unary_f32(Unary op, const float* x, float* y, int64_t n) {
  return detail::launch_flat(UnaryF{op, x, y}, n, detail::aligned16(x) && detail::aligned16(y));
}

__global__ void nan_inf_kernel(const float* x, uint8_t* y, int64_t n, bool nan, bool neg_inf, bool pos_inf) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    y[i] = nan ? isnan(v) : isinf(v) && (v < 0.0f ? neg_inf : pos_inf);
  }
}

bool is_nan_or_inf_f32(const float* x, uint8_t* y, int64_t n, bool nan, bool neg_inf, bool pos_inf) {
  if (n == 0) return true;
  nan_inf_kernel<<<grid_for(n), kThreads, 0, launch_stream()>>>(x, y, n, nan, neg_inf, pos_inf);
  return launched();
}

bool not_u8(const uint8_t* x, uint8_t* y, int64_t n) {
  if (n == 0) return true;
  not_kernel<<<grid_for(n), kThreads, 0, launch_stream()>>>(x, y, n);
  return launched();
}

bool activation_grad_f32(ActGrad op, const float* dy, const float* v, float* dx, int64_t n) {
  const bool vec = detail::aligned16(dy) && detail::aligned16(v) && detail::aligned16(dx);
  return detail::launch_flat(ActGradF{op, dy, v, dx}, n, vec);
}

bool activation_grad_bf16_saved(ActGrad op, const float* dy, const uint16_t* v, float* dx, int64_t n) {
  const bool vec = detail::aligned16(dy) && reinterpret_cast<uintptr_t>(v) % 8 == 0 && detail::aligned16(dx);
  return detail::launch_flat(ActGradBf16F{op, dy, v, dx}, n, vec);
}

bool cast(char from, char to, const void* x, void* y, int64_t n) {
  if (n == 0) return true;
  switch (from) {
    case 'f': return cast_from(to, static_cast<const float*>(x), y, n);
    case 'd': return cast_from(to, static_cast<const double*>(x), y, n);
    case 'l': return cast_from(to, static_cast<const int64_t*>(x), y, n);
    case 'i': return cast_from(to, static_cast<const int32_t*>(x), y, n);
    case 'b': return cast_from(to, static_cast<const uint8_t*>(x), y, n);
    default: return false;
  }
}

}  // namespace gv::cuda

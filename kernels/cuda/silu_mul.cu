// SwiGLU's gated activation on the GPU (kernels/cuda/silu_mul.h): flat launches, four elements per thread through
// 16-byte (float32) or 8-byte (bfloat16) accesses when aligned.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/silu_mul.h"

namespace gv::cuda {
namespace {

__device__ __forceinline__ float sigmoid(float v) {
  if (v >= 0.0f) return 1.0f / (1.0f + expf(-v));
  const float e = expf(v);
  return e / (1.0f + e);
}

// Element and four-element access to float32 or bfloat16 (uint16_t bits) buffers, as float.
__device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const uint16_t* p, size_t i) { return detail::bf16_float(p[i]); }
__device__ __forceinline__ void st(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(uint16_t* p, size_t i, float v) { p[i] = detail::bf16_bits(v); }
__device__ __forceinline__ float4 ld4(const float* p, size_t q) { return detail::load4(p, q); }
__device__ __forceinline__ float4 ld4(const uint16_t* p, size_t q) {
  const uint2 b = reinterpret_cast<const uint2*>(p)[q];
  return make_float4(detail::bf16_float(b.x & 0xffffu), detail::bf16_float(b.x >> 16),
                     detail::bf16_float(b.y & 0xffffu), detail::bf16_float(b.y >> 16));
}
__device__ __forceinline__ void st4(float* p, size_t q, float4 v) { detail::store4(p, q, v); }
__device__ __forceinline__ void st4(uint16_t* p, size_t q, float4 v) {
  uint2 b;
  b.x = detail::bf16_bits(v.x) | (static_cast<uint32_t>(detail::bf16_bits(v.y)) << 16);
  b.y = detail::bf16_bits(v.z) | (static_cast<uint32_t>(detail::bf16_bits(v.w)) << 16);
  reinterpret_cast<uint2*>(p)[q] = b;
}

__device__ __forceinline__ float silu_mul_one(float a, float b) { return a * sigmoid(a) * b; }

template <typename TIn, typename TOut>
struct SiluMulF {
  const TIn *a, *b;
  TOut* y;
  template <class I>
  __device__ __forceinline__ void one(I i) const {
    st(y, i, silu_mul_one(ld(a, i), ld(b, i)));
  }
  template <class I>
  __device__ __forceinline__ void quad(I q) const {
    const float4 x = ld4(a, q), u = ld4(b, q);
    st4(y, q,
        make_float4(silu_mul_one(x.x, u.x), silu_mul_one(x.y, u.y), silu_mul_one(x.z, u.z), silu_mul_one(x.w, u.w)));
  }
};

__device__ __forceinline__ void silu_mul_grad_one(float g, float a, float b, float& da, float& db) {
  const float s = sigmoid(a);
  da = g * b * s * (1.0f + a * (1.0f - s));
  db = g * a * s;
}

template <typename TDy, typename TIn, typename TOut>
struct SiluMulGradF {
  const TDy* dy;
  const TIn *a, *b;
  TOut *da, *db;
  template <class I>
  __device__ __forceinline__ void one(I i) const {
    float ra, rb;
    silu_mul_grad_one(ld(dy, i), ld(a, i), ld(b, i), ra, rb);
    st(da, i, ra);
    st(db, i, rb);
  }
  template <class I>
  __device__ __forceinline__ void quad(I q) const {
    const float4 g = ld4(dy, q), x = ld4(a, q), u = ld4(b, q);
    float4 ra, rb;
    silu_mul_grad_one(g.x, x.x, u.x, ra.x, rb.x);
    silu_mul_grad_one(g.y, x.y, u.y, ra.y, rb.y);
    silu_mul_grad_one(g.z, x.z, u.z, ra.z, rb.z);
    silu_mul_grad_one(g.w, x.w, u.w, ra.w, rb.w);
    st4(da, q, ra);
    st4(db, q, rb);
  }
};

template <typename TIn, typename TOut>
bool run_silu_mul(const void* a, const void* b, void* y, int64_t n) {
  const SiluMulF<TIn, TOut> f{static_cast<const TIn*>(a), static_cast<const TIn*>(b), static_cast<TOut*>(y)};
  const bool vec = detail::aligned16(a) && detail::aligned16(b) && detail::aligned16(y);
  return detail::launch_flat(f, n, vec);
}

template <typename TDy, typename TIn, typename TOut>
bool run_silu_mul_grad(const void* dy, const void* a, const void* b, void* da, void* db, int64_t n) {
  const SiluMulGradF<TDy, TIn, TOut> f{static_cast<const TDy*>(dy), static_cast<const TIn*>(a),
                                       static_cast<const TIn*>(b), static_cast<TOut*>(da), static_cast<TOut*>(db)};
  const bool vec = detail::aligned16(dy) && detail::aligned16(a) && detail::aligned16(b) && detail::aligned16(da) &&
                   detail::aligned16(db);
  return detail::launch_flat(f, n, vec);
}

}  // namespace

bool silu_mul(const void* a, const void* b, bool in_bf16, void* y, bool out_bf16, int64_t n) {
  if (in_bf16) {
    return out_bf16 ? run_silu_mul<uint16_t, uint16_t>(a, b, y, n) : run_silu_mul<uint16_t, float>(a, b, y, n);
  }
  return out_bf16 ? run_silu_mul<float, uint16_t>(a, b, y, n) : run_silu_mul<float, float>(a, b, y, n);
}

bool silu_mul_grad(const void* dy, bool dy_bf16, const void* a, const void* b, bool in_bf16, void* da, void* db,
                   bool out_bf16, int64_t n) {
  if (dy_bf16) {
    if (!in_bf16) return false;
    return out_bf16 ? run_silu_mul_grad<uint16_t, uint16_t, uint16_t>(dy, a, b, da, db, n)
                    : run_silu_mul_grad<uint16_t, uint16_t, float>(dy, a, b, da, db, n);
  }
  if (in_bf16) {
    return out_bf16 ? run_silu_mul_grad<float, uint16_t, uint16_t>(dy, a, b, da, db, n)
                    : run_silu_mul_grad<float, uint16_t, float>(dy, a, b, da, db, n);
  }
  return out_bf16 ? run_silu_mul_grad<float, float, uint16_t>(dy, a, b, da, db, n)
                  : run_silu_mul_grad<float, float, float>(dy, a, b, da, db, n);
}

}  // namespace gv::cuda

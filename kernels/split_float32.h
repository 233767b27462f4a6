// A float32 held as two 16-bit halves (runtime/split_masters.h): `hi`, its bfloat16 rounding to nearest even, which
// the products read as their operand, and `lo`, the low 16 bits of the float32's own bit pattern. With both kept, a
// weight's float32 master costs no bytes beside its bf16 copy: AdamW reads and writes 2 + 2 bytes instead of 4 + 2.
//
// From hi and lo the float32 comes back exactly, because the rounding is decided by lo alone: hi is the truncated high
// half plus one when lo > 0x8000, the truncated half when lo < 0x8000. The one value of lo that rounding to nearest
// even decides by hi's parity, 0x8000 (exactly halfway between two bfloat16), is first moved one unit of the last
// place toward zero (lo 0x7fff): split_float32 changes such a value by 2^-24 of its magnitude, about one value in
// 65,536. Everything else, infinities included, is kept bit for bit; a NaN stays a NaN.
//
// Plain functions on bit patterns, for the CPU and (compiled by nvcc) the GPU kernels alike.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GV_SPLIT_FN __host__ __device__ __forceinline__
#else
#define GV_SPLIT_FN inline
#endif

namespace gv {

struct SplitFloat32 {
  uint16_t hi;  // bfloat16 bits: the value rounded to nearest even
  uint16_t lo;  // the low 16 bits of the (tie-moved) float32
};

// `bits`: a float32's bit pattern.
GV_SPLIT_FN SplitFloat32 split_float32(uint32_t bits) {
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: a quiet NaN with its sign, as bf16 rounding gives
    return SplitFloat32{static_cast<uint16_t>((bits >> 16) | 0x0040u), static_cast<uint16_t>(bits)};
  }
  if ((bits & 0xffffu) == 0x8000u) bits -= 1;  // halfway: one unit toward zero (the sign is the top bit)
  const uint16_t lo = static_cast<uint16_t>(bits);
  return SplitFloat32{static_cast<uint16_t>((bits >> 16) + (lo > 0x8000u ? 1u : 0u)), lo};
}

// The float32 bit pattern that split_float32 split into (hi, lo).
GV_SPLIT_FN uint32_t join_float32(uint16_t hi, uint16_t lo) {
  return ((static_cast<uint32_t>(hi) - (lo > 0x8000u ? 1u : 0u)) << 16) | lo;
}

}  // namespace gv

#undef GV_SPLIT_FN

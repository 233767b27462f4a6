// LayerNormalization and RMSNormalization with the row held in registers: the fast path of norm_softmax.cu's
// launchers for rows of up to 8192 float32 columns, cols % 4 == 0, 16-byte aligned tensors (GPT-2's 768, gpt-1.5b's
// 1600, Llama's 4096). Same formulas and statistics in double as the one-block-per-row kernels, fewer passes:
//   forward   x read once (the row stays in registers for the moments and the output), y written once; for
//             SkipLayerNormalization the row is x + skip as loaded (x float32 or bf16), stored as the sum too;
//   backward  x and dy read once, dx written once, and the scale/bias gradients accumulated across the rows a block
//             visits: one partial row per block, summed in double by a second kernel in a fixed order
//             (deterministic). The one-block-per-row kernels read x four times, dy twice, then x and dy again for
//             the column sums.
// Latency, not bandwidth, limited the first version (a 256-thread block per row, eight barriers per row, one row
// after another; bench/cuda_notes.md entry 10). Now a row belongs to a group of W warps (W = 1 up to 1024 columns;
// wider rows take 2, 4 or 8 warps: gpt-1.5b's 1600 take 2 in the forward and 4 in the backward, with as many rows
// in flight per SM as the registers allow, which beat one warp per row holding more of it; entry 40), thread t of a
// group owning float4 columns t, t + 32 W, ... (V of them, zeros past the row's end). A 256-thread block holds 8 / W
// groups, each on its own rows, so 8 / W rows per block are in flight and no barrier spans the block per row: the
// sums over a row are warp butterflies, and for W > 1 the warps' totals meet in shared memory behind a named barrier
// of the group's threads.
// A residual stream kept in bf16 (runtime/bf16_residual_stream.cpp): the skip forward reads a bf16 or float32 Skip
// and stores the rounded Sum, normalizing the rounded row; the backward reads X, the addend and dy in bf16 (widened
// as they load; an early addend stays packed in registers until it is added) and may write only dX's bf16 copy.
// The backward keeps each group's scale/bias gradient sums in shared memory (each thread adds into its own columns:
// no barrier; in registers they would double the 8 V registers that x and dy take), adds the groups up once at the
// end, and the partial-row sum spreads over columns and partial rows (64 partial rows at a time per column).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/norm_rows.h"

namespace gv::cuda {
namespace {

using detail::launched;
using detail::warp_sum;

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
constexpr int kMaxCols = 8192;  // 8 warps x 32 lanes x 8 float4 (the backward's widest shape)
constexpr size_t kStaticSmem = 48 * 1024;

__device__ __forceinline__ float4 f4(float a) { return make_float4(a, a, a, a); }

// The W warps that share a row. Each thread gets the same bits from sum(): the butterflies give every lane the same
// value, and the warps' totals are added in warp order by every thread.
template <int W>
struct RowGroup {
  static constexpr int kPerBlock = kWarps / W;
  static constexpr int kThreads = 32 * W;
  int g;       // group within the block
  int t;       // thread within the group
  double* sh;  // W > 1: this group's 4 W doubles, two reductions' worth
  int flip = 0;

  __device__ explicit RowGroup(double* block_sh)
      : g(static_cast<int>(threadIdx.x) / kThreads), t(static_cast<int>(threadIdx.x) % kThreads),
        sh(block_sh + g * 4 * W) {}

  // Consecutive sums use alternate halves of sh: a thread can only write a half again after the barrier of the sum
  // in between, which every thread reaches after reading that half, so one barrier per sum suffices.
  template <int N>
  __device__ __forceinline__ void sum(double (&v)[N]) {
    static_assert(N <= 2, "two values per sum at most");
#pragma unroll
    for (int n = 0; n < N; ++n) v[n] = warp_sum(v[n]);
    if constexpr (W > 1) {
      double* s = sh + flip * 2 * W;
      flip ^= 1;
      if ((t & 31) == 0) {
#pragma unroll
        for (int n = 0; n < N; ++n) s[n * W + (t >> 5)] = v[n];
      }
      asm volatile("bar.sync %0, %1;" ::"r"(1 + g), "r"(kThreads) : "memory");  // 0 is __syncthreads'
#pragma unroll
      for (int n = 0; n < N; ++n) {
        double a = s[n * W];
#pragma unroll
        for (int k = 1; k < W; ++k) a += s[n * W + k];
        v[n] = a;
      }
    }
  }
};

// Four values as loaded: float32, or four bf16 in 8 bytes.
__device__ __forceinline__ float4 widen(float4 v) { return v; }
__device__ __forceinline__ float4 widen(uint2 u) {
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}

// Four consecutive values from element 4 i: float32 (16 bytes), or bf16 (8 bytes) widened.
__device__ __forceinline__ float4 load4(const float* p, int64_t i) { return reinterpret_cast<const float4*>(p)[i]; }
__device__ __forceinline__ float4 load4(const uint16_t* p, int64_t i) {
  return widen(reinterpret_cast<const uint2*>(p)[i]);
}

// Loads row r's float4 columns owned by thread t of a group of W warps (zeros past c4); T float or bf16 (uint16_t).
template <int W, int V, typename T>
__device__ __forceinline__ void load_row(float4 (&v)[V], const T* base, int64_t r, int c4, int t) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int i = t + k * 32 * W;
    v[k] = i < c4 ? load4(base, r * c4 + i) : f4(0.0f);
  }
}

// Mean (0 for RMS) and 1/sqrt(var + eps) (RMS: of mean(x^2) + eps) of a row in registers, in double; every thread
// of the group gets them.
template <int W, int V, bool kCenter>
__device__ __forceinline__ void moments(const float4 (&v)[V], RowGroup<W>& grp, int c4, int cols, float eps,
                                        double& mean, double& inv_std) {
  mean = 0.0;
  if constexpr (kCenter) {
    double s[1] = {0.0};
#pragma unroll
    for (int k = 0; k < V; ++k) s[0] += static_cast<double>(v[k].x) + v[k].y + v[k].z + v[k].w;
    grp.sum(s);
    mean = s[0] / cols;
  }
  double q[1] = {0.0};
#pragma unroll
  for (int k = 0; k < V; ++k) {
    if (grp.t + k * 32 * W >= c4) continue;
    const double a = v[k].x - mean, b = v[k].y - mean, c = v[k].z - mean, d = v[k].w - mean;
    q[0] += a * a + b * b + c * c + d * d;
  }
  grp.sum(q);
  inv_std = 1.0 / sqrt(q[0] / cols + static_cast<double>(eps));
}

// Rows blockIdx.x * G + g, then + gridDim.x * G, ... for group g of the block's G. kMinBlocks blocks per SM (the
// register bound ptxas gets): as many as fit without spills on sm_90 (with_forward_shape / with_backward_shape).
// Four results stored as float4, or as four bf16 (round to nearest even) in 8 bytes.
__device__ __forceinline__ void store4(float* y, int64_t i, float4 v) { reinterpret_cast<float4*>(y)[i] = v; }
__device__ __forceinline__ float round_bf16(float v) { return detail::bf16_float(detail::bf16_bits(v)); }
__device__ __forceinline__ void store4(uint16_t* y, int64_t i, float4 v) {
  const uint32_t lo = detail::bf16_bits(v.x) | (static_cast<uint32_t>(detail::bf16_bits(v.y)) << 16);
  const uint32_t hi = detail::bf16_bits(v.z) | (static_cast<uint32_t>(detail::bf16_bits(v.w)) << 16);
  reinterpret_cast<uint2*>(y)[i] = make_uint2(lo, hi);
}

// The forward's input row: X itself (kSkip 0), or X + Skip with X float32 (1) or bfloat16 (2), also stored to sum
// (SkipLayerNormalization's residual stream). Skip and Sum float32 or bf16 (St, Su); a bf16 Sum is rounded before
// the norm reads it, so that the row normalized is the stream stored.
template <int W, int V, int kSkip, typename St, typename Su>
__device__ __forceinline__ void load_input_row(float4 (&v)[V], const void* x, const St* skip, Su* sum, int64_t r,
                                               int c4, int t) {
  if constexpr (kSkip == 0) {
    load_row<W, V>(v, static_cast<const float*>(x), r, c4, t);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = t + k * 32 * W;
      if (i >= c4) {
        v[k] = f4(0.0f);
        continue;
      }
      const int64_t e = r * c4 + i;
      const float4 a = kSkip == 1 ? load4(static_cast<const float*>(x), e) : load4(static_cast<const uint16_t*>(x), e);
      const float4 b = load4(skip, e);
      v[k] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
      if constexpr (std::is_same_v<Su, uint16_t>) {
        v[k] = make_float4(round_bf16(v[k].x), round_bf16(v[k].y), round_bf16(v[k].z), round_bf16(v[k].w));
      }
      store4(sum, e, v[k]);
    }
  }
}

template <int W, int V, int kMinBlocks, bool kCenter, typename Out, int kSkip, typename St, typename Su>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    norm_forward_rows(const void* __restrict__ x, const St* __restrict__ skip, Su* sum, const float* __restrict__ scale,
                      const float* __restrict__ bias, Out* y, float* mean_out, float* inv_std_out, int64_t rows,
                      int cols, float eps) {
  __shared__ double red[4 * kWarps];
  RowGroup<W> grp(red);
  constexpr int G = RowGroup<W>::kPerBlock;
  const int c4 = cols / 4;
  for (int64_t r = int64_t{blockIdx.x} * G + grp.g; r < rows; r += int64_t{gridDim.x} * G) {
    float4 v[V];
    load_input_row<W, V, kSkip, St, Su>(v, x, skip, sum, r, c4, grp.t);
    double m, is;
    moments<W, V, kCenter>(v, grp, c4, cols, eps, m, is);
    if (grp.t == 0) {
      if (mean_out) mean_out[r] = static_cast<float>(m);
      if (inv_std_out) inv_std_out[r] = static_cast<float>(is);
    }
    const float mf = static_cast<float>(m), isf = static_cast<float>(is);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = grp.t + k * 32 * W;
      if (i >= c4) continue;
      const float4 s = reinterpret_cast<const float4*>(scale)[i];
      const float4 b = bias ? reinterpret_cast<const float4*>(bias)[i] : f4(0.0f);
      store4(y, r * c4 + i,
             make_float4((v[k].x - mf) * isf * s.x + b.x, (v[k].y - mf) * isf * s.y + b.y,
                         (v[k].z - mf) * isf * s.z + b.z, (v[k].w - mf) * isf * s.w + b.w));
    }
  }
}

// Column sums the backward keeps per block: dy * xhat (dscale), and dy (dbias) for LayerNorm, with or without a
// bias (fewer template variants; a LayerNorm without bias only adds shared-memory traffic); and with kDxSums the
// sums of dx rounded to bf16 last (the bias gradient of the layer that produced the normalized input's stream,
// read from the bf16 copy of dx the kernel also writes).
template <bool kCenter, bool kDxSums>
constexpr int kArrays = (kCenter ? 2 : 1) + (kDxSums ? 1 : 0);

// dx for every row the block visits (as in the forward), and unless part is null the block's partial column sums
// part[blockIdx.x][0][cols] = sum dy * xhat and (center) part[blockIdx.x][1][cols] = sum dy, and (kDxSums, last)
// the sums of bf16(dx). dx16 (optional): dx rounded to bf16 as well. Dynamic shared memory: [group][NA][c4] float4
// sums, each thread adding into its own columns only.
// kPrefetch: the addend's row loaded with x's and dy's, not after the row's sums (one memory latency per row instead
// of two, for V more float4 registers per thread). Xt: x and the addend float32, or bf16 (a residual stream kept in
// bf16); dx (float32) may be null, dx16 then the only dX written. Dt: dy float32, or bf16 (with a bf16 stream).
template <int W, int V, int kMinBlocks, bool kCenter, bool kDxSums, typename Xt, bool kPrefetch = false,
          typename Dt = float>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    norm_backward_rows(const Dt* __restrict__ dy, const Xt* __restrict__ x, const float* __restrict__ scale,
                       const float* __restrict__ mean_in, const float* __restrict__ inv_std_in,
                       const Xt* __restrict__ addend, float* dx, uint16_t* dx16, float* part, int64_t rows, int cols,
                       float eps) {
  constexpr int G = RowGroup<W>::kPerBlock, NA = kArrays<kCenter, kDxSums>;
  __shared__ double red[4 * kWarps];
  extern __shared__ float4 acc[];
  RowGroup<W> grp(red);
  const int c4 = cols / 4;
  const bool sums_on = part != nullptr;
  float4* ag = acc + grp.g * NA * c4;  // sums of dy * xhat
  float4* ab = ag + c4;                // sums of dy (center)
  float4* ad = ag + (NA - 1) * c4;     // sums of bf16(dx) (kDxSums)
  if (sums_on) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = grp.t + k * 32 * W;
      if (i >= c4) continue;
      ag[i] = f4(0.0f);
      if constexpr (kCenter) ab[i] = f4(0.0f);
      if constexpr (kDxSums) ad[i] = f4(0.0f);
    }
  }
  const bool saved = inv_std_in && (mean_in || !kCenter);
  for (int64_t r = int64_t{blockIdx.x} * G + grp.g; r < rows; r += int64_t{gridDim.x} * G) {
    // The early addend held as loaded (a bf16 one in half the registers), widened where it is added.
    using Raw = std::conditional_t<std::is_same_v<Xt, uint16_t>, uint2, float4>;
    float4 xv[V], gv[V];
    Raw av[kPrefetch ? V : 1];
    load_row<W, V>(xv, x, r, c4, grp.t);
    load_row<W, V>(gv, dy, r, c4, grp.t);
    if constexpr (kPrefetch) {
      if (addend) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int i = grp.t + k * 32 * W;
          if (i < c4) av[k] = reinterpret_cast<const Raw*>(addend)[r * c4 + i];
        }
      }
    }
    double m, is;
    if (saved) {
      m = kCenter ? mean_in[r] : 0.0;
      is = inv_std_in[r];
    } else {
      moments<W, V, kCenter>(xv, grp, c4, cols, eps, m, is);
    }
    const float mf = static_cast<float>(m), isf = static_cast<float>(is);
    double sums[2] = {0.0, 0.0};  // sum g, sum g * xhat
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = grp.t + k * 32 * W;
      if (i >= c4) continue;
      const float4 s = reinterpret_cast<const float4*>(scale)[i];
      float4& xh = xv[k];  // becomes xhat
      xh = make_float4((xh.x - mf) * isf, (xh.y - mf) * isf, (xh.z - mf) * isf, (xh.w - mf) * isf);
      const float4 d = gv[k];
      if (sums_on) {
        float4 a = ag[i];
        a.x += d.x * xh.x, a.y += d.y * xh.y, a.z += d.z * xh.z, a.w += d.w * xh.w;
        ag[i] = a;
        if constexpr (kCenter) {
          float4 b = ab[i];
          b.x += d.x, b.y += d.y, b.z += d.z, b.w += d.w;
          ab[i] = b;
        }
      }
      const float4 g = make_float4(d.x * s.x, d.y * s.y, d.z * s.z, d.w * s.w);  // becomes gv
      gv[k] = g;
      sums[0] += static_cast<double>(g.x) + g.y + g.z + g.w;
      sums[1] += static_cast<double>(g.x) * xh.x + static_cast<double>(g.y) * xh.y +
                 static_cast<double>(g.z) * xh.z + static_cast<double>(g.w) * xh.w;
    }
    if constexpr (kCenter) {
      grp.sum(sums);
    } else {
      double q[1] = {sums[1]};
      grp.sum(q);
      sums[1] = q[0];
    }
    const float mg = kCenter ? static_cast<float>(sums[0] / cols) : 0.0f;
    const float mgx = static_cast<float>(sums[1] / cols);
    float4* out = dx ? reinterpret_cast<float4*>(dx) + r * c4 : nullptr;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = grp.t + k * 32 * W;
      if (i >= c4) continue;
      const float4 g = gv[k], xh = xv[k];
      float4 o = make_float4(isf * (g.x - mg - xh.x * mgx), isf * (g.y - mg - xh.y * mgx),
                             isf * (g.z - mg - xh.z * mgx), isf * (g.w - mg - xh.w * mgx));
      if (addend) {
        float4 a;
        if constexpr (kPrefetch)
          a = widen(av[k]);
        else
          a = load4(addend, r * c4 + i);
        o.x += a.x, o.y += a.y, o.z += a.z, o.w += a.w;
      }
      if (dx) out[i] = o;
      if (dx16) store4(dx16, r * c4 + i, o);
      if constexpr (kDxSums) {
        float4 a = ad[i];
        a.x += round_bf16(o.x), a.y += round_bf16(o.y), a.z += round_bf16(o.z), a.w += round_bf16(o.w);
        ad[i] = a;
      }
    }
  }
  if (!sums_on) return;
  __syncthreads();
  // The groups' sums in group order, in double, as the block's partial rows.
  for (int q = static_cast<int>(threadIdx.x); q < c4; q += kBlock) {
#pragma unroll
    for (int j = 0; j < NA; ++j) {
      double a[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float4 v = acc[(h * NA + j) * c4 + q];
        a[0] += v.x, a[1] += v.y, a[2] += v.z, a[3] += v.w;
      }
      reinterpret_cast<float4*>(part + (static_cast<int64_t>(blockIdx.x) * NA + j) * cols)[q] =
          make_float4(static_cast<float>(a[0]), static_cast<float>(a[1]), static_cast<float>(a[2]),
                      static_cast<float>(a[3]));
    }
  }
}

// dscale[j] = sum over blocks of part[block][0][j], dbias[j] likewise of part[block][1][j] (either may be null), in
// double; `arrays` partial rows per block. A block takes kSumCols float4 columns; its threads split the partial rows into kSumPhases strided sets
// (so 64 partial rows are read at a time per column, not one after another), and a fixed tree adds the sets up.
constexpr int kSumCols = 4;
constexpr int kSumPhases = kBlock / kSumCols;

// Adds partial rows first, first + kSumPhases, ... of float4 column pq (arrays 0 and / or 1) into a[0..3] / a[4..7];
// the arrays are template flags so that the unrolled loads carry no branches between them.
template <bool kA, bool kB>
__device__ __forceinline__ void add_partials(const float4* pq, int first, int blocks, int arrays, int c4,
                                             double (&a)[8]) {
#pragma unroll 4
  for (int c = first; c < blocks; c += kSumPhases) {
    if constexpr (kA) {
      const float4 v = pq[static_cast<int64_t>(c) * arrays * c4];
      a[0] += v.x, a[1] += v.y, a[2] += v.z, a[3] += v.w;
    }
    if constexpr (kB) {
      const float4 v = pq[(static_cast<int64_t>(c) * arrays + 1) * c4];
      a[4] += v.x, a[5] += v.y, a[6] += v.z, a[7] += v.w;
    }
  }
}

// Blocks with blockIdx.y == 1 sum the last array (dx_sums) instead, in the same launch.
__global__ void __launch_bounds__(kBlock) sum_partials(const float* part, int blocks, int arrays, int cols,
                                                      float* dscale, float* dbias, float* dx_sums) {
  __shared__ double sh[8][kBlock];  // [array * 4 + component][thread]
  const int c4 = cols / 4;
  if (blockIdx.y == 1) {
    part += static_cast<int64_t>(arrays - 1) * cols;
    dscale = dx_sums;
    dbias = nullptr;
  }
  if (!dscale && !dbias) return;
  const int t = static_cast<int>(threadIdx.x), p = t / kSumCols;
  const int q = static_cast<int>(blockIdx.x) * kSumCols + t % kSumCols;
  double a[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  if (q < c4) {
    const float4* pq = reinterpret_cast<const float4*>(part) + q;
    if (dscale && dbias) {
      add_partials<true, true>(pq, p, blocks, arrays, c4, a);
    } else if (dscale) {
      add_partials<true, false>(pq, p, blocks, arrays, c4, a);
    } else {
      add_partials<false, true>(pq, p, blocks, arrays, c4, a);
    }
  }
#pragma unroll
  for (int n = 0; n < 8; ++n) sh[n][t] = a[n];
  __syncthreads();
  for (int s = kSumPhases / 2; s > 0; s >>= 1) {
    if (p < s) {
#pragma unroll
      for (int n = 0; n < 8; ++n) sh[n][t] += sh[n][t + s * kSumCols];
    }
    __syncthreads();
  }
  if (p != 0 || q >= c4) return;
#pragma unroll
  for (int n = 0; n < 4; ++n) {  // scalar stores: dscale and dbias need not be 16-byte aligned
    if (dscale) dscale[4 * q + n] = static_cast<float>(sh[n][t]);
    if (dbias) dbias[4 * q + n] = static_cast<float>(sh[4 + n][t]);
  }
}

template <int N>
using Int = std::integral_constant<int, N>;

// Calls f(Int<W>, Int<V>, Int<B>): W warps per row, V float4 per thread, at least B blocks per SM (the register
// bound). The forward holds one row (4 V floats per thread), so a warp takes rows of up to 2048 columns; the backward
// holds x and dy (8 V), so V stays at 8 or less and wider rows take more warps. V values between powers of two where
// the rows of GPT-2 (768: 6) and gpt-1.5b (1600: 12.5) would otherwise leave registers idle.
template <class F>
bool with_forward_shape(int c4, F&& f) {
  if (c4 <= 32) return f(Int<1>{}, Int<1>{}, Int<3>{});
  if (c4 <= 64) return f(Int<1>{}, Int<2>{}, Int<3>{});
  if (c4 <= 128) return f(Int<1>{}, Int<4>{}, Int<3>{});
  if (c4 <= 192) return f(Int<1>{}, Int<6>{}, Int<3>{});
  if (c4 <= 256) return f(Int<1>{}, Int<8>{}, Int<3>{});
  if (c4 <= 448) return f(Int<2>{}, Int<7>{}, Int<4>{});  // gpt-1.5b: 0.0211 -> 0.0171 ms against 1 warp x 13
  if (c4 <= 512) return f(Int<1>{}, Int<16>{}, Int<2>{});
  if (c4 <= 1024) return f(Int<2>{}, Int<16>{}, Int<2>{});
  return f(Int<4>{}, Int<16>{}, Int<2>{});
}

template <class F>
bool with_backward_shape(int c4, F&& f) {
  if (c4 <= 32) return f(Int<1>{}, Int<1>{}, Int<3>{});
  if (c4 <= 64) return f(Int<1>{}, Int<2>{}, Int<3>{});
  if (c4 <= 128) return f(Int<1>{}, Int<4>{}, Int<3>{});
  if (c4 <= 192) return f(Int<1>{}, Int<6>{}, Int<2>{});
  if (c4 <= 256) return f(Int<1>{}, Int<8>{}, Int<2>{});
  if (c4 <= 512) return f(Int<4>{}, Int<4>{}, Int<3>{});  // gpt-1.5b: 0.0516 -> 0.0490 ms against 2 warps x 8
  if (c4 <= 1024) return f(Int<4>{}, Int<8>{}, Int<2>{});
  return f(Int<8>{}, Int<8>{}, Int<2>{});
}

template <bool kCenter, typename Out, int kSkip = 0, typename St = float, typename Su = float>
bool forward(const void* x, const St* skip, Su* sum, const float* scale, const float* bias, Out* y, float* mean,
             float* inv_std, int64_t rows, int cols, float eps) {
  return with_forward_shape(cols / 4, [&](auto w, auto v, auto b) {
    constexpr int W = decltype(w)::value, V = decltype(v)::value, B = decltype(b)::value, G = kWarps / W;
    // A group per row; past 2^20 blocks the groups stride over the rest.
    const int64_t want = (rows + G - 1) / G;
    const unsigned grid = static_cast<unsigned>(want < (int64_t{1} << 20) ? want : (int64_t{1} << 20));
    norm_forward_rows<W, V, B, kCenter, Out, kSkip, St, Su>
        <<<grid, kBlock, 0, launch_stream()>>>(x, skip, sum, scale, bias, y, mean, inv_std, rows, cols, eps);
    return launched();
  });
}

template <bool kCenter, bool kDxSums, typename Xt = float, typename Dt = float>
bool backward(const Dt* dy, const Xt* x, const float* scale, const float* mean, const float* inv_std, const Xt* addend,
              float* dx, uint16_t* dx16, float* dscale, float* dbias, float* dx_sums, int64_t rows, int cols,
              float eps) {
  const bool sums_on = dscale || dbias || kDxSums;
  constexpr int NA = kArrays<kCenter, kDxSums>;
  // gpt-1.5b's rows (4 warps x 4 float4) with an addend load it early, at 2 blocks per SM (3 would spill): -0.3 to
  // -0.6 ms per gpt-1.5b step (bench/cuda_notes.md entry 51). GALVATRON_CUDA_NORM_GRAD_PREFETCH=0: the late load.
  static const bool prefetch_on = [] {
    const char* e = std::getenv("GALVATRON_CUDA_NORM_GRAD_PREFETCH");
    return !(e && e[0] == '0');
  }();
  return with_backward_shape(cols / 4, [&](auto w, auto v, auto b) {
    constexpr int W = decltype(w)::value, V = decltype(v)::value, B = decltype(b)::value, G = kWarps / W;
    auto kernel = norm_backward_rows<W, V, B, kCenter, kDxSums, Xt, false, Dt>;
    if constexpr (W == 4 && V == 4) {
      if (prefetch_on && addend) kernel = norm_backward_rows<W, V, 2, kCenter, kDxSums, Xt, true, Dt>;
    }
    const size_t smem = sums_on ? sizeof(float) * G * NA * static_cast<size_t>(cols) : 0;
    // The static reduction scratch counts against the default 48 KB too.
    const bool big = smem + sizeof(double) * 4 * kWarps > kStaticSmem;
    if (big && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
                   cudaSuccess) {
      return false;
    }
    // As many blocks as are resident at once, then as few as keep each group's row count (fewer partial rows for
    // sum_partials, same critical path): 8192 rows on 3168 resident groups take 3 rows per group in 342 blocks
    // rather than 396.
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBlock, smem) != cudaSuccess) return false;
    const int64_t fit = int64_t{per_sm < 1 ? 1 : per_sm} * detail::num_sms() * G;
    const int64_t per_group = (rows + fit - 1) / fit;
    const int blocks = static_cast<int>((rows + per_group * G - 1) / (per_group * G));
    float* part = nullptr;
    if (sums_on) {
      part = static_cast<float*>(workspace(sizeof(float) * NA * static_cast<size_t>(blocks) * cols));
      if (!part) return false;
    }
    kernel<<<blocks, kBlock, smem, launch_stream()>>>(dy, x, scale, mean, inv_std, addend, dx, dx16, part, rows, cols,
                                                      eps);
    if (!launched()) return false;
    if (sums_on) {
      const dim3 grid((cols / 4 + kSumCols - 1) / kSumCols, kDxSums ? 2 : 1);
      sum_partials<<<grid, kBlock, 0, launch_stream()>>>(part, blocks, NA, cols, dscale, dbias,
                                                         kDxSums ? dx_sums : nullptr);
    }
    return launched();
  });
}

}  // namespace

bool norm_rows_eligible(int64_t rows, int64_t cols, std::initializer_list<const void*> tensors) {
  static const bool off = [] {
    const char* e = std::getenv("GALVATRON_CUDA_NORM_ROWS");
    return e && e[0] == '0';
  }();
  if (off || rows <= 0 || cols <= 0 || cols % 4 != 0 || cols > kMaxCols) return false;
  for (const void* p : tensors)
    if (p && !detail::aligned16(p)) return false;
  return true;
}

bool norm_rows_forward(bool center, const float* x, const float* scale, const float* bias, void* y, bool y_bf16,
                       float* mean, float* inv_std, int64_t rows, int64_t cols, float eps) {
  const int c = static_cast<int>(cols);
  const float* kNoSkip = nullptr;
  float* kNoSum = nullptr;
  if (y_bf16) {
    auto* yb = static_cast<uint16_t*>(y);
    return center ? forward<true>(x, kNoSkip, kNoSum, scale, bias, yb, mean, inv_std, rows, c, eps)
                  : forward<false>(x, kNoSkip, kNoSum, scale, nullptr, yb, nullptr, inv_std, rows, c, eps);
  }
  auto* yf = static_cast<float*>(y);
  return center ? forward<true>(x, kNoSkip, kNoSum, scale, bias, yf, mean, inv_std, rows, c, eps)
                : forward<false>(x, kNoSkip, kNoSum, scale, nullptr, yf, nullptr, inv_std, rows, c, eps);
}

bool norm_rows_skip_forward(bool center, const void* x, bool x_bf16, const float* skip, float* sum, const float* scale,
                            const float* bias, void* y, bool y_bf16, float* mean, float* inv_std, int64_t rows,
                            int64_t cols, float eps) {
  const int c = static_cast<int>(cols);
  auto* yb = static_cast<uint16_t*>(y);
  auto* yf = static_cast<float*>(y);
  if (!center) {  // RMS: no bias, no mean
    if (x_bf16) {
      return y_bf16 ? forward<false, uint16_t, 2>(x, skip, sum, scale, nullptr, yb, nullptr, inv_std, rows, c, eps)
                    : forward<false, float, 2>(x, skip, sum, scale, nullptr, yf, nullptr, inv_std, rows, c, eps);
    }
    return y_bf16 ? forward<false, uint16_t, 1>(x, skip, sum, scale, nullptr, yb, nullptr, inv_std, rows, c, eps)
                  : forward<false, float, 1>(x, skip, sum, scale, nullptr, yf, nullptr, inv_std, rows, c, eps);
  }
  if (x_bf16) {
    return y_bf16 ? forward<true, uint16_t, 2>(x, skip, sum, scale, bias, yb, mean, inv_std, rows, c, eps)
                  : forward<true, float, 2>(x, skip, sum, scale, bias, yf, mean, inv_std, rows, c, eps);
  }
  return y_bf16 ? forward<true, uint16_t, 1>(x, skip, sum, scale, bias, yb, mean, inv_std, rows, c, eps)
                : forward<true, float, 1>(x, skip, sum, scale, bias, yf, mean, inv_std, rows, c, eps);
}

bool norm_rows_skip_forward_bf16_sum(bool center, const uint16_t* x, const void* skip, bool skip_bf16, uint16_t* sum,
                                     const float* scale, const float* bias, void* y, bool y_bf16, float* mean,
                                     float* inv_std, int64_t rows, int64_t cols, float eps) {
  const int c = static_cast<int>(cols);
  auto* yb = static_cast<uint16_t*>(y);
  auto* yf = static_cast<float*>(y);
  // One instance per (center, Skip type, Y type); RMS takes no bias and no mean.
  auto run = [&](auto center_tag, const auto* sk) {
    constexpr bool kCenter = decltype(center_tag)::value;
    using St = std::remove_const_t<std::remove_pointer_t<decltype(sk)>>;
    const float* b = kCenter ? bias : nullptr;
    float* m = kCenter ? mean : nullptr;
    return y_bf16 ? forward<kCenter, uint16_t, 2, St, uint16_t>(x, sk, sum, scale, b, yb, m, inv_std, rows, c, eps)
                  : forward<kCenter, float, 2, St, uint16_t>(x, sk, sum, scale, b, yf, m, inv_std, rows, c, eps);
  };
  const auto* s16 = static_cast<const uint16_t*>(skip);
  const auto* s32 = static_cast<const float*>(skip);
  if (center) return skip_bf16 ? run(std::true_type{}, s16) : run(std::true_type{}, s32);
  return skip_bf16 ? run(std::false_type{}, s16) : run(std::false_type{}, s32);
}

bool norm_rows_backward(bool center, const float* dy, const float* x, const float* scale, const float* mean,
                        const float* inv_std, float* dx, float* dscale, float* dbias, int64_t rows, int64_t cols,
                        float eps, const float* addend, uint16_t* dx_bf16, float* dx_sums) {
  const int c = static_cast<int>(cols);
  if (!center) {
    return backward<false, false>(dy, x, scale, nullptr, inv_std, addend, dx, dx_bf16, dscale, nullptr, nullptr,
                                  rows, c, eps);
  }
  if (dx_sums) {
    return backward<true, true>(dy, x, scale, mean, inv_std, addend, dx, dx_bf16, dscale, dbias, dx_sums, rows, c,
                                eps);
  }
  return backward<true, false>(dy, x, scale, mean, inv_std, addend, dx, dx_bf16, dscale, dbias, nullptr, rows, c,
                               eps);
}

bool norm_rows_backward_bf16_stream(bool center, const void* dy, bool dy_bf16, const uint16_t* x, const float* scale,
                                    const float* mean, const float* inv_std, float* dx, float* dscale, float* dbias,
                                    int64_t rows, int64_t cols, float eps, const uint16_t* addend, uint16_t* dx_bf16,
                                    float* dx_sums) {
  const int c = static_cast<int>(cols);
  auto run = [&](const auto* d) {
    if (!center) {
      return backward<false, false>(d, x, scale, nullptr, inv_std, addend, dx, dx_bf16, dscale, nullptr, nullptr, rows,
                                    c, eps);
    }
    return dx_sums ? backward<true, true>(d, x, scale, mean, inv_std, addend, dx, dx_bf16, dscale, dbias, dx_sums, rows,
                                          c, eps)
                   : backward<true, false>(d, x, scale, mean, inv_std, addend, dx, dx_bf16, dscale, dbias, nullptr,
                                           rows, c, eps);
  };
  return dy_bf16 ? run(static_cast<const uint16_t*>(dy)) : run(static_cast<const float*>(dy));
}

}  // namespace gv::cuda

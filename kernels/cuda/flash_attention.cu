// Flash attention (FlashAttention-2 style) for the kBf16 math mode: kernels/cpu/attention.h's contract without a
// materialized score matrix. Taken by attention.cu's launchers when flash_attention_eligible() (ops.h): the forward and
// the backward by default (GALVATRON_CUDA_FLASH=fwd: the forward only; =0: neither).
//
// Tiles of kB = 64 query rows x 64 keys; 4 warps per block, each owning 16 rows of the block's tile, the head dim
// zero-padded to DP (64 for D <= 64, 128 for D <= 128). Softmax in float32 in the log2 domain (s * scale * log2 e,
// exp2). Causal (key j <= query i): key tiles past the diagonal are skipped, the diagonal tile masked per element;
// tail tiles (S, L not multiples of 64) masked likewise. Two kernel sets, same algorithm:
//   mma (default)  mma.sync m16n8k16 via inline PTX, operands through ldmatrix (.trans where a tile's rows run along
//                  k); K, V (and Q, dY in the backward) converted to bf16 once per call into workspace(), tiles
//                  double-buffered with cp.async; scores, probabilities and outputs stay in registers.
//   wmma           (GALVATRON_CUDA_FLASH_WMMA=1) nvcuda::wmma 16x16x16, float32 tiles converted while loaded, no
//                  pipelining, a separate dQ kernel. Slower; kept as a cross-check.
// GPT-2 b8 (B8 H12 S=L=1024 D64 causal) on an H200, per call (tests/cuda_attention_test.cpp FlashTiming):
//   forward   mma 0.149 ms (87 TFLOP/s; 0.295 before the bf16 copies, cp.async and ldmatrix), wmma 0.467, v1 0.457
//   backward  mma 0.518 ms (1.246 with a separate dQ kernel and no pipelining), wmma 1.83, v1 0.931
//
//   forward        one block per (query tile, b, query head); online softmax, O in registers.
//   backward mma   (1) the forward again in "stats" mode: per row lse = m + log2(l) and delta = rowsum(dY * Y) into
//                      workspace() (the op contract has no output for them, so the backward recomputes them);
//                  (2) one pass (mflash_bwd): one block per (key tile, b, kv head), looping over the group's query
//                      heads and their query tiles: dV += P^T dY, dK += dS^T Q in registers, dQ += dS K added into
//                      the zeroed dQ with float32 atomics (dQ's summation order varies run to run; dK, dV are
//                      deterministic).
//   backward wmma  stats forward, then dQ (one block per query tile, dQ += dS K) and dK/dV (one block per key tile)
//                  as separate kernels, no atomics.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/common.cuh"

namespace gv::cuda {
namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBr = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr int kB = 64;  // rows of a query or key tile
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int LDS = kB + 4;  // float32 [16 x 64] score scratch row stride
constexpr int LDP = kB + 8;  // bf16 [16 x 64] probability scratch row stride
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

std::atomic<int64_t> g_flash_calls{0};

struct FlashArgs {
  const float *q = nullptr, *k = nullptr, *v = nullptr, *dy = nullptr;
  float* y = nullptr;
  float *lse = nullptr, *delta = nullptr;  // [B*Hq*S]
  float* lse_out = nullptr;                // forward: the rows' natural log-sum-exp [B*Hq][S] (AttentionWithLse)
  const float *y_in = nullptr, *lse_in = nullptr;  // backward: the forward's Y and lse_out (no statistics rerun)
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;
  const bf16 *qb = nullptr, *kb = nullptr, *vb = nullptr, *dob = nullptr;  // mma: bf16 [heads][Sp or Lp][DP]
  int64_t S = 0, L = 0, Sp = 0, Lp = 0;  // Sp, Lp: S, L rounded up to kB
  int Hq = 1, G = 1, D = 0;
  float scale = 1.0f, scale_log2 = 1.0f;
  bool causal = false, vec = false;  // vec: D % 4 == 0 and 16-byte aligned bases (float4 loads)
  bool vec2 = false;                 // D even and dq 8-byte aligned (float2 atomics)
  bool seq_major = false;            // the 3-D form's layout (strides below); the wmma kernels take head-major only
  // Element strides (batch, head, row; the head dim is contiguous) of Q, Y, dY, dQ (q*) and of K, V, dK, dV (k*):
  // head-major [B, H, S, D] is (H*S*D, S*D, D), sequence-major [B, S, H, D] is (S*H*D, D, H*D).
  int64_t qs_b = 0, qs_h = 0, qs_r = 0, ks_b = 0, ks_h = 0, ks_r = 0;
  // Y, dY and the forward's Y in the backward (y*): Q's strides, except for packed QKV (Q, K, V and dQ, dK, dV rows
  // 3 * H * D apart inside one [B, S, 3 * H * D] tensor, Y's rows H * D apart).
  int64_t ys_b = 0, ys_h = 0, ys_r = 0;
  // dQ's zeroing before the backward accumulates into it: dq_rows rows of dq_width elements, dq_pitch apart.
  int64_t dq_rows = 0, dq_width = 0, dq_pitch = 0;
};

// Offsets of row 0 of query head h (< Hq) of batch b, and of key/value head h (< Hkv); rows are qs_r / ks_r apart.
// The kernels form these once per head, outside their loops (no division in the hot paths).
__device__ __forceinline__ int64_t qhead(const FlashArgs& a, int64_t b, int64_t h) { return b * a.qs_b + h * a.qs_h; }
__device__ __forceinline__ int64_t khead(const FlashArgs& a, int64_t b, int64_t h) { return b * a.ks_b + h * a.ks_h; }
__device__ __forceinline__ int64_t yhead(const FlashArgs& a, int64_t b, int64_t h) { return b * a.ys_b + h * a.ys_h; }

// Rows [row0, row0 + kB) of a row-major [rows, D] float32 matrix into a bf16 tile [kB, DP] (row stride DP + 8);
// zeros past `rows` and past D. Whole block.
template <int DP>
__device__ __forceinline__ void load_tile(bf16* dst, const float* __restrict__ src, int64_t row0, int64_t rows, int D,
                                          bool vec) {
  constexpr int C4 = DP / 4;
  constexpr int LDH = DP + 8;
  for (int e = threadIdx.x; e < kB * C4; e += kThreads) {
    const int r = e / C4, c = (e % C4) * 4;
    const int64_t gr = row0 + r;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (gr < rows && c < D) {
      const float* p = src + gr * D + c;
      if (vec) {
        x = __ldg(reinterpret_cast<const float4*>(p));
      } else {
        x.x = __ldg(p);
        if (c + 1 < D) x.y = __ldg(p + 1);
        if (c + 2 < D) x.z = __ldg(p + 2);
        if (c + 3 < D) x.w = __ldg(p + 3);
      }
    }
    __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(dst + r * LDH + c);
    o[0] = __floats2bfloat162_rn(x.x, x.y);
    o[1] = __floats2bfloat162_rn(x.z, x.w);
  }
}

// acc[n] (n < 4) = A[16 x DP] (row-major, stride lda) times B^T where B is [64 x DP] row-major (stride ldb): the
// 16 x 64 product of a warp's rows with a tile's rows.
template <int DP>
__device__ __forceinline__ void rows_times_tile_t(FragC (&acc)[4], const bf16* a, const bf16* b) {
  constexpr int LDH = DP + 8;
#pragma unroll
  for (int n = 0; n < 4; ++n) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
  for (int kk = 0; kk < DP; kk += 16) {
    FragA fa;
    wmma::load_matrix_sync(fa, a + kk, LDH);
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      FragBc fb;
      wmma::load_matrix_sync(fb, b + n * 16 * LDH + kk, LDH);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

template <int DP>
constexpr size_t fwd_smem() {
  return sizeof(bf16) * 3 * kB * (DP + 8) + sizeof(float) * kWarps * 16 * (DP + 4) +
         sizeof(float) * kWarps * 16 * LDS + sizeof(bf16) * kWarps * 16 * LDP;
}

// Forward: Y (kStats false) or lse and delta = rowsum(dY * Y) (kStats true). Grid (query tiles, B*Hq).
template <int DP, bool kStats>
__global__ void __launch_bounds__(kThreads) flash_fwd(FlashArgs a) {
  constexpr int LDH = DP + 8, LDO = DP + 4;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + kB * LDH;
  bf16* sV = sK + kB * LDH;
  float* sO = reinterpret_cast<float*>(sV + kB * LDH);
  float* sS = sO + kWarps * 16 * LDO;
  bf16* sP = reinterpret_cast<bf16*>(sS + kWarps * 16 * LDS);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t S = a.S, L = a.L;
  const int D = a.D;
  const int nqt = static_cast<int>((S + kB - 1) / kB);
  const int qt = a.causal ? nqt - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x);  // long first
  const int64_t q0 = int64_t{qt} * kB;
  const int64_t bh = blockIdx.y;
  const int64_t h = bh % a.Hq, b = bh / a.Hq;
  const int64_t bkv = b * (a.Hq / a.G) + h / a.G;
  const float* Kg = a.k + bkv * L * D;
  const float* Vg = a.v + bkv * L * D;
  load_tile<DP>(sQ, a.q + bh * S * D, q0, S, D, a.vec);
  float* myO = sO + warp * 16 * LDO;
  float* myS = sS + warp * 16 * LDS;
  bf16* myP = sP + warp * 16 * LDP;
  for (int e = lane; e < 16 * LDO; e += 32) myO[e] = 0.0f;
  const int r = lane >> 1, hf = lane & 1;
  const int64_t i = q0 + warp * 16 + r;
  float m = -INFINITY, l = 0.0f;
  const int64_t kend = a.causal ? (q0 + kB < L ? q0 + kB : L) : L;
  for (int64_t k0 = 0; k0 < kend; k0 += kB) {
    __syncthreads();  // the previous tile's readers are done (and sQ is loaded)
    load_tile<DP>(sK, Kg, k0, L, D, a.vec);
    load_tile<DP>(sV, Vg, k0, L, D, a.vec);
    __syncthreads();
    {
      FragC acc[4];
      rows_times_tile_t<DP>(acc, sQ + warp * 16 * LDH, sK);
#pragma unroll
      for (int n = 0; n < 4; ++n) wmma::store_matrix_sync(myS + n * 16, acc[n], LDS, wmma::mem_row_major);
    }
    __syncwarp();
    float s[32];
    float mx = -INFINITY;
#pragma unroll
    for (int t = 0; t < 32; ++t) {
      const int c = hf + 2 * t;
      const int64_t j = k0 + c;
      const bool ok = j < L && (!a.causal || j <= i);
      s[t] = ok ? myS[r * LDS + c] * a.scale_log2 : -INFINITY;
      mx = fmaxf(mx, s[t]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = exp2f(m - m_use);
    float sum = 0.0f;
#pragma unroll
    for (int t = 0; t < 32; ++t) {
      const float p = exp2f(s[t] - m_use);
      sum += p;
      myP[r * LDP + hf + 2 * t] = __float2bfloat16_rn(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = m_new;
#pragma unroll 8
    for (int t = 0; t < DP / 2; ++t) myO[r * LDO + hf + 2 * t] *= alpha;
    __syncwarp();
    FragA pa[4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wmma::load_matrix_sync(pa[kk], myP + kk * 16, LDP);
#pragma unroll
    for (int n = 0; n < DP / 16; ++n) {
      FragC o;
      wmma::load_matrix_sync(o, myO + n * 16, LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        FragBr vb;
        wmma::load_matrix_sync(vb, sV + kk * 16 * LDH + n * 16, LDH);
        wmma::mma_sync(o, pa[kk], vb, o);
      }
      wmma::store_matrix_sync(myO + n * 16, o, LDO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  if constexpr (!kStats) {
    if (i < S) {
      float* yr = a.y + (bh * S + i) * D;
      for (int t = 0; t < DP / 2; ++t) {
        const int c = hf + 2 * t;
        if (c < D) yr[c] = myO[r * LDO + c] * inv;
      }
    }
  } else {
    float dd = 0.0f;
    if (i < S) {
      const float* dyr = a.dy + (bh * S + i) * D;
      for (int t = 0; t < DP / 2; ++t) {
        const int c = hf + 2 * t;
        if (c < D) dd += __ldg(dyr + c) * (myO[r * LDO + c] * inv);
      }
    }
    dd += __shfl_xor_sync(0xffffffffu, dd, 1);
    if (i < S && hf == 0) {
      a.lse[bh * S + i] = l > 0.0f ? m + log2f(l) : INFINITY;
      a.delta[bh * S + i] = dd;
    }
  }
}

template <int DP>
constexpr size_t dq_smem() {
  return sizeof(bf16) * 4 * kB * (DP + 8) + sizeof(float) * kWarps * 16 * 2 * LDS + sizeof(bf16) * kWarps * 16 * LDP;
}

// dQ = scale * dS K over the visible key tiles. Grid (query tiles, B*Hq).
template <int DP>
__global__ void __launch_bounds__(kThreads) flash_bwd_dq(FlashArgs a) {
  constexpr int LDH = DP + 8, LDO = DP + 4;
  static_assert(LDO <= 2 * LDS, "the dQ staging reuses the two score scratches");
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sdO = sQ + kB * LDH;
  bf16* sK = sdO + kB * LDH;
  bf16* sV = sK + kB * LDH;
  float* sF = reinterpret_cast<float*>(sV + kB * LDH);
  bf16* sdS = reinterpret_cast<bf16*>(sF + kWarps * 16 * 2 * LDS);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t S = a.S, L = a.L;
  const int D = a.D;
  const int nqt = static_cast<int>((S + kB - 1) / kB);
  const int qt = a.causal ? nqt - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x);
  const int64_t q0 = int64_t{qt} * kB;
  const int64_t bh = blockIdx.y;
  const int64_t h = bh % a.Hq, b = bh / a.Hq;
  const int64_t bkv = b * (a.Hq / a.G) + h / a.G;
  const float* Kg = a.k + bkv * L * D;
  const float* Vg = a.v + bkv * L * D;
  load_tile<DP>(sQ, a.q + bh * S * D, q0, S, D, a.vec);
  load_tile<DP>(sdO, a.dy + bh * S * D, q0, S, D, a.vec);
  float* myS = sF + warp * 16 * 2 * LDS;
  float* mydP = myS + 16 * LDS;
  bf16* mydS = sdS + warp * 16 * LDP;
  const int r = lane >> 1, hf = lane & 1;
  const int64_t i = q0 + warp * 16 + r;
  const float lse = i < S ? a.lse[bh * S + i] : 0.0f;
  const float dlt = i < S ? a.delta[bh * S + i] : 0.0f;
  FragC dq[DP / 16];
#pragma unroll
  for (int n = 0; n < DP / 16; ++n) wmma::fill_fragment(dq[n], 0.0f);
  const int64_t kend = a.causal ? (q0 + kB < L ? q0 + kB : L) : L;
  for (int64_t k0 = 0; k0 < kend; k0 += kB) {
    __syncthreads();
    load_tile<DP>(sK, Kg, k0, L, D, a.vec);
    load_tile<DP>(sV, Vg, k0, L, D, a.vec);
    __syncthreads();
    {
      FragC acc[4];
      rows_times_tile_t<DP>(acc, sQ + warp * 16 * LDH, sK);
#pragma unroll
      for (int n = 0; n < 4; ++n) wmma::store_matrix_sync(myS + n * 16, acc[n], LDS, wmma::mem_row_major);
      rows_times_tile_t<DP>(acc, sdO + warp * 16 * LDH, sV);
#pragma unroll
      for (int n = 0; n < 4; ++n) wmma::store_matrix_sync(mydP + n * 16, acc[n], LDS, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll 8
    for (int t = 0; t < 32; ++t) {
      const int c = hf + 2 * t;
      const int64_t j = k0 + c;
      const bool ok = i < S && j < L && (!a.causal || j <= i);
      const float p = ok ? exp2f(myS[r * LDS + c] * a.scale_log2 - lse) : 0.0f;
      mydS[r * LDP + c] = __float2bfloat16_rn(p * (mydP[r * LDS + c] - dlt));
    }
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      FragA da;
      wmma::load_matrix_sync(da, mydS + kk * 16, LDP);
#pragma unroll
      for (int n = 0; n < DP / 16; ++n) {
        FragBr kb;
        wmma::load_matrix_sync(kb, sK + kk * 16 * LDH + n * 16, LDH);
        wmma::mma_sync(dq[n], da, kb, dq[n]);
      }
    }
  }
  __syncwarp();
#pragma unroll
  for (int n = 0; n < DP / 16; ++n) wmma::store_matrix_sync(myS + n * 16, dq[n], LDO, wmma::mem_row_major);
  __syncwarp();
  if (i < S) {
    float* o = a.dq + (bh * S + i) * D;
    for (int t = 0; t < DP / 2; ++t) {
      const int c = hf + 2 * t;
      if (c < D) o[c] = myS[r * LDO + c] * a.scale;
    }
  }
}

template <int DP>
constexpr size_t dkdv_smem() {
  return sizeof(bf16) * 4 * kB * (DP + 8) + sizeof(float) * 2 * kB + sizeof(float) * kWarps * 16 * 2 * LDS +
         sizeof(bf16) * kWarps * 2 * 16 * LDP;
}

// dK = scale * sum dS^T Q, dV = sum P^T dY over the group's query heads and their visible query tiles. Grid (key
// tiles, B*Hkv).
template <int DP>
__global__ void __launch_bounds__(kThreads) flash_bwd_dkdv(FlashArgs a) {
  constexpr int LDH = DP + 8, LDO = DP + 4;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + kB * LDH;
  bf16* sQ = sV + kB * LDH;
  bf16* sdO = sQ + kB * LDH;
  float* sF = reinterpret_cast<float*>(sdO + kB * LDH);
  bf16* sPT = reinterpret_cast<bf16*>(sF + kWarps * 16 * 2 * LDS);
  float* sLse = reinterpret_cast<float*>(sPT + kWarps * 2 * 16 * LDP);
  float* sDelta = sLse + kB;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t S = a.S, L = a.L;
  const int D = a.D;
  const int64_t k0 = int64_t{blockIdx.x} * kB;
  const int64_t bkv = blockIdx.y;
  const int64_t Hkv = a.Hq / a.G;
  const int64_t b = bkv / Hkv, hk = bkv % Hkv;
  load_tile<DP>(sK, a.k + bkv * L * D, k0, L, D, a.vec);
  load_tile<DP>(sV, a.v + bkv * L * D, k0, L, D, a.vec);
  float* myS = sF + warp * 16 * 2 * LDS;
  float* mydP = myS + 16 * LDS;
  bf16* myP = sPT + warp * 2 * 16 * LDP;
  bf16* mydS = myP + 16 * LDP;
  const int r = lane >> 1, hf = lane & 1;
  const int64_t j = k0 + warp * 16 + r;
  FragC dk[DP / 16], dv[DP / 16];
#pragma unroll
  for (int n = 0; n < DP / 16; ++n) {
    wmma::fill_fragment(dk[n], 0.0f);
    wmma::fill_fragment(dv[n], 0.0f);
  }
  const int64_t qstart = a.causal ? k0 : 0;
  for (int g = 0; g < a.G; ++g) {
    const int64_t bh = b * a.Hq + hk * a.G + g;
    for (int64_t q0 = qstart; q0 < S; q0 += kB) {
      __syncthreads();
      load_tile<DP>(sQ, a.q + bh * S * D, q0, S, D, a.vec);
      load_tile<DP>(sdO, a.dy + bh * S * D, q0, S, D, a.vec);
      if (threadIdx.x < kB) {
        const int64_t i = q0 + threadIdx.x;
        sLse[threadIdx.x] = i < S ? a.lse[bh * S + i] : 0.0f;
        sDelta[threadIdx.x] = i < S ? a.delta[bh * S + i] : 0.0f;
      }
      __syncthreads();
      {
        FragC acc[4];
        rows_times_tile_t<DP>(acc, sK + warp * 16 * LDH, sQ);
#pragma unroll
        for (int n = 0; n < 4; ++n) wmma::store_matrix_sync(myS + n * 16, acc[n], LDS, wmma::mem_row_major);
        rows_times_tile_t<DP>(acc, sV + warp * 16 * LDH, sdO);
#pragma unroll
        for (int n = 0; n < 4; ++n) wmma::store_matrix_sync(mydP + n * 16, acc[n], LDS, wmma::mem_row_major);
      }
      __syncwarp();
#pragma unroll 8
      for (int t = 0; t < 32; ++t) {
        const int c = hf + 2 * t;
        const int64_t i = q0 + c;
        const bool ok = i < S && j < L && (!a.causal || j <= i);
        const float p = ok ? exp2f(myS[r * LDS + c] * a.scale_log2 - sLse[c]) : 0.0f;
        myP[r * LDP + c] = __float2bfloat16_rn(p);
        mydS[r * LDP + c] = __float2bfloat16_rn(p * (mydP[r * LDS + c] - sDelta[c]));
      }
      __syncwarp();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        FragA pa, da;
        wmma::load_matrix_sync(pa, myP + kk * 16, LDP);
        wmma::load_matrix_sync(da, mydS + kk * 16, LDP);
#pragma unroll
        for (int n = 0; n < DP / 16; ++n) {
          FragBr ob, qb;
          wmma::load_matrix_sync(ob, sdO + kk * 16 * LDH + n * 16, LDH);
          wmma::mma_sync(dv[n], pa, ob, dv[n]);
          wmma::load_matrix_sync(qb, sQ + kk * 16 * LDH + n * 16, LDH);
          wmma::mma_sync(dk[n], da, qb, dk[n]);
        }
      }
    }
  }
  __syncwarp();
#pragma unroll
  for (int n = 0; n < DP / 16; ++n) wmma::store_matrix_sync(myS + n * 16, dv[n], LDO, wmma::mem_row_major);
  __syncwarp();
  if (j < L) {
    float* o = a.dv + (bkv * L + j) * D;
    for (int t = 0; t < DP / 2; ++t) {
      const int c = hf + 2 * t;
      if (c < D) o[c] = myS[r * LDO + c];
    }
  }
  __syncwarp();
#pragma unroll
  for (int n = 0; n < DP / 16; ++n) wmma::store_matrix_sync(myS + n * 16, dk[n], LDO, wmma::mem_row_major);
  __syncwarp();
  if (j < L) {
    float* o = a.dk + (bkv * L + j) * D;
    for (int t = 0; t < DP / 2; ++t) {
      const int c = hf + 2 * t;
      if (c < D) o[c] = myS[r * LDO + c] * a.scale;
    }
  }
}

// ---- mma.sync m16n8k16 (bf16 in, float32 accumulate) kernels: the score, probability and output fragments stay
// in registers (FlashAttention-2's layout). Fragment layouts (PTX ISA, m16n8k16 .bf16), g = lane / 4, t = lane % 4:
// A 16x16 row-major: a0 (row g, cols 2t, 2t+1), a1 (row g+8, same), a2 (row g, cols 2t+8, 2t+9), a3 (row g+8, same);
// B 16x8: b0 (k 2t, 2t+1; n g), b1 (k 2t+8, 2t+9; n g); C 16x8: c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8).
// So a C fragment pair (keys 16kk..16kk+15) is the A fragment of the next product. Operands are read from row-major
// bf16 tiles [rows][DP + 8] with ldmatrix: plain where the tile's rows run along the product's m or n (Q, K in
// S = Q K^T), .trans where they run along k (V in Y = P V, K in dQ = dS K, Q and dY in dK, dV), so no transposed
// copies. K, V (and Q, dY in the backward) are converted to bf16 once per call into workspace() ([heads][rows padded
// to 64][DP], zeros in the padding) and tiles stream in with cp.async, double-buffered (the next tile's copy runs
// under the current tile's products).
constexpr int LDT = kB + 8;  // the backward's dS tile [64 keys][64 queries] row stride

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldm4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldm4t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
// ldmatrix x4: lane l gives the address of row l % 8 of 8x8 matrix l / 8; register i holds matrix i's fragment.
// A fragment: rows r0..r0+15, k k0..k0+15 of a row-major [row][k] tile.
__device__ __forceinline__ void frag_a(uint32_t (&f)[4], const bf16* T, int ld, int r0, int k0, int lane) {
  const int m = lane >> 3, rr = lane & 7;
  ldm4(f, T + (r0 + (m & 1) * 8 + rr) * ld + k0 + (m >> 1) * 8);
}
// A fragment from a [k][row] tile (the transpose stored): rows r0..r0+15, k k0..k0+15.
__device__ __forceinline__ void frag_a_t(uint32_t (&f)[4], const bf16* T, int ld, int r0, int k0, int lane) {
  const int m = lane >> 3, rr = lane & 7;
  ldm4t(f, T + (k0 + (m >> 1) * 8 + rr) * ld + r0 + (m & 1) * 8);
}
// B fragments {b0, b1} of n tiles n0..n0+7 (f[0], f[1]) and n0+8..n0+15 (f[2], f[3]), k k0..k0+15, from a [n][k]
// tile (B^T row-major: K in S = Q K^T).
__device__ __forceinline__ void frag_b_nk(uint32_t (&f)[4], const bf16* T, int ld, int n0, int k0, int lane) {
  const int m = lane >> 3, rr = lane & 7;
  ldm4(f, T + (n0 + (m >> 1) * 8 + rr) * ld + k0 + (m & 1) * 8);
}
// The same from a [k][n] tile (B row-major: V in Y = P V).
__device__ __forceinline__ void frag_b_kn(uint32_t (&f)[4], const bf16* T, int ld, int n0, int k0, int lane) {
  const int m = lane >> 3, rr = lane & 7;
  ldm4t(f, T + (k0 + (m & 1) * 8 + rr) * ld + n0 + (m >> 1) * 8);
}
// acc[nt] (nt < 8) = A (16 x DP, fragments af) times B^T, B the 64 rows of a [64][DP + 8] tile.
template <int DP>
__device__ __forceinline__ void mma_a_bt(float (&acc)[8][4], const uint32_t (&af)[DP / 16][4], const bf16* B,
                                         int lane) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
    for (int nt = 0; nt < 8; nt += 2) {
      uint32_t b[4];
      frag_b_nk(b, B, DP + 8, nt * 8, kk * 16, lane);
      mma16816(acc[nt], af[kk], b[0], b[1]);
      mma16816(acc[nt + 1], af[kk], b[2], b[3]);
    }
  }
}
// acc[n] (n < DP/8) += P (16 x 64, C fragments p[8][4]) times B, a [64][DP + 8] tile (rows along k).
template <int DP>
__device__ __forceinline__ void mma_p_b(float (&acc)[DP / 8][4], const float (&p)[8][4], const bf16* B, int lane) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const uint32_t fa[4] = {pack2(p[2 * kk][0], p[2 * kk][1]), pack2(p[2 * kk][2], p[2 * kk][3]),
                            pack2(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int n = 0; n < DP / 8; n += 2) {
      uint32_t b[4];
      frag_b_kn(b, B, DP + 8, n * 8, kk * 16, lane);
      mma16816(acc[n], fa, b[0], b[1]);
      mma16816(acc[n + 1], fa, b[2], b[3]);
    }
  }
}

// A float32 tensor of B*H heads of [rows][D] (strides sb, sh, sr: FlashArgs' layouts) as bf16 [B*H][rows_p][DP]:
// zeros past rows and D. Grid (.., B*H): blockIdx.y is the head; one thread per 8 outputs; 32-bit index math.
template <int DP>
__global__ void to_bf16_padded(const float* __restrict__ src, bf16* __restrict__ dst, int rows, int rows_p, int D,
                               bool vec, int H, int64_t sb, int64_t sh, int64_t sr) {
  constexpr int C = DP / 8;
  const int head = blockIdx.y;
  const float* hs = src + (head / H) * sb + (head % H) * sh;
  bf16* hd = dst + static_cast<int64_t>(head) * rows_p * DP;
  const int n = rows_p * C;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
    const int c = (e % C) * 8, r = e / C;
    float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (r < rows && c < D) {
      const float* p = hs + r * sr + c;
      if (vec && c + 8 <= D) {
        const float4 u = __ldg(reinterpret_cast<const float4*>(p)), w = __ldg(reinterpret_cast<const float4*>(p + 4));
        x[0] = u.x, x[1] = u.y, x[2] = u.z, x[3] = u.w, x[4] = w.x, x[5] = w.y, x[6] = w.z, x[7] = w.w;
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k)
          if (c + k < D) x[k] = __ldg(p + k);
      }
    }
    uint4 o;
    o.x = pack2(x[0], x[1]);
    o.y = pack2(x[2], x[3]);
    o.z = pack2(x[4], x[5]);
    o.w = pack2(x[6], x[7]);
    *reinterpret_cast<uint4*>(hd + static_cast<int64_t>(r) * DP + c) = o;
  }
}

// kB rows of a padded bf16 [.][DP] tensor into a [kB][DP + 8] tile, cp.async (the caller commits). Whole block.
template <int DP>
__device__ __forceinline__ void cp_tile(bf16* dst, const bf16* src) {
  constexpr int C = DP / 8;
#pragma unroll
  for (int e = threadIdx.x; e < kB * C; e += kThreads) {
    const int r = e / C, c = (e % C) * 8;
    cp16(dst + r * (DP + 8) + c, src + r * DP + c);
  }
}

// Rows [row0, row0 + kB) of a [rows, D] float32 matrix (rows ld elements apart) as bf16 into T ([kB][DP + 8]); zeros
// past rows and D.
template <int DP>
__device__ __forceinline__ void load_tile_f32(bf16* T, const float* __restrict__ src, int64_t ld, int64_t row0,
                                              int64_t rows, int D, bool vec) {
  constexpr int C4 = DP / 4;
  for (int e = threadIdx.x; e < kB * C4; e += kThreads) {
    const int r = e / C4, c = (e % C4) * 4;
    const int64_t gr = row0 + r;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (gr < rows && c < D) {
      const float* p = src + gr * ld + c;
      if (vec) {
        x = __ldg(reinterpret_cast<const float4*>(p));
      } else {
        x.x = __ldg(p);
        if (c + 1 < D) x.y = __ldg(p + 1);
        if (c + 2 < D) x.z = __ldg(p + 2);
        if (c + 3 < D) x.w = __ldg(p + 3);
      }
    }
    uint2 o;
    o.x = pack2(x.x, x.y);
    o.y = pack2(x.z, x.w);
    *reinterpret_cast<uint2*>(T + r * (DP + 8) + c) = o;
  }
}

template <int DP>
constexpr size_t mfwd_smem() {
  return sizeof(bf16) * 5 * kB * (DP + 8);
}

// Forward (mma): Y (kStats false) or lse and delta = rowsum(dY * Y) for every row of the padded layout
// ([B*Hq][Sp], rows past S included: finite values, masked in the backward). Q from float32; K, V from a.kb, a.vb.
// Grid (query tiles, B*Hq).
template <int DP, bool kStats>
__global__ void __launch_bounds__(kThreads) mflash_fwd(FlashArgs a) {
  constexpr int LDH = DP + 8, TILE = kB * LDH;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + TILE;      // [2][TILE]
  bf16* sV = sK + 2 * TILE;  // [2][TILE]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane & 3, g = lane >> 2;
  const int64_t S = a.S, L = a.L;
  const int D = a.D;
  const int nqt = static_cast<int>((S + kB - 1) / kB);
  const int qt = a.causal ? nqt - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x);  // long first
  const int64_t q0 = int64_t{qt} * kB;
  const int64_t bh = blockIdx.y;
  const int64_t h = bh % a.Hq, b = bh / a.Hq;
  const int64_t bkv = b * (a.Hq / a.G) + h / a.G;
  const bf16* Kg = a.kb + bkv * a.Lp * DP;
  const bf16* Vg = a.vb + bkv * a.Lp * DP;
  const int64_t kend = a.causal ? (q0 + kB < L ? q0 + kB : L) : L;
  const int nk = static_cast<int>((kend + kB - 1) / kB);
  cp_tile<DP>(sK, Kg);
  cp_tile<DP>(sV, Vg);
  cp_commit();
  const int64_t qh0 = qhead(a, b, h), yh0 = yhead(a, b, h);
  load_tile_f32<DP>(sQ, a.q + qh0, a.qs_r, q0, S, D, a.vec);
  __syncthreads();
  uint32_t qf[DP / 16][4];
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) frag_a(qf[kk], sQ, LDH, warp * 16, kk * 16, lane);
  const int64_t i0 = q0 + warp * 16 + g, i1 = i0 + 8;
  float o[DP / 8][4];
#pragma unroll
  for (int n = 0; n < DP / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // l: this lane's part of the row sum
  for (int it = 0; it < nk; ++it) {
    const int buf = it & 1;
    const int64_t k0 = int64_t{it} * kB;
    if (it + 1 < nk) {
      cp_tile<DP>(sK + (buf ^ 1) * TILE, Kg + (k0 + kB) * DP);
      cp_tile<DP>(sV + (buf ^ 1) * TILE, Vg + (k0 + kB) * DP);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    float s[8][4];
    mma_a_bt<DP>(s, qf, sK + buf * TILE, lane);
    float mx0 = -INFINITY, mx1 = -INFINITY;
    const bool full = k0 + kB <= L && (!a.causal || k0 + kB - 1 <= q0);  // no key of the tile masked for any row
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = k0 + nt * 8 + 2 * t + (e & 1);
        const int64_t i = e < 2 ? i0 : i1;
        const bool ok = full || (j < L && (!a.causal || j <= i));
        const float v = ok ? s[nt][e] * a.scale_log2 : -INFINITY;
        s[nt][e] = v;
        if (e < 2) mx0 = fmaxf(mx0, v);
        else mx1 = fmaxf(mx1, v);
      }
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
    }
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float u0 = n0 == -INFINITY ? 0.0f : n0, u1 = n1 == -INFINITY ? 0.0f : n1;
    const float al0 = ex2(m0 - u0), al1 = ex2(m1 - u1);
    m0 = n0;
    m1 = n1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      s[nt][0] = ex2(s[nt][0] - u0);
      s[nt][1] = ex2(s[nt][1] - u0);
      s[nt][2] = ex2(s[nt][2] - u1);
      s[nt][3] = ex2(s[nt][3] - u1);
      sum0 += s[nt][0] + s[nt][1];
      sum1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * al0 + sum0;
    l1 = l1 * al1 + sum1;
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) {
      o[n][0] *= al0;
      o[n][1] *= al0;
      o[n][2] *= al1;
      o[n][3] *= al1;
    }
    mma_p_b<DP>(o, s, sV + buf * TILE, lane);
    __syncthreads();  // every warp is done with this buffer before the next iteration's copy refills it
  }
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, x);
    l1 += __shfl_xor_sync(0xffffffffu, l1, x);
  }
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  if constexpr (!kStats) {
    if (a.lse_out && t == 0) {  // scores were in the log2 domain: ln(sum e^s) = (m + log2 l) ln 2
      if (i0 < S) a.lse_out[bh * S + i0] = l0 > 0.0f ? (m0 + log2f(l0)) * kLn2 : INFINITY;
      if (i1 < S) a.lse_out[bh * S + i1] = l1 > 0.0f ? (m1 + log2f(l1)) * kLn2 : INFINITY;
    }
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * t + (e & 1);
        const int64_t i = e < 2 ? i0 : i1;
        if (c < D && i < S) a.y[yh0 + i * a.ys_r + c] = o[n][e] * (e < 2 ? inv0 : inv1);
      }
    }
  } else {
    float dd0 = 0.0f, dd1 = 0.0f;
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * t + (e & 1);
        const int64_t i = e < 2 ? i0 : i1;
        if (c < D && i < S) {
          const float x = __ldg(a.dy + yh0 + i * a.ys_r + c) * o[n][e];
          if (e < 2) dd0 += x;
          else dd1 += x;
        }
      }
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      dd0 += __shfl_xor_sync(0xffffffffu, dd0, x);
      dd1 += __shfl_xor_sync(0xffffffffu, dd1, x);
    }
    if (t == 0) {  // i0, i1 < Sp always
      a.lse[bh * a.Sp + i0] = l0 > 0.0f ? m0 + log2f(l0) : INFINITY;
      a.delta[bh * a.Sp + i0] = dd0 * inv0;
      a.lse[bh * a.Sp + i1] = l1 > 0.0f ? m1 + log2f(l1) : INFINITY;
      a.delta[bh * a.Sp + i1] = dd1 * inv1;
    }
  }
}

// The backward's row statistics from the forward's outputs (AttentionWithLse): lse in the log2 domain and
// delta = rowsum(dY * Y) for every row of the padded layout ([B*Hq][Sp]; rows past S get 0, masked in the backward).
// One warp per row.
__global__ void stats_from_forward(FlashArgs a, int64_t rows_padded) {
  const int64_t row = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows_padded) return;
  const int64_t bh = row / a.Sp, i = row % a.Sp;
  float dd = 0.0f;
  if (i < a.S) {
    const int64_t off = yhead(a, bh / a.Hq, bh % a.Hq) + i * a.ys_r;
    for (int c = lane; c < a.D; c += 32) dd += __ldg(a.dy + off + c) * __ldg(a.y_in + off + c);
  }
#pragma unroll
  for (int x = 16; x > 0; x >>= 1) dd += __shfl_xor_sync(0xffffffffu, dd, x);
  if (lane == 0) {
    a.delta[row] = i < a.S ? dd : 0.0f;
    a.lse[row] = i < a.S ? a.lse_in[bh * a.S + i] * kLog2e : 0.0f;
  }
}

template <int DP>
constexpr size_t mbwd_smem() {
  return sizeof(bf16) * (6 * kB * (DP + 8) + kB * LDT) + sizeof(float) * 4 * kB;
}

// Backward (mma), FlashAttention-2's single pass: one block per (key tile, b, kv head), looping over the group's
// query heads and their visible query tiles (Q, dY, lse, delta double-buffered with cp.async). Per query tile each
// warp (16 keys) forms S^T = K Q^T and dP^T = V dY^T, P^T = exp2(S^T scale log2e - lse), dS^T = P^T (dP^T - delta),
// then dV += P^T dY and dK += dS^T Q in registers; dS^T goes to shared memory (bf16) and each warp takes 16 query
// rows of dQ += dS K, added into the zeroed float32 dQ with atomics (float2 where aligned). The order in which the
// key tiles' contributions reach a dQ element is not fixed: dQ is not bitwise deterministic run to run (dK, dV are).
template <int DP>
__global__ void __launch_bounds__(kThreads) mflash_bwd(FlashArgs a) {
  constexpr int LDH = DP + 8, TILE = kB * LDH;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + TILE;
  bf16* sQ = sV + TILE;       // [2][TILE]
  bf16* sdO = sQ + 2 * TILE;  // [2][TILE]
  bf16* sdS = sdO + 2 * TILE;  // [kB keys][LDT]
  float* sLse = reinterpret_cast<float*>(sdS + kB * LDT);  // [2][kB]
  float* sDl = sLse + 2 * kB;                              // [2][kB]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int64_t S = a.S, L = a.L, Sp = a.Sp;
  const int D = a.D;
  const int64_t k0 = int64_t{blockIdx.x} * kB;
  const int64_t bkv = blockIdx.y;
  const int64_t Hkv = a.Hq / a.G;
  const int64_t b = bkv / Hkv, hk = bkv % Hkv;
  const int64_t qstart = a.causal ? k0 : 0;
  const int nq = qstart < S ? static_cast<int>((S - qstart + kB - 1) / kB) : 0;
  const int total = a.G * nq;
  auto issue = [&](int it, int buf) {
    const int64_t bh = b * a.Hq + hk * a.G + it / nq;
    const int64_t q0 = qstart + int64_t{it % nq} * kB;
    cp_tile<DP>(sQ + buf * TILE, a.qb + (bh * Sp + q0) * DP);
    cp_tile<DP>(sdO + buf * TILE, a.dob + (bh * Sp + q0) * DP);
    if (threadIdx.x < kB / 4) {
      cp16(sLse + buf * kB + threadIdx.x * 4, a.lse + bh * Sp + q0 + threadIdx.x * 4);
    } else if (threadIdx.x < kB / 2) {
      const int x = threadIdx.x - kB / 4;
      cp16(sDl + buf * kB + x * 4, a.delta + bh * Sp + q0 + x * 4);
    }
  };
  cp_tile<DP>(sK, a.kb + (bkv * a.Lp + k0) * DP);
  cp_tile<DP>(sV, a.vb + (bkv * a.Lp + k0) * DP);
  if (total > 0) issue(0, 0);
  cp_commit();
  const int64_t j0 = k0 + warp * 16 + g, j1 = j0 + 8;
  const int64_t kh0 = khead(a, b, hk);
  float dk[DP / 8][4], dv[DP / 8][4];
#pragma unroll
  for (int n = 0; n < DP / 8; ++n) {
    dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
    dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
  }
  for (int it = 0; it < total; ++it) {
    const int buf = it & 1;
    if (it + 1 < total) {
      issue(it + 1, buf ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const int64_t q0 = qstart + int64_t{it % nq} * kB;
    const bf16* tQ = sQ + buf * TILE;
    const bf16* tdO = sdO + buf * TILE;
    const float* lse = sLse + buf * kB;
    const float* dl = sDl + buf * kB;
    float s[8][4], dp[8][4];
    {
      uint32_t f[DP / 16][4];
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk) frag_a(f[kk], sK, LDH, warp * 16, kk * 16, lane);
      mma_a_bt<DP>(s, f, tQ, lane);
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk) frag_a(f[kk], sV, LDH, warp * 16, kk * 16, lane);
      mma_a_bt<DP>(dp, f, tdO, lane);
    }
    const bool full = q0 + kB <= S && k0 + kB <= L && (!a.causal || k0 + kB - 1 <= q0);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t + (e & 1);
        const int64_t i = q0 + c;
        const int64_t j = e < 2 ? j0 : j1;
        const bool ok = full || (i < S && j < L && (!a.causal || j <= i));
        const float p = ok ? ex2(s[nt][e] * a.scale_log2 - lse[c]) : 0.0f;
        s[nt][e] = p;
        dp[nt][e] = ok ? p * (dp[nt][e] - dl[c]) : 0.0f;
      }
    }
    mma_p_b<DP>(dv, s, tdO, lane);
    mma_p_b<DP>(dk, dp, tQ, lane);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g) * LDT + nt * 8 + 2 * t) = pack2(dp[nt][0], dp[nt][1]);
      *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g + 8) * LDT + nt * 8 + 2 * t) = pack2(dp[nt][2], dp[nt][3]);
    }
    __syncthreads();
    // dQ rows q0 + warp*16 .. +15 += dS (16 x 64 keys, from the stored dS^T) K (64 x DP), 64 columns at a time.
    const int64_t i0 = q0 + warp * 16 + g, i1 = i0 + 8;
    float* const dqh = a.dq + qhead(a, b, hk * a.G + it / nq);
#pragma unroll
    for (int c0 = 0; c0 < DP; c0 += 64) {
      float acc[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t fa[4];
        frag_a_t(fa, sdS, LDT, warp * 16, kk * 16, lane);
#pragma unroll
        for (int nt = 0; nt < 8; nt += 2) {
          uint32_t fb[4];
          frag_b_kn(fb, sK, LDH, c0 + nt * 8, kk * 16, lane);
          mma16816(acc[nt], fa, fb[0], fb[1]);
          mma16816(acc[nt + 1], fa, fb[2], fb[3]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int c = c0 + nt * 8 + 2 * t;
        if (c >= D) continue;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int64_t i = hr ? i1 : i0;
          if (i >= S) continue;
          float* p = dqh + i * a.qs_r + c;
          const float x0 = acc[nt][2 * hr] * a.scale, x1 = acc[nt][2 * hr + 1] * a.scale;
          if (a.vec2) {
            atomicAdd(reinterpret_cast<float2*>(p), make_float2(x0, x1));
          } else {
            atomicAdd(p, x0);
            if (c + 1 < D) atomicAdd(p + 1, x1);
          }
        }
      }
    }
    __syncthreads();  // sdS and this buffer are free for the next iteration
  }
#pragma unroll
  for (int n = 0; n < DP / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = n * 8 + 2 * t + (e & 1);
      const int64_t j = e < 2 ? j0 : j1;
      if (c < D && j < L) {
        a.dv[kh0 + j * a.ks_r + c] = dv[n][e];
        a.dk[kh0 + j * a.ks_r + c] = dk[n][e] * a.scale;
      }
    }
  }
}

// Opts a kernel into `bytes` of dynamic shared memory (once per kernel).
template <class K>
bool allow_smem(K kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return true;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) ==
         cudaSuccess;
}

FlashArgs args_of(const AttentionDims& d, const float* q, const float* k, const float* v, const float* dy) {
  FlashArgs a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.dy = dy;
  a.S = d.q_len;
  a.L = d.kv_len;
  a.Hq = static_cast<int>(d.q_heads);
  a.G = static_cast<int>(d.q_heads / d.kv_heads);
  a.D = static_cast<int>(d.head_dim);
  a.scale = d.scale;
  a.scale_log2 = d.scale * kLog2e;
  a.causal = d.causal;
  a.seq_major = d.seq_major;
  const int64_t D = d.head_dim, Hq = d.q_heads, Hkv = d.kv_heads, S = d.q_len, L = d.kv_len;
  if (d.seq_major) {
    a.qs_b = S * Hq * D, a.qs_h = D, a.qs_r = Hq * D;
    a.ks_b = L * Hkv * D, a.ks_h = D, a.ks_r = Hkv * D;
  } else {
    a.qs_b = Hq * S * D, a.qs_h = S * D, a.qs_r = D;
    a.ks_b = Hkv * L * D, a.ks_h = L * D, a.ks_r = D;
  }
  a.ys_b = a.qs_b, a.ys_h = a.qs_h, a.ys_r = a.qs_r;
  a.dq_rows = 1, a.dq_width = a.dq_pitch = Hq * S * D * d.batch;  // one contiguous block, any layout
  // Every stride is a multiple of D, so D % 4 == 0 keeps rows 16-byte aligned in both layouts.
  a.vec = d.head_dim % 4 == 0 && detail::aligned16(q) && detail::aligned16(k) && detail::aligned16(v) &&
          (!dy || detail::aligned16(dy));
  return a;
}

// The wmma kernels (GALVATRON_CUDA_FLASH_WMMA=1) or the mma.sync ones (default).
bool use_wmma() {
  const char* e = std::getenv("GALVATRON_CUDA_FLASH_WMMA");
  return e && e[0] == '1';
}

// One workspace() carve: regions rounded to 256 bytes.
struct Carve {
  char* base;
  size_t off = 0;
  template <class T>
  T* take(int64_t n) {
    T* p = reinterpret_cast<T*>(base + off);
    off += (static_cast<size_t>(n) * sizeof(T) + 255) / 256 * 256;
    return p;
  }
};

// src in the query layout (Q), the key/value layout (K, V) or the output layout (dY) of a.
enum class Layout { kQ, kKV, kY };
template <int DP>
bool convert(const FlashArgs& a, Layout layout, const float* src, const bf16* dst, int64_t heads, int64_t rows,
             int64_t rows_p, int D) {
  const bool q = layout != Layout::kKV;
  const int64_t per_head = rows_p * (DP / 8);
  const int64_t want = (per_head + 255) / 256;
  const int64_t cap = std::max<int64_t>(1, int64_t{detail::num_sms()} * 16 / std::max<int64_t>(heads, 1));
  const unsigned bx = static_cast<unsigned>(std::max<int64_t>(1, std::min(want, cap)));
  const bool vec = D % 4 == 0 && detail::aligned16(src);
  const int H = q ? a.Hq : a.Hq / a.G;
  to_bf16_padded<DP><<<dim3(bx, static_cast<unsigned>(heads)), 256, 0, launch_stream()>>>(
      src, const_cast<bf16*>(dst), static_cast<int>(rows), static_cast<int>(rows_p), D, vec, H,
      layout == Layout::kQ   ? a.qs_b
      : layout == Layout::kY ? a.ys_b
                             : a.ks_b,
      layout == Layout::kQ   ? a.qs_h
      : layout == Layout::kY ? a.ys_h
                             : a.ks_h,
      layout == Layout::kQ   ? a.qs_r
      : layout == Layout::kY ? a.ys_r
                             : a.ks_r);
  return detail::launched();
}

// The mma forward (Y, or lse and delta when stats) on a.kb, a.vb.
template <int DP>
bool mma_forward(const AttentionDims& d, const FlashArgs& a, bool stats) {
  const dim3 grid(static_cast<unsigned>((d.q_len + kB - 1) / kB), static_cast<unsigned>(d.batch * d.q_heads));
  constexpr size_t bytes = mfwd_smem<DP>();
  if (stats) {
    static const bool ok = allow_smem(mflash_fwd<DP, true>, bytes);
    if (!ok) return false;
    mflash_fwd<DP, true><<<grid, kThreads, bytes, launch_stream()>>>(a);
  } else {
    static const bool ok = allow_smem(mflash_fwd<DP, false>, bytes);
    if (!ok) return false;
    mflash_fwd<DP, false><<<grid, kThreads, bytes, launch_stream()>>>(a);
  }
  return detail::launched();
}

template <int DP>
bool forward(const AttentionDims& d, FlashArgs a) {
  const dim3 grid(static_cast<unsigned>((d.q_len + kB - 1) / kB), static_cast<unsigned>(d.batch * d.q_heads));
  if (use_wmma() && !a.seq_major && !a.lse_out) {  // the wmma kernels: head-major, no lse output
    constexpr size_t bytes = fwd_smem<DP>();
    static const bool ok = allow_smem(flash_fwd<DP, false>, bytes);
    if (!ok) return false;
    flash_fwd<DP, false><<<grid, kThreads, bytes, launch_stream()>>>(a);
    return detail::launched();
  }
  const int64_t kvh = d.batch * d.kv_heads;
  a.Lp = (d.kv_len + kB - 1) / kB * kB;
  char* ws = static_cast<char*>(workspace(2 * ((static_cast<size_t>(kvh * a.Lp * DP) * 2 + 255) / 256 * 256)));
  if (!ws) return false;
  Carve cv{ws};
  a.kb = cv.take<bf16>(kvh * a.Lp * DP);
  a.vb = cv.take<bf16>(kvh * a.Lp * DP);
  if (!convert<DP>(a, Layout::kKV, a.k, a.kb, kvh, d.kv_len, a.Lp, a.D) ||
      !convert<DP>(a, Layout::kKV, a.v, a.vb, kvh, d.kv_len, a.Lp, a.D)) {
    return false;
  }
  return mma_forward<DP>(d, a, false);
}

template <int DP>
bool backward(const AttentionDims& d, FlashArgs a) {
  const dim3 gq(static_cast<unsigned>((d.q_len + kB - 1) / kB), static_cast<unsigned>(d.batch * d.q_heads));
  const dim3 gk(static_cast<unsigned>((d.kv_len + kB - 1) / kB), static_cast<unsigned>(d.batch * d.kv_heads));
  const int64_t qh = d.batch * d.q_heads, kvh = d.batch * d.kv_heads;
  if (use_wmma() && !a.seq_major && !a.y_in) {
    const int64_t rows = qh * d.q_len;
    const size_t half = (static_cast<size_t>(rows) * sizeof(float) + 255) / 256 * 256;
    char* ws = static_cast<char*>(workspace(2 * half));
    if (!ws) return false;
    a.lse = reinterpret_cast<float*>(ws);
    a.delta = reinterpret_cast<float*>(ws + half);
    static const bool ok0 = allow_smem(flash_fwd<DP, true>, fwd_smem<DP>());
    static const bool ok1 = allow_smem(flash_bwd_dq<DP>, dq_smem<DP>());
    static const bool ok2 = allow_smem(flash_bwd_dkdv<DP>, dkdv_smem<DP>());
    if (!ok0 || !ok1 || !ok2) return false;
    flash_fwd<DP, true><<<gq, kThreads, fwd_smem<DP>(), launch_stream()>>>(a);
    if (!detail::launched()) return false;
    flash_bwd_dq<DP><<<gq, kThreads, dq_smem<DP>(), launch_stream()>>>(a);
    if (!detail::launched()) return false;
    flash_bwd_dkdv<DP><<<gk, kThreads, dkdv_smem<DP>(), launch_stream()>>>(a);
    return detail::launched();
  }
  a.Sp = (d.q_len + kB - 1) / kB * kB;
  a.Lp = (d.kv_len + kB - 1) / kB * kB;
  auto r256 = [](size_t b) { return (b + 255) / 256 * 256; };
  const size_t bytes = 2 * r256(static_cast<size_t>(qh * a.Sp) * 4) + 2 * r256(static_cast<size_t>(qh * a.Sp * DP) * 2) +
                       2 * r256(static_cast<size_t>(kvh * a.Lp * DP) * 2);
  char* ws = static_cast<char*>(workspace(bytes));
  if (!ws) return false;
  Carve cv{ws};
  a.lse = cv.take<float>(qh * a.Sp);
  a.delta = cv.take<float>(qh * a.Sp);
  a.qb = cv.take<bf16>(qh * a.Sp * DP);
  a.dob = cv.take<bf16>(qh * a.Sp * DP);
  a.kb = cv.take<bf16>(kvh * a.Lp * DP);
  a.vb = cv.take<bf16>(kvh * a.Lp * DP);
  if (!convert<DP>(a, Layout::kQ, a.q, a.qb, qh, d.q_len, a.Sp, a.D) ||
      !convert<DP>(a, Layout::kY, a.dy, a.dob, qh, d.q_len, a.Sp, a.D) ||
      !convert<DP>(a, Layout::kKV, a.k, a.kb, kvh, d.kv_len, a.Lp, a.D) ||
      !convert<DP>(a, Layout::kKV, a.v, a.vb, kvh, d.kv_len, a.Lp, a.D)) {
    return false;
  }
  if (a.y_in && a.lse_in) {
    const int64_t rows = qh * a.Sp;
    stats_from_forward<<<static_cast<unsigned>((rows * 32 + 255) / 256), 256, 0, launch_stream()>>>(a, rows);
    if (!detail::launched()) return false;
  } else if (!mma_forward<DP>(d, a, true)) {
    return false;
  }
  if (cudaMemset2DAsync(a.dq, sizeof(float) * a.dq_pitch, 0, sizeof(float) * a.dq_width, a.dq_rows, launch_stream()) !=
      cudaSuccess) {
    return false;
  }
  static const bool ok = allow_smem(mflash_bwd<DP>, mbwd_smem<DP>());
  if (!ok) return false;
  mflash_bwd<DP><<<gk, kThreads, mbwd_smem<DP>(), launch_stream()>>>(a);
  return detail::launched();
}

}  // namespace

int64_t flash_attention_calls() { return g_flash_calls.load(); }

bool flash_attention_enabled() {
  const char* env = std::getenv("GALVATRON_CUDA_FLASH");
  return !(env && env[0] == '0');
}

bool flash_attention_eligible(const AttentionDims& d, bool backward) {
  const char* env = std::getenv("GALVATRON_CUDA_FLASH");
  if (!flash_attention_enabled()) return false;
  // GALVATRON_CUDA_FLASH=fwd: the forward only (the backward on v1).
  if (backward && env && std::strcmp(env, "fwd") == 0) return false;
  if (math_mode() != MathMode::kBf16 || d.mask != nullptr) return false;
  if (d.head_dim != d.v_head_dim || d.head_dim < 1 || d.head_dim > 128) return false;
  if (d.batch <= 0 || d.q_heads <= 0 || d.kv_heads <= 0 || d.q_len <= 0 || d.kv_len <= 0) return false;
  if (d.q_heads % d.kv_heads != 0 || d.q_heads > INT32_MAX) return false;
  if (d.q_len > (int64_t{1} << 26) || d.kv_len > (int64_t{1} << 26)) return false;  // 32-bit row math
  if (d.batch * d.q_heads > 65535 || (d.q_len + kB - 1) / kB > INT32_MAX || (d.kv_len + kB - 1) / kB > INT32_MAX) {
    return false;
  }
  return true;
}

bool flash_attention_f32(const AttentionDims& d, const float* q, const float* k, const float* v, float* y,
                         float* lse) {
  FlashArgs a = args_of(d, q, k, v, nullptr);
  a.y = y;
  a.lse_out = lse;
  const bool ok = d.head_dim <= 64 ? forward<64>(d, a) : forward<128>(d, a);
  if (ok) ++g_flash_calls;
  return ok;
}

bool flash_attention_grad_f32(const AttentionDims& d, const float* q, const float* k, const float* v, const float* dy,
                              float* dq, float* dk, float* dv, const float* y, const float* lse) {
  FlashArgs a = args_of(d, q, k, v, dy);
  a.y_in = y;
  a.lse_in = lse;
  a.dq = dq;
  a.vec2 = d.head_dim % 2 == 0 && reinterpret_cast<uintptr_t>(dq) % 8 == 0;
  a.dk = dk;
  a.dv = dv;
  const bool ok = d.head_dim <= 64 ? backward<64>(d, a) : backward<128>(d, a);
  if (ok) ++g_flash_calls;
  return ok;
}

namespace {

// FlashArgs over one packed [B, S, 3 * H * D] tensor: Q, K, V (or dQ, dK, dV) side by side in each row.
FlashArgs packed_args(const AttentionDims& d, const float* qkv, const float* dy) {
  const int64_t hd = d.q_heads * d.head_dim;
  FlashArgs a = args_of(d, qkv, qkv + hd, qkv + 2 * hd, dy);
  a.qs_b = a.ks_b = d.q_len * 3 * hd;
  a.qs_r = a.ks_r = 3 * hd;
  a.qs_h = a.ks_h = d.head_dim;
  a.ys_b = d.q_len * hd, a.ys_h = d.head_dim, a.ys_r = hd;
  a.dq_rows = d.batch * d.q_len, a.dq_width = hd, a.dq_pitch = 3 * hd;  // dQ's third of each row
  return a;
}

}  // namespace

bool flash_attention_packed_f32(const AttentionDims& d, const float* qkv, float* y, float* lse) {
  FlashArgs a = packed_args(d, qkv, nullptr);
  a.y = y;
  a.lse_out = lse;
  const bool ok = d.head_dim <= 64 ? forward<64>(d, a) : forward<128>(d, a);
  if (ok) ++g_flash_calls;
  return ok;
}

bool flash_attention_packed_grad_f32(const AttentionDims& d, const float* qkv, const float* dy, const float* y,
                                     const float* lse, float* dqkv) {
  FlashArgs a = packed_args(d, qkv, dy);
  const int64_t hd = d.q_heads * d.head_dim;
  a.y_in = y;
  a.lse_in = lse;
  a.dq = dqkv;
  a.dk = dqkv + hd;
  a.dv = dqkv + 2 * hd;
  a.vec2 = d.head_dim % 2 == 0 && reinterpret_cast<uintptr_t>(dqkv) % 8 == 0;
  const bool ok = d.head_dim <= 64 ? backward<64>(d, a) : backward<128>(d, a);
  if (ok) ++g_flash_calls;
  return ok;
}

}  // namespace gv::cuda

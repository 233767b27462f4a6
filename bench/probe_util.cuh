// Shared by the bench/*_probe.cu microbenchmarks (not part of the product): error checks, and the optimizer-update
// kernel with galvatron's split-AdamW byte pattern (26 bytes per parameter: bf16 gradient, float32 moments, the master
// as two 16-bit halves); its arithmetic is AdamW's, its bytes are what the probes measure.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
#define CB(x)                                                                                \
  do {                                                                                       \
    cublasStatus_t s_ = (x);                                                                 \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                       \
      std::fprintf(stderr, "%s:%d %s: cublas status %d\n", __FILE__, __LINE__, #x, (int)s_); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

// per_thread > 0: each thread updates that many quads (strided by the block) and the block exits; 0: a grid-stride
// loop.
__global__ void update_kernel(uint2* hi, uint2* lo, const uint2* g, float4* m, float4* v, int64_t quads, float lr,
                              int per_thread) {
  const int64_t begin = per_thread > 0 ? blockIdx.x * (int64_t)blockDim.x * per_thread + threadIdx.x
                                       : blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t end =
      per_thread > 0
          ? (begin + (int64_t)blockDim.x * per_thread < quads ? begin + (int64_t)blockDim.x * per_thread : quads)
          : quads;
  const int64_t stride = per_thread > 0 ? blockDim.x : (int64_t)gridDim.x * blockDim.x;
  for (int64_t q = begin; q < end; q += stride) {
    uint2 h = hi[q], l = lo[q], gg = g[q];
    float4 mm = m[q], vv = v[q];
    float p[4], gr[4], mv[4] = {mm.x, mm.y, mm.z, mm.w}, vw[4] = {vv.x, vv.y, vv.z, vv.w};
    uint32_t hs[4] = {h.x & 0xffffu, h.x >> 16, h.y & 0xffffu, h.y >> 16};
    uint32_t ls[4] = {l.x & 0xffffu, l.x >> 16, l.y & 0xffffu, l.y >> 16};
    uint32_t gs[4] = {gg.x << 16, gg.x & 0xffff0000u, gg.y << 16, gg.y & 0xffff0000u};
    uint32_t oh[4], ol[4];
    for (int i = 0; i < 4; ++i) {
      p[i] = __uint_as_float((hs[i] << 16) | ls[i]);
      gr[i] = __uint_as_float(gs[i]);
      mv[i] = 0.9f * mv[i] + 0.1f * gr[i];
      vw[i] = 0.999f * vw[i] + 0.001f * gr[i] * gr[i];
      p[i] = p[i] * (1.0f - lr * 0.01f) - lr * mv[i] / (sqrtf(vw[i]) + 1e-8f);
      const uint32_t b = __float_as_uint(p[i]);
      oh[i] = b >> 16;
      ol[i] = b & 0xffffu;
    }
    hi[q] = make_uint2(oh[0] | (oh[1] << 16), oh[2] | (oh[3] << 16));
    lo[q] = make_uint2(ol[0] | (ol[1] << 16), ol[2] | (ol[3] << 16));
    m[q] = make_float4(mv[0], mv[1], mv[2], mv[3]);
    v[q] = make_float4(vw[0], vw[1], vw[2], vw[3]);
  }
}

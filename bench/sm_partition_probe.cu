// Probe: does splitting the GPU's SMs between the backward's products and the optimizer's memory-bound updates (CUDA
// green contexts) shorten a backward-like sequence, against both on every SM as galvatron runs them today (the updates
// on a low-priority side stream, bench/cuda_notes.md 47)? Not part of the product; bench/cuda_notes.md 60 has the
// numbers.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I. -o /tmp/sm_probe bench/sm_partition_probe.cu -lcublas -lcuda
//   /tmp/sm_probe [layers=24] [side SM counts...=8 16 24 32]
//
// One "layer" is gpt-1.5b's backward products at batch 4 x 1024 (bf16 operands, float32 accumulation: the dX and dW
// products of the MLP, QKV and projection) and one update of the layer's 29.5 M parameters with galvatron's split
// AdamW byte pattern (26 bytes per parameter: bf16 gradient, float32 moments, the master as two 16-bit halves). The
// update of layer l waits for layer l's products, as in the step.
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/probe_util.cuh"

#define CU(x)                                                                        \
  do {                                                                               \
    CUresult r_ = (x);                                                               \
    if (r_ != CUDA_SUCCESS) {                                                        \
      const char* s_ = nullptr;                                                      \
      cuGetErrorString(r_, &s_);                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, s_ ? s_ : "?"); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)
namespace {

constexpr int64_t kLayerParams = 29'491'200;  // gpt-1.5b: 12 * 1600^2 weights + biases (rounded to quads)

// The plain master's pattern for comparison (28 bytes per parameter: float32 master read and written, its bf16 copy
// written, bf16 gradient, float32 moments).
__global__ void plain_update_kernel(float4* p, uint2* copy, const uint2* g, float4* m, float4* v, int64_t quads,
                                    float lr) {
  for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < quads; q += (int64_t)gridDim.x * blockDim.x) {
    const uint2 gg = g[q];
    float4 pp = p[q], mm = m[q], vv = v[q];
    float* pv = &pp.x;
    float* mv = &mm.x;
    float* vw = &vv.x;
    const uint32_t gs[4] = {gg.x << 16, gg.x & 0xffff0000u, gg.y << 16, gg.y & 0xffff0000u};
    uint32_t c[4];
    for (int i = 0; i < 4; ++i) {
      const float gr = __uint_as_float(gs[i]);
      mv[i] = 0.9f * mv[i] + 0.1f * gr;
      vw[i] = 0.999f * vw[i] + 0.001f * gr * gr;
      pv[i] = pv[i] * (1.0f - lr * 0.01f) - lr * mv[i] / (sqrtf(vw[i]) + 1e-8f);
      c[i] = __float_as_uint(pv[i]) >> 16;
    }
    p[q] = pp;
    copy[q] = make_uint2(c[0] | (c[1] << 16), c[2] | (c[3] << 16));
    m[q] = mm;
    v[q] = vv;
  }
}

struct Gemm {
  int m, n, k;  // C [m, n] = A [m, k] B [k, n], row-major (cuBLAS: C^T = B^T A^T)
};
// gpt-1.5b's backward products of one layer at 4096 tokens (dX of fc2 through the GELU, dW of fc2, dX and dW of fc1,
// projection, QKV).
const Gemm kLayer[] = {{4096, 6400, 1600}, {6400, 1600, 4096}, {4096, 1600, 6400}, {1600, 6400, 4096},
                       {4096, 1600, 1600}, {1600, 1600, 4096}, {4096, 1600, 4800}, {1600, 4800, 4096}};

struct Buffers {
  __nv_bfloat16 *a, *b, *c;
  uint2 *hi, *lo, *g;
  float4 *m, *v;
  int64_t slots;  // layers' worth of update state
};

void gemm(cublasHandle_t h, const Buffers& bf, const Gemm& s) {
  const float one = 1.0f, zero = 0.0f;
  CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, s.n, s.m, s.k, &one, bf.b, CUDA_R_16BF, s.n, bf.a, CUDA_R_16BF, s.k,
                  &zero, bf.c, CUDA_R_16BF, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void update(cudaStream_t st, const Buffers& bf, int layer, int blocks) {
  const int64_t quads = kLayerParams / 4, off = (layer % bf.slots) * quads;
  update_kernel<<<blocks, 256, 0, st>>>(bf.hi + off, bf.lo + off, bf.g + off, bf.m + off, bf.v + off, quads, 1e-4f, 0);
  CK(cudaGetLastError());
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A timed run: `body` issues work, then `sync` waits for it; the best of `reps`.
template <typename F, typename S>
double timed(F&& body, S&& sync, int reps = 5) {
  body();
  sync();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_ms();
    body();
    sync();
    best = std::min(best, now_ms() - t0);
  }
  return best;
}

struct Lane {  // a stream and its cuBLAS handle, in a green context or the primary one
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  CUcontext ctx = nullptr;
  int sms = 0;
};

Lane green_lane(const CUdevResource& res, int priority) {
  Lane l;
  CUdevResourceDesc desc;
  CU(cuDevResourceGenerateDesc(&desc, const_cast<CUdevResource*>(&res), 1));
  CUgreenCtx g;
  CU(cuGreenCtxCreate(&g, desc, 0, CU_GREEN_CTX_DEFAULT_STREAM));
  CU(cuCtxFromGreenCtx(&l.ctx, g));
  CUstream s;
  CU(cuGreenCtxStreamCreate(&s, g, CU_STREAM_NON_BLOCKING, priority));
  l.stream = reinterpret_cast<cudaStream_t>(s);
  l.sms = static_cast<int>(res.sm.smCount);
  CU(cuCtxPushCurrent(l.ctx));
  CB(cublasCreate(&l.blas));
  CB(cublasSetStream(l.blas, l.stream));
  CB(cublasSetSmCountTarget(l.blas, l.sms));
  CU(cuCtxPopCurrent(nullptr));
  return l;
}

// The backward-like sequence: layer l's products on `main`, then its update on `side` after an event.
double backward(const Lane& main, const Lane& side, const Buffers& bf, int layers, int side_blocks, bool updates,
                bool products) {
  std::vector<cudaEvent_t> ev(layers);
  if (main.ctx) CU(cuCtxPushCurrent(main.ctx));
  for (auto& e : ev) CK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  if (main.ctx) CU(cuCtxPopCurrent(nullptr));
  const auto sync = [&] {
    CK(cudaStreamSynchronize(main.stream));
    CK(cudaStreamSynchronize(side.stream));
  };
  const double ms = timed(
      [&] {
        for (int l = 0; l < layers; ++l) {
          if (products) {
            if (main.ctx) CU(cuCtxPushCurrent(main.ctx));
            for (const Gemm& s : kLayer) gemm(main.blas, bf, s);
            CK(cudaEventRecord(ev[l], main.stream));
            if (main.ctx) CU(cuCtxPopCurrent(nullptr));
          }
          if (updates) {
            if (side.ctx) CU(cuCtxPushCurrent(side.ctx));
            if (products) CK(cudaStreamWaitEvent(side.stream, ev[l], 0));
            update(side.stream, bf, l, side_blocks);
            if (side.ctx) CU(cuCtxPopCurrent(nullptr));
          }
        }
      },
      sync);
  for (auto& e : ev) CK(cudaEventDestroy(e));
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  const int layers = argc > 1 ? std::atoi(argv[1]) : 24;
  std::vector<int> sides;
  for (int i = 2; i < argc; ++i) sides.push_back(std::atoi(argv[i]));
  if (sides.empty()) sides = {8, 16, 24, 32};
  CK(cudaSetDevice(0));
  CK(cudaFree(nullptr));
  CU(cuInit(0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;

  Buffers bf;
  bf.slots = 8;
  const int64_t q = kLayerParams / 4 * bf.slots;
  CK(cudaMalloc(&bf.a, 6400ll * 4800 * 2));
  CK(cudaMalloc(&bf.b, 6400ll * 4800 * 2));
  CK(cudaMalloc(&bf.c, 6400ll * 4800 * 2));
  CK(cudaMemset(bf.a, 0, 6400ll * 4800 * 2));
  CK(cudaMemset(bf.b, 0, 6400ll * 4800 * 2));
  CK(cudaMalloc(&bf.hi, q * 16));  // also the plain kernel's float32 master
  CK(cudaMalloc(&bf.lo, q * 8));
  CK(cudaMalloc(&bf.g, q * 8));
  CK(cudaMalloc(&bf.m, q * 16));
  CK(cudaMalloc(&bf.v, q * 16));
  CK(cudaMemset(bf.hi, 0, q * 16));
  CK(cudaMemset(bf.lo, 0, q * 8));
  CK(cudaMemset(bf.g, 0, q * 8));
  CK(cudaMemset(bf.m, 0, q * 16));
  CK(cudaMemset(bf.v, 0, q * 16));

  int lo_prio, hi_prio;
  CK(cudaDeviceGetStreamPriorityRange(&lo_prio, &hi_prio));
  Lane full_main, full_side;
  CK(cudaStreamCreateWithPriority(&full_main.stream, cudaStreamNonBlocking, hi_prio));
  CK(cudaStreamCreateWithPriority(&full_side.stream, cudaStreamNonBlocking, lo_prio));
  CB(cublasCreate(&full_main.blas));
  CB(cublasSetStream(full_main.blas, full_main.stream));
  full_main.sms = full_side.sms = sms;
  const int full_blocks = sms * 8;
  const double gb = 26.0 * kLayerParams * layers / 1e9;

  std::printf(
      "%s, %d SMs; %d layers: products of one layer %.1f GFLOP, updates %.2f GB in all\n", prop.name, sms, layers,
      2e-9 *
          [] {
            double f = 0;
            for (const Gemm& s : kLayer) f += 1.0 * s.m * s.n * s.k;
            return f;
          }(),
      gb);
  const double prod = backward(full_main, full_side, bf, layers, full_blocks, false, true);
  const double upd = backward(full_main, full_side, bf, layers, full_blocks, true, false);
  const double both = backward(full_main, full_side, bf, layers, full_blocks, true, true);
  const double serial = backward(full_main, full_main, bf, layers, full_blocks, true, true);
  {  // The two byte patterns alone on every SM, over the same parameters.
    const int64_t quads = kLayerParams / 4 * bf.slots;
    const auto sync = [&] { CK(cudaStreamSynchronize(full_main.stream)); };
    const double split = timed(
        [&] {
          update_kernel<<<full_blocks, 256, 0, full_main.stream>>>(bf.hi, bf.lo, bf.g, bf.m, bf.v, quads, 1e-4f, 0);
        },
        sync);
    const double plain = timed(
        [&] {
          plain_update_kernel<<<full_blocks, 256, 0, full_main.stream>>>(reinterpret_cast<float4*>(bf.hi), bf.lo, bf.g,
                                                                         bf.m, bf.v, quads, 1e-4f);
        },
        sync);
    const double params = 4.0 * quads;
    std::printf(
        "updates alone over %.0f M parameters: split (26 B) %.3f ms, %.2f TB/s; plain (28 B) %.3f ms, %.2f TB/s\n",
        params / 1e6, split, 26 * params / split / 1e9, plain, 28 * params / plain / 1e9);
  }
  std::printf("all SMs: products %.2f ms, updates %.2f ms (%.2f TB/s), sum %.2f; one stream %.2f; side stream %.2f\n",
              prod, upd, gb / upd, prod + upd, serial, both);

  CUdevice dev;
  CU(cuDeviceGet(&dev, 0));
  CUdevResource all;
  CU(cuDeviceGetDevResource(dev, &all, CU_DEV_RESOURCE_TYPE_SM));
  std::printf("green contexts: min partition %u SMs, alignment %u\n", all.sm.minSmPartitionSize,
              all.sm.smCoscheduledAlignment);
  for (int side_sms : sides) {
    CUdevResource part, rest;
    unsigned groups = 1;
    CU(cuDevSmResourceSplitByCount(&part, &groups, &all, &rest, 0, side_sms));
    Lane gm = green_lane(rest, hi_prio), gs = green_lane(part, lo_prio);
    const double gprod = backward(gm, gs, bf, layers, gs.sms * 8, false, true);
    const double gupd = backward(gm, gs, bf, layers, gs.sms * 8, true, false);
    const double gboth = backward(gm, gs, bf, layers, gs.sms * 8, true, true);
    // The updates on the small partition, the products on every SM (no partition for them).
    const double mixed = backward(full_main, gs, bf, layers, gs.sms * 8, true, true);
    std::printf(
        "side %3d SMs / main %3d: products %.2f ms, updates %.2f ms (%.2f TB/s); together %.2f (vs side stream %.2f: "
        "%+.2f); products on all SMs beside %.2f\n",
        gs.sms, gm.sms, gprod, gupd, gb / gupd, gboth, both, gboth - both, mixed);
  }
  return 0;
}

// Probe: do the backward's weight-gradient products (dW) on a second compute stream, beside the input-gradient
// chain (dX, the norms' gradients), shorten a gpt-1.5b-like backward, against everything on one stream as galvatron
// runs it today? Not part of the product; bench/cuda_notes.md has the numbers.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I. -o /tmp/wgrad_probe bench/wgrad_stream_probe.cu -lcublas
//   /tmp/wgrad_probe [layers=24] [reps=10]
//
// One "layer" is gpt-1.5b's backward at batch 4 x 1024 in the training graph's order: a LayerNorm-gradient-like
// memory pass (118 MB), fc2's dX and dW, fc1's dX and dW, a second norm pass, the projection's dX and dW, a
// stand-in for the attention's backward (batched products of its size), the QKV product's dX and dW; then the layer's
// update (galvatron's split AdamW byte pattern, 26 bytes per parameter) on a low-priority stream, after the layer's
// products. Operands hold random values (products of zeros run at a higher clock). Every variant is captured in one
// CUDA graph and replayed; medians of `reps` replays.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/probe_util.cuh"

namespace {

constexpr int64_t kLayerParams = 29'491'200;
constexpr int64_t kTokens = 4096, kHidden = 1600;

__global__ void fill_random(__nv_bfloat16* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16((h & 0xffff) / 32768.0f - 1.0f);
  }
}

// A LayerNormalizationGrad-like pass: reads x, dY and the addend (float32), writes dX (float32) and its bf16 copy.
__global__ void norm_grad_like(const float4* x, const float4* dy, const float4* add, float4* dx, uint2* dxb,
                               int64_t quads) {
  for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < quads; q += (int64_t)gridDim.x * blockDim.x) {
    const float4 a = x[q], b = dy[q], c = add[q];
    const float4 r = make_float4(a.x * b.x + c.x, a.y * b.y + c.y, a.z * b.z + c.z, a.w * b.w + c.w);
    dx[q] = r;
    const __nv_bfloat162 lo = __floats2bfloat162_rn(r.x, r.y), hi = __floats2bfloat162_rn(r.z, r.w);
    dxb[q] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  }
}

struct Gemm {
  int m, n, k;  // C [m, n] = A [m, k] B [k, n], row-major
  bool dw;      // a weight gradient (off the dX chain)
};
// Per layer, in the training graph's order; -1 marks a norm pass, -2 the attention stand-in.
struct Step {
  int kind;  // 0 product, 1 norm pass, 2 attention stand-in
  Gemm g;
};
const Step kLayer[] = {
    {1, {}},
    {0, {kTokens, 6400, kHidden, false}},  // fc2 dX (through the GELU in the step)
    {0, {kHidden, 6400, kTokens, true}},   // fc2 dW
    {0, {kTokens, kHidden, 6400, false}},  // fc1 dX
    {0, {6400, kHidden, kTokens, true}},   // fc1 dW
    {1, {}},
    {0, {kTokens, kHidden, kHidden, false}},  // projection dX
    {0, {kHidden, kHidden, kTokens, true}},   // projection dW
    {2, {}},
    {0, {kTokens, kHidden, 4800, false}},  // QKV dX
    {0, {4800, kHidden, kTokens, true}},   // QKV dW
};

struct Buffers {
  __nv_bfloat16 *a, *b, *c, *cw;
  float *x, *dy, *add, *dx;
  __nv_bfloat16* dxb;
  __nv_bfloat16 *qa, *qb, *qc;  // the attention stand-in's operands
  uint2 *hi, *lo, *g;
  float4 *m, *v;
  int64_t slots;
};

struct Lanes {
  cudaStream_t main, wgrad, side;
  cublasHandle_t blas_main, blas_wgrad;
};

void gemm(cublasHandle_t h, const Buffers& bf, const Gemm& s) {
  const float one = 1.0f, zero = 0.0f;
  CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, s.n, s.m, s.k, &one, bf.b, CUDA_R_16BF, s.n, bf.a, CUDA_R_16BF, s.k,
                  &zero, s.dw ? bf.cw : bf.c, CUDA_R_16BF, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// The attention backward's stand-in: ~0.25 ms of products over B * H = 128 heads of 1024 x 1024 x 64.
void attention_like(cublasHandle_t h, const Buffers& bf) {
  const float one = 1.0f, zero = 0.0f;
  for (int i = 0; i < 6; ++i) {
    CB(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, 1024, 1024, 64, &one, bf.qa, CUDA_R_16BF, 64, 1024 * 64,
                                  bf.qb, CUDA_R_16BF, 64, 1024 * 64, &zero, bf.qc, CUDA_R_16BF, 1024, 1024 * 1024, 128,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

int g_per_thread = 0;         // the updates' shape (update_kernel)
int64_t g_blocks = 132 * 16;  // grid-stride blocks (galvatron's flat_grid cap)

// `waiting` waits for what `recorded` has issued so far (an event from `next`).
template <typename Next>
void wait_for(cudaStream_t waiting, cudaStream_t recorded, Next&& next) {
  cudaEvent_t e = next();
  CK(cudaEventRecord(e, recorded));
  CK(cudaStreamWaitEvent(waiting, e, 0));
}

enum class Mode { kOneStream, kWgradJoinNext, kWgradJoinEnd, kNoUpdates1, kNoUpdates2 };

// Issues the backward of `layers` layers. kWgradJoinNext: each dW product on the wgrad stream after an event on the
// main stream, the main stream waiting for it before the next dW is issued (the previous dW's operands stay untouched
// until then); kWgradJoinEnd: joined only at the end (an upper bound).
void issue(const Lanes& ln, const Buffers& bf, int layers, Mode mode, std::vector<cudaEvent_t>& ev) {
  size_t e = 0;
  auto next = [&] { return ev.at(e++); };
  const bool split = mode == Mode::kWgradJoinNext || mode == Mode::kWgradJoinEnd || mode == Mode::kNoUpdates2;
  const bool updates = mode != Mode::kNoUpdates1 && mode != Mode::kNoUpdates2;
  const bool join_next = mode == Mode::kWgradJoinNext || mode == Mode::kNoUpdates2;
  const int64_t quads = kTokens * kHidden / 4;
  bool pending = false;  // a dW issued on the wgrad stream and not yet waited for by the main stream
  for (int l = 0; l < layers; ++l) {
    for (const Step& s : kLayer) {
      if (s.kind == 1) {
        norm_grad_like<<<132 * 8, 256, 0, ln.main>>>(
            reinterpret_cast<const float4*>(bf.x), reinterpret_cast<const float4*>(bf.dy),
            reinterpret_cast<const float4*>(bf.add), reinterpret_cast<float4*>(bf.dx), reinterpret_cast<uint2*>(bf.dxb),
            quads);
        CK(cudaGetLastError());
      } else if (s.kind == 2) {
        attention_like(ln.blas_main, bf);
      } else if (!s.g.dw || !split) {
        gemm(ln.blas_main, bf, s.g);
      } else {
        if (pending && join_next) {
          wait_for(ln.main, ln.wgrad, next);
        }
        wait_for(ln.wgrad, ln.main, next);
        gemm(ln.blas_wgrad, bf, s.g);
        pending = true;
      }
    }
    if (updates) {
      wait_for(ln.side, ln.main, next);
      if (split) {
        wait_for(ln.side, ln.wgrad, next);
      }
      const int64_t uq = kLayerParams / 4, off = (l % bf.slots) * uq;
      const unsigned blocks = g_per_thread > 0
                                  ? static_cast<unsigned>((uq + 256 * g_per_thread - 1) / (256 * g_per_thread))
                                  : static_cast<unsigned>(g_blocks);
      update_kernel<<<blocks, 256, 0, ln.side>>>(bf.hi + off, bf.lo + off, bf.g + off, bf.m + off, bf.v + off, uq,
                                                 1e-4f, g_per_thread);
      CK(cudaGetLastError());
    }
  }
  if (split) {
    wait_for(ln.main, ln.wgrad, next);
  }
  if (updates) {
    wait_for(ln.main, ln.side, next);
  }
}

double run(const Lanes& ln, const Buffers& bf, int layers, Mode mode, int reps) {
  std::vector<cudaEvent_t> ev(layers * 16 + 8);
  for (auto& x : ev) CK(cudaEventCreateWithFlags(&x, cudaEventDisableTiming));
  cudaGraph_t graph;
  CK(cudaStreamBeginCapture(ln.main, cudaStreamCaptureModeThreadLocal));
  issue(ln, bf, layers, mode, ev);
  CK(cudaStreamEndCapture(ln.main, &graph));
  cudaGraphExec_t exec;
  CK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t t0, t1;
  CK(cudaEventCreate(&t0));
  CK(cudaEventCreate(&t1));
  CK(cudaGraphLaunch(exec, ln.main));
  CK(cudaGraphLaunch(exec, ln.main));
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(t0, ln.main));
    CK(cudaGraphLaunch(exec, ln.main));
    CK(cudaEventRecord(t1, ln.main));
    CK(cudaEventSynchronize(t1));
    float x = 0;
    CK(cudaEventElapsedTime(&x, t0, t1));
    ms.push_back(x);
  }
  std::sort(ms.begin(), ms.end());
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  for (auto& x : ev) CK(cudaEventDestroy(x));
  return ms[ms.size() / 2];
}

template <typename T>
T* alloc(int64_t n) {
  T* p = nullptr;
  CK(cudaMalloc(&p, n * sizeof(T)));
  CK(cudaMemset(p, 0, n * sizeof(T)));
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const int layers = argc > 1 ? std::atoi(argv[1]) : 24;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 10;
  CK(cudaSetDevice(0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  Buffers bf;
  bf.slots = 8;
  const int64_t big = 6400ll * 4800;
  bf.a = alloc<__nv_bfloat16>(big);
  bf.b = alloc<__nv_bfloat16>(big);
  bf.c = alloc<__nv_bfloat16>(big);
  bf.cw = alloc<__nv_bfloat16>(big);
  bf.qa = alloc<__nv_bfloat16>(128ll * 1024 * 64);
  bf.qb = alloc<__nv_bfloat16>(128ll * 1024 * 64);
  bf.qc = alloc<__nv_bfloat16>(128ll * 1024 * 1024);
  fill_random<<<1024, 256>>>(bf.a, big, 1);
  fill_random<<<1024, 256>>>(bf.b, big, 2);
  fill_random<<<1024, 256>>>(bf.qa, 128ll * 1024 * 64, 3);
  fill_random<<<1024, 256>>>(bf.qb, 128ll * 1024 * 64, 4);
  const int64_t act = kTokens * kHidden;
  bf.x = alloc<float>(act);
  bf.dy = alloc<float>(act);
  bf.add = alloc<float>(act);
  bf.dx = alloc<float>(act);
  bf.dxb = alloc<__nv_bfloat16>(act);
  const int64_t q = kLayerParams / 4 * bf.slots;
  bf.hi = alloc<uint2>(q);
  bf.lo = alloc<uint2>(q);
  bf.g = alloc<uint2>(q);
  bf.m = alloc<float4>(q);
  bf.v = alloc<float4>(q);
  fill_random<<<1024, 256>>>(reinterpret_cast<__nv_bfloat16*>(bf.g), q * 4, 5);
  CK(cudaDeviceSynchronize());

  int least, greatest;
  CK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  Lanes ln;
  CK(cudaStreamCreateWithPriority(&ln.main, cudaStreamNonBlocking, greatest));
  CK(cudaStreamCreateWithPriority(&ln.side, cudaStreamNonBlocking, least));
  CB(cublasCreate(&ln.blas_main));
  CB(cublasSetStream(ln.blas_main, ln.main));
  CB(cublasCreate(&ln.blas_wgrad));
  std::printf("%s, %d SMs; %d layers, medians of %d graph replays (ms)\n", prop.name, prop.multiProcessorCount, layers,
              reps);
  CK(cudaStreamCreateWithPriority(&ln.wgrad, cudaStreamNonBlocking, greatest));
  CB(cublasSetStream(ln.blas_wgrad, ln.wgrad));
  const double p1 = run(ln, bf, layers, Mode::kNoUpdates1, reps);
  std::printf("products and norm passes alone: %.3f\n", p1);
  struct Shape {
    int per_thread;
    int64_t blocks;
  };
  for (int round = 0; round < 2; ++round) {
    for (Shape sh : {Shape{0, 132 * 16}, Shape{0, 132 * 8}, Shape{1, 0}, Shape{4, 0}, Shape{16, 0}, Shape{64, 0}}) {
      g_per_thread = sh.per_thread;
      g_blocks = sh.blocks;
      const double one = run(ln, bf, layers, Mode::kOneStream, reps);
      const double next = run(ln, bf, layers, Mode::kWgradJoinNext, reps);
      std::printf("updates %s %lld: one stream %.3f (updates add %.3f); dW beside, joined at the next dW %.3f\n",
                  sh.per_thread ? "quads per thread" : "grid-stride blocks",
                  static_cast<long long>(sh.per_thread ? sh.per_thread : sh.blocks), one, one - p1, next);
    }
  }
  return 0;
}

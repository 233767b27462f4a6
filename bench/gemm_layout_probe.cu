// Probe: how fast cuBLAS runs gpt-1.5b's products (bf16 operands, float32 accumulation) in each operand layout, on
// random data. Row-major C [m, n] = op(A) op(B): A stored [m, k] (or [k, m] with ta), B stored [k, n] (or [n, k] with
// tb). galvatron's forward products are (ta, tb) = (N, N) with weights stored [in, out] as ONNX has them, its dX
// products (N, T), its dW products (T, N). Not part of the product; bench/cuda_notes.md 60 has the numbers.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/gemm_probe bench/gemm_layout_probe.cu -lcublas
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                            \
  do {                                                                   \
    if ((x) != 0) {                                                      \
      std::fprintf(stderr, "%s:%d %s failed\n", __FILE__, __LINE__, #x); \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

__global__ void fill(uint16_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float v = ((h & 0xffff) / 65536.0f - 0.5f) * 0.1f;  // uniform in [-0.05, 0.05)
    p[i] = (uint16_t)(__float_as_uint(v) >> 16);
  }
}

int main() {
  struct Shape {
    const char* name;
    int m, n, k;
  };
  const Shape shapes[] = {{"qkv fwd / dgelu-like", 4096, 4800, 1600}, {"fc1 fwd", 4096, 6400, 1600},
                          {"fc2 fwd / fc1 dX", 4096, 1600, 6400},     {"qkv dX", 4096, 1600, 4800},
                          {"proj fwd / dX", 4096, 1600, 1600},        {"fc1 dW", 1600, 6400, 4096},
                          {"gpt2 qkv fwd b8", 8192, 2304, 768},       {"gpt2 fc2 fwd b8", 8192, 768, 3072}};
  cublasHandle_t h;
  CK(cublasCreate(&h));
  uint16_t *a, *b, *c;
  const int64_t big = 6400ll * 6400;
  CK(cudaMalloc(&a, big * 2));
  CK(cudaMalloc(&b, big * 2));
  CK(cudaMalloc(&c, big * 4));
  fill<<<1024, 256>>>(a, big, 1u);
  fill<<<1024, 256>>>(b, big, 2u);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (const Shape& s : shapes) {
    std::printf("%-22s m %5d n %5d k %5d:", s.name, s.m, s.n, s.k);
    for (int out_bf16 = 0; out_bf16 < 2; ++out_bf16) {
      for (int lay = 0; lay < 4; ++lay) {
        const bool ta = lay & 2, tb = lay & 1;
        // Column-major C^T [n, m] = op(B)^T [n, k] op(A)^T [k, m].
        const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
        const int lda = ta ? s.m : s.k, ldb = tb ? s.k : s.n;
        const float one = 1.0f, zero = 0.0f;
        auto run = [&] {
          return cublasGemmEx(h, opb, opa, s.n, s.m, s.k, &one, b, CUDA_R_16BF, ldb, a, CUDA_R_16BF, lda, &zero, c,
                              out_bf16 ? CUDA_R_16BF : CUDA_R_32F, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        };
        for (int w = 0; w < 5; ++w) CK(run());
        std::vector<float> t;
        for (int r = 0; r < 30; ++r) {
          cudaEventRecord(e0);
          CK(run());
          cudaEventRecord(e1);
          cudaEventSynchronize(e1);
          float ms;
          cudaEventElapsedTime(&ms, e0, e1);
          t.push_back(ms);
        }
        std::sort(t.begin(), t.end());
        std::printf("  %s%s%s %.4f", ta ? "T" : "N", tb ? "T" : "N", out_bf16 ? "/bf16" : "/f32", t[t.size() / 2]);
      }
    }
    std::printf("\n");
  }
  return 0;
}

// Matrix products through cuBLAS, and the shared device workspace.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <mutex>

#include "kernels/cuda/ops.h"

namespace gv::cuda {
namespace {

MathMode g_mode = MathMode::kFloat32;

cublasHandle_t handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t x = nullptr;
    if (cublasCreate(&x) != CUBLAS_STATUS_SUCCESS) return static_cast<cublasHandle_t>(nullptr);
    cublasSetStream(x, 0);
    cublasSetPointerMode(x, CUBLAS_POINTER_MODE_HOST);
    return x;
  }();
  return h;
}

void* g_ws = nullptr;
size_t g_ws_bytes = 0;

}  // namespace

void* workspace(size_t bytes) {
  if (bytes <= g_ws_bytes) return g_ws;
  size_t want = bytes < (1u << 20) ? (1u << 20) : bytes + bytes / 4;
  if (g_ws) cudaFree(g_ws);  // synchronizes: kernels that used the old buffer are done
  g_ws = nullptr;
  g_ws_bytes = 0;
  if (cudaMalloc(&g_ws, want) != cudaSuccess) return nullptr;
  g_ws_bytes = want;
  return g_ws;
}

void set_math_mode(MathMode mode) { g_mode = mode; }
MathMode math_mode() { return g_mode; }
void set_allow_tf32(bool allow) { g_mode = allow ? MathMode::kTf32 : MathMode::kFloat32; }

bool gemm_f32(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t stride_a,
              const float* b, int64_t stride_b, float beta, float* c, int64_t stride_c, int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return true;
  cublasHandle_t h = handle();
  if (!h) return false;
  if (k == 0) {
    // C = beta * C: a product with nothing to sum.
    if (beta == 0.0f) {
      for (int64_t i = 0; i < batch; ++i)
        if (cudaMemsetAsync(c + i * stride_c, 0, sizeof(float) * m * n, 0) != cudaSuccess) return false;
      return true;
    }
    return cublasSgeam(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), &beta, c,
                       static_cast<int>(n), &beta, c, static_cast<int>(n), c, static_cast<int>(n)) ==
           CUBLAS_STATUS_SUCCESS;
  }
  // Row-major C[m, n] is column-major C^T[n, m] = op(B)^T op(A)^T.
  const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int lda = static_cast<int>(ta ? m : k), ldb = static_cast<int>(tb ? k : n), ldc = static_cast<int>(n);
  // Float32 operands and result in every mode; the mode picks what the tensor cores see (cuBLAS rounds the operands
  // to tf32 or bf16 inside the product) and the sum stays float32.
  const cublasComputeType_t ct = g_mode == MathMode::kBf16   ? CUBLAS_COMPUTE_32F_FAST_16BF
                                 : g_mode == MathMode::kTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                             : CUBLAS_COMPUTE_32F;
  cublasStatus_t st;
  if (batch == 1) {
    st = cublasGemmEx(h, opb, opa, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b,
                      CUDA_R_32F, ldb, a, CUDA_R_32F, lda, &beta, c, CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT);
  } else {
    st = cublasGemmStridedBatchedEx(h, opb, opa, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                                    &alpha, b, CUDA_R_32F, ldb, stride_b, a, CUDA_R_32F, lda, stride_a, &beta, c,
                                    CUDA_R_32F, ldc, stride_c, static_cast<int>(batch), ct, CUBLAS_GEMM_DEFAULT);
  }
  return st == CUBLAS_STATUS_SUCCESS;
}

}  // namespace gv::cuda

// Inside the CUDA kernels (blas.cu, linear.cu): one cuBLASLt product with bf16 operands and float32 accumulation,
// in cuBLAS's column-major terms, its algorithm chosen per shape by timing the heuristic's best candidates.
//
// Tuning (opt-in: GALVATRON_CUDA_GEMM_TUNE=N candidates, read per new shape; default 1, the heuristic's first choice)
// never blocks the host: the first call of a shape (beta 0, not inside a CUDA graph capture) also issues each candidate
// a few times between events on the compute stream and runs the heuristic's first choice itself; a later call whose
// events have completed keeps the fastest (when it beats the first by 2%), and from then on every call of that shape
// uses it. settle_product_tuning() waits for what is pending, so a recorded CUDA graph holds tuned products.
// GALVATRON_CUDA_GEMM_TUNE_LOG=1 prints each shape's times. Measured on gpt-1.5b (bench/cuda_notes.md 50): 2-11%
// faster products in isolation, no faster steps, so off by default. GALVATRON_CUDA_GEMM_SM_TARGET=N tells cuBLASLt to
// plan for N SMs (leaving the others to the side stream's kernels; 120 of 132 was 11% slower).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace gv::cuda {

struct LtProduct {
  // D [m, n] = alpha op(A) [m, k] op(B) [k, n] + beta C, column-major; lda / ldb / ldd: elements between the stored
  // columns; `batch` matrices each, `stride_*` elements apart (non-zero when batch > 1).
  cublasOperation_t opa = CUBLAS_OP_N, opb = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldd = 0;
  cudaDataType_t d_type = CUDA_R_32F;  // A and B are bf16
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_d = 0;
  // The epilogue: its bias runs along D's m rows (in D's type), its auxiliary matrix has D's shape and ld m.
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* a = nullptr;
  const void* b = nullptr;
  const void* c = nullptr;  // beta's C, D's layout; null: D itself
  void* d = nullptr;
  const void* bias = nullptr;
  void* aux = nullptr;
  float alpha = 1.0f, beta = 0.0f;
};

// Issues the product on the compute stream; false when cuBLASLt declines it (no algorithm, a launch error), and the
// caller takes another path.
bool lt_matmul(const LtProduct& p);

// Waits for the pending tunings and applies them (blocking the host): graph_record_begin calls it, so that a recorded
// graph holds the tuned algorithms.
void settle_product_tuning();

cublasLtHandle_t lt_handle();

}  // namespace gv::cuda

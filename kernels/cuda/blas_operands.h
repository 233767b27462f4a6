// Inside the CUDA kernels (kernels/cuda/blas.cu, linear.cu): bfloat16 operands for one cuBLAS / cuBLASLt product.
#pragma once
#include <cstdint>

#include "kernels/cuda/ops.h"

namespace gv::cuda {

// Row-major operands as bf16: a given bf16 operand in place (rows packed), a float32 one converted into gemm's own
// scratch (rows padded to 8 elements; valid until the next product). lda / ldb: elements between stored rows;
// strides: elements between the batch's matrices (0: one matrix, broadcast).
struct Bf16Operands {
  const uint16_t* a = nullptr;
  const uint16_t* b = nullptr;
  int64_t lda = 0, ldb = 0, stride_a = 0, stride_b = 0;
};
// op(A) [m, k] (stored [k, m] when ta), op(B) [k, n] (stored [n, k] when tb), `batch` matrices each.
bool prepare_bf16_operands(bool ta, bool tb, int64_t m, int64_t n, int64_t k, GemmOperand a, int64_t stride_a,
                           GemmOperand b, int64_t stride_b, int64_t batch, Bf16Operands& out);

}  // namespace gv::cuda

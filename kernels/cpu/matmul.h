// Matrix products. Float types go to OpenBLAS (cblas_?gemm); integer types use a plain loop.
#pragma once
#include <cstdint>
#include <vector>

namespace gv::cpu {

// A list of products C[c] (=|+=) alpha * op(A[a]) @ op(B[b]) over stacks of row-major matrices.
// op(A[a]) is [m, k] (A[a] is stored [k, m] when trans_a); op(B[b]) is [k, n] (stored [n, k] when trans_b);
// C[c] is [m, n]. Products are applied in order: the first one to reach a C matrix overwrites it, later ones add,
// so a C matrix listed several times receives the sum (broadcast batch dimensions summed in backward passes).
// C matrices that no product reaches are set to zero.
struct MatMulBatch {
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  double alpha = 1.0;
  std::vector<int64_t> a_index, b_index, c_index;  // one entry per product
  int64_t c_count = 0;                             // matrices in C
};

template <typename T>
void matmul(const T* a, const T* b, T* c, const MatMulBatch& p);

// One GEMM: c[m, n] = alpha * op(a) @ op(b) + beta * c, row-major, contiguous (beta == 0 ignores c's contents).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const T* a, const T* b,
          double beta, T* c);

// The kernel set OpenBLAS chose for this CPU at load time ("Haswell", "SkylakeX", "Prescott", ...).
const char* blas_core_name();

}  // namespace gv::cpu

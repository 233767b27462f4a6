#include "kernels/cpu/matmul.h"

#include <cblas.h>

#include <cstring>
#include <type_traits>

namespace gv::cpu {
namespace {

template <typename T>
void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, const T* b, T beta, T* c) {
  const auto op_a = ta ? CblasTrans : CblasNoTrans;
  const auto op_b = tb ? CblasTrans : CblasNoTrans;
  const blasint lda = static_cast<blasint>(ta ? m : k), ldb = static_cast<blasint>(tb ? k : n);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, n);
  } else {
    cblas_dgemm(CblasRowMajor, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, n);
  }
}

// Integer GEMM: rows of c in parallel, i-k-j order so the inner loop runs along contiguous rows of b and c.
template <typename T>
void loop_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, const T* b, T beta, T* c) {
#pragma omp parallel for if (m * n * k > 65536) schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    T* crow = c + i * n;
    for (int64_t j = 0; j < n; ++j) crow[j] = beta == T(0) ? T(0) : beta * crow[j];
    for (int64_t p = 0; p < k; ++p) {
      const T av = alpha * (ta ? a[p * m + i] : a[i * k + p]);
      if (tb) {
        for (int64_t j = 0; j < n; ++j) crow[j] += av * b[j * k + p];
      } else {
        const T* brow = b + p * n;
        for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
      }
    }
  }
}

template <typename T>
void gemm_any(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, const T* b, T beta, T* c) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS implementations differ on k == 0; the product is empty
    for (int64_t i = 0; i < m * n; ++i) c[i] = beta == T(0) ? T(0) : beta * c[i];
    return;
  }
  if constexpr (std::is_floating_point_v<T>) {
    blas_gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
  } else {
    loop_gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
  }
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const T* a, const T* b,
          double beta, T* c) {
  gemm_any<T>(trans_a, trans_b, m, n, k, static_cast<T>(alpha), a, b, static_cast<T>(beta), c);
}

template <typename T>
void matmul(const T* a, const T* b, T* c, const MatMulBatch& p) {
  const int64_t a_size = p.m * p.k, b_size = p.k * p.n, c_size = p.m * p.n;
  std::vector<char> written(static_cast<size_t>(p.c_count), 0);
  for (size_t i = 0; i < p.c_index.size(); ++i) {
    const int64_t ci = p.c_index[i];
    const T beta = written[ci] ? T(1) : T(0);
    written[ci] = 1;
    gemm_any<T>(p.trans_a, p.trans_b, p.m, p.n, p.k, static_cast<T>(p.alpha), a + p.a_index[i] * a_size,
                b + p.b_index[i] * b_size, beta, c + ci * c_size);
  }
  for (int64_t ci = 0; ci < p.c_count; ++ci) {
    if (!written[ci]) std::memset(c + ci * c_size, 0, sizeof(T) * c_size);
  }
}

template void matmul<float>(const float*, const float*, float*, const MatMulBatch&);
template void matmul<double>(const double*, const double*, double*, const MatMulBatch&);
template void matmul<int32_t>(const int32_t*, const int32_t*, int32_t*, const MatMulBatch&);
template void matmul<int64_t>(const int64_t*, const int64_t*, int64_t*, const MatMulBatch&);
template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, double, const float*, const float*, double, float*);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, const double*, double,
                           double*);
template void gemm<int32_t>(bool, bool, int64_t, int64_t, int64_t, double, const int32_t*, const int32_t*, double,
                            int32_t*);
template void gemm<int64_t>(bool, bool, int64_t, int64_t, int64_t, double, const int64_t*, const int64_t*, double,
                            int64_t*);

const char* blas_core_name() {
  const char* name = openblas_get_corename();  // <cblas.h> here is OpenBLAS's (CMakeLists.txt)
  return name ? name : "";
}

}  // namespace gv::cpu

// Matrix products through cuBLAS, the bfloat16 conversion, and the shared device workspace.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "kernels/cuda/blas_operands.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grow_buffer.h"
#include "kernels/cuda/lt_matmul.h"
#include "kernels/cuda/ops.h"

namespace gv::cuda {
namespace {

using detail::kThreads;
using detail::launched;

MathMode g_mode = MathMode::kFloat32;

cublasHandle_t handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t x = nullptr;
    if (cublasCreate(&x) != CUBLAS_STATUS_SUCCESS) return static_cast<cublasHandle_t>(nullptr);
    cublasSetStream(x, launch_stream());
    cublasSetPointerMode(x, CUBLAS_POINTER_MODE_HOST);
    return x;
  }();
  return h;
}

GrowBuffer g_ws;

// gemm_f32's bf16 operand copies: its own grow-only buffer, never workspace() (callers such as the attention kernels
// keep data in workspace() across their products).
GrowBuffer g_bf16;

void* bf16_scratch(size_t bytes) { return g_bf16.get(bytes, true, size_t{1} << 20); }

// kBf16 converts the operands only where the product's arithmetic outweighs the conversion's bytes: m*n/(m+n) at
// least this (GALVATRON_CUDA_BF16_MIN_MN, default 128). Converting costs 6 B per operand element (read 4, write 2)
// against 2 * m*n*k flops; with tf32 products at ~130 TFLOP/s and bf16 at ~350 (bench/cuda_notes.md), the faster
// product pays for the conversion above m*n/(m+n) ~ 100-200. Below it (the unfused attention's
// [1024 x 1024] @ [1024 x 64], whose 400 MB score operand would be converted for a 13 GFLOP product) the float32
// operands go to cuBLAS with CUBLAS_COMPUTE_32F_FAST_16BF, which runs TF32 kernels (never less accurate than bf16).
double bf16_min_mn() {
  static const double v = [] {
    const char* e = std::getenv("GALVATRON_CUDA_BF16_MIN_MN");
    if (!e || !*e) return 128.0;
    char* end = nullptr;
    const double x = std::strtod(e, &end);
    return (end && *end == '\0' && x >= 0.0) ? x : 128.0;
  }();
  return v;
}

// gemm_f32's padded copy of C (products whose C rows are not 16-byte aligned): grow-only, at most kPadCBytes.
GrowBuffer g_cpad;
constexpr size_t kPadCBytes = size_t{256} << 20;

float* cpad_scratch(size_t bytes) { return static_cast<float*>(g_cpad.get(bytes)); }

const char* g_path = "";

// GALVATRON_CUDA_PAD_C=0 turns gemm_padded_c off (A/B measurements).
bool pad_c_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("GALVATRON_CUDA_PAD_C");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

using detail::bf16_bits;

__device__ __forceinline__ uint2 bf16_quad(float4 v) {
  uint2 r;
  r.x = static_cast<uint32_t>(bf16_bits(v.x)) | (static_cast<uint32_t>(bf16_bits(v.y)) << 16);
  r.y = static_cast<uint32_t>(bf16_bits(v.z)) | (static_cast<uint32_t>(bf16_bits(v.w)) << 16);
  return r;
}

// y[i] = bf16(x[i]) for i < n; x 16-byte and y 8-byte aligned (kVec) or anything (scalar).
template <typename I, bool kVec>
__global__ void to_bf16_kernel(const float* __restrict__ x, uint16_t* __restrict__ y, I n) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  const I first = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kVec) {
    const I quads = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    uint2* y4 = reinterpret_cast<uint2*>(y);
    for (I q = first; q < quads; q += stride) y4[q] = bf16_quad(x4[q]);
    const I i = quads * 4 + first;
    if (i < n) y[i] = bf16_bits(x[i]);  // the last n % 4 elements
  } else {
    for (I i = first; i < n; i += stride) y[i] = bf16_bits(x[i]);
  }
}

// Packs `batch` matrices of `count` elements, `stride` apart in x, into y (count apart).
template <bool kVec>
__global__ void pack_bf16_kernel(const float* __restrict__ x, int64_t stride, uint16_t* __restrict__ y, int64_t count,
                                 int64_t batch) {
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const float* src = x + b * stride;
    uint16_t* dst = y + b * count;
    const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if constexpr (kVec) {
      const int64_t quads = count / 4;  // count % 4 == 0 here
      for (int64_t q = first; q < quads; q += step) {
        reinterpret_cast<uint2*>(dst)[q] = bf16_quad(reinterpret_cast<const float4*>(src)[q]);
      }
    } else {
      for (int64_t i = first; i < count; i += step) dst[i] = bf16_bits(src[i]);
    }
  }
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

__device__ __forceinline__ uint16_t store_as(float v, uint16_t*) { return bf16_bits(v); }
__device__ __forceinline__ float store_as(float v, float*) { return v; }

// Packs `batch` matrices of [rows, cols] (row-major, `stride` apart in x) into y as [rows_out, ldy] matrices
// (rows_out >= rows, ldy >= cols) `out_stride` apart, with zeros in the padding: padded columns and rows along the
// reduction dimension add nothing to a product. T: uint16_t (bf16 bits) or float (a float32 copy).
template <typename T>
__global__ void pack_rows_kernel(const float* __restrict__ x, int64_t stride, int64_t rows, int64_t cols,
                                 T* __restrict__ y, int64_t rows_out, int64_t ldy, int64_t out_stride, int64_t batch) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < batch * rows_out; r += gridDim.y) {
    const int64_t b = r / rows_out, rr = r - b * rows_out;
    const float* src = x + b * stride + rr * cols;
    T* dst = y + b * out_stride + rr * ldy;
    const int64_t valid = rr < rows ? cols : 0;  // padding rows are all zeros
    int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    for (; c + 3 * step < ldy; c += 4 * step) {  // four independent loads in flight per thread
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = c + j * step < valid ? src[c + j * step] : 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) dst[c + j * step] = store_as(v[j], dst);
    }
    for (; c < ldy; c += step) dst[c] = store_as(c < valid ? src[c] : 0.0f, dst);
  }
}

template <typename T>
bool pack_rows(const float* x, int64_t stride, int64_t rows, int64_t cols, T* y, int64_t rows_out, int64_t ldy,
               int64_t copies) {
  // Blocks over a row's columns (4 per thread), then over rows: about 4096 blocks that loop.
  int64_t bx = (ldy + 4 * kThreads - 1) / (4 * kThreads);
  if (bx > 64) bx = 64;
  int64_t by = copies * rows_out;
  const int64_t by_cap = 4096 / bx > 1 ? 4096 / bx : 1;
  if (by > by_cap) by = by_cap;
  const dim3 grid(static_cast<unsigned>(bx), static_cast<unsigned>(by));
  pack_rows_kernel<T>
      <<<grid, kThreads, 0, launch_stream()>>>(x, stride, rows, cols, y, rows_out, ldy, rows_out * ldy, copies);
  return launched();
}

// y[r, c] = x[r, c] for r < rows, c < cols: rows ldx apart in x (16-byte aligned rows), ldy apart in y (any).
__global__ void copy_rows_kernel(const float* __restrict__ x, int64_t ldx, float* __restrict__ y, int64_t ldy,
                                 int64_t rows, int64_t cols) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float* src = x + r * ldx;
    float* dst = y + r * ldy;
    int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    for (; c + 3 * step < cols; c += 4 * step) {
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = src[c + j * step];
#pragma unroll
      for (int j = 0; j < 4; ++j) dst[c + j * step] = v[j];
    }
    for (; c < cols; c += step) dst[c] = src[c];
  }
}

bool copy_rows(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t cols) {
  int64_t bx = (cols + 4 * kThreads - 1) / (4 * kThreads);
  if (bx > 64) bx = 64;
  int64_t by = rows;
  const int64_t by_cap = 8192 / bx > 1 ? 8192 / bx : 1;
  if (by > by_cap) by = by_cap;
  copy_rows_kernel<<<dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by)), kThreads, 0, launch_stream()>>>(
      x, ldx, y, ldy, rows, cols);
  return launched();
}

// gemm_f32's bf16 copies have rows a multiple of 8 elements (16 bytes) apart, and the reduction dimension k padded
// with zeros to a multiple of 8: cuBLAS's fast bf16 kernels need both (on an H200, GPT-2's [8192 x 50257] @
// [50257 x 768] ran at ~140 TFLOP/s in bf16, slower than tf32 with the conversion, and [8192 x 50304] @ [50304 x 768]
// at ~900).
int64_t round8(int64_t v) { return (v + 7) / 8 * 8; }

// bf16 copies of `batch` [rows, cols] matrices `stride` apart (0: one matrix) as [rows_out, round8(cols)] matrices
// with zero padding (rows_out >= rows); returns the matrix stride of the copy (0 for one matrix).
bool convert_operand(const float* x, int64_t rows, int64_t cols, int64_t rows_out, int64_t stride, int64_t batch,
                     uint16_t* y, int64_t& out_stride) {
  const int64_t count = rows * cols, ldy = round8(cols);
  const int64_t copies = (batch == 1 || stride == 0) ? 1 : batch;
  out_stride = copies == 1 ? 0 : rows_out * ldy;
  if (ldy != cols || (rows_out != rows && copies > 1)) {
    return pack_rows<uint16_t>(x, stride, rows, cols, y, rows_out, ldy, copies);
  }
  if (rows_out != rows) {  // one matrix with whole rows: convert it, zero the extra rows after it
    if (!to_bf16(x, y, count)) return false;
    return cudaMemsetAsync(y + count, 0, sizeof(uint16_t) * (rows_out - rows) * ldy, launch_stream()) == cudaSuccess;
  }
  if (copies == 1) return to_bf16(x, y, count);
  if (stride == count) return to_bf16(x, y, count * batch);
  // Padded or overlapping matrices: pack them, converting only their elements.
  const bool vec = count % 4 == 0 && stride % 4 == 0 && aligned(x, 16) && aligned(y, 8);
  const int64_t units = vec ? count / 4 : count;
  int64_t bx = (units + kThreads - 1) / kThreads;
  const int64_t by = batch < 65535 ? batch : 65535;
  const int64_t cap = (int64_t{1} << 16) / by + 1;
  if (bx > cap) bx = cap;
  const dim3 grid(static_cast<unsigned>(bx), static_cast<unsigned>(by));
  if (vec)
    pack_bf16_kernel<true><<<grid, kThreads, 0, launch_stream()>>>(x, stride, y, count, batch);
  else
    pack_bf16_kernel<false><<<grid, kThreads, 0, launch_stream()>>>(x, stride, y, count, batch);
  return launched();
}

// C = beta * C for each of the batch matrices (a product with nothing to sum).
bool scale_c(cublasHandle_t h, int64_t m, int64_t n, float beta, float* c, int64_t stride_c, int64_t batch) {
  const int64_t count = m * n;
  for (int64_t i = 0; i < batch; ++i) {
    float* ci = c + i * stride_c;
    if (i > 0 && stride_c == 0) break;
    if (beta == 0.0f) {
      if (cudaMemsetAsync(ci, 0, sizeof(float) * count, launch_stream()) != cudaSuccess) return false;
    } else if (count <= INT32_MAX) {
      if (cublasSscal(h, static_cast<int>(count), &beta, ci, 1) != CUBLAS_STATUS_SUCCESS) return false;
    } else {
      return false;
    }
  }
  return true;
}

// bf16 products through cuBLASLt (lt_matmul.h) where tuning is asked for (GALVATRON_CUDA_GEMM_TUNE above 1) or
// GALVATRON_CUDA_GEMM_LT=1; otherwise cuBLAS's GemmEx, which measured 0.3 ms faster per gpt-1.5b step than cuBLASLt's
// first heuristic choice (bench/cuda_notes.md 50). Read per call: tests switch tuning on for their shapes.
bool lt_products() {
  const char* lt = std::getenv("GALVATRON_CUDA_GEMM_LT");
  if (lt && *lt) return std::string(lt) == "1";
  const char* tune = std::getenv("GALVATRON_CUDA_GEMM_TUNE");
  return tune && std::atoi(tune) > 1;
}

// The cuBLAS call of both gemm_f32 and gemm_bf16: operands of type `type`, C of type `ctype` (float32 unless a
// bf16 product writes bf16). lda_/ldb_/ldc_ 0: the rows are packed (k or m, n or k, n elements).
bool gemm_ex(cublasHandle_t h, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
             int64_t stride_a, const void* b, int64_t stride_b, cudaDataType_t type, float beta, void* c,
             int64_t stride_c, int64_t batch, cublasComputeType_t ct, int64_t lda_ = 0, int64_t ldb_ = 0,
             int64_t ldc_ = 0, cudaDataType_t ctype = CUDA_R_32F) {
  // Row-major C[m, n] is column-major C^T[n, m] = op(B)^T op(A)^T.
  const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int lda = static_cast<int>(lda_ ? lda_ : (ta ? m : k)), ldb = static_cast<int>(ldb_ ? ldb_ : (tb ? k : n)),
            ldc = static_cast<int>(ldc_ ? ldc_ : n);
  if (type == CUDA_R_16BF && ct == CUBLAS_COMPUTE_32F && lt_products()) {
    // cuBLAS's A is B here (column-major C^T = op(B)^T op(A)^T): the same product through cuBLASLt, tuned.
    LtProduct lp;
    lp.opa = opb, lp.opb = opa;
    lp.m = n, lp.n = m, lp.k = k, lp.lda = ldb, lp.ldb = lda, lp.ldd = ldc;
    lp.d_type = ctype;
    lp.batch = batch;
    if (batch > 1) {
      lp.stride_a = stride_b;
      lp.stride_b = stride_a;
      lp.stride_d = stride_c;
    }
    lp.a = b, lp.b = a, lp.d = c, lp.alpha = alpha, lp.beta = beta;
    if (lt_matmul(lp)) return true;
  }
  cublasStatus_t st;
  if (batch == 1) {
    st = cublasGemmEx(h, opb, opa, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, type, ldb,
                      a, type, lda, &beta, c, ctype, ldc, ct, CUBLAS_GEMM_DEFAULT);
  } else {
    st = cublasGemmStridedBatchedEx(h, opb, opa, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                                    b, type, ldb, stride_b, a, type, lda, stride_a, &beta, c, ctype, ldc,
                                    stride_c, static_cast<int>(batch), ct, CUBLAS_GEMM_DEFAULT);
  }
  return st == CUBLAS_STATUS_SUCCESS;
}

}  // namespace

void* workspace(size_t bytes) { return g_ws.get(bytes, true, size_t{1} << 20); }
size_t scratch_bytes() { return grow_buffer_total().load(); }

void set_math_mode(MathMode mode) { g_mode = mode; }
MathMode math_mode() { return g_mode; }
void set_allow_tf32(bool allow) { g_mode = allow ? MathMode::kTf32 : MathMode::kFloat32; }

bool to_bf16(const float* x, uint16_t* y, int64_t n) {
  if (n <= 0) return true;
  const bool vec = aligned(x, 16) && aligned(y, 8);
  const int64_t units = vec ? (n + 3) / 4 : n;
  int64_t blocks = (units + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{detail::num_sms()} * 16;  // two waves of resident blocks; the loops stride on
  if (blocks > cap) blocks = cap;
  const unsigned g = static_cast<unsigned>(blocks);
  if (n < (int64_t{1} << 31)) {
    const uint32_t n32 = static_cast<uint32_t>(n);
    if (vec)
      to_bf16_kernel<uint32_t, true><<<g, kThreads, 0, launch_stream()>>>(x, y, n32);
    else
      to_bf16_kernel<uint32_t, false><<<g, kThreads, 0, launch_stream()>>>(x, y, n32);
  } else {
    if (vec)
      to_bf16_kernel<int64_t, true><<<g, kThreads, 0, launch_stream()>>>(x, y, n);
    else
      to_bf16_kernel<int64_t, false><<<g, kThreads, 0, launch_stream()>>>(x, y, n);
  }
  return launched();
}

namespace {

// y[i] = float32(x[i]): four elements per thread where both are aligned (8-byte x, 16-byte y).
template <bool kVec>
__global__ void from_bf16_kernel(const uint16_t* __restrict__ x, float* __restrict__ y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  auto wide = [](uint32_t bits) { return __uint_as_float(bits << 16); };
  if constexpr (kVec) {
    for (int64_t q = first; q < n / 4; q += stride) {
      const uint2 v = reinterpret_cast<const uint2*>(x)[q];
      reinterpret_cast<float4*>(y)[q] =
          make_float4(wide(v.x & 0xffffu), wide(v.x >> 16), wide(v.y & 0xffffu), wide(v.y >> 16));
    }
    for (int64_t i = n / 4 * 4 + first; i < n; i += stride) y[i] = wide(x[i]);
  } else {
    for (int64_t i = first; i < n; i += stride) y[i] = wide(x[i]);
  }
}

}  // namespace

bool from_bf16(const uint16_t* x, float* y, int64_t n) {
  if (n <= 0) return true;
  const bool vec = aligned(x, 8) && aligned(y, 16);
  int64_t blocks = ((vec ? (n + 3) / 4 : n) + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{detail::num_sms()} * 16;
  if (blocks > cap) blocks = cap;
  if (vec)
    from_bf16_kernel<true><<<static_cast<unsigned>(blocks), kThreads, 0, launch_stream()>>>(x, y, n);
  else
    from_bf16_kernel<false><<<static_cast<unsigned>(blocks), kThreads, 0, launch_stream()>>>(x, y, n);
  return launched();
}

bool gemm_bf16(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a, int64_t stride_a,
               const uint16_t* b, int64_t stride_b, float beta, float* c, int64_t stride_c, int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return true;
  cublasHandle_t h = handle();
  if (!h) return false;
  if (k == 0) return scale_c(h, m, n, beta, c, stride_c, batch);
  return gemm_ex(h, ta, tb, m, n, k, alpha, a, stride_a, b, stride_b, CUDA_R_16BF, beta, c, stride_c, batch,
                 CUBLAS_COMPUTE_32F);
}

bool pack_bf16(const float* x, int64_t rows, int64_t cols, uint16_t* y, int64_t rows_out, int64_t ldy) {
  if (rows_out <= 0 || ldy <= 0) return true;
  if (rows_out == rows && ldy == cols) return to_bf16(x, y, rows * cols);
  return pack_rows<uint16_t>(x, 0, rows, cols, y, rows_out, ldy, 1);
}

bool gemm_bf16_ld(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a, int64_t lda,
                  const uint16_t* b, int64_t ldb, float beta, void* c, int64_t ldc, bool c_bf16) {
  if (m == 0 || n == 0) return true;
  cublasHandle_t h = handle();
  if (!h || k == 0) return false;
  return gemm_ex(h, ta, tb, m, n, k, alpha, a, 0, b, 0, CUDA_R_16BF, beta, c, 0, 1, CUBLAS_COMPUTE_32F, lda, ldb, ldc,
                 c_bf16 ? CUDA_R_16BF : CUDA_R_32F);
}

namespace {

int64_t round4(int64_t v) { return (v + 3) / 4 * 4; }

// C rows not 16-byte aligned (GPT-2's 50,257-wide logits), beta == 0, one matrix: cuBLAS runs such products far
// below its rate (no vector loads of C, nor of B when B's rows are as wide), in TF32 and bf16 alike. Instead the
// operands are copied with padded rows (bf16: rows and k padded to 8 as below; otherwise float32 rows padded to 4,
// copied only where they are not aligned already), the product of n rounded up to 8 goes into a scratch C with
// aligned rows, chunk by chunk of rows (at most kPadCBytes of scratch), and each chunk's rows are copied out.
bool gemm_padded_c(cublasHandle_t h, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                   const float* b, float* c) {
  const bool bf16 = g_mode == MathMode::kBf16;
  const int64_t n8 = round8(n);
  const int64_t kk = bf16 ? round8(k) : k;
  const int64_t ra = ta ? k : m, cola = ta ? m : k, ra_out = ta ? kk : m;
  const int64_t rb = tb ? n : k, colb = tb ? k : n;
  const int64_t rb_out = tb ? n8 : kk;  // B's padded rows (tb: along n, zeros give zero columns of C)
  const int64_t colb_out = tb ? colb : n8;
  const int64_t lda = bf16 ? round8(cola) : round4(cola), ldb = bf16 ? round8(colb_out) : round4(colb_out);
  const size_t elem = bf16 ? 2 : 4;
  const bool copy_a = bf16 || lda != cola || ra_out != ra || !aligned(a, 16);
  const int64_t na = copy_a ? (ra_out * lda + 127) / 128 * 128 : 0;
  const int64_t nb = rb_out * ldb;
  char* ws = static_cast<char*>(bf16_scratch(elem * static_cast<size_t>(na + nb)));
  if (!ws) return false;
  void* a_ws = ws;
  void* b_ws = ws + elem * na;
  const void* a_op = a;
  if (bf16) {
    if (!pack_rows<uint16_t>(a, 0, ra, cola, static_cast<uint16_t*>(a_ws), ra_out, lda, 1)) return false;
    if (!pack_rows<uint16_t>(b, 0, rb, colb, static_cast<uint16_t*>(b_ws), rb_out, ldb, 1)) return false;
    a_op = a_ws;
  } else {
    if (copy_a) {
      if (!pack_rows<float>(a, 0, ra, cola, static_cast<float*>(a_ws), ra_out, lda, 1)) return false;
      a_op = a_ws;
    }
    if (!pack_rows<float>(b, 0, rb, colb, static_cast<float*>(b_ws), rb_out, ldb, 1)) return false;
  }
  // Rows of C per chunk: a multiple of 64 under kPadCBytes (the whole of C when it fits).
  int64_t rows = static_cast<int64_t>(kPadCBytes / (sizeof(float) * static_cast<size_t>(n8)));
  rows = rows >= 64 ? rows / 64 * 64 : (rows > 0 ? rows : 1);
  if (rows >= m) rows = m;
  else rows = round8((m + (m + rows - 1) / rows - 1) / ((m + rows - 1) / rows));  // balanced, 8-row aligned
  float* cs = cpad_scratch(sizeof(float) * static_cast<size_t>(rows * n8));
  if (!cs) return false;
  const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t ct = bf16 ? CUBLAS_COMPUTE_32F
                                 : g_mode == MathMode::kTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                             : CUBLAS_COMPUTE_32F;
  for (int64_t r0 = 0; r0 < m; r0 += rows) {
    const int64_t mm = m - r0 < rows ? m - r0 : rows;
    const char* ap = static_cast<const char*>(a_op) + elem * static_cast<size_t>(ta ? r0 : r0 * lda);
    if (!gemm_ex(h, ta, tb, mm, n8, kk, alpha, ap, 0, b_ws, 0, type, 0.0f, cs, 0, 1, ct, lda, ldb, n8)) return false;
    if (!copy_rows(cs, n8, c + r0 * n, n, mm, n)) return false;
  }
  return true;
}

}  // namespace

const char* gemm_last_path() { return g_path; }

bool gemm_f32(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t stride_a,
              const float* b, int64_t stride_b, float beta, float* c, int64_t stride_c, int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return true;
  cublasHandle_t h = handle();
  if (!h) return false;
  g_path = "k0";
  if (k == 0) return scale_c(h, m, n, beta, c, stride_c, batch);
  const bool c_aligned = n % 4 == 0 && (batch == 1 || stride_c % 4 == 0) && aligned(c, 16);
  const bool big = static_cast<double>(m) * static_cast<double>(n) >= bf16_min_mn() * static_cast<double>(m + n);
  if (!c_aligned && beta == 0.0f && batch == 1 && big && m * n >= (int64_t{1} << 20) && g_mode != MathMode::kFloat32 &&
      pad_c_enabled()) {
    g_path = g_mode == MathMode::kBf16 ? "bf16 padded C" : "tf32 padded C";
    return gemm_padded_c(h, ta, tb, m, n, k, alpha, a, b, c);
  }
  if (g_mode == MathMode::kBf16 && big && c_aligned) {
    g_path = "bf16";
    // bf16 copies of both operands in gemm_f32's own scratch (rows and k padded to 8), then the bf16 product
    // (float32 accumulation). C's rows must be 16-byte aligned too (n % 4): with an unaligned C cuBLAS's bf16
    // kernels ran slower than TF32 on an H200; those products go through gemm_padded_c (above) when they can,
    // else stay float32 (below).
    const int64_t k8 = round8(k);  // the reduction dimension, zero-padded
    const int64_t ra = ta ? k : m, cola = ta ? m : k, ra_out = ta ? k8 : m;  // A stored [ra, cola]
    const int64_t rb = tb ? n : k, colb = tb ? k : n, rb_out = tb ? n : k8;  // B stored [rb, colb]
    const int64_t lda = round8(cola), ldb = round8(colb);
    const int64_t na = ra_out * lda * ((batch == 1 || stride_a == 0) ? 1 : batch);
    const int64_t nb = rb_out * ldb * ((batch == 1 || stride_b == 0) ? 1 : batch);
    const int64_t na_padded = (na + 127) / 128 * 128;  // B's copy starts 256-byte aligned
    uint16_t* ws = static_cast<uint16_t*>(bf16_scratch(sizeof(uint16_t) * static_cast<size_t>(na_padded + nb)));
    if (!ws) return false;
    uint16_t *a16 = ws, *b16 = ws + na_padded;
    int64_t sa16 = 0, sb16 = 0;
    if (!convert_operand(a, ra, cola, ra_out, stride_a, batch, a16, sa16)) return false;
    if (!convert_operand(b, rb, colb, rb_out, stride_b, batch, b16, sb16)) return false;
    return gemm_ex(h, ta, tb, m, n, k8, alpha, a16, sa16, b16, sb16, CUDA_R_16BF, beta, c, stride_c, batch,
                   CUBLAS_COMPUTE_32F, lda, ldb);
  }
  g_path = g_mode == MathMode::kBf16 ? "f32 ops (fast16bf)" : g_mode == MathMode::kTf32 ? "tf32" : "f32";
  // Float32 operands: the mode picks what the tensor cores see (FAST_TF32 rounds the operands to tf32 inside the
  // product; FAST_16BF on float32 operands runs TF32 kernels too, bench/cuda_notes.md 4) and the sum stays float32.
  const cublasComputeType_t ct = g_mode == MathMode::kBf16   ? CUBLAS_COMPUTE_32F_FAST_16BF
                                 : g_mode == MathMode::kTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                             : CUBLAS_COMPUTE_32F;
  return gemm_ex(h, ta, tb, m, n, k, alpha, a, stride_a, b, stride_b, CUDA_R_32F, beta, c, stride_c, batch, ct);
}

namespace {

// gemm_mixed's float32 copy of a bf16 operand outside bf16 mode: grow-only, its own (gemm_f32 may use the others).
float* widen_scratch(size_t bytes) {
  static GrowBuffer buf;
  return static_cast<float*>(buf.get(bytes, true));
}

}  // namespace

bool gemm_mixed(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a, int64_t stride_a,
                GemmOperand b, int64_t stride_b, float beta, void* c, int64_t stride_c, int64_t batch, bool c_bf16) {
  if (!a.bf16 && !b.bf16 && !c_bf16) {
    return gemm_f32(ta, tb, m, n, k, alpha, static_cast<const float*>(a.data), stride_a,
                    static_cast<const float*>(b.data), stride_b, beta, static_cast<float*>(c), stride_c, batch);
  }
  if (m == 0 || n == 0 || batch == 0) return true;
  if (c_bf16 && k == 0) {
    // Nothing to sum: C = beta * C, which a bf16 C supports for beta 0 only.
    if (beta != 0.0f) return false;
    for (int64_t i = 0; i < batch && (i == 0 || stride_c != 0); ++i) {
      if (cudaMemsetAsync(static_cast<uint16_t*>(c) + i * stride_c, 0, sizeof(uint16_t) * m * n, launch_stream()) !=
          cudaSuccess) {
        return false;
      }
    }
    return true;
  }
  if (g_mode != MathMode::kBf16 && a.bf16 != b.bf16 && !c_bf16) {
    // fp32 / tf32 modes keep the float32 operand's precision: the bf16 one is widened (exactly) instead.
    const bool wide_a = a.bf16;
    const int64_t rows = wide_a ? (ta ? k : m) : (tb ? n : k), cols = wide_a ? (ta ? m : k) : (tb ? k : n);
    const int64_t stride = wide_a ? stride_a : stride_b;
    const int64_t extent = (batch > 1 && stride > 0 ? stride * (batch - 1) : 0) + rows * cols;
    float* w = widen_scratch(sizeof(float) * static_cast<size_t>(extent));
    if (!w || !from_bf16(static_cast<const uint16_t*>(wide_a ? a.data : b.data), w, extent)) return false;
    const float* fa = wide_a ? w : static_cast<const float*>(a.data);
    const float* fb = wide_a ? static_cast<const float*>(b.data) : w;
    return gemm_f32(ta, tb, m, n, k, alpha, fa, stride_a, fb, stride_b, beta, static_cast<float*>(c), stride_c,
                    batch);
  }
  cublasHandle_t h = handle();
  if (!h) return false;
  g_path = a.bf16 && b.bf16 ? "bf16 given" : a.bf16 || b.bf16 ? "bf16 one given" : "bf16 none given";
  if (k == 0) return scale_c(h, m, n, beta, static_cast<float*>(c), stride_c, batch);
  Bf16Operands ops;
  if (!prepare_bf16_operands(ta, tb, m, n, k, a, stride_a, b, stride_b, batch, ops)) return false;
  return gemm_ex(h, ta, tb, m, n, k, alpha, ops.a, ops.stride_a, ops.b, ops.stride_b, CUDA_R_16BF, beta, c, stride_c,
                 batch, CUBLAS_COMPUTE_32F, ops.lda, ops.ldb, 0, c_bf16 ? CUDA_R_16BF : CUDA_R_32F);
}

bool prepare_bf16_operands(bool ta, bool tb, int64_t m, int64_t n, int64_t k, GemmOperand a, int64_t stride_a,
                           GemmOperand b, int64_t stride_b, int64_t batch, Bf16Operands& out) {
  // k cannot be zero-padded here (a given bf16 operand has exactly k rows or columns): a converted copy keeps its
  // rows, padded to 8 elements only along its columns.
  const int64_t ra = ta ? k : m, cola = ta ? m : k;  // A stored [ra, cola]
  const int64_t rb = tb ? n : k, colb = tb ? k : n;  // B stored [rb, colb]
  out.lda = a.bf16 ? cola : round8(cola);
  out.ldb = b.bf16 ? colb : round8(colb);
  const int64_t na = a.bf16 ? 0 : ra * out.lda * ((batch == 1 || stride_a == 0) ? 1 : batch);
  const int64_t nb = b.bf16 ? 0 : rb * out.ldb * ((batch == 1 || stride_b == 0) ? 1 : batch);
  const int64_t na_padded = (na + 127) / 128 * 128;
  uint16_t* ws = nullptr;
  if (na + nb > 0) {
    ws = static_cast<uint16_t*>(bf16_scratch(sizeof(uint16_t) * static_cast<size_t>(na_padded + nb)));
    if (!ws) return false;
  }
  out.a = static_cast<const uint16_t*>(a.data);
  out.b = static_cast<const uint16_t*>(b.data);
  out.stride_a = stride_a;
  out.stride_b = stride_b;
  if (!a.bf16) {
    if (!convert_operand(static_cast<const float*>(a.data), ra, cola, ra, stride_a, batch, ws, out.stride_a)) {
      return false;
    }
    out.a = ws;
  }
  if (!b.bf16) {
    if (!convert_operand(static_cast<const float*>(b.data), rb, colb, rb, stride_b, batch, ws + na_padded,
                         out.stride_b)) {
      return false;
    }
    out.b = ws + na_padded;
  }
  return true;
}

}  // namespace gv::cuda

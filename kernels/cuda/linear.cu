// galvatron Linear on the GPU: Y = act(X @ op(W) + bias) as one cuBLASLt product whose epilogue adds the bias and
// applies the GELU (tanh form), writing the pre-activation as its auxiliary output; otherwise (an erf GELU, float32
// modes, shapes cuBLASLt declines) the product, then one pass adding the bias and applying the activation. And its
// backward counterpart galvatron GeluGradMatMul: the product into the GELU's output with a DGELU epilogue
// that reads the pre-activation back, then the bias gradient's column sums.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/cuda/blas_operands.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gelu_math.cuh"
#include "kernels/cuda/grow_buffer.h"
#include "kernels/cuda/lt_matmul.h"
#include "kernels/cuda/ops.h"

namespace gv::cuda {
namespace {

using detail::kThreads;
using detail::launched;

__device__ __forceinline__ float apply(LinearAct act, float v) {
  switch (act) {
    case LinearAct::kGelu: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f));
    case LinearAct::kGeluTanh:
      return detail::gelu_tanh(v);
    default: return v;
  }
}

__device__ __forceinline__ void put(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void put(uint16_t* p, int64_t i, float v) { p[i] = detail::bf16_bits(v); }

// v = src[r, c] + bias[c] (bias optional); pre[r, c] = v (when pre is given); y[r, c] = act(v). src may be pre (or y,
// without an activation): each element is read before it is written.
template <typename Out>
__global__ void bias_act_kernel(const float* src, const float* __restrict__ bias, Out* pre, Out* y, int64_t rows,
                                int64_t n, LinearAct act) {
  const int64_t total = rows * n;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    float v = src[i];
    if (bias) v += bias[i % n];
    if (pre) put(pre, i, v);
    put(y, i, apply(act, v));
  }
}

template <typename Out>
bool bias_act(const float* src, const float* bias, Out* pre, Out* y, int64_t rows, int64_t n, LinearAct act) {
  int64_t blocks = (rows * n + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{detail::num_sms()} * 16;
  if (blocks > cap) blocks = cap;
  bias_act_kernel<Out>
      <<<static_cast<unsigned>(blocks), kThreads, 0, launch_stream()>>>(src, bias, pre, y, rows, n, act);
  return launched();
}

// A bf16 copy of a bias for a bf16-output epilogue: grow-only.
uint16_t* bias_scratch(int64_t n) {
  static GrowBuffer buf;
  return buf.get_as<uint16_t>(static_cast<size_t>(n));
}

// The float32 product of a Linear with bfloat16 outputs, before its bias / activation pass: grow-only.
float* product_scratch(size_t bytes) {
  static GrowBuffer buf;
  return static_cast<float*>(buf.get(bytes, true));
}

bool lt_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("GALVATRON_CUDA_LT");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

const char* g_linear_path = "";

}  // namespace

const char* linear_last_path() { return g_linear_path; }

bool linear_forward(int64_t rows, int64_t n, int64_t k, bool tb, GemmOperand x, GemmOperand w, const float* bias,
                    LinearAct act, void* y, void* pre, bool out_bf16, const float* residual) {
  if (rows == 0 || n == 0) return true;
  const bool has_act = act != LinearAct::kNone;
  if (residual && (has_act || out_bf16)) return false;  // the op's inference rules these out
  // bf16 products: in bf16 mode, or both operands given in bf16 (gemm_mixed's rules otherwise).
  const bool bf16 = math_mode() == MathMode::kBf16 || (x.bf16 && w.bf16);
  // The float32 product lands in the output itself (float32 outputs: Y, or PreAct with an activation) or, for
  // bfloat16 outputs, in scratch; one pass then adds the bias, keeps the pre-activation and applies the activation.
  auto finish = [&](const float* product) {
    if (out_bf16) {
      return bias_act<uint16_t>(product, bias, has_act ? static_cast<uint16_t*>(pre) : nullptr,
                                static_cast<uint16_t*>(y), rows, n, act);
    }
    if (!bias && !has_act) return true;
    return bias_act<float>(product, bias, has_act ? static_cast<float*>(pre) : nullptr, static_cast<float*>(y), rows,
                           n, act);
  };
  float* out = out_bf16 ? product_scratch(sizeof(float) * static_cast<size_t>(rows * n))
                        : static_cast<float*>(has_act ? pre : y);
  if (!out) return false;
  // With a residual (Y float32, no activation: out is Y) the products accumulate onto it: beta 1 over a copy of R, or
  // cuBLASLt's C = R.
  const float beta = residual ? 1.0f : 0.0f;
  auto start_from_residual = [&] {
    return !residual || cudaMemcpyAsync(out, residual, sizeof(float) * static_cast<size_t>(rows * n),
                                        cudaMemcpyDeviceToDevice, launch_stream()) == cudaSuccess;
  };
  // The epilogue path: bf16 operands, n a multiple of 8 (the auxiliary output's leading dimension), the tanh GELU
  // (cuBLASLt's GELU) or none.
  if (bf16 && lt_enabled() && k > 0 && n % 8 == 0 && act != LinearAct::kGelu) {
    Bf16Operands ops;
    // Y = X @ op(W): X is gemm's A (rows x k), W its B.
    if (!prepare_bf16_operands(false, tb, rows, n, k, x, 0, w, 0, 1, ops)) return false;
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    if (act == LinearAct::kGeluTanh) epi = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    else if (bias)
      epi = CUBLASLT_EPILOGUE_BIAS;
    // With a bf16 D the epilogue takes a bf16 bias (cuBLASLt's bias type is D's): a rounded copy, as autocast's.
    const void* lt_bias = bias;
    if (bias && out_bf16) {
      uint16_t* b16 = bias_scratch(n);
      if (!b16 || !to_bf16(bias, b16, n)) return false;
      lt_bias = b16;
    }
    // Column-major view of row-major Y[rows, n] = X[rows, k] @ op(W): Y^T [n, rows] = op(W)^T [n, k] @ X^T [k, rows],
    // so cuBLASLt's A is W, its B is X and its D is Y^T; the bias runs along D's n rows. With a residual, C is R.
    LtProduct lp;
    lp.opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    lp.m = n, lp.n = rows, lp.k = k, lp.lda = ops.ldb, lp.ldb = ops.lda, lp.ldd = n;
    lp.d_type = out_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    lp.epilogue = epi;
    lp.a = ops.b, lp.b = ops.a, lp.c = residual, lp.d = y, lp.bias = lt_bias, lp.aux = has_act ? pre : nullptr;
    lp.beta = beta;
    if (lt_matmul(lp)) {
      g_linear_path = act == LinearAct::kGeluTanh ? (out_bf16 ? "lt bias+gelu bf16" : "lt bias+gelu")
                      : residual                  ? (bias ? "lt bias+residual" : "lt residual")
                      : bias                      ? (out_bf16 ? "lt bias bf16" : "lt bias")
                                                  : (out_bf16 ? "lt bf16" : "lt");
      return true;
    }
    g_linear_path = "gemm + bias/act (lt declined)";
    if (!start_from_residual() ||
        !gemm_bf16_ld(false, tb, rows, n, k, 1.0f, ops.a, ops.lda, ops.b, ops.ldb, beta, out, n, false)) {
      return false;
    }
    return finish(out);
  }
  g_linear_path = "gemm + bias/act";
  if (!start_from_residual() || !gemm_mixed(false, tb, rows, n, k, 1.0f, x, 0, w, 0, beta, out, 0, 1)) return false;
  return finish(out);
}

bool linear_gelu_backward(int64_t rows, int64_t n, int64_t k, bool tb, GemmOperand dy, GemmOperand w, const void* pre,
                          bool pre_bf16, bool tanh, void* dp, bool dp_bf16, float* dbias) {
  if (rows == 0 || n == 0)
    return dbias ? cudaMemsetAsync(dbias, 0, sizeof(float) * n, launch_stream()) == cudaSuccess : true;
  const bool bf16 = math_mode() == MathMode::kBf16 || (dy.bf16 && w.bf16);
  // The epilogue path: bf16 operands, the tanh GELU (cuBLASLt's), the saved input in D's type (the auxiliary
  // matrix's), n a multiple of 8 (its leading dimension).
  if (bf16 && tanh && lt_enabled() && k > 0 && n % 8 == 0 && pre_bf16 == dp_bf16) {
    Bf16Operands ops;
    if (!prepare_bf16_operands(false, tb, rows, n, k, dy, 0, w, 0, 1, ops)) return false;
    // DGELU alone: cuBLASLt's DGELU_BGRAD (its bias sums in the epilogue) measured 0.232 ms on GPT-2's MLP against
    // 0.219 ms for the unfused chain (cuda_notes 21); the column sums run as their own pass over dP instead.
    LtProduct lp;  // as linear_forward's: A is W, B is dY, D is dP^T
    lp.opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    lp.m = n, lp.n = rows, lp.k = k, lp.lda = ops.ldb, lp.ldb = ops.lda, lp.ldd = n;
    lp.d_type = dp_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    lp.epilogue = CUBLASLT_EPILOGUE_DGELU;
    lp.a = ops.b, lp.b = ops.a, lp.d = dp, lp.aux = const_cast<void*>(pre);  // DGELU reads the auxiliary matrix
    if (lt_matmul(lp)) {
      g_linear_path = dbias ? "lt dgelu + column sums" : "lt dgelu";
      if (!dbias) return true;
      return dp_bf16 ? column_sums_bf16(static_cast<const uint16_t*>(dp), dbias, rows, n, 1.0f)
                     : column_sums_f32(static_cast<const float*>(dp), dbias, rows, n, 1.0f);
    }
    g_linear_path = "gemm + gelu grad (lt declined)";
  } else {
    g_linear_path = "gemm + gelu grad";
  }
  // The product in float32 (dP itself when it is float32), then the GELU gradient in place, the column sums of the
  // float32 dP and the rounding.
  float* out = dp_bf16 ? product_scratch(sizeof(float) * static_cast<size_t>(rows * n)) : static_cast<float*>(dp);
  if (!out || !gemm_mixed(false, tb, rows, n, k, 1.0f, dy, 0, w, 0, 0.0f, out, 0, 1)) return false;
  const ActGrad op = tanh ? ActGrad::kGeluTanh : ActGrad::kGelu;
  if (pre_bf16 ? !activation_grad_bf16_saved(op, out, static_cast<const uint16_t*>(pre), out, rows * n)
               : !activation_grad_f32(op, out, static_cast<const float*>(pre), out, rows * n)) {
    return false;
  }
  if (dbias && !column_sums_f32(out, dbias, rows, n, 1.0f)) return false;
  return !dp_bf16 || to_bf16(out, static_cast<uint16_t*>(dp), rows * n);
}

}  // namespace gv::cuda

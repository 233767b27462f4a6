// Host-callable launchers of the CUDA op kernels (kernels/cuda/*.cu), over raw device pointers. Everything runs on
// the legacy default stream, in order, so a host copy (cudaMemcpy) after a launch sees its results. Each launcher
// returns false when the launch failed; cuda::last_error() (kernels/cuda/device.h) then says why.
// No CUDA header is needed to include this file.
#pragma once
#include <cstddef>
#include <cstdint>

namespace gv::cuda {

constexpr int kMaxDims = 8;

// Device scratch memory shared by the kernels of one launch sequence (grow-only; contents are not kept between
// launches). Null when the allocation fails.
void* workspace(size_t bytes);
// Device bytes the kernels hold as scratch now (workspace() and the launchers' own grow-only buffers), beside the
// executor's arena: part of a run's memory footprint.
size_t scratch_bytes();

// ---- matrix products (cuBLAS; float32 storage and accumulation, operand rounding per MathMode) ----
// Row-major: C[i] = alpha * op(A[i]) @ op(B[i]) + beta * C[i] for i < batch, matrices `stride_*` elements apart
// (stride 0 repeats one matrix; any stride, padded or overlapping, is allowed). op(A) is [m, k] (stored [k, m] when
// ta), op(B) [k, n] (stored [n, k] when tb). k == 0 gives C = beta * C.
bool gemm_f32(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t stride_a,
              const float* b, int64_t stride_b, float beta, float* c, int64_t stride_c, int64_t batch);
// What the products' tensor cores see, process-wide: kFloat32 exact float32 (CUBLAS_COMPUTE_32F, the default), kTf32
// operands rounded to tf32 (CUBLAS_COMPUTE_32F_FAST_TF32), kBf16 operands rounded to bf16: gemm_f32 converts both
// operands (into its own scratch, not workspace(); rows padded to 16 bytes) and calls the bf16 product, except for
// products whose operands outweigh their arithmetic (m*n/(m+n) under 128, GALVATRON_CUDA_BF16_MIN_MN), which keep
// float32 operands with CUBLAS_COMPUTE_32F_FAST_16BF (TF32 kernels in practice). A large single product (kTf32 or
// kBf16, beta == 0) whose C rows are not 16-byte aligned (n % 4, GPT-2's logits) runs on padded operand copies into a
// scratch C with aligned rows (chunks of rows, 256 MB at most), copied out after (GALVATRON_CUDA_PAD_C=0: off); other
// unaligned-C products keep float32 operands. Results and the accumulation stay float32 in every mode.
enum class MathMode { kFloat32, kTf32, kBf16 };
// The path of the last gemm_f32 call (for the profiler): "bf16", "bf16 padded C", "tf32 padded C", "tf32", ...
const char* gemm_last_path();
void set_math_mode(MathMode mode);
MathMode math_mode();
void set_allow_tf32(bool allow);  // kTf32 when true, kFloat32 when false

// bfloat16 operands (raw bits, uint16_t), float32 result and accumulation (CUBLAS_COMPUTE_32F), whatever the MathMode;
// same layout rules as gemm_f32.
bool gemm_bf16(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a, int64_t stride_a,
               const uint16_t* b, int64_t stride_b, float beta, float* c, int64_t stride_c, int64_t batch);
// y[i] = bf16(x[i]), rounding to nearest even (NaN stays NaN).
bool to_bf16(const float* x, uint16_t* y, int64_t n);
// y[i] = float32 of the bf16 x[i] (exact).
bool from_bf16(const uint16_t* x, float* y, int64_t n);
// Read-only elements of float32 or bfloat16 (bits): the operands of gemm_mixed (rows packed, as gemm_f32's) and the
// packed attention's inputs.
struct MixedTensor {
  const void* data = nullptr;
  bool bf16 = false;
};
using GemmOperand = MixedTensor;
// gemm_f32's contract with each operand float32 or bfloat16 (a training graph's shared bf16 copies,
// runtime/bf16_operands.h). Both float32: gemm_f32. Both bf16: the bf16 product. One of each: in kBf16 mode a bf16
// product, the float32 operand converted into scratch with rows padded to 8 elements and the bf16 one read in place
// (rows a multiple of 8 elements for cuBLAS's fast kernels); in the other modes the bf16 operand widened to float32
// and gemm_f32 (the float32 operand keeps its precision). Float32 accumulation; C float32, or bfloat16 (c_bf16: the
// bf16 product in every math mode, float32 operands converted; beta * C in bf16, and k == 0 only with beta 0).
bool gemm_mixed(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a, int64_t stride_a,
                GemmOperand b, int64_t stride_b, float beta, void* c, int64_t stride_c, int64_t batch,
                bool c_bf16 = false);
// y [rows_out, ldy] = bf16 of x [rows, cols] (row-major, contiguous), zeros in the padding (rows_out >= rows,
// ldy >= cols): operands for gemm_bf16_ld with rows 16 bytes apart and a zero-padded reduction dimension.
bool pack_bf16(const float* x, int64_t rows, int64_t cols, uint16_t* y, int64_t rows_out, int64_t ldy);
// One row-major product with explicit leading dimensions (elements between rows): C = alpha * op(A) @ op(B) + beta * C,
// bf16 A and B, float32 accumulation, C bfloat16 (c_bf16) or float32. For cuBLAS's fast kernels keep lda, ldb, ldc
// multiples of 8 and the bases 16-byte aligned.
bool gemm_bf16_ld(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a, int64_t lda,
                  const uint16_t* b, int64_t ldb, float beta, void* c, int64_t ldc, bool c_bf16);

// ---- galvatron Linear (kernels/cuda/linear.cu) ----
enum class LinearAct { kNone, kGelu, kGeluTanh };  // GELU: exact (erf) or the tanh approximation
// Y[rows, n] = act(X[rows, k] @ op(W) + bias), W [k, n] (or [n, k] with tb), bias [n] or null; with an activation
// `pre` [rows, n] receives X @ op(W) + bias. Operands float32 or bf16 (gemm_mixed's rules); bias float32; y and pre
// float32, or bf16 (out_bf16: float32 results rounded; the epilogue path then adds a bf16-rounded bias, cuBLASLt's
// bias type being its output's, as PyTorch's autocast does).
// bf16 products with n % 8 == 0 and no erf GELU run as one cuBLASLt product with a bias / GELU epilogue
// (GALVATRON_CUDA_LT=0: off); the rest as a product and one bias + activation pass.
// residual (optional, float32 [rows, n]; only without an activation and with float32 Y): Y = R + X @ op(W) + bias,
// cuBLASLt's C matrix with beta 1 (the other paths start Y from a copy of R).
bool linear_forward(int64_t rows, int64_t n, int64_t k, bool tb, GemmOperand x, GemmOperand w, const float* bias,
                    LinearAct act, void* y, void* pre, bool out_bf16, const float* residual = nullptr);
// galvatron GeluGradMatMul: dP[rows, n] = Gelu'(pre) * (dY[rows, k] @ op(W)), W [k, n] (or [n, k] with tb);
// dbias[n] (optional) = the column sums of dP. Operands float32 or bf16 (gemm_mixed's rules); pre and dP float32 or
// bf16; dbias float32. bf16 products with the tanh GELU, pre in dP's type and n % 8 == 0 run as one cuBLASLt product
// with a DGELU epilogue, then column sums of the dP it wrote (cuBLASLt's DGELU_BGRAD, measured, was slower than the
// unfused chain); otherwise the product into float32, the GELU gradient, the column sums (of the float32 dP) and the
// rounding as passes.
bool linear_gelu_backward(int64_t rows, int64_t n, int64_t k, bool tb, GemmOperand dy, GemmOperand w, const void* pre,
                          bool pre_bf16, bool tanh, void* dp, bool dp_bf16, float* dbias);
// The path of the last linear_forward / linear_gelu_backward call (for the profiler): "lt bias+gelu", "lt bias",
// "gemm + bias/act", "lt dgelu+bgrad", ...
const char* linear_last_path();

// ---- attention (kernels/cuda/attention.cu): ONNX Attention's 4-D and 3-D forms, kernels/cpu/attention.h's contract ----
struct AttentionDims {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, v_head_dim = 0;
  float scale = 0.0f;
  bool causal = false;
  const void* mask = nullptr;  // optional: uint8 keep-flags (mask_is_bool) or float32 additive
  bool mask_is_bool = false;
  int64_t mask_strides[4] = {0, 0, 0, 0};  // over [B, Hq, S, L], 0 along broadcast dims
  // The 3-D form's layout: Q [B, S, Hq, D], K [B, L, Hkv, D], V [B, L, Hkv, Dv] (and Y, dY, dQ, dK, dV alike)
  // instead of [B, H, S, D]. The flash kernels read and write it in place; v1 permutes through its own scratch.
  bool seq_major = false;
};
// Products follow the MathMode (kBf16: bfloat16 operands). Scratch comes from workspace().
// lse (may be null): also each query row's natural log-sum-exp [B, Hq, S] (galvatron AttentionWithLse); the flash
// path only (false otherwise). y, lse (both or neither): the forward's outputs, which let the flash backward skip
// rerunning the forward for its row statistics (v1 ignores them).
bool attention_f32(const AttentionDims& d, const float* q, const float* k, const float* v, float* y,
                   float* lse = nullptr);
bool attention_grad_f32(const AttentionDims& d, const float* q, const float* k, const float* v, const float* dy,
                        float* dq, float* dk, float* dv, const float* y = nullptr, const float* lse = nullptr);
// The same with every operand and result in bf16 (LSE float32): the training graph's bf16 attention I/O for Q, K, V
// apart (runtime/bf16_attention_io.cpp). cuDNN where it takes the shape (cudnn_attention_separate); otherwise the
// float32 path on widened copies, the results rounded.
bool attention_bf16(const AttentionDims& d, const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* y,
                    float* lse = nullptr);
bool attention_grad_bf16(const AttentionDims& d, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                         const uint16_t* dy, uint16_t* dq, uint16_t* dk, uint16_t* dv, const uint16_t* y = nullptr,
                         const float* lse = nullptr);
// Flash path (kernels/cuda/flash_attention.cu, FlashAttention-2 style: bf16 tensor-core tiles, online softmax in
// float32, no score matrix), which attention_f32 / attention_grad_f32 take when flash_attention_eligible(d, backward):
// the kBf16 mode, no mask (is_causal allowed), head_dim == v_head_dim <= 128, any GQA ratio, batch * q_heads <= 65535;
// GALVATRON_CUDA_FLASH (read per call): unset or "1" forward and backward, "fwd" the forward only, "0" neither.
// Otherwise v1 (materialized scores) runs.
bool flash_attention_eligible(const AttentionDims& d, bool backward);
// Whether GALVATRON_CUDA_FLASH leaves the flash path on at all (not "0").
bool flash_attention_enabled();
bool flash_attention_f32(const AttentionDims& d, const float* q, const float* k, const float* v, float* y,
                         float* lse = nullptr);
bool flash_attention_grad_f32(const AttentionDims& d, const float* q, const float* k, const float* v,
                              const float* dy, float* dq, float* dk, float* dv, const float* y = nullptr,
                              const float* lse = nullptr);
// Packed QKV [B, S, 3 * H * D] (galvatron AttentionPacked: Q, K, V side by side in each row, d.q_heads == d.kv_heads,
// sequence-major): Y [B, S, H * D] and LSE [B, H, S]; the backward writes dQKV (same layout). Flash path only
// (flash_attention_eligible).
bool flash_attention_packed_f32(const AttentionDims& d, const float* qkv, float* y, float* lse);
bool flash_attention_packed_grad_f32(const AttentionDims& d, const float* qkv, const float* dy, const float* y,
                                     const float* lse, float* dqkv);
// The same through cuDNN's fused attention (kernels/cuda/cudnn_attention.cpp; built where the cuDNN frontend headers
// are found, GALVATRON_CUDA_CUDNN_ATTENTION=0 off): bf16 copies of QKV, Y, dY and dQKV with heads padded to a multiple
// of 8; LSE is cuDNN's (the same natural log-sum-exp). cudnn_attention_supported builds (and caches) the shape's graphs
// and says whether cuDNN takes the forward (and the backward); the calls return false where it does not.
bool cudnn_attention_enabled();
bool cudnn_attention_supported(const AttentionDims& d, bool backward);
// QKV, Y and dY float32 or bfloat16 (the training graph's bf16 attention I/O, runtime/bf16_attention_io.cpp); Y and
// dQKV written in float32 or bfloat16 (y_bf16, dqkv_bf16); LSE float32. Heads cuDNN can read in place (bf16, D a
// multiple of the padding) are read and written in place. qkv_padded / y_padded (optional, bf16 [rows, 3 H Dp] and
// [rows, H Dp], Dp = cudnn_padded_head_dim(D)): the forward packs QKV and has cuDNN write O there instead of its own
// scratch (so they can be kept: the saved heads of galvatron AttentionPacked), and the backward reads them as cuDNN's
// Q, K, V and O instead of packing QKV and Y again.
bool cudnn_attention_packed(const AttentionDims& d, MixedTensor qkv, void* y, bool y_bf16, float* lse,
                            uint16_t* qkv_padded = nullptr, uint16_t* y_padded = nullptr);
// dqkv_sums (optional, float32 [3 H D]): dQKV's column sums over its B S rows (the QKV bias gradient), taken as
// cuDNN's padded result is unpacked.
bool cudnn_attention_packed_grad(const AttentionDims& d, MixedTensor qkv, MixedTensor dy, MixedTensor y,
                                 const float* lse, void* dqkv, bool dqkv_bf16, const uint16_t* qkv_padded = nullptr,
                                 const uint16_t* y_padded = nullptr, float* dqkv_sums = nullptr);
// ONNX Attention's Q, K, V apart (the 4-D or 3-D form; K and V may have fewer heads) through cuDNN in the kBf16 mode,
// each operand float32 or bf16: bf16 heads cuDNN can read in place (D a multiple of the padding) are read in place,
// others packed into bf16 copies with padded heads; Y, dQ, dK, dV written in float32 or bf16 (in place where cuDNN's
// own layout is theirs); LSE as cuDNN's statistics. cudnn_attention_separate_supported: cuDNN takes the shape in both
// directions (no mask, equal query and key lengths, D == Dv <= 128), the kBf16 mode, the switch on. attention_f32 /
// attention_grad_f32 and attention_bf16 / attention_grad_bf16 take this path first. The backward without y and lse
// reruns the forward. cudnn_attention_calls counts the calls that ran.
bool cudnn_attention_separate_supported(const AttentionDims& d);
bool cudnn_attention_separate(const AttentionDims& d, MixedTensor q, MixedTensor k, MixedTensor v, void* y, bool y_bf16,
                              float* lse = nullptr);
bool cudnn_attention_separate_grad(const AttentionDims& d, MixedTensor q, MixedTensor k, MixedTensor v, MixedTensor dy,
                                   void* dq, void* dk, void* dv, bool out_bf16, MixedTensor y = {},
                                   const float* lse = nullptr);
int64_t cudnn_attention_calls();
// The head dim cuDNN computes with: D rounded up to GALVATRON_CUDA_CUDNN_HEAD_PAD (a multiple of 8; default 8).
int64_t cudnn_padded_head_dim(int64_t d);
// The flash kernels with the same mixed operands: bf16 inputs widened into float32 scratch, bf16 results rounded
// from float32 scratch.
bool flash_attention_packed(const AttentionDims& d, MixedTensor qkv, void* y, bool y_bf16, float* lse);
bool flash_attention_packed_grad(const AttentionDims& d, MixedTensor qkv, MixedTensor dy, MixedTensor y,
                                 const float* lse, void* dqkv, bool dqkv_bf16);
// Rows of `heads` heads of d float32 or bf16 elements -> bf16 heads padded to dp elements (zeros in the padding), and
// back (to float32 or bf16).
bool pack_heads_bf16(MixedTensor src, int64_t heads, int64_t d, int64_t dp, uint16_t* dst);
bool unpack_heads_f32(const uint16_t* src, int64_t heads, int64_t d, int64_t dp, float* dst);
bool unpack_heads_bf16(const uint16_t* src, int64_t heads, int64_t d, int64_t dp, uint16_t* dst);
// The bf16 unpack of `rows` rows of `heads` heads, also writing col_sums [heads * d] (float32): the sums of each
// result column over the rows (a bias gradient), in a fixed order.
bool unpack_heads_bf16_sums(const uint16_t* src, int64_t rows, int64_t heads, int64_t d, int64_t dp, uint16_t* dst,
                            float* col_sums);
// Debug counter: successful flash launches (forward and backward calls) in this process.
int64_t flash_attention_calls();

// ---- broadcasting elementwise ----
// Output elements i < numel in row-major order over dims[0, rank); input k's element of output index (i_0..i_r) is
// at sum_d i_d * strides[k][d] (0 along broadcast dims).
struct Broadcast {
  int rank = 0;
  int64_t numel = 0;
  int64_t dims[kMaxDims] = {};
  int64_t strides[3][kMaxDims] = {};
};

enum class Binary { kAdd, kSub, kMul, kDiv, kPow, kMax, kMin };
bool binary_f32(Binary op, const float* a, const float* b, float* out, const Broadcast& bc);
bool binary_i64(Binary op, const int64_t* a, const int64_t* b, int64_t* out, const Broadcast& bc);
enum class Compare { kEqual, kLess, kLessOrEqual, kGreater, kGreaterOrEqual, kAnd, kOr, kXor };
bool compare_f32(Compare op, const float* a, const float* b, uint8_t* out, const Broadcast& bc);
bool compare_i64(Compare op, const int64_t* a, const int64_t* b, uint8_t* out, const Broadcast& bc);
bool compare_u8(Compare op, const uint8_t* a, const uint8_t* b, uint8_t* out, const Broadcast& bc);
// out = cond ? x : y over elements of elem_size bytes (1, 2, 4 or 8).
bool where(int elem_size, const uint8_t* cond, const void* x, const void* y, void* out, const Broadcast& bc);
// out = x broadcast (Expand), or any strided gather into a contiguous output (Transpose): input 0's strides.
bool strided_copy(int elem_size, const void* x, void* out, const Broadcast& bc);

// out[bc_offset(1, i)] = x[bc_offset(0, i)]: a box copy between two strided layouts (Concat, Split, SliceGrad).
// Destination elements must be distinct.
bool box_copy(int elem_size, const void* x, void* out, const Broadcast& bc);

enum class Unary {
  kNeg, kAbs, kRelu, kSqrt, kReciprocal, kExp, kLog, kTanh, kErf, kSigmoid, kGelu, kGeluTanh, kNot, kIdentity
};
bool unary_f32(Unary op, const float* x, float* y, int64_t n);
// x[n] *= s
bool scale_f32(float* x, int64_t n, float s);
bool not_u8(const uint8_t* x, uint8_t* y, int64_t n);
// ONNX IsNaN (nan) and IsInf (neg_inf, pos_inf: which infinities count) on float32, bool (0/1 bytes) out.
bool is_nan_or_inf_f32(const float* x, uint8_t* y, int64_t n, bool nan, bool neg_inf, bool pos_inf);
enum class ActGrad { kSigmoid, kTanh, kErf, kGelu, kGeluTanh };
// dx = dy * f'(v): v is the forward output for kSigmoid and kTanh, the forward input otherwise.
bool activation_grad_f32(ActGrad op, const float* dy, const float* v, float* dx, int64_t n);
// The same with the saved tensor v in bfloat16 (bits).
bool activation_grad_bf16_saved(ActGrad op, const float* dy, const uint16_t* v, float* dx, int64_t n);

// Cast between element kinds: 'f' float32, 'd' float64, 'l' int64, 'i' int32, 'b' bool/uint8. Float to int
// saturates (NaN to 0); to bool is x != 0.
bool cast(char from, char to, const void* x, void* y, int64_t n);

// ---- normalization, softmax ----
// y[rows, cols] = (x - mean) * inv_std * scale + bias (bias may be null); mean, inv_std [rows] may be null.
bool layer_norm_f32(const float* x, const float* scale, const float* bias, float* y, float* mean, float* inv_std,
                    int64_t rows, int64_t cols, float eps);
// The same with y in bfloat16 (the float32 results rounded).
bool layer_norm_to_bf16(const float* x, const float* scale, const float* bias, uint16_t* y, float* mean,
                        float* inv_std, int64_t rows, int64_t cols, float eps);
// SkipLayerNormalization: sum = x + skip (x float32, or bfloat16 bits with x_bf16; float32 sum, always written), then
// y = layer_norm(sum) in float32 or, with y_bf16, rounded to bfloat16 bits; mean, inv_std may be null.
bool skip_layer_norm(const void* x, bool x_bf16, const float* skip, float* sum, const float* scale,
                     const float* bias, void* y, bool y_bf16, float* mean, float* inv_std, int64_t rows, int64_t cols,
                     float eps);
// Backward (kernels/cpu/norm.h's formula). dy, mean, inv_std, dmean, dinv_std may be null (statistics recomputed
// when mean/inv_std are null, with eps); dscale, dbias may be null; addend (optional, [rows, cols]) is added to dx.
// dx_bf16 (optional): dx rounded to bf16 as well; dx_sums (optional, [cols]): the column sums of those bf16 values
// (the bias gradient BiasGrad would take from the copy).
bool layer_norm_grad_f32(const float* dy, const float* x, const float* scale, const float* mean, const float* inv_std,
                         const float* dmean, const float* dinv_std, float* dx, float* dscale, float* dbias,
                         int64_t rows, int64_t cols, float eps, const float* addend = nullptr,
                         uint16_t* dx_bf16 = nullptr, float* dx_sums = nullptr);
// y = x / sqrt(mean(x^2) + eps) * scale, and its backward (statistic recomputed).
bool rms_norm_f32(const float* x, const float* scale, float* y, int64_t rows, int64_t cols, float eps);
bool rms_norm_grad_f32(const float* dy, const float* x, const float* scale, float* dx, float* dscale, int64_t rows,
                       int64_t cols, float eps);
// Softmax / log-softmax over [outer, n, inner] along n, and the backward from the output.
bool softmax_f32(const float* x, float* y, int64_t outer, int64_t n, int64_t inner, bool log);
bool softmax_grad_f32(const float* dy, const float* y, float* dx, int64_t outer, int64_t n, int64_t inner, bool log);

// ---- reductions ----
// y[o] = scale * sum over the reduced dims of x; the kept dims (sizes, x strides) enumerate o in row-major order.
struct Reduce {
  int kept_rank = 0, red_rank = 0;
  int64_t kept_dims[kMaxDims] = {}, kept_strides[kMaxDims] = {};
  int64_t red_dims[kMaxDims] = {}, red_strides[kMaxDims] = {};
  int64_t kept_numel = 1, red_numel = 1;
};
bool reduce_sum_f32(const float* x, float* y, const Reduce& r, float scale);
// y[c] = scale * sum over r of x[r, c] for a row-major [rows, cols] x (reduce_sum_f32's path for leading reduced
// dims): tiles of 128 columns (float4) by slabs of rows, partial sums per slab, then a double sum over the slabs in
// order (deterministic).
bool column_sums_f32(const float* x, float* y, int64_t rows, int64_t cols, float scale);
// The same over bfloat16 elements (bits), summed in float32 (GeluGradMatMul's bias gradient from its bf16 dP).
bool column_sums_bf16(const uint16_t* x, float* y, int64_t rows, int64_t cols, float scale);

// ---- indexing ----
// out[outer, n_idx, inner] = data[outer, idx[j], inner] (negative indices count from the end); idx int64 or int32.
bool gather(int elem_size, const void* data, const void* idx, bool idx64, void* out, int64_t outer, int64_t axis_dim,
            int64_t n_idx, int64_t inner);
// dx[outer, axis_dim, inner] = 0, then dx[o, idx[j]] += grad[o, j] (idx == skip adds nothing; skip -1: none).
bool gather_grad_f32(const float* grad, const void* idx, bool idx64, float* dx, int64_t outer, int64_t axis_dim,
                     int64_t n_idx, int64_t inner, int64_t skip);
// The same added into dx as it is (galvatron GatherGradAdd, after copying its Base into dx).
bool gather_grad_add_f32(const float* grad, const void* idx, bool idx64, float* dx, int64_t outer, int64_t axis_dim,
                         int64_t n_idx, int64_t inner, int64_t skip);

// ---- loss ----
// Scores [n, c, d], labels [n, d]. Reduction 0 none, 1 sum, 2 mean (over the summed weights). Labels outside [0, c)
// and ignore_index (when has_ignore) count as ignored. loss: [n*d] for none, else a scalar; log_prob may be null.
bool softmax_cross_entropy_f32(const float* scores, const void* labels, bool labels64, const float* weights,
                               int64_t n, int64_t c, int64_t d, bool has_ignore, int64_t ignore_index, int reduction,
                               float* loss, float* log_prob);
// dscores = coef * (softmax - onehot) + (dlog_prob - softmax * sum(dlog_prob)); coef = dloss (per position for
// reduction none) * w[label] / (total weight for mean). dloss, dlog_prob may be null.
bool softmax_cross_entropy_grad_f32(const float* dloss, const float* scores, const void* labels, bool labels64,
                                    const float* weights, const float* dlog_prob, int64_t n, int64_t c, int64_t d,
                                    bool has_ignore, int64_t ignore_index, int reduction, float* dscores);

// The head product and its cross-entropy (kernels/cuda/linear_cross_entropy.cu; galvatron LinearCrossEntropy):
// loss = cross-entropy(X [n, k] @ op(W), labels [n]) with op(W) = W^T for W [v, k] (trans_w) or W for W [k, v];
// reduction mean (over the counted labels; 0 when none counts) or sum; labels equal to ignore_index (has_ignore) or
// outside [0, v) count as ignored. Chunks of chunk_rows rows of logits (0: even chunks within
// GALVATRON_CUDA_LCE_CHUNK_MB, default 2 GiB).
struct LinearCrossEntropyArgs {
  const float* x = nullptr;
  const float* w = nullptr;
  const void* labels = nullptr;
  bool labels64 = true;
  int64_t n = 0, k = 0, v = 0;
  bool trans_w = true, mean = true, has_ignore = false;
  int64_t ignore_index = 0;
  int64_t chunk_rows = 0;
};
// With dx, dw non-null also the gradients dx [n, k] and dw (W's layout) for dLoss = 1, from the same logits.
bool linear_cross_entropy_f32(const LinearCrossEntropyArgs& a, float* loss, float* dx, float* dw);
// dx [n, k] and dw (W's layout) from the loss gradient dloss (a device scalar; null: no gradient, zeros).
bool linear_cross_entropy_grad_f32(const LinearCrossEntropyArgs& a, const float* dloss, float* dx, float* dw);

// ---- training ----
bool accumulate_f32(float* acc, const float* g, int64_t n);
// out[0] = sqrt(sum_i weights[i] * sum of squares of tensor i) * scale (float32 scalar on the device); weights may be
// null (all 1).
bool grad_norm_f32(const MixedTensor* tensors, const int64_t* counts, const float* weights, int num, float scale,
                   float* out);
// The same in two halves, so that the sum of squares (a float64 on the device, in a workspace valid until the next
// call) can be all-reduced across processes in between.
double* grad_norm_sum_squares_f32(const MixedTensor* tensors, const int64_t* counts, const float* weights, int num);
bool grad_norm_finish_f32(const double* sum_squares, float scale, float* out);
struct AdamW {
  double beta1, beta2, eps, weight_decay, grad_scale, max_norm;
  bool zero_grad;
};
// PyTorch's AdamW (kernels/cpu/optimizer.h), reading lr (float64 when lr_is_f64, else float32), step (int64) and the
// optional grad norm (float32, for clipping at max_norm > 0) from device scalars. p16 (optional, n elements): the
// parameter's bf16 copy, rewritten from the updated values (rounded to nearest even, as to_bf16).
// g is float32, or bf16 bits (g_bf16: a reduced bf16 gradient, widened exactly).
// sum_squares (optional, a float64 on the device): the sum of squares of the unscaled gradient is added to it (the
// gradient norm taken inside the updates; atomically, so several updates may add to one accumulator).
// p_low16 (optional, needs p16): the master is held as (p16, p_low16), the halves of split_float32_f32, and p is
// neither read nor written (kernels/split_float32.h; may be null).
bool adamw_f32(float* p, void* g, bool g_bf16, float* m, float* v, int64_t n, const void* lr, bool lr_is_f64,
               const int64_t* step, const float* grad_norm, const AdamW& a, uint16_t* p16 = nullptr,
               void* stream = nullptr, double* sum_squares = nullptr, uint16_t* p_low16 = nullptr);
// x as (its bf16 rounding, its low 16 bits), kernels/split_float32.h; hi and lo may lie inside x's buffer.
bool split_float32_f32(const float* x, uint16_t* hi, uint16_t* lo, int64_t n);
// The same update of `num` whole parameters (p[i], g[i], m[i], v[i] of n[i] elements), up to 48 per launch.
// `stream` (both): a cudaStream_t to launch on (null: the default stream), e.g. side_stream_fork()'s.
bool adamw_multi_f32(float* const* p, float* const* g, float* const* m, float* const* v, const int64_t* n, int num,
                     const void* lr, bool lr_is_f64, const int64_t* step, const float* grad_norm, const AdamW& a,
                     void* stream = nullptr, double* sum_squares = nullptr);

}  // namespace gv::cuda

// Register-resident row kernels for LayerNormalization (center) and RMSNormalization (kernels/cuda/norm_rows.cu),
// taken by norm_softmax.cu's launchers where norm_rows_eligible() holds (GALVATRON_CUDA_NORM_ROWS=0: never, for
// comparisons); the runtime's RMSNormalization glue calls them for the bf16 output and the gradient's addend.
#pragma once
#include <cstdint>
#include <initializer_list>

namespace gv::cuda {

// rows > 0, cols % 4 == 0 and <= 8192, every non-null tensor 16-byte aligned, and not switched off by the variable.
bool norm_rows_eligible(int64_t rows, int64_t cols, std::initializer_list<const void*> tensors);
// y = (x - mean) * inv_std * scale + bias (center; bias may be null), or x * inv_rms * scale; mean, inv_std may be
// null (RMS: both ignored). y float32, or bfloat16 (y_bf16: the float32 results rounded).
bool norm_rows_forward(bool center, const float* x, const float* scale, const float* bias, void* y, bool y_bf16,
                       float* mean, float* inv_std, int64_t rows, int64_t cols, float eps);
// LayerNormalization (center) or RMSNormalization of sum = x + skip (x float32, or bfloat16 with x_bf16; 8-byte
// aligned then), which is stored too (float32); y, mean and inv_std as norm_rows_forward's.
bool norm_rows_skip_forward(bool center, const void* x, bool x_bf16, const float* skip, float* sum, const float* scale,
                            const float* bias, void* y, bool y_bf16, float* mean, float* inv_std, int64_t rows,
                            int64_t cols, float eps);
// LayerNormalization (center) or RMSNormalization of a residual stream kept in bf16 (the skip ops' sum_dtype 16):
// sum = x + skip (x the branch in bf16, skip float32 or bf16 with skip_bf16) rounded to bf16 and stored, then
// normalized as it was stored; y, mean and inv_std as norm_rows_forward's.
bool norm_rows_skip_forward_bf16_sum(bool center, const uint16_t* x, const void* skip, bool skip_bf16, uint16_t* sum,
                                     const float* scale, const float* bias, void* y, bool y_bf16, float* mean,
                                     float* inv_std, int64_t rows, int64_t cols, float eps);
// dx, and dscale / dbias (either may be null; dbias only when center) from dy; mean and inv_std from the forward or
// null (recomputed with eps). addend (optional, [rows, cols], 16-byte aligned) is added to dx. dx_bf16 (optional,
// 8-byte aligned): dx rounded to bf16 too; dx_sums (optional, center only): the column sums of those bf16 values.
bool norm_rows_backward(bool center, const float* dy, const float* x, const float* scale, const float* mean,
                        const float* inv_std, float* dx, float* dscale, float* dbias, int64_t rows, int64_t cols,
                        float eps, const float* addend = nullptr, uint16_t* dx_bf16 = nullptr,
                        float* dx_sums = nullptr);
// The norm backward of a residual stream kept in bf16: x and addend (optional) bf16, dy float32 or bf16 (dy_bf16),
// dx (float32) optional, the rest as norm_rows_backward's (dx_bf16 then the stream's gradient).
bool norm_rows_backward_bf16_stream(bool center, const void* dy, bool dy_bf16, const uint16_t* x, const float* scale,
                                    const float* mean, const float* inv_std, float* dx, float* dscale, float* dbias,
                                    int64_t rows, int64_t cols, float eps, const uint16_t* addend, uint16_t* dx_bf16,
                                    float* dx_sums);

}  // namespace gv::cuda

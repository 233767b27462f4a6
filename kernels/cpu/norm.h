// Layer and RMS normalization over the trailing `cols` elements of x viewed as [rows, cols]. Statistics are
// accumulated in double; U is the type the layer-norm statistics are stored in (the stash type).
#pragma once
#include <cstdint>

namespace gv::cpu {

// y[rows, cols] = (x - mean) * inv_std * scale + bias, with mean and inv_std = 1/sqrt(var + eps) per row.
// scale, bias: [cols] (bias may be null); mean, inv_std: [rows] (may be null).
template <typename T, typename U>
void layer_norm(const T* x, const T* scale, const T* bias, T* y, U* mean, U* inv_std, int64_t rows, int64_t cols,
                double eps);

// Backward of layer_norm. dy may be null (no gradient reached Y); dmean, dinv_std [rows] (may be null) are gradients
// reaching the statistics outputs. mean and inv_std are the saved statistics. Outputs: dx [rows, cols];
// dscale, dbias [cols] (may be null).
template <typename T, typename U>
void layer_norm_backward(const T* dy, const T* x, const T* scale, const U* mean, const U* inv_std, const U* dmean,
                         const U* dinv_std, T* dx, T* dscale, T* dbias, int64_t rows, int64_t cols);

// Per-row statistics only (when the forward did not keep them): mean [rows], inv_std [rows].
template <typename T, typename U>
void layer_norm_stats(const T* x, U* mean, U* inv_std, int64_t rows, int64_t cols, double eps);

// y[rows, cols] = x / sqrt(mean(x^2) + eps) * scale; scale [cols].
template <typename T>
void rms_norm(const T* x, const T* scale, T* y, int64_t rows, int64_t cols, double eps);

// Backward of rms_norm (statistics recomputed from x): dx [rows, cols], dscale [cols] (may be null).
template <typename T>
void rms_norm_backward(const T* dy, const T* x, const T* scale, T* dx, T* dscale, int64_t rows, int64_t cols,
                       double eps);

}  // namespace gv::cpu

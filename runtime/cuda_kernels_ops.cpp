// The CUDA backend's native kernels: glue from KernelContext to the launchers of kernels/cuda/ops.h, registered into
// OpSchema::cuda by register_cuda_kernels(). float32 only; other dtypes and unusual layouts go to the fallback
// (runtime/cuda_kernels_fallback.cpp), which runs the CPU kernel. Nothing here dereferences device memory on the host
// except the axes input of a reduction with keepdims = 0, read with a synchronous copy.
#ifdef GALVATRON_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "kernels/cuda/norm_rows.h"
#include "kernels/cuda/ops.h"
#include "runtime/communicator.h"
#include "runtime/cuda_kernels.h"
#include "runtime/ops/movement_common.h"

namespace gv {

// runtime/cuda_kernels_fallback.cpp: GALVATRON_CUDA_PROFILE=2's per-shape notes.
bool cuda_profile_detail();
void cuda_profile_note(const std::string& note);

namespace {

Status launch(const KernelContext& ctx, bool ok) {
  return ok ? Status::ok() : ctx.fail(std::string("CUDA kernel failed: ") + cuda::last_error());
}

bool is_f32(const TensorRef& t) { return t.dtype == DType::kFloat32; }
bool all_outputs_f32(const KernelContext& ctx) {
  for (const TensorRef& t : ctx.outputs)
    if (t.data && !is_f32(t)) return false;
  return true;
}
bool all_f32(const KernelContext& ctx) {
  for (const TensorRef& t : ctx.inputs)
    if (t.data && !is_f32(t)) return false;
  for (const TensorRef& t : ctx.outputs)
    if (t.data && !is_f32(t)) return false;
  return true;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size(), 1);
  for (int64_t d = static_cast<int64_t>(s.size()) - 2; d >= 0; --d) st[d] = st[d + 1] * s[d + 1];
  return st;
}

// Strides of `in` broadcast into `out` (right-aligned; 0 along broadcast dims), in out's rank.
Shape broadcast_strides(const Shape& in, const Shape& out) {
  Shape st(out.size(), 0);
  const Shape c = contiguous_strides(in);
  const size_t lead = out.size() - in.size();
  for (size_t d = 0; d < in.size(); ++d) st[lead + d] = in[d] == 1 ? 0 : c[d];
  return st;
}

// A Broadcast over `dims` with per-operand strides; size-1 dims dropped, mergeable neighbours merged. False when
// the collapsed rank exceeds kMaxDims.
bool make_bc(const Shape& dims, const std::vector<Shape>& strides, cuda::Broadcast& bc) {
  std::vector<int64_t> d_out;
  std::vector<std::vector<int64_t>> s_out(strides.size());
  for (int64_t d = static_cast<int64_t>(dims.size()) - 1; d >= 0; --d) {
    if (dims[d] == 1) continue;
    if (!d_out.empty()) {
      bool merge = true;
      for (size_t k = 0; k < strides.size() && merge; ++k) merge = strides[k][d] == s_out[k].front() * d_out.front();
      if (merge) {
        d_out.front() *= dims[d];
        continue;
      }
    }
    d_out.insert(d_out.begin(), dims[d]);
    for (size_t k = 0; k < strides.size(); ++k) s_out[k].insert(s_out[k].begin(), strides[k][d]);
  }
  if (d_out.empty()) {
    d_out.push_back(1);
    for (auto& s : s_out) s.push_back(0);
  }
  if (d_out.size() > static_cast<size_t>(cuda::kMaxDims)) return false;
  bc = cuda::Broadcast{};
  bc.rank = static_cast<int>(d_out.size());
  bc.numel = shape_numel(dims);
  for (int d = 0; d < bc.rank; ++d) {
    bc.dims[d] = d_out[d];
    for (size_t k = 0; k < strides.size(); ++k) bc.strides[k][d] = s_out[k][d];
  }
  return true;
}

// Reads a small int64/int32 constant input to the host (a synchronous copy).
bool read_ints(const TensorRef& t, std::vector<int64_t>& out);

// Input i as integers: from the graph's host copy when it is a constant (KernelContext::host_inputs), else from the
// device (read_ints: a synchronous copy).
bool input_ints(const KernelContext& ctx, int i, std::vector<int64_t>& out) {
  const TensorRef& t = ctx.inputs[i];
  const void* host = i < static_cast<int>(ctx.host_inputs.size()) ? ctx.host_inputs[i] : nullptr;
  if (!host) return read_ints(t, out);
  out.assign(static_cast<size_t>(t.numel()), 0);
  if (t.dtype == DType::kInt64) {
    std::copy_n(static_cast<const int64_t*>(host), out.size(), out.begin());
    return true;
  }
  if (t.dtype == DType::kInt32) {
    std::copy_n(static_cast<const int32_t*>(host), out.size(), out.begin());
    return true;
  }
  return false;
}

bool read_ints(const TensorRef& t, std::vector<int64_t>& out) {
  out.assign(static_cast<size_t>(t.numel()), 0);
  if (t.numel() == 0) return true;
  if (t.dtype == DType::kInt64) return cuda::memcpy_d2h(out.data(), t.data, t.nbytes());
  if (t.dtype == DType::kInt32) {
    std::vector<int32_t> v(out.size());
    if (!cuda::memcpy_d2h(v.data(), t.data, t.nbytes())) return false;
    std::copy(v.begin(), v.end(), out.begin());
    return true;
  }
  return false;
}

bool normalize_axis(int64_t& axis, int64_t rank) {
  if (axis < -rank || axis >= rank) return false;
  if (axis < 0) axis += rank;
  return true;
}

int64_t dims_product(const Shape& s, int64_t b, int64_t e) {
  int64_t p = 1;
  for (int64_t i = b; i < e; ++i) p *= s[i];
  return p;
}

// ---- copies: Reshape, Identity, Squeeze, Unsqueeze, Flatten ----

Status copy_cuda(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const TensorRef& y = ctx.outputs[0];
  if (x.data == y.data || y.nbytes() == 0) return Status::ok();
  return launch(ctx, cuda::memcpy_d2d_async(y.data, x.data, y.nbytes()));
}

// ---- broadcasting binary ops ----

template <cuda::Binary Op>
Status binary_cuda(KernelContext& ctx) {
  const TensorRef &a = ctx.inputs[0], &b = ctx.inputs[1], &y = ctx.outputs[0];
  const bool f32 = is_f32(a) && is_f32(b) && is_f32(y);
  const bool i64 = a.dtype == DType::kInt64 && b.dtype == DType::kInt64 && y.dtype == DType::kInt64 &&
                   Op != cuda::Binary::kPow;
  if (!f32 && !i64) return cuda_fallback_kernel(ctx);
  cuda::Broadcast bc;
  if (!make_bc(y.shape, {broadcast_strides(a.shape, y.shape), broadcast_strides(b.shape, y.shape)}, bc)) {
    return cuda_fallback_kernel(ctx);
  }
  if (f32) return launch(ctx, cuda::binary_f32(Op, a.as<float>(), b.as<float>(), y.as<float>(), bc));
  return launch(ctx, cuda::binary_i64(Op, a.as<int64_t>(), b.as<int64_t>(), y.as<int64_t>(), bc));
}

template <cuda::Compare Op>
Status compare_cuda(KernelContext& ctx) {
  const TensorRef &a = ctx.inputs[0], &b = ctx.inputs[1], &y = ctx.outputs[0];
  if (a.dtype != b.dtype) return cuda_fallback_kernel(ctx);
  cuda::Broadcast bc;
  if (!make_bc(y.shape, {broadcast_strides(a.shape, y.shape), broadcast_strides(b.shape, y.shape)}, bc)) {
    return cuda_fallback_kernel(ctx);
  }
  uint8_t* out = y.as<uint8_t>();
  switch (a.dtype) {
    case DType::kFloat32: return launch(ctx, cuda::compare_f32(Op, a.as<float>(), b.as<float>(), out, bc));
    case DType::kInt64: return launch(ctx, cuda::compare_i64(Op, a.as<int64_t>(), b.as<int64_t>(), out, bc));
    case DType::kBool:
    case DType::kUInt8: return launch(ctx, cuda::compare_u8(Op, a.as<uint8_t>(), b.as<uint8_t>(), out, bc));
    default: return cuda_fallback_kernel(ctx);
  }
}

Status where_cuda(KernelContext& ctx) {
  const TensorRef &c = ctx.inputs[0], &x = ctx.inputs[1], &z = ctx.inputs[2], &y = ctx.outputs[0];
  if (c.dtype != DType::kBool || x.dtype != z.dtype) return cuda_fallback_kernel(ctx);
  cuda::Broadcast bc;
  if (!make_bc(y.shape,
               {broadcast_strides(c.shape, y.shape), broadcast_strides(x.shape, y.shape),
                broadcast_strides(z.shape, y.shape)},
               bc)) {
    return cuda_fallback_kernel(ctx);
  }
  return launch(ctx, cuda::where(static_cast<int>(dtype_size(y.dtype)), c.as<uint8_t>(), x.data, z.data, y.data, bc));
}

// ---- unary ----

template <cuda::Unary Op>
Status unary_cuda(KernelContext& ctx) {
  if (!all_f32(ctx)) return cuda_fallback_kernel(ctx);
  return launch(ctx, cuda::unary_f32(Op, ctx.inputs[0].as<float>(), ctx.outputs[0].as<float>(), ctx.inputs[0].numel()));
}

Status gelu_cuda(KernelContext& ctx) {
  if (!all_f32(ctx)) return cuda_fallback_kernel(ctx);
  const bool tanh = ctx.attrs().get_string("approximate", "none") == "tanh";
  return launch(ctx, cuda::unary_f32(tanh ? cuda::Unary::kGeluTanh : cuda::Unary::kGelu, ctx.inputs[0].as<float>(),
                                     ctx.outputs[0].as<float>(), ctx.inputs[0].numel()));
}

// IsNaN / IsInf on float32 (the dynamo exporter's SDPA guard reads the probabilities); other dtypes on the host.
template <bool kNan>
Status nan_inf_cuda(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  if (!is_f32(x)) return cuda_fallback_kernel(ctx);
  const bool neg = kNan || ctx.attrs().get_int("detect_negative", 1) != 0;
  const bool pos = kNan || ctx.attrs().get_int("detect_positive", 1) != 0;
  return launch(ctx, cuda::is_nan_or_inf_f32(x.as<float>(), ctx.outputs[0].as<uint8_t>(), x.numel(), kNan, neg, pos));
}

Status not_cuda(KernelContext& ctx) {
  return launch(ctx, cuda::not_u8(ctx.inputs[0].as<uint8_t>(), ctx.outputs[0].as<uint8_t>(), ctx.inputs[0].numel()));
}

template <cuda::ActGrad Op>
Status act_grad_cuda(KernelContext& ctx) {
  cuda::ActGrad op = Op;
  if (op == cuda::ActGrad::kGelu && ctx.attrs().get_string("approximate", "none") == "tanh") {
    op = cuda::ActGrad::kGeluTanh;
  }
  const TensorRef &dy = ctx.inputs[0], &v = ctx.inputs[1], &dx = ctx.outputs[0];
  if (is_f32(dy) && v.dtype == DType::kBFloat16 && is_f32(dx)) {  // a bf16 saved pre-activation
    return launch(ctx, cuda::activation_grad_bf16_saved(op, dy.as<float>(), static_cast<const uint16_t*>(v.data),
                                                        dx.as<float>(), dy.numel()));
  }
  if (!all_f32(ctx)) return cuda_fallback_kernel(ctx);
  return launch(ctx, cuda::activation_grad_f32(op, dy.as<float>(), v.as<float>(), dx.as<float>(), dy.numel()));
}

char cast_code(DType t) {
  switch (t) {
    case DType::kFloat32: return 'f';
    case DType::kFloat64: return 'd';
    case DType::kInt64: return 'l';
    case DType::kInt32: return 'i';
    case DType::kBool: return 'b';
    default: return 0;
  }
}

Status cast_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &y = ctx.outputs[0];
  const char from = cast_code(x.dtype), to = cast_code(y.dtype);
  if (x.dtype == DType::kFloat32 && y.dtype == DType::kBFloat16) {
    return launch(ctx, cuda::to_bf16(x.as<float>(), static_cast<uint16_t*>(y.data), x.numel()));
  }
  if (x.dtype == DType::kBFloat16 && y.dtype == DType::kFloat32) {
    return launch(ctx, cuda::from_bf16(static_cast<const uint16_t*>(x.data), y.as<float>(), x.numel()));
  }
  if (!from || !to) return cuda_fallback_kernel(ctx);
  if (from == to) return copy_cuda(ctx);
  return launch(ctx, cuda::cast(from, to, x.data, y.data, x.numel()));
}

// ---- layout: Transpose, Expand, Concat, Split, SliceGrad ----

Status transpose_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &y = ctx.outputs[0];
  const int64_t rank = x.rank();
  std::vector<int64_t> perm = ctx.attrs().get_ints("perm");
  if (perm.empty()) {
    for (int64_t d = rank - 1; d >= 0; --d) perm.push_back(d);
  }
  const Shape xs = contiguous_strides(x.shape);
  Shape src(rank);
  for (int64_t d = 0; d < rank; ++d) {
    int64_t p = perm[d];
    if (p < 0) p += rank;
    src[d] = xs[p];
  }
  cuda::Broadcast bc;
  if (!make_bc(y.shape, {src}, bc)) return cuda_fallback_kernel(ctx);
  return launch(ctx, cuda::strided_copy(static_cast<int>(dtype_size(y.dtype)), x.data, y.data, bc));
}

Status expand_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &y = ctx.outputs[0];
  cuda::Broadcast bc;
  if (!make_bc(y.shape, {broadcast_strides(x.shape, y.shape)}, bc)) return cuda_fallback_kernel(ctx);
  return launch(ctx, cuda::strided_copy(static_cast<int>(dtype_size(y.dtype)), x.data, y.data, bc));
}

// Copies the box `dims` from src (strides ss, element offset so) to dst (strides ds, element offset dof).
bool box_copy(int elem, const void* src, const Shape& ss, int64_t so, void* dst, const Shape& ds, int64_t dof,
              const Shape& dims) {
  if (shape_numel(dims) == 0) return true;
  cuda::Broadcast bc;
  if (!make_bc(dims, {ss, ds}, bc)) return false;
  return cuda::box_copy(elem, static_cast<const char*>(src) + so * elem, static_cast<char*>(dst) + dof * elem, bc);
}

Status concat_cuda(KernelContext& ctx) {
  const TensorRef& y = ctx.outputs[0];
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (!normalize_axis(axis, y.rank())) return cuda_fallback_kernel(ctx);
  const int elem = static_cast<int>(dtype_size(y.dtype));
  // y viewed as [outer, axis_total * inner]; each input writes a [outer, n_i * inner] column block.
  const int64_t outer = dims_product(y.shape, 0, axis), inner = dims_product(y.shape, axis + 1, y.rank());
  const int64_t row = y.shape[axis] * inner;
  int64_t offset = 0;
  for (const TensorRef& x : ctx.inputs) {
    if (!x.data) continue;
    if (x.dtype != y.dtype) return cuda_fallback_kernel(ctx);
    const int64_t w = x.shape[axis] * inner;
    if (!box_copy(elem, x.data, {w, 1}, 0, y.data, {row, 1}, offset, {outer, w})) {
      return ctx.fail(std::string("CUDA kernel failed: ") + cuda::last_error());
    }
    offset += w;
  }
  return Status::ok();
}

Status split_cuda(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (!normalize_axis(axis, x.rank())) return cuda_fallback_kernel(ctx);
  const int elem = static_cast<int>(dtype_size(x.dtype));
  const int64_t outer = dims_product(x.shape, 0, axis), inner = dims_product(x.shape, axis + 1, x.rank());
  const int64_t row = x.shape[axis] * inner;
  int64_t offset = 0;
  for (const TensorRef& y : ctx.outputs) {
    if (!y.data) continue;
    const int64_t w = y.shape[axis] * inner;
    if (!box_copy(elem, x.data, {row, 1}, offset, y.data, {w, 1}, 0, {outer, w})) {
      return ctx.fail(std::string("CUDA kernel failed: ") + cuda::last_error());
    }
    offset += w;
  }
  return Status::ok();
}

// Slice(data, starts, ends[, axes[, steps]]): the box of the input (any steps, negative ones included), copied on
// the device; the index inputs come from the host when they are constants (RoPE's half-slices in Llama graphs).
Status slice_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &y = ctx.outputs[0];
  std::vector<int64_t> v[5];
  for (int i = 1; i < 5; ++i) {
    if (ctx.has_input(i) && !input_ints(ctx, i, v[i])) return cuda_fallback_kernel(ctx);
  }
  movement::SliceBox box;
  const std::string err = movement::normalize_slice(x.shape, v[1], v[2], v[3], v[4], box);
  if (!err.empty()) return ctx.fail(err);
  if (box.out_shape != y.shape) return ctx.fail("output shape " + shape_str(y.shape) + " is not the slice's");
  const Shape xs = contiguous_strides(x.shape);
  Shape src(xs.size());
  int64_t off = 0;
  for (size_t d = 0; d < xs.size(); ++d) {
    src[d] = xs[d] * box.steps[d];
    off += box.starts[d] * xs[d];
  }
  const int elem = static_cast<int>(dtype_size(y.dtype));
  if (!box_copy(elem, x.data, src, off, y.data, contiguous_strides(y.shape), 0, y.shape)) {
    return cuda_fallback_kernel(ctx);
  }
  return Status::ok();
}

// SliceGrad(grad) attrs shape, starts, steps: zeros of shape, grad written at starts + i * steps.
Status slice_grad_cuda(KernelContext& ctx) {
  const TensorRef &g = ctx.inputs[0], &y = ctx.outputs[0];
  const std::vector<int64_t> starts = ctx.attrs().get_ints("starts"), steps = ctx.attrs().get_ints("steps");
  if (starts.size() != g.shape.size() || steps.size() != g.shape.size()) return cuda_fallback_kernel(ctx);
  if (!cuda::memset_async(y.data, y.nbytes())) return launch(ctx, false);
  const Shape ys = contiguous_strides(y.shape);
  Shape dst(ys.size());
  int64_t off = 0;
  for (size_t d = 0; d < ys.size(); ++d) {
    dst[d] = ys[d] * steps[d];
    off += starts[d] * ys[d];
  }
  const int elem = static_cast<int>(dtype_size(y.dtype));
  if (!box_copy(elem, g.data, contiguous_strides(g.shape), 0, y.data, dst, off, g.shape)) {
    return cuda_fallback_kernel(ctx);
  }
  return Status::ok();
}

// ---- matrix products ----

std::vector<int64_t> batch_index(const Shape& batch, const Shape& operand) {
  const int64_t count = shape_numel(batch);
  const size_t rank = batch.size(), off = rank - operand.size();
  std::vector<int64_t> out(static_cast<size_t>(count));
  std::vector<int64_t> idx(rank, 0);
  for (int64_t i = 0; i < count; ++i) {
    int64_t flat = 0;
    for (size_t d = off; d < rank; ++d) flat = flat * operand[d - off] + (operand[d - off] == 1 ? 0 : idx[d]);
    out[i] = flat;
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < batch[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

// index[i] == i * stride for all i (stride 0 or 1): the matrix stride of a strided batch, in matrices.
bool affine(const std::vector<int64_t>& v, int64_t& stride) {
  if (v.size() <= 1) {
    stride = 0;
    return true;
  }
  stride = v[1] - v[0];
  if (v[0] != 0 || (stride != 0 && stride != 1)) return false;
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<int64_t>(i) * stride) return false;
  return true;
}

// GALVATRON_CUDA_PROFILE=2: the product's route and gemm path, printed beside its shapes.
void note_product(const char* route, int64_t m, int64_t n, int64_t k, int64_t batch, bool ta, bool tb) {
  if (!cuda_profile_detail()) return;
  cuda_profile_note(std::string(route) + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
                    " k=" + std::to_string(k) + " batch=" + std::to_string(batch) + (ta ? " ta" : "") +
                    (tb ? " tb" : "") + " path=" + cuda::gemm_last_path());
}

// An input as a product operand (float32 or bf16), `elems` elements on.
cuda::GemmOperand operand(const TensorRef& t, int64_t elems = 0) {
  return {static_cast<const char*>(t.data) + elems * static_cast<int64_t>(dtype_size(t.dtype)),
          t.dtype == DType::kBFloat16};
}

// Products read float32 or bfloat16 operands (runtime/bf16_operands.h) into a float32 result, or a bfloat16 one
// (FusedMatMul's out_dtype: a gradient reduced in bf16, runtime/training_graph.h).
bool product_types(const KernelContext& ctx) {
  for (int i = 0; i < 2; ++i) {
    if (ctx.inputs[i].dtype != DType::kFloat32 && ctx.inputs[i].dtype != DType::kBFloat16) return false;
  }
  return ctx.outputs[0].dtype == DType::kFloat32 || ctx.outputs[0].dtype == DType::kBFloat16;
}

// C[c_batch] = alpha * sum over the broadcast batch of op(A) @ op(B) (kernels/cpu/matmul.h semantics); with
// beta0 = 1 added to C's float32 contents instead (MatMulAccumulate).
Status run_products(KernelContext& ctx, const Shape& a_batch, const Shape& b_batch, const Shape& batch,
                    const Shape& c_batch, int64_t m, int64_t n, int64_t k, bool ta, bool tb, float alpha,
                    float beta0 = 0.0f) {
  const TensorRef &a = ctx.inputs[0], &b = ctx.inputs[1];
  const bool c_bf16 = ctx.outputs[0].dtype == DType::kBFloat16;
  char* const c_base = static_cast<char*>(ctx.outputs[0].data);
  const size_t c_elem = dtype_size(ctx.outputs[0].dtype);
  void* const c = c_base;
  std::vector<int64_t> ai = batch_index(batch, a_batch), bi = batch_index(batch, b_batch),
                       ci = batch_index(batch, c_batch);
  const int64_t count = static_cast<int64_t>(ci.size()), c_count = shape_numel(c_batch);
  const int64_t sa = m * k, sb = k * n, sc = m * n;
  int64_t da, db, dc;
  const bool a_aff = affine(ai, da), b_aff = affine(bi, db), c_aff = affine(ci, dc);
  if (c_count == count && c_aff && dc == 1) {
    if (count > 1 && !ta && da == 1 && db == 0 && a_aff && b_aff) {
      // [batch, m, k] @ [k, n]: one product over the stacked rows.
      const bool ok =
          cuda::gemm_mixed(false, tb, m * count, n, k, alpha, operand(a), 0, operand(b), 0, beta0, c, 0, 1, c_bf16);
      note_product("stacked rows", m * count, n, k, 1, false, tb);
      return launch(ctx, ok);
    }
    if (a_aff && b_aff) {
      const bool ok = cuda::gemm_mixed(ta, tb, m, n, k, alpha, operand(a), da * sa, operand(b), db * sb, beta0, c, sc,
                                       count, c_bf16);
      note_product("strided batch", m, n, k, count, ta, tb);
      return launch(ctx, ok);
    }
  }
  if (c_count == 1 && count > 1 && ta && !tb && a_aff && da == 1 && b_aff && db == 1) {
    // sum_i A_i^T @ B_i with A [batch, k, m], B [batch, k, n]: one product over the stacked k.
    const bool ok =
        cuda::gemm_mixed(true, false, m, n, k * count, alpha, operand(a), 0, operand(b), 0, beta0, c, 0, 1, c_bf16);
    note_product("stacked k", m, n, k * count, 1, true, false);
    return launch(ctx, ok);
  }
  // A bf16 C that several products add into would be rounded after each: the CPU kernel sums in float32 instead.
  if (c_bf16 && count > c_count) return cuda_fallback_kernel(ctx);
  note_product("loop", m, n, k, count, ta, tb);
  // General: one product per batch element, later products for the same C matrix accumulate.
  std::vector<char> written(static_cast<size_t>(c_count), beta0 != 0.0f ? 1 : 0);
  for (int64_t i = 0; i < count; ++i) {
    const float beta = written[ci[i]] ? 1.0f : 0.0f;
    written[ci[i]] = 1;
    if (!cuda::gemm_mixed(ta, tb, m, n, k, alpha, operand(a, ai[i] * sa), 0, operand(b, bi[i] * sb), 0, beta,
                          c_base + ci[i] * sc * c_elem, 0, 1, c_bf16)) {
      return launch(ctx, false);
    }
  }
  for (int64_t i = 0; i < c_count; ++i) {
    if (!written[i] && !cuda::memset_async(c_base + i * sc * c_elem, c_elem * sc)) return launch(ctx, false);
  }
  return Status::ok();
}

bool broadcast_batch(const Shape& a, const Shape& b, Shape& out) {
  const size_t rank = std::max(a.size(), b.size());
  out.assign(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da == db || db == 1) out[i] = da;
    else if (da == 1) out[i] = db;
    else return false;
  }
  return true;
}

Status matmul_cuda(KernelContext& ctx) {
  if (!all_f32(ctx)) return cuda_fallback_kernel(ctx);
  const Shape &as = ctx.inputs[0].shape, &bs = ctx.inputs[1].shape;
  const bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  const Shape a_batch = a_vec ? Shape{} : Shape(as.begin(), as.end() - 2);
  const Shape b_batch = b_vec ? Shape{} : Shape(bs.begin(), bs.end() - 2);
  const int64_t m = a_vec ? 1 : as[as.size() - 2], k = as.back(), n = b_vec ? 1 : bs.back();
  Shape batch;
  if (!broadcast_batch(a_batch, b_batch, batch)) return ctx.fail("batch dimensions do not broadcast");
  return run_products(ctx, a_batch, b_batch, batch, batch, m, n, k, false, false, 1.0f);
}

// FusedMatMul's products (its transA / transB / alpha / out_batch attributes) of ctx's inputs 0 and 1 into its output
// 0; beta0 = 1 adds them into the output's float32 contents (MatMulAccumulate).
Status fused_products(KernelContext& ctx, float beta0) {
  const Shape &as = ctx.inputs[0].shape, &bs = ctx.inputs[1].shape;
  const bool ta = ctx.attrs().get_int("transA", 0) != 0, tb = ctx.attrs().get_int("transB", 0) != 0;
  const int64_t ar = as[as.size() - 2], ac = as.back(), br = bs[bs.size() - 2], bc = bs.back();
  const int64_t m = ta ? ac : ar, k = ta ? ar : ac, n = tb ? br : bc;
  const Shape a_batch(as.begin(), as.end() - 2), b_batch(bs.begin(), bs.end() - 2);
  Shape batch;
  if (!broadcast_batch(a_batch, b_batch, batch)) return ctx.fail("batch dimensions do not broadcast");
  const Shape out_batch = ctx.attrs().has("out_batch") ? ctx.attrs().get_ints("out_batch") : batch;
  return run_products(ctx, a_batch, b_batch, batch, out_batch, m, n, k, ta, tb,
                      static_cast<float>(ctx.attrs().get_double("alpha", 1.0)), beta0);
}

Status fused_matmul_cuda(KernelContext& ctx) {
  if (!product_types(ctx)) return cuda_fallback_kernel(ctx);
  return fused_products(ctx, 0.0f);
}

// galvatron MatMulAccumulate (runtime/ops/math_matmul.cpp): Acc (input 0, float32) += FusedMatMul(A, B), the products
// run with beta = 1 on the accumulator.
Status matmul_accumulate_cuda(KernelContext& ctx) {
  KernelContext product = ctx;
  product.inputs = {ctx.inputs[1], ctx.inputs[2]};
  product.host_inputs.clear();
  product.outputs = {ctx.inputs[0]};
  if (!product_types(product) || !is_f32(ctx.inputs[0])) return cuda_fallback_kernel(ctx);
  return fused_products(product, 1.0f);
}

// galvatron Linear (runtime/ops/math_linear.cpp): X [.., K] @ op(W) + bias, then the activation.
Status linear_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &w = ctx.inputs[1];
  const bool has_bias = ctx.has_input(2);
  const bool out_bf16 = ctx.outputs[0].dtype == DType::kBFloat16;
  bool types = (x.dtype == DType::kFloat32 || x.dtype == DType::kBFloat16) &&
               (w.dtype == DType::kFloat32 || w.dtype == DType::kBFloat16) && (out_bf16 || all_outputs_f32(ctx));
  if (has_bias) types = types && is_f32(ctx.inputs[2]);
  const bool has_residual = ctx.has_input(3);
  if (has_residual) types = types && is_f32(ctx.inputs[3]) && !out_bf16;
  if (!types || w.shape.size() != 2 || x.shape.empty()) return cuda_fallback_kernel(ctx);
  const bool tb = ctx.attrs().get_int("transB", 0) != 0;
  const std::string act = ctx.attrs().get_string("activation", "none");
  const cuda::LinearAct a = act == "gelu_tanh" ? cuda::LinearAct::kGeluTanh
                            : act == "gelu"    ? cuda::LinearAct::kGelu
                                               : cuda::LinearAct::kNone;
  const int64_t k = x.shape.back(), rows = k > 0 ? x.numel() / k : 0, n = tb ? w.shape[0] : w.shape[1];
  void* pre = a == cuda::LinearAct::kNone ? nullptr : ctx.outputs[1].data;
  const bool ok = cuda::linear_forward(rows, n, k, tb, operand(x), operand(w),
                                       has_bias ? ctx.inputs[2].as<float>() : nullptr, a, ctx.outputs[0].data, pre,
                                       out_bf16, has_residual ? ctx.inputs[3].as<float>() : nullptr);
  if (cuda_profile_detail()) {
    cuda_profile_note("m=" + std::to_string(rows) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                      (tb ? " tb" : "") + " path=" + cuda::linear_last_path());
  }
  return launch(ctx, ok);
}

// galvatron GeluGradMatMul (runtime/ops/math_gelu_grad_product.cpp): dP = Gelu'(Pre) * (X @ op(W)), dBias.
Status gelu_grad_matmul_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &w = ctx.inputs[1], &pre = ctx.inputs[2], &dp = ctx.outputs[0];
  auto mixed = [](const TensorRef& t) { return t.dtype == DType::kFloat32 || t.dtype == DType::kBFloat16; };
  const bool has_bias = ctx.outputs.size() > 1 && ctx.outputs[1].data;
  if (!mixed(x) || !mixed(w) || !mixed(pre) || !mixed(dp) || w.shape.size() != 2 || x.shape.size() < 2 ||
      (has_bias && !is_f32(ctx.outputs[1]))) {
    return cuda_fallback_kernel(ctx);
  }
  const bool tb = ctx.attrs().get_int("transB", 0) != 0;
  const bool tanh = ctx.attrs().get_string("approximate", "none") == "tanh";
  const int64_t k = x.shape.back(), rows = k > 0 ? x.numel() / k : 0, n = tb ? w.shape[0] : w.shape[1];
  const bool ok = cuda::linear_gelu_backward(rows, n, k, tb, operand(x), operand(w), pre.data,
                                             pre.dtype == DType::kBFloat16, tanh, dp.data,
                                             dp.dtype == DType::kBFloat16,
                                             has_bias ? ctx.outputs[1].as<float>() : nullptr);
  if (cuda_profile_detail()) {
    cuda_profile_note("m=" + std::to_string(rows) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                      (tb ? " tb" : "") + " path=" + cuda::linear_last_path());
  }
  return launch(ctx, ok);
}

// galvatron BiasGrad (runtime/ops/math_bias_grad.cpp): column sums of a float32 or bf16 dY into float32.
Status bias_grad_cuda(KernelContext& ctx) {
  const TensorRef &dy = ctx.inputs[0], &db = ctx.outputs[0];
  if (!is_f32(db) || dy.shape.empty()) return cuda_fallback_kernel(ctx);
  const int64_t n = dy.shape.back(), rows = n > 0 ? dy.numel() / n : 0;
  if (dy.dtype == DType::kFloat32) return launch(ctx, cuda::column_sums_f32(dy.as<float>(), db.as<float>(), rows, n, 1));
  if (dy.dtype == DType::kBFloat16) {
    return launch(ctx, cuda::column_sums_bf16(static_cast<const uint16_t*>(dy.data), db.as<float>(), rows, n, 1));
  }
  return cuda_fallback_kernel(ctx);
}

Status gemm_cuda(KernelContext& ctx) {
  if (!all_f32(ctx)) return cuda_fallback_kernel(ctx);
  const TensorRef &a = ctx.inputs[0], &b = ctx.inputs[1], &y = ctx.outputs[0];
  const bool ta = ctx.attrs().get_int("transA", 0) != 0, tb = ctx.attrs().get_int("transB", 0) != 0;
  const int64_t m = ta ? a.shape[1] : a.shape[0], k = ta ? a.shape[0] : a.shape[1], n = tb ? b.shape[0] : b.shape[1];
  const float alpha = static_cast<float>(ctx.attrs().get_double("alpha", 1.0));
  const bool has_c = ctx.has_input(2);
  const float beta = has_c ? static_cast<float>(ctx.attrs().get_double("beta", 1.0)) : 0.0f;
  if (beta != 0.0f) {
    // Y = broadcast(C), then Y = alpha * op(A) op(B) + beta * Y.
    const TensorRef& c = ctx.inputs[2];
    cuda::Broadcast bc;
    if (!make_bc(y.shape, {broadcast_strides(c.shape, y.shape)}, bc)) return cuda_fallback_kernel(ctx);
    if (!cuda::strided_copy(4, c.data, y.data, bc)) return launch(ctx, false);
  }
  return launch(ctx, cuda::gemm_f32(ta, tb, m, n, k, alpha, a.as<float>(), 0, b.as<float>(), 0, beta, y.as<float>(),
                                    0, 1));
}

// ---- softmax, norms ----

template <bool kLog>
Status softmax_cuda(KernelContext& ctx) {
  if (!all_f32(ctx)) return cuda_fallback_kernel(ctx);
  const TensorRef& x = ctx.inputs[0];
  int64_t axis = ctx.attrs().get_int("axis", -1);
  if (!normalize_axis(axis, x.rank())) return ctx.fail("axis out of range");
  return launch(ctx, cuda::softmax_f32(x.as<float>(), ctx.outputs[0].as<float>(), dims_product(x.shape, 0, axis),
                                       x.shape[axis], dims_product(x.shape, axis + 1, x.rank()), kLog));
}

template <bool kLog>
Status softmax_grad_cuda(KernelContext& ctx) {
  if (!all_f32(ctx)) return cuda_fallback_kernel(ctx);
  const TensorRef& y = ctx.inputs[1];
  int64_t axis = ctx.attrs().get_int("axis", -1);
  if (!normalize_axis(axis, y.rank())) return ctx.fail("axis out of range");
  return launch(ctx, cuda::softmax_grad_f32(ctx.inputs[0].as<float>(), y.as<float>(), ctx.outputs[0].as<float>(),
                                            dims_product(y.shape, 0, axis), y.shape[axis],
                                            dims_product(y.shape, axis + 1, y.rank()), kLog));
}

void norm_view(const KernelContext& ctx, const TensorRef& x, int64_t& rows, int64_t& cols) {
  int64_t axis = ctx.attrs().get_int("axis", -1);
  normalize_axis(axis, x.rank());
  rows = dims_product(x.shape, 0, axis);
  cols = dims_product(x.shape, axis, x.rank());
}

template <typename P>
P* opt(const KernelContext& ctx, int i) {
  return ctx.has_input(i) ? ctx.inputs[i].as<P>() : nullptr;
}

// ONNX LayerNormalization, and galvatron LayerNormalization with Y in bf16 (out_dtype 16).
Status layer_norm_cuda(KernelContext& ctx) {
  const TensorRef& y = ctx.outputs[0];
  const bool y_bf16 = y.dtype == DType::kBFloat16 && y.data;
  for (const TensorRef& t : ctx.inputs)
    if (t.data && !is_f32(t)) return cuda_fallback_kernel(ctx);
  for (size_t i = y_bf16 ? 1 : 0; i < ctx.outputs.size(); ++i)
    if (ctx.outputs[i].data && !is_f32(ctx.outputs[i])) return cuda_fallback_kernel(ctx);
  const TensorRef& x = ctx.inputs[0];
  int64_t rows, cols;
  norm_view(ctx, x, rows, cols);
  const size_t n_out = ctx.outputs.size();
  float* mean = n_out > 1 ? ctx.outputs[1].as<float>() : nullptr;
  float* inv_std = n_out > 2 ? ctx.outputs[2].as<float>() : nullptr;
  const float eps = static_cast<float>(ctx.attrs().get_double("epsilon", 1e-5));
  if (y_bf16) {
    return launch(ctx, cuda::layer_norm_to_bf16(x.as<float>(), ctx.inputs[1].as<float>(), opt<float>(ctx, 2),
                                                static_cast<uint16_t*>(y.data), mean, inv_std, rows, cols, eps));
  }
  return launch(ctx, cuda::layer_norm_f32(x.as<float>(), ctx.inputs[1].as<float>(), opt<float>(ctx, 2),
                                          y.as<float>(), mean, inv_std, rows, cols, eps));
}

// galvatron SkipLayerNormalization(X f32|bf16, Skip, Scale, B?) -> (Y f32|bf16, Mean?, InvStdDev?, Sum?); with
// sum_dtype 16 (X bf16) Skip float32 or bf16 and Sum bf16, by the row kernels.
Status skip_layer_norm_cuda(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &skip = ctx.inputs[1], &y = ctx.outputs[0];
  const bool x_bf16 = x.dtype == DType::kBFloat16, y_bf16 = y.dtype == DType::kBFloat16;
  const size_t n_out = ctx.outputs.size();
  const bool sum16 = n_out > 3 && ctx.outputs[3].dtype == DType::kBFloat16;
  for (size_t i = sum16 ? 2 : 1; i < ctx.inputs.size(); ++i)
    if (ctx.inputs[i].data && !is_f32(ctx.inputs[i])) return cuda_fallback_kernel(ctx);
  if (n_out < 4 || !ctx.outputs[3].data || (!x_bf16 && !is_f32(x))) return cuda_fallback_kernel(ctx);
  const int64_t cols = x.shape.back(), rows = cols > 0 ? x.numel() / cols : 0;
  const float eps = static_cast<float>(ctx.attrs().get_double("epsilon", 1e-5));
  float* mean = ctx.outputs[1].as<float>();
  float* inv_std = ctx.outputs[2].as<float>();
  if (sum16) {
    const TensorRef& sum = ctx.outputs[3];
    if (!x_bf16 || rows == 0 ||
        !cuda::norm_rows_eligible(rows, cols, {x.data, skip.data, sum.data, ctx.inputs[2].data, y.data})) {
      return cuda_fallback_kernel(ctx);
    }
    return launch(ctx, cuda::norm_rows_skip_forward_bf16_sum(
                           true, static_cast<const uint16_t*>(x.data), skip.data, skip.dtype == DType::kBFloat16,
                           static_cast<uint16_t*>(sum.data), ctx.inputs[2].as<float>(), opt<float>(ctx, 3), y.data,
                           y_bf16, mean, inv_std, rows, cols, eps));
  }
  return launch(ctx, cuda::skip_layer_norm(x.data, x_bf16, skip.as<float>(), ctx.outputs[3].as<float>(),
                                           ctx.inputs[2].as<float>(), opt<float>(ctx, 3), y.data, y_bf16, mean, inv_std,
                                           rows, cols, eps));
}

// Outputs dX, dScale, dBias (float32) and the optional bf16 copy of dX and its column sums (float32). X and the
// addend bf16 (a residual stream kept in bf16): the row kernels, dX (float32) written only where it has a buffer.
Status layer_norm_grad_cuda(KernelContext& ctx) {
  const size_t n_out = ctx.outputs.size();
  const TensorRef& x = ctx.inputs[1];
  const bool x16 = x.dtype == DType::kBFloat16;
  for (size_t i = 0; i < ctx.inputs.size(); ++i) {
    const TensorRef& t = ctx.inputs[i];
    const bool stream = x16 && (i == 1 || i == 7), either = x16 && i == 0;
    const bool ok = either   ? (is_f32(t) || t.dtype == DType::kBFloat16)
                    : stream ? t.dtype == DType::kBFloat16
                             : is_f32(t);
    if (t.data && !ok) return cuda_fallback_kernel(ctx);
  }
  for (size_t i = 0; i < n_out; ++i) {
    const TensorRef& t = ctx.outputs[i];
    if (t.data && (i == 3 ? t.dtype != DType::kBFloat16 : !is_f32(t))) return cuda_fallback_kernel(ctx);
  }
  int64_t rows, cols;
  norm_view(ctx, x, rows, cols);
  auto out = [&](size_t i) { return n_out > i ? ctx.outputs[i].data : nullptr; };
  const float eps = static_cast<float>(ctx.attrs().get_double("epsilon", 1e-5));
  if (x16) {
    const bool whole = ctx.has_input(0) && ctx.has_input(3) && ctx.has_input(4) && !ctx.has_input(5) &&
                       !ctx.has_input(6) && rows > 0 && x.shape.size() >= 1 && cols == x.shape.back();
    if (!whole ||
        !cuda::norm_rows_eligible(
            rows, cols, {ctx.inputs[0].data, x.data, ctx.inputs[2].data, out(0), opt<void>(ctx, 7), out(3)})) {
      return cuda_fallback_kernel(ctx);
    }
    return launch(ctx,
                  cuda::norm_rows_backward_bf16_stream(
                      true, ctx.inputs[0].data, ctx.inputs[0].dtype == DType::kBFloat16,
                      static_cast<const uint16_t*>(x.data), ctx.inputs[2].as<float>(), ctx.inputs[3].as<float>(),
                      ctx.inputs[4].as<float>(), static_cast<float*>(out(0)), static_cast<float*>(out(1)),
                      static_cast<float*>(out(2)), rows, cols, eps, static_cast<const uint16_t*>(opt<void>(ctx, 7)),
                      static_cast<uint16_t*>(out(3)), static_cast<float*>(out(4))));
  }
  if (!out(0)) return cuda_fallback_kernel(ctx);
  return launch(ctx, cuda::layer_norm_grad_f32(
                         opt<float>(ctx, 0), x.as<float>(), ctx.inputs[2].as<float>(), opt<float>(ctx, 3),
                         opt<float>(ctx, 4), opt<float>(ctx, 5), opt<float>(ctx, 6), ctx.outputs[0].as<float>(),
                         static_cast<float*>(out(1)), static_cast<float*>(out(2)), rows, cols, eps, opt<float>(ctx, 7),
                         static_cast<uint16_t*>(out(3)), static_cast<float*>(out(4))));
}

// ---- reductions ----

// Reduced-axis flags of a ReduceSum/ReduceMean node on the device. keepdims = 1: from the shapes; else from the axes
// input (opset >= 13 for ReduceSum, 18 for the others) or attribute.
bool reduced_axes(const KernelContext& ctx, bool is_sum, std::vector<bool>& reduced) {
  const TensorRef &x = ctx.inputs[0], &y = ctx.outputs[0];
  const int64_t rank = x.rank();
  reduced.assign(rank, false);
  const bool keepdims = ctx.attrs().get_int("keepdims", 1) != 0;
  if (keepdims && y.rank() == rank) {
    for (int64_t d = 0; d < rank; ++d) reduced[d] = x.shape[d] != y.shape[d];
    return true;
  }
  const bool from_input = ctx.node->opset >= (is_sum ? 13 : 18);
  std::vector<int64_t> axes;
  if (from_input) {
    if (ctx.has_input(1) && !read_ints(ctx.inputs[1], axes)) return false;
  } else {
    axes = ctx.attrs().get_ints("axes");
  }
  if (axes.empty()) {
    if (from_input && ctx.attrs().get_int("noop_with_empty_axes", 0) != 0) return true;
    reduced.assign(rank, true);
    return true;
  }
  for (int64_t a : axes) {
    if (!normalize_axis(a, rank)) return false;
    reduced[a] = true;
  }
  return true;
}

bool make_reduce(const Shape& shape, const std::vector<bool>& reduced, cuda::Reduce& r) {
  r = cuda::Reduce{};
  const Shape st = contiguous_strides(shape);
  // Merge neighbours of the same kind that are contiguous, dropping size-1 dims.
  std::vector<int64_t> kd, ks, rd, rs;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    auto& dims = reduced[d] ? rd : kd;
    auto& strides = reduced[d] ? rs : ks;
    if (!dims.empty() && strides.back() == shape[d] * st[d]) {
      dims.back() *= shape[d];
      strides.back() = st[d];
    } else {
      dims.push_back(shape[d]);
      strides.push_back(st[d]);
    }
  }
  if (kd.size() > static_cast<size_t>(cuda::kMaxDims) || rd.size() > static_cast<size_t>(cuda::kMaxDims)) return false;
  r.kept_rank = static_cast<int>(kd.size());
  r.red_rank = static_cast<int>(rd.size());
  for (size_t i = 0; i < kd.size(); ++i) r.kept_dims[i] = kd[i], r.kept_strides[i] = ks[i], r.kept_numel *= kd[i];
  for (size_t i = 0; i < rd.size(); ++i) r.red_dims[i] = rd[i], r.red_strides[i] = rs[i], r.red_numel *= rd[i];
  return true;
}

template <bool kMean>
Status reduce_cuda(KernelContext& ctx) {
  if (!is_f32(ctx.inputs[0])) return cuda_fallback_kernel(ctx);
  std::vector<bool> reduced;
  if (!reduced_axes(ctx, !kMean, reduced)) return cuda_fallback_kernel(ctx);
  cuda::Reduce r;
  if (!make_reduce(ctx.inputs[0].shape, reduced, r)) return cuda_fallback_kernel(ctx);
  int64_t count = 1;
  for (size_t d = 0; d < reduced.size(); ++d)
    if (reduced[d]) count *= ctx.inputs[0].shape[d];
  const float scale = kMean ? (count ? 1.0f / static_cast<float>(count) : NAN) : 1.0f;
  return launch(ctx, cuda::reduce_sum_f32(ctx.inputs[0].as<float>(), ctx.outputs[0].as<float>(), r, scale));
}

// ReduceGrad for Sum and Mean: dX = broadcast(dY) (/ count).
Status reduce_grad_cuda(KernelContext& ctx) {
  const std::string kind = ctx.attrs().get_string("kind", "");
  if ((kind != "ReduceSum" && kind != "ReduceMean") || !all_f32(ctx)) return cuda_fallback_kernel(ctx);
  const TensorRef &dy = ctx.inputs[0], &dx = ctx.outputs[0];
  const Shape shape = dx.shape;
  std::vector<bool> reduced(shape.size(), false);
  for (int64_t a : ctx.attrs().get_ints("axes")) reduced[a] = true;
  // dY viewed with keepdims: reduced axes of size 1.
  Shape kept = shape;
  int64_t count = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (reduced[d]) {
      count *= shape[d];
      kept[d] = 1;
    }
  }
  if (shape_numel(kept) != dy.numel()) return cuda_fallback_kernel(ctx);
  cuda::Broadcast bc;
  if (!make_bc(shape, {broadcast_strides(kept, shape)}, bc)) return cuda_fallback_kernel(ctx);
  if (kind == "ReduceSum") return launch(ctx, cuda::strided_copy(4, dy.data, dx.data, bc));
  if (!cuda::strided_copy(4, dy.data, dx.data, bc)) return launch(ctx, false);
  return launch(ctx, cuda::scale_f32(dx.as<float>(), dx.numel(), count ? 1.0f / static_cast<float>(count) : NAN));
}

// ---- indexing ----

Status gather_cuda(KernelContext& ctx) {
  const TensorRef &data = ctx.inputs[0], &idx = ctx.inputs[1], &y = ctx.outputs[0];
  if (idx.dtype != DType::kInt64 && idx.dtype != DType::kInt32) return cuda_fallback_kernel(ctx);
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (!normalize_axis(axis, data.rank())) return ctx.fail("axis out of range");
  return launch(ctx, cuda::gather(static_cast<int>(dtype_size(data.dtype)), data.data, idx.data,
                                  idx.dtype == DType::kInt64, y.data, dims_product(data.shape, 0, axis),
                                  data.shape[axis], idx.numel(), dims_product(data.shape, axis + 1, data.rank())));
}

Status gather_grad_cuda(KernelContext& ctx) {
  const TensorRef &g = ctx.inputs[0], &idx = ctx.inputs[1], &y = ctx.outputs[0];
  if (!is_f32(g) || (idx.dtype != DType::kInt64 && idx.dtype != DType::kInt32)) return cuda_fallback_kernel(ctx);
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (!normalize_axis(axis, y.rank())) return ctx.fail("axis out of range");
  const int64_t skip = movement::gather_grad_skip_row(ctx.attrs(), y.shape[axis]);
  return launch(ctx, cuda::gather_grad_f32(g.as<float>(), idx.data, idx.dtype == DType::kInt64, y.as<float>(),
                                           dims_product(y.shape, 0, axis), y.shape[axis], idx.numel(),
                                           dims_product(y.shape, axis + 1, y.rank()), skip));
}

// GatherGradAdd(Base, grad, indices) -> Base + GatherGrad(grad, indices): Base copied, then the rows added.
Status gather_grad_add_cuda(KernelContext& ctx) {
  const TensorRef &base = ctx.inputs[0], &g = ctx.inputs[1], &idx = ctx.inputs[2], &dst = ctx.outputs[0];
  if (!is_f32(g) || !is_f32(base) || (idx.dtype != DType::kInt64 && idx.dtype != DType::kInt32)) {
    return cuda_fallback_kernel(ctx);
  }
  if (!cuda::memcpy_d2d_async(dst.data, base.data, base.nbytes())) return launch(ctx, false);
  int64_t axis = ctx.attrs().get_int("axis", 0);
  if (!normalize_axis(axis, dst.rank())) return ctx.fail("axis out of range");
  const int64_t skip = movement::gather_grad_skip_row(ctx.attrs(), dst.shape[axis]);
  return launch(ctx, cuda::gather_grad_add_f32(g.as<float>(), idx.data, idx.dtype == DType::kInt64, dst.as<float>(),
                                               dims_product(dst.shape, 0, axis), dst.shape[axis], idx.numel(),
                                               dims_product(dst.shape, axis + 1, dst.rank()), skip));
}

// ---- loss ----

int reduction_code(const KernelContext& ctx) {
  const std::string s = ctx.attrs().get_string("reduction", "mean");
  return s == "none" ? 0 : (s == "sum" ? 1 : 2);
}

Status sce_cuda(KernelContext& ctx) {
  const TensorRef &scores = ctx.inputs[0], &labels = ctx.inputs[1];
  if (!is_f32(scores) || (ctx.has_input(2) && !is_f32(ctx.inputs[2]))) return cuda_fallback_kernel(ctx);
  if (labels.dtype != DType::kInt64 && labels.dtype != DType::kInt32) return cuda_fallback_kernel(ctx);
  const int64_t n = scores.shape[0], c = scores.shape[1], d = dims_product(scores.shape, 2, scores.rank());
  return launch(ctx, cuda::softmax_cross_entropy_f32(
                         scores.as<float>(), labels.data, labels.dtype == DType::kInt64, opt<float>(ctx, 2), n, c, d,
                         ctx.attrs().has("ignore_index"), ctx.attrs().get_int("ignore_index", 0), reduction_code(ctx),
                         ctx.outputs[0].as<float>(), ctx.outputs.size() > 1 ? ctx.outputs[1].as<float>() : nullptr));
}

Status sce_grad_cuda(KernelContext& ctx) {
  const TensorRef &scores = ctx.inputs[1], &labels = ctx.inputs[2];
  if (!is_f32(scores) || (ctx.has_input(0) && !is_f32(ctx.inputs[0]))) return cuda_fallback_kernel(ctx);
  if (labels.dtype != DType::kInt64 && labels.dtype != DType::kInt32) return cuda_fallback_kernel(ctx);
  const int64_t n = scores.shape[0], c = scores.shape[1], d = dims_product(scores.shape, 2, scores.rank());
  return launch(ctx, cuda::softmax_cross_entropy_grad_f32(
                         opt<float>(ctx, 0), scores.as<float>(), labels.data, labels.dtype == DType::kInt64,
                         opt<float>(ctx, 3), opt<float>(ctx, 4), n, c, d, ctx.attrs().has("ignore_index"),
                         ctx.attrs().get_int("ignore_index", 0), reduction_code(ctx), ctx.outputs[0].as<float>()));
}

// LinearCrossEntropy(X, W, labels) and LinearCrossEntropyGrad(dLoss?, X, W, labels): float32, int32/int64 labels.
bool lce_args(const KernelContext& ctx, int xi, cuda::LinearCrossEntropyArgs& a) {
  const TensorRef &x = ctx.inputs[xi], &w = ctx.inputs[xi + 1], &labels = ctx.inputs[xi + 2];
  if (!is_f32(x) || !is_f32(w) || (labels.dtype != DType::kInt64 && labels.dtype != DType::kInt32)) return false;
  a.x = x.as<float>();
  a.w = w.as<float>();
  a.labels = labels.data;
  a.labels64 = labels.dtype == DType::kInt64;
  a.trans_w = ctx.attrs().get_int("trans_w", 1) != 0;
  a.n = x.shape[0];
  a.k = x.shape[1];
  a.v = a.trans_w ? w.shape[0] : w.shape[1];
  a.mean = ctx.attrs().get_string("reduction", "mean") == "mean";
  a.has_ignore = ctx.attrs().has("ignore_index");
  a.ignore_index = ctx.attrs().get_int("ignore_index", 0);
  a.chunk_rows = ctx.attrs().get_int("chunk_rows", 0);
  return true;
}

Status lce_cuda(KernelContext& ctx) {
  cuda::LinearCrossEntropyArgs a;
  if (!lce_args(ctx, 0, a)) return cuda_fallback_kernel(ctx);
  const bool grads = ctx.outputs.size() == 3;
  return launch(ctx, cuda::linear_cross_entropy_f32(a, ctx.outputs[0].as<float>(),
                                                    grads ? ctx.outputs[1].as<float>() : nullptr,
                                                    grads ? ctx.outputs[2].as<float>() : nullptr));
}

Status lce_grad_cuda(KernelContext& ctx) {
  cuda::LinearCrossEntropyArgs a;
  if (!lce_args(ctx, 1, a) || (ctx.has_input(0) && !is_f32(ctx.inputs[0]))) return cuda_fallback_kernel(ctx);
  return launch(ctx, cuda::linear_cross_entropy_grad_f32(a, opt<float>(ctx, 0), ctx.outputs[0].as<float>(),
                                                         ctx.outputs[1].as<float>()));
}

// ---- training ----

Status accumulate_cuda(KernelContext& ctx) {
  if (!all_f32(ctx)) return cuda_fallback_kernel(ctx);
  return launch(ctx, cuda::accumulate_f32(ctx.inputs[0].as<float>(), ctx.inputs[1].as<float>(), ctx.inputs[0].numel()));
}

Status grad_norm_cuda(KernelContext& ctx) {
  const bool reduce = ctx.attrs().get_int("all_reduce", 0) != 0 && ctx.comm && ctx.comm->size() > 1;
  // Across processes the squared norm is all-reduced on the device, which needs NCCL (device pointers).
  bool types = is_f32(ctx.outputs[0]);
  for (const TensorRef& t : ctx.inputs) types = types && (is_f32(t) || t.dtype == DType::kBFloat16);
  if (!types || (reduce && std::string(ctx.comm->backend_name()) != "nccl")) return cuda_fallback_kernel(ctx);
  const std::vector<float> weights = ctx.attrs().get_floats("weights");
  if (!weights.empty() && weights.size() != ctx.inputs.size()) return cuda_fallback_kernel(ctx);
  std::vector<cuda::MixedTensor> ptrs;
  std::vector<int64_t> counts;
  for (const TensorRef& t : ctx.inputs) {
    ptrs.push_back({t.data, t.dtype == DType::kBFloat16});
    counts.push_back(t.numel());
  }
  if (reduce) {
    double* sq = cuda::grad_norm_sum_squares_f32(ptrs.data(), counts.data(), weights.empty() ? nullptr : weights.data(),
                                                 static_cast<int>(ptrs.size()));
    if (!sq) return ctx.fail(std::string("CUDA: ") + cuda::last_error());
    auto c = communicator_of_group(ctx.comm, ctx.attrs().get_ints("group"));
    if (!c) return ctx.fail(c.status().message());
    Status st = (*c)->all_reduce(sq, 1, DType::kFloat64, ReduceOp::kSum);
    if (!st.is_ok()) return ctx.fail(st.message());
    return launch(ctx, cuda::grad_norm_finish_f32(sq, static_cast<float>(ctx.attrs().get_double("scale", 1.0)),
                                                  ctx.outputs[0].as<float>()));
  }
  return launch(ctx, cuda::grad_norm_f32(ptrs.data(), counts.data(), weights.empty() ? nullptr : weights.data(),
                                         static_cast<int>(ptrs.size()),
                                         static_cast<float>(ctx.attrs().get_double("scale", 1.0)),
                                         ctx.outputs[0].as<float>()));
}

// GradNormBegin zeroes the float64 accumulator that the updates (attr sum_squares) add to; GradNormEnd takes its root.
Status grad_norm_begin_cuda(KernelContext& ctx) {
  return launch(ctx, cuda::memset_async(ctx.outputs[0].data, sizeof(double)));
}
Status grad_norm_end_cuda(KernelContext& ctx) {
  return launch(ctx, cuda::grad_norm_finish_f32(ctx.inputs[0].as<double>(),
                                                static_cast<float>(ctx.attrs().get_double("scale", 1.0)),
                                                ctx.outputs[0].as<float>()));
}
// An update's sum-of-squares accumulator (attr sum_squares: input `index`, a float64 scalar), else null.
double* sum_squares_input(const KernelContext& ctx, size_t index) {
  if (ctx.attrs().get_int("sum_squares", 0) == 0 || index >= ctx.inputs.size()) return nullptr;
  return ctx.inputs[index].as<double>();
}

// AdamW(param, grad, m, v, lr, step, [grad_norm], [param_bf16], [sum_squares]); with attr shard_offset (ZeRO-2) the
// update covers numel(grad) elements of param from there.
// AdamW and AdamWMulti's attributes.
cuda::AdamW adamw_attrs(const KernelContext& ctx) {
  cuda::AdamW a;
  a.beta1 = ctx.attrs().get_double("beta1", 0.9);
  a.beta2 = ctx.attrs().get_double("beta2", 0.999);
  a.eps = ctx.attrs().get_double("epsilon", 1e-8);
  a.weight_decay = ctx.attrs().get_double("weight_decay", 0.01);
  a.grad_scale = ctx.attrs().get_double("grad_scale", 1.0);
  a.max_norm = ctx.attrs().get_double("max_norm", 0.0);
  a.zero_grad = ctx.attrs().get_int("zero_grad", 0) != 0;
  return a;
}

// An update marked beside_backward (runtime/updates_in_backward.cpp) runs on the second stream, after everything
// issued so far on the default one; WaitUpdates joins it back. GALVATRON_CUDA_SIDE_STREAM=0 keeps them on the default
// stream (the new order alone, for comparisons).
Expected<void*> update_stream(const KernelContext& ctx) {
  static const bool side_on = [] {
    const char* e = std::getenv("GALVATRON_CUDA_SIDE_STREAM");
    return !(e && std::string(e) == "0");
  }();
  if (!side_on || ctx.attrs().get_int("beside_backward", 0) == 0) return static_cast<void*>(nullptr);
  void* s = cuda::side_stream_fork();
  if (!s) return internal_error("cuda: cannot start the optimizer's second stream: " + std::string(cuda::last_error()));
  return s;
}

Status wait_updates_cuda(KernelContext&) {
  return cuda::side_stream_join()
             ? Status::ok()
             : internal_error("cuda: waiting for the optimizer's second stream: " + std::string(cuda::last_error()));
}

Status adamw_cuda(KernelContext& ctx) {
  const TensorRef& p = ctx.inputs[0];
  const int64_t offset = std::max<int64_t>(0, ctx.attrs().get_int("shard_offset", -1)), n = ctx.inputs[1].numel();
  const bool g_bf16 = ctx.inputs[1].dtype == DType::kBFloat16;  // a reduced bf16 gradient
  for (int i = 0; i < 4; ++i)
    if (!is_f32(ctx.inputs[i]) && !(i == 1 && g_bf16)) return cuda_fallback_kernel(ctx);
  const TensorRef &lr = ctx.inputs[4], &step = ctx.inputs[5];
  if ((lr.dtype != DType::kFloat64 && lr.dtype != DType::kFloat32) || step.dtype != DType::kInt64) {
    return cuda_fallback_kernel(ctx);
  }
  const cuda::AdamW a = adamw_attrs(ctx);
  const float* norm = ctx.has_input(6) && is_f32(ctx.inputs[6]) ? ctx.inputs[6].as<float>() : nullptr;
  uint16_t* p16 = nullptr;
  if (ctx.has_input(7)) {
    if (ctx.inputs[7].dtype != DType::kBFloat16 || ctx.inputs[7].numel() != p.numel()) return cuda_fallback_kernel(ctx);
    p16 = static_cast<uint16_t*>(ctx.inputs[7].data) + offset;  // the updated range (ZeRO-2: this rank's shard)
  }
  // Input 9: the master held as (input 7, input 9), runtime/split_masters.h (whole parameters only: infer_adamw).
  uint16_t* low16 = ctx.has_input(9) ? static_cast<uint16_t*>(ctx.inputs[9].data) : nullptr;
  GV_ASSIGN_OR_RETURN(void* stream, update_stream(ctx));
  return launch(ctx, cuda::adamw_f32(p.as<float>() + offset, ctx.inputs[1].data, g_bf16, ctx.inputs[2].as<float>(),
                                     ctx.inputs[3].as<float>(), n, lr.data, lr.dtype == DType::kFloat64,
                                     step.as<int64_t>(), norm, a, p16, stream, sum_squares_input(ctx, 8), low16));
}

// SplitFloat32(X) -> (Hi, Lo).
Status split_float32_cuda(KernelContext& ctx) {
  if (!is_f32(ctx.inputs[0])) return cuda_fallback_kernel(ctx);
  return launch(ctx, cuda::split_float32_f32(ctx.inputs[0].as<float>(), static_cast<uint16_t*>(ctx.outputs[0].data),
                                             static_cast<uint16_t*>(ctx.outputs[1].data), ctx.inputs[0].numel()));
}

// AdamWMulti(lr, step, grad_norm?, then param, grad, m, v per parameter[, sum_squares]).
Status adamw_multi_cuda(KernelContext& ctx) {
  const TensorRef &lr = ctx.inputs[0], &step = ctx.inputs[1];
  if ((lr.dtype != DType::kFloat64 && lr.dtype != DType::kFloat32) || step.dtype != DType::kInt64) {
    return cuda_fallback_kernel(ctx);
  }
  const size_t end = ctx.inputs.size() - (ctx.attrs().get_int("sum_squares", 0) != 0 ? 1 : 0);
  std::vector<float*> p, g, m, v;
  std::vector<int64_t> n;
  for (size_t i = 3; i + 3 < end; i += 4) {
    for (size_t j = 0; j < 4; ++j)
      if (!is_f32(ctx.inputs[i + j])) return cuda_fallback_kernel(ctx);
    p.push_back(ctx.inputs[i].as<float>());
    g.push_back(ctx.inputs[i + 1].as<float>());
    m.push_back(ctx.inputs[i + 2].as<float>());
    v.push_back(ctx.inputs[i + 3].as<float>());
    n.push_back(ctx.inputs[i].numel());
  }
  const cuda::AdamW a = adamw_attrs(ctx);
  const float* norm = ctx.has_input(2) && is_f32(ctx.inputs[2]) ? ctx.inputs[2].as<float>() : nullptr;
  GV_ASSIGN_OR_RETURN(void* stream, update_stream(ctx));
  return launch(ctx, cuda::adamw_multi_f32(p.data(), g.data(), m.data(), v.data(), n.data(), static_cast<int>(n.size()),
                                           lr.data, lr.dtype == DType::kFloat64, step.as<int64_t>(), norm, a, stream,
                                           sum_squares_input(ctx, end)));
}

// AllReduce in a single process (no communicator, group empty or {0}) leaves the buffer as it is; otherwise the CPU
// path (host copies) runs it.
Status all_reduce_cuda(KernelContext& ctx) {
  const std::vector<int64_t> g = ctx.attrs().get_ints("group");
  if (!ctx.comm && (g.empty() || (g.size() == 1 && g[0] == 0))) return Status::ok();
  return cuda_fallback_kernel(ctx);
}


}  // namespace

void set_cuda_allow_tf32(bool allow) { cuda::set_allow_tf32(allow); }

void register_cuda_kernels(OpRegistry& r) {
  auto set = [&r](const char* domain, const char* name, KernelFn k) {
    if (OpSchema* s = r.find_mutable(domain, name)) s->cuda = k;
  };
  const char* G = kGalvatronDomain;
  for (const char* op : {"Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"}) set("", op, cuda_profiled<copy_cuda>);
  set("", "Add", cuda_profiled<binary_cuda<cuda::Binary::kAdd>>);
  set("", "Sub", cuda_profiled<binary_cuda<cuda::Binary::kSub>>);
  set("", "Mul", cuda_profiled<binary_cuda<cuda::Binary::kMul>>);
  set("", "Div", cuda_profiled<binary_cuda<cuda::Binary::kDiv>>);
  set("", "Pow", cuda_profiled<binary_cuda<cuda::Binary::kPow>>);
  set("", "Equal", cuda_profiled<compare_cuda<cuda::Compare::kEqual>>);
  set("", "Less", cuda_profiled<compare_cuda<cuda::Compare::kLess>>);
  set("", "LessOrEqual", cuda_profiled<compare_cuda<cuda::Compare::kLessOrEqual>>);
  set("", "Greater", cuda_profiled<compare_cuda<cuda::Compare::kGreater>>);
  set("", "GreaterOrEqual", cuda_profiled<compare_cuda<cuda::Compare::kGreaterOrEqual>>);
  set("", "And", cuda_profiled<compare_cuda<cuda::Compare::kAnd>>);
  set("", "Or", cuda_profiled<compare_cuda<cuda::Compare::kOr>>);
  set("", "Xor", cuda_profiled<compare_cuda<cuda::Compare::kXor>>);
  set("", "Where", cuda_profiled<where_cuda>);
  set("", "Not", cuda_profiled<not_cuda>);
  set("", "IsNaN", cuda_profiled<nan_inf_cuda<true>>);
  set("", "IsInf", cuda_profiled<nan_inf_cuda<false>>);
  set("", "Neg", cuda_profiled<unary_cuda<cuda::Unary::kNeg>>);
  set("", "Abs", cuda_profiled<unary_cuda<cuda::Unary::kAbs>>);
  set("", "Relu", cuda_profiled<unary_cuda<cuda::Unary::kRelu>>);
  set("", "Sqrt", cuda_profiled<unary_cuda<cuda::Unary::kSqrt>>);
  set("", "Reciprocal", cuda_profiled<unary_cuda<cuda::Unary::kReciprocal>>);
  set("", "Exp", cuda_profiled<unary_cuda<cuda::Unary::kExp>>);
  set("", "Log", cuda_profiled<unary_cuda<cuda::Unary::kLog>>);
  set("", "Tanh", cuda_profiled<unary_cuda<cuda::Unary::kTanh>>);
  set("", "Erf", cuda_profiled<unary_cuda<cuda::Unary::kErf>>);
  set("", "Sigmoid", cuda_profiled<unary_cuda<cuda::Unary::kSigmoid>>);
  set("", "Gelu", cuda_profiled<gelu_cuda>);
  set(G, "SigmoidGrad", cuda_profiled<act_grad_cuda<cuda::ActGrad::kSigmoid>>);
  set(G, "TanhGrad", cuda_profiled<act_grad_cuda<cuda::ActGrad::kTanh>>);
  set(G, "ErfGrad", cuda_profiled<act_grad_cuda<cuda::ActGrad::kErf>>);
  set(G, "GeluGrad", cuda_profiled<act_grad_cuda<cuda::ActGrad::kGelu>>);
  set("", "Cast", cuda_profiled<cast_cuda>);
  set("", "Transpose", cuda_profiled<transpose_cuda>);
  set("", "Expand", cuda_profiled<expand_cuda>);
  set("", "Concat", cuda_profiled<concat_cuda>);
  set("", "Split", cuda_profiled<split_cuda>);
  set("", "Slice", cuda_profiled<slice_cuda>);
  set(G, "SliceGrad", cuda_profiled<slice_grad_cuda>);
  set("", "MatMul", cuda_profiled<matmul_cuda>);
  set("", "Gemm", cuda_profiled<gemm_cuda>);
  set(G, "FusedMatMul", cuda_profiled<fused_matmul_cuda>);
  set(G, "MatMulAccumulate", cuda_profiled<matmul_accumulate_cuda>);
  set(G, "GeluGradMatMul", cuda_profiled<gelu_grad_matmul_cuda>);
  set(G, "BiasGrad", cuda_profiled<bias_grad_cuda>);
  set(G, "Linear", cuda_profiled<linear_cuda>);
  set("", "Softmax", cuda_profiled<softmax_cuda<false>>);
  set("", "LogSoftmax", cuda_profiled<softmax_cuda<true>>);
  set(G, "SoftmaxGrad", cuda_profiled<softmax_grad_cuda<false>>);
  set(G, "LogSoftmaxGrad", cuda_profiled<softmax_grad_cuda<true>>);
  set("", "LayerNormalization", cuda_profiled<layer_norm_cuda>);
  set(G, "LayerNormalization", cuda_profiled<layer_norm_cuda>);
  set(G, "LayerNormalizationGrad", cuda_profiled<layer_norm_grad_cuda>);
  set(G, "SkipLayerNormalization", cuda_profiled<skip_layer_norm_cuda>);
  set("", "ReduceSum", cuda_profiled<reduce_cuda<false>>);
  set("", "ReduceMean", cuda_profiled<reduce_cuda<true>>);
  set(G, "ReduceGrad", cuda_profiled<reduce_grad_cuda>);
  set("", "Gather", cuda_profiled<gather_cuda>);
  set(G, "GatherGrad", cuda_profiled<gather_grad_cuda>);
  set(G, "GatherGradAdd", cuda_profiled<gather_grad_add_cuda>);
  set("", "SoftmaxCrossEntropyLoss", cuda_profiled<sce_cuda>);
  set(G, "SoftmaxCrossEntropyLossGrad", cuda_profiled<sce_grad_cuda>);
  set(G, "LinearCrossEntropy", cuda_profiled<lce_cuda>);
  set(G, "LinearCrossEntropyGrad", cuda_profiled<lce_grad_cuda>);
  set(G, "AccumulateGrad", cuda_profiled<accumulate_cuda>);
  set(G, "GradNorm", cuda_profiled<grad_norm_cuda>);
  set(G, "GradNormBegin", grad_norm_begin_cuda);
  set(G, "GradNormEnd", grad_norm_end_cuda);
  set(G, "AdamW", cuda_profiled<adamw_cuda>);
  set(G, "SplitFloat32", cuda_profiled<split_float32_cuda>);
  set(G, "AdamWMulti", cuda_profiled<adamw_multi_cuda>);
  set(G, "WaitUpdates", wait_updates_cuda);
  set(G, "AllReduce", cuda_profiled<all_reduce_cuda>);
  register_cuda_attention_kernels(r);
  register_cuda_llama_kernels(r);
}

}  // namespace gv
#endif

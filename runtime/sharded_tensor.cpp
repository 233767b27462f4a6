// Pieces of whole tensors (sharded_tensor.h). A TP piece of a row-major tensor [pre..., D, post...] whose axis is
// viewed as [outer, parts, inner] is a set of contiguous runs of inner * post elements: for every index `a` of the
// leading dims and every `o` < outer, the run of part `index`. Extracting and placing walk these runs; a flat range
// of the TP piece keeps the part of each run that falls inside it.
#include "runtime/status.h"  // before sharded_tensor.h, which uses Status without including it
#include "runtime/sharded_tensor.h"

#include <algorithm>
#include <cstring>

namespace gv {
namespace {

std::string describe(const TensorShard& s) {
  return "piece of '" + s.global_name + "' " + shape_str(s.global_shape) + " (axis " + std::to_string(s.axis) +
         ", outer " + std::to_string(s.outer) + ", parts " + std::to_string(s.parts) + ", index " +
         std::to_string(s.index) + ", flat [" + std::to_string(s.flat_begin) + ", " + std::to_string(s.flat_end) +
         "))";
}

Status check_shard(const TensorShard& s) {
  if (s.axis < 0) return Status::ok();
  const int rank = static_cast<int>(s.global_shape.size());
  if (s.axis >= rank) return invalid_argument(describe(s) + ": axis out of range for rank " + std::to_string(rank));
  if (s.outer < 1 || s.parts < 1 || s.index < 0 || s.index >= s.parts) {
    return invalid_argument(describe(s) + ": outer and parts must be >= 1 and index in [0, parts)");
  }
  const int64_t dim = s.global_shape[s.axis];
  if (dim % (s.outer * s.parts) != 0) {
    return invalid_argument(describe(s) + ": axis size " + std::to_string(dim) + " is not divisible by outer x parts");
  }
  return Status::ok();
}

Status check_flat(const TensorShard& s, int64_t tp_numel) {
  if (s.flat_end < 0) return Status::ok();
  if (s.flat_begin < 0 || s.flat_begin > s.flat_end || s.flat_end > tp_numel) {
    return invalid_argument(describe(s) + ": flat range outside the TP piece's " + std::to_string(tp_numel) +
                            " elements");
  }
  return Status::ok();
}

// Calls fn(whole_offset, piece_offset, count) in elements for every run of the piece, in piece order.
template <typename Fn>
void for_each_run(const TensorShard& s, Fn fn) {
  const int64_t tp_numel = shape_numel(tp_piece_shape(s));
  const int64_t fb = s.flat_end < 0 ? 0 : s.flat_begin;
  const int64_t fe = s.flat_end < 0 ? tp_numel : s.flat_end;
  if (s.axis < 0) {
    if (fe > fb) fn(fb, 0, fe - fb);
    return;
  }
  int64_t pre = 1, post = 1;
  for (int d = 0; d < s.axis; ++d) pre *= s.global_shape[d];
  for (size_t d = s.axis + 1; d < s.global_shape.size(); ++d) post *= s.global_shape[d];
  const int64_t dim = s.global_shape[s.axis];
  const int64_t inner = dim / (s.outer * s.parts);
  const int64_t run = inner * post;
  if (run == 0) return;
  for (int64_t a = 0; a < pre; ++a) {
    for (int64_t o = 0; o < s.outer; ++o) {
      const int64_t piece_off = (a * s.outer + o) * run;
      const int64_t lo = std::max(piece_off, fb), hi = std::min(piece_off + run, fe);
      if (lo >= hi) continue;
      const int64_t whole_off = (a * dim + (o * s.parts + s.index) * inner) * post + (lo - piece_off);
      fn(whole_off, lo - fb, hi - lo);
    }
  }
}

}  // namespace

Shape tp_piece_shape(const TensorShard& s) {
  Shape r = s.global_shape;
  if (s.axis >= 0 && s.axis < static_cast<int>(r.size()) && s.parts > 0) r[s.axis] /= s.parts;
  return r;
}

Shape piece_shape(const TensorShard& s) {
  if (s.flat_end < 0) return tp_piece_shape(s);
  return Shape{s.flat_end - s.flat_begin};
}

Expected<Tensor> extract_piece(const Tensor& whole, const TensorShard& s) {
  GV_RETURN_IF_ERROR(check_shard(s));
  GV_RETURN_IF_ERROR(check_flat(s, shape_numel(tp_piece_shape(s))));
  if (whole.shape() != s.global_shape) {
    return invalid_argument(describe(s) + ": the whole tensor has shape " + shape_str(whole.shape()));
  }
  Tensor piece(whole.dtype(), piece_shape(s));
  const size_t es = dtype_size(whole.dtype());
  const uint8_t* src = static_cast<const uint8_t*>(whole.data());
  uint8_t* dst = static_cast<uint8_t*>(piece.data());
  for_each_run(s, [&](int64_t w, int64_t p, int64_t n) { std::memcpy(dst + p * es, src + w * es, n * es); });
  return piece;
}

Status place_piece(Tensor& whole, const Tensor& piece, const TensorShard& s) {
  GV_RETURN_IF_ERROR(check_shard(s));
  GV_RETURN_IF_ERROR(check_flat(s, shape_numel(tp_piece_shape(s))));
  if (whole.shape() != s.global_shape) {
    return invalid_argument(describe(s) + ": the whole tensor has shape " + shape_str(whole.shape()));
  }
  if (piece.dtype() != whole.dtype()) {
    return invalid_argument(describe(s) + ": piece dtype " + dtype_name(piece.dtype()) + " differs from the whole's " +
                            dtype_name(whole.dtype()));
  }
  if (piece.numel() != shape_numel(piece_shape(s))) {
    return invalid_argument(describe(s) + ": the piece has shape " + shape_str(piece.shape()) + ", expected " +
                            shape_str(piece_shape(s)));
  }
  const size_t es = dtype_size(whole.dtype());
  const uint8_t* src = static_cast<const uint8_t*>(piece.data());
  uint8_t* dst = static_cast<uint8_t*>(whole.data());
  for_each_run(s, [&](int64_t w, int64_t p, int64_t n) { std::memcpy(dst + w * es, src + p * es, n * es); });
  return Status::ok();
}

}  // namespace gv

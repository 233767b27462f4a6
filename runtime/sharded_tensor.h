// Where a process's piece of a tensor sits in the whole tensor, so that checkpoints and reported weights never depend
// on how a run was parallelised. Pieces come from tensor parallelism (a slice of one axis, possibly interleaved:
// a fused QKV weight is split per q, k and v part) and from sharded data parallelism (a flat range of the TP piece).
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace gv {

struct TensorShard {
  std::string global_name;  // the tensor's name in checkpoints (the ONNX initializer's name)
  Shape global_shape;
  // Tensor parallelism: the global tensor's axis `axis` is viewed as [outer, parts, inner] (outer * parts * inner
  // = its size); this piece holds part `index`, i.e. outer * inner elements along the axis. axis < 0: not split.
  int axis = -1;
  int64_t outer = 1;
  int parts = 1;
  int index = 0;
  // Sharded data parallelism: this piece is the flat range [flat_begin, flat_end) of the TP piece (row-major).
  // flat_end < 0: the whole TP piece.
  int64_t flat_begin = 0;
  int64_t flat_end = -1;
  // Among the processes holding an identical copy of this piece, exactly one is the owner: it alone contributes the
  // piece when the whole tensor is assembled.
  bool owner = true;
  // For optimizer state sharded over the data-parallel group (ZeRO-2: every DP rank holds its own flat range): whether
  // this rank contributes its range, i.e. it is not a copy held by another TP rank or pipeline stage.
  bool owner_of_dp_range = true;
};

// Sharded data parallelism's split of n elements over d ranks: ceil(n / d) each, the last ones shorter (or empty).
inline std::vector<int64_t> flat_shard_sizes(int64_t n, int d) {
  const int64_t chunk = (n + d - 1) / d;
  std::vector<int64_t> sizes(d);
  for (int i = 0; i < d; ++i) sizes[i] = std::max<int64_t>(0, std::min(chunk, n - i * chunk));
  return sizes;
}

// The shape of the TP piece (before any flat range).
Shape tp_piece_shape(const TensorShard& s);
// The shape of the piece itself: the TP piece's shape, or [flat_end - flat_begin] for a flat range.
Shape piece_shape(const TensorShard& s);
// Cuts this piece out of the whole tensor.
Expected<Tensor> extract_piece(const Tensor& whole, const TensorShard& s);
// Writes this piece into the whole tensor (other elements untouched).
Status place_piece(Tensor& whole, const Tensor& piece, const TensorShard& s);

}  // namespace gv

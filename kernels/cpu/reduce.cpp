#include "kernels/cpu/reduce.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace gv::cpu {
namespace {

struct Dim {
  int64_t size, stride;
};

// Offsets of every index of `dims` (row-major over the list); one offset 0 for an empty list.
std::vector<int64_t> enumerate_offsets(const std::vector<Dim>& dims) {
  int64_t count = 1;
  for (const Dim& d : dims) count *= d.size;
  std::vector<int64_t> offs(static_cast<size_t>(count), 0);
  std::vector<int64_t> idx(dims.size(), 0);
  int64_t off = 0;
  for (int64_t i = 0; i < count; ++i) {
    offs[i] = off;
    for (int d = static_cast<int>(dims.size()) - 1; d >= 0; --d) {
      off += dims[d].stride;
      if (++idx[d] < dims[d].size) break;
      off -= dims[d].stride * dims[d].size;
      idx[d] = 0;
    }
  }
  return offs;
}

template <typename T>
using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;

template <typename T>
T lowest() {
  return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
}
template <typename T>
T highest() {
  return std::numeric_limits<T>::has_infinity ? std::numeric_limits<T>::infinity() : std::numeric_limits<T>::max();
}

// One reduction: init(), step(acc, x), finish(acc, count) -> T.
template <typename T>
struct SumOp {
  using A = Acc<T>;
  static A init() { return 0; }
  static A step(A a, T x) { return a + x; }
  static T finish(A a, int64_t) { return static_cast<T>(a); }
};
template <typename T>
struct MeanOp : SumOp<T> {
  using A = Acc<T>;
  static T finish(A a, int64_t n) {
    if constexpr (std::is_floating_point_v<T>) return static_cast<T>(a / static_cast<double>(n));
    else return n ? static_cast<T>(a / n) : T(0);
  }
};
template <typename T>
struct SumSquareOp : SumOp<T> {
  using A = Acc<T>;
  static A step(A a, T x) { return a + static_cast<A>(x) * x; }
};
template <typename T>
struct L1Op : SumOp<T> {
  using A = Acc<T>;
  static A step(A a, T x) { return a + (x < 0 ? -static_cast<A>(x) : static_cast<A>(x)); }
};
template <typename T>
struct L2Op : SumSquareOp<T> {
  using A = Acc<T>;
  static T finish(A a, int64_t) { return static_cast<T>(std::sqrt(static_cast<double>(a))); }
};
template <typename T>
struct LogSumOp : SumOp<T> {
  using A = Acc<T>;
  static T finish(A a, int64_t) { return static_cast<T>(std::log(static_cast<double>(a))); }
};
template <typename T>
struct ProdOp {
  using A = Acc<T>;
  static A init() { return 1; }
  static A step(A a, T x) { return a * x; }
  static T finish(A a, int64_t) { return static_cast<T>(a); }
};
// Max and min propagate NaN, as numpy does.
template <typename T>
struct MaxOp {
  using A = T;
  static A init() { return lowest<T>(); }
  static A step(A a, T x) { return (x > a || x != x) ? x : a; }
  static T finish(A a, int64_t) { return a; }
};
template <typename T>
struct MinOp {
  using A = T;
  static A init() { return highest<T>(); }
  static A step(A a, T x) { return (x < a || x != x) ? x : a; }
  static T finish(A a, int64_t) { return a; }
};

constexpr int64_t kBlock = 256;  // trailing kept elements handled together (vectorizable inner loop)

// Calls f(o, k0, k1) for each (outer index, block of inner) in parallel.
template <typename F>
void for_blocks(const ReduceLayout& l, int64_t work, F&& f) {
  const int64_t blocks = (l.inner + kBlock - 1) / kBlock;
  const int64_t tasks = l.outer() * blocks;
#pragma omp parallel for if (work > 32768 && tasks > 1) schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t o = t / blocks, k0 = (t % blocks) * kBlock;
    f(o, k0, std::min(l.inner, k0 + kBlock));
  }
}

template <typename T, typename Op>
void reduce_with(const T* x, T* y, const ReduceLayout& l) {
  const int64_t r = l.reduced();
  for_blocks(l, l.outer() * r * l.inner, [&](int64_t o, int64_t k0, int64_t k1) {
    typename Op::A acc[kBlock];
    const int64_t nk = k1 - k0;
    for (int64_t k = 0; k < nk; ++k) acc[k] = Op::init();
    const T* xo = x + l.outer_offsets[o] + k0;
    if (l.inner == 1 && l.reduced_contiguous) {
      for (int64_t j = 0; j < r; ++j) acc[0] = Op::step(acc[0], xo[j]);
    } else {
      for (int64_t j = 0; j < r; ++j) {
        const T* xs = xo + l.reduced_offsets[j];
        for (int64_t k = 0; k < nk; ++k) acc[k] = Op::step(acc[k], xs[k]);
      }
    }
    for (int64_t k = 0; k < nk; ++k) y[o * l.inner + k0 + k] = Op::finish(acc[k], r);
  });
}

// log(sum(exp(x))) with the maximum subtracted first.
template <typename T>
void reduce_log_sum_exp(const T* x, T* y, const ReduceLayout& l) {
  reduce_with<T, MaxOp<T>>(x, y, l);
  const int64_t r = l.reduced();
  for_blocks(l, l.outer() * r * l.inner, [&](int64_t o, int64_t k0, int64_t k1) {
    double sum[kBlock] = {}, shift[kBlock];
    T* yo = y + o * l.inner + k0;
    const int64_t nk = k1 - k0;
    // An all -inf (or empty) set sums zeros below (log 0 = -inf); a +inf maximum stays +inf.
    for (int64_t k = 0; k < nk; ++k) shift[k] = std::isinf(yo[k]) ? 0.0 : static_cast<double>(yo[k]);
    for (int64_t j = 0; j < r; ++j) {
      const T* xs = x + l.outer_offsets[o] + l.reduced_offsets[j] + k0;
      for (int64_t k = 0; k < nk; ++k) sum[k] += std::exp(static_cast<double>(xs[k]) - shift[k]);
    }
    for (int64_t k = 0; k < nk; ++k) {
      if (!(std::isinf(yo[k]) && yo[k] > 0)) yo[k] = static_cast<T>(shift[k] + std::log(sum[k]));
    }
  });
}

}  // namespace

ReduceLayout make_reduce_layout(const std::vector<int64_t>& shape, const std::vector<bool>& reduced) {
  const int rank = static_cast<int>(shape.size());
  std::vector<int64_t> strides(rank, 1);
  for (int d = rank - 2; d >= 0; --d) strides[d] = strides[d + 1] * shape[d + 1];
  ReduceLayout l;
  int tail = rank;  // axes [tail, rank) are kept (or size 1): the inner block
  while (tail > 0 && (!reduced[tail - 1] || shape[tail - 1] == 1)) --tail;
  for (int d = tail; d < rank; ++d) l.inner *= shape[d];
  std::vector<Dim> outer, red;
  for (int d = 0; d < tail; ++d) {
    if (shape[d] == 1) continue;
    (reduced[d] ? red : outer).push_back({shape[d], strides[d]});
  }
  l.outer_offsets = enumerate_offsets(outer);
  l.reduced_offsets = enumerate_offsets(red);
  l.reduced_contiguous = true;
  for (int64_t j = 0; j < l.reduced(); ++j) l.reduced_contiguous = l.reduced_contiguous && l.reduced_offsets[j] == j;
  return l;
}

template <typename T>
void reduce(const T* x, T* y, const ReduceLayout& l, ReduceKind kind) {
  switch (kind) {
    case ReduceKind::kSum: return reduce_with<T, SumOp<T>>(x, y, l);
    case ReduceKind::kMean: return reduce_with<T, MeanOp<T>>(x, y, l);
    case ReduceKind::kMax: return reduce_with<T, MaxOp<T>>(x, y, l);
    case ReduceKind::kMin: return reduce_with<T, MinOp<T>>(x, y, l);
    case ReduceKind::kProd: return reduce_with<T, ProdOp<T>>(x, y, l);
    case ReduceKind::kL1: return reduce_with<T, L1Op<T>>(x, y, l);
    case ReduceKind::kSumSquare: return reduce_with<T, SumSquareOp<T>>(x, y, l);
    case ReduceKind::kL2: return reduce_with<T, L2Op<T>>(x, y, l);
    case ReduceKind::kLogSum: return reduce_with<T, LogSumOp<T>>(x, y, l);
    case ReduceKind::kLogSumExp:
      if constexpr (std::is_floating_point_v<T>) reduce_log_sum_exp(x, y, l);
      return;
  }
}

template <typename T>
void reduce_backward(const T* dy, const T* x, const T* y, T* dx, const ReduceLayout& l, ReduceKind kind) {
  const int64_t r = l.reduced();
  for_blocks(l, l.outer() * r * l.inner, [&](int64_t o, int64_t k0, int64_t k1) {
    const int64_t nk = k1 - k0, out0 = o * l.inner + k0, base = l.outer_offsets[o] + k0;
    // Per-output helpers: ties (Max/Min) or zero count and product of the non-zero elements (Prod).
    double count[kBlock], prod[kBlock];
    if (kind == ReduceKind::kMax || kind == ReduceKind::kMin || kind == ReduceKind::kProd) {
      for (int64_t k = 0; k < nk; ++k) count[k] = 0, prod[k] = 1;
      for (int64_t j = 0; j < r; ++j) {
        const T* xs = x + base + l.reduced_offsets[j];
        for (int64_t k = 0; k < nk; ++k) {
          if (kind == ReduceKind::kProd) {
            if (xs[k] == T(0)) count[k] += 1;
            else prod[k] *= xs[k];
          } else if (xs[k] == y[out0 + k]) {
            count[k] += 1;
          }
        }
      }
    }
    for (int64_t j = 0; j < r; ++j) {
      const int64_t off = base + l.reduced_offsets[j];
      for (int64_t k = 0; k < nk; ++k) {
        const double g = dy[out0 + k];
        double d = 0.0;
        switch (kind) {
          case ReduceKind::kSum: d = g; break;
          case ReduceKind::kMean: d = g / static_cast<double>(r); break;
          case ReduceKind::kSumSquare: d = 2.0 * g * x[off + k]; break;
          case ReduceKind::kL1: d = x[off + k] > 0 ? g : (x[off + k] < 0 ? -g : 0.0); break;
          case ReduceKind::kL2: d = y[out0 + k] != T(0) ? g * x[off + k] / y[out0 + k] : 0.0; break;
          case ReduceKind::kLogSum: d = g / std::exp(static_cast<double>(y[out0 + k])); break;
          case ReduceKind::kLogSumExp: d = g * std::exp(static_cast<double>(x[off + k]) - y[out0 + k]); break;
          case ReduceKind::kMax:
          case ReduceKind::kMin: d = x[off + k] == y[out0 + k] ? g / count[k] : 0.0; break;
          case ReduceKind::kProd:
            if (count[k] == 0) d = g * prod[k] / x[off + k];
            else if (count[k] == 1 && x[off + k] == T(0)) d = g * prod[k];
            break;
        }
        dx[off + k] = static_cast<T>(d);
      }
    }
  });
}

template <typename T>
void arg_reduce(const T* x, int64_t* y, int64_t outer, int64_t n, int64_t inner, bool is_max, bool select_last) {
#pragma omp parallel for if (outer * n * inner > 32768) schedule(static)
  for (int64_t t = 0; t < outer * inner; ++t) {
    const int64_t o = t / inner, k = t % inner;
    const T* xs = x + o * n * inner + k;
    int64_t best = 0;
    for (int64_t j = 1; j < n; ++j) {
      const T v = xs[j * inner], b = xs[best * inner];
      const bool better = is_max ? (v > b || (b != b && v == v)) : (v < b || (b != b && v == v));
      if (better || (select_last && v == b)) best = j;
    }
    y[t] = best;
  }
}

#define GV_REDUCE_INSTANTIATE(T)                                                                     \
  template void reduce<T>(const T*, T*, const ReduceLayout&, ReduceKind);                            \
  template void arg_reduce<T>(const T*, int64_t*, int64_t, int64_t, int64_t, bool, bool);
GV_REDUCE_INSTANTIATE(float)
GV_REDUCE_INSTANTIATE(double)
GV_REDUCE_INSTANTIATE(int32_t)
GV_REDUCE_INSTANTIATE(int64_t)
#undef GV_REDUCE_INSTANTIATE
template void reduce_backward<float>(const float*, const float*, const float*, float*, const ReduceLayout&, ReduceKind);
template void reduce_backward<double>(const double*, const double*, const double*, double*, const ReduceLayout&,
                                      ReduceKind);

}  // namespace gv::cpu

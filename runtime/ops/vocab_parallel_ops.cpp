// Vocabulary-parallel cross-entropy (Megatron's vocab_parallel_cross_entropy; Galvatron's `vtp`), domain galvatron.
//
//   VocabParallelCrossEntropy(logits_piece [N, Vl], labels [N]) -> loss (scalar)
//     attrs: group (ints, world ranks; absent/empty: the whole world), vocab_start (int: the first vocabulary entry
//            this rank's columns hold), vocab_size (int: the whole vocabulary V), ignore_index (int, default -100).
//     Every member holds columns [vocab_start, vocab_start + Vl) of the logits; labels are the same on every member.
//     The loss is PyTorch's mean cross-entropy over the whole vocabulary, over the rows whose label is not
//     ignore_index (0 when every row is ignored), identical on every member:
//       row max     all_gather of the members' local maxima, then the max (the communicator has no max reduction)
//       sum of exp  all-reduce (sum) of sum_j exp(logit - max) over the local columns
//       target      all-reduce (sum) of the target logit, which only the owning member picks (others add 0)
//     Reductions run in float64 whatever the logits' dtype.
//   VocabParallelCrossEntropyGrad(dLoss, logits_piece, labels) -> dLogits_piece
//     same attrs; recomputes max and sum of exp (two collectives) and writes
//     (softmax_local - onehot_local) * dLoss / count, zero on ignored rows.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/communicator.h"
#include "runtime/ops/all_ops.h"
#include "runtime/ops/math_common.h"

namespace gv {
namespace {

using math::dispatch_float;
using math::dispatch_index;
using math::is_float;
using math::is_index;

Status infer_check(const InferContext& ctx, int li_logits, int li_labels) {
  const Shape& s = ctx.shape(li_logits);
  if (!is_float(ctx.dtype(li_logits))) return ctx.fail("logits must be float32 or float64");
  if (s.size() != 2) return ctx.fail("logits piece must be [N, V / vtp], got " + shape_str(s));
  if (!is_index(ctx.dtype(li_labels))) return ctx.fail("labels must be int32 or int64");
  if (ctx.shape(li_labels) != Shape{s[0]}) {
    return ctx.fail("labels " + shape_str(ctx.shape(li_labels)) + " must be [" + std::to_string(s[0]) + "]");
  }
  const int64_t start = ctx.attrs().get_int("vocab_start", -1);
  const int64_t vocab = ctx.attrs().get_int("vocab_size", -1);
  if (start < 0 || vocab <= 0 || start + s[1] > vocab) {
    return ctx.fail("attrs vocab_start " + std::to_string(start) + " and vocab_size " + std::to_string(vocab) +
                    " do not hold a piece of " + std::to_string(s[1]) + " columns");
  }
  for (int64_t r : ctx.attrs().get_ints("group")) {
    if (r < 0) return ctx.fail("attr group holds a negative rank");
  }
  return Status::ok();
}

Status infer_vpce(InferContext& ctx) {
  GV_RETURN_IF_ERROR(infer_check(ctx, 0, 1));
  ctx.set_output(0, ctx.dtype(0), {});
  return Status::ok();
}

Status infer_vpce_grad(InferContext& ctx) {
  GV_RETURN_IF_ERROR(infer_check(ctx, 1, 2));
  if (ctx.has_input(0) && shape_numel(ctx.shape(0)) != 1) return ctx.fail("dLoss must be a scalar");
  ctx.set_output(0, ctx.dtype(1), ctx.shape(1));
  return Status::ok();
}

// The node's group: null for one process (group empty or {0}).
Expected<Communicator*> vp_group(const KernelContext& ctx) {
  const std::vector<int64_t> g = ctx.attrs().get_ints("group");
  if (!ctx.comm) {
    if (g.empty() || (g.size() == 1 && g[0] == 0)) return static_cast<Communicator*>(nullptr);
    return ctx.fail("group of " + std::to_string(g.size()) +
                    " ranks needs a communicator, but this executor runs a single process");
  }
  if (g.empty()) return ctx.comm;
  auto c = ctx.comm->group(std::vector<int>(g.begin(), g.end()));
  if (!c) return ctx.fail("group: " + c.status().message());
  return *c;
}

// Per row: the global max and the global sum of exp(logit - max); and, with `target`, the target logit (0 for
// ignored rows). Also counts the rows that are not ignored and checks the labels.
struct RowStats {
  std::vector<double> max, sum_exp, target;
  int64_t count = 0;
};

template <typename T, typename L>
Status row_stats(const KernelContext& ctx, Communicator* comm, const T* x, const L* labels, int64_t n, int64_t vl,
                 bool with_target, RowStats& st) {
  const int64_t start = ctx.attrs().get_int("vocab_start", 0);
  const int64_t vocab = ctx.attrs().get_int("vocab_size", 0);
  const int64_t ignore = ctx.attrs().get_int("ignore_index", -100);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t l = static_cast<int64_t>(labels[i]);
    if (l == ignore) continue;
    if (l < 0 || l >= vocab) {
      return ctx.fail("label " + std::to_string(l) + " at position " + std::to_string(i) + " is outside [0, " +
                      std::to_string(vocab) + ") and is not ignore_index " + std::to_string(ignore));
    }
    ++st.count;
  }
  std::vector<double> local_max(n, -std::numeric_limits<double>::infinity());
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * vl;
    for (int64_t j = 0; j < vl; ++j) local_max[i] = std::max(local_max[i], static_cast<double>(row[j]));
  }
  st.max = local_max;
  const int members = comm ? comm->size() : 1;
  if (comm && members > 1) {
    std::vector<double> all(static_cast<size_t>(n) * members);
    Status s = comm->all_gather(local_max.data(), all.data(), std::vector<size_t>(members, static_cast<size_t>(n)),
                                DType::kFloat64);
    if (!s.is_ok()) return ctx.fail("all_gather of the row maxima: " + s.message());
    for (int m = 0; m < members; ++m) {
      for (int64_t i = 0; i < n; ++i) st.max[i] = std::max(st.max[i], all[m * n + i]);
    }
  }
  // One all-reduce: [sum_exp (n), target (n)].
  std::vector<double> buf(with_target ? 2 * n : n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * vl;
    double s = 0.0;
    for (int64_t j = 0; j < vl; ++j) s += std::exp(static_cast<double>(row[j]) - st.max[i]);
    buf[i] = s;
    if (with_target) {
      const int64_t l = static_cast<int64_t>(labels[i]);
      if (l != ignore && l >= start && l < start + vl) buf[n + i] = static_cast<double>(row[l - start]);
    }
  }
  if (comm && members > 1) {
    Status s = comm->all_reduce(buf.data(), buf.size(), DType::kFloat64, ReduceOp::kSum);
    if (!s.is_ok()) return ctx.fail("all_reduce of the sums of exp: " + s.message());
  }
  st.sum_exp.assign(buf.begin(), buf.begin() + n);
  if (with_target) st.target.assign(buf.begin() + n, buf.end());
  return Status::ok();
}

Status vpce_cpu(KernelContext& ctx) {
  const TensorRef &x = ctx.inputs[0], &labels = ctx.inputs[1];
  GV_ASSIGN_OR_RETURN(Communicator * comm, vp_group(ctx));
  const int64_t n = x.shape[0], vl = x.shape[1];
  const int64_t ignore = ctx.attrs().get_int("ignore_index", -100);
  Status result = Status::ok();
  GV_RETURN_IF_ERROR(dispatch_float(x.dtype, ctx, [&](auto t_tag) {
    using T = decltype(t_tag);
    Status idx = dispatch_index(labels.dtype, ctx, [&](auto l_tag) {
      using L = decltype(l_tag);
      RowStats st;
      result = row_stats<T, L>(ctx, comm, x.as<T>(), labels.as<L>(), n, vl, true, st);
      if (!result.is_ok()) return;
      double total = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        if (static_cast<int64_t>(labels.as<L>()[i]) == ignore) continue;
        total += std::log(st.sum_exp[i]) + st.max[i] - st.target[i];
      }
      *ctx.outputs[0].as<T>() = static_cast<T>(st.count > 0 ? total / static_cast<double>(st.count) : 0.0);
    });
    if (!idx.is_ok()) result = idx;
  }));
  return result;
}

Status vpce_grad_cpu(KernelContext& ctx) {
  const TensorRef &dloss = ctx.inputs[0], &x = ctx.inputs[1], &labels = ctx.inputs[2];
  GV_ASSIGN_OR_RETURN(Communicator * comm, vp_group(ctx));
  const int64_t n = x.shape[0], vl = x.shape[1];
  const int64_t start = ctx.attrs().get_int("vocab_start", 0);
  const int64_t ignore = ctx.attrs().get_int("ignore_index", -100);
  Status result = Status::ok();
  GV_RETURN_IF_ERROR(dispatch_float(x.dtype, ctx, [&](auto t_tag) {
    using T = decltype(t_tag);
    Status idx = dispatch_index(labels.dtype, ctx, [&](auto l_tag) {
      using L = decltype(l_tag);
      RowStats st;
      result = row_stats<T, L>(ctx, comm, x.as<T>(), labels.as<L>(), n, vl, false, st);
      if (!result.is_ok()) return;
      const double g = dloss.data ? static_cast<double>(*dloss.as<T>()) : 1.0;
      const double scale = st.count > 0 ? g / static_cast<double>(st.count) : 0.0;
      const T* in = x.as<T>();
      T* out = ctx.outputs[0].as<T>();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t l = static_cast<int64_t>(labels.as<L>()[i]);
        T* orow = out + i * vl;
        if (l == ignore) {
          std::fill(orow, orow + vl, T(0));
          continue;
        }
        const T* row = in + i * vl;
        const double inv = 1.0 / st.sum_exp[i];
        for (int64_t j = 0; j < vl; ++j) {
          double p = std::exp(static_cast<double>(row[j]) - st.max[i]) * inv;
          if (start + j == l) p -= 1.0;
          orow[j] = static_cast<T>(p * scale);
        }
      }
    });
    if (!idx.is_ok()) result = idx;
  }));
  return result;
}

Status vpce_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0) || gb.grad_output(0) == kNoValue) return Status::ok();
  Attributes a;
  a.set_ints("group", gb.attrs().get_ints("group"));
  a.set_int("vocab_start", gb.attrs().get_int("vocab_start", 0));
  a.set_int("vocab_size", gb.attrs().get_int("vocab_size", 0));
  a.set_int("ignore_index", gb.attrs().get_int("ignore_index", -100));
  gb.set_grad_input(0, gb.emit1("VocabParallelCrossEntropyGrad", {gb.grad_output(0), gb.input(0), gb.input(1)}, a,
                                kGalvatronDomain));
  return Status::ok();
}

}  // namespace

void register_vocab_parallel_ops(OpRegistry& r) {
  OpSchema ce = math::make_schema(kGalvatronDomain, "VocabParallelCrossEntropy", 2, 2, 1, 1, infer_vpce, vpce_cpu,
                                  "(logits piece [N, V/vtp], labels [N]) -> mean cross-entropy over the whole "
                                  "vocabulary (attrs group, vocab_start, vocab_size, ignore_index)");
  ce.grad = vpce_grad;
  ce.nondiff_inputs = {1};
  r.add(ce);
  r.add(math::make_schema(kGalvatronDomain, "VocabParallelCrossEntropyGrad", 3, 3, 1, 1, infer_vpce_grad,
                          vpce_grad_cpu,
                          "(dLoss, logits piece, labels) -> dLogits piece of VocabParallelCrossEntropy"));
}

}  // namespace gv

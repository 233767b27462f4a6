#include "partitioner/dp_core.h"

#include <algorithm>
#include <cstddef>

namespace gv::partitioner {
namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
}

std::vector<DpAnswer> solve_knapsack(const DpProblem& p, const std::vector<DpQuery>& queries) {
  const int L = p.layers, S = p.strategies;
  std::vector<DpAnswer> ans(queries.size());
  if (L <= 0 || S <= 0 || S > 255) return ans;
  int vmax = -1;
  for (const auto& q : queries) vmax = std::max(vmax, p.budget_mb - q.other_mem_mb);
  if (vmax < 0) return ans;

  // lb[i]: least total weight of layers 0..i; hb[i]: largest. Rows below lb are infinite; rows above hb repeat hb.
  std::vector<long long> lb(L), hb(L);
  long long a = 0, b = 0;
  for (int i = 0; i < L; ++i) {
    int mn = p.weight[i * S], mx = p.weight[i * S];
    for (int s = 1; s < S; ++s) {
      mn = std::min(mn, p.weight[i * S + s]);
      mx = std::max(mx, p.weight[i * S + s]);
    }
    a += std::max(mn, 0);
    b += std::max(mx, 0);
    lb[i] = a;
    hb[i] = b;
  }
  auto lo_of = [&](int i) { return static_cast<int>(std::min<long long>(lb[i], vmax + 1)); };
  auto hi_of = [&](int i) { return static_cast<int>(std::min<long long>(hb[i], vmax)); };  // inclusive

  // inter transposed: interT[i][to][from]
  std::vector<double> interT(static_cast<size_t>(L) * S * S);
  for (int i = 0; i < L; ++i)
    for (int f = 0; f < S; ++f)
      for (int t = 0; t < S; ++t) interT[(static_cast<size_t>(i) * S + t) * S + f] = p.inter[(static_cast<size_t>(i) * S + f) * S + t];

  std::vector<double> prev(static_cast<size_t>(vmax + 1) * S, 0.0), cur(static_cast<size_t>(vmax + 1) * S, kInf);
  int prev_lo = 0, prev_hi = 0;  // f_0 = 0 for every v: read row 0
  // same_prev[u]: row u of the previous layer equals row u - 1 (then so do the results that read them).
  std::vector<uint8_t> same_prev(static_cast<size_t>(vmax + 1), 0), same_cur(static_cast<size_t>(vmax + 1), 0);
  std::vector<std::vector<uint8_t>> mark(L);
  std::vector<int> mark_lo(L), mark_hi(L);
  for (int i = 0; i < L; ++i) {
    const int lo = lo_of(i), hi = hi_of(i);
    mark_lo[i] = lo;
    mark_hi[i] = hi;
    if (hi >= lo) mark[i].assign(static_cast<size_t>(hi - lo + 1) * S, 255);
    const int* w = &p.weight[static_cast<size_t>(i) * S];
    const double* intra = &p.intra[static_cast<size_t>(i) * S];
    for (int v = lo; v <= hi; ++v) {
      double* out = &cur[static_cast<size_t>(v) * S];
      uint8_t* mk = &mark[i][static_cast<size_t>(v - lo) * S];
      for (int s = 0; s < S; ++s) {
        const int u = v - w[s];
        if (u < 0 || u < prev_lo) {
          out[s] = kInf;
          continue;
        }
        // Reading the same values as (v - 1, s) did gives the same result and the same choice.
        if (v > lo && u - 1 >= prev_lo && (u > prev_hi || same_prev[u])) {
          out[s] = out[static_cast<ptrdiff_t>(s) - S];
          mk[s] = mk[static_cast<ptrdiff_t>(s) - S];
          continue;
        }
        const double* row = &prev[static_cast<size_t>(std::min(u, prev_hi)) * S];
        const double* it = &interT[(static_cast<size_t>(i) * S + s) * S];
        const double in = intra[s];
        double best = row[0] + it[0] + in;
        int idx = 0;
        for (int si = 1; si < S; ++si) {
          double c = row[si] + it[si] + in;
          if (c < best) {
            best = c;
            idx = si;
          }
        }
        out[s] = best;
        mk[s] = static_cast<uint8_t>(idx);
      }
      bool same = v > lo;
      for (int s = 0; same && s < S; ++s) same = out[s] == out[static_cast<ptrdiff_t>(s) - S];
      same_cur[v] = same;
    }
    std::swap(prev, cur);
    std::swap(same_prev, same_cur);
    prev_lo = lo;
    prev_hi = hi;
  }

  for (size_t qi = 0; qi < queries.size(); ++qi) {
    const int V = p.budget_mb - queries[qi].other_mem_mb;
    if (V < 0 || V < prev_lo) continue;
    const double* row = &prev[static_cast<size_t>(std::min(V, prev_hi)) * S];
    int idx = 0;
    for (int s = 1; s < S; ++s)
      if (row[s] < row[idx]) idx = s;
    double total = row[idx];
    if (!(total < kInf)) continue;
    DpAnswer& r = ans[qi];
    r.layers_cost = total;
    r.cost = total + queries[qi].other_time_s;
    r.plan.assign(L, -1);
    r.plan[L - 1] = idx;
    int v = V;
    for (int i = L - 1; i > 0; --i) {
      const int cur_idx = idx;
      const int vv = std::min(v, mark_hi[i]);
      idx = mark[i][static_cast<size_t>(vv - mark_lo[i]) * S + idx];
      v -= p.weight[static_cast<size_t>(i) * S + cur_idx];
      r.plan[i - 1] = idx;
    }
    r.remaining_mb = v - p.weight[idx];
  }
  return ans;
}

std::vector<DpAnswer> solve_knapsack_reference(const DpProblem& p, const std::vector<DpQuery>& queries) {
  const int L = p.layers, S = p.strategies, M = p.budget_mb + 1;
  std::vector<double> f(static_cast<size_t>(M) * S, 0.0);
  std::vector<int> mark(static_cast<size_t>(L) * M * S, -1);
  for (int i = 0; i < L; ++i)
    for (int v = M - 1; v >= 0; --v)
      for (int s = 0; s < S; ++s) {
        const int w = p.weight[i * S + s];
        if (v < w) {
          mark[(static_cast<size_t>(i) * M + v) * S + s] = -1;
          f[static_cast<size_t>(v) * S + s] = kInf;
          continue;
        }
        std::vector<double> c(S);
        for (int si = 0; si < S; ++si)
          c[si] = f[static_cast<size_t>(v - w) * S + si] + p.inter[(static_cast<size_t>(i) * S + si) * S + s] + p.intra[i * S + s];
        int idx = static_cast<int>(std::min_element(c.begin(), c.end()) - c.begin());
        mark[(static_cast<size_t>(i) * M + v) * S + s] = idx;
        f[static_cast<size_t>(v) * S + s] = c[idx];
      }
  std::vector<DpAnswer> ans(queries.size());
  for (size_t qi = 0; qi < queries.size(); ++qi) {
    const int V = M - 1 - queries[qi].other_mem_mb;
    if (V < 0) continue;
    const double* row = &f[static_cast<size_t>(V) * S];
    int idx = static_cast<int>(std::min_element(row, row + S) - row);
    if (!(row[idx] < kInf)) continue;
    DpAnswer& r = ans[qi];
    r.layers_cost = row[idx];
    r.cost = row[idx] + queries[qi].other_time_s;
    r.plan.assign(L, -1);
    r.plan[L - 1] = idx;
    int v = V;
    for (int i = L - 1; i > 0; --i) {
      int cur_idx = idx;
      idx = mark[(static_cast<size_t>(i) * M + v) * S + idx];
      v -= p.weight[i * S + cur_idx];
      r.plan[i - 1] = idx;
    }
    r.remaining_mb = v - p.weight[idx];
  }
  return ans;
}

}  // namespace gv::partitioner

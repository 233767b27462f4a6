// The knapsack dynamic program of Galvatron (csrc/dp_core.cpp) over the layers of one pipeline stage and the memory
// budget in 1 MB units: f_i[v][s] = min_s' (f_{i-1}[v - w_i(s)][s'] + inter_i[s'][s]) + intra_i[s], f_0 = 0, first
// minimum on ties. The same answers as Galvatron's core, computed faster: only the memory range that can be reached
// and that a read-out needs is filled (rows below the least total weight are infinite, rows above the largest total
// weight repeat), and one table serves several read-outs (vocab TP degrees, embed_sdp).
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

namespace gv::partitioner {

struct DpProblem {
  int layers = 0;
  int strategies = 0;
  int budget_mb = 0;                // Galvatron's max_mem (after the cache reserve)
  std::vector<int> weight;          // [layers][strategies] MB (ceil)
  std::vector<double> intra;        // [layers][strategies] seconds
  std::vector<double> inter;        // [layers][from][to] seconds
};

struct DpQuery {
  int other_mem_mb = 0;
  double other_time_s = 0;
};

struct DpAnswer {
  double cost = std::numeric_limits<double>::infinity();  // layers + other time, seconds
  int remaining_mb = -1;                                  // -1: infeasible
  std::vector<int> plan;                                  // strategy index per layer
  double layers_cost = std::numeric_limits<double>::infinity();
};

std::vector<DpAnswer> solve_knapsack(const DpProblem& p, const std::vector<DpQuery>& queries);

// The plain recurrence over the whole table, as Galvatron's core runs it (for tests).
std::vector<DpAnswer> solve_knapsack_reference(const DpProblem& p, const std::vector<DpQuery>& queries);

}  // namespace gv::partitioner

// The outer search of Galvatron v2.4.0 (search_engine.py parallelism_optimization, search_for_chunk,
// dynamic_programming.py DpOnModel.fit / _build_dp_and_run_multi_layer_type). Tasks are independent and run in
// parallel with OpenMP; the winner is chosen in Galvatron's loop order with its strict comparisons, so ties resolve
// the same way.
#include "partitioner/search.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "partitioner/dp_core.h"

namespace gv::partitioner {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double coe_lookup(const std::map<std::string, double>& m, const std::string& a, const std::string& b) {
  auto it = m.find(a);
  if (it != m.end()) return it->second;
  it = m.find(b);
  return it != m.end() ? it->second : std::numeric_limits<double>::quiet_NaN();
}

struct Task {
  int bsz, chunk, min_tp, max_tp, vsp;
};

// One (embed_sdp, sp_search) outcome of a task.
struct Outcome {
  bool present = false;  // results[sp_search] exists
  double throughput = 0, cost = kInf;
  int pp = -1, vtp = -1;
  std::vector<int> partition;
  std::vector<Strategy> plan;
  std::vector<int> mem_remain;
  std::vector<int> mem_cost;
  PipelineCost pipe;
  double least_need_mb = kInf;
};

struct Engine {
  const ModelProfile& model;
  const HardwareProfile& hw;
  SearchOptions opt;  // effective
  CostInputs ci;
  std::vector<Strategy> strategies;
  int gpu = 8;
  int max_mem = 0, mem_cache = 0;
  std::vector<int> layernum;
  int total_layers = 0;
  int max_seq = 0;

  std::vector<int> pp_division_even(int pp) const {
    int avg = total_layers / pp;
    std::vector<int> d(pp - 1, avg);
    d.push_back(total_layers - avg * (pp - 1));
    return d;
  }

  // _build_dp_and_run_multi_layer_type for every embed_sdp in `esdps` (they share the layer tables).
  void build_dp(const std::vector<Strategy>& task_strats, int pp, int bsz, int mbsz, int min_tp, int max_tp, int vsp,
                int sp_search, const std::vector<int>& esdps, std::vector<Outcome>* outs) const {
    std::vector<Strategy> ss;
    for (const auto& s : task_strats)
      if (s.pp == pp) ss.push_back(s);
    const int S = static_cast<int>(ss.size());
    const int ntype = static_cast<int>(layernum.size());
    const int L = total_layers;
    const std::vector<int> part = pp_division_even(pp);
    // chunks per layer type (model_microbatch_after_dp)
    const int dp_size = gpu / pp;
    std::vector<double> chunks(ntype);
    for (int t = 0; t < ntype; ++t) {
      int local = (bsz * min_tp / dp_size) / (min_tp / min_tp);
      double c = std::ceil(static_cast<double>(local) / mbsz);
      chunks[t] = c == 0 ? 1 : c;
    }
    std::vector<int> type_of;
    for (int t = 0; t < ntype; ++t)
      for (int i = 0; i < layernum[t]; ++i) type_of.push_back(t);
    // intra-layer time
    std::vector<double> intra(static_cast<size_t>(L) * S);
    for (int t = 0; t < ntype; ++t) {
      std::vector<double> row(S);
      for (int s = 0; s < S; ++s) {
        const double g = opt.use_pipeline_costmodel ? bsz / chunks[t] : static_cast<double>(bsz);
        row[s] = layer_time(ci, t, ss[s], g, false).total_s;
      }
      for (int i = 0; i < L; ++i)
        if (type_of[i] == t) std::copy(row.begin(), row.end(), intra.begin() + static_cast<size_t>(i) * S);
    }
    // memory weights per stage (1F1B) or shared (GPipe), and "other" memory from the first strategy
    const bool f1b = opt.pipeline_type == "pipedream_flush";
    const int nst = f1b ? pp : 1;
    std::vector<std::vector<int>> weight(nst, std::vector<int>(static_cast<size_t>(L) * S));
    std::vector<std::map<int, std::vector<int>>> other_mem(esdps.size());
    for (int st = 0; st < nst; ++st) {
      for (int t = 0; t < ntype; ++t) {
        std::vector<int> row(S);
        for (int s = 0; s < S; ++s) {
          LayerMemory lm = layer_memory(ci, t, ss[s], bsz, mbsz, min_tp, max_tp, st, vsp, false);
          row[s] = static_cast<int>(std::ceil(lm.enc_total));
        }
        for (int i = 0; i < L; ++i)
          if (type_of[i] == t) std::copy(row.begin(), row.end(), weight[st].begin() + static_cast<size_t>(i) * S);
      }
    }
    for (size_t e = 0; e < esdps.size(); ++e) {
      LayerMemory lm = layer_memory(ci, 0, ss[0], bsz, mbsz, min_tp, max_tp, 0, vsp, esdps[e] != 0);
      for (auto& [k, v] : lm.other) {
        std::vector<int> c;
        for (double x : v) c.push_back(static_cast<int>(std::ceil(x)));
        other_mem[e][k] = c;
      }
    }
    std::vector<OtherTime> otime;
    for (int e : esdps) otime.push_back(other_time(ci, mbsz, pp, gpu, vsp != 0, e != 0, min_tp, max_tp));
    // inter-layer (redistribution) cost per layer type
    const auto& coe = hw.allreduce_coe;
    std::vector<double> inter(static_cast<size_t>(L) * S * S);
    const bool mp = opt.mixed_precision != "fp32";
    for (int t = 0; t < ntype; ++t) {
      std::vector<double> ic(static_cast<size_t>(S) * S, 0.0);
      const double sample_num = static_cast<double>(model.layer_types[t].seq_length) *
                                model.layer_types[0].hidden_size * (mp ? 2 : 4);
      for (int i = 0; i < S; ++i)
        for (int j = 0; j < S; ++j) {
          const Strategy &a = ss[i], &b = ss[j];
          bool c1 = b.tp > a.tp, c2 = false, c3 = false;
          if (b.tp_consec != -1 && a.tp_consec != -1) {
            c2 = b.tp == a.tp && b.tp_consec != a.tp_consec;
            int ws = a.tp * a.dp;
            c3 = ws == 8 && a.tp == 4 && b.tp == 2 && b.tp_consec != a.tp_consec;
          }
          bool c4 = opt.sequence_parallel && b.tp != a.tp;
          double v = 0;
          if (c1 || c2 || c3 || c4) {
            int T = std::max(a.tp, b.tp);
            v = (T - 1.0) / T * mbsz * (T / min_tp) * sample_num;
          }
          int tps = std::max(a.tp, b.tp), dps = std::min(a.dp, b.dp);
          double cf;
          if (tps == 1 || dps == 1) {
            cf = coe_lookup(coe, std::to_string(tps), std::to_string(tps) + "_1");
          } else {
            const Strategy& info = b.tp > a.tp ? b : a;
            const std::string key = std::to_string(tps) + (info.tp_consec ? "_1" : "_0");
            cf = coe_lookup(coe, key, key);
          }
          v = v * cf * 1e-7;
          if (i != j && match_strategy(a, b, kKeySp) && b.sp == 1) v = 1e-10;
          if (i != j && match_strategy(a, b, kKeyFsdp) && b.fsdp == 1) v = 1e-9;
          if (i != j && match_strategy(a, b, kKeyCpt) && b.cpt == 1) v = 2e-9;
          if (i != j && match_strategy(a, b, kKeyFsdp | kKeyCpt) && b.fsdp == 1 && b.cpt == 1) v = 3e-9;
          if (i != j && match_strategy(a, b, kKeyFsdp | kKeyCpt) && !match_strategy(a, b, kKeyFsdp) &&
              !match_strategy(a, b, kKeyCpt) && a.fsdp == 1 && b.cpt == 1)
            v = 1e-9;
          ic[static_cast<size_t>(i) * S + j] = v;
        }
      for (int l = 0; l < L; ++l)
        if (type_of[l] == t) std::copy(ic.begin(), ic.end(), inter.begin() + static_cast<size_t>(l) * S * S);
    }
    std::fill(inter.begin(), inter.begin() + static_cast<size_t>(S) * S, 0.0);

    // vocab-TP degrees: those with both a memory and a time model
    std::vector<std::vector<int>> ks(esdps.size());
    for (size_t e = 0; e < esdps.size(); ++e)
      for (auto& [k, v] : otime[e].with_sync)
        if (other_mem[e].count(k)) ks[e].push_back(k);

    const double hidden = model.layer_types[0].hidden_size;
    auto global_mem = [&](bool fine) {
      bool on = fine ? (opt.sequence_parallel && opt.global_memory_buffer && sp_search != 2) : opt.sequence_parallel;
      if (!on) return 0.0;
      double g = static_cast<double>(mbsz) / min_tp * max_tp * hidden * max_seq * 4 / 1024 / 1024;
      if (mp) g = g / 2;
      return g;
    };

    for (size_t e = 0; e < esdps.size(); ++e) {
      Outcome& o = (*outs)[e];
      o.pp = pp;
      o.partition = part;
    }

    if (opt.fine_grained_mode == 0) {
      const int gm = static_cast<int>(global_mem(false));
      for (size_t e = 0; e < esdps.size(); ++e) {
        Outcome& o = (*outs)[e];
        double final_cost = kInf;
        int vtp = -1;
        for (int si = 0; si < S; ++si) {
          // per stage: one strategy for all layers, only vocab TP equal to its TP
          std::map<int, std::vector<int>> remain;
          std::map<int, std::vector<double>> cst;
          for (int k : ks[e]) {
            remain[k].assign(pp, -1);
            cst[k].assign(pp, kInf);
          }
          int start = 0;
          for (int st = 0; st < pp; ++st) {
            const std::vector<int>& w = weight[f1b ? st : 0];
            for (int k : ks[e]) {
              if (ss[si].tp != k) continue;
              double tc = 0;
              long long mc = 0;
              for (int l = start; l < start + part[st]; ++l) {
                tc += intra[static_cast<size_t>(l) * S + si];
                mc += w[static_cast<size_t>(l) * S + si];
              }
              for (int l = start; l < start + part[st]; ++l) tc += inter[(static_cast<size_t>(l) * S + si) * S + si];
              tc += otime[e].with_sync[k][st];
              mc += other_mem[e][k][st] + gm;
              if (max_mem - mc >= 0) {
                remain[k][st] = static_cast<int>(max_mem - mc);
                cst[k][st] = tc;
              }
            }
            start += part[st];
          }
          for (int k : ks[e]) {
            bool ok = true;
            for (int st = 0; st < pp; ++st) ok = ok && remain[k][st] != -1;
            if (!ok) continue;
            std::vector<Strategy> plan(L, ss[si]);
            PipelineCost pc =
                pipeline_cost(ci, plan, part, chunks, bsz, min_tp, otime[e].no_sync[k], otime[e].optimizer[k]);
            if (final_cost > pc.total_s) {
              final_cost = pc.total_s;
              vtp = k;
              o.plan = plan;
              o.pipe = pc;
              o.mem_remain = remain[k];
              o.mem_cost.clear();
              for (int r : remain[k]) o.mem_cost.push_back(max_mem - r + mem_cache);
            }
          }
        }
        o.cost = final_cost;
        o.vtp = vtp;
        if (vtp == -1) o.plan.clear();
      }
      return;
    }

    const int gm = static_cast<int>(global_mem(true));
    // per stage: one DP table, a read-out per (embed_sdp, vocab TP)
    std::vector<std::vector<std::vector<DpAnswer>>> answers(pp);  // [stage][e][k index]
    int start = 0;
    for (int st = 0; st < pp; ++st) {
      DpProblem prob;
      prob.layers = part[st];
      prob.strategies = S;
      prob.budget_mb = max_mem;
      const std::vector<int>& w = weight[f1b ? st : 0];
      prob.weight.assign(w.begin() + static_cast<size_t>(start) * S, w.begin() + static_cast<size_t>(start + part[st]) * S);
      prob.intra.assign(intra.begin() + static_cast<size_t>(start) * S,
                        intra.begin() + static_cast<size_t>(start + part[st]) * S);
      prob.inter.assign(inter.begin() + static_cast<size_t>(start) * S * S,
                        inter.begin() + static_cast<size_t>(start + part[st]) * S * S);
      std::vector<DpQuery> qs;
      for (size_t e = 0; e < esdps.size(); ++e)
        for (int k : ks[e]) qs.push_back({other_mem[e][k][st] + gm, otime[e].with_sync[k][st]});
      std::vector<DpAnswer> a = solve_knapsack(prob, qs);
      // least memory this stage could need (for the error message)
      long long minw = 0;
      for (int l = 0; l < part[st]; ++l) {
        int mn = prob.weight[static_cast<size_t>(l) * S];
        for (int s = 1; s < S; ++s) mn = std::min(mn, prob.weight[static_cast<size_t>(l) * S + s]);
        minw += mn;
      }
      size_t q = 0;
      answers[st].resize(esdps.size());
      for (size_t e = 0; e < esdps.size(); ++e) {
        double least_other = kInf;
        for (size_t j = 0; j < ks[e].size(); ++j) {
          answers[st][e].push_back(a[q]);
          least_other = std::min(least_other, static_cast<double>(qs[q].other_mem_mb));
          ++q;
        }
        double need = least_other + minw;
        Outcome& o = (*outs)[e];
        o.least_need_mb = st == 0 ? need : std::max(o.least_need_mb, need);
      }
      start += part[st];
    }
    for (size_t e = 0; e < esdps.size(); ++e) {
      Outcome& o = (*outs)[e];
      double best = kInf;
      int vtp = -1;
      for (size_t j = 0; j < ks[e].size(); ++j) {
        const int k = ks[e][j];
        bool ok = true;
        for (int st = 0; st < pp; ++st) ok = ok && answers[st][e][j].remaining_mb != -1;
        if (!ok) continue;
        std::vector<Strategy> plan;
        for (int st = 0; st < pp; ++st)
          for (int idx : answers[st][e][j].plan) plan.push_back(ss[idx]);
        double c;
        PipelineCost pc;
        if (opt.use_pipeline_costmodel) {
          pc = pipeline_cost(ci, plan, part, chunks, bsz, min_tp, otime[e].no_sync[k], otime[e].optimizer[k]);
          c = pc.total_s;
        } else {
          c = 0;
          for (int st = 0; st < pp; ++st) c += answers[st][e][j].cost;
        }
        if (best > c) {
          best = c;
          vtp = k;
          o.plan = plan;
          o.pipe = pc;
          o.mem_remain.clear();
          o.mem_cost.clear();
          for (int st = 0; st < pp; ++st) {
            o.mem_remain.push_back(answers[st][e][j].remaining_mb);
            o.mem_cost.push_back(max_mem - answers[st][e][j].remaining_mb + mem_cache);
          }
        }
      }
      o.cost = best;
      o.vtp = vtp;
      if (vtp == -1) o.plan.clear();
    }
  }

  // search_for_chunk for one task and every (embed_sdp, sp_search); DpOnModel.fit picks the pipeline degree.
  void run_task(const Task& t, const std::vector<int>& esdps, const std::vector<int>& sp_space,
                std::vector<std::vector<Outcome>>* res) const {  // [e][sp index]
    res->assign(esdps.size(), std::vector<Outcome>(sp_space.size()));
    for (size_t spi = 0; spi < sp_space.size(); ++spi) {
      const int sp_search = sp_space[spi];
      if (sp_search == 1 && t.vsp == 1) continue;
      if (sp_search == 2 && t.vsp == 0) continue;
      std::vector<Strategy> st;
      for (const auto& s : strategies) {
        if (!(t.min_tp <= s.tp && t.max_tp >= s.tp)) continue;
        if (!(t.chunk <= t.bsz / (gpu / s.pp / t.min_tp))) continue;
        if (sp_search == 1 && s.sp == 1) continue;
        if (sp_search == 2 && s.sp == 0) continue;
        st.push_back(s);
      }
      if (st.empty()) continue;
      std::set<int> pps;
      for (const auto& s : st) pps.insert(s.pp);
      std::vector<int> pp_list;
      for (int pp : pps)
        if (pp * t.min_tp <= gpu && t.bsz % (gpu / pp / t.min_tp) == 0) pp_list.push_back(pp);
      if (pp_list.empty()) continue;
      std::map<int, int> mbsz;
      for (int pp : pp_list) mbsz[pp] = (t.bsz / (gpu / pp / t.min_tp) + t.chunk - 1) / t.chunk;
      std::vector<Strategy> st2;
      for (const auto& s : st) {
        if (!mbsz.count(s.pp)) continue;
        int m = mbsz[s.pp];
        if (t.chunk == (t.bsz / (gpu / s.pp / t.min_tp) + m - 1) / m) st2.push_back(s);
      }
      if (st2.empty()) continue;
      std::set<int> ppset;
      for (const auto& s : st2) ppset.insert(s.pp);
      // DpOnModel.fit
      std::vector<Outcome> best(esdps.size());
      for (size_t e = 0; e < esdps.size(); ++e) best[e].present = true;
      for (int pp : ppset) {
        if (pp * t.min_tp > gpu) continue;
        if (t.bsz % (gpu / (pp * t.min_tp))) continue;
        std::vector<Outcome> outs(esdps.size());
        build_dp(st2, pp, t.bsz, mbsz.count(pp) ? mbsz[pp] : 8, t.min_tp, t.max_tp, t.vsp, sp_search, esdps, &outs);
        for (size_t e = 0; e < esdps.size(); ++e) {
          best[e].least_need_mb = std::min(best[e].least_need_mb, outs[e].least_need_mb);
          if (best[e].cost > outs[e].cost) {
            double keep = best[e].least_need_mb;
            best[e] = outs[e];
            best[e].present = true;
            best[e].least_need_mb = keep;
          }
        }
      }
      for (size_t e = 0; e < esdps.size(); ++e) {
        best[e].throughput = best[e].cost < kInf ? t.bsz / best[e].cost : 0.0;
        (*res)[e][spi] = best[e];
      }
    }
  }
};

}  // namespace

CostInputs make_cost_inputs(const ModelProfile& model, const HardwareProfile& hw, const SearchOptions& opt) {
  CostInputs ci;
  ci.model = &model;
  ci.hw = &hw;
  ci.opt.mixed_precision = opt.mixed_precision != "fp32";
  ci.opt.async_grad_reduce = opt.async_grad_reduce;
  ci.opt.use_zero2_for_dp = opt.default_dp_type == "zero2";
  ci.opt.zero2_gathers_in_forward = opt.grad_reduce_dtype == "bf16";
  ci.opt.bf16_grad_messages = opt.grad_reduce_dtype == "bf16";
  ci.opt.disable_vtp = opt.disable_vtp != 0;
  ci.opt.sequence_parallel = opt.sequence_parallel;
  ci.opt.sp_space = opt.sp_space == "tp+sp" ? SpSpace::kTpSp : (opt.sp_space == "sp" ? SpSpace::kSp : SpSpace::kTp);
  ci.opt.pipeline_type = opt.pipeline_type == "pipedream_flush" ? PipelineType::kPipedreamFlush : PipelineType::kGpipe;
  ci.opt.costmodel_coe = opt.costmodel_coe;
  return ci;
}

Expected<SearchResult> search(const ModelProfile& model, const HardwareProfile& hw, const SearchOptions& in) {
  if (model.layer_types.empty()) return invalid_argument("the model profile has no layer types");
  if (hw.world_size != in.world_size()) {
    return invalid_argument("the hardware profile is for " + std::to_string(hw.world_size) + " GPUs but the search is for " +
                            std::to_string(in.world_size()));
  }
  if (in.sp_space == "sp") return unsupported("--sp-space sp is not supported (nor is it by Galvatron v2.4.0)");
  if (in.pipeline_type != "gpipe" && in.pipeline_type != "pipedream_flush")
    return invalid_argument("--pipeline-type must be gpipe or pipedream_flush");
  if (in.default_dp_type != "ddp" && in.default_dp_type != "zero2")
    return invalid_argument("--default-dp-type must be ddp or zero2");
  if (in.mixed_precision != "fp32" && in.mixed_precision != "fp16" && in.mixed_precision != "bf16")
    return invalid_argument("--mixed-precision must be fp32, fp16 or bf16");
  if (in.grad_reduce_dtype != "fp32" && in.grad_reduce_dtype != "bf16")
    return invalid_argument("--grad-reduce-dtype must be fp32 or bf16");
  if (model.layer_types.size() > 1)
    return unsupported("models with several layer types (memory-balanced pipeline division) are not supported yet");
  GV_ASSIGN_OR_RETURN(StrategySpace space, generate_strategies(in, model.total_layers()));
  Engine eng{model, hw, space.effective, {}, space.strategies, 8, 0, 0, {}, 0, 0};
  const SearchOptions& opt = eng.opt;
  eng.ci = make_cost_inputs(model, hw, opt);
  eng.gpu = opt.world_size();
  for (const auto& l : model.layer_types) {
    eng.layernum.push_back(l.layer_num);
    eng.max_seq = std::max(eng.max_seq, l.seq_length);
  }
  eng.total_layers = model.total_layers();
  for (const auto& l : model.layer_types) {
    if (l.layer_num <= 0) return invalid_argument("the model has a layer type with no layers");
    for (const auto& s : space.strategies) {
      if (!s.is_cpt() && !l.act_per_sample_mb.count(s.tp)) {
        return corrupt("the memory profile has no activation size for TP degree " + std::to_string(s.tp) +
                       " (lower --max-tp-deg or profile that degree)");
      }
    }
  }
  const int budget = static_cast<int>(opt.memory_constraint_gb * 1024);
  if (budget <= 0) return invalid_argument("--memory-constraint must be > 0");
  eng.max_mem = budget;
  if (budget / 1024 > 20) {
    eng.mem_cache = static_cast<int>(budget * 0.2);
    eng.max_mem -= eng.mem_cache;
  }

  std::vector<int> bszs;
  if (opt.settle_bsz > 0) {
    bszs = {opt.settle_bsz};
  } else {
    if (opt.bsz_scale <= 0) return invalid_argument("--bsz-scale must be > 0");
    int scale = opt.bsz_scale;
    int mn = std::max(opt.min_bsz, scale) / scale * scale;
    int mx = opt.max_bsz % scale ? static_cast<int>(std::ceil(static_cast<double>(opt.max_bsz) / scale) * scale)
                                 : opt.max_bsz + scale;
    for (int b = mn; b < mx; b += scale) bszs.push_back(b);
    if (bszs.empty()) return invalid_argument("no batch size in [--min-bsz, --max-bsz] with step --bsz-scale");
  }
  std::vector<int> min_tps;
  for (int i = 1; i <= eng.gpu && i <= opt.max_tp_deg; i *= 2) min_tps.push_back(i);
  if (opt.disable_vtp) min_tps = {1};
  std::vector<int> max_tps, sp_space;
  if (!opt.global_memory_buffer) {
    max_tps = {opt.max_tp_deg};
    sp_space = {1, 3};
  } else {
    max_tps = min_tps;
    sp_space = {1, 2, 3};
  }
  std::vector<int> vsps;
  if (opt.sp_space == "tp+sp") vsps = {0, 1};
  else {
    vsps = {0};
    sp_space = {1};
  }
  std::vector<int> esdps = opt.disable_sdp ? std::vector<int>{0} : std::vector<int>{0, 1};

  std::vector<Task> tasks;
  for (int b : bszs) {
    std::vector<int> cl;
    if (opt.settle_chunk != -1) cl = {opt.settle_chunk};
    else
      for (int c = 1; c <= b; ++c) cl.push_back(c);
    for (int c : cl) {
      if (c <= 0 || b % c != 0) continue;
      for (int mn : min_tps)
        for (int mx : max_tps) {
          if (mn > mx) continue;
          for (int v : vsps) tasks.push_back({b, c, mn, mx, v});
        }
    }
  }
  std::vector<std::vector<std::vector<Outcome>>> results(tasks.size());
  const int nthreads = opt.threads > 0 ? opt.threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (long i = 0; i < static_cast<long>(tasks.size()); ++i) eng.run_task(tasks[i], esdps, sp_space, &results[i]);

  SearchResult r;
  r.effective = opt;
  r.num_candidate_strategies = static_cast<int>(space.strategies.size());
  r.tasks = static_cast<int>(tasks.size());
  double max_tp_put = -1;
  const Outcome* best = nullptr;
  const Task* best_task = nullptr;
  int best_e = 0;
  double least = kInf;
  for (size_t i = 0; i < tasks.size(); ++i)
    for (size_t e = 0; e < esdps.size(); ++e)
      for (size_t s = 0; s < sp_space.size(); ++s) {
        const Outcome& o = results[i][e][s];
        if (!o.present) continue;
        least = std::min(least, o.least_need_mb);
        if (o.throughput > max_tp_put) {
          max_tp_put = o.throughput;
          best = &o;
          best_task = &tasks[i];
          best_e = esdps[e];
        }
      }
  if (!best || !(max_tp_put > 0) || best->plan.empty()) {
    r.feasible = false;
    if (least < kInf) {
      // budget B with B - reserve(B) >= need, the reserve being 20% above 20 GB
      double b = least;
      if (std::floor(b / 1024) > 20 || std::floor(b / 0.8 / 1024) > 20) b = std::max(b / 0.8, 21.0 * 1024);
      r.least_memory_gb = std::ceil(b / 1024);
    }
    return r;
  }
  r.feasible = true;
  r.throughput = best->throughput;
  r.cost_s = best->cost;
  r.bsz = best_task->bsz;
  r.chunks = best_task->chunk;
  r.pp_deg = best->pp;
  r.vtp = best->vtp;
  r.vsp = best_task->vsp;
  r.embed_sdp = best_e;
  r.min_tp = best_task->min_tp;
  r.max_tp = best_task->max_tp;
  r.pp_division = best->partition;
  r.layers = best->plan;
  r.reduce_s = best->pipe.reduce_s;
  r.micro_batches = best->pipe.micro_batches;
  int first = 0;
  for (int st = 0; st < r.pp_deg; ++st) {
    StagePlan sp;
    sp.first_layer = first;
    sp.num_layers = r.pp_division[st];
    sp.memory_mb = st < static_cast<int>(best->mem_cost.size()) ? best->mem_cost[st] : 0;
    sp.memory_remain_mb = st < static_cast<int>(best->mem_remain.size()) ? best->mem_remain[st] : 0;
    if (st < static_cast<int>(best->pipe.stage_compute_s.size())) {
      sp.compute_s = best->pipe.stage_compute_s[st];
      sp.with_sync_s = best->pipe.stage_full_s[st];
    }
    first += sp.num_layers;
    r.stages.push_back(sp);
  }
  return r;
}

}  // namespace gv::partitioner

// Galvatron v2.4.0 cost model, formula for formula (core/search_engine/cost_model.py). The order of floating-point
// operations follows the Python so that ties in the search break the same way.
#include "partitioner/cost_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace gv::partitioner {
namespace {

double coe_or(const std::map<std::string, double>& m, const std::string& a, const std::string& b) {
  auto it = m.find(a);
  if (it != m.end()) return it->second;
  it = m.find(b);
  if (it != m.end()) return it->second;
  return std::numeric_limits<double>::quiet_NaN();  // the caller's profile lacks the group: surfaces as NaN cost
}
double coe_at(const std::map<std::string, double>& m, const std::string& a) {
  auto it = m.find(a);
  return it == m.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
}
std::string d(int x) { return std::to_string(x); }

template <typename M>
double at_or_nan(const M& m, int k) {
  auto it = m.find(k);
  return it == m.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
}

}  // namespace

double zero2_ratio(double dd, int chunks, bool async, bool mp) {
  if (chunks == 1) return mp ? 7.0 / 8 * (1 / dd + 0.003) + 1.0 / 8 : 3.0 / 4 * (1 / dd + 0.003) + 1.0 / 4;
  if (async) return mp ? 6.0 / 8 * (1 / dd + 0.003) + 2.0 / 8 : 2.0 / 4 * (1 / dd + 0.003) + 2.0 / 4;
  return mp ? (7.0 / 8 * (1 / dd + 0.003) + 1.0 / 8) * 5 / 4 : 3.0 / 4 * (1 / dd + 0.003) + 1.0 / 4;
}

double zero3_ratio(double dd, int chunks, bool async, bool mp) {
  if (chunks == 1) return 1 / dd + 0.003;
  if (async) return mp ? 7.0 / 8 * (1 / dd + 0.003) + 1.0 / 8 : 3.0 / 4 * (1 / dd + 0.003) + 1.0 / 4;
  return (1 / dd + 0.003) * 5 / 4;
}

std::vector<int> chunk_like_torch(int size, int chunks) {
  std::vector<int> out;
  if (chunks <= 0) return out;
  int cs = (size + chunks - 1) / chunks;
  for (int i = 0; i < chunks; ++i) {
    int start = i * cs;
    if (start >= size) break;
    out.push_back(std::min(start + cs, size) - start);
  }
  return out;
}

int real_chunks(int local_bsz, int chunks) {
  if (chunks == 1) return 1;
  return static_cast<int>(chunk_like_torch(local_bsz, chunks).size());
}

LayerMemory layer_memory(const CostInputs& in, int lt_idx, const Strategy& s, int gbsz, int mbsz, int min_tp,
                         int max_tp, int stage_idx, bool vsp, bool vocab_sdp) {
  const TrainOptions& o = in.opt;
  const LayerTypeProfile& lt = in.model->layer_types[lt_idx];
  LayerMemory r;
  const int pp = s.pp, tp = s.tp, dp = s.dp;
  const int sdp = s.is_sp() ? tp * dp : dp;
  // optimal_chunk_func_default(gbsz // dp, strategy, mbsz, min_tp)
  int local = (gbsz / dp) / (tp / min_tp);
  double ch = std::ceil(static_cast<double>(local) / mbsz);
  if (ch == 0) ch = 1;
  int max_chunks = gbsz / (tp * dp / min_tp);
  if (max_chunks == 0) max_chunks = 1;
  const int chunks = static_cast<int>(ch > max_chunks ? max_chunks : ch);
  r.chunks = chunks;
  auto z2 = [&](double x) { return zero2_ratio(x, chunks, o.async_grad_reduce, o.mixed_precision); };
  auto z3 = [&](double x) { return zero3_ratio(x, chunks, o.async_grad_reduce, o.mixed_precision); };

  double bsz = static_cast<double>(gbsz) / dp;
  std::vector<int> mbs = chunk_like_torch(static_cast<int>(static_cast<double>(gbsz) / dp / (tp / min_tp)), chunks);
  if ((o.pipeline_type == PipelineType::kPipedreamFlush && pp > 1) || pp == 1) {
    int end = (pp - stage_idx <= chunks) ? pp - stage_idx : chunks;
    double num = 0, den = 0;
    for (size_t i = 0; i < mbs.size(); ++i) {
      den += mbs[i];
      if (static_cast<int>(i) < end) num += mbs[i];
    }
    bsz = (num / den) * bsz;
  }
  // GPipe with pp > 1 keeps every micro-batch's activations until its backward pass starts (this runtime's schedule,
  // partitioner/rank_program.cpp pipeline_schedule; Galvatron-Hetu counts `chunks` in flight too): the whole local
  // batch. Galvatron v2.4.0 counts one micro-batch (b_act = mb[0]), which under-predicts GPipe's activations by up to
  // `chunks` times and let the search pick plans that run out of memory.

  r.parameter = s.is_sp() ? lt.parameter_size_mb : lt.parameter_size_mb / tp;
  r.model_states = 4 * r.parameter;
  if (s.fsdp == 1) r.model_states *= z3(sdp);
  else if (s.fsdp == 0 && o.use_zero2_for_dp) r.model_states *= z2(sdp);
  if (s.is_cpt()) {
    r.activation = lt.act_checkpoint_mb * bsz;
    if (o.sequence_parallel) r.activation /= tp;
  } else {
    r.activation = at_or_nan(lt.act_per_sample_mb, tp) * bsz;
  }
  r.enc_total = r.model_states + r.activation;

  // Other (embedding + LM head) memory per vocab-TP degree.
  std::vector<int> vtps;
  if (o.disable_vtp) {
    vtps = {1};
  } else {
    const int gpu = pp * tp * dp;
    for (int i = min_tp; i * pp <= gpu && i <= max_tp; i *= 2) vtps.push_back(i);
  }
  const ModelProfile& m = *in.model;
  for (int k : vtps) {
    if (!m.pp_off.model_states_mb.count(k) || !m.pp_on_first.model_states_mb.count(k) ||
        !m.pp_on_last.model_states_mb.count(k))
      continue;
    std::vector<double> cost(pp, 0.0);
    double ob = static_cast<double>(gbsz) * k / tp / dp;
    ob /= chunks;
    int model_tp;
    double ratio;
    if (vsp) {
      model_tp = 1;
      ratio = vocab_sdp ? z3(tp * dp) : (o.use_zero2_for_dp ? z2(tp * dp) : 1.0);
    } else {
      model_tp = k;
      ratio = vocab_sdp ? z3(tp * dp / k) : (o.use_zero2_for_dp ? z2(tp * dp / k) : 1.0);
    }
    if (pp == 1) {
      cost[0] += at_or_nan(m.pp_off.model_states_mb, model_tp) * ratio + at_or_nan(m.pp_off.activation_mb, k) * ob;
    } else {
      // In flight: pp micro-batches on the first stage and one on the last under 1F1B (Galvatron's rule), every
      // micro-batch on both under GPipe (as the layers' activations above).
      const bool f1b = o.pipeline_type == PipelineType::kPipedreamFlush;
      const double ob_first = f1b ? ob * pp : ob * chunks;
      const double ob_last = f1b ? ob : ob * chunks;
      cost[0] += at_or_nan(m.pp_on_first.model_states_mb, model_tp) * ratio +
                 at_or_nan(m.pp_on_first.activation_mb, k) * ob_first;
      cost[pp - 1] += at_or_nan(m.pp_on_last.model_states_mb, model_tp) * ratio +
                      at_or_nan(m.pp_on_last.activation_mb, k) * ob_last;
    }
    for (double& c : cost) c += o.pytorch_context_mem;
    r.other[k] = std::move(cost);
  }
  return r;
}

static double sp_table_time(const HardwareProfile& hw, bool all2all, int g, double bytes) {
  const auto& tab = all2all ? hw.sp_all2all : hw.sp_allreduce;
  auto it = tab.find(g);
  if (it == tab.end()) return std::numeric_limits<double>::quiet_NaN();
  if (bytes == std::floor(bytes)) {
    auto jt = it->second.ms_by_bytes.find(static_cast<int64_t>(bytes));
    if (jt != it->second.ms_by_bytes.end()) return jt->second;
  }
  return it->second.m * (1.0 / 1024 / 1024 * bytes) + it->second.c;
}

LayerTime layer_time(const CostInputs& in, int lt_idx, const Strategy& s, double gbsz, bool no_comm) {
  const TrainOptions& o = in.opt;
  const HardwareProfile& hw = *in.hw;
  const LayerTypeProfile& lt = in.model->layer_types[lt_idx];
  const auto& coe = hw.allreduce_coe;
  LayerTime r;
  const int pp = s.pp, tp = s.tp, dp = s.dp;
  const bool sp = s.is_sp();
  const int sdp = sp ? tp * dp : dp;
  const double L = lt.layer_num, seq = lt.seq_length, hidden = lt.hidden_size;
  const double bsz = gbsz / dp;
  const double param = sp ? lt.parameter_size_mb : lt.parameter_size_mb / tp;

  if (lt.forward.linear) r.fct = (lt.forward.m * (bsz / tp) + lt.forward.c) * L;
  else r.fct = lt.forward.t * bsz / tp * L;
  // galvatron's extension: the layer timed as one rank of a TP group computes it (profile keys tp{k}_...).
  if (!sp && tp > 1) {
    auto it = lt.forward_tp.find(tp);
    if (it != lt.forward_tp.end()) r.fct = it->second.at(bsz) * L;
  }
  r.bct = r.fct * o.bct_fct_coe;
  if (s.is_cpt()) r.bct += r.fct;

  double dp_msg = (2.0 * (dp - 1) / dp * param) * L;
  if (o.mixed_precision) dp_msg /= 2;
  const double fsdp_msg = dp_msg * 0.5;
  // bf16 gradient reduction: DDP's all-reduces and ZeRO-2's reduce-scatters and gathers (the runtime's ZeRO-3 stays
  // float32).
  if (o.bf16_grad_messages && !o.mixed_precision && !s.is_fsdp()) dp_msg /= 2;
  if (no_comm) dp_msg = 0;
  // galvatron's extension, for profiles of this runtime (they carry optimizer_ms_per_param_mb): its ZeRO-2
  // reduce-scatters the gradients during the backward pass (half the all-reduce's volume, overlapped like it) and
  // gathers the updated parameters after the sharded update (the other half, below), or in bf16 during the next
  // forward pass (zero2_gathers_in_forward). The gathers run beside the
  // updates, but both are bound by memory bandwidth: measured on 4 H200 (gpt-1.5b), the sharded AdamW took 8-9 ms per
  // step beside the gathers against 3.6 ms alone, so the two are added, not overlapped.
  const bool runtime_zero2 =
      in.model->optimizer_ms_per_param_mb > 0 && s.fsdp != 1 && o.use_zero2_for_dp && sdp > 1 && !no_comm;
  const double gather_msg = runtime_zero2 ? dp_msg * 0.5 : 0;
  dp_msg -= gather_msg;
  double dc;
  if (sp) dc = coe_or(coe, d(sdp), d(sdp) + "_1");
  else if (tp == 1 || dp == 1) dc = coe_or(coe, d(dp), d(dp) + "_1");
  else dc = s.tp_consec == 1 ? coe_at(coe, d(dp) + "_0") : coe_at(coe, d(dp) + "_1");
  const double dc_ov = dc * hw.overlap_coe;
  r.dc = dc;
  r.dp_message_mb = dp_msg;

  if (o.sp_space == SpSpace::kTpSp) {
    double num = 4 * L;
    if (s.is_cpt()) num *= 1.5;
    double per = 0;
    if (tp != 1) per = sp_table_time(hw, sp, tp, bsz * seq * hidden * (o.mixed_precision ? 2 : 4));
    r.tp_time = num * per;
  } else {
    double msg = 2.0 * (tp - 1) / tp * (bsz * seq * hidden * 4 * 4 / 1024 / 1024) * L;
    if (s.is_cpt()) msg *= 1.5;
    if (o.mixed_precision) msg /= 2;
    double tc;
    if (tp == 1 || dp == 1) tc = coe_or(coe, d(tp), d(tp) + "_1");
    else tc = s.tp_consec == 1 ? coe_at(coe, d(tp) + "_1") : coe_at(coe, d(tp) + "_0");
    r.tp_time = msg * tc;
  }

  const double ov = hw.overlap_coe;
  auto overlap = [&](double dpm, double bct) {
    double dpo = dpm * dc_ov, bo = bct * ov;
    if (dpo > bo) return bo + (dpm - bo / dc_ov) * dc;
    if (dpo < bo) return dpo + (bct - dpo / ov);
    return bo + 0.0;
  };
  // ZeRO-2 in bf16: the gathers overlap the forward pass as the reduce-scatters overlap the backward pass; the
  // forward's time then counts both (and the gather adds nothing after the update).
  const bool gathers_in_forward = runtime_zero2 && o.zero2_gathers_in_forward;
  const double fct = gathers_in_forward ? overlap(gather_msg, r.fct) : r.fct;
  double result;
  if (tp == 1 && dp > 1) {
    result = fct + overlap(dp_msg, r.bct) + o.extra_overhead;
  } else if (dp == 1 && tp > 1) {
    result = fct + r.bct + r.tp_time;
  } else if (dp == 1 && tp == 1) {
    result = fct + r.bct;
  } else if (tp < tp * dp / 2) {
    result = fct + overlap(dp_msg, r.bct) + r.tp_time + o.extra_overhead;
  } else {
    result = fct + 0.5 * r.bct + overlap(dp_msg, r.bct * 1 / 2) + r.tp_time + o.extra_overhead;
  }
  if (s.is_fsdp()) {
    r.fsdp_time = fsdp_msg * dc;
    result = result + r.fsdp_time * 1;
  }
  // galvatron's extension: the optimizer step over the parameters this GPU updates (sharded over the data-parallel
  // group under ZeRO-2 / ZeRO-3), once per iteration like the gradient sync (so not in the no_comm time).
  if (!no_comm && in.model->optimizer_ms_per_param_mb > 0) {
    const bool sharded = s.is_fsdp() || (o.use_zero2_for_dp && sdp > 1);
    r.optimizer_time = in.model->optimizer_ms_per_param_mb * param / (sharded ? sdp : 1) * L;
    r.gather_time = gathers_in_forward ? fct - r.fct : gather_msg * dc;
    result += r.optimizer_time + (gathers_in_forward ? 0.0 : r.gather_time);
  }
  if (pp > 1) {
    auto it = hw.p2p_coe.find(pp);
    double pcoe = it == hw.p2p_coe.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
    double pmsg = pp * 2 * bsz * seq * hidden * 4 / 1024 / 1024;
    if (o.mixed_precision) pmsg = pmsg / 2;
    r.p2p_time = pmsg * pcoe;
    result = result + r.p2p_time;
  }
  result = result * (0.001 * o.costmodel_coe);
  r.total_s = result / L;
  return r;
}

OtherTime other_time(const CostInputs& in, int mbsz, int pp, int world, bool vsp, bool vocab_sdp, int min_tp,
                     int max_tp) {
  const TrainOptions& o = in.opt;
  const HardwareProfile& hw = *in.hw;
  const ModelProfile& m = *in.model;
  const auto& coe = hw.allreduce_coe;
  const double hidden = m.layer_types[0].hidden_size;
  const double ov = hw.overlap_coe;
  const double ff = vocab_sdp ? 0.5 : 0.0, bf = vocab_sdp ? 1.0 : 0.5;
  OtherTime r;
  for (int k = min_tp; k <= max_tp && world / pp >= k; k *= 2) {
    // TP time of the embedding activations.
    std::vector<double> times;
    for (const auto& l : m.layer_types) {
      const double seq = l.seq_length;
      if (!vsp) {
        if (o.sp_space == SpSpace::kTpSp) {
          double msg = mbsz * seq * hidden * (o.mixed_precision ? 2 : 4);
          if (k == 1) times.push_back(0);
          else {
            auto it = hw.sp_allreduce.find(k);
            times.push_back(it == hw.sp_allreduce.end() ? std::numeric_limits<double>::quiet_NaN()
                                                        : it->second.m * (1.0 / 1024 / 1024 * msg) + it->second.c);
          }
        } else {
          int dps = world / pp / k;
          double tc = (k == 1 || dps == 1) ? coe_or(coe, d(k), d(k) + "_1") : coe_at(coe, d(k) + "_0");
          double msg = (k - 1.0) / k * (mbsz * seq * hidden / 1024 / 1024) * (o.mixed_precision ? 2 : 4);
          times.push_back(msg * tc);
        }
      } else {
        times.push_back(0);
      }
    }
    double tp_first, tp_last;
    if (pp == 1) {
      double sum = 0;
      for (double t : times) sum += t;
      tp_first = tp_last = sum + times.back();
    } else {
      tp_first = times.front();
      tp_last = times.back();
    }
    // Compute.
    double x = static_cast<double>(mbsz) / min_tp;
    double fct_all = m.other_forward.linear ? m.other_forward.m * x + m.other_forward.c : x * m.other_forward.t;
    double f0 = pp == 1 ? fct_all : fct_all / 2, f1 = f0;
    // DP sync of the embedding parameters.
    double dp_coe, ds0, ds1;
    if (!vsp) {
      int dps = world / pp / k;
      dp_coe = (k == 1 || dps == 1) ? coe_or(coe, d(dps), d(dps) + "_1") : coe_at(coe, d(dps) + "_0");
      dp_coe *= (dps - 1.0) / dps;
    } else {
      int dps = world / pp;
      dp_coe = coe_or(coe, d(dps), d(dps) + "_1");
      dp_coe *= (dps - 1.0) / dps;
    }
    if (pp == 1) {
      ds0 = ds1 = (vsp ? at_or_nan(m.pp_off.model_states_mb, 1) : at_or_nan(m.pp_off.model_states_mb, k)) / 4;
    } else {
      ds0 = ds1 = vsp ? at_or_nan(m.pp_on_last.model_states_mb, 1) / 4 : at_or_nan(m.pp_on_first.model_states_mb, k) / 4;
    }
    auto ot = [&](double fc, double fp, double bc, double bp, double tpt) {
      fp = fp * ov;
      bp = bp * ov;
      double ft = fp > fc ? fc + (fp - fc) / ov : fc;
      double bt = bp > bc ? bc + (bp - bc) / ov : bc;
      return ft + bt + tpt;
    };
    std::vector<double> w(pp, 0.0), n(pp, 0.0);
    // galvatron's extension: the optimizer step over the embedding / head parameters (ds0, ds1: MB at this vocab TP),
    // sharded under vocab ZeRO-3 or ZeRO-2; with the sync, once per iteration.
    const int shard = vocab_sdp || o.use_zero2_for_dp ? (vsp ? world / pp : world / pp / k) : 1;
    const double opt0 = m.optimizer_ms_per_param_mb * ds0 / shard, opt1 = m.optimizer_ms_per_param_mb * ds1 / shard;
    w[0] = 0.001 * (ot(ds0 * dp_coe * ff, f0, ds0 * dp_coe * bf, f0 * o.bct_fct_coe, tp_first) + opt0);
    n[0] = 0.001 * ot(ds0 * dp_coe * ff, f0, ds0 * dp_coe * (bf - 0.5), f0 * o.bct_fct_coe, tp_first);
    if (pp > 1) {
      w[pp - 1] = 0.001 * (ot(ds1 * dp_coe * ff, f1, ds1 * dp_coe * bf, f1 * o.bct_fct_coe, tp_last) + opt1);
      n[pp - 1] = 0.001 * ot(ds1 * dp_coe * ff, f1, ds1 * dp_coe * (bf - 0.5), f1 * o.bct_fct_coe, tp_last);
    }
    std::vector<double> opt(pp, 0.0);
    opt[0] = 0.001 * opt0;
    if (pp > 1) opt[pp - 1] = 0.001 * opt1;
    r.optimizer[k] = std::move(opt);
    r.with_sync[k] = std::move(w);
    r.no_sync[k] = std::move(n);
  }
  return r;
}

PipelineCost pipeline_cost(const CostInputs& in, const std::vector<Strategy>& plan, const std::vector<int>& partition,
                           const std::vector<double>& chunks_per_type, int bsz, int min_tp,
                           const std::vector<double>& other_no_sync,
                           const std::vector<double>& other_optimizer) {
  PipelineCost r;
  const ModelProfile& m = *in.model;
  std::vector<int> type_of;
  for (size_t t = 0; t < m.layer_types.size(); ++t)
    for (int i = 0; i < m.layer_types[t].layer_num; ++i) type_of.push_back(static_cast<int>(t));
  if (plan.empty() || plan.size() != type_of.size()) {
    r.total_s = std::numeric_limits<double>::infinity();
    return r;
  }
  const int local = static_cast<int>(static_cast<double>(bsz) / (plan[0].tp * plan[0].dp / min_tp));
  std::vector<double> bsz_chunked;
  int max_chunk = 0;
  for (double c : chunks_per_type) {
    int rc = real_chunks(local, static_cast<int>(c));
    bsz_chunked.push_back(static_cast<double>(bsz) / rc);
    max_chunk = std::max(max_chunk, rc);
  }
  r.micro_batches = max_chunk;
  const int pp = static_cast<int>(partition.size());
  std::vector<double> full(plan.size()), comp(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    Strategy c = canonical_strategy(plan[i]);
    full[i] = layer_time(in, type_of[i], c, bsz_chunked[type_of[i]], false).total_s;
    comp[i] = layer_time(in, type_of[i], c, bsz_chunked[type_of[i]], true).total_s;
  }
  std::vector<double> sf(pp, 0), sc(pp, 0);
  size_t start = 0;
  for (int st = 0; st < pp; ++st) {
    for (int j = 0; j < partition[st]; ++j) {
      sf[st] += full[start + j];
      sc[st] += comp[start + j];
    }
    start += partition[st];
  }
  for (int i = 0; i < pp && i < static_cast<int>(other_no_sync.size()); ++i) sc[i] += other_no_sync[i];
  for (int i = 0; i < pp && i < static_cast<int>(other_optimizer.size()); ++i) sf[i] += other_optimizer[i];
  double sum_c = 0, sum_rest = 0;
  for (int i = 0; i < pp; ++i) sum_c += sc[i];
  for (int i = 1; i < pp; ++i) sum_rest += sc[i];
  double result = sum_c + sc[pp - 1] * (max_chunk - 1);
  const double warm = std::min(pp - 1, max_chunk - 1);
  result = std::max(result, std::max(warm * sc[0] * 1 / 3, sum_rest * 1 / 3) +
                                std::max(warm * sc[0] * 2 / 3, sum_rest * 2 / 3) +
                                sc[0] * std::max(0, max_chunk + 1 - pp));
  double reduce = -std::numeric_limits<double>::infinity();
  double pref = 0;
  for (int i = 0; i < pp; ++i) {
    pref += sc[i];
    reduce = std::max(reduce, sf[i] - pref);
  }
  if (!(reduce > 0)) reduce = 0;
  r.reduce_s = reduce;
  r.total_s = result + reduce;
  r.stage_compute_s = sc;
  r.stage_full_s = sf;
  return r;
}

}  // namespace gv::partitioner

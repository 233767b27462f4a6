// The search space of Galvatron v2.4.0 (search_engine.py generate_strategies / generate_dp_tp_pp_sdp): every
// [pp, tp, dp, flags] with pp * tp * dp = world size, the presets dp+tp, dp+pp, 3d, dp, sdp, tp, pp, the disable_*
// filters, checkpointing duplicates and the Ulysses variants of sp_space tp+sp.
#include <string>

#include "partitioner/search.h"

namespace gv::partitioner {
namespace {

Strategy mk(int pp, int tp, int dp, int tpc, int fsdp) {
  Strategy s;
  s.pp = pp;
  s.tp = tp;
  s.dp = dp;
  s.tp_consec = tpc;
  s.fsdp = fsdp;
  return s;
}

}  // namespace

Expected<StrategySpace> generate_strategies(const SearchOptions& in, int total_layers) {
  (void)total_layers;
  StrategySpace out;
  SearchOptions a = in;
  const int gpu = a.world_size();
  if (gpu < 1 || (gpu & (gpu - 1)) != 0) {
    return invalid_argument("the world size (--num-nodes x --num-gpus-per-node = " + std::to_string(gpu) +
                            ") must be a power of 2");
  }
  if (a.max_tp_deg < 1 || a.max_pp_deg < 1) return invalid_argument("--max-tp-deg and --max-pp-deg must be >= 1");
  std::vector<int> total;
  for (int i = 1; i <= gpu; i *= 2) total.push_back(i);
  std::vector<Strategy> st;
  const std::string& sp = a.search_space;
  if (sp == "full") {
    for (int pp : total)
      for (int tp : total) {
        if (pp * tp > gpu) continue;
        int dp = gpu / (pp * tp);
        if (tp == 1 || tp == gpu / pp) {
          if (dp == 1) st.push_back(mk(pp, tp, dp, -1, -1));
          else {
            st.push_back(mk(pp, tp, dp, -1, 0));
            st.push_back(mk(pp, tp, dp, -1, 1));
          }
        } else {
          st.push_back(mk(pp, tp, dp, 0, 0));
          st.push_back(mk(pp, tp, dp, 0, 1));
          st.push_back(mk(pp, tp, dp, 1, 0));
          st.push_back(mk(pp, tp, dp, 1, 1));
        }
      }
  } else if (sp == "dp+tp" || sp == "dp+pp") {
    for (int x : total) {
      int pp = sp == "dp+tp" ? 1 : x, tp = sp == "dp+tp" ? x : 1;
      if (pp * tp > gpu) continue;
      int dp = gpu / (pp * tp);
      if (tp == 1 || tp == gpu / pp) {
        st.push_back(dp == 1 ? mk(pp, tp, dp, -1, -1) : mk(pp, tp, dp, -1, 0));
      } else {
        st.push_back(mk(pp, tp, dp, 0, 0));
        st.push_back(mk(pp, tp, dp, 1, 0));
      }
    }
  } else if (sp == "3d") {
    if (gpu < 4) return invalid_argument("--search-space 3d needs at least 4 GPUs");
    st.push_back(mk(2, 2, gpu / 4, 1, 0));
  } else if (sp == "dp") {
    st.push_back(mk(1, 1, gpu, -1, 0));
  } else if (sp == "sdp") {
    st.push_back(mk(1, 1, gpu, -1, 1));
  } else if (sp == "tp") {
    if (a.max_tp_deg > gpu) return invalid_argument("--search-space tp needs --max-tp-deg <= the world size");
    Strategy s = mk(1, a.max_tp_deg, gpu / a.max_tp_deg, -1, 0);
    if (s.dp > 1) s.tp_consec = 1;
    st.push_back(s);
  } else if (sp == "pp") {
    if (a.max_pp_deg > gpu) return invalid_argument("--search-space pp needs --max-pp-deg <= the world size");
    st.push_back(mk(a.max_pp_deg, 1, gpu / a.max_pp_deg, -1, 0));
  } else {
    return invalid_argument("--search-space '" + sp + "' is not one of full, dp+tp, dp+pp, 3d, dp, sdp, tp, pp");
  }

  if (a.sp_space == "tp") {
    for (auto& s : st)
      if (s.tp > 1) s.sp = 0;
  } else if (a.sp_space == "sp") {
    for (auto& s : st)
      if (s.tp > 1) s.sp = 1;
  } else if (a.sp_space == "tp+sp") {
    std::vector<Strategy> ns;
    for (auto s : st) {
      if (s.tp > 1) {
        s.sp = 0;
        ns.push_back(s);
        s.sp = 1;
        ns.push_back(s);
        if (s.dp == 1) {
          s.fsdp = 1;
          ns.push_back(s);
        }
      } else {
        ns.push_back(s);
      }
    }
    st = ns;
  } else {
    return invalid_argument("--sp-space '" + a.sp_space + "' is not one of tp, tp+sp, sp");
  }

  if (sp == "dp+tp") {
    a.disable_sdp = 1;
    a.disable_pp = 1;
  } else if (sp == "dp+pp") {
    a.disable_sdp = 1;
    a.disable_tp = 1;
  } else if (sp == "3d") {
    a.disable_sdp = 1;
  }
  if (sp == "3d" || sp == "dp" || sp == "tp" || sp == "pp" || sp == "sdp") {
    a.disable_ckpt = 1;
    out.strategies = st;
    out.effective = a;
    return out;
  }
  if (a.disable_sdp && a.disable_dp) return invalid_argument("--disable-dp and --disable-sdp cannot both be set");
  std::vector<Strategy> f;
  for (const auto& s : st) {
    if (a.disable_dp && s.dp > 1 && s.fsdp == 0) continue;
    if (a.disable_sdp && s.dp > 1 && s.fsdp == 1) continue;
    if (a.disable_tp && s.tp > 1) continue;
    if (a.disable_pp && s.pp > 1) continue;
    if (a.disable_tp_consec && s.tp_consec == 0) continue;
    if (s.tp > a.max_tp_deg) continue;
    if (s.pp > a.max_pp_deg) continue;
    f.push_back(s);
  }
  if (!a.disable_ckpt) {
    const size_t n = f.size();
    for (size_t i = 0; i < n; ++i) {
      Strategy c = f[i];
      c.cpt = 1;
      f.push_back(c);
    }
  }
  out.strategies = f;
  out.effective = a;
  return out;
}

}  // namespace gv::partitioner

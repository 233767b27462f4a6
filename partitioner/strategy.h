// One layer's parallel strategy as Galvatron v2.4.0 represents it: [pp, tp, dp, {flags}], where each flag may be
// absent (Galvatron compares flag dictionaries key by key, so absence matters for tie-breaking).
#pragma once
#include <string>
#include <vector>

namespace gv::partitioner {

struct Strategy {
  int pp = 1, tp = 1, dp = 1;
  int tp_consec = -1;  // 'tp' key: 1 = TP group on consecutive ranks, 0 = DP group consecutive; -1 = absent
  int fsdp = -1;       // 'fsdp' key: 1 = ZeRO-3 ("sdp"), 0 = default DP type; -1 = absent
  int cpt = -1;        // 'cpt' key: activation checkpointing
  int sp = -1;         // 'sp' key: 1 = Ulysses sequence parallel instead of Megatron TP

  bool is_fsdp() const { return fsdp == 1; }
  bool is_cpt() const { return cpt == 1; }
  bool is_sp() const { return sp == 1; }
  bool operator==(const Strategy& o) const {
    return pp == o.pp && tp == o.tp && dp == o.dp && tp_consec == o.tp_consec && fsdp == o.fsdp && cpt == o.cpt &&
           sp == o.sp;
  }
};

// Galvatron's printed notation: `pp-tp-dp`, `f` = ZeRO-3, `*` marks the consecutive group, `-c`, `-sp`.
std::string form_strategy(const Strategy& s);
// strategy_str2list(form_strategy(s)): the canonical form the pipeline cost model re-derives strategies from.
Strategy canonical_strategy(const Strategy& s);
// match_strategy(s1, s2, except_keys): same degrees and the same flags apart from the excepted keys.
enum StrategyKey { kKeyTp = 1, kKeyFsdp = 2, kKeyCpt = 4, kKeySp = 8 };
bool match_strategy(const Strategy& a, const Strategy& b, int except_keys);

}  // namespace gv::partitioner

#include "partitioner/strategy.h"

namespace gv::partitioner {

std::string form_strategy(const Strategy& s) {
  std::string tp = std::to_string(s.tp), dp = std::to_string(s.dp);
  if (s.fsdp == 1) dp += "f";
  if (s.tp_consec != -1) {
    if (s.tp_consec) tp += "*";
    else dp += "*";
  }
  if (s.cpt == 1) dp += "-c";
  if (s.sp == 1) dp += "-sp";
  return std::to_string(s.pp) + "-" + tp + "-" + dp;
}

Strategy canonical_strategy(const Strategy& s) {
  Strategy r;
  r.pp = s.pp;
  r.tp = s.tp;
  r.dp = s.dp;
  if (s.tp > 1 && s.dp > 1) r.tp_consec = s.tp_consec == 0 ? 0 : 1;
  if (s.dp > 1) r.fsdp = s.fsdp == 1 ? 1 : 0;
  if (s.cpt == 1) r.cpt = 1;
  if (s.sp == 1) r.sp = 1;
  return r;
}

bool match_strategy(const Strategy& a, const Strategy& b, int except) {
  if (a.pp != b.pp || a.tp != b.tp || a.dp != b.dp) return false;
  if (!(except & kKeyTp) && a.tp_consec != b.tp_consec) return false;
  if (!(except & kKeyFsdp) && a.fsdp != b.fsdp) return false;
  if (!(except & kKeyCpt) && a.cpt != b.cpt) return false;
  if (!(except & kKeySp) && a.sp != b.sp) return false;
  return true;
}

}  // namespace gv::partitioner

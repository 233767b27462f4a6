#include "tests/gradcheck_cases.h"

namespace gv::testing {
std::vector<GradCase> gradcheck_cases_movement() { return {}; }
}  // namespace gv::testing

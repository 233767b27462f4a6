// A loss curve as a self-contained SVG file that any browser opens.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "runtime/status.h"

namespace gv::cli {

// (step, loss) points; the title goes on top. Written through a temporary file and a rename.
Status write_loss_svg(const std::string& path, const std::vector<std::pair<int64_t, double>>& points,
                      const std::string& title);

}  // namespace gv::cli

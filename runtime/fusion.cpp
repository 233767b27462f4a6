// The fusion pass runner (runtime/fusion.h): attention first (its chains contain no GELU), then GELU.
#include "runtime/fusion.h"

namespace gv {

std::string FusionCounts::summary() const {
  return std::to_string(attention) + " attention, " + std::to_string(gelu) + " gelu";
}

Expected<FusionCounts> fuse_forward_graph(Graph& graph) {
  FusionCounts counts;
  GV_RETURN_IF_ERROR(fuse_attention(graph, &counts.attention));
  GV_RETURN_IF_ERROR(fuse_gelu(graph, &counts.gelu));
  return counts;
}

}  // namespace gv

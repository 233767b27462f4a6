// The human-readable report of `galvatron search`: stages, layer ranges, strategy per layer group, memory per stage,
// the time breakdown, and the throughput last.
#pragma once
#include "partitioner/search.h"

namespace gv::cli {
void print_search_report(const partitioner::ModelProfile& model, const partitioner::HardwareProfile& hw,
                         const partitioner::SearchOptions& opt, const partitioner::SearchResult& r);
}

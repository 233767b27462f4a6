// Bytes one rank sends per training step under a plan, as Galvatron's cost model counts its messages
// (core/search_engine/cost_model.py, TimeCostModel): data-parallel gradient sync 2(d-1)/d of the layer's parameters
// (ZeRO-3 adds half of that again for the extra gather), tensor parallelism 2(t-1)/t of the layer's activations times
// 4 all-reduces (1.5x under checkpointing), pipelines one activation and one gradient per micro-batch per stage
// boundary. Set beside the bytes the runtime counts (StepMetrics::comm_bytes) to check both.
#pragma once
#include <map>
#include <string>

#include "partitioner/parallel_plan.h"
#include "runtime/graph.h"

namespace gv::partitioner {

struct CommVolume {
  double dp = 0, zero3_extra = 0, tp = 0, pp = 0;
  double total() const { return dp + zero3_extra + tp + pp; }
};

// `model`: the whole forward graph at one micro-batch of `micro_rows` rows (shapes give the parameter sizes per layer
// and the hidden states' size); fp32 buffers. `dp_bytes_scale`: the share of those bytes the gradient sync of DDP and
// ZeRO-2 layers sends (0.5 when they reduce in bf16: --grad-reduce-dtype bf16; the embedding's too under DDP, not under
// ZeRO-2, whose bf16 path skips a tied embedding); ZeRO-3's stays float32.
CommVolume predict_comm_volume(const ParallelPlan& plan, const RankLayout& layout, const Graph& model,
                               int64_t micro_rows, double dp_bytes_scale = 1.0);

// The runtime's per-op counts folded into the same categories: AllReduce, ReduceScatter, GatherShardsInPlace -> dp;
// AllGather -> zero3_extra (and batch redistribution); TensorParallelReduce -> tp; Send -> pp.
CommVolume measured_comm_volume(const std::map<std::string, double>& bytes_by_op);

}  // namespace gv::partitioner

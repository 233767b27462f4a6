// `galvatron profile`'s measurements: forward time per layer and for the rest of the model (embedding + head), timed
// node by node on a backend (the CPU here) and attributed by Node::place, at a few batch sizes; and the Galvatron-format
// profile files (computation, memory, hardware) written from them and from the IR's memory profile.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "partitioner/ir_profile.h"
#include "partitioner/profile.h"
#include "runtime/graph.h"
#include "runtime/status.h"

namespace gv::partitioner {

struct ForwardTiming {
  int seq = 0;
  std::map<int, double> layer_ms_per_sample;  // batch -> ms per sample per layer (mean over the layers)
  std::map<int, double> other_ms_per_sample;  // batch -> ms per sample for everything outside the layers
};

// `make_graph(batch)` gives the forward graph for that batch. Each node runs alone (Executor::run_steps) and is timed;
// a layer's time is the sum over its nodes (mean over layers), "other" the sum over the embedding / head / unplaced
// nodes; the best of `repeats` runs after one warm-up.
Expected<ForwardTiming> time_forward(const std::function<Expected<Graph>(int64_t)>& make_graph,
                                     const std::vector<int>& batches, int repeats = 2);

// Galvatron's processed computation profile: layertype_0_bsz{b}_seq{S} and layertype_other_bsz{b}_seq{S} (ms per
// sample), batches in the order given (static mode reads the first key).
std::string computation_profile_json(const ForwardTiming& t);
// Galvatron's processed memory profile: layertype_0 / other_memory_pp_{off,on_first,on_last}, with and without _sp,
// keyed by sequence length.
std::string memory_profile_json(const IrMemory& m, const std::vector<int>& tp_degrees = {1, 2, 4, 8});

// Hardware files from given numbers (one GPU or none: nothing to measure). Bandwidths in GB/s (nccl-tests busbw).
struct HardwareNumbers {
  int num_nodes = 1, gpus_per_node = 8;
  double intra_allreduce_gbps = 150;   // consecutive groups inside a node
  double inter_allreduce_gbps = 20;    // groups that cross nodes
  double p2p_gbps = 130;               // pipeline send/recv inside a node
  double inter_p2p_gbps = 8;           // across nodes
  double overlap_coe = 1.12;
  double latency_ms = 0.05;            // sp_time: fixed cost per collective
};
// Writes allreduce_bandwidth_*, p2p_bandwidth_*, overlap_coefficient.json and sp_time_* under `dir`; returns the paths.
Expected<std::vector<std::string>> write_hardware_files(const std::string& dir, const HardwareNumbers& h);

// Hardware measured on this machine's devices (`galvatron profile --hardware --devices N`), in the same four files.
struct MeasuredHardware {
  int num_nodes = 1, gpus_per_node = 1;
  std::map<std::string, double> allreduce_gbps;  // "allreduce_size_{g}_consec_{0|1}" -> bus bandwidth, GB/s
  std::map<std::string, double> p2p_gbps;        // "pp_size_{p}" -> GB/s
  double overlap_coe = 1.0;
  std::map<std::string, double> sp_time_ms;      // "{allreduce|all2all}_size_{g}_{m}MB_time" -> ms
};
Expected<std::vector<std::string>> write_measured_hardware_files(const std::string& dir, const MeasuredHardware& m);

Status write_text_file(const std::string& path, const std::string& text);

}  // namespace gv::partitioner

// `galvatron profile`'s measurements: forward time per layer and for the rest of the model (embedding + head + loss),
// timed on a backend (CPU: node by node; CUDA: by blocks of nodes) and attributed by Node::place, at a few batch
// sizes; and the Galvatron-format profile files (computation, memory, hardware) written from them and from the IR's
// memory profile.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "partitioner/ir_profile.h"
#include "partitioner/profile.h"
#include "runtime/backend.h"
#include "runtime/graph.h"
#include "runtime/status.h"

namespace gv::partitioner {

struct ForwardTiming {
  int seq = 0;
  std::string device = "cpu";     // the backend the times come from
  std::string precision = "fp32"; // its matrix-product mode (Backend::set_precision)
  int repeats = 1;
  std::map<int, double> layer_ms_per_sample;     // batch -> ms per sample per layer (mean over the layers)
  std::map<int, double> other_ms_per_sample;     // batch -> ms per sample for everything outside the layers (+ loss)
  std::map<int, double> backward_ms_per_sample;  // batch -> ms per sample of the whole backward pass (all places)
  // batch -> ms per sample per layer of the layers' backward nodes (timed by blocks as the forward): the ratio to
  // layer_ms_per_sample is the one the cost model's 2 stands for. (The whole backward over the whole forward reads
  // lower where the head's fused loss, LinearCrossEntropy, computes its gradient in the forward.)
  std::map<int, double> backward_layer_ms_per_sample;
  // The AdamW step (gradient norm + updates), ms per MB of float32 parameters (best over batches and repeats).
  double optimizer_ms_per_param_mb = 0;
  // TP degree (> 1) -> batch -> ms per sample per layer on one rank of a TP group of that degree, computation only
  // (make_compute_only_tensor_parallel); degrees the model cannot be split into: the reason, in tp_skipped.
  std::map<int, std::map<int, double>> tp_layer_ms_per_sample;
  std::map<int, std::string> tp_skipped;
  // Whole forward (layers + other) per sample of the graph that was timed.
  double forward_ms_per_sample(int batch, int num_layers) const {
    return layer_ms_per_sample.at(batch) * num_layers + other_ms_per_sample.at(batch);
  }
  int num_layers = 0;  // layers of the graph that was timed (1 for zoo models)
};

// What Galvatron's computation profile means: the forward pass of training, loss included (its profiler times
// `forward_backward` with `--profile_forward`, and its models compute the loss in their last module), per sample, in
// ms; the cost model takes the backward as 2x that (bct_fct_coe) and adds one more forward for checkpointed layers.
// So the timed graph is the forward part ([0, backward_begin)) of the training graph `build_training_graph` makes of
// `make_graph(batch)` (the trainer's own graph: loss node, and whatever passes it applies), on `backend` (its
// precision already set). The backward part is timed too, whole and by blocks of one place as the forward, for the
// layers' backward / forward ratio.
// CPU: each node runs alone (Executor::run_steps) and is timed; a layer's time is the sum over its nodes (mean over
// layers), "other" the sum over the embedding / head / loss / unplaced nodes. Other backends (asynchronous: CUDA):
// contiguous runs of nodes of one place are timed as a block between Backend::synchronize calls (a sync per node would
// add its latency to every kernel). Best of `repeats` runs after one warm-up. The optimizer region (AdamW, learning
// rate 0) is timed as one block too, per MB of parameters. For each of `tp_degrees` (> 1) the layers are timed again
// as one rank of a TP group of that degree computes them (galvatron's extension: Galvatron divides the tp-1 time by
// the degree, which misses the replicated parts and the smaller products).
Expected<ForwardTiming> time_forward(const std::function<Expected<Graph>(int64_t)>& make_graph,
                                     const std::vector<int>& batches, int repeats, Backend& backend,
                                     const std::vector<int>& tp_degrees = {});

// Rewrites a forward graph as rank 0 of a `tp`-way tensor-parallel group computes it (apply_tensor_parallel on every
// layer), with the TensorParallelCopy / Reduce nodes made Identity: the computation without the communication, for
// timing on one device. Errors as apply_tensor_parallel's (heads not divisible by tp, ...).
Status make_compute_only_tensor_parallel(Graph& g, int tp);

// Galvatron's processed computation profile: layertype_0_bsz{b}_seq{S} and layertype_other_bsz{b}_seq{S} (ms per
// sample), batches in the order given (static mode reads the first key); beside them galvatron's extensions
// optimizer_ms_per_param_mb and tp{k}_layertype_0_bsz{b}_seq{S} (the per-TP-degree layer times), which Galvatron's
// readers skip (they read keys that start with layertype_).
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

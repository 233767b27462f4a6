// Profiles the search reads: what one transformer layer (and the embedding / LM head, "other") costs in memory and
// time, and what the cluster's collectives cost. The structures are independent of where the numbers come from:
// galvatron_files.cpp fills them from Galvatron v2.4.0's own profile files; a later step fills them from our IR and
// `galvatron profile`. Units are Galvatron's: memory in MB, compute in ms, bandwidth coefficients in ms per MB.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace gv::partitioner {

// A forward time as a function of the batch x a layer sees: either `t * x` (static / sequence profile modes, t in ms per
// sample) or the linear fit `m * x + c` (batch profile mode).
struct TimeFn {
  bool linear = false;
  double t = 0;     // ms per sample (when !linear)
  double m = 0, c = 0;  // fit (when linear)
  double at(double x) const { return linear ? m * x + c : x * t; }
};

// One layer type (a decoder block; T5 has two).
struct LayerTypeProfile {
  int hidden_size = 0;
  int seq_length = 0;
  int layer_num = 0;
  double parameter_size_mb = 0;              // fp32 MB of one layer's parameters
  std::map<int, double> act_per_sample_mb;   // TP degree -> activation MB per sample
  double act_checkpoint_mb = 0;              // activation MB per sample kept when checkpointed
  bool has_checkpoint = false;
  TimeFn forward;                            // ms per layer, as a function of the per-GPU batch
  // galvatron's extension (computation profile keys tp{k}_layertype_<i>_bsz{b}_seq{S}): TP degree -> the layer's
  // forward on one rank of the TP group (computation only), as a function of the batch the group takes. Absent:
  // Galvatron's forward at batch / tp.
  std::map<int, TimeFn> forward_tp;
};

// Embedding + LM head memory for one pipeline placement, per vocab-TP degree.
struct OtherMemory {
  std::map<int, double> model_states_mb;
  std::map<int, double> activation_mb;  // per sample
};

struct ModelProfile {
  std::string name;
  std::vector<LayerTypeProfile> layer_types;
  OtherMemory pp_off, pp_on_first, pp_on_last;
  TimeFn other_forward;  // ms for the embedding + LM head
  // galvatron's extension of the computation profile (key "optimizer_ms_per_param_mb"): the optimizer step's ms per MB
  // of float32 parameters one GPU updates. 0 (Galvatron's own files): the step is not in the cost, as in Galvatron.
  double optimizer_ms_per_param_mb = 0;
  std::string source;    // where the numbers came from (file names)
  int total_layers() const {
    int n = 0;
    for (const auto& l : layer_types) n += l.layer_num;
    return n;
  }
};

// Measured collective times per message size for one group size (sp_time files), and their linear fit in MB.
struct CollectiveTable {
  std::map<int64_t, double> ms_by_bytes;
  double m = 0, c = 0;  // ms = m * MB + c
};

struct HardwareProfile {
  int world_size = 0;
  // Galvatron's comm_coe_dict: "8" (whole world), "4_0"/"4_1" (strided/consecutive), "1" -> 0. ms per MB.
  std::map<std::string, double> allreduce_coe;
  std::map<std::string, double> allreduce_bandwidth;
  std::map<int, double> p2p_coe;  // pipeline degree -> ms per MB
  std::map<int, double> p2p_bandwidth;
  double overlap_coe = 1.0;
  std::map<int, CollectiveTable> sp_allreduce;  // halved all-reduce (all-gather / reduce-scatter) times
  std::map<int, CollectiveTable> sp_all2all;
  std::string source;
};

}  // namespace gv::partitioner

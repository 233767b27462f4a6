// Reading Galvatron v2.4.0's profile files as they are: the model's computation and memory profiles and the
// hardware's all-reduce / p2p bandwidth, overlap coefficient and sp_time files. Every error names the file and says
// what is missing; nothing here throws.
#pragma once
#include <string>
#include <vector>

#include "partitioner/profile.h"
#include "runtime/status.h"

namespace gv::partitioner {

enum class ProfileMode { kStatic, kBatch, kSequence };
Expected<ProfileMode> parse_profile_mode(const std::string& s);

struct LayerShape {
  int hidden_size = 0;
  int layer_num = 0;
  int seq_len = 0;
};

struct ModelFileOptions {
  std::string model_name;
  std::vector<LayerShape> layers;  // one per layer type
  ProfileMode time_mode = ProfileMode::kStatic;
  ProfileMode memory_mode = ProfileMode::kStatic;
  bool sequence_parallel = false;  // read the `_sp` memory sections
};

Expected<ModelProfile> load_galvatron_model_profile(const std::string& computation_path,
                                                    const std::string& memory_path, const ModelFileOptions& opt);

struct HardwareFiles {
  std::string allreduce, p2p, overlap, sp_time;
};
Expected<HardwareProfile> load_galvatron_hardware_profile(const HardwareFiles& files, int world_size);

// Least-squares fits as scipy.optimize.curve_fit finds them for these linear-in-parameters models.
bool fit_linear(const std::vector<double>& x, const std::vector<double>& y, double* m, double* c);
bool fit_quadratic(const std::vector<double>& x, const std::vector<double>& y, double* a, double* b, double* c);

}  // namespace gv::partitioner

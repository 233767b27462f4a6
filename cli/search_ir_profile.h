// Our own profiles for `galvatron profile` and `galvatron search`: a model given as MODEL.onnx or as a zoo config,
// its memory profile from the IR (partitioner/ir_profile.h) and its forward times on a backend
// (partitioner/profiler.h).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/zoo.h"
#include "partitioner/ir_profile.h"
#include "partitioner/profiler.h"
#include "runtime/backend.h"

namespace gv::cli {

struct IrModelSource {
  std::string onnx_path;  // set for MODEL.onnx
  ModelConfig config;     // otherwise a zoo config
  std::string name;       // for file names
  int64_t seq = 0;        // sequence length (zoo: the config's; ONNX: its own or --seq-length)
};

// Memory from the IR: ONNX models are imported at batch 1 and measured whole; zoo models through measure_zoo_memory
// (1-layer builds, nothing built at full size). float_bytes: 2 under bf16/fp16, 4 under fp32.
Expected<partitioner::IrMemory> ir_memory_of(const IrModelSource& src, int float_bytes);
// Forward timing (partitioner::time_forward: the training graph's forward, loss included) on `backend`, whose
// precision is set already: ONNX models whole, zoo models as a 1-layer build with the real vocabulary (per-node
// attribution makes one layer enough). The result's `precision` is `precision`.
Expected<partitioner::ForwardTiming> forward_timing_of(const IrModelSource& src, const std::vector<int>& batches,
                                                       int repeats, Backend& backend, const std::string& precision,
                                                       const std::vector<int>& tp_degrees = {});
// The backend for --device (cpu | cuda; make_backend's error in a build without CUDA or without a GPU) in --precision
// (fp32 | tf32 | bf16; anything but fp32 needs cuda).
Expected<std::unique_ptr<Backend>> timing_backend(const std::string& device, const std::string& precision);
// "1,2,4" -> {1, 2, 4}.
Expected<std::vector<int>> parse_int_list(const std::string& s);
// A model name for file names: the ONNX file's folder when the file is model.onnx, else its stem.
std::string model_name_of_path(const std::string& path);

}  // namespace gv::cli

// The training loop's engine: owns the training graph (runtime/training_graph.h) and its executor, feeds batches,
// learning rate and step, and saves / restores checkpoints. Knows nothing of files other than checkpoints, nor of
// ONNX, nor of parallel plans.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/executor.h"
#include "runtime/sharded_tensor.h"
#include "runtime/training_graph.h"

namespace gv {

enum class LrSchedule { kConstant, kCosine };

struct TrainerConfig {
  TrainingGraphOptions graph;
  double lr = 1e-3;
  LrSchedule schedule = LrSchedule::kConstant;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // for the cosine schedule
  double min_lr_ratio = 0.0;  // cosine decays to lr * min_lr_ratio
  uint64_t seed = 0;
  // Data parallelism: when set and of more than one rank, gradients are averaged across its ranks (graph.data_parallel
  // is turned on) and StepMetrics::loss is the mean over the ranks. Must outlive the trainer.
  Communicator* comm = nullptr;
  // Pipeline parallelism: the order of the micro-batches' forward (F) and backward (B) segments in a step, and how
  // many micro-batches may be in flight (each gets its own activation arena; micro-batch i uses arena i % in_flight).
  // Empty: F0 B0 F1 B1 ...
  struct PipelineStep {
    bool backward = false;
    int micro = 0;
  };
  std::vector<PipelineStep> pipeline_schedule;
  int in_flight = 1;
  // Tensors this process holds only a piece of (tensor / sharded data parallelism), by local parameter name. With
  // more than one rank, parameters() and checkpoints assemble whole tensors through `comm`: every rank must call them
  // together; rank 0 alone writes the checkpoint file.
  std::map<std::string, TensorShard> shards;
  // The step's loss: sum of the ranks' losses divided by this (0: the number of ranks; pipeline stages without the
  // loss contribute 0).
  int loss_divisor = 0;
};

struct StepMetrics {
  int64_t step = 0;        // 1-based optimizer step just taken
  double loss = 0.0;       // mean of the micro-batch losses, before the update
  double lr = 0.0;
  double grad_norm = 0.0;  // before clipping
  int64_t tokens = 0;
  double seconds = 0.0;
  // Bytes this process sent during the step, by communication op type (see Executor::comm_bytes).
  std::map<std::string, double> comm_bytes;
};

using TensorMap = std::map<std::string, Tensor>;

class Trainer {
 public:
  static Expected<std::unique_ptr<Trainer>> create(Graph forward, const TrainerConfig& config, Backend& backend);
  // Why this trainer's steps run kernel by kernel rather than as one recorded launch (a CUDA graph): "" while they are
  // recorded, or before the second step decides it.
  const std::string& step_not_recorded_because() const { return record_declined_; }
  bool step_recorded() const { return recorded_step_ != nullptr; }

  // One optimizer step over `micro_batches` (exactly graph.grad_accum_steps of them): each maps graph input names
  // (and "labels") to host tensors.
  Expected<StepMetrics> step(const std::vector<TensorMap>& micro_batches);
  // Forward and backward at the current weights, without an update: the loss and each parameter's gradient, keyed
  // by the parameter's (ONNX initializer) name, plus the gradients of TrainingGraphOptions::report_grads_of. With
  // gradient accumulation the micro-batch must be the step's first.
  Expected<TensorMap> compute_gradients(const TensorMap& batch, double* loss);
  // Forward only: the loss of a batch.
  Expected<double> evaluate_loss(const TensorMap& batch);

  double lr_at(int64_t step) const;  // learning rate of the 1-based step
  int64_t steps_done() const { return steps_done_; }
  void set_steps_done(int64_t s) { steps_done_ = s; }

  // Host copies of the parameters, keyed by name.
  Expected<TensorMap> parameters() const;
  // Checkpoint: parameters, optimizer state, step and the caller's metadata (data position, ...), as safetensors
  // written to a temporary file and renamed.
  Status save_checkpoint(const std::string& path, std::map<std::string, std::string> metadata) const;
  // Restores parameters, optimizer state and step; returns the checkpoint's metadata.
  Expected<std::map<std::string, std::string>> load_checkpoint(const std::string& path);

  // Bytes the plan needs: activation arena + parameters, constants and optimizer state.
  // The arena, the constants, and the backend's kernel scratch as of now (grown during the first step).
  size_t peak_memory_bytes() const {
    return executor_->arena_bytes() + executor_->constant_bytes() + backend_->scratch_bytes();
  }
  size_t scratch_bytes() const { return backend_->scratch_bytes(); }
  size_t arena_bytes() const { return executor_->arena_bytes(); }
  const TrainingGraph& training_graph() const { return *tg_; }
  const TrainerConfig& config() const { return config_; }
  // The executor of micro-batch slot 0 (which also runs the optimizer region). Whoever writes parameters through it
  // calls materialize_parameters() before (unless writing every parameter) and parameters_changed() afterwards.
  Executor& executor() { return *executor_; }
  // Writes the float32 values of the masters held as two halves (TrainingGraph::split_masters), whose own buffers hold
  // the halves during the steps, into those buffers: every parameter buffer of the executor is then current (and the
  // halves are split again before the next step).
  Status materialize_parameters();
  // Marks the persistent bf16 parameter copies (TrainingGraph::prologue_end) stale: they are rebuilt from the
  // parameters before the next forward pass (split masters: split again from their buffers). load_checkpoint calls
  // it.
  void parameters_changed() { param_copies_stale_ = true; }

 private:
  Trainer() = default;
  Status feed(Executor& ex, const TensorMap& batch);
  Status run_forward_backward(const TensorMap& batch, int64_t micro_index, double* loss);
  // Runs the prologue (the persistent bf16 parameter copies' Casts) when the copies are stale.
  Status refresh_param_copies();
  bool parallel() const;
  std::vector<Executor*> all_slots();
  // The whole tensor of a parameter or optimizer state (assembled across ranks when it is a piece).
  TensorShard shard_of(ValueId param) const;
  TensorShard state_shard_of(ValueId param) const;
  // The piece of a parameter whose values this rank keeps current: shard_of, or for a parameter of
  // TrainingGraph::sharded_masters its optimizer range (state_shard_of).
  TensorShard current_shard_of(ValueId param) const;
  // A value as a host tensor; a parameter of TrainingGraph::split_masters joined from its two halves.
  Expected<Tensor> fetch_current(ValueId v) const;
  // Host copies of (name -> local value, its piece) assembled into whole tensors; collective with more than one rank.
  Expected<TensorMap> assemble(const std::vector<std::pair<ValueId, TensorShard>>& pieces) const;

  TrainerConfig config_;
  std::unique_ptr<TrainingGraph> tg_;  // heap: the executor keeps a reference to its graph
  std::unique_ptr<Executor> executor_;                // slot 0: also runs the optimizer region
  std::vector<std::unique_ptr<Executor>> more_slots_;  // pipeline: arenas of further micro-batches in flight
  Backend* backend_ = nullptr;
  int64_t steps_done_ = 0;
  bool param_copies_stale_ = true;
  // Steps with one micro-batch in one process run their kernels [prologue_end, end) as one recorded launch
  // (Backend::record: a CUDA graph) from this trainer's second step on: the first runs them one by one, which sizes
  // the kernels' scratch and their plans. Why they are not recorded, once decided (the backend declined, or the step
  // does not qualify): record_declined_.
  Status run_whole_step();
  std::string why_not_recorded() const;
  std::unique_ptr<RecordedWork> recorded_step_;
  std::string record_declined_;
  int64_t steps_run_here_ = 0;
};

}  // namespace gv

// Runs a graph like an inference engine: one static order, one static memory plan, kernels from the registry.
// The executor owns the arena (activations, inputs) and device copies of parameters and constants; on the CPU the
// parameter buffers are the graph's own tensors, so an optimizer that updates them in place is seen by the next run.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/memory_plan.h"

namespace gv {

class Executor;

struct ExecutorOptions {
  std::vector<ValueId> keep_alive;  // values to keep readable after run() besides graph outputs
  uint64_t rng_seed = 0;
  Communicator* comm = nullptr;  // handed to collective kernels (KernelContext::comm); null: a single process
  // Another executor of the same graph whose parameter, constant and state buffers this one uses instead of its own
  // (pipeline micro-batches in flight: one arena each, one copy of the weights).
  const Executor* share_persistent_with = nullptr;
};

class Executor {
 public:
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Plans `graph` (which must outlive the executor) for `backend`. Fails naming the first node whose op has no
  // kernel on this backend.
  static Expected<std::unique_ptr<Executor>> create(const Graph& graph, Backend& backend, ExecutorOptions options = {});

  // Copies a host tensor into a graph input (or any arena value). Dtype and shape must match.
  Status set_value(ValueId v, const Tensor& host);
  // Feeds graph inputs by name; a missing input is an error naming it; extra tensors are ignored.
  Status set_inputs(const std::map<std::string, Tensor>& feeds, const std::string& source = "feeds");
  // Runs nodes [begin, end) of the execution order; run() runs them all.
  Status run();
  Status run_steps(size_t begin, size_t end);
  // Copies a value back to the host.
  Expected<Tensor> fetch(ValueId v) const;
  // Where a value lives (device pointer).
  void* data(ValueId v) const { return ptrs_[v]; }

  size_t num_steps() const { return steps_.size(); }
  size_t arena_bytes() const { return plan_.arena_bytes; }
  size_t constant_bytes() const { return constant_bytes_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  const Graph& graph() const { return graph_; }
  Backend& backend() const { return backend_; }
  // Counter handed to random kernels; the trainer advances it each micro-batch.
  uint64_t rng_counter = 0;
  // Bytes this process sent through each kind of communication op (by op type) since the last reset, counted as
  // ring algorithms send them: all-reduce 2(n-1)/n of the buffer, all-gather and reduce-scatter (n-1)/n of the whole
  // buffer, send the buffer.
  std::map<std::string, double> comm_bytes;
  // Index of the micro-batch within the step, handed to kernels (pipeline Send/Recv tags); set by the trainer.
  int64_t micro_batch = 0;

 private:
  Executor(const Graph& graph, Backend& backend) : graph_(graph), backend_(backend) {}

  struct Step {
    NodeId node;
    KernelFn kernel;
    KernelContext ctx;
    double comm_bytes = 0;  // bytes this node sends per run (communication ops), 0 for the others
  };
  const Graph& graph_;
  Backend& backend_;
  ExecutorOptions options_;
  MemoryPlan plan_;
  void* arena_ = nullptr;
  std::vector<void*> owned_;  // device copies of constants/parameters (non-CPU backends)
  std::vector<void*> ptrs_;   // per value
  std::vector<Step> steps_;
  size_t constant_bytes_ = 0;
};

}  // namespace gv

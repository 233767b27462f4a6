// Host-callable wrappers over the CUDA runtime, so that C++ code outside kernels/cuda needs no CUDA headers.
#pragma once
#include <cstddef>

namespace gv::cuda {
int device_count();
const char* last_error();
bool malloc_device(void** p, size_t bytes);
void free_device(void* p);
bool memcpy_h2d(void* dst, const void* src, size_t n);
bool memcpy_d2h(void* dst, const void* src, size_t n);
bool memcpy_d2d(void* dst, const void* src, size_t n);
bool memset_device(void* p, size_t n);
bool synchronize();
}  // namespace gv::cuda
namespace gv::cuda {
// The compute stream: every kernel, async copy and cuBLAS / cuDNN call of the CUDA backend is issued on it. Created
// once per process on the current device, with the highest priority and blocking (the legacy default stream's
// synchronous copies, memcpy_h2d and friends, stay ordered with it), so that a training step can be captured into a
// CUDA graph (graph_record below), which the legacy stream cannot be.
void* compute_stream();
// Makes compute_stream() the legacy default stream (null), as GALVATRON_CUDA_LEGACY_STREAM=1 does; effective only
// before its first call. Multi-process NCCL runs take it (runtime/nccl_communicator.cpp): their collectives were
// proven on that stream, and their steps are never recorded. GALVATRON_CUDA_LEGACY_STREAM=0 overrides it.
void use_legacy_stream();
// Ordered on the compute stream like the kernels; they return before the copy is done.
bool memcpy_d2d_async(void* dst, const void* src, size_t n);
bool memset_async(void* p, size_t n);
}  // namespace gv::cuda
namespace gv::cuda {
// Timing events on the compute stream (GALVATRON_CUDA_PROFILE): record one, later the milliseconds between two.
void* event_record();
float event_elapsed_ms(void* start, void* stop);  // synchronizes on stop; destroys neither
void event_destroy(void* e);
}  // namespace gv::cuda
namespace gv::cuda {
// A second stream, for work that may run beside the default stream's (the optimizer's updates beside the backward
// pass; runtime/updates_in_backward.cpp), at the lowest priority. side_stream_fork: the side stream waits for
// everything issued on the compute stream so far, and is returned (null on failure) for the caller's launches;
// side_stream_join: the compute stream waits for everything issued on the side stream so far. Non-blocking: no other
// stream waits for it otherwise.
void* side_stream_fork();
bool side_stream_join();
// At most this many blocks for a flat kernel launched on the side stream (GALVATRON_CUDA_SIDE_BLOCKS; 0: no cap),
// so that it leaves the compute stream's kernels most SMs.
int side_stream_max_blocks();
}  // namespace gv::cuda
namespace gv::cuda {
// CUDA graphs of the compute stream. graph_record_begin starts capturing it (thread-local mode: another thread's
// legacy-stream calls are not affected); graph_record_end ends the capture and instantiates what was issued, returning
// the executable graph, or null when anything issued could not be captured (the error is cleared; last_error() says
// what it was, and nothing that was issued ran). graph_replay launches it on the compute stream.
bool graph_record_begin();
void* graph_record_end();
bool graph_replay(void* graph);
void graph_destroy(void* graph);
}  // namespace gv::cuda

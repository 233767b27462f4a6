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
// Ordered on the default stream like the kernels; they return before the copy is done.
bool memcpy_d2d_async(void* dst, const void* src, size_t n);
bool memset_async(void* p, size_t n);
}  // namespace gv::cuda
namespace gv::cuda {
// Timing events on the default stream (GALVATRON_CUDA_PROFILE): record one, later the milliseconds between two.
void* event_record();
float event_elapsed_ms(void* start, void* stop);  // synchronizes on stop; destroys neither
void event_destroy(void* e);
}  // namespace gv::cuda
namespace gv::cuda {
// A second stream, for work that may run beside the default stream's (the optimizer's updates beside the backward
// pass; runtime/updates_in_backward.cpp). side_stream_fork: the side stream waits for everything issued on the
// default stream so far, and is returned (null on failure) for the caller's launches; side_stream_join: the default
// stream waits for everything issued on the side stream so far. Non-blocking: the default stream's own work never
// waits for it otherwise.
void* side_stream_fork();
bool side_stream_join();
// At most this many blocks for a flat kernel launched on the side stream (GALVATRON_CUDA_SIDE_BLOCKS; 0: no cap),
// so that it leaves the default stream's kernels most SMs.
int side_stream_max_blocks();
}  // namespace gv::cuda

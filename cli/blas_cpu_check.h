// OpenBLAS picks its kernels from the CPU's model number when it loads. Virtual machines that report a generic model
// ("Intel(R) Xeon(R) Processor") make it fall back to its Prescott (SSE3) kernels, 2-3x slower than the AVX2/AVX-512
// ones the CPU has. OPENBLAS_CORETYPE overrides the choice, but only before the library loads, so galvatron starts
// itself again with it set.
#pragma once

namespace gv::cli {

// When OpenBLAS chose Prescott kernels, OPENBLAS_CORETYPE is unset and the CPU supports AVX-512 (SkylakeX kernels) or
// AVX2 (Haswell), sets the variable and replaces this process by a fresh run of the same binary with the same
// arguments. Returns (doing nothing) otherwise, or when the restart fails.
void restart_with_fast_blas_kernels(char** argv);

}  // namespace gv::cli

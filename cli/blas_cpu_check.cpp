#include "cli/blas_cpu_check.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "kernels/cpu/matmul.h"

namespace gv::cli {

void restart_with_fast_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE")) return;  // the user's choice, or our own restart
  const char* core = cpu::blas_core_name();
  if (strcasecmp(core, "prescott") != 0) return;
  __builtin_cpu_init();
  const char* better = __builtin_cpu_supports("avx512f")  ? "SkylakeX"
                       : __builtin_cpu_supports("avx2") ? "Haswell"
                                                        : nullptr;
  if (!better) return;
  if (setenv("OPENBLAS_CORETYPE", better, 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // exec failed: go on with what we have
}

}  // namespace gv::cli

#include <cstdlib>
#include <cstring>

#include "runtime/backend.h"

namespace gv {
namespace {

class CpuBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string name() const override { return "cpu"; }
  Expected<void*> allocate(size_t bytes) override {
    size_t n = (bytes + 63) / 64 * 64;
    if (n == 0) n = 64;
    void* p = std::aligned_alloc(64, n);
    if (!p) {
      return Status(StatusCode::kOutOfMemory, "cpu: cannot allocate " + std::to_string(bytes) + " bytes");
    }
    std::memset(p, 0, n);
    return p;
  }
  void release(void* ptr) override { std::free(ptr); }
  Status copy_from_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::ok();
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override { return copy_from_host(dst, src, bytes); }
  Status copy(void* dst, const void* src, size_t bytes) override {
    if (bytes && dst != src) std::memmove(dst, src, bytes);
    return Status::ok();
  }
  Status zero(void* ptr, size_t bytes) override {
    if (bytes) std::memset(ptr, 0, bytes);
    return Status::ok();
  }
  KernelFn kernel(const OpSchema& schema) const override { return schema.cpu; }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

#ifndef GALVATRON_HAVE_CUDA
bool cuda_backend_built() { return false; }
Expected<std::unique_ptr<Backend>> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda") {
    return unsupported("this galvatron was built without CUDA (nvcc was not found at configure time); "
                       "use --device cpu or rebuild on a machine with the CUDA toolkit");
  }
  return invalid_argument("unknown device '" + device + "' (expected cpu or cuda)");
}
#endif

}  // namespace gv

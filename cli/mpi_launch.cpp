#include "cli/mpi_launch.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/communicator.h"

namespace gv::cli {
namespace {

// The first `mpirun` on PATH ("" when there is none).
std::string find_mpirun() {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "";
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t colon = p.find(':', pos);
    std::string dir = p.substr(pos, colon == std::string::npos ? std::string::npos : colon - pos);
    if (!dir.empty()) {
      std::string candidate = dir + "/mpirun";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    if (colon == std::string::npos) break;
    pos = colon + 1;
  }
  return "";
}

}  // namespace

Status relaunch_under_mpirun(int64_t n) {
  if (!mpi_backend_built()) {
    return unsupported("--devices " + std::to_string(n) + " needs MPI, but galvatron was built without it (install "
                       "libopenmpi-dev and rebuild)");
  }
  const std::string mpirun = find_mpirun();
  if (mpirun.empty()) {
    return not_found("--devices " + std::to_string(n) + " starts one process per worker with mpirun, but there is no "
                     "mpirun on PATH (install openmpi-bin)");
  }
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> self_args;
  for (std::string a; std::getline(in, a, '\0');) self_args.push_back(a);
  std::error_code ec;
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec || self_args.empty()) return internal_error("cannot read this process's command line to re-launch it");
  // The workers share the cores: give each its part, unless the user chose.
  if (!std::getenv("OMP_NUM_THREADS")) {
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    std::string threads = std::to_string(std::max<unsigned>(1, cores / static_cast<unsigned>(n)));
    ::setenv("OMP_NUM_THREADS", threads.c_str(), 1);
  }
  std::vector<std::string> cmd = {mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                                  "-np", std::to_string(n), exe};
  cmd.insert(cmd.end(), self_args.begin() + 1, self_args.end());
  std::vector<char*> argv;
  for (std::string& a : cmd) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  ::execv(mpirun.c_str(), argv.data());
  return io_error("cannot run " + mpirun + ": " + std::strerror(errno));
}

}  // namespace gv::cli

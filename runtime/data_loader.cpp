// open_data: picks the loader from the form of --data PATH; the reproducible window shuffle.
#include "runtime/data_loader.h"

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <utility>

namespace gv {

DataLoader::~DataLoader() = default;

namespace {

uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    state += 0x9E3779B97F4A7C15ull;
    return splitmix64_mix(state);
  }
  // Uniform in [0, bound), bound > 0, by rejection of the low (2^64 mod bound) values.
  uint64_t uniform(uint64_t bound) {
    uint64_t threshold = (0 - bound) % bound;
    while (true) {
      uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }
};

}  // namespace

std::vector<uint64_t> shuffled_order(uint64_t n, uint64_t seed, uint64_t epoch) {
  std::vector<uint64_t> order(n);
  for (uint64_t i = 0; i < n; ++i) order[i] = i;
  SplitMix64 rng{splitmix64_mix(splitmix64_mix(seed) + epoch)};
  for (uint64_t i = n; i-- > 1;) std::swap(order[i], order[rng.uniform(i + 1)]);
  return order;
}

namespace detail {

std::string steps_per_epoch_str(uint64_t samples, int64_t batch) {
  uint64_t b = static_cast<uint64_t>(batch);
  if (samples % b == 0) return std::to_string(samples / b) + " steps";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f steps", static_cast<double>(samples) / static_cast<double>(b));
  return buf;
}

}  // namespace detail

Expected<std::unique_ptr<DataLoader>> open_data(const std::string& path, const DataOptions& options) {
  namespace fs = std::filesystem;
  if (path.empty()) return invalid_argument("--data: no path given; pass a .bin, .npy, .safetensors or a directory");
  if (options.batch_size < 1) {
    return invalid_argument("--data " + path + ": batch size must be at least 1, got " +
                            std::to_string(options.batch_size));
  }
  if (options.seq_len < 0) {
    return invalid_argument("--data " + path + ": --seq-len must be positive, got " + std::to_string(options.seq_len));
  }
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return not_found("--data " + path + ": no such file or directory; check the path");
  if (fs::is_directory(st)) return detail::open_samples(path, options);

  std::string ext = fs::path(path).extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ext != ".bin" && ext != ".npy" && ext != ".safetensors") {
    return invalid_argument("--data " + path + ": unknown data format '" + ext +
                            "'; expected a token stream (.bin from llm.c, 1-D .npy) or samples (.safetensors, or a "
                            "directory of .npy files)");
  }
  uintmax_t size = fs::file_size(path, ec);
  if (ec) return io_error("--data " + path + ": cannot read its size: " + ec.message());
  if (size == 0) return corrupt("--data " + path + ": the file is empty; regenerate it");
  if (ext == ".safetensors") return detail::open_samples(path, options);
  return detail::open_token_stream(path, options);
}

}  // namespace gv

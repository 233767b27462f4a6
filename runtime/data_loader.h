// Training data for `--data PATH`: a shuffled token stream cut into windows, or fixed sample arrays taken in order.
//
// (a) Token stream: llm.c's `.bin` (a header of 256 little-endian int32: [0] = 20240520, [1] = 1, [2] = token count;
//     then the uint16 tokens) or a 1-D `.npy` of integer tokens (uint16, uint32, int32, int64; little-endian, C order).
//     With N tokens and T = seq_len there are W = (N-1)/T windows; window k is tokens [k*T, k*T+T+1), inputs are its
//     first T tokens and labels its last T (shifted by one). Epoch e visits every window once, in the order
//     shuffled_order(W, seed, e); batches are consecutive runs of that sequence and may straddle two epochs.
// (b) Samples: a `.safetensors` file, or a directory of `.npy` files (array name = file name without `.npy`), of
//     arrays with one row per sample: `input_name` and `label_name` [R, T] plus any other graph inputs [R, ...].
//     Step s takes rows [s*B, s*B+B) modulo R, in file order (no shuffling); an epoch is R samples.
//
// Integer arrays come out as int64 (float sample arrays keep their dtype). Positions count samples (windows or rows)
// consumed since the start, across epochs; seek(position) then next() continues a run exactly where it stopped.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/status.h"
#include "runtime/tensor.h"

namespace gv {

struct DataOptions {
  int64_t batch_size = 1;
  int64_t seq_len = 0;  // 0: take it from the samples; required for a token stream
  uint64_t seed = 0;    // token streams only: the shuffle seed
  std::string input_name = "input_ids";
  std::string label_name = "labels";
};

struct Batch {
  // int64 [B, T] under input_name and label_name, plus the other sample arrays ([B, ...]).
  std::map<std::string, Tensor> tensors;
};

class DataLoader {
 public:
  virtual ~DataLoader();
  // The next batch_size samples; advances position() by batch_size. Fails only on bad token values.
  virtual Expected<Batch> next() = 0;
  // Samples consumed since the start (for checkpoints).
  virtual uint64_t position() const = 0;
  // Continues from a position() saved earlier: the following next() returns what it returned then.
  virtual Status seek(uint64_t position) = 0;
  // One line: the kind and file, tokens or rows, windows, steps per epoch, shuffling, current epoch.
  virtual std::string describe() const = 0;
  virtual int64_t seq_len() const = 0;
  // Windows (token stream) or rows (samples) in one epoch.
  virtual uint64_t samples_per_epoch() const = 0;
  uint64_t epoch() const { return position() / samples_per_epoch(); }
};

// Opens PATH by its form: `.bin` or 1-D `.npy` -> token stream, `.safetensors` or a directory -> samples.
Expected<std::unique_ptr<DataLoader>> open_data(const std::string& path, const DataOptions& options);

// Writes an llm.c GPT-2 token file (magic 20240520, version 1, uint16 tokens) through a temp file and a rename.
Status write_token_bin(const std::string& path, const std::vector<uint16_t>& tokens);

// The window order for epoch `epoch`: a permutation of [0, n), identical on every machine and compiler.
// Generator: splitmix64 (Steele, Lea & Flood 2014; next(): state += 0x9E3779B97F4A7C15, then the mix
//   z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^= z>>31),
// started from state = mix(mix(seed) + epoch) (mod 2^64).
// Uniform j in [0, k): draw r until r >= (2^64 - k) mod k, then j = r mod k (rejection, no bias).
// Shuffle: Fisher-Yates from the identity, for i = n-1 down to 1: swap(order[i], order[uniform(i+1)]).
std::vector<uint64_t> shuffled_order(uint64_t n, uint64_t seed, uint64_t epoch);

namespace detail {
// The two kinds, for open_data (data_token_stream.cpp, data_samples.cpp). `path` exists and is not empty.
Expected<std::unique_ptr<DataLoader>> open_token_stream(const std::string& path, const DataOptions& options);
Expected<std::unique_ptr<DataLoader>> open_samples(const std::string& path, const DataOptions& options);
// "10 steps" or "7.75 steps": samples / batch for describe().
std::string steps_per_epoch_str(uint64_t samples, int64_t batch);
}  // namespace detail

}  // namespace gv

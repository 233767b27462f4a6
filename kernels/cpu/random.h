// Counter-based random numbers: every draw is a pure function of (key, index), so any element of a random tensor can
// be regenerated later without state (Dropout's backward, recomputation) and threads need no coordination.
#pragma once
#include <cstdint>
#include <string_view>

namespace gv::cpu {

// splitmix64: one step of the sequence seeded at x (adds the golden-ratio increment, then mixes).
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// FNV-1a: a stable hash of a name (a node's), so that two random ops of one step draw independent streams.
inline uint64_t hash_name(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

// The key of one random tensor: the run's seed, the step/micro-batch counter and the op's stream (node hash).
inline uint64_t random_key(uint64_t seed, uint64_t counter, uint64_t stream) {
  return splitmix64(splitmix64(splitmix64(seed) ^ counter) ^ stream);
}

// Element `index` of the tensor with this key, uniform in [0, 1) with 53 random bits.
inline double uniform01(uint64_t key, uint64_t index) {
  return static_cast<double>(splitmix64(key + index * 0x9e3779b97f4a7c15ULL) >> 11) * 0x1.0p-53;
}

}  // namespace gv::cpu

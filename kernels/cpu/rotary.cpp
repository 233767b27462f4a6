// Rotary position embedding on the CPU (kernels/cpu/rotary.h).
#include "kernels/cpu/rotary.h"

#include "kernels/cpu/broadcast.h"

namespace gv::cpu {

template <typename T>
void rotary_embedding(const T* x, const T* cos, const T* sin, const int64_t* position_ids, T* y,
                      const RotaryLayout& l) {
  const int64_t half = l.rotary_dim / 2, vectors = l.batch * l.seq * l.heads;
#pragma omp parallel for if (vectors * l.head_dim > kParallelThreshold) schedule(static)
  for (int64_t v = 0; v < vectors; ++v) {
    // v enumerates head vectors in memory order: (b, h, s) heads-first, else (b, s, h).
    const int64_t b = v / (l.seq * l.heads);
    const int64_t s = l.heads_first ? v % l.seq : (v / l.heads) % l.seq;
    const int64_t token = b * l.seq + s;
    const int64_t row = position_ids ? position_ids[token] : token;
    const T* c = cos + row * half;
    const T* sn = sin + row * half;
    const T* xv = x + v * l.head_dim;
    T* yv = y + v * l.head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const int64_t i1 = l.interleaved ? 2 * i : i, i2 = l.interleaved ? 2 * i + 1 : i + half;
      const T x1 = xv[i1], x2 = xv[i2];
      yv[i1] = c[i] * x1 - sn[i] * x2;
      yv[i2] = sn[i] * x1 + c[i] * x2;
    }
    for (int64_t i = l.rotary_dim; i < l.head_dim; ++i) yv[i] = xv[i];
  }
}

template void rotary_embedding<float>(const float*, const float*, const float*, const int64_t*, float*,
                                      const RotaryLayout&);
template void rotary_embedding<double>(const double*, const double*, const double*, const int64_t*, double*,
                                       const RotaryLayout&);

}  // namespace gv::cpu

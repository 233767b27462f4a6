// galvatron AttentionPacked / AttentionPackedGrad through cuDNN's fused attention (SDPA forward and backward, built
// with NVIDIA's cuDNN frontend graph API; GALVATRON_HAVE_CUDNN_FRONTEND). cuDNN reads bf16 Q, K, V with head dims that
// are multiples of 8: the float32 packed QKV [B, S, 3 * H * D] is converted once per call into a bf16 [B, S, 3, H, Dp]
// copy (Dp = D rounded up to 8, zeros in the padding), which cuDNN reads in place through strides (Q at 0, K at H * Dp,
// V at 2 * H * Dp); Y, dY and dQKV pass through bf16 copies of the same layout. The log-sum-exp statistics are
// cuDNN's own (float32 [B, H, S], natural log), so the forward's LSE output feeds its backward directly. One graph per
// shape, built on first use and cached (a shape cuDNN does not support is remembered as such: the flash kernels run).
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>

#include "kernels/cuda/ops.h"

#ifdef GALVATRON_HAVE_CUDNN_FRONTEND
#include <cuda_runtime.h>
#include <cudnn_frontend.h>
#endif

namespace gv::cuda {

#ifdef GALVATRON_HAVE_CUDNN_FRONTEND
namespace {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

cudnnHandle_t handle() {
  static cudnnHandle_t h = [] {
    cudnnHandle_t x = nullptr;
    if (cudnnCreate(&x) != CUDNN_STATUS_SUCCESS) return static_cast<cudnnHandle_t>(nullptr);
    cudnnSetStream(x, 0);
    return x;
  }();
  return h;
}

// A grow-only device buffer (cudaFree synchronizes: work that used the old one is done).
struct Scratch {
  void* p = nullptr;
  size_t have = 0;
  void* get(size_t bytes) {
    if (bytes <= have) return p;
    if (p) cudaFree(p);
    p = nullptr;
    have = 0;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    have = bytes;
    return p;
  }
};

Scratch g_qkv, g_o, g_do, g_dqkv, g_ws;

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, float, bool, bool>;  // b, s, h, dp, scale, causal, bwd

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  TensorPtr q, k, v, o, stats, d_o, dq, dk, dv;
  int64_t workspace = 0;
  bool ok = false;
};

int64_t round8(int64_t v) { return (v + 7) / 8 * 8; }

Plan* plan_for(const AttentionDims& d, bool backward) {
  static std::map<Key, Plan> plans;
  const int64_t B = d.batch, S = d.q_len, H = d.q_heads, Dp = round8(d.head_dim);
  const Key key{B, S, H, Dp, d.scale, d.causal, backward};
  auto it = plans.find(key);
  if (it != plans.end()) return it->second.ok ? &it->second : nullptr;
  Plan& p = plans[key];
  cudnnHandle_t h = handle();
  if (!h) return nullptr;
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  // Logical dims (b, h, s, d) over the sequence-major buffers.
  const std::vector<int64_t> dims = {B, H, S, Dp}, qkv_stride = {S * 3 * H * Dp, Dp, 3 * H * Dp, 1},
                             o_stride = {S * H * Dp, Dp, H * Dp, 1};
  auto tensor = [&](const char* name, const std::vector<int64_t>& stride) {
    return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_dim(dims).set_stride(stride));
  };
  p.q = tensor("Q", qkv_stride);
  p.k = tensor("K", qkv_stride);
  p.v = tensor("V", qkv_stride);
  if (!backward) {
    auto opts = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(true).set_attn_scale(d.scale);
    if (d.causal) opts.set_causal_mask(true);
    auto [o, stats] = g->sdpa(p.q, p.k, p.v, opts);
    o->set_output(true).set_dim(dims).set_stride(o_stride);
    stats->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim({B, H, S, 1}).set_stride({H * S, S, 1, 1});
    p.o = o;
    p.stats = stats;
  } else {
    p.o = tensor("O", o_stride);
    p.d_o = tensor("dO", o_stride);
    p.stats = g->tensor(fe::graph::Tensor_attributes()
                            .set_name("Stats")
                            .set_dim({B, H, S, 1})
                            .set_stride({H * S, S, 1, 1})
                            .set_data_type(fe::DataType_t::FLOAT));
    auto opts = fe::graph::SDPA_backward_attributes().set_name("sdpa_backward").set_attn_scale(d.scale);
    if (d.causal) opts.set_causal_mask(true);
    auto [dq, dk, dv] = g->sdpa_backward(p.q, p.k, p.v, p.o, p.d_o, p.stats, opts);
    for (auto* t : {&dq, &dk, &dv}) (*t)->set_output(true).set_dim(dims).set_stride(qkv_stride);
    p.dq = dq;
    p.dk = dk;
    p.dv = dv;
  }
  if (!g->validate().is_good() || !g->build_operation_graph(h).is_good() ||
      !g->create_execution_plans({fe::HeurMode_t::A}).is_good() || !g->check_support(h).is_good() ||
      !g->build_plans(h, fe::BuildPlanPolicy_t::HEURISTICS_CHOICE).is_good() ||
      !g->get_workspace_size(p.workspace).is_good()) {
    return nullptr;
  }
  p.graph = g;
  p.ok = true;
  return &p;
}

bool execute(Plan& p, std::unordered_map<TensorPtr, void*>& pack) {
  void* ws = p.workspace > 0 ? g_ws.get(static_cast<size_t>(p.workspace)) : nullptr;
  if (p.workspace > 0 && !ws) return false;
  return p.graph->execute(handle(), pack, ws).is_good();
}

bool shape_ok(const AttentionDims& d) {
  return d.seq_major && d.q_heads == d.kv_heads && d.q_len == d.kv_len && d.head_dim == d.v_head_dim &&
         d.head_dim <= 128 && d.mask == nullptr;
}

}  // namespace

// Read per call, like the flash switches (tests compare the two paths in one process).
bool cudnn_attention_enabled() {
  const char* e = std::getenv("GALVATRON_CUDA_CUDNN_ATTENTION");
  return !(e && std::string(e) == "0") && handle() != nullptr;
}

bool cudnn_attention_supported(const AttentionDims& d, bool backward) {
  return cudnn_attention_enabled() && shape_ok(d) && plan_for(d, false) && (!backward || plan_for(d, true));
}

bool cudnn_attention_packed_f32(const AttentionDims& d, const float* qkv, float* y, float* lse) {
  Plan* p = plan_for(d, false);
  if (!p || !shape_ok(d)) return false;
  const int64_t rows = d.batch * d.q_len, H = d.q_heads, D = d.head_dim, Dp = round8(D);
  auto* qkv16 = static_cast<uint16_t*>(g_qkv.get(sizeof(uint16_t) * rows * 3 * H * Dp));
  auto* o16 = static_cast<uint16_t*>(g_o.get(sizeof(uint16_t) * rows * H * Dp));
  if (!qkv16 || !o16 || !pack_heads_bf16(qkv, rows * 3 * H, D, Dp, qkv16)) return false;
  std::unordered_map<TensorPtr, void*> pack = {
      {p->q, qkv16}, {p->k, qkv16 + H * Dp}, {p->v, qkv16 + 2 * H * Dp}, {p->o, o16}, {p->stats, lse}};
  return execute(*p, pack) && unpack_heads_f32(o16, rows * H, D, Dp, y);
}

bool cudnn_attention_packed_grad(const AttentionDims& d, const float* qkv, const float* dy, const float* y,
                                 const float* lse, void* dqkv, bool dqkv_bf16) {
  Plan* p = plan_for(d, true);
  if (!p || !shape_ok(d)) return false;
  const int64_t rows = d.batch * d.q_len, H = d.q_heads, D = d.head_dim, Dp = round8(D);
  auto* qkv16 = static_cast<uint16_t*>(g_qkv.get(sizeof(uint16_t) * rows * 3 * H * Dp));
  auto* o16 = static_cast<uint16_t*>(g_o.get(sizeof(uint16_t) * rows * H * Dp));
  auto* do16 = static_cast<uint16_t*>(g_do.get(sizeof(uint16_t) * rows * H * Dp));
  // A bf16 dQKV without head padding is cuDNN's own output layout: written in place.
  const bool direct = dqkv_bf16 && D == Dp;
  auto* dqkv16 = direct ? static_cast<uint16_t*>(dqkv)
                        : static_cast<uint16_t*>(g_dqkv.get(sizeof(uint16_t) * rows * 3 * H * Dp));
  if (!qkv16 || !o16 || !do16 || !dqkv16) return false;
  if (!pack_heads_bf16(qkv, rows * 3 * H, D, Dp, qkv16) || !pack_heads_bf16(y, rows * H, D, Dp, o16) ||
      !pack_heads_bf16(dy, rows * H, D, Dp, do16)) {
    return false;
  }
  std::unordered_map<TensorPtr, void*> pack = {{p->q, qkv16},
                                               {p->k, qkv16 + H * Dp},
                                               {p->v, qkv16 + 2 * H * Dp},
                                               {p->o, o16},
                                               {p->d_o, do16},
                                               {p->stats, const_cast<float*>(lse)},
                                               {p->dq, dqkv16},
                                               {p->dk, dqkv16 + H * Dp},
                                               {p->dv, dqkv16 + 2 * H * Dp}};
  if (!execute(*p, pack)) return false;
  if (direct) return true;
  return dqkv_bf16 ? unpack_heads_bf16(dqkv16, rows * 3 * H, D, Dp, static_cast<uint16_t*>(dqkv))
                   : unpack_heads_f32(dqkv16, rows * 3 * H, D, Dp, static_cast<float*>(dqkv));
}

#else  // built without the cuDNN frontend: the flash kernels take every call

bool cudnn_attention_enabled() { return false; }
bool cudnn_attention_supported(const AttentionDims&, bool) { return false; }
bool cudnn_attention_packed_f32(const AttentionDims&, const float*, float*, float*) { return false; }
bool cudnn_attention_packed_grad(const AttentionDims&, const float*, const float*, const float*, const float*, void*,
                                 bool) {
  return false;
}

#endif

}  // namespace gv::cuda

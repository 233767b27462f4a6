// galvatron AttentionPacked / AttentionPackedGrad through cuDNN's fused attention (SDPA forward and backward, built
// with NVIDIA's cuDNN frontend graph API; GALVATRON_HAVE_CUDNN_FRONTEND). cuDNN reads bf16 Q, K, V with head dims that
// are multiples of 8: the float32 packed QKV [B, S, 3 * H * D] is converted once per call into a bf16 [B, S, 3, H, Dp]
// copy (Dp = D rounded up to 8, zeros in the padding), which cuDNN reads in place through strides (Q at 0, K at H * Dp,
// V at 2 * H * Dp); Y, dY and dQKV pass through bf16 copies of the same layout. The log-sum-exp statistics are
// cuDNN's own (float32 [B, H, S], natural log), so the forward's LSE output feeds its backward directly. One graph per
// shape, built on first use and cached (a shape cuDNN does not support is remembered as such: the flash kernels run).
#include <algorithm>
#include <atomic>
#include <cstdio>
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

#include "kernels/cuda/device.h"
#include "kernels/cuda/grow_buffer.h"
#endif

namespace gv::cuda {

// GALVATRON_CUDA_CUDNN_HEAD_PAD: the multiple head dims are padded to (8, 16, ..., 128; read once). cuDNN's fastest
// Hopper kernels are specialised on the common head dims (64, 128); padding 50 to 64 does more work in them.
int64_t cudnn_padded_head_dim(int64_t d) {
  static const int64_t multiple = [] {
    const char* e = std::getenv("GALVATRON_CUDA_CUDNN_HEAD_PAD");
    const long v = e ? std::strtol(e, nullptr, 10) : 8;
    return v >= 8 && v <= 128 && v % 8 == 0 ? static_cast<int64_t>(v) : int64_t{8};
  }();
  return (d + multiple - 1) / multiple * multiple;
}

#ifdef GALVATRON_HAVE_CUDNN_FRONTEND
namespace {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

cudnnHandle_t handle() {
  static cudnnHandle_t h = [] {
    cudnnHandle_t x = nullptr;
    if (cudnnCreate(&x) != CUDNN_STATUS_SUCCESS) return static_cast<cudnnHandle_t>(nullptr);
    cudnnSetStream(x, static_cast<cudaStream_t>(compute_stream()));
    return x;
  }();
  return h;
}

GrowBuffer g_qkv, g_o, g_do, g_dqkv, g_ws, g_k, g_v, g_dk, g_dv, g_stats;
std::atomic<int64_t> g_calls{0};

// How Q, K, V (and O, dO, dQ, dK, dV alike) lie: packed side by side in QKV rows (AttentionPacked), or apart as the
// 4-D form [B, H, S, D] (head-major) or the 3-D form [B, S, H * D] (sequence-major) of ONNX Attention.
enum class Layout { kPacked, kHeadMajor, kSeqMajor };

// b, s, h, kv heads, dp, scale, causal, backward, layout
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, float, bool, bool, int>;

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  TensorPtr q, k, v, o, stats, d_o, dq, dk, dv;
  int64_t workspace = 0;
  bool ok = false;
  bool tuned = false;  // autotuned on its first call (or tuning is off: the heuristics' first plan runs)
};

// GALVATRON_CUDA_CUDNN_TUNE (read once): 1 builds every engine configuration cuDNN's heuristics (modes A and B) offer
// for a shape and times them on the shape's first call (cuDNN frontend's autotune, a device synchronisation each),
// keeping the fastest; 0 runs the heuristics' first choice.
bool tuning_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("GALVATRON_CUDA_CUDNN_TUNE");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

bool report_plans() {
  static const bool on = std::getenv("GALVATRON_CUDA_PROFILE") != nullptr;
  return on;
}

Plan* plan_for(const AttentionDims& d, bool backward, Layout layout = Layout::kPacked) {
  static std::map<Key, Plan> plans;
  const int64_t B = d.batch, S = d.q_len, H = d.q_heads, Dp = cudnn_padded_head_dim(d.head_dim);
  const int64_t Hk = layout == Layout::kPacked ? H : d.kv_heads;
  const Key key{B, S, H, Hk, Dp, d.scale, d.causal, backward, static_cast<int>(layout)};
  auto it = plans.find(key);
  if (it != plans.end()) return it->second.ok ? &it->second : nullptr;
  Plan& p = plans[key];
  cudnnHandle_t h = handle();
  if (!h) return nullptr;
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  // Logical dims (b, h, s, d) over the buffers' layout; K and V may have fewer heads (GQA) when apart.
  const std::vector<int64_t> dims = {B, H, S, Dp}, kv_dims = {B, Hk, S, Dp};
  std::vector<int64_t> q_stride, kv_stride, o_stride;
  if (layout == Layout::kPacked) {
    q_stride = kv_stride = {S * 3 * H * Dp, Dp, 3 * H * Dp, 1};
    o_stride = {S * H * Dp, Dp, H * Dp, 1};
  } else if (layout == Layout::kHeadMajor) {
    q_stride = o_stride = {H * S * Dp, S * Dp, Dp, 1};
    kv_stride = {Hk * S * Dp, S * Dp, Dp, 1};
  } else {
    q_stride = o_stride = {S * H * Dp, Dp, H * Dp, 1};
    kv_stride = {S * Hk * Dp, Dp, Hk * Dp, 1};
  }
  auto tensor = [&](const char* name, const std::vector<int64_t>& dim, const std::vector<int64_t>& stride) {
    return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_dim(dim).set_stride(stride));
  };
  p.q = tensor("Q", dims, q_stride);
  p.k = tensor("K", kv_dims, kv_stride);
  p.v = tensor("V", kv_dims, kv_stride);
  if (!backward) {
    auto opts = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(true).set_attn_scale(d.scale);
    if (d.causal) opts.set_causal_mask(true);
    auto [o, stats] = g->sdpa(p.q, p.k, p.v, opts);
    o->set_output(true).set_dim(dims).set_stride(o_stride);
    stats->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim({B, H, S, 1}).set_stride({H * S, S, 1, 1});
    p.o = o;
    p.stats = stats;
  } else {
    p.o = tensor("O", dims, o_stride);
    p.d_o = tensor("dO", dims, o_stride);
    p.stats = g->tensor(fe::graph::Tensor_attributes()
                            .set_name("Stats")
                            .set_dim({B, H, S, 1})
                            .set_stride({H * S, S, 1, 1})
                            .set_data_type(fe::DataType_t::FLOAT));
    auto opts = fe::graph::SDPA_backward_attributes().set_name("sdpa_backward").set_attn_scale(d.scale);
    if (d.causal) opts.set_causal_mask(true);
    auto [dq, dk, dv] = g->sdpa_backward(p.q, p.k, p.v, p.o, p.d_o, p.stats, opts);
    dq->set_output(true).set_dim(dims).set_stride(q_stride);
    for (auto* t : {&dk, &dv}) (*t)->set_output(true).set_dim(kv_dims).set_stride(kv_stride);
    p.dq = dq;
    p.dk = dk;
    p.dv = dv;
  }
  const bool tune = tuning_enabled();
  std::vector<fe::HeurMode_t> modes = {fe::HeurMode_t::A};
  if (tune) modes.push_back(fe::HeurMode_t::B);
  if (!g->validate().is_good() || !g->build_operation_graph(h).is_good() ||
      !g->create_execution_plans(modes).is_good() || !g->check_support(h).is_good() ||
      !g->build_plans(h, tune ? fe::BuildPlanPolicy_t::ALL : fe::BuildPlanPolicy_t::HEURISTICS_CHOICE).is_good()) {
    return nullptr;
  }
  // The workspace is the largest any built plan needs (autotuning runs them all in it).
  const int64_t count = tune ? g->get_execution_plan_count() : 1;
  for (int64_t i = 0; i < count; ++i) {
    int64_t ws = 0;
    if (!(tune ? g->get_workspace_size_plan_at_index(i, ws) : g->get_workspace_size(ws)).is_good()) continue;
    p.workspace = std::max(p.workspace, ws);
  }
  p.tuned = !tune || count <= 1;
  p.graph = g;
  p.ok = true;
  return &p;
}

bool execute(Plan& p, std::unordered_map<TensorPtr, void*>& pack, const char* what) {
  void* ws = p.workspace > 0 ? g_ws.get(static_cast<size_t>(p.workspace)) : nullptr;
  if (p.workspace > 0 && !ws) return false;
  if (!p.tuned) {
    // The first call times every plan on its real operands (they are all rewritten by the run below), then runs the
    // fastest. A failed tuning keeps the heuristics' order.
    p.tuned = true;
    const bool ok = p.graph->autotune(handle(), pack, ws).is_good();
    if (report_plans()) {
      std::string name = "?";
      if (!p.graph->get_plan_name(name).is_good()) name = "?";
      std::fprintf(stderr, "[cuda] cuDNN %s: %s of %lld plans%s\n", what, name.c_str(),
                   static_cast<long long>(p.graph->get_execution_plan_count()),
                   ok ? " (autotuned)" : " (tuning failed)");
    }
  }
  return p.graph->execute(handle(), pack, ws).is_good();
}

bool shape_ok(const AttentionDims& d) {
  return d.seq_major && d.q_heads == d.kv_heads && d.q_len == d.kv_len && d.head_dim == d.v_head_dim &&
         d.head_dim <= 128 && d.mask == nullptr &&
         // the head packing kernels index in 32 bits
         d.batch * d.q_len * 3 * d.q_heads * cudnn_padded_head_dim(d.head_dim) < (int64_t{1} << 31);
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

namespace {

// `src` as cuDNN reads it, bf16 heads of Dp elements: a bf16 source without padding in place, otherwise packed into
// `buf`; nullptr on failure.
uint16_t* cudnn_heads(MixedTensor src, int64_t heads, int64_t D, int64_t Dp, GrowBuffer& buf) {
  if (src.bf16 && D == Dp) return static_cast<uint16_t*>(const_cast<void*>(src.data));
  auto* dst = buf.get_as<uint16_t>(static_cast<size_t>(heads * Dp));
  return dst && pack_heads_bf16(src, heads, D, Dp, dst) ? dst : nullptr;
}

// cuDNN's bf16 result `src` (heads of Dp) into `dst` of float32 or bf16 heads of D; nothing where it was written there.
bool from_cudnn_heads(const uint16_t* src, int64_t heads, int64_t D, int64_t Dp, void* dst, bool dst_bf16) {
  if (src == dst) return true;
  return dst_bf16 ? unpack_heads_bf16(src, heads, D, Dp, static_cast<uint16_t*>(dst))
                  : unpack_heads_f32(src, heads, D, Dp, static_cast<float*>(dst));
}

}  // namespace

bool cudnn_attention_packed(const AttentionDims& d, MixedTensor qkv, void* y, bool y_bf16, float* lse,
                            uint16_t* qkv_padded, uint16_t* y_padded) {
  Plan* p = plan_for(d, false);
  if (!p || !shape_ok(d)) return false;
  const int64_t rows = d.batch * d.q_len, H = d.q_heads, D = d.head_dim, Dp = cudnn_padded_head_dim(D);
  uint16_t* qkv16 = qkv_padded ? (pack_heads_bf16(qkv, rows * 3 * H, D, Dp, qkv_padded) ? qkv_padded : nullptr)
                               : cudnn_heads(qkv, rows * 3 * H, D, Dp, g_qkv);
  // A bf16 Y without head padding is cuDNN's own output layout: written in place.
  auto* o16 = y_padded                 ? y_padded
              : y_bf16 && D == Dp ? static_cast<uint16_t*>(y)
                                  : g_o.get_as<uint16_t>(static_cast<size_t>(rows * H * Dp));
  if (!qkv16 || !o16) return false;
  std::unordered_map<TensorPtr, void*> pack = {
      {p->q, qkv16}, {p->k, qkv16 + H * Dp}, {p->v, qkv16 + 2 * H * Dp}, {p->o, o16}, {p->stats, lse}};
  return execute(*p, pack, "attention forward") && from_cudnn_heads(o16, rows * H, D, Dp, y, y_bf16);
}

bool cudnn_attention_packed_grad(const AttentionDims& d, MixedTensor qkv, MixedTensor dy, MixedTensor y,
                                 const float* lse, void* dqkv, bool dqkv_bf16, const uint16_t* qkv_padded,
                                 const uint16_t* y_padded, float* dqkv_sums) {
  Plan* p = plan_for(d, true);
  if (!p || !shape_ok(d)) return false;
  const int64_t rows = d.batch * d.q_len, H = d.q_heads, D = d.head_dim, Dp = cudnn_padded_head_dim(D);
  uint16_t* qkv16 = qkv_padded ? const_cast<uint16_t*>(qkv_padded) : cudnn_heads(qkv, rows * 3 * H, D, Dp, g_qkv);
  uint16_t* o16 = y_padded ? const_cast<uint16_t*>(y_padded) : cudnn_heads(y, rows * H, D, Dp, g_o);
  uint16_t* do16 = cudnn_heads(dy, rows * H, D, Dp, g_do);
  auto* dqkv16 = dqkv_bf16 && D == Dp ? static_cast<uint16_t*>(dqkv)
                                      : g_dqkv.get_as<uint16_t>(static_cast<size_t>(rows * 3 * H * Dp));
  if (!qkv16 || !o16 || !do16 || !dqkv16) return false;
  std::unordered_map<TensorPtr, void*> pack = {{p->q, qkv16},
                                               {p->k, qkv16 + H * Dp},
                                               {p->v, qkv16 + 2 * H * Dp},
                                               {p->o, o16},
                                               {p->d_o, do16},
                                               {p->stats, const_cast<float*>(lse)},
                                               {p->dq, dqkv16},
                                               {p->dk, dqkv16 + H * Dp},
                                               {p->dv, dqkv16 + 2 * H * Dp}};
  if (!execute(*p, pack, "attention backward")) return false;
  if (!dqkv_sums) return from_cudnn_heads(dqkv16, rows * 3 * H, D, Dp, dqkv, dqkv_bf16);
  // The column sums as the padded result is unpacked into a bf16 dQKV; otherwise a pass over dQKV.
  if (dqkv_bf16 && D != Dp) {
    return unpack_heads_bf16_sums(dqkv16, rows, 3 * H, D, Dp, static_cast<uint16_t*>(dqkv), dqkv_sums);
  }
  if (!from_cudnn_heads(dqkv16, rows * 3 * H, D, Dp, dqkv, dqkv_bf16)) return false;
  return dqkv_bf16 ? column_sums_bf16(static_cast<const uint16_t*>(dqkv), dqkv_sums, rows, 3 * H * D, 1.0f)
                   : column_sums_f32(static_cast<const float*>(dqkv), dqkv_sums, rows, 3 * H * D, 1.0f);
}

namespace {

// Q, K, V apart (ONNX Attention's 4-D or 3-D form, float32, K and V of the same length as Q).
Layout separate_layout(const AttentionDims& d) { return d.seq_major ? Layout::kSeqMajor : Layout::kHeadMajor; }
bool separate_shape_ok(const AttentionDims& d) {
  return d.q_len == d.kv_len && d.head_dim == d.v_head_dim && d.head_dim <= 128 && d.mask == nullptr &&
         d.kv_heads > 0 && d.q_heads % d.kv_heads == 0 &&
         d.batch * d.q_len * d.q_heads * cudnn_padded_head_dim(d.head_dim) < (int64_t{1} << 31);
}

}  // namespace

bool cudnn_attention_separate_supported(const AttentionDims& d) {
  if (!cudnn_attention_enabled() || math_mode() != MathMode::kBf16 || !separate_shape_ok(d)) return false;
  const Layout layout = separate_layout(d);
  return plan_for(d, false, layout) && plan_for(d, true, layout);
}

int64_t cudnn_attention_calls() { return g_calls.load(); }

bool cudnn_attention_separate(const AttentionDims& d, MixedTensor q, MixedTensor k, MixedTensor v, void* y, bool y_bf16,
                              float* lse) {
  if (!separate_shape_ok(d)) return false;
  Plan* p = plan_for(d, false, separate_layout(d));
  if (!p) return false;
  const int64_t D = d.head_dim, Dp = cudnn_padded_head_dim(D), nq = d.batch * d.q_heads * d.q_len,
                nk = d.batch * d.kv_heads * d.kv_len;
  uint16_t *q16 = cudnn_heads(q, nq, D, Dp, g_qkv), *k16 = cudnn_heads(k, nk, D, Dp, g_k),
           *v16 = cudnn_heads(v, nk, D, Dp, g_v);
  // A bf16 Y of unpadded heads is cuDNN's own output layout: written in place.
  auto* o16 = y_bf16 && D == Dp ? static_cast<uint16_t*>(y) : g_o.get_as<uint16_t>(static_cast<size_t>(nq * Dp));
  float* stats = lse ? lse : g_stats.get_as<float>(static_cast<size_t>(nq));
  if (!q16 || !k16 || !v16 || !o16 || !stats) return false;
  std::unordered_map<TensorPtr, void*> pack = {{p->q, q16}, {p->k, k16}, {p->v, v16}, {p->o, o16}, {p->stats, stats}};
  if (!execute(*p, pack, "attention forward") || !from_cudnn_heads(o16, nq, D, Dp, y, y_bf16)) return false;
  ++g_calls;
  return true;
}

bool cudnn_attention_separate_grad(const AttentionDims& d, MixedTensor q, MixedTensor k, MixedTensor v, MixedTensor dy,
                                   void* dq, void* dk, void* dv, bool out_bf16, MixedTensor y, const float* lse) {
  if (!separate_shape_ok(d)) return false;
  const Layout layout = separate_layout(d);
  Plan* p = plan_for(d, true, layout);
  if (!p) return false;
  const int64_t D = d.head_dim, Dp = cudnn_padded_head_dim(D), nq = d.batch * d.q_heads * d.q_len,
                nk = d.batch * d.kv_heads * d.kv_len;
  uint16_t *q16 = cudnn_heads(q, nq, D, Dp, g_qkv), *k16 = cudnn_heads(k, nk, D, Dp, g_k),
           *v16 = cudnn_heads(v, nk, D, Dp, g_v), *do16 = cudnn_heads(dy, nq, D, Dp, g_do);
  if (!q16 || !k16 || !v16 || !do16) return false;
  uint16_t* o16 = nullptr;
  float* stats = const_cast<float*>(lse);
  if (y.data && lse) {
    o16 = cudnn_heads(y, nq, D, Dp, g_o);  // cuDNN's own O (widened by a float32 forward: the same bits back)
  } else {                                 // no saved forward: run it for O and the statistics
    Plan* f = plan_for(d, false, layout);
    o16 = g_o.get_as<uint16_t>(static_cast<size_t>(nq * Dp));
    stats = g_stats.get_as<float>(static_cast<size_t>(nq));
    if (!f || !o16 || !stats) return false;
    std::unordered_map<TensorPtr, void*> fwd = {{f->q, q16}, {f->k, k16}, {f->v, v16}, {f->o, o16}, {f->stats, stats}};
    if (!execute(*f, fwd, "attention forward")) return false;
  }
  // bf16 results of unpadded heads: written in place.
  const bool in_place = out_bf16 && D == Dp;
  auto* dq16 = in_place ? static_cast<uint16_t*>(dq) : g_dqkv.get_as<uint16_t>(static_cast<size_t>(nq * Dp));
  auto* dk16 = in_place ? static_cast<uint16_t*>(dk) : g_dk.get_as<uint16_t>(static_cast<size_t>(nk * Dp));
  auto* dv16 = in_place ? static_cast<uint16_t*>(dv) : g_dv.get_as<uint16_t>(static_cast<size_t>(nk * Dp));
  if (!o16 || !dq16 || !dk16 || !dv16) return false;
  std::unordered_map<TensorPtr, void*> pack = {{p->q, q16},   {p->k, k16},    {p->v, v16},
                                               {p->o, o16},   {p->d_o, do16}, {p->stats, stats},
                                               {p->dq, dq16}, {p->dk, dk16},  {p->dv, dv16}};
  if (!execute(*p, pack, "attention backward")) return false;
  if (!from_cudnn_heads(dq16, nq, D, Dp, dq, out_bf16) || !from_cudnn_heads(dk16, nk, D, Dp, dk, out_bf16) ||
      !from_cudnn_heads(dv16, nk, D, Dp, dv, out_bf16)) {
    return false;
  }
  ++g_calls;
  return true;
}

#else  // built without the cuDNN frontend: the flash kernels take every call

bool cudnn_attention_separate_supported(const AttentionDims&) { return false; }
int64_t cudnn_attention_calls() { return 0; }
bool cudnn_attention_separate(const AttentionDims&, MixedTensor, MixedTensor, MixedTensor, void*, bool, float*) {
  return false;
}
bool cudnn_attention_separate_grad(const AttentionDims&, MixedTensor, MixedTensor, MixedTensor, MixedTensor, void*,
                                   void*, void*, bool, MixedTensor, const float*) {
  return false;
}
bool cudnn_attention_enabled() { return false; }
bool cudnn_attention_supported(const AttentionDims&, bool) { return false; }
bool cudnn_attention_packed(const AttentionDims&, MixedTensor, void*, bool, float*, uint16_t*, uint16_t*) {
  return false;
}
bool cudnn_attention_packed_grad(const AttentionDims&, MixedTensor, MixedTensor, MixedTensor, const float*, void*, bool,
                                 const uint16_t*, const uint16_t*, float*) {
  return false;
}

#endif

}  // namespace gv::cuda

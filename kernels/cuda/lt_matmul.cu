// cuBLASLt products with tuned algorithms (lt_matmul.h): per shape, epilogue and operand alignment one plan holding
// the descriptors and the heuristic's candidates; their timing runs between events on the compute stream and is read
// back without blocking, or by settle_product_tuning() before a CUDA graph is recorded.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/lt_matmul.h"

namespace gv::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr int kTimedRuns = 5;  // per candidate, after one untimed run
// Another candidate replaces the heuristic's first only when it is this much faster (not within the timing's noise).
constexpr float kMargin = 0.98f;

int env_int(const char* name, int fallback) {
  const char* e = std::getenv(name);
  return e && *e ? std::atoi(e) : fallback;
}
// Read for each new shape (tests switch it on for theirs).
int tune_candidates() { return std::max(1, env_int("GALVATRON_CUDA_GEMM_TUNE", 1)); }
bool tune_log() {
  static const bool on = env_int("GALVATRON_CUDA_GEMM_TUNE_LOG", 0) != 0;
  return on;
}
int sm_target() {
  static const int n = std::max(0, env_int("GALVATRON_CUDA_GEMM_SM_TARGET", 0));
  return n;
}

void* workspace() {
  static void* ws = [] {
    void* p = nullptr;
    if (cudaMalloc(&p, kWorkspaceBytes) != cudaSuccess) {
      cudaGetLastError();
      return static_cast<void*>(nullptr);
    }
    return p;
  }();
  return ws;
}

// The largest power of two (up to 256) dividing the address: cuBLASLt picks kernels for the alignment it is told.
uint32_t alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

enum class Tuning { kNone, kPending, kDone };

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  std::vector<cublasLtMatmulAlgo_t> candidates;  // the heuristic's order
  int chosen = 0;
  Tuning tuning = Tuning::kNone;
  std::vector<cudaEvent_t> events;  // two per candidate while pending
  std::vector<bool> launched;       // per candidate: its timed runs were issued
  std::string name;                 // for the log
  bool ok = false;
};

using Key = std::array<int64_t, 20>;

std::map<Key, Plan>& plans() {
  static std::map<Key, Plan> p;
  return p;
}

bool make_layout(cublasLtMatrixLayout_t* layout, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                 int64_t batch, int64_t stride) {
  if (cublasLtMatrixLayoutCreate(layout, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld) !=
      CUBLAS_STATUS_SUCCESS) {
    return false;
  }
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count));
    cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride));
  }
  return true;
}

bool has_aux_ld(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_DGELU;
}

void build(Plan& plan, const LtProduct& p, const std::array<uint32_t, 4>& align) {
  cublasLtHandle_t h = lt_handle();
  if (!h || !workspace()) return;
  if (cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return;
  cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &p.opa, sizeof(p.opa));
  cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &p.opb, sizeof(p.opb));
  cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &p.epilogue, sizeof(p.epilogue));
  if (has_aux_ld(p.epilogue)) {
    const int64_t aux_ld = p.m;
    cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld));
  }
  if (sm_target() > 0) {
    const int32_t sms = sm_target();
    cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sms, sizeof(sms));
  }
  const bool ta = p.opa == CUBLAS_OP_T, tb = p.opb == CUBLAS_OP_T;
  if (!make_layout(&plan.a, CUDA_R_16BF, ta ? p.k : p.m, ta ? p.m : p.k, p.lda, p.batch, p.stride_a) ||
      !make_layout(&plan.b, CUDA_R_16BF, tb ? p.n : p.k, tb ? p.k : p.n, p.ldb, p.batch, p.stride_b) ||
      !make_layout(&plan.d, p.d_type, p.m, p.n, p.ldd, p.batch, p.stride_d)) {
    return;
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return;
  const uint64_t ws = kWorkspaceBytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align[0], sizeof(uint32_t));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align[1], sizeof(uint32_t));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align[2], sizeof(uint32_t));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align[3], sizeof(uint32_t));
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(tune_candidates()));
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, plan.desc, plan.a, plan.b, plan.d, plan.d, pref,
                                                           static_cast<int>(results.size()), results.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found <= 0) return;
  for (int i = 0; i < found; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS) plan.candidates.push_back(results[i].algo);
  }
  if (plan.candidates.empty()) return;
  char name[160];
  std::snprintf(name, sizeof(name), "m %lld n %lld k %lld %c%c batch %lld epilogue %d d %s",
                static_cast<long long>(p.m), static_cast<long long>(p.n), static_cast<long long>(p.k), ta ? 'T' : 'N',
                tb ? 'T' : 'N', static_cast<long long>(p.batch), static_cast<int>(p.epilogue),
                p.d_type == CUDA_R_16BF ? "bf16" : "f32");
  plan.name = name;
  plan.ok = true;
}

cublasStatus_t run(const Plan& plan, const LtProduct& p, const cublasLtMatmulAlgo_t& algo) {
  if (p.bias) cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias));
  if (has_aux_ld(p.epilogue)) {
    cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p.aux, sizeof(p.aux));
  }
  const void* c = p.c ? p.c : p.d;
  return cublasLtMatmul(lt_handle(), plan.desc, &p.alpha, p.a, plan.a, p.b, plan.b, &p.beta, c, plan.d, p.d, plan.d,
                        &algo, workspace(), kWorkspaceBytes, launch_stream());
}

bool capturing() {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(launch_stream(), &st) != cudaSuccess) {
    cudaGetLastError();
    return true;  // unknown: do nothing a capture would not allow
  }
  return st != cudaStreamCaptureStatusNone;
}

// Issues every candidate (one untimed run, then kTimedRuns between events). Re-running a product of beta 0 writes
// the same D (and auxiliary output) each time; the memory plan never gives D an operand's buffer.
void start_tuning(Plan& plan, const LtProduct& p) {
  plan.events.assign(2 * plan.candidates.size(), nullptr);
  plan.launched.assign(plan.candidates.size(), false);
  for (cudaEvent_t& e : plan.events) {
    if (cudaEventCreate(&e) != cudaSuccess) {
      cudaGetLastError();
      for (cudaEvent_t x : plan.events)
        if (x) cudaEventDestroy(x);
      plan.events.clear();
      plan.tuning = Tuning::kDone;  // keep the heuristic's choice
      return;
    }
  }
  // The candidates run alone: the compute stream first waits for the side stream's kernels issued so far (the
  // optimizer updates beside the backward), and the side stream's later kernels wait for points after these.
  side_stream_join();
  for (size_t i = 0; i < plan.candidates.size(); ++i) {
    // The untimed run loads the kernel's module (CUDA loads them lazily, on first launch: ~1 ms) and warms L2 as
    // for the others; the timed runs lie between events 2i and 2i + 1.
    bool ok = run(plan, p, plan.candidates[i]) == CUBLAS_STATUS_SUCCESS;
    cudaEventRecord(plan.events[2 * i], launch_stream());
    for (int r = 0; ok && r < kTimedRuns; ++r) ok = run(plan, p, plan.candidates[i]) == CUBLAS_STATUS_SUCCESS;
    cudaEventRecord(plan.events[2 * i + 1], launch_stream());
    plan.launched[i] = ok && cudaPeekAtLastError() == cudaSuccess;
    cudaGetLastError();
  }
  plan.tuning = Tuning::kPending;
}

// Reads the events of a pending plan (they have completed) and keeps the fastest candidate.
void finish_tuning(Plan& plan) {
  std::vector<float> ms(plan.candidates.size(), -1.0f);
  int best = 0;
  for (size_t i = 0; i < plan.candidates.size(); ++i) {
    float t = 0.0f;
    if (plan.launched[i] && cudaEventElapsedTime(&t, plan.events[2 * i], plan.events[2 * i + 1]) == cudaSuccess) {
      ms[i] = t / kTimedRuns;
      if (ms[best] < 0.0f || ms[i] < ms[best]) best = static_cast<int>(i);
    }
    cudaGetLastError();
  }
  for (cudaEvent_t e : plan.events) cudaEventDestroy(e);
  plan.events.clear();
  if (ms[best] >= 0.0f && (ms[0] < 0.0f || ms[best] < kMargin * ms[0])) plan.chosen = best;
  plan.tuning = Tuning::kDone;
  if (tune_log()) {
    std::fprintf(stderr, "gemm tune: %s: %zu candidates, heuristic's first %.4f ms, chosen #%d %.4f ms (%+.1f%%)\n",
                 plan.name.c_str(), plan.candidates.size(), ms[0], plan.chosen, ms[plan.chosen],
                 ms[0] > 0.0f ? 100.0 * (ms[plan.chosen] - ms[0]) / ms[0] : 0.0);
  }
}

}  // namespace

cublasLtHandle_t lt_handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t x = nullptr;
    return cublasLtCreate(&x) == CUBLAS_STATUS_SUCCESS ? x : static_cast<cublasLtHandle_t>(nullptr);
  }();
  return h;
}

bool lt_matmul(const LtProduct& p) {
  if (p.batch > 1 && (p.stride_a == 0 || p.stride_b == 0 || p.stride_d == 0)) return false;  // broadcasts: cuBLAS
  const std::array<uint32_t, 4> align{alignment(p.a), alignment(p.b), alignment(p.c ? p.c : p.d), alignment(p.d)};
  const Key key{p.opa,          p.opb,         p.m,      p.n,      p.k,        p.lda,
                p.ldb,          p.ldd,         p.d_type, p.batch,  p.stride_a, p.stride_b,
                p.stride_d,     p.epilogue,    align[0], align[1], align[2],   align[3],
                p.beta != 0.0f, p.c != nullptr};
  auto it = plans().find(key);
  if (it == plans().end()) {
    it = plans().emplace(key, Plan{}).first;
    build(it->second, p, align);
  }
  Plan& plan = it->second;
  if (!plan.ok) return false;
  if (plan.tuning == Tuning::kPending && !capturing()) {
    const cudaError_t q = cudaEventQuery(plan.events.back());
    if (q == cudaSuccess)
      finish_tuning(plan);
    else if (q != cudaErrorNotReady)
      cudaGetLastError();
  }
  if (plan.tuning == Tuning::kNone) {
    // Products that add into C (beta != 0) would add once per timed run: they keep the heuristic's choice, as do
    // shapes first seen inside a capture.
    if (plan.candidates.size() > 1 && p.beta == 0.0f && !capturing())
      start_tuning(plan, p);
    else
      plan.tuning = Tuning::kDone;
  }
  return run(plan, p, plan.candidates[static_cast<size_t>(plan.chosen)]) == CUBLAS_STATUS_SUCCESS;
}

void settle_product_tuning() {
  for (auto& [key, plan] : plans()) {
    if (plan.tuning != Tuning::kPending) continue;
    if (cudaEventSynchronize(plan.events.back()) != cudaSuccess) cudaGetLastError();
    finish_tuning(plan);
  }
}

}  // namespace gv::cuda

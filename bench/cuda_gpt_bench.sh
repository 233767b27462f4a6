#!/usr/bin/env bash
# Issue 7's benchmark, one device call: single-GPU bf16 AdamW training throughput of galvatron --device cuda against
# PyTorch eager and torch.compile (../shared/tools/torch_baseline.py: HF GPT2LMHeadModel, SDPA attention, fused
# AdamW, bf16 autocast) on the same GPU in the same run, for GPT-2 124M at batch 8 and 16 x 1024 and the zoo's
# gpt-1.5b at batch 4 x 1024 (PyTorch's 1.5b is GPT-2 XL: same width, depth and parameter count; 25 heads of 80
# instead of 32 of 50). MFU = (6N + 12 L H T) flops per token over 989 TFLOP/s (H100 SXM dense bf16) and over the
# bf16 cuBLAS peak measured here (an 8192^3 product through torch). Prints a table; results go in bench/README.md.
#   bash bench/cuda_gpt_bench.sh GALVATRON TORCH_BASELINE_PY [OUT_DIR] [STEPS]
# Env: CONFIGS (default "gpt2:8 gpt2:16 gpt-1.5b:4"), PRECISIONS (galvatron's, default "bf16"), TORCH=0 skips
# PyTorch, GV_FLAGS extra galvatron flags, BASELINE_GV an earlier binary timed beside (rows gv_before_*). The table is
# printed and written to OUT/table.txt.
set -uo pipefail
GV=${1:?galvatron binary}
TB=${2:?path of torch_baseline.py}
OUT=${3:-$(mktemp -d)}
STEPS=${4:-10}
CONFIGS=${CONFIGS:-"gpt2:8 gpt2:16 gpt-1.5b:4"}
PRECISIONS=${PRECISIONS:-bf16}
T=1024
mkdir -p "$OUT"
: > "$OUT/summary.txt"
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
python3 - "$DATA/tokens.npy" <<'PY'
import sys, numpy as np
np.save(sys.argv[1], np.random.default_rng(0).integers(0, 50257, 1 << 21, dtype=np.int64))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 - > "$OUT/cublas_peak.json" 2>"$OUT/cublas_peak.err" <<'PY'
import json, torch
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16); b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(5): a @ b
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
best = 1e9
for _ in range(5):
    s.record()
    for _ in range(10): a @ b
    e.record(); torch.cuda.synchronize(); best = min(best, s.elapsed_time(e) / 10)
print(json.dumps({"tflops": round(2 * n**3 / best / 1e9, 1)}))
PY
cat "$OUT/cublas_peak.json"
run_gv() {  # name, binary, size, batch, precision
  local name=$1 bin=$2 size=$3 b=$4 prec=$5
  timeout 300 "$bin" train --model-type gpt --model-size "$size" --data "$DATA/tokens.npy" --seq-len $T \
    --batch-size "$b" --steps "$STEPS" --lr 1e-4 --device cuda --precision "$prec" --metrics "$OUT/$name.jsonl" \
    ${GV_FLAGS:-} > "$OUT/$name.log" 2>&1
  echo "$name exit $?" >> "$OUT/summary.txt"
}
for cfg in $CONFIGS; do
  size=${cfg%%:*} b=${cfg##*:}
  for prec in $PRECISIONS; do
    [ -n "${BASELINE_GV:-}" ] && run_gv "gv_before_${prec}_${size}_b$b" "$BASELINE_GV" "$size" "$b" "$prec"
    run_gv "gv_${prec}_${size}_b$b" "$GV" "$size" "$b" "$prec"
  done
  if [ "${TORCH:-1}" = 1 ]; then
    tsize=124m; [ "$size" = gpt-1.5b ] && tsize=1.5b
    for mode in eager compile; do
      timeout 400 python3 "$TB" $tsize "$b" $T $mode > "$OUT/torch_${mode}_${size}_b$b.json" \
        2> "$OUT/torch_${mode}_${size}_b$b.err"
      echo "torch_${mode}_${size}_b$b exit $?" >> "$OUT/summary.txt"
    done
  fi
done
# The table also goes to OUT/table.txt (one file to fetch even when a call's output is cut).
python3 - "$OUT" "$CONFIGS" "$PRECISIONS" <<'PY' | tee "$OUT/table.txt"
import json, os, statistics, sys
out, configs, precs = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
peak = json.load(open(os.path.join(out, "cublas_peak.json"))).get("tflops", float("nan")) if os.path.exists(
    os.path.join(out, "cublas_peak.json")) else float("nan")
shape = {"gpt2": (124439808, 12, 768), "gpt-1.5b": (1557611200, 48, 1600)}
T = 1024
print(f"GPU: {open(os.path.join(out, 'gpu.txt')).read().strip()}; bf16 cuBLAS peak measured {peak} TFLOP/s")
print(f"{'run':34s} {'ms/step':>9s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU989':>7s} {'MFUpeak':>8s} {'peak GiB':>9s}")
for cfg in configs:
    size, b = cfg.split(":"); b = int(b)
    N, L, H = shape[size]
    ftok = 6 * N + 12 * L * H * T
    rows = []
    for prec in precs:
        for pre in ("gv_before_", "gv_"):
            name = f"{pre}{prec}_{size}_b{b}"
            p = os.path.join(out, name + ".jsonl")
            if not os.path.exists(p):
                continue
            m = [json.loads(l) for l in open(p)][2:]
            if m:
                ms = statistics.median(b * T / r["tokens_per_s"] * 1000 for r in m)
                rows.append((name, ms, m[-1].get("peak_mem_bytes", float("nan")) / 2**30))
            else:
                rows.append((name, float("nan"), float("nan")))
    for mode in ("eager", "compile"):
        name = f"torch_{mode}_{size}_b{b}"
        try:
            j = json.loads(open(os.path.join(out, name + ".json")).read().strip().splitlines()[-1])
            rows.append((name, j["ms_step"], j["peak_mem_gb"]))
        except Exception:
            if os.path.exists(os.path.join(out, name + ".json")):
                rows.append((name, float("nan"), float("nan")))
    for name, ms, mem in rows:
        tps = b * T / ms * 1000 if ms == ms else float("nan")
        tf = ftok * tps / 1e12
        print(f"{name:34s} {ms:9.1f} {tps:10.0f} {tf:8.1f} {tf / 989:7.3f} {tf / peak:8.3f} {mem:9.1f}")
PY
cat "$OUT/summary.txt"

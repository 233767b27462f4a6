#!/usr/bin/env bash
# Imported HuggingFace exports against the zoo's own graph on one GPU: GPT-2 124M built from its config with
# transformers' defaults (SDPA attention), exported by torch.onnx's dynamo and TorchScript exporters
# (bench/hf_export.py), trained by galvatron --device cuda --precision bf16 beside the zoo's gpt2 (same shapes and
# parameter count), batch 8 x 1024, AdamW; optionally PyTorch eager and torch.compile on the same GPU
# (../shared/tools/torch_baseline.py). Prints ms per step (median of steps 3..), tokens/s, peak memory and what
# galvatron fused in each graph; the table goes in bench/README.md.
#   bash bench/cuda_hf_import_bench.sh GALVATRON OUT_DIR [STEPS]
# Env: BATCH (8), EXPORTERS ("dynamo torchscript"), BASELINE_GV an earlier binary timed beside (rows before_*),
# TORCH_BASELINE path of torch_baseline.py (PyTorch rows when set). Needs torch, transformers, onnx (and onnxscript
# for dynamo) in python3.
set -uo pipefail
GV=${1:?galvatron binary}
OUT=${2:?output folder}
STEPS=${3:-10}
BATCH=${BATCH:-8}
EXPORTERS=${EXPORTERS:-"dynamo torchscript"}
HERE=$(cd "$(dirname "$0")" && pwd)
T=1024
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -c "import sys, numpy as np; np.save(sys.argv[1], np.random.default_rng(0).integers(0, 50257, 1 << 21, dtype=np.int64))" "$WORK/tokens.npy"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for e in $EXPORTERS; do
  start=$(date +%s)
  python3 "$HERE/hf_export.py" gpt2 "$e" "$WORK/gpt2_$e.onnx" > "$OUT/export_$e.log" 2>&1
  echo "export $e exit $? in $(( $(date +%s) - start )) s: $(tail -1 "$OUT/export_$e.log")"
done
run() {  # name, binary, model arguments...
  local name=$1 bin=$2; shift 2
  timeout 300 "$bin" train "$@" --data "$WORK/tokens.npy" --seq-len $T --batch-size "$BATCH" --steps "$STEPS" \
    --lr 1e-4 --device cuda --precision bf16 --metrics "$OUT/$name.jsonl" > "$OUT/$name.log" 2>&1
  echo "$name exit $?"
}
for pre in ${BASELINE_GV:+before_} ""; do
  bin=$GV; [ -n "$pre" ] && bin=$BASELINE_GV
  run "${pre}zoo" "$bin" --model-type gpt --model-size gpt2
  for e in $EXPORTERS; do run "${pre}hf_$e" "$bin" "$WORK/gpt2_$e.onnx"; done
done
if [ -n "${TORCH_BASELINE:-}" ]; then
  for mode in eager compile; do
    timeout 400 python3 "$TORCH_BASELINE" 124m "$BATCH" $T $mode > "$OUT/torch_$mode.json" 2> "$OUT/torch_$mode.err"
    echo "torch_$mode exit $?"
  done
fi
python3 - "$OUT" "$BATCH" <<'PY' | tee "$OUT/table.txt"
import glob, json, os, re, statistics, sys
out, b, T = sys.argv[1], int(sys.argv[2]), 1024
print(f"GPU: {open(os.path.join(out, 'gpu.txt')).read().strip()}; GPT-2 124M, batch {b} x {T}, bf16, AdamW")
print(f"{'run':22s} {'ms/step':>9s} {'tokens/s':>10s} {'peak GiB':>9s}  fused")
for p in sorted(glob.glob(os.path.join(out, "*.jsonl")), key=lambda p: (os.path.basename(p).startswith("before"), p)):
    name = os.path.basename(p)[:-6]
    m = [json.loads(l) for l in open(p) if l.strip()]
    m = [r for r in m if "tokens_per_s" in r][2:]
    ms = statistics.median(b * T / r["tokens_per_s"] * 1000 for r in m) if m else float("nan")
    mem = m[-1].get("peak_mem_bytes", float("nan")) / 2**30 if m else float("nan")
    log = open(os.path.join(out, name + ".log")).read()
    f = re.search(r"fused ([^)]*\)?[^;)]*)", log)
    print(f"{name:22s} {ms:9.2f} {b * T / ms * 1000 if ms == ms else float('nan'):10.0f} {mem:9.1f}  {f.group(1)[:90] if f else ''}")
for mode in ("eager", "compile"):
    p = os.path.join(out, f"torch_{mode}.json")
    if os.path.exists(p):
        try:
            j = json.loads(open(p).read().strip().splitlines()[-1])
            print(f"{'torch_' + mode:22s} {j['ms_step']:9.2f} {b * T / j['ms_step'] * 1000:10.0f} {j['peak_mem_gb']:9.1f}")
        except Exception as e:
            print(f"torch_{mode}: {e}")
PY

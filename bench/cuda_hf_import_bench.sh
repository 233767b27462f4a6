#!/usr/bin/env bash
# Imported HuggingFace exports against the zoo's own graph on one GPU: GPT-2 124M, TinyLlama-1.1B's shape and
# Qwen2-0.5B's shape (no zoo graph: against PyTorch only) built from their configs with transformers' defaults (SDPA attention), exported by torch.onnx (bench/hf_export.py: the
# dynamo exporter, and TorchScript for GPT-2; TorchScript cannot export Llama's grouped-query SDPA), trained by
# galvatron --device cuda --precision bf16 beside the zoo's graph of the same shape, batch x 1024, AdamW; optionally
# PyTorch eager and torch.compile on GPT-2 on the same GPU (../shared/tools/torch_baseline.py). Prints ms per step
# (median of steps 3..), tokens/s, peak memory and what galvatron fused; the table goes in bench/README.md.
#   bash bench/cuda_hf_import_bench.sh GALVATRON OUT_DIR [STEPS]
# Env: MODELS ("gpt2 tinyllama"; add qwen2), GPT2_BATCH (8), LLAMA_BATCH (8), QWEN_BATCH (8), BASELINE_GV an earlier
# binary timed beside (rows before_*), TORCH_BASELINE path of torch_baseline.py (PyTorch rows for GPT-2 when set),
# TORCH_LLAMA_BASELINE path of bench/torch_llama_baseline.py (PyTorch rows for Qwen2 when set). Needs torch,
# transformers, onnx and onnxscript in python3.
set -uo pipefail
GV=${1:?galvatron binary}
OUT=${2:?output folder}
STEPS=${3:-10}
MODELS=${MODELS:-"gpt2 tinyllama"}
HERE=$(cd "$(dirname "$0")" && pwd)
T=1024
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
run() {  # name, binary, batch, model arguments...
  local name=$1 bin=$2 b=$3; shift 3
  timeout 300 "$bin" train "$@" --seq-len $T --batch-size "$b" --steps "$STEPS" --lr 1e-4 --device cuda \
    --precision bf16 --metrics "$OUT/$name.jsonl" > "$OUT/$name.log" 2>&1
  echo "$name exit $?"
}
for model in $MODELS; do
  if [ "$model" = gpt2 ]; then
    vocab=50257 b=${GPT2_BATCH:-8} exporters="dynamo torchscript"
    zoo=(--model-type gpt --model-size gpt2)
  elif [ "$model" = qwen2 ]; then
    vocab=151936 b=${QWEN_BATCH:-8} exporters="dynamo"
    zoo=()
  else
    vocab=32000 b=${LLAMA_BATCH:-8} exporters="dynamo"
    zoo=(--model-type llama --model-size llama-7b --hidden-size 2048 --num-layers 22 --num-heads 32 --kv-heads 4
         --ffn-size 5632 --vocab-size 32000 --seq-length 1024)
  fi
  python3 -c "import sys, numpy as np; np.save(sys.argv[1], np.random.default_rng(0).integers(0, int(sys.argv[2]), 1 << 21, dtype=np.int64))" "$WORK/tokens_$model.npy" $vocab
  echo "$model $b" >> "$OUT/batches.txt"
  for e in $exporters; do
    start=$(date +%s)
    python3 "$HERE/hf_export.py" "$model" "$e" "$WORK/${model}_$e.onnx" > "$OUT/export_${model}_$e.log" 2>&1
    echo "export $model $e exit $? in $(( $(date +%s) - start )) s: $(tail -1 "$OUT/export_${model}_$e.log")"
  done
  for pre in ${BASELINE_GV:+before_} ""; do
    bin=$GV; [ -n "$pre" ] && bin=$BASELINE_GV
    [ ${#zoo[@]} -gt 0 ] && run "${pre}${model}_zoo" "$bin" "$b" "${zoo[@]}" --data "$WORK/tokens_$model.npy"
    for e in $exporters; do
      run "${pre}${model}_hf_$e" "$bin" "$b" "$WORK/${model}_$e.onnx" --data "$WORK/tokens_$model.npy"
    done
    rm -f "$WORK"/*.onnx.data 2>/dev/null  # the runs are done with them (disk)
  done
  if [ "$model" = gpt2 ] && [ -n "${TORCH_BASELINE:-}" ]; then
    for mode in eager compile; do
      timeout 400 python3 "$TORCH_BASELINE" 124m "$b" $T $mode > "$OUT/torch_${mode}_gpt2.json" 2> "$OUT/torch_${mode}_gpt2.err"
      echo "torch_${mode}_gpt2 exit $?"
    done
  fi
  if [ "$model" = qwen2 ] && [ -n "${TORCH_LLAMA_BASELINE:-}" ]; then
    for mode in eager compile; do
      timeout 400 python3 "$TORCH_LLAMA_BASELINE" 896 24 14 2 4864 151936 "$b" $T $mode qwen2 \
        > "$OUT/torch_${mode}_qwen2.json" 2> "$OUT/torch_${mode}_qwen2.err"
      echo "torch_${mode}_qwen2 exit $?"
    done
  fi
  rm -f "$WORK"/${model}_*.onnx*
done
python3 - "$OUT" <<'PY' | tee "$OUT/table.txt"
import glob, json, os, re, statistics, sys
out, T = sys.argv[1], 1024
batch = dict(l.split() for l in open(os.path.join(out, "batches.txt")))
print(f"GPU: {open(os.path.join(out, 'gpu.txt')).read().strip()}; seq {T}, bf16, AdamW; batch {batch}")
print(f"{'run':30s} {'ms/step':>9s} {'tokens/s':>10s} {'peak GiB':>9s}  fused")
for p in sorted(glob.glob(os.path.join(out, "*.jsonl"))):
    name = os.path.basename(p)[:-6]
    b = int(batch[name.replace("before_", "").split("_")[0]])
    m = [json.loads(l) for l in open(p) if l.strip()]
    m = [r for r in m if "tokens_per_s" in r][2:]
    ms = statistics.median(b * T / r["tokens_per_s"] * 1000 for r in m) if m else float("nan")
    mem = m[-1].get("peak_mem_bytes", float("nan")) / 2**30 if m else float("nan")
    log = open(os.path.join(out, name + ".log")).read()
    f = re.search(r"training graph: (\d+ nodes).*?fused (.*?)\)\n", log, re.S)
    print(f"{name:30s} {ms:9.2f} {b * T / ms * 1000 if ms == ms else float('nan'):10.0f} {mem:9.1f}  "
          f"{(f.group(1) + ': ' + f.group(2)) if f else ''}")
for model in ("gpt2", "qwen2"):
    for mode in ("eager", "compile"):
        p = os.path.join(out, f"torch_{mode}_{model}.json")
        if os.path.exists(p):
            try:
                j = json.loads(open(p).read().strip().splitlines()[-1])
                b = int(batch[model])
                print(f"{'torch_' + mode + '_' + model:30s} {j['ms_step']:9.2f} {b * T / j['ms_step'] * 1000:10.0f} "
                      f"{j['peak_mem_gb']:9.1f}")
            except Exception as e:
                print(f"torch_{mode}_{model}: {e}")
PY

#!/usr/bin/env bash
# Multi-GPU runs in one device call (issue "Multi-GPU runs"): the hardware profile measured through NCCL, the plans of
# the CPU equivalence tests on N GPUs against one GPU, and throughput at a fixed per-GPU batch of the zoo's GPT-2 124M
# under DDP, ZeRO-3, TP, PP and the searched plan, beside PyTorch FSDP (bench/torch_fsdp.py) on the same GPUs.
#   bash bench/multi_gpu.sh GALVATRON FIXTURES_DIR OUT_DIR N
set -uo pipefail
GV=${1:?galvatron binary}
FIX=${2:?fixtures dir (shared/fixtures/hf)}
OUT=${3:?output dir}
N=${4:-4}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# PARTS=throughput runs part 3 only, PARTS=correctness part 2 only (CPREC=bf16: in bf16, default fp32).
PARTS=${PARTS:-all}
if [ "$PARTS" = all ]; then
# 1. Hardware files measured through NCCL.
stamp "hardware profile"
timeout 150 "$GV" profile --hardware --devices "$N" --device cuda --start-mb 16 --end-mb 256 \
  --output-dir "$OUT/hw" > "$OUT/hw.log" 2>&1; echo "hardware exit $?"; tail -12 "$OUT/hw.log"
fi
if [ "$PARTS" = all ] || [ "$PARTS" = correctness ]; then
# 2. Correctness: the gpt2 fixture, ten steps, one GPU against N GPUs under the CPU tests' plans.
stamp "correctness"
A="train $FIX/gpt2/model.onnx --data $FIX/gpt2/samples.safetensors --batch-size 4 --steps 10 --lr 1e-3 --eps 1e-6 --quiet --device cuda --precision ${CPREC:-fp32}"
timeout 60 "$GV" $A --grad-accum 4 --metrics "$OUT/c_one.jsonl" > "$OUT/c_one.log" 2>&1
cat > "$OUT/mixed.json" <<'J'
{"pp_deg": 1, "tp_sizes_enc": "2,1", "tp_consecutive_flags": "0,1", "dp_types_enc": "0,1", "checkpoint": "1,0",
 "global_bsz": 16, "chunks": 4, "pipeline_type": "gpipe", "default_dp_type": "zero2", "vtp": 2}
J
run_c() { local name=$1; shift; timeout 90 "$GV" $A --devices "$N" "$@" --metrics "$OUT/c_$name.jsonl" > "$OUT/c_$name.log" 2>&1; echo "$name exit $?"; }
run_c ddp --chunks 4
run_c zero3 --chunks 4 --sdp 1
run_c tp$N --chunks 4 --global-tp-deg $N
run_c pp2-1f1b --chunks 4 --pp-deg 2 --pipeline-type pipedream_flush
run_c mixed --galvatron-config-path "$OUT/mixed.json"
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
ref = [json.loads(l) for l in open(os.path.join(out, "c_one.jsonl"))]
for f in sorted(os.listdir(out)):
    if not f.startswith("c_") or not f.endswith(".jsonl") or f == "c_one.jsonl": continue
    got = [json.loads(l) for l in open(os.path.join(out, f))]
    if len(got) != len(ref): print(f, "steps", len(got), "vs", len(ref)); continue
    worst = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(ref, got))
    print(f"{f[2:-6]:12s} 10-step losses vs 1 GPU: max rel diff {worst:.2e}, final {got[-1]['loss']:.6f} vs {ref[-1]['loss']:.6f}")
PY
fi
[ "$PARTS" = correctness ] && exit 0
# 3. Throughput: zoo GPT-2 124M, sequence 1024, 4 rows per GPU per step (TF32 products, as PyTorch's tf32 mode).
stamp "throughput"
python3 - "$OUT/tokens.npy" <<'PY'
import sys, numpy as np
np.save(sys.argv[1], np.random.default_rng(0).integers(0, 50257, 1 << 22, dtype=np.int64))
PY
G="train --model-type gpt --model-size gpt2 --data $OUT/tokens.npy --seq-len 1024 --steps 8 --lr 1e-4 --device cuda --quiet --precision tf32"
run_t() { local name=$1 dev=$2 bsz=$3; shift 3; timeout 150 "$GV" $G --devices $dev --batch-size $bsz "$@" --metrics "$OUT/t_$name.jsonl" > "$OUT/t_$name.log" 2>&1; echo "$name exit $?"; }
run_t one-gpu 1 4
run_t ddp $N $((4 * N))
run_t zero3 $N $((4 * N)) --sdp 1
run_t tp$N $N 4 --global-tp-deg $N --chunks 1
run_t pp$N $N 4 --pp-deg $N --chunks $N --pipeline-type pipedream_flush
timeout 200 "$GV" $G --devices $N --batch-size $((4 * N)) --auto --auto-memory 60 --metrics "$OUT/t_searched.jsonl" > "$OUT/t_searched.log" 2>&1; echo "searched exit $?"
grep -h "parallel plan\|auto:" "$OUT/t_searched.log" | head -3
stamp "torch FSDP"
for p in tf32 bf16; do
  timeout 150 torchrun --standalone --nproc_per_node "$N" "$HERE/torch_fsdp.py" 124m 4 1024 $p > "$OUT/fsdp_$p.json" 2> "$OUT/fsdp_$p.err"
  tail -1 "$OUT/fsdp_$p.json"
done
python3 - "$OUT" "$N" <<'PY'
import json, os, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
print(f"{'run':12s} {'GPUs':>4s} {'tokens/s':>10s} {'per GPU':>9s} {'peak GiB':>9s}")
one = None
for name in ["one-gpu", "ddp", "zero3", f"tp{n}", f"pp{n}", "searched"]:
    p = os.path.join(out, f"t_{name}.jsonl")
    m = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
    m = m[2:]
    if not m: print(f"{name:12s} failed (see t_{name}.log)"); continue
    tps = statistics.median(r["tokens_per_s"] for r in m)
    g = 1 if name == "one-gpu" else n
    if name == "one-gpu": one = tps
    print(f"{name:12s} {g:4d} {tps:10.0f} {tps / g:9.0f} {m[-1]['peak_mem_bytes'] / 2**30:9.1f}")
if one:
    p = os.path.join(out, "t_ddp.jsonl")
    if os.path.exists(p):
        m = [json.loads(l) for l in open(p)][2:]
        if m: print(f"DDP scaling efficiency 1 -> {n} GPUs at 4 rows per GPU: {statistics.median(r['tokens_per_s'] for r in m) / n / one:.1%}")
PY
stamp "done"

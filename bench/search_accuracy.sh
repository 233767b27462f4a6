#!/usr/bin/env bash
# Search accuracy (issue 8): Galvatron's predicted time per iteration against the measured one, on $NGPU GPUs.
# Per model (zoo gpt2 124M, quick, then gpt-1.5b; llama-* and bert-* sizes work too): the hardware files measured
# through NCCL, the computation profile timed on one GPU (`galvatron profile --device cuda`, 8 batch sizes for the batch
# time mode, the optimizer step per MB of parameters), the search for a fixed global batch and memory budget, a few
# training steps with the searched plan, and the same for single strategies (BASELINES: the search restricted to
# `--search-space dp|sdp|tp|pp`, then `train` with its plan). Prints predicted vs measured seconds per iteration and
# the error. Measured: global batch x seq / the step's tokens_per_s (--metrics), median of the steps after the first
# two.
#   GALVATRON=./galvatron NGPU=4 bash bench/search_accuracy.sh [OUT_DIR]
# Optional: MODELS ("gpt2 gpt-1.5b"), MEM_GB (64, the search's --memory-constraint), PRECISION (tf32), STEPS (6),
# DP_TYPE (ddp, the searched plan's --default-dp-type, Galvatron's default; zero2 lets the search pick ZeRO-2), BSZ_gpt2 / BSZ_gpt_1_5b (global batches: 4 and 2 per GPU),
# BASELINES ("dp"; "none" for none; per model: BASELINES_llama_7b ...), ONE_GPU=1 (one GPU with the per-GPU batch: scaling efficiency), FSDP=1 (PyTorch FSDP through
# torchrun bench/torch_fsdp.py, GPT-2 sizes; FSDP_SHARDING "full grad_op"), TRAIN_TIMEOUT (240 s per run),
# TP_DEGREES (2,4: the layer timed per TP degree, galvatron's extension of the profile; "" for none),
# HW_DIR (hardware files measured before, on the same kind of machine: skips the hardware profile), GRAD_REDUCE (fp32;
# bf16: the search's and the runs' --grad-reduce-dtype: bf16 DP messages, ZeRO-2's gathers beside the forward pass).
# BASELINES may also name zero2: the search restricted to data parallelism with ZeRO-2 and one micro-batch.
set -uo pipefail
GV=${GALVATRON:-./galvatron}
N=${NGPU:-4}
OUT=${1:-${OUT:-$(mktemp -d)}}
HERE=$(cd "$(dirname "$0")" && pwd)
MODELS=${MODELS:-"gpt2 gpt-1.5b"}
MEM=${MEM_GB:-64}
PREC=${PRECISION:-tf32}
STEPS=${STEPS:-6}
DP_TYPE=${DP_TYPE:-ddp}
GRAD_REDUCE=${GRAD_REDUCE:-fp32}
TPD=${TP_DEGREES-2,4}  # unset: 2,4; set but empty: none
SEQ=${SEQ:-1024}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$GV" --version 2>/dev/null | head -1
RES="$OUT/results.tsv"
: > "$RES"

# 1. Hardware files (all-reduce / p2p bandwidths, overlap coefficient) measured through NCCL.
if [ -n "${HW_DIR:-}" ]; then
  stamp "hardware files from $HW_DIR"; mkdir -p "$OUT/hw"; cp "$HW_DIR"/*.json "$OUT/hw/"
else
  stamp "hardware profile on $N GPUs"
  timeout 150 "$GV" profile --hardware --devices "$N" --device cuda --start-mb 16 --end-mb 256 \
    --output-dir "$OUT/hw" > "$OUT/hw.log" 2>&1; echo "hardware exit $?"; grep -v "^wrote" "$OUT/hw.log" | tail -8
fi

# Random tokens as a 1-D int64 .npy (written without NumPy).
python3 - "$OUT/tokens.npy" "${VOCAB:-50257}" <<'PY'
import array, random, struct, sys
n, v, rng = 1 << 20, int(sys.argv[2]), random.Random(0)
a = array.array("q", (rng.randrange(v) for _ in range(n)))
h = "{'descr': '<i8', 'fortran_order': False, 'shape': (%d,), }" % n
h += " " * (63 - (10 + len(h)) % 64) + "\n"
open(sys.argv[1], "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + a.tobytes())
PY

# Median seconds per step after the first two: global batch x seq / tokens_per_s.
measured() {  # metrics.jsonl, global batch
  python3 - "$1" "$2" "$SEQ" <<'PY'
import json, os, statistics, sys
p, gbs, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
m = [r for r in m[2:] if r.get("tokens_per_s", 0) > 0]
print(f"{statistics.median(gbs * seq / r['tokens_per_s'] for r in m):.5f}" if m else "nan")
PY
}
# The search's predicted seconds per iteration ("predicted time per iteration"), from its throughput line (more digits).
predicted() {  # search.log, global batch
  local t; t=$(sed -n 's/^throughput: \([0-9.]*\) samples\/s.*/\1/p' "$1" | tail -1)
  [ -n "$t" ] && python3 -c "print(f'{$2 / $t:.5f}')" || echo nan
}

for M in $MODELS; do
  key=BSZ_${M//[-.]/_}
  case $M in gpt2) def=$((4 * N));; *) def=$((2 * N));; esac
  GBS=${!key:-$def}
  P="$OUT/$M"
  case $M in llama*) MT=llama;; bert*) MT=bert;; *) MT=gpt;; esac
  mkdir -p "$P"
  rm -f "$P"/plan*.json "$P"/*.jsonl  # a reused OUT_DIR: no stale plan or metrics
  # 2. Computation profile on one GPU (memory profile from the IR beside it). --mixed-precision fp32: galvatron stores
  # float32 under every --precision, so activations count 4 bytes and gradients travel in fp32.
  stamp "$M: computation profile (cuda, $PREC)"
  timeout 180 "$GV" profile --model-type $MT --model-size "$M" --seq-length "$SEQ" --device cuda --precision "$PREC" \
    --mixed-precision fp32 --profile-batch-sizes 1,2,3,4,5,6,7,8 --repeats 3 ${TPD:+--profile-tp-degrees "$TPD"} \
    --output-dir "$P/prof" \
    > "$P/profile.log" 2>&1; echo "profile exit $?"; grep "^forward on\|^memory\|^TP" "$P/profile.log"
  S="search --model-type $MT --model-size $M --seq-length $SEQ --num-nodes 1 --num-gpus-per-node $N --settle-bsz $GBS
     --mixed-precision fp32 --time-profiling-path $P/prof --time-profile-mode batch --hardware-profiling-path $OUT/hw
     --grad-reduce-dtype $GRAD_REDUCE"
  # 3. The search.
  stamp "$M: search, global batch $GBS, $MEM GB"
  timeout 120 "$GV" $S --memory-constraint "$MEM" --default-dp-type "$DP_TYPE" --pipeline-type pipedream_flush \
    --output-config-path "$P/plan.json" > "$P/search.log" 2>&1; echo "search exit $?"
  sed -n '/^Galvatron search/,$p' "$P/search.log"
  T="train --model-type $MT --model-size $M --seq-length $SEQ --data $OUT/tokens.npy --seq-len $SEQ --steps $STEPS --lr 1e-4
     --device cuda --devices $N --precision $PREC --grad-reduce-dtype $GRAD_REDUCE"
  # 4. Training steps under the searched plan: --batch-size is one micro-batch over all GPUs (global / chunks).
  train_plan() {  # name, plan.json, search.log
    if [ -f "$2" ]; then
      local CH; CH=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('chunks', 1))" "$2")
      stamp "$M: train with the $1 plan ($CH micro-batches of $((GBS / CH)))"
      timeout "${TRAIN_TIMEOUT:-240}" "$GV" $T --batch-size $((GBS / CH)) --galvatron-config-path "$2" \
        --metrics "$P/train_$1.jsonl" > "$P/train_$1.log" 2>&1; echo "train ($1) exit $?"
      grep -h "parallel plan\|memory plan" "$P/train_$1.log" | head -2; grep -ih "out of memory" "$P/train_$1.log" | head -1
      printf "%s\t%s\t%s\t%s\n" "$M" "$1" "$(predicted "$3" "$GBS")" "$(measured "$P/train_$1.jsonl" "$GBS")" >> "$RES"
    else
      printf "%s\t%s\tnan\tnan\n" "$M" "$1" >> "$RES"
    fi
  }
  train_plan searched "$P/plan.json" "$P/search.log"
  # 5. Single strategies (BASELINES, any of dp sdp tp pp; default dp): the search restricted to that strategy (a large
  # budget, so that it is priced even where it does not fit MEM_GB: the run shows whether it fits the GPU), then the
  # same training steps with its plan. dp: one micro-batch, the default DP type (plain all-reduce).
  bl_key=BASELINES_${M//[-.]/_}
  for B in ${!bl_key:-${BASELINES:-dp}}; do
    extra=""
    space=$B
    case $B in
      none) continue;;
      dp) extra="--settle-chunk 1 --disable-sdp 1 --disable-vtp 1 --default-dp-type ddp";;
      zero2) space=dp; extra="--settle-chunk 1 --disable-sdp 1 --disable-vtp 1 --default-dp-type zero2";;
      tp) extra="--max-tp-deg $N";;
      pp) extra="--max-pp-deg $N";;
    esac
    stamp "$M: search restricted to $B"
    timeout 120 "$GV" $S --memory-constraint 512 --search-space "$space" $extra --pipeline-type pipedream_flush \
      --output-config-path "$P/plan_$B.json" > "$P/search_$B.log" 2>&1; echo "search ($B) exit $?"
    grep -h "^predicted time per iteration" "$P/search_$B.log"
    train_plan "$B" "$P/plan_$B.json" "$P/search_$B.log"
  done
  # 6. One GPU with the same rows per GPU (scaling efficiency at a fixed per-GPU batch), and PyTorch FSDP beside it.
  if [ -n "${ONE_GPU:-}" ]; then
    stamp "$M: one GPU, $((GBS / N)) rows"
    timeout 240 "$GV" ${T/--devices $N/--devices 1} --batch-size $((GBS / N)) --metrics "$P/train_one.jsonl" \
      > "$P/train_one.log" 2>&1; echo "train (one GPU) exit $?"
    printf "%s\tone-gpu\t\t%s\n" "$M" "$(measured "$P/train_one.jsonl" "$((GBS / N))")" >> "$RES"
  fi
  if [ -n "${FSDP:-}" ]; then
    case $M in gpt2) TS=124m;; gpt-1.5b) TS=1.5b;; *) TS="";; esac
    for SH in ${FSDP_SHARDING:-full}; do
      [ -n "$TS" ] || break
      stamp "$M: PyTorch FSDP ($SH), $((GBS / N)) rows per GPU"
      SHARDING=$SH timeout 300 torchrun --nproc_per_node "$N" "$HERE/torch_fsdp.py" "$TS" $((GBS / N)) "$SEQ" \
        "${PREC/tf32/tf32}" > "$P/fsdp_$SH.log" 2>&1; echo "fsdp exit $?"; grep '^{' "$P/fsdp_$SH.log" | tail -1
    done
  fi
done

stamp "summary ($N GPUs, --precision $PREC, $STEPS steps each, median of steps 3-$STEPS)"
python3 - "$RES" "$N" <<'PY'
import math, sys
rows = {}
print(f"{'model':10s} {'run':9s} {'predicted s/it':>14s} {'measured s/it':>14s} {'error':>8s}")
for line in open(sys.argv[1]):
    m, run, p, t = line.rstrip("\n").split("\t")
    p = float(p) if p else math.nan
    t = float(t) if t else math.nan
    err = (p - t) / t * 100 if t == t and p == p and t > 0 else math.nan
    print(f"{m:10s} {run:9s} {p:14.4f} {t:14.4f} {err:+7.1f}%")
    rows.setdefault(m, {})[run] = t
n = int(sys.argv[2])
for m, r in rows.items():
    one = r.get("one-gpu", math.nan)
    for run, t in r.items():
        if run != "one-gpu" and one == one and t == t and t > 0:
            print(f"{m}: {run} scaling 1 -> {n} GPUs at a fixed per-GPU batch: {one / t * 100:.1f}%")
PY
stamp "done"

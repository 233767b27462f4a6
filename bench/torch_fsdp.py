"""PyTorch FSDP (full sharding, ZeRO-3) training throughput of a HuggingFace GPT-2 on N GPUs: the multi-GPU peer of
galvatron's plans in bench/multi_gpu.sh.

Usage: torchrun --nproc_per_node N bench/torch_fsdp.py SIZE BATCH_PER_GPU SEQ PRECISION   (PRECISION: fp32|tf32|bf16)
Each GPT2Block is its own FSDP unit (transformer_auto_wrap_policy, the usual set-up: parameters gathered block by
block, overlapped with compute); SHARDING=grad_op (environment) uses SHARD_GRAD_OP (ZeRO-2) instead of FULL_SHARD.
Prints one JSON line from rank 0: ms/step median, tokens/s over all GPUs and per GPU, peak memory.
"""
import functools, json, os, sys, time
import torch
import torch.distributed as dist
import transformers as tf
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, MixedPrecision, ShardingStrategy
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

SIZES = {"124m": (12, 768, 12), "350m": (24, 1024, 16), "774m": (36, 1280, 20), "1.5b": (48, 1600, 25)}
size, bsz, seq, prec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dist.init_process_group("nccl")
rank, world = dist.get_rank(), dist.get_world_size()
torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
torch.backends.cudnn.allow_tf32 = prec == "tf32"
L, H, NH = SIZES[size]
cfg = tf.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=H, n_layer=L, n_head=NH, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
torch.manual_seed(0)
model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").cuda().train()
n_params = sum(p.numel() for p in model.parameters())
mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if prec == "bf16" else None
sharding = ShardingStrategy.SHARD_GRAD_OP if os.environ.get("SHARDING") == "grad_op" else ShardingStrategy.FULL_SHARD
wrap = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={GPT2Block})
model = FSDP(model, sharding_strategy=sharding, mixed_precision=mp, use_orig_params=True, auto_wrap_policy=wrap,
             device_id=torch.cuda.current_device())
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randint(0, 50257, (bsz, seq + 1), device="cuda", generator=torch.Generator("cuda").manual_seed(rank))


def step():
    logits = model(input_ids=x[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(3):
    step()
torch.cuda.synchronize()
times = []
for _ in range(8):
    dist.barrier()
    t0 = time.time()
    step()
    torch.cuda.synchronize()
    times.append((time.time() - t0) * 1e3)
times.sort()
ms = times[len(times) // 2]
tok = bsz * seq * world / (ms / 1e3)
if rank == 0:
    print(json.dumps({"size": size, "params": n_params, "gpus": world, "batch_per_gpu": bsz, "seq": seq,
                      "precision": prec, "sharding": sharding.name, "ms_step": round(ms, 1), "tokens_s": round(tok),
                      "tokens_s_per_gpu": round(tok / world),
                      "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}), flush=True)
dist.destroy_process_group()

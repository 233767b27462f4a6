"""PyTorch training throughput of a HuggingFace Llama on one GPU, the anchor for bench/cuda_llama_bench.sh.

Usage: python3 torch_llama_baseline.py HIDDEN LAYERS HEADS KV_HEADS FFN VOCAB BATCH SEQ MODE [FAMILY]
  MODE eager|compile; FAMILY llama (default) or qwen2
LlamaForCausalLM from its config (SDPA attention, untied embeddings, RMSNorm eps 1e-6, RoPE theta 10000, as the zoo's
llama), or with FAMILY qwen2 Qwen2ForCausalLM as Qwen2-0.5B is built (biased Q, K, V products, the embedding tied to
the head, RoPE theta 1e6; bench/hf_export.py's qwen2), fused AdamW (fp32 weights and state), bf16 autocast, random
tokens. Prints one JSON line: ms/step median of 12
timed steps after 3 warm-up steps, tokens/s, model TFLOP/s ((6N + 12 L H T) per token), peak memory.
"""
import json, sys, time
import torch
import transformers as tf

hidden, layers, heads, kv, ffn, vocab, bsz, seq = (int(a) for a in sys.argv[1:9])
mode = sys.argv[9]
family = sys.argv[10] if len(sys.argv) > 10 else "llama"
if family == "qwen2":
    cfg = tf.Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                         use_cache=False, attention_dropout=0.0)
else:
    cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=seq,
                         rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, use_cache=False,
                         attention_dropout=0.0)
torch.manual_seed(0)
model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").cuda().train()
n_params = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
step_fn = torch.compile(model) if mode == "compile" else model
x = torch.randint(0, vocab, (bsz, seq + 1), device="cuda")


def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = step_fn(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


t0 = time.time()
for _ in range(3):
    step()
torch.cuda.synchronize()
warm = time.time() - t0
times = []
for _ in range(12):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); step(); b.record(); torch.cuda.synchronize()
    times.append(a.elapsed_time(b))
times.sort()
ms = times[len(times) // 2]
tok = bsz * seq / (ms / 1e3)
tflops = (6 * n_params + 12 * layers * hidden * seq) * tok / 1e12
print(json.dumps({"family": family, "params": n_params, "batch": bsz, "seq": seq, "mode": mode, "ms_step": round(ms, 2),
                  "tokens_s": round(tok), "model_tflops": round(tflops, 1), "mfu_989": round(tflops / 989, 3),
                  "warmup_s": round(warm, 1), "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}),
      flush=True)

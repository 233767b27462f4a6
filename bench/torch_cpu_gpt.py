"""PyTorch CPU baseline for bench/cpu_train_step.sh: the zoo's GPT (GPT-2 architecture: learned positions, LayerNorm,
GELU-tanh, tied embeddings) written in plain torch, trained with AdamW on random tokens. Prints one JSON line with the
median step time.

Usage: python3 torch_cpu_gpt.py HIDDEN LAYERS HEADS VOCAB SEQ BATCH STEPS THREADS
"""
import json, math, statistics, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

H, L, NH, V, T, B, STEPS, THREADS = (int(a) for a in sys.argv[1:9])
torch.set_num_threads(THREADS)
torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(H), nn.LayerNorm(H)
        self.c_attn, self.c_proj = nn.Linear(H, 3 * H), nn.Linear(H, H)
        self.c_fc, self.mlp_proj = nn.Linear(H, 4 * H), nn.Linear(4 * H, H)
        self.register_buffer("mask", torch.full((T, T), float("-inf")).triu(1))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(H, dim=2)
        q, k, v = (z.view(b, t, NH, H // NH).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(H // NH) + self.mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, H)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, H), nn.Embedding(T, H)
        self.h = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(H)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.h:
            x = blk(x)
        return self.ln_f(x) @ self.wte.weight.t()


model = GPT()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
n_params = sum(p.numel() for p in model.parameters())
x = torch.randint(0, V, (B, T + 1))
times = []
for step in range(STEPS):
    t0 = time.perf_counter()
    logits = model(x[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t0)
ms = statistics.median(times[2:]) * 1000
print(json.dumps({"impl": "pytorch " + torch.__version__, "params": n_params, "ms_per_step": round(ms, 2),
                  "tokens_per_s": round(B * T / ms * 1000), "threads": THREADS}))

"""Export a HuggingFace model to ONNX as a user would: built from its config with transformers' defaults (attention
"sdpa", i.e. torch's scaled_dot_product_attention), exported by torch.onnx with dynamic batch and sequence axes,
input input_ids and output logits. For benchmarks of imported models (bench/cuda_hf_import_bench.sh).

    python3 bench/hf_export.py MODEL EXPORTER OUT.onnx [--layers N]
      MODEL     gpt2 (GPT-2 124M), tinyllama (TinyLlama-1.1B's shape: hidden 2048, 22 layers, 32 heads, 4 KV heads)
                or qwen2 (Qwen2-0.5B's shape: hidden 896, 24 layers, 14 heads, 2 KV heads, biased Q, K, V products,
                vocabulary 151936 tied to the embedding)
      EXPORTER  dynamo or torchscript (opset 17; Llama's grouped-query SDPA does not export this way)

The weights are the config's random initialisation, perturbed (N(0, 0.02) added to every parameter) as a trained
checkpoint would be: freshly initialised LayerNorm weights (all ones) and biases (all zeros) would otherwise be
merged or dropped by the exporter's constant deduplication. The dynamo exporter needs onnxscript.
"""
import argparse
import os

import torch
import transformers as tf


def build(name, layers):
    if name == "gpt2":
        cfg = tf.GPT2Config(use_cache=False)
        if layers:
            cfg.n_layer = layers
        model = tf.GPT2LMHeadModel(cfg)
    elif name == "tinyllama":
        cfg = tf.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                             num_hidden_layers=layers or 22, num_attention_heads=32, num_key_value_heads=4,
                             max_position_embeddings=2048, use_cache=False)
        model = tf.LlamaForCausalLM(cfg)
    elif name == "qwen2":
        cfg = tf.Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                             num_hidden_layers=layers or 24, num_attention_heads=14, num_key_value_heads=2,
                             max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                             tie_word_embeddings=True, use_sliding_window=False, use_cache=False)
        model = tf.Qwen2ForCausalLM(cfg)
    else:
        raise SystemExit(f"unknown model {name!r} (gpt2, tinyllama, qwen2)")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("exporter", choices=["dynamo", "torchscript"])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(0)
    module = Logits(build(a.model, a.layers))
    ids = torch.zeros(2, 128, dtype=torch.long)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    names = dict(input_names=["input_ids"], output_names=["logits"], dynamic_axes=dyn)
    if a.exporter == "dynamo":
        torch.onnx.export(module, (ids,), a.out, dynamo=True, **names)
    else:
        import transformers.masking_utils as mu
        if hasattr(mu, "find_packed_sequence_indices"):  # uses aten::diff, which the TorchScript exporter lacks
            mu.find_packed_sequence_indices = lambda *args, **kw: None
        torch.onnx.export(module, (ids,), a.out, dynamo=False, opset_version=17, do_constant_folding=True, **names)
    size = sum(os.path.getsize(os.path.join(os.path.dirname(os.path.abspath(a.out)), f))
               for f in os.listdir(os.path.dirname(os.path.abspath(a.out)) or ".")
               if f.startswith(os.path.basename(a.out)))
    print(f"exported {a.model} ({a.exporter}) to {a.out}: {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

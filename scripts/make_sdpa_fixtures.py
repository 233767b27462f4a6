"""The project's own HF fixtures: tiny GPT-2 and Llama with HuggingFace's default attention ("sdpa"), exported by
torch.onnx's dynamo exporter, in the format of ../shared/fixtures/hf (its README): model.onnx, reference.safetensors
(PyTorch's float64 logits, loss and gradients), samples.safetensors and meta.json.

The shared fixtures export eager attention (MatMul, Softmax, MatMul as HF writes it); a user's export of a model
built with transformers' defaults carries torch's scaled_dot_product_attention instead, which the exporters decompose
their own ways: dynamo with sqrt(scale) on Q and on K, K transposed through a 3-D reshape, a NaN guard after the
Softmax and GQA repeats via Expand; TorchScript (opset 17) with a reshape of the output to its own shape, and with
transformers 5.17 (the version of ../shared's fixtures) a NaN guard as well. These fixtures keep those forms under
test (tests/hf_fixtures.h: names with "_sdpa"). The TorchScript exporter cannot export Llama's grouped-query SDPA
(enable_gqa), so there is no llama_sdpa_ts. The committed ones: gpt2_sdpa, llama_sdpa and gpt2_sdpa_ts made with
torch 2.9.1 and transformers 5.24.0; gpt2_sdpa_guard_ts with torch 2.11.0 and transformers 5.17.0 (meta.json records
the transformers version).

Runs where torch, transformers, onnx, onnxscript, onnxruntime and safetensors are installed (CPU is enough):
    python3 scripts/make_sdpa_fixtures.py [OUTDIR [NAME ...]]   (default: tests/data/hf_sdpa, all four)
It drives ../shared/tools/make_fixtures.py (the shared fixtures' own script) with the attention switched to sdpa.
"""
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "shared", "tools", "make_fixtures.py")


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "data", "hf_sdpa")
    spec = importlib.util.spec_from_file_location("make_fixtures", TOOLS)
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    eager_build = mf.build

    def sdpa_build(name):
        model, cfg, kind = eager_build(name)
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("sdpa")
        else:
            model.config._attn_implementation = "sdpa"
        assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
        return model, cfg, kind

    mf.build = sdpa_build
    names = sys.argv[2:] or ("gpt2_sdpa", "llama_sdpa", "gpt2_sdpa_ts", "gpt2_sdpa_guard_ts")
    for name in names:
        meta = mf.make(name, outdir)
        dynamo = not name.endswith("_ts")
        if dynamo or "guard" in name:
            assert "IsNaN" in meta["ops"], f"{name}: no NaN guard in the export ({meta['ops']})"
        meta["attention"] = "sdpa (transformers' default), exported by torch.onnx " + ("dynamo" if dynamo else "torchscript")
        with open(os.path.join(outdir, name, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(name, "ops", meta["ops"], "loss", meta["loss_at_init"], "ort err", meta["onnxruntime_max_abs_err"])


if __name__ == "__main__":
    main()

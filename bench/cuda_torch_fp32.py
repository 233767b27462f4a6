"""Runs ../shared/tools/torch_baseline.py in float32: autocast replaced by a no-op, TF32 off (PyTorch's default for
matmuls, stated here), so that it computes what galvatron's --device cuda float32 step computes.

Usage: python3 bench/cuda_torch_fp32.py PATH/TO/torch_baseline.py SIZE BATCH SEQ MODE
"""
import contextlib
import runpy
import sys

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.autocast = lambda *a, **k: contextlib.nullcontext()
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")

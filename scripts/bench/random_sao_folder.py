"""Random weights at Stable Audio Open's real sizes, in the published folders' layouts, with torch
alone (no diffusers, no safetensors package), so that a bare GPU machine can build them.

    python scripts/bench/random_sao_folder.py open-small /tmp/sao-small
    python scripts/bench/random_sao_folder.py open-1.0 /tmp/sao-1.0

The shapes come from `worker/model/tests/fixtures/sao-shapes/<name>`: the real configs, and each
weight file's safetensors header (`X.header.json`, written by scripts/fixtures/stable_audio_shapes.py
from the references' own modules). Each `X.header.json` becomes a file `X` of the same header and
random data; every other file is copied. Weights are drawn at 1/sqrt(fan-in), norms and weight-norm
gains are one and Snake parameters zero (log scale), so activations stay finite in bf16. What is
measured with them is speed, not sound.
"""

import ctypes
import json
import math
import os
import shutil
import sys

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHAPES = os.path.join(ROOT, "worker", "model", "tests", "fixtures", "sao-shapes")
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def draw(name, shape, g):
    last = name.rsplit(".", 1)[-1]
    if last in ("alpha", "beta") or ("snake" in name and last != "weight"):
        return torch.zeros(shape)  # Snake's log-scale parameters
    if last == "weight_g" or (len(shape) == 1 and ("norm" in name or "layer_norm" in name)):
        return torch.ones(shape)
    if last == "bias" or len(shape) == 0:
        return torch.zeros(shape)
    if "embed" in name and "relative" not in name and len(shape) == 2 and "weight" in last:
        return torch.randn(shape, generator=g)  # token embedding: unit rows, as T5's
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1))


def write(header_path, out_path, g):
    with open(header_path, "rb") as f:
        raw = f.read()
    header = json.loads(raw)
    entries = sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]
    )
    with open(out_path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        pos = 0
        tied = {}  # T5 ties its token embedding: encoder.embed_tokens.weight is shared.weight
        for name, e in entries:
            start, end = e["data_offsets"]
            assert start == pos, f"{header_path}: {name} starts at {start}, not {pos}"
            key = "shared.weight" if name.endswith("embed_tokens.weight") and "shared.weight" in header else name
            if key not in tied:
                tied[key] = draw(key, e["shape"], g).to(DTYPES[e["dtype"]]).contiguous()
            t = tied.pop(key) if key == name and key != "shared.weight" else tied[key]
            assert t.numel() * t.element_size() == end - start, name
            f.write(ctypes.string_at(t.data_ptr(), end - start))
            pos = end


def build(src, dst, g):
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s):
            build(s, d, g)
        elif name.endswith(".header.json"):
            write(s, d[: -len(".header.json")], g)
        else:
            shutil.copy(s, d)


def main():
    if len(sys.argv) != 3 or not os.path.isdir(os.path.join(SHAPES, sys.argv[1])):
        names = ", ".join(sorted(os.listdir(SHAPES)))
        sys.exit(f"usage: random_sao_folder.py NAME OUT_DIR (NAME: one of {names})")
    name, out = sys.argv[1], sys.argv[2]
    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        return
    shutil.rmtree(out, ignore_errors=True)
    build(os.path.join(SHAPES, name), out, torch.Generator().manual_seed(20261204))
    open(done, "w").close()


if __name__ == "__main__":
    main()

"""diffusers' StableAudioPipeline (0.42.1) on a diffusers-layout Stable Audio folder: what an
operator would otherwise run on the GPU, timed as `tutti bench stable-audio` times tutti (whole
clips: text encoder, every step, the VAE decode), eager or with `torch.compile` on the
transformer. One JSON line per batch size on stdout.

    python scripts/bench/diffusers_peer.py FOLDER [--device cuda] [--dtype bf16] [--batches 1,8,32]
        [--steps 100] [--guidance 7] [--seconds 11] [--runs 2] [--compile]

FOLDER is a diffusers `StableAudioPipeline` folder (model_index.json, transformer/, vae/,
text_encoder/, projection_model/, tokenizer/, scheduler/): scripts/bench/random_sao_folder.py
open-1.0 builds one at SAO 1.0's sizes. SAO Small has no diffusers pipeline (a single seconds
conditioner and a rectified-flow sampler that diffusers' StableAudioPipeline does not take), so
only SAO 1.0 is compared.

Before the timed runs each batch size runs once with 2 steps (the compiled transformer compiles
for that shape there; cuDNN and cuBLAS pick their algorithms). Each run is timed from the call to
the pipeline until the GPU is idle. The pipeline draws its noise from a seeded generator; the
speed does not depend on it.
"""

import argparse
import json
import statistics
import sys
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--seconds", type=float, default=11.0)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    ap.add_argument("--compile-mode", default=None, help="torch.compile's mode (default: its default)")
    ap.add_argument("--prompt", default="warm analog synth pads with a slow drum groove")
    a = ap.parse_args(argv)

    from diffusers import StableAudioPipeline

    device = torch.device(a.device)
    dtype = DTYPES[a.dtype]
    t = time.perf_counter()
    pipe = StableAudioPipeline.from_pretrained(a.folder, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    if a.compile:
        pipe.transformer = torch.compile(pipe.transformer, mode=a.compile_mode)
    sync(device)
    load_s = time.perf_counter() - t
    mode = "compile" if a.compile else "eager"

    def clip(batch, steps):
        g = torch.Generator(device=device).manual_seed(7)
        out = pipe(
            prompt=[a.prompt] * batch,
            num_inference_steps=steps,
            guidance_scale=a.guidance,
            audio_end_in_s=a.seconds,
            generator=g,
            output_type="pt",
        )
        sync(device)
        return out.audios

    for batch in [int(b) for b in a.batches.split(",") if b]:
        print(f"diffusers {mode}: batch {batch}, warm-up", file=sys.stderr, flush=True)
        t = time.perf_counter()
        with torch.inference_mode():
            clip(batch, 2)
        warmup_s = time.perf_counter() - t
        runs = []
        for r in range(a.runs):
            print(f"diffusers {mode}: batch {batch}, {a.steps} steps, run {r + 1}/{a.runs}",
                  file=sys.stderr, flush=True)
            t = time.perf_counter()
            with torch.inference_mode():
                audio = clip(batch, a.steps)
            runs.append(time.perf_counter() - t)
        assert audio.shape[0] == batch and bool(torch.isfinite(audio).all()), "non-finite audio"
        per_clip = statistics.median(runs) / batch
        print(json.dumps({
            "side": "diffusers",
            "mode": mode,
            "device": str(device),
            "dtype": a.dtype,
            "batch": batch,
            "steps": a.steps,
            "guidance": a.guidance,
            "seconds": a.seconds,
            "load_s": load_s,
            "warmup_s": warmup_s,
            "runs_s": runs,
            "per_clip_s": per_clip,
            "clips_per_hour": 3600.0 / per_clip,
            "audio_shape": list(audio.shape),
        }), flush=True)


if __name__ == "__main__":
    main()

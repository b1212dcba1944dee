"""tutti against diffusers' AceStepPipeline on ACE-Step 1.5 turbo at its real sizes, on the same
random weights, the same CPU and threads, the same initial noise, in one run, side by side.

    PYTHONPATH=$TUTTI_HOME/pyref python scripts/bench/ace_step.py [--seconds 30] [--steps 8]

in the project venv (scripts/setup installs diffusers 0.42.1 into $TUTTI_HOME/pyref), with a
release build of tutti (`cargo build --release -p tutti --bin tutti`; `--tutti PATH` to name
another binary).

1. Builds the folder once under ~/.cache/tutti/bench/ace-step-turbo (reused when present):
   `AceStepPipeline.save_pretrained` of diffusers' own classes at the 2B turbo's configs (DiT
   1.58B, condition encoder 0.61B, Qwen3-Embedding-0.6B's shape, the 48 kHz Oobleck VAE), every
   weight drawn at random by the classes' own initialisers (seeded) and stored in bf16 (half the
   disk; both sides load it as f32). The tokenizer is the small byte-level BPE of
   scripts/fixtures/ace_step_tiny.py (the text encoder still runs its full width and depth).
2. Imports it with `tutti model import` (pack beside it).
3. Runs `tutti bench ace-step` (one song: prepare = tokenizers, text encoder, lyric embeddings,
   condition encoder, noise; each DiT step; the decode), then the reference in a process of its
   own with tutti's initial noise passed as `latents=`, the same prompt, lyrics, steps and shift;
   both in f32 with the same thread count (`--device cuda`: both in bf16 on the GPU). Checks that
   the final latents agree.
4. Prints a markdown table (also ~/.cache/tutti/bench/ace_step.md).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HOME = os.environ.get("TUTTI_HOME", os.path.expanduser("~/.cache/tutti"))
BENCH = os.path.join(HOME, "bench")
FOLDER = os.path.join(BENCH, "ace-step-turbo")
PACK = os.path.join(BENCH, "packs", "ace-step-turbo")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROMPT = "upbeat pop, female vocals, 120 BPM, C major"
LYRICS = "[verse]\nCity lights are calling me tonight\n[chorus]\nWe run, we run"


def build_folder():
    import torch
    from transformers import Qwen3Config, Qwen3Model

    sys.path.insert(0, os.path.join(ROOT, "scripts", "fixtures"))
    import ace_step_tiny
    from diffusers import AceStepPipeline, AceStepTransformer1DModel, AutoencoderOobleck
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder

    torch.manual_seed(0)
    tok = ace_step_tiny.tokenizer(None)
    text = Qwen3Model(
        Qwen3Config(
            vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
            rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=True,
        )
    )
    transformer = AceStepTransformer1DModel(is_turbo=True, model_version="turbo", encoder_hidden_size=2048)
    condition = AceStepConditionEncoder()
    with torch.no_grad():
        condition.silence_latent.copy_(0.5 * torch.randn_like(condition.silence_latent))
    vae = AutoencoderOobleck(
        encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10],
        channel_multiples=[1, 2, 4, 8, 16], decoder_channels=128, decoder_input_channels=64,
        audio_channels=2, sampling_rate=48000,
    )
    pipe = AceStepPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, transformer=transformer,
        condition_encoder=condition,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
    )
    pipe.to(torch.bfloat16)
    pipe.save_pretrained(FOLDER, safe_serialization=True)


def reference(args, noise_path):
    """Runs in its own process: diffusers' pipeline on tutti's noise, stage by stage."""
    import torch
    from safetensors.torch import load_file, save_file
    from diffusers import AceStepPipeline

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    t = time.perf_counter()
    pipe = AceStepPipeline.from_pretrained(FOLDER, torch_dtype=dtype).to(args.device)
    load_s = time.perf_counter() - t
    noise = load_file(noise_path)["noise"].transpose(1, 2).contiguous().to(args.device, dtype)  # [1, T, C]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    marks = {}

    def timed(module, name):
        def pre(*_a, **_k):
            sync()
            marks.setdefault(name + "_start", []).append(time.perf_counter())

        def post(*_a, **_k):
            sync()
            marks.setdefault(name + "_end", []).append(time.perf_counter())

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post, with_kwargs=True)

    timed(pipe.text_encoder, "text")
    timed(pipe.condition_encoder, "condition")
    timed(pipe.transformer, "dit")
    timed(pipe.vae.decoder, "decode")
    with torch.no_grad():
        t = time.perf_counter()
        out = pipe(
            prompt=PROMPT, lyrics=LYRICS, vocal_language="en", audio_duration=args.seconds,
            num_inference_steps=args.steps, guidance_scale=1.0, shift=3.0, latents=noise,
            output_type="latent",
        ).audios
        sync()
        denoised = time.perf_counter()
        pipe.vae.decode(out.transpose(1, 2))
        sync()
        end = time.perf_counter()
    steps = [e - s for s, e in zip(marks["dit_start"], marks["dit_end"])]
    prepare = marks["dit_start"][0] - t
    save_file({"latent": out.transpose(1, 2).float().cpu().contiguous()}, noise_path + ".ref")
    return {
        "side": "diffusers", "threads": torch.get_num_threads(), "load_s": load_s,
        "prepare_s": prepare, "text_s": marks["text_end"][0] - marks["text_start"][0],
        "condition_s": marks["condition_end"][0] - marks["condition_start"][0],
        "steps_s": steps, "denoise_s": denoised - marks["dit_start"][0],
        "decode_s": end - denoised, "total_s": prepare + (denoised - marks["dit_start"][0]) + (end - denoised),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    # On CUDA both sides run bf16 (tutti: --precision auto, its DiT bf16 and VAE f16); the
    # latents then agree to the precision, not bit for bit.
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tutti", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "tutti"))
    ap.add_argument("--reference-only", metavar="NOISE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_only:
        print(json.dumps(reference(args, args.reference_only)))
        return
    os.makedirs(BENCH, exist_ok=True)
    if not os.path.exists(os.path.join(FOLDER, "model_index.json")):
        print("building the random real-size folder (once) ...", file=sys.stderr)
        build_folder()
    if not os.path.exists(os.path.join(PACK, "model.toml")):
        subprocess.run([args.tutti, "model", "import", FOLDER, "-o", PACK], check=True)
    out = os.path.join(BENCH, "ace_step_tutti.safetensors")
    tutti = json.loads(subprocess.run(
        [args.tutti, "bench", "ace-step", "--pack", PACK, "--seconds", str(args.seconds),
         "--steps", str(args.steps), "--threads", str(args.threads), "--prompt", PROMPT,
         "--device", args.device, "--precision", "auto" if args.device != "cpu" else "f32",
         "--lyrics", LYRICS, "--out", out],
        check=True, capture_output=True, text=True,
    ).stdout)
    ref = json.loads(subprocess.run(
        [sys.executable, __file__, "--seconds", str(args.seconds), "--steps", str(args.steps),
         "--threads", str(args.threads), "--device", args.device, "--reference-only", out],
        check=True, capture_output=True, text=True,
    ).stdout)
    import torch
    from safetensors.torch import load_file

    ours = load_file(out)["latent"].double()
    theirs = load_file(out + ".ref")["latent"].double()
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    rows = [
        ("prepare (text, lyrics, condition, noise)", "prepare_s"),
        ("denoise (%d DiT steps)" % args.steps, "denoise_s"),
        ("decode (Oobleck VAE)", "decode_s"),
        ("total", "total_s"),
    ]
    lines = [
        "ACE-Step 1.5 turbo, real sizes, random weights, %s on %s, %d threads: a %.0f s song (%d latent frames)"
        % ("f32" if args.device == "cpu" else "bf16", args.device, args.threads, args.seconds, tutti["frames"]),
        "",
        "| stage | tutti (s) | diffusers 0.42.1 (s) | diffusers / tutti |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, key in rows:
        lines.append("| %s | %.2f | %.2f | %.2fx |" % (label, tutti[key], ref[key], ref[key] / tutti[key]))
    lines += ["", "final latents: relative L2 difference %.2e (same noise, same weights)" % rel]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(BENCH, "ace_step.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()

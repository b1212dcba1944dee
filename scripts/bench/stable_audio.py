"""tutti against the Python references on Stable Audio Open Small and 1.0 at their real sizes, on
the same random weights, the same CPU, the same seed and noise, in one run, side by side.

    python scripts/bench/stable_audio.py [--models small,1.0] [--steps-1-0 3] [--rounds 1]

in the project venv, with a release build of tutti (`cargo build --release -p tutti --bin tutti`;
`--tutti PATH` to name another binary). Needs diffusers 0.42.1, transformers 5.24.0, torchsde 0.2.6,
einops, and stable-audio-tools 0.0.19 unpacked (not installed: it pins old torch) with the few
modules its DiT, sampler, conditioners and Oobleck decoder import:

    pip install diffusers==0.42.1 transformers==5.24.0 torchsde==0.2.6 einops einops-exts numpy
    pip install --no-deps torchaudio==2.11.0 alias-free-torch==0.0.6
    pip download --no-deps stable-audio-tools==0.0.19 -d ~/.cache/tutti/bench/sat
    (cd ~/.cache/tutti/bench/sat && python -m zipfile -e stable_audio_tools-0.0.19-py3-none-any.whl .)

What it does:
1. Builds the folders once under ~/.cache/tutti/bench (reused when present): `sao-1.0/`, a
   diffusers `StableAudioPipeline.save_pretrained` at SAO 1.0's sizes (DiT 1.06B, t5-base, Oobleck);
   `sao-small/`, a stable-audio-tools checkpoint at SAO Small's sizes (its own DiffusionTransformer,
   341M) with `model_config.json`, and `t5-base/` for it. Every weight is drawn at random (f32) with
   scales that keep activations finite; the tokenizer is a small Unigram vocabulary (the T5 still
   runs on the full 128 / 64 padded tokens).
2. Imports them with `tutti model import` (packs under ~/.cache/tutti/bench/packs).
3. For each model and round, runs `tutti bench stable-audio` and the reference, each in a process of
   its own (one at a time: the machine has 2 cores), alternating which goes first. Each side loads,
   warms up (prepare, one step, a decode of 16 latent frames) and times one clip of 11 s: prepare
   (tokenizer, T5, conditioning, noise), each step, the VAE decode. Both draw the initial latent and
   the per-step noise from tutti's seeded noise (the reference's torchsde / randn noise is replaced
   by the same tensors), and the driver checks that the two final latents and audio agree.
4. Writes a markdown table (stdout and ~/.cache/tutti/bench/stable_audio.md).

References: SAO 1.0: diffusers' StableAudioPipeline (its default 100 steps, guidance 7, the
stochastic CosineDPMSolverMultistepScheduler). SAO Small: stable-audio-tools 0.0.19's own modules
(DiffusionTransformer, NumberConditioner, OobleckDecoder) and its `sample_rf` ping-pong sampler
(8 steps, no CFG), with transformers' T5EncoderModel as its T5Conditioner runs it, wired as its
`generate_diffusion_cond` wires them (cross = [T5 * mask ; seconds_total], global = seconds_total).

On 2 shared cores SAO 1.0 at 100 steps takes over an hour a side: `--steps-1-0` (default 3) sets
the steps it is timed at; the table gives its per-step and decode times as measured and a 100-step
clip computed from them, marked as computed.
"""

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import types

HOME = os.environ.get("TUTTI_HOME", os.path.expanduser("~/.cache/tutti"))
BENCH = os.path.join(HOME, "bench")
SAT_DIR = os.environ.get("SAT_DIR", os.path.join(BENCH, "sat"))
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "scripts", "fixtures")
DIRS = {"1.0": os.path.join(BENCH, "sao-1.0"), "small": os.path.join(BENCH, "sao-small")}
T5_DIR = os.path.join(BENCH, "t5-base")
PACKS = {m: os.path.join(BENCH, "packs", f"sao-{m}") for m in DIRS}
DONE = ".complete"

PROMPT = "warm analog synth pads with a slow drum groove"
SECONDS = 11.0
SEED = 7
WARMUP_FRAMES = 16
# Stable Audio Open Small's DiT (stable-audio-tools names).
SMALL_DIT = dict(io_channels=64, embed_dim=1024, depth=16, num_heads=8, cond_token_dim=768, global_cond_dim=768)
VAE_STRIDES, VAE_MULTS = [2, 4, 4, 8, 8], [1, 2, 4, 8, 16]


def imports():
    """The reference stack (heavy imports: only in the processes that need it)."""
    import torch

    sys.path.insert(0, SAT_DIR)
    # sat's sampling module imports k_diffusion at the top; only samplers not used here call it.
    sys.modules.setdefault("k_diffusion", types.ModuleType("k_diffusion"))
    sys.path.insert(0, FIXTURES)
    import stable_audio as fx  # the fixture's seeded noise and weight redraw

    return torch, fx


# --- building the folders -------------------------------------------------------------------


def tokenizer(max_length):
    from transformers import T5Tokenizer

    words = sorted(set(PROMPT.split()))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0 - 0.1 * i) for i, w in enumerate(words)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def t5_base(fx, g):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
                   feed_forward_proj="relu", is_encoder_decoder=False, use_cache=False, pad_token_id=0,
                   eos_token_id=1, decoder_start_token_id=0)
    m = T5EncoderModel(cfg).eval()
    fx.redraw(m, g)
    return m


def oobleck(fx, g):
    from diffusers import AutoencoderOobleck

    vae = AutoencoderOobleck().eval()  # diffusers' defaults are SAO's VAE
    fx.redraw(vae, g)
    return vae


def build_1_0(torch, fx, g):
    from diffusers import CosineDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    dit = StableAudioDiTModel().eval()  # diffusers' defaults are SAO 1.0's
    proj = StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512)
    for m in (dit, proj):
        fx.redraw(m.eval(), g)
    sched = CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, sigma_data=1.0,
                                              sigma_schedule="exponential", solver_order=2,
                                              prediction_type="v_prediction", final_sigmas_type="zero")
    pipe = StableAudioPipeline(vae=oobleck(fx, g), text_encoder=t5_base(fx, g), projection_model=proj,
                               tokenizer=tokenizer(128), transformer=dit, scheduler=sched)
    pipe.save_pretrained(DIRS["1.0"])


def build_small(torch, fx, g):
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
    from safetensors.torch import save_file
    from stable_audio_small import diffusers_to_sat_vae
    from stable_audio_tools.models.dit import DiffusionTransformer

    t5 = t5_base(fx, g)
    os.makedirs(T5_DIR, exist_ok=True)
    t5.save_pretrained(T5_DIR)
    tokenizer(512).save_pretrained(T5_DIR)  # t5-base's own length; the model config says 64
    del t5
    dit = DiffusionTransformer(**SMALL_DIT, diffusion_objective="rf_denoiser").eval()
    fx.redraw(dit, g)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if name.endswith(".beta"):  # zero in sat's init; a norm bias like any other here
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    ckpt = {f"model.model.{k}": v for k, v in dit.state_dict().items()}
    del dit
    proj = StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=256)
    fx.redraw(proj, g)
    for k, v in proj.end_number_conditioner.state_dict().items():
        ckpt["conditioner.conditioners.seconds_total.embedder.embedding." + k.split(".", 1)[1]] = v
    ckpt.update(diffusers_to_sat_vae(oobleck(fx, g).state_dict(), len(VAE_STRIDES)))
    os.makedirs(DIRS["small"], exist_ok=True)
    save_file({k: v.contiguous() for k, v in ckpt.items()}, os.path.join(DIRS["small"], "model.safetensors"))
    enc = {"in_channels": 2, "channels": 128, "c_mults": VAE_MULTS, "strides": VAE_STRIDES, "latent_dim": 128,
           "use_snake": True}
    dec = {"out_channels": 2, "channels": 128, "c_mults": VAE_MULTS, "strides": VAE_STRIDES, "latent_dim": 64,
           "use_snake": True, "final_tanh": False}
    config = {
        "model_type": "diffusion_cond", "sample_size": 524288, "sample_rate": 44100, "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
                "encoder": {"type": "oobleck", "config": enc}, "decoder": {"type": "oobleck", "config": dec},
                "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048, "io_channels": 2}},
            "conditioning": {"configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}}],
                "cond_dim": 768},
            "diffusion": {"cross_attention_cond_ids": ["prompt", "seconds_total"],
                          "global_cond_ids": ["seconds_total"], "diffusion_objective": "rf_denoiser",
                          "type": "dit", "config": dict(SMALL_DIT, transformer_type="continuous_transformer")},
            "io_channels": 64,
        },
    }
    with open(os.path.join(DIRS["small"], "model_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def build(model):
    """Builds a model's folder unless a complete one is there."""
    if os.path.exists(os.path.join(DIRS[model], DONE)):
        return
    torch, fx = imports()
    torch.set_num_threads(os.cpu_count() or 1)
    shutil.rmtree(DIRS[model], ignore_errors=True)
    if model == "small":
        shutil.rmtree(T5_DIR, ignore_errors=True)
    print(f"building the random SAO {model} folder in {DIRS[model]} (once)", file=sys.stderr)
    t = time.time()
    g = torch.Generator().manual_seed(20261203 if model == "1.0" else 20261204)
    (build_1_0 if model == "1.0" else build_small)(torch, fx, g)
    open(os.path.join(DIRS[model], DONE), "w").close()
    print(f"built in {time.time() - t:.0f} s", file=sys.stderr)


def import_pack(tutti, model):
    pack = PACKS[model]
    if os.path.exists(os.path.join(pack, "model.toml")):
        return pack
    shutil.rmtree(pack, ignore_errors=True)
    os.makedirs(os.path.dirname(pack), exist_ok=True)
    cmd = [tutti, "model", "import", DIRS[model], "-o", pack]
    if model == "small":
        cmd += ["--t5", T5_DIR]
    subprocess.run(cmd, check=True)
    return pack


# --- the references -------------------------------------------------------------------------


class Clock:
    """Marks of one clip: when each DiT call and the decode started and ended."""

    def __init__(self):
        self.marks = {}
        self.dit_starts = []

    def mark(self, name):
        self.marks[name] = time.perf_counter()

    def run(self, t0, steps, calls_per_step):
        starts = self.dit_starts[::calls_per_step]
        assert len(starts) == steps, (len(starts), steps)
        ends = starts[1:] + [self.marks["decode_start"]]
        return {
            "prepare_s": starts[0] - t0,
            "steps_s": [b - a for a, b in zip(starts, ends)],
            "decode_s": self.marks["decode_end"] - self.marks["decode_start"],
            "total_s": self.marks["end"] - t0,
        }


def timed(clock, fn, start, end):
    def wrapper(*a, **kw):
        clock.mark(start)
        out = fn(*a, **kw)
        clock.mark(end)
        return out

    return wrapper


def reference_1_0(torch, fx, args):
    import diffusers.schedulers.scheduling_cosine_dpmsolver_multistep as cosine_mod
    from diffusers import StableAudioPipeline

    pipe = StableAudioPipeline.from_pretrained(DIRS["1.0"], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    c, t = pipe.transformer.config.in_channels, pipe.transformer.config.sample_size
    init = fx.seeded_noise(SEED, [1, c, t])
    noise = [fx.seeded_noise(fx.step_noise_seed(SEED, i), [1, c, t]) for i in range(args.steps)]
    cosine_mod.BrownianTreeNoiseSampler = fx.InjectedNoise  # the same per-step noise as tutti's
    clock = Clock()
    dit_forward, decode = pipe.transformer.forward, pipe.vae.decode

    def dit(*a, **kw):
        clock.dit_starts.append(time.perf_counter())
        return dit_forward(*a, **kw)

    pipe.transformer.forward = dit
    final = {}

    def vae_decode(latents, *a, **kw):
        final["latent"] = latents.clone()
        return decode(latents, *a, **kw)

    pipe.vae.decode = timed(clock, vae_decode, "decode_start", "decode_end")

    def clip(steps):
        fx.InjectedNoise.queue = list(noise[:steps])
        clock.dit_starts.clear()
        return pipe(args.prompt, num_inference_steps=steps, guidance_scale=args.guidance, audio_end_in_s=args.seconds,
                    latents=init.clone(), output_type="pt").audios

    t0 = time.perf_counter()
    fx.InjectedNoise.queue = list(noise[:1])
    lat = pipe(args.prompt, num_inference_steps=1, guidance_scale=args.guidance, audio_end_in_s=args.seconds,
               latents=init.clone(), output_type="latent").audios
    with torch.no_grad():
        decode(lat[:, :, :WARMUP_FRAMES])
    warmup = time.perf_counter() - t0
    runs = []
    for _ in range(args.runs):
        c0, t0 = time.process_time(), time.perf_counter()
        audio = clip(args.steps)
        clock.mark("end")
        runs.append(clock.run(t0, args.steps, 2 if args.guidance > 1 else 1) | {"cpu_s": time.process_time() - c0})
    return warmup, runs, final["latent"], audio


def reference_small(torch, fx, args):
    from safetensors.torch import load_file
    from stable_audio_tools.inference.sampling import sample_rf
    from stable_audio_tools.models.autoencoders import OobleckDecoder
    from stable_audio_tools.models.conditioners import NumberConditioner
    from stable_audio_tools.models.dit import DiffusionTransformer
    from transformers import T5EncoderModel, T5Tokenizer

    cfg = json.load(open(os.path.join(DIRS["small"], "model_config.json")))["model"]
    ckpt = load_file(os.path.join(DIRS["small"], "model.safetensors"))

    def part(prefix):
        return {k[len(prefix):]: v for k, v in ckpt.items() if k.startswith(prefix)}

    dit = DiffusionTransformer(**SMALL_DIT, diffusion_objective="rf_denoiser").eval()
    dit.load_state_dict(part("model.model."), strict=True)
    seconds = NumberConditioner(768, min_val=0, max_val=256).eval()
    seconds.load_state_dict(part("conditioner.conditioners.seconds_total."), strict=True)
    dec_cfg = cfg["pretransform"]["config"]["decoder"]["config"]
    decoder = OobleckDecoder(**dec_cfg).eval()
    decoder.load_state_dict(part("pretransform.model.decoder."), strict=True)
    del ckpt
    t5 = T5EncoderModel.from_pretrained(T5_DIR, torch_dtype=torch.float32).eval()
    tok = T5Tokenizer.from_pretrained(T5_DIR)
    max_length = cfg["conditioning"]["configs"][0]["config"]["max_length"]
    full = json.load(open(os.path.join(DIRS["small"], "model_config.json")))
    rate, frames = full["sample_rate"], full["sample_size"] // cfg["pretransform"]["config"]["downsampling_ratio"]
    shape = [1, SMALL_DIT["io_channels"], frames]
    init = fx.seeded_noise(SEED, shape)
    noise = [fx.seeded_noise(fx.step_noise_seed(SEED, i), shape) for i in range(args.steps)]
    clock = Clock()

    @torch.no_grad()
    def clip(steps, decode=True):
        # sat's T5Conditioner: pad to max_length, T5, zero the padding; NumberConditioner; then
        # generate_diffusion_cond's layout: cross = [prompt ; seconds_total], global = seconds_total.
        enc = tok([args.prompt], truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
        mask = enc.attention_mask.bool()
        text = t5(input_ids=enc.input_ids, attention_mask=mask)["last_hidden_state"]
        text = text * mask.unsqueeze(-1).float()
        total = seconds([args.seconds])[0]
        cross = torch.cat([text, total], dim=1)
        glob = total.squeeze(1)
        queue = list(noise[:steps])
        clock.dit_starts.clear()

        def model_fn(x, t, **kw):
            clock.dit_starts.append(time.perf_counter())
            return dit(x, t, cross_attn_cond=cross, global_embed=glob, cfg_scale=1.0)

        real = torch.randn_like
        # sample_rf draws each step's noise with randn_like (after the last step too, times 0).
        torch.randn_like = lambda x, *a, **kw: queue.pop(0) if queue else torch.zeros_like(x)
        try:
            latent = sample_rf(model_fn, init.clone(), steps=steps, sampler_type="pingpong", sigma_max=1,
                               device="cpu")
        finally:
            torch.randn_like = real
        if not decode:
            return latent, None
        clock.mark("decode_start")
        audio = decoder(latent)
        clock.mark("decode_end")
        return latent, audio[:, :, : int(args.seconds * rate)]

    t0 = time.perf_counter()
    latent, _ = clip(1, decode=False)
    with torch.no_grad():
        decoder(latent[:, :, :WARMUP_FRAMES])
    warmup = time.perf_counter() - t0
    runs = []
    for _ in range(args.runs):
        c0, t0 = time.process_time(), time.perf_counter()
        latent, audio = clip(args.steps)
        clock.mark("end")
        runs.append(clock.run(t0, args.steps, 1) | {"cpu_s": time.process_time() - c0})
    return warmup, runs, latent, audio


def reference(args):
    torch, fx = imports()
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    loadavg = float(open("/proc/loadavg").read().split()[0])
    t = time.perf_counter()
    fn = reference_1_0 if args.model == "1.0" else reference_small
    with torch.no_grad():
        warmup, runs, latent, audio = fn(torch, fx, args)
    save_file({"latent": latent.contiguous(), "audio": audio.contiguous()}, args.out)
    report = dict(side="reference", model=args.model, threads=torch.get_num_threads(), steps=args.steps,
                  guidance=args.guidance, seconds=args.seconds, warmup_s=warmup, loadavg_at_start=loadavg,
                  runs=runs, wall_s=time.perf_counter() - t)
    print(json.dumps(report))


# --- the driver -----------------------------------------------------------------------------


def cpu_ticks():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(f), sum(f) - f[3] - f[4]


def run_side(cmd):
    """Runs one side; returns its JSON report with the cores other processes kept busy meanwhile."""
    total0, busy0 = cpu_ticks()
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    total1, busy1 = cpu_ticks()
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    hz = os.sysconf("SC_CLK_TCK")
    own = (own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime) * hz
    cpus = os.cpu_count() or 1
    report = json.loads(res.stdout.strip().splitlines()[-1])
    report["others_cores"] = max(0.0, (busy1 - busy0 - own) / max(1, total1 - total0) * cpus)
    return report


def agreement(a_path, b_path):
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    out = {}
    for k in ("latent", "audio"):
        x, y = a[k].double(), b[k].double()
        if x.shape != y.shape:
            out[k] = f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}"
            continue
        out[k] = ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item()
    return out


def mean(xs):
    return sum(xs) / len(xs)


def stages(report):
    r = report["runs"][-1]
    return {"prepare": r["prepare_s"], "step": mean(r["steps_s"]), "steps": sum(r["steps_s"]),
            "decode": r["decode_s"], "clip": r["total_s"], "cpu": r.get("cpu_s")}


def table(results, args):
    lines = [
        "| model | stage | tutti s | reference s | tutti / reference | speed-up |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for model, rounds in results.items():
        for i, (tu, ref, agree) in enumerate(rounds):
            a, b = stages(tu), stages(ref)
            name = f"SAO {model}" + (f" (round {i + 1})" if len(rounds) > 1 else "")
            cfg = f", cfg {tu['guidance']:g}" if tu["guidance"] > 1 else ", no CFG"
            rows = [("prepare (T5, conditioning, noise)", "prepare"), ("one step (mean)", "step"),
                    (f"{tu['steps']} steps{cfg}", "steps"), ("VAE decode", "decode"),
                    (f"clip of {tu['seconds']:g} s, {tu['steps']} steps", "clip")]
            if a["cpu"] and b["cpu"]:
                rows.append(("CPU seconds of the clip (all threads)", "cpu"))
            for label, k in rows:
                lines.append(f"| {name} | {label} | {a[k]:.2f} | {b[k]:.2f} | {a[k] / b[k]:.3f} | {b[k] / a[k]:.2f}x |")
            if model == "1.0" and tu["steps"] != 100:
                ca = a["prepare"] + 100 * a["step"] + a["decode"]
                cb = b["prepare"] + 100 * b["step"] + b["decode"]
                lines.append(f"| {name} | 100-step clip, computed (prepare + 100 x mean step + decode), not run "
                             f"| {ca:.0f} | {cb:.0f} | {ca / cb:.3f} | {cb / ca:.2f}x |")
            notes.append(f"- SAO {model} round {i + 1}: first side {'tutti' if tu['first'] else 'reference'}; "
                         f"other processes kept {tu['others_cores']:.2f} cores busy during tutti's side, "
                         f"{ref['others_cores']:.2f} during the reference's (of {os.cpu_count()}); "
                         f"final latent max rel. diff {fmt(agree['latent'])}, audio {fmt(agree['audio'])}")
    head = [
        f"Stable Audio Open, tutti vs the Python references, same random weights and noise, "
        f"{os.cpu_count()} CPU cores, {args.threads} threads a side, f32, one clip a side after a warm-up, "
        f"sides run one after the other in one run, seconds are wall-clock ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "References: SAO Small = stable-audio-tools 0.0.19 (DiT, sample_rf ping-pong, Oobleck decoder) with "
        "transformers' T5; SAO 1.0 = diffusers 0.42.1 StableAudioPipeline.",
        "",
    ]
    return "\n".join(head + lines + [""] + notes) + "\n"


def fmt(x):
    return f"{x:.2e}" if isinstance(x, float) else str(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = ap.add_subparsers(dest="cmd")
    r = sub.add_parser("reference", help="(internal) one reference side")
    r.add_argument("--model", choices=["small", "1.0"], required=True)
    r.add_argument("--steps", type=int, required=True)
    r.add_argument("--guidance", type=float, required=True)
    r.add_argument("--seconds", type=float, default=SECONDS)
    r.add_argument("--prompt", default=PROMPT)
    r.add_argument("--threads", type=int, required=True)
    r.add_argument("--runs", type=int, default=1)
    r.add_argument("--out", required=True)
    ap.add_argument("--models", default="small,1.0")
    ap.add_argument("--steps-small", type=int, default=8)
    ap.add_argument("--steps-1-0", type=int, default=3, help="steps SAO 1.0 is timed at (its default: 100)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tutti", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                    "release", "tutti"))
    ap.add_argument("--report", default=os.path.join(BENCH, "stable_audio.md"))
    args = ap.parse_args()
    if args.cmd == "reference":
        return reference(args)

    results = {}
    for model in args.models.split(","):
        build(model)
        pack = import_pack(args.tutti, model)
        steps, guidance = (args.steps_small, 1.0) if model == "small" else (args.steps_1_0, 7.0)
        rounds = []
        for i in range(args.rounds):
            out_t = os.path.join(BENCH, f"out-tutti-{model}.safetensors")
            out_r = os.path.join(BENCH, f"out-ref-{model}.safetensors")
            tutti = [args.tutti, "bench", "stable-audio", "--pack", pack, "--steps", str(steps), "--guidance",
                     str(guidance), "--seconds", str(SECONDS), "--seed", str(SEED), "--prompt", PROMPT, "--threads",
                     str(args.threads), "--out", out_t]
            ref = [sys.executable, os.path.abspath(__file__), "reference", "--model", model, "--steps", str(steps),
                   "--guidance", str(guidance), "--threads", str(args.threads), "--out", out_r]
            first_tutti = i % 2 == 0
            print(f"SAO {model} round {i + 1}: {steps} steps, guidance {guidance}", file=sys.stderr)
            if first_tutti:
                tu, rf = run_side(tutti), run_side(ref)
            else:
                rf, tu = run_side(ref), run_side(tutti)
            tu["first"] = first_tutti
            rounds.append((tu, rf, agreement(out_t, out_r)))
            print(json.dumps({"tutti": tu, "reference": rf}), file=sys.stderr)
        results[model] = rounds
    text = table(results, args)
    with open(args.report, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

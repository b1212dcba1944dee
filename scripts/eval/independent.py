"""The independent ear: scores music with pretrained analyzers nobody on the project wrote.

- key and mode: madmom's CNN key recognition (Korzeniowski & Widmer 2018), 24 keys;
- tempo: madmom's RNN beat activations and its comb-filter tempo estimation;
- instruments: musicnn's MagnaTagATune tagger (MTT_musicnn), the asked instrument among the five
  tags of highest mean probability over 3 s windows;
- music gate: audible (RMS above -45 dBFS), onsets (librosa, 0.3-16 a second), and tonal clarity
  (mean CQT chroma correlates >= 0.5 with a Krumhansl-Kessler key profile) or rhythmic clarity
  (the beat activation's autocorrelation peaks >= 0.3 between 0.25 and 2 s).

Run it in the environment `scripts/eval/setup` makes ($TUTTI_HOME/evalenv):

    E=~/.cache/tutti/evalenv/bin/python
    # generate the held-out prompts through `tutti generate` (embedded: the serving path) and score:
    $E scripts/eval/independent.py generate --tutti target/release/tutti --models-dir models \\
        --model tutti-mini --out eval-ind/shipped --seeds 2
    # the analyzers' own accuracy on the rendered training clips (their labels are exact):
    $E scripts/eval/independent.py ceiling --dataset ~/.cache/tutti/train/ds --clips 96 --out eval-ind/ceiling
    # ... and after a 64-mel Griffin-Lim round trip (what the built-in pack's representation keeps):
    $E scripts/eval/independent.py ceiling --dataset ~/.cache/tutti/train/ds --clips 48 --roundtrip-mels 64 --out eval-ind/gl64
    # the tonics a pack renders minor in (prompts other than the held-out ones; for mode_tonics
    # and for choosing between checkpoints): every minor key in 8 settings (piano, guitar, synth
    # and drums, strings, lo-fi, strings and flute, trap, jazz; tonic_calibration_prompts.json
    # holds the first three), worded unlike the held-out prompts:
    $E scripts/eval/independent.py generate ... --prompts scripts/eval/tonic_calibration_wide_prompts.json \\
        --seeds 1 --out eval-ind/tonics && $E scripts/eval/independent.py tonics eval-ind/tonics
    # a training set of the renders heard in their labelled key (for `tutti train denoiser`):
    $E scripts/eval/independent.py curate --dataset ~/.cache/tutti/train/ds --out ~/.cache/tutti/train/ds-heard
    # side by side (DIR+DIR merges runs over other seeds, e.g. --first-seed 2):
    $E scripts/eval/independent.py compare eval-ind/ceiling eval-ind/shipped eval-ind/candidate

Each run writes results.json (one record a clip) and report.md into --out.
"""

import argparse
import atexit
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # musicnn is written for Keras 2
# numba caches librosa's compiled functions beside librosa's sources by default; two runs
# compiling at once leave an index that names the other's machine code, and every later run
# segfaults loading it (librosa.onset's peak picking). Each run (and its workers) gets its own.
if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="tutti-numba-")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PITCHES = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "F": 5, "F#": 6, "Gb": 6,
           "G": 7, "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11}
# The tagger's words for each instrument a prompt may ask for.
TAGS = {
    "piano": {"piano"},
    "guitar": {"guitar"},
    "strings": {"strings", "violin", "cello"},
    "flute": {"flute"},
    "drums": {"drums", "beat", "beats"},
    "synth": {"synth", "electronic"},
}
# The dataset's instrument families, as the tagger's instruments (None: the tagger has no tag).
FAMILY_TAG = {"piano": "piano", "electric piano": "piano", "acoustic guitar": "guitar",
              "electric guitar": "guitar", "strings": "strings", "flute": "flute",
              "synth pad": "synth", "drums": "drums", "organ": None, "bass": None}
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


class Ear:
    """The analyzers, loaded once."""

    def __init__(self):
        from madmom.features.beats import RNNBeatProcessor
        from madmom.features.key import CNNKeyRecognitionProcessor
        from madmom.features.tempo import TempoEstimationProcessor

        self.key = CNNKeyRecognitionProcessor()
        self.beats = RNNBeatProcessor()
        self.tempo = TempoEstimationProcessor(fps=100)

    def analyze(self, wave, sr, path):
        import librosa

        sig = signal44(wave, sr)
        key = hear(self.key, sig)
        act = self.beats(sig)
        tempi = self.tempo(act)
        bpm = float(tempi[0][0]) if len(tempi) else 0.0
        x16 = librosa.resample(wave, orig_sr=sr, target_sr=16000)
        rms_db = 20 * np.log10(np.sqrt(np.mean(x16 ** 2)) + 1e-12)
        onsets = librosa.onset.onset_detect(y=x16, sr=16000, units="time")
        onset_rate = len(onsets) / (len(x16) / 16000)
        chroma = librosa.feature.chroma_cqt(y=x16, sr=16000).mean(axis=1)
        tonal = max(np.corrcoef(chroma, np.roll(p, k))[0, 1] for p in (KK_MAJOR, KK_MINOR) for k in range(12))
        a = act - act.mean()
        ac = np.correlate(a, a, "full")[len(a) - 1:]
        ac = ac / (ac[0] + 1e-12)
        rhythmic = float(ac[25:201].max()) if len(ac) > 201 else 0.0
        music = bool(rms_db > -45 and 0.3 <= onset_rate <= 16 and (tonal >= 0.5 or rhythmic >= 0.3))
        tags = tagger_top5(path)
        return {"key": key["label"], "key_tonic": key["tonic"], "key_mode": key["mode"],
                "key_confidence": key["p"], "bpm": bpm, "tags": tags,
                "rms_dbfs": float(rms_db), "onsets_per_s": float(onset_rate),
                "tonal_clarity": float(tonal), "rhythmic_clarity": rhythmic, "music": music}


def signal44(wave, sr):
    """madmom's input: the clip at 44.1 kHz."""
    import librosa
    from madmom.audio.signal import Signal

    return Signal(librosa.resample(wave, orig_sr=sr, target_sr=44100).astype(np.float32),
                  sample_rate=44100)


def hear(key_network, sig):
    """The key network's label of a clip: tonic (pitch class), mode and top probability."""
    from madmom.features.key import key_prediction_to_label

    probs = key_network(sig)[0]
    label = key_prediction_to_label(probs[None, :])
    tonic_name, mode = label.split()
    return {"label": label, "tonic": PITCHES[tonic_name], "mode": mode, "p": float(probs.max())}


def read_render(dataset, clip_id):
    """A rendered training clip's samples in [-1, 1] (16-bit PCM, as `tutti train dataset` writes)."""
    raw = np.fromfile(os.path.join(dataset, "audio", f"{clip_id:06}.i16"), dtype="<i2")
    return raw.astype(np.float32) / 32767.0


def tagger_top5(path):
    from musicnn.extractor import extractor

    taggram, tags = extractor(path, model="MTT_musicnn", input_length=3, input_overlap=False,
                              extract_features=False)
    mean = taggram.mean(axis=0)
    return [tags[i] for i in np.argsort(-mean)[:5]]


def score(rec, asked):
    """Hits of one clip against what was asked."""
    out = {}
    if asked.get("mode"):
        out["mode_hit"] = rec["key_mode"] == asked["mode"]
    if asked.get("tonic") is not None:
        tonic = asked["tonic"] if isinstance(asked["tonic"], int) else PITCHES[asked["tonic"]]
        out["key_hit"] = out.get("mode_hit", True) and rec["key_tonic"] == tonic
    if asked.get("bpm"):
        ratio = rec["bpm"] / asked["bpm"] if asked["bpm"] else 0
        out["tempo_hit"] = abs(ratio - 1) <= 0.08
        out["tempo_level_hit"] = any(abs(ratio / m - 1) <= 0.08 for m in (1, 2, 0.5, 1.5, 2 / 3))
    wanted = [i for i in asked.get("instruments", []) if i in TAGS]
    if wanted:
        out["instrument_hits"] = [bool(TAGS[i] & set(rec["tags"])) for i in wanted]
    return out


def load(path):
    wave, sr = sf.read(path, dtype="float32", always_2d=True)
    return wave.mean(axis=1), sr


def generate(args):
    prompts = json.load(open(args.prompts))
    if args.tonics:  # e.g. the tonics a pack's mode_tonics lacks, to measure varispeed
        prompts = [p for p in prompts if p.get("tonic") in args.tonics.split(",")]
    os.makedirs(args.out, exist_ok=True)
    ear = Ear()
    recs = []
    for i, asked in enumerate(prompts[: args.limit]):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            wav = os.path.join(args.out, f"p{i:02}_s{seed}.wav")
            cmd = [args.tutti, "generate", asked["prompt"], "--models-dir", args.models_dir,
                   "--model", args.model, "--duration", str(args.seconds), "--seed", str(seed),
                   "-o", wav]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            if args.guidance is not None:
                cmd += ["--guidance", str(args.guidance)]
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.monotonic() - t0
            wave, sr = load(wav)
            rec = {"prompt": asked["prompt"], "seed": seed, "asked": asked, "wall_s": wall,
                   "audio_s": len(wave) / sr, **ear.analyze(wave, sr, wav)}
            rec.update(score(rec, asked))
            recs.append(rec)
            print(f"{i:2} s{seed} {rec['key']:9} ({rec['key_confidence']:.2f}) {rec['bpm']:6.1f} BPM "
                  f"{','.join(rec['tags'])} music={rec['music']}  | {asked['prompt']}", flush=True)
    finish(args.out, recs, f"{args.model} via `tutti generate` ({args.seconds} s, "
                           f"{'default' if not args.steps else args.steps} steps, "
                           f"guidance {'default' if args.guidance is None else args.guidance}, {args.seeds} seeds)")


def ceiling(args):
    """The analyzers on the rendered training clips, whose labels are exact."""
    rows = [json.loads(l) for l in open(os.path.join(args.dataset, "manifest.jsonl")) if l.strip()]
    os.makedirs(args.out, exist_ok=True)
    sr = args.sample_rate
    ear = Ear()
    recs = []
    step = max(1, len(rows) // args.clips)
    for row in rows[::step][: args.clips]:
        wave = read_render(args.dataset, row["id"])
        if args.roundtrip_mels:
            wave = roundtrip(wave, sr, args.roundtrip_mels, args.roundtrip_nfft, args.roundtrip_iters)
        wav = os.path.join(args.out, f"clip{row['id']:06}.wav")
        sf.write(wav, wave, sr)
        asked = {"prompt": row.get("caption", ""), "bpm": row["bpm"], "mode": row["mode"].lower(),
                 "tonic": int(row["tonic"]),
                 "instruments": sorted({FAMILY_TAG.get(f.replace("_", " ").lower()) for f in
                                        row.get("families", [])} - {None})}
        rec = {"prompt": asked["prompt"], "seed": row["id"], "asked": asked, "wall_s": 0.0,
               "audio_s": len(wave) / sr, **ear.analyze(wave, sr, wav)}
        rec.update(score(rec, asked))
        recs.append(rec)
        os.remove(wav)
        print(f"{row['id']:6} {row['mode']:5} {rec['key']:9} ({rec['key_confidence']:.2f}) "
              f"{rec['bpm']:6.1f}/{row['bpm']:.0f} BPM {','.join(rec['tags'])}", flush=True)
    through = (f", through {args.roundtrip_mels} mels (n_fft {args.roundtrip_nfft}) and "
               f"{args.roundtrip_iters} Griffin-Lim iterations"
               if args.roundtrip_mels else "")
    finish(args.out, recs, f"rendered training clips of {args.dataset} (their exact labels){through}")


_KEY = None


def hear_key(job):
    """The key network's label of one rendered clip (a worker of `curate`, one network each)."""
    from madmom.features.key import CNNKeyRecognitionProcessor

    global _KEY
    if _KEY is None:
        _KEY = CNNKeyRecognitionProcessor()
    dataset, clip_id, sr = job
    h = hear(_KEY, signal44(read_render(dataset, clip_id), sr))
    return {"tonic": h["tonic"], "mode": h["mode"], "p": h["p"]}


def read_manifest(dataset):
    """A rendered dataset's manifest rows by id, each with its line as written."""
    rows = {}
    for line in open(os.path.join(dataset, "manifest.jsonl")):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of an interrupted render
            continue
        rows[row["id"]] = (row, line.rstrip("\n"))
    return rows


def in_key(h, row):
    """Whether the key network heard a clip in its labelled tonic and mode."""
    return h["mode"] == row["mode"].lower() and h["tonic"] == int(row["tonic"])


def curate(args):
    """Keeps the training clips the key network hears in their labelled key (tonic and mode): a
    minor render heard as its relative major teaches the model that the minor control sounds
    major. Each labelled mode keeps its share of the source. `--modes minor` hears only the
    minor clips (the network hears all major renders as major) and keeps the others unheard.
    Writes a dataset folder `--out` that `tutti train denoiser --dataset` reads: the kept rows of
    the manifest, the settings, and links to the source's mel/ and audio/. What the network heard
    goes to `--out`/heard.jsonl as it goes, so an interrupted run resumes."""
    src = os.path.abspath(args.dataset)
    rows = read_manifest(src)
    os.makedirs(args.out, exist_ok=True)
    heard_path = os.path.join(args.out, "heard.jsonl")
    heard = {}
    if os.path.exists(heard_path):
        for line in open(heard_path):
            try:
                h = json.loads(line)
                heard[h["id"]] = h
            except json.JSONDecodeError:
                pass
    modes = set(args.modes.split(",")) if args.modes else None
    todo = [i for i in sorted(rows) if i not in heard
            and (modes is None or rows[i][0]["mode"].lower() in modes)]
    jobs = [(src, i, args.sample_rate) for i in todo]
    with open(heard_path, "a") as log, multiprocessing.Pool(args.workers) as pool:
        for n, (i, h) in enumerate(zip(todo, pool.imap(hear_key, jobs, chunksize=4))):
            h["id"] = i
            heard[i] = h
            log.write(json.dumps(h) + "\n")
            log.flush()
            if n % 200 == 0:
                print(f"{n}/{len(todo)} heard", flush=True)
    hits, table = {}, {}
    for i in sorted(rows):
        row, line = rows[i]
        mode = row["mode"].lower()
        h = heard.get(i)  # None: a mode --modes leaves unheard, kept
        hit = h is None or in_key(h, row)
        t = table.setdefault(mode, [0, 0, 0, 0, 0])  # clips, heard, mode heard, key heard, kept
        t[0] += 1
        if h is not None:
            t[1] += 1
            t[2] += h["mode"] == mode
            t[3] += hit
        if hit:
            hits.setdefault(mode, []).append(line)
    # Each mode keeps its share of the source, so that dropping more minor clips than major ones
    # does not teach the model that minor is rarer (the kept hits spread evenly over the ids).
    scale = min(len(hits.get(m, [])) / t[0] for m, t in table.items())
    kept = []
    for m, t in table.items():
        want = round(scale * t[0])
        lines = hits.get(m, [])
        pick = [lines[round(k * len(lines) / want)] for k in range(want)] if want else []
        t[4] = len(pick)
        kept += pick
    kept.sort(key=lambda l: json.loads(l)["id"])
    with open(os.path.join(args.out, "manifest.jsonl"), "w") as f:
        f.write("\n".join(kept) + "\n")
    with open(os.path.join(src, "dataset.json")) as f, open(os.path.join(args.out, "dataset.json"), "w") as g:
        g.write(f.read())
    for d in ("mel", "audio"):
        link = os.path.join(args.out, d)
        if not os.path.lexists(link):
            os.symlink(os.path.join(src, d), link)
    md = [f"# Clips of {src} the key network hears in their labelled key", "",
          "| labelled mode | clips | heard | mode heard | key heard | kept (each mode's share kept) |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {m} | {t[0]} | {t[1]} | {t[2]} ({t[2] / max(1, t[1]):.0%}) | "
           f"{t[3]} ({t[3] / max(1, t[1]):.0%}) | {t[4]} |" for m, t in sorted(table.items())]
    md += ["", f"Kept {len(kept)} of {len(rows)} clips."]
    open(os.path.join(args.out, "curate.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md))


def breakdown(args):
    """Of the clips a `curate` run heard, the share heard in their labelled key by a manifest
    field (style, tonic, beats_per_bar, bpm in 10-BPM bins, ...): where the composer hides the
    mode."""
    rows = {i: row for i, (row, _) in read_manifest(args.dataset).items()}
    heard = [json.loads(l) for l in open(args.heard) if l.strip()]
    for field in args.by.split(","):
        table = {}
        for h in heard:
            row = rows.get(h["id"])
            if row is None:
                continue
            value = row.get(field)
            if field == "bpm":
                value = int(value // 10 * 10)
            elif isinstance(value, list):
                value = "+".join(map(str, value))
            hit = in_key(h, row)
            t = table.setdefault(str(value), [0, 0])
            t[0] += 1
            t[1] += hit
        print(f"\n| {field} | clips | heard in their key |\n| --- | ---: | ---: |")
        for value, (n, hit) in sorted(table.items()):
            print(f"| {value} | {n} | {hit} ({hit / n:.0%}) |")


def roundtrip(wave, sr, n_mels, n_fft, iters):
    """The clip as a mel representation keeps it: magnitude mel (hop 256, 0-8 kHz; the built-in
    pack's is 64 mels, n_fft 1024) and Griffin-Lim, with librosa's filterbank and Griffin-Lim
    (tutti's follow them)."""
    import librosa

    m = librosa.feature.melspectrogram(y=wave, sr=sr, n_fft=n_fft, hop_length=256, n_mels=n_mels,
                                       fmin=0, fmax=8000, power=1.0)
    y = librosa.feature.inverse.mel_to_audio(m, sr=sr, n_fft=n_fft, hop_length=256, power=1.0,
                                             n_iter=iters, fmin=0, fmax=8000)
    return (y / max(1e-6, float(np.abs(y).max())) * 0.5).astype(np.float32)


def summary(recs):
    def share(key, sel=lambda r: True):
        v = [r[key] for r in recs if key in r and sel(r)]
        return (sum(v), len(v))

    inst = [h for r in recs for h in r.get("instrument_hits", [])]
    per_instrument = {}
    for r in recs:
        wanted = [i for i in r["asked"].get("instruments", []) if i in TAGS]
        for name, hit in zip(wanted, r.get("instrument_hits", [])):
            got = per_instrument.setdefault(name, [0, 0])
            got[0] += hit
            got[1] += 1
    walls = [r["audio_s"] / r["wall_s"] for r in recs if r.get("wall_s")]
    return {
        "clips": len(recs),
        "mode": share("mode_hit"),
        "mode_minor": share("mode_hit", lambda r: r["asked"].get("mode") == "minor"),
        "mode_major": share("mode_hit", lambda r: r["asked"].get("mode") == "major"),
        "key": share("key_hit"),
        "tempo": share("tempo_hit"),
        "tempo_level": share("tempo_level_hit"),
        "instrument": (sum(inst), len(inst)),
        "per_instrument": {k: tuple(v) for k, v in sorted(per_instrument.items())},
        "music": (sum(r["music"] for r in recs), len(recs)),
        "key_confidence_median": float(np.median([r["key_confidence"] for r in recs])),
        "realtime_factor_median": float(np.median(walls)) if walls else None,
    }


def pct(pair):
    hit, n = pair
    return f"{100 * hit / n:.0f}% ({hit}/{n})" if n else "-"


ROWS = [("mode heard as asked", "mode"), ("... of minor requests", "mode_minor"),
        ("... of major requests", "mode_major"), ("key (tonic and mode) where a tonic was asked", "key"),
        ("tempo within 8%", "tempo"), ("tempo within 8% at a metrical level", "tempo_level"),
        ("asked instrument in the tagger's top five", "instrument"), ("music gate", "music")]


def finish(out, recs, what):
    json.dump(recs, open(os.path.join(out, "results.json"), "w"), indent=1)
    s = summary(recs)
    md = [f"# Independent ear: {what}", "",
          "madmom CNN key + RNN beat/tempo, musicnn MTT tagger (scripts/eval/independent.py).", "",
          "| measure | result |", "| --- | ---: |"]
    md += [f"| {name} | {pct(s[k])} |" for name, k in ROWS]
    md += [f"| key network's top probability, median | {s['key_confidence_median']:.2f} |"]
    md += [f"| ... {name} in the top five | {pct(hits)} |" for name, hits in s["per_instrument"].items()]
    if s["realtime_factor_median"]:
        md += [f"| real-time factor (audio s / wall s of `tutti generate`, process start and model load included), median | {s['realtime_factor_median']:.2f} |"]
    md += ["", "| prompt | seed | key heard (p) | BPM heard | tags | music |", "| --- | ---: | --- | ---: | --- | --- |"]
    md += [f"| {r['prompt'][:80]} | {r['seed']} | {r['key']} ({r['key_confidence']:.2f}) | {r['bpm']:.0f} | "
           f"{', '.join(r['tags'])} | {'yes' if r['music'] else 'no'} |" for r in recs]
    open(os.path.join(out, "report.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md[:len(ROWS) + 7 + len(s["per_instrument"])]))


def compare(args):
    cols = []
    for arg in args.runs:  # DIR, or DIR+DIR+... for runs over other seeds of the same pack
        recs = [r for d in arg.split("+") for r in json.load(open(os.path.join(d, "results.json")))]
        cols.append(("+".join(os.path.basename(os.path.normpath(d)) for d in arg.split("+")), summary(recs)))
    print("| measure | " + " | ".join(n for n, _ in cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for name, k in ROWS:
        print(f"| {name} | " + " | ".join(pct(s[k]) for _, s in cols) + " |")
    print("| key network's top probability, median | " + " | ".join(f"{s['key_confidence_median']:.2f}" for _, s in cols) + " |")
    for name in sorted({n for _, s in cols for n in s["per_instrument"]}):
        print(f"| ... {name} in the top five | " + " | ".join(pct(s["per_instrument"].get(name, (0, 0))) for _, s in cols) + " |")


def tonics(args):
    """Which tonics the model renders a mode in: mode and key hits per asked tonic of a
    `generate --prompts tonic_calibration_prompts.json` run (DIRs over other seeds merge), and
    the tonics heard in the asked mode at least `--min-share` of the time: the pack's
    `[defaults.mode_tonics]` for requests that name a mode alone."""
    recs = [r for d in args.runs for r in json.load(open(os.path.join(d, "results.json")))]
    by = {}
    for r in recs:
        a = r["asked"]
        by.setdefault((a["mode"], a["tonic"]), []).append(r)
    print("| asked key | mode heard | key heard | key network's top probability, median |")
    print("| --- | ---: | ---: | ---: |")
    chosen = {}
    for (mode, tonic), rs in sorted(by.items(), key=lambda kv: (kv[0][0], PITCHES[kv[0][1]])):
        mode_hits, key_hits = sum(r["mode_hit"] for r in rs), sum(r["key_hit"] for r in rs)
        conf = float(np.median([r["key_confidence"] for r in rs]))
        print(f"| {tonic} {mode} | {mode_hits}/{len(rs)} | {key_hits}/{len(rs)} | {conf:.2f} |")
        if mode_hits >= args.min_share * len(rs):
            chosen.setdefault(mode, []).append(tonic)
    # The same clips by setting (the prompt with its key left out): what a checkpoint renders in
    # a mode depends on the setting as much as on the tonic.
    settings = {}
    for r in recs:
        a = r["asked"]
        settings.setdefault(r["prompt"].replace(f"{a['tonic']} {a['mode']}", f"... {a['mode']}"), []).append(r)
    print("\n| setting | mode heard | key heard |")
    print("| --- | ---: | ---: |")
    for setting, rs in settings.items():
        print(f"| {setting} | {sum(r['mode_hit'] for r in rs)}/{len(rs)} | {sum(r['key_hit'] for r in rs)}/{len(rs)} |")
    for mode, ts in chosen.items():
        print(f"\n[defaults.mode_tonics] {mode} = {json.dumps(ts)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--tutti", required=True)
    g.add_argument("--models-dir", required=True)
    g.add_argument("--model", default="tutti-mini")
    g.add_argument("--out", required=True)
    g.add_argument("--prompts", default=os.path.join(HERE, "held_out_prompts.json"))
    g.add_argument("--seeds", type=int, default=2)
    g.add_argument("--first-seed", type=int, default=0,
                   help="seeds FIRST.. (generation is deterministic: runs over other seeds can be merged)")
    g.add_argument("--seconds", type=float, default=10.0)
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=float, help="guidance scale (the pack's default without it)")
    g.add_argument("--limit", type=int)
    g.add_argument("--tonics", help="only the prompts asking these tonics (comma-separated: D,Eb)")
    c = sub.add_parser("ceiling")
    c.add_argument("--dataset", required=True)
    c.add_argument("--clips", type=int, default=96)
    c.add_argument("--sample-rate", type=int, default=16000)
    c.add_argument("--out", required=True)
    c.add_argument("--roundtrip-mels", type=int, default=0,
                   help="score the clips after a mel + Griffin-Lim round trip with this many mels")
    c.add_argument("--roundtrip-nfft", type=int, default=1024)
    c.add_argument("--roundtrip-iters", type=int, default=32)
    u = sub.add_parser("curate", help="a dataset of the clips heard in their labelled key")
    u.add_argument("--dataset", required=True)
    u.add_argument("--out", required=True)
    u.add_argument("--sample-rate", type=int, default=16000)
    u.add_argument("--modes", help="hear only clips labelled in these modes (comma-separated)")
    u.add_argument("--workers", type=int, default=1)
    b = sub.add_parser("breakdown", help="a curate run's clips heard in their key, by manifest field")
    b.add_argument("--dataset", required=True)
    b.add_argument("--heard", required=True, help="a curate run's heard.jsonl")
    b.add_argument("--by", default="style", help="manifest fields (comma-separated)")
    k = sub.add_parser("compare")
    k.add_argument("runs", nargs="+")
    t = sub.add_parser("tonics", help="mode and key heard per asked tonic (a calibration run)")
    t.add_argument("runs", nargs="+")
    t.add_argument("--min-share", type=float, default=2 / 3)
    args = ap.parse_args()
    {"generate": generate, "ceiling": ceiling, "compare": compare, "tonics": tonics,
     "curate": curate, "breakdown": breakdown}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

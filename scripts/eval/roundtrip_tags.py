"""Does the built-in pack's representation keep what the tagger hears? Training renders with
strings, flute or piano (no drums) are tagged as rendered and after a round trip through 64 log
mels and 32 Griffin-Lim iterations (the pack's [mel] and [vocoder] settings, here with librosa's
filterbank and Griffin-Lim, so an approximation of tutti's own).

    ~/.cache/tutti/evalenv/bin/python scripts/eval/roundtrip_tags.py [DATASET]
"""
import json, os, sys, tempfile
import numpy as np, soundfile as sf, librosa
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
from independent import tagger_top5, TAGS, FAMILY_TAG
ds = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/tutti/train/ds29")
tmp = tempfile.mkdtemp()
rows = [json.loads(l) for l in open(os.path.join(ds, "manifest.jsonl"))]
want = {"strings": 8, "flute": 6, "piano": 6}
picked = []
for fam, n in want.items():
    picked += [r for r in rows if fam in r["families"] and "drums" not in r["families"]][:n]
for r in picked:
    w = np.fromfile(os.path.join(ds, "audio", f"{r['id']:06}.i16"), dtype="<i2").astype(np.float32) / 32767
    src = os.path.join(tmp, f"{r['id']}_src.wav"); sf.write(src, w, 16000)
    M = librosa.feature.melspectrogram(y=w, sr=16000, n_fft=1024, hop_length=256, n_mels=64, fmin=0, fmax=8000, power=1.0)
    y = librosa.feature.inverse.mel_to_audio(M, sr=16000, n_fft=1024, hop_length=256, power=1.0, n_iter=32, fmin=0, fmax=8000)
    rt = os.path.join(tmp, f"{r['id']}_rt.wav"); sf.write(rt, y / max(1e-6, np.abs(y).max()) * 0.5, 16000)
    fams = sorted({FAMILY_TAG.get(f.replace("_", " ")) for f in r["families"]} - {None})
    a, b = tagger_top5(src), tagger_top5(rt)
    hit = lambda tags: [f for f in fams if TAGS[f] & set(tags)]
    print(r["id"], r["families"], "| src:", ",".join(a), hit(a), "| rt:", ",".join(b), hit(b), flush=True)

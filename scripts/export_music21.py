#!/usr/bin/env python3
"""Export music21's bundled corpus to MIDI files for `tutti train dataset --corpus DIR`.

Writes DIR/NNNNN.mid and DIR/index.jsonl, one line per exported tune:
  {"file": "00012.mid", "source": "bach", "path": "...", "tonic": 9, "mode": "minor",
   "beats_per_bar": 4, "parts": 4}
The key and mode come from music21's key analysis (Krumhansl-Schmuckler), so the captions the
Rust side writes stay true. Only the first measures of each tune are kept (clips are ~10 s).
Resumable: files already listed in index.jsonl are skipped.

Usage: python scripts/export_music21.py OUT_DIR [--max-tunes N] [--per-file K] [--measures M]
"""

import argparse
import json
import os
import signal
import sys


class Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise Timeout()


def source_of(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if "corpus" in parts:
        i = parts.index("corpus")
        if i + 1 < len(parts):
            return parts[i + 1]
    return "corpus"


def tunes_of(path, per_file, timeout):
    """Yields up to `per_file` parsed scores of a corpus file (None for one that fails).
    ABC books hold many tunes: each is parsed alone from its text, evenly spread over the book."""
    from music21 import converter, corpus  # noqa: WPS433

    if path.lower().endswith(".abc"):
        with open(path, encoding="latin-1") as f:
            text = f.read()
        chunks = ["X:" + c for c in text.split("\nX:")[1:]]
        if text.startswith("X:"):
            chunks = [text.split("\nX:")[0]] + chunks
        header = text.split("\nX:")[0] if not text.startswith("X:") else ""
        step = max(1, len(chunks) // per_file)
        for c in chunks[::step][:per_file]:
            signal.alarm(timeout)
            try:
                yield converter.parse(header + "\n" + c if header else c, format="abc")
            except Exception:  # odd tunes are skipped
                yield None
            finally:
                signal.alarm(0)
        return
    signal.alarm(timeout)
    try:
        parsed = corpus.parse(path)
        scores = list(parsed.scores) if hasattr(parsed, "scores") else [parsed]
    except Exception:
        scores = []
    finally:
        signal.alarm(0)
    yield from scores[:per_file]


def export_one(score, key, path, count, args):
    excerpt = score.measures(1, args.measures) or score
    k = excerpt.analyze("key")
    if k.mode not in ("major", "minor"):
        return None
    ts = excerpt.recurse().getElementsByClass("TimeSignature")
    beats = ts[0].numerator if ts and ts[0].denominator in (4, 8) else 4
    if ts and ts[0].denominator == 8 and beats % 3 == 0:
        beats //= 3
    name = f"{count:05d}.mid"
    excerpt.write("midi", fp=os.path.join(args.out, name))
    return {
        "file": name,
        "source": source_of(path),
        "path": key,
        "tonic": k.tonic.pitchClass,
        "mode": k.mode,
        "beats_per_bar": beats,
        "parts": len(excerpt.parts) if hasattr(excerpt, "parts") else 1,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--max-tunes", type=int, default=4000)
    ap.add_argument("--per-file", type=int, default=12, help="tunes taken from one multi-tune file")
    ap.add_argument("--measures", type=int, default=16)
    ap.add_argument("--timeout", type=int, default=20, help="seconds per corpus file")
    args = ap.parse_args()

    from music21 import corpus, environment  # noqa: WPS433

    environment.set("autoDownload", "deny")
    os.makedirs(args.out, exist_ok=True)
    index_path = os.path.join(args.out, "index.jsonl")
    done_paths = set()
    count = 0
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done_paths.add(row["path"])
                count += 1
    exts = (".abc", ".krn", ".mxl", ".xml", ".musicxml", ".mid", ".midi")
    paths = sorted(str(p) for p in corpus.getPaths() if str(p).lower().endswith(exts))
    print(f"{len(paths)} corpus files, {count} tunes already exported", flush=True)
    signal.signal(signal.SIGALRM, _alarm)
    with open(index_path, "a", encoding="utf-8") as index:
        for n, path in enumerate(paths):
            if count >= args.max_tunes:
                break
            if any(d.startswith(path + "#") for d in done_paths):
                continue
            for j, score in enumerate(tunes_of(path, args.per_file, args.timeout)):
                key = f"{path}#{j}"
                if key in done_paths or count >= args.max_tunes or score is None:
                    continue
                signal.alarm(args.timeout)
                try:
                    row = export_one(score, key, path, count, args)
                    if row is not None:
                        index.write(json.dumps(row) + "\n")
                        index.flush()
                        count += 1
                except Timeout:
                    print(f"timeout: {key}", file=sys.stderr, flush=True)
                except Exception as e:  # music21 raises many kinds on odd files
                    print(f"skip {key}: {type(e).__name__}: {e}"[:300], file=sys.stderr, flush=True)
                finally:
                    signal.alarm(0)
            if n % 50 == 0:
                print(f"{n}/{len(paths)} files, {count} tunes", flush=True)
    print(f"exported {count} tunes to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

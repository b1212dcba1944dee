"""summary.md of scripts/bench/stable_audio_gpu.sh: every `tutti bench stable-audio` report
(sao.jsonl), the denoiser's CUDA graphs against eager steps, and tutti against diffusers'
StableAudioPipeline (peer.jsonl) in clips per hour on the same GPU, weights, precision, steps and
guidance.

    python3 scripts/bench/gpu_summary.py OUT_DIR
"""

import json
import os
import statistics
import sys


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def per_clip(r):
    return statistics.median(x["clip_s"] for x in r["runs"])


def graphs(r):
    g = r.get("cuda_graphs")
    attn = ", cuDNN attention first" if r.get("cudnn_attention") else ""
    if g is None:
        return "off" + attn
    if g.get("failure"):
        return "failed: " + g["failure"][:60] + attn
    return f"{g['captures']} captured, {g['replays']} replays, {g['eager']} eager{attn}"


def graphed(r):
    g = r.get("cuda_graphs")
    return g is not None and not g.get("failure")


def main(out):
    sao = lines(os.path.join(out, "sao.jsonl"))
    peer = lines(os.path.join(out, "peer.jsonl"))
    med = lambda r, k: statistics.median(k(x) for x in r["runs"])
    print("| pack | precision | batch | clip s | steps | runs | per clip, median (s) | prepare (s) | steps (s) "
          "| decode (s) | clips/hour | peak GPU MiB | CUDA graphs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sao:
        per = per_clip(r)
        print(f"| {r.get('pack', r['model'])} | {r['precision']} | {r['batch']} | {r['seconds']} | {r['steps']} "
              f"| {len(r['runs'])} | {per:.4f} | {med(r, lambda x: x['prepare_s']):.4f} "
              f"| {med(r, lambda x: sum(x['steps_s'])):.4f} | {med(r, lambda x: x['decode_s']):.4f} "
              f"| {3600 / per:.0f} | {r.get('peak_gpu_mib', '')} | {graphs(r)} |")

    # Graphs against eager: the same pack, precision, batch and steps, graphs on and off.
    pairs = {}
    for r in sao:
        if r.get("cudnn_attention"):
            continue
        key = (r.get("pack", r["model"]), r["precision"], r["batch"], r["steps"], r["seconds"])
        pairs.setdefault(key, {})["on" if graphed(r) else "off"] = r
    rows = [(k, v) for k, v in pairs.items() if "on" in v and "off" in v]
    if rows:
        print()
        print("CUDA graphs against eager steps (median whole clip, and median step, per batch):")
        print()
        print("| pack | precision | batch | steps | eager clips/hour | graphed clips/hour | speed-up "
              "| eager step (ms) | graphed step (ms) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for (pack, prec, b, steps, _), v in rows:
            off, on = per_clip(v["off"]), per_clip(v["on"])
            step = lambda r: 1e3 * statistics.median(s for x in r["runs"] for s in x["steps_s"])
            print(f"| {pack} | {prec} | {b} | {steps} | {3600 / off:.0f} | {3600 / on:.0f} | {off / on:.2f}x "
                  f"| {step(v['off']):.2f} | {step(v['on']):.2f} |")

    if peer:
        print()
        print("tutti against diffusers' StableAudioPipeline, SAO 1.0, clips per hour on this GPU "
              "(same random weights, bf16, steps, guidance 7, 11 s clips):")
        print()
        print("| batch | steps | tutti | diffusers eager | diffusers torch.compile | tutti / eager "
              "| tutti / compile |")
        print("|---|---|---|---|---|---|---|")
        for b in sorted({p["batch"] for p in peer}):
            steps = next(p["steps"] for p in peer if p["batch"] == b)
            ours = [r for r in sao if r.get("pack") == "1.0" and r["batch"] == b and r["steps"] == steps
                    and r["precision"].startswith("bfloat16") and r["seconds"] == 11 and graphed(r)
                    and not r.get("cudnn_attention")]
            t = 3600 / per_clip(ours[-1]) if ours else None
            got = {p["mode"]: p["clips_per_hour"] for p in peer if p["batch"] == b}
            cell = lambda x: f"{x:.0f}" if x else "not run"
            ratio = lambda m: f"{t / got[m]:.2f}x" if t and got.get(m) else "unmeasured"
            print(f"| {b} | {steps} | {cell(t)} | {cell(got.get('eager'))} | {cell(got.get('compile'))} "
                  f"| {ratio('eager')} | {ratio('compile')} |")


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env bash
# Stable Audio Open Small and 1.0 on a CUDA GPU, at their real sizes on random weights:
#   1. seconds per clip one at a time (11 s, each model's default steps and guidance), in bf16 and
#      f16, and with clips batched in one request (`tutti bench stable-audio --batch N`);
#   2. clips per hour of a worker's engine with continuous step batching against one chunk at a
#      time, on the same backlog of jobs (`tutti bench serve`);
#   3. a 47 s clip of SAO 1.0 (the whole latent window) decoded within the worker's memory: the
#      GPU's peak memory while each command runs, read by nvidia-smi every 100 ms;
#   4. the denoiser's CUDA graphs against eager steps (`--cuda-graphs false`), SAO Small and 1.0
#      at batch 1, 8 and 32;
#   5. the peer: diffusers 0.42.1's StableAudioPipeline, eager and with torch.compile on its
#      transformer (scripts/bench/diffusers_peer.py), on the same random SAO 1.0 folder, in bf16,
#      at batch 1, 8 and 32, $PEER_STEPS steps (default 100) and guidance 7, beside tutti at the
#      same settings; summary.md gives tutti / diffusers clips per hour. SAO Small has no
#      diffusers pipeline (stable-audio-tools is its reference; not run here).
#
#     scripts/bench/stable_audio_gpu.sh OUT_DIR [TUTTI_BINARY]
#
# SAO_PARTS picks sections (default "clips graphs peer serve parity"); PEER_SITE names a folder
# where diffusers, torchsde and trampoline are installed (scripts/bench/gpu_wheels.sh fetches
# them; scripts/bench/gpu_all.sh installs them), put on PYTHONPATH for the peer alone.
#
# Needs python3 with torch (it builds the random folders, scripts/bench/random_sao_folder.py) and
# a release build of tutti (default: $CARGO_TARGET_DIR/release/tutti). A binary built on another
# machine runs against this machine's torch: LD_LIBRARY_PATH is set to python3's torch `lib/`
# (or $TUTTI_TORCH_LIB). Writes to OUT_DIR: sao.jsonl (one `tutti bench stable-audio` report a
# line, with the peak GPU memory), serve.md (the `tutti bench serve` tables), log.txt and
# summary.md. The random folders go under $SAO_WORK (default /tmp/sao).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: stable_audio_gpu.sh OUT_DIR [TUTTI_BINARY]}
TUTTI=${2:-${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}/release/tutti}
WORK=${SAO_WORK:-/tmp/sao}
PARTS=" ${SAO_PARTS:-clips graphs peer serve parity} "
PEER_STEPS=${PEER_STEPS:-100}
part() { [[ $PARTS == *" $1 "* ]]; }
mkdir -p "$OUT" "$WORK"
TORCH_LIB=${TUTTI_TORCH_LIB:-$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log() { printf '%s %s\n' "$(date -u +%T)" "$*" | tee -a "$OUT/log.txt" >&2; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
"$TUTTI" --version >&2 || { log "the tutti binary does not start here"; ldd "$TUTTI" | grep 'not found' >&2; exit 1; }

# Peak GPU memory (MiB) over a command, sampled every 100 ms, in $PEAK.
peak_mib() {
  local f; f=$(mktemp)
  (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$f"; sleep 0.1; done) &
  local poller=$!
  "$@"; local rc=$?
  kill "$poller" 2>/dev/null; wait "$poller" 2>/dev/null
  PEAK=$(sort -n "$f" | tail -1); rm -f "$f"
  return $rc
}

log "building random folders"
python3 scripts/bench/random_sao_folder.py open-small "$WORK/small" || exit 1
python3 scripts/bench/random_sao_folder.py open-1.0 "$WORK/1.0" || exit 1
[ -d "$WORK/pack-small" ] || "$TUTTI" model import "$WORK/small" --t5 "$WORK/small/t5-base" -o "$WORK/pack-small" >&2 || exit 1
[ -d "$WORK/pack-1.0" ] || "$TUTTI" model import "$WORK/1.0" -o "$WORK/pack-1.0" >&2 || exit 1
log "folders ready"

sao() { # model precision batch runs seconds [graphs: true|false] [steps]; $EXTRA: more flags
  local m=$1 p=$2 b=$3 r=$4 s=$5 g=${6:-true} st=${7:-} f
  f=$(mktemp)
  log "bench stable-audio $m $p batch $b ($s s, $r runs, graphs $g${st:+, $st steps})"
  peak_mib "$TUTTI" bench stable-audio --pack "$WORK/pack-$m" --device cuda --precision "$p" \
    --seconds "$s" --batch "$b" --runs "$r" --cuda-graphs "$g" ${st:+--steps "$st" --guidance 7} ${EXTRA:-} >"$f"
  log "  exit $?, peak GPU memory $PEAK MiB"
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); r["peak_gpu_mib"] = int(sys.argv[2]); r["pack"] = sys.argv[3]; print(json.dumps(r))' \
    "$f" "${PEAK:-0}" "$m" >>"$OUT/sao.jsonl" || log "  no report"
  rm -f "$f"
}
if part clips; then
  sao small bf16 1 10 11
  sao small f16 1 10 11
  sao small bf16 8 3 11
  sao small bf16 32 3 11
  sao 1.0 bf16 1 3 11
  sao 1.0 f16 1 2 11
  sao 1.0 bf16 8 2 11
  sao 1.0 bf16 1 1 47
fi
if part graphs; then
  for b in 1 8 32; do
    sao small bf16 "$b" 5 11 false
    sao small bf16 "$b" 5 11 true
  done
fi
if part peer; then
  # tutti at the peer's settings first (graphs on, then off at batch 1), then diffusers.
  for b in 1 8 32; do sao 1.0 bf16 "$b" 2 11 true "$PEER_STEPS"; done
  sao 1.0 bf16 1 2 11 false "$PEER_STEPS"
  # cuDNN attention first (SAO 1.0's 1,025 tokens): opt-in until this says it wins.
  EXTRA=--cudnn-attention sao 1.0 bf16 8 2 11 true "$PEER_STEPS"
  for mode in eager compile; do
    log "diffusers StableAudioPipeline ($mode), SAO 1.0 bf16, batch 1 8 32, $PEER_STEPS steps"
    # A bound per mode: torch.compile's first compiles take minutes; eager's figures stay if
    # the compiled run overruns.
    PYTHONPATH="${PEER_SITE:+$PEER_SITE:}${PYTHONPATH:-}" timeout "${PEER_TIMEOUT:-420}" \
      python3 scripts/bench/diffusers_peer.py "$WORK/1.0" \
      --device cuda --dtype bf16 --batches 1,8,32 --steps "$PEER_STEPS" --guidance 7 --seconds 11 \
      --runs 2 $([ "$mode" = compile ] && echo --compile) >>"$OUT/peer.jsonl" 2>>"$OUT/log.txt"
    log "  exit $?"
  done
fi

serve() { # model jobs steps chunk
  log "bench serve $1: $2 jobs arriving at once, $3 steps in chunks of $4"
  "$TUTTI" bench serve --pack "$WORK/pack-$1" --device cuda --jobs "$2" --steps "$3" \
    --chunk-steps "$4" --durations 11 --arrival-ms 1 --max-batch 32 >>"$OUT/serve.md"
  log "  exit $?"
}
if part serve; then
  serve small 96 8 4
  serve 1.0 32 100 10
fi

# The CUDA path computes what the CPU computes: SAO Small's 11 s clip (same seed and noise) in f32
# on CUDA (cuDNN may use TF32 for convolutions) and in bf16, against f32 on the CPU.
part parity && log "parity: SAO Small on CUDA (f32, bf16) against the CPU (f32)"
part parity && for d in cuda:f32 cuda:bf16 cpu:f32; do
  "$TUTTI" bench stable-audio --pack "$WORK/pack-small" --device "${d%%:*}" --precision "${d##*:}" \
    --seconds 11 --out "$WORK/parity-${d%%:*}-${d##*:}.safetensors" >/dev/null 2>>"$OUT/log.txt"
done
part parity && python3 - "$WORK" <<'EOF' | tee "$OUT/parity.txt"
import sys
from safetensors.torch import load_file
w = sys.argv[1]
cpu = load_file(f"{w}/parity-cpu-f32.safetensors")
for name in ("cuda-f32", "cuda-bf16"):
    got = load_file(f"{w}/parity-{name}.safetensors")
    for k in ("latent", "audio"):
        a, b = got[k].float(), cpu[k].float()
        rel = ((a - b).norm() / b.norm()).item()
        print(f"{name} vs cpu-f32 {k}: max abs {(a - b).abs().max().item():.3e}, relative L2 {rel:.3e}, finite {bool(a.isfinite().all())}")
EOF

python3 scripts/bench/gpu_summary.py "$OUT" | tee "$OUT/summary.md"

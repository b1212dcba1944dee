#!/usr/bin/env bash
# Every GPU check and benchmark of the GPU path (issue 28) in one command on a GPU machine that
# builds nothing and reaches no network: what scripts/bench/gpu_pack.sh built here (.gpu/: the
# release `tutti` and the CUDA test binaries) and the peer's wheels (.whl/) travel with the run.
#
#   1. tests: each test binary of .gpu/tests.txt, from its crate folder (fixtures), one test at a
#      time: the shim's graph capture and replay, streams, the SDPA order (tutti-cuda-graph), and
#      the denoiser's graphs against eager steps on tiny packs (tutti-model tests/cuda_graphs.rs);
#   2. bench: scripts/bench/stable_audio_gpu.sh with the sections in SAO_PARTS (default "graphs
#      peer": graphs against eager on SAO Small at batch 1, 8, 32; tutti and diffusers eager and
#      compiled on SAO 1.0 at batch 1, 8, 32, $PEER_STEPS steps, default 50 here), then
#      summary.md. Estimated (not measured) 3-4 min for tests + graphs, 5-7 min for the peer:
#      on a 15-minute lease run them as two calls, GPU_PARTS="tests bench" SAO_PARTS=graphs, then
#      GPU_PARTS=bench SAO_PARTS=peer.
#
#     scripts/bench/gpu_all.sh [OUT_DIR]      (default: $OUT, where the device tool collects files)
#
# GPU_PARTS picks "tests" and/or "bench" (default both). On a device call: carry [".gpu", ".whl"].
# The libraries are this machine's: LD_LIBRARY_PATH is python3's torch `lib/` (the binaries'
# rpath names the build machine's venv, absent here).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${OUT:?usage: gpu_all.sh OUT_DIR}}
PARTS=" ${GPU_PARTS:-tests bench} "
mkdir -p "$OUT"
ROOT=$PWD
BIN=/tmp/gpu-bin
log() { printf '%s %s\n' "$(date -u +%T)" "$*" | tee -a "$OUT/tests.txt" >&2; }

[ -f .gpu/bin.tar.xz ] || { echo "no .gpu/bin.tar.xz: run scripts/bench/gpu_pack.sh on the build machine and carry .gpu" >&2; exit 2; }
rm -rf "$BIN" && mkdir -p "$BIN"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' .gpu/bin.tar.xz "$BIN" || exit 2
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || exit 2
export TUTTI_TORCH_LIB=$TORCH_LIB
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/tests.txt"

failed=0
if [[ $PARTS == *" tests "* ]]; then
  while read -r dir name; do
    log "test $name (from $dir)"
    (cd "$ROOT/$dir" && timeout 300 "$BIN/$name" --test-threads=1 2>&1) | tee -a "$OUT/tests.txt" | tail -3 >&2
    rc=${PIPESTATUS[0]}
    log "  exit $rc"
    [ "$rc" = 0 ] || failed=1
  done <"$BIN/tests.txt"
fi

if [[ $PARTS == *" bench "* ]]; then
  PEER_SITE=/tmp/peer-site
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$PEER_SITE" .whl/*.whl || log "the peer's wheels did not install"
  else
    log "no .whl/: the peer runs only if diffusers and torchsde are installed here"
  fi
  # Sized for a 15-minute lease: the peer at 50 steps (per-step cost dominates both sides, so
  # the ratio is what 100 steps would give, give or take the decode), compile bounded at 4 min.
  PEER_SITE=$PEER_SITE SAO_PARTS=${SAO_PARTS:-graphs peer} PEER_STEPS=${PEER_STEPS:-50} \
    PEER_TIMEOUT=${PEER_TIMEOUT:-240} scripts/bench/stable_audio_gpu.sh "$OUT/bench" "$BIN/tutti" || failed=1
fi
exit $failed

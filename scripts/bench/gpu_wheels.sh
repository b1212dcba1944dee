#!/usr/bin/env bash
# The Python packages the GPU benchmark's peer (scripts/bench/diffusers_peer.py) needs beyond what
# the GPU machines' image already holds (python3 3.12 with torch 2.11, transformers 5.17,
# tokenizers, safetensors, huggingface_hub 1.33, numpy, Pillow, regex, requests: see
# /work/.library/device/KINDS.md), downloaded here, where the network is, into .whl/ at the
# repository root (ignored by git; carried to the GPU machine, which reaches no network):
#
#   diffusers 0.42.1 (the peer; it needs huggingface_hub >= 1.32, safetensors >= 0.8: both there)
#   torchsde 0.2.6 + trampoline 0.1.2 (CosineDPMSolverMultistepScheduler, SAO 1.0's sampler,
#     draws its noise from a torchsde Brownian tree; torchsde imports neither scipy nor anything
#     else missing there)
#
# These are the only distributions a run of the peer imports that the image lacks (checked on the
# CPU machine by listing the distributions of every module imported by a run on the tiny
# diffusers fixture). All three are pure Python, about 6 MiB together: far under the 64 MiB that
# a device call carries. scripts/bench/gpu_all.sh installs them there with
#   python3 -m pip install --no-index --no-deps --target /tmp/peer-site .whl/*.whl
#
#     scripts/bench/gpu_wheels.sh [DIR]     (default: .whl)
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-.whl}
mkdir -p "$DIR"
PIP=${PIP:-python3 -m pip}
$PIP download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" diffusers==0.42.1 torchsde==0.2.6 trampoline==0.1.2
ls -l "$DIR"
du -sh "$DIR"

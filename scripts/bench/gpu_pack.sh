#!/usr/bin/env bash
# Builds here (the CPU machine) everything scripts/bench/gpu_all.sh runs on a GPU machine, which
# builds nothing: the release `tutti` binary and the release test binaries that hold the CUDA
# tests (tutti-cuda-graph's unit tests and tests/cuda.rs, tutti-model's tests/cuda_graphs.rs),
# stripped, with tests.txt naming each test binary and the crate folder it runs from (for its
# fixtures), in one xz tarball, .gpu/bin.tar.xz at the repository root (ignored by git; the
# stripped tutti alone is ~53 MB, ~13 MB packed); then the peer's wheels into .whl/
# (scripts/bench/gpu_wheels.sh). A device call carries [".gpu", ".whl"]; everything carried
# must stay under 64 MiB (this prints the total).
#
#     scripts/bench/gpu_pack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
T=${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}
rm -rf .gpu && mkdir -p .gpu/bin
cargo build --release -p tutti --bin tutti
cp "$T/release/tutti" .gpu/bin/tutti
# One line per test binary: "<crate folder> <path>" from cargo's own report.
cargo test --release --no-run --message-format=json \
  -p tutti-cuda-graph -p tutti-model --test cuda_graphs --test cuda --lib |
  python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        crate = os.path.dirname(m["manifest_path"])
        name = m["target"]["name"] + ("-lib" if "lib" in m["target"]["kind"] else "")
        print(os.path.relpath(crate), m["executable"], m["package_id"].split("#")[-1].split("@")[0].split("/")[-1] + "-" + name)
' >.gpu/built.txt
: >.gpu/bin/tests.txt
while read -r dir exe name; do
  # tutti-model's lib tests are CPU tests: only its CUDA test binary travels.
  case "$name" in tutti-model-*lib) continue ;; esac
  cp "$exe" ".gpu/bin/$name"
  echo "$dir $name" >>.gpu/bin/tests.txt
done <.gpu/built.txt
rm .gpu/built.txt
strip .gpu/bin/tutti .gpu/bin/*-*
cat .gpu/bin/tests.txt
ls -l .gpu/bin
XZ_OPT="-6 -T2" tar -C .gpu/bin -cJf .gpu/bin.tar.xz .
rm -rf .gpu/bin
scripts/bench/gpu_wheels.sh .whl >/dev/null
du -sh .gpu .whl
du -cb .gpu .whl | tail -1 | awk '{ printf "carried: %.1f MiB (limit 64 MiB with the working tree)\n", $1 / 1048576 }'

#!/usr/bin/env bash
# Create benchmarks/.env: a virtual environment with sgdstab (editable, from this checkout) and the two peers it
# is measured against, PyHessian and curvlinops. The peers are installed with --no-deps: their declared
# dependencies would pull a CUDA build of torch (gigabytes). Only the small pure-Python packages that they import
# at run time are added, and those that depend on torch also with --no-deps.
#
# Usage: bash benchmarks/setup_peers.sh [python]   (default python3, 3.11 like the project)
#        BENCH_ENV=/some/dir bash benchmarks/setup_peers.sh   (another location, e.g. to test this script)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
env="${BENCH_ENV:-$here/.env}"
python="${1:-python3}"

if [ ! -x "$env/bin/python" ]; then
    "$python" -m venv "$env"
fi
pip=("$env/bin/python" -m pip install --disable-pip-version-check)

# torch's CPU build (pip takes a local CPU wheel of torch 2.13.0 where one is on its find-links path; otherwise
# the CPU index is asked), then sgdstab itself with its own dependencies.
if ! "${pip[@]}" "torch==2.13.0" numpy scipy; then
    "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
    "${pip[@]}" numpy scipy
fi
"${pip[@]}" -e "$repo"

# The peers, without their dependencies.
"${pip[@]}" --no-deps "pyhessian==0.1" "curvlinops-for-pytorch==3.0.1"
# What curvlinops imports at run time (found by importing it): tqdm and einops (no dependencies), einconv and
# linear_operator (both declare torch, so --no-deps). PyHessian needs only torch and numpy.
"${pip[@]}" "tqdm" "einops"
"${pip[@]}" --no-deps "einconv" "linear_operator"

"$env/bin/python" - <<'EOF'
import importlib.metadata as md

import curvlinops  # noqa: F401
import pyhessian  # noqa: F401
import sgdstab

for name in ("torch", "pyhessian", "curvlinops-for-pytorch", "einops", "einconv", "linear_operator", "tqdm"):
    print(f"{name:24s} {md.version(name)}")
print(f"{'sgdstab':24s} {sgdstab.__version__}")
EOF
echo "peers ready: run benchmarks with $env/bin/python"

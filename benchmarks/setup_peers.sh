#!/usr/bin/env bash
# Create benchmarks/.env: a virtual environment holding sgdstab (editable) and the two peers it is measured
# against, PyHessian and curvlinops. The peers are installed with --no-deps: their declared dependencies would
# pull a CUDA build of torch (gigabytes). Only the small pure-Python packages they import are added.
#
# Usage: bash benchmarks/setup_peers.sh [python]      (default python: python3; needs 3.10+)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
env="$here/.env"
python="${1:-python3}"

if [ ! -x "$env/bin/python" ]; then
    "$python" -m venv "$env"
fi
pip=("$env/bin/python" -m pip install --disable-pip-version-check)

# torch's CPU wheel: pip picks the local CPU build of torch 2.13.0 where one is on the find-links path;
# elsewhere, point it at the CPU index.
if ! "${pip[@]}" "torch==2.13.0" numpy scipy; then
    "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
    "${pip[@]}" numpy scipy
fi
"${pip[@]}" -e "$repo"

# The peers, without their dependencies.
"${pip[@]}" --no-deps "pyhessian==0.1" "curvlinops-for-pytorch==3.0.1"
# What they import at run time (pure Python): curvlinops needs einops and einconv (einconv with --no-deps too,
# since it also depends on torch); PyHessian needs nothing beyond torch and numpy.
"${pip[@]}" einops
"${pip[@]}" --no-deps einconv

"$env/bin/python" - <<'EOF'
import importlib.metadata as md

import curvlinops  # noqa: F401
import pyhessian  # noqa: F401
import sgdstab

for name in ("torch", "pyhessian", "curvlinops-for-pytorch", "einops", "einconv", "numpy", "scipy"):
    print(f"{name:24s} {md.version(name)}")
print(f"{'sgdstab':24s} {sgdstab.__version__}")
EOF

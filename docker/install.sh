#!/usr/bin/env bash
# Install streamsolve into a fresh virtual environment, every dependency pinned exactly by
# docker/constraints.txt (generated from pyproject.toml by docker/lock.sh).
#
#   docker/install.sh VENV [SOURCE]        SOURCE: the repository (default: this one)
#
# The Dockerfile runs exactly this script; tests/test_docker.py runs it in a fresh venv.
# STREAMSOLVE_EXTRAS picks the extras (default: s3,cluster).
set -euo pipefail
venv=${1:?usage: install.sh VENV [SOURCE]}
src=${2:-$(cd "$(dirname "$0")/.." && pwd)}
extras=${STREAMSOLVE_EXTRAS:-s3,cluster}
python=${PYTHON:-python3}

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --constraint "$src/docker/constraints.txt" "$src[$extras]"
"$venv/bin/python" -m pip check
# smoke test: the entry points the image runs, and the C counting kernels
"$venv/bin/streamsolve" --help > /dev/null
"$venv/bin/python" -c 'from streamsolve.core import native; assert native.available(), "C counting kernels not built"'
"$venv/bin/dask" scheduler --help > /dev/null
"$venv/bin/dask" worker --help > /dev/null
echo "installed streamsolve[$extras] into $venv"

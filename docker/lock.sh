#!/usr/bin/env bash
# Regenerate docker/constraints.txt: resolve pyproject.toml's dependencies (with the s3 and
# cluster extras) in a fresh venv and pin every installed distribution exactly.
#   docker/lock.sh            (run after changing dependencies in pyproject.toml)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"  # build from a copy, as the image does (no build/ debris in the repo)
cp -r "$src/pyproject.toml" "$src/README.md" "$src/streamsolve" "$tmp/src/"
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$tmp/src[s3,cluster]"
{
    echo "# Exact pins for the container image: docker/lock.sh generates this file from"
    echo "# pyproject.toml (dependencies + extras s3, cluster); docker/install.sh uses it."
    echo "# Python $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())')"
    "$tmp/venv/bin/python" -m pip freeze --exclude streamsolve --exclude pip --exclude setuptools
} > "$src/docker/constraints.txt"
echo "wrote $src/docker/constraints.txt"

#!/usr/bin/env bash
# Download the wheels listed in wheels.txt for the GPU machine (CPython 3.12, manylinux x86_64) into .whl/.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
grep -vE '^\s*(#|$)' experiments/gpu/wheels.txt | while read -r pkg; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pkg" \
    || echo "could not fetch $pkg" >&2
done
du -sh .whl

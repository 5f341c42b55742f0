#!/usr/bin/env bash
# Prepare .whl/ (ignored by git) on a machine with PyPI access, to be carried to a lent GPU machine, which has no
# network: the wheels benchmarks/gpu_wheels.txt lists, built for its Python 3.12; the sources of mamba-ssm and
# causal-conv1d, for an optional kernel build there (benchmarks/gpu_check.sh); and the plans and loss settings
# gpu_check.py needs nnU-Net's planner for (gpu_check_inputs.json). Fails if the folder exceeds LIMIT_MB.
# Usage, from anywhere: bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
LIMIT_MB=${LIMIT_MB:-50}
KERNEL_SOURCES="mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0"  # setup.py's [cuda] extra; 2.3.2.post1 as baselines.py
PYTHON=${PYTHON:-python}

rm -rf "$DEST"
mkdir -p "$DEST/sdist"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$DEST" -r benchmarks/gpu_wheels.txt
# their setup.py imports torch to prepare metadata; skipping the CUDA build keeps that working on a CPU-only torch
MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE "$PYTHON" -m pip download -q --no-deps \
    --no-binary=:all: --no-build-isolation -d "$DEST/sdist" $KERNEL_SOURCES
"$PYTHON" benchmarks/gpu_check.py --write-inputs "$DEST/gpu_check_inputs.json"

ls -l "$DEST" "$DEST/sdist"
total_kb=$(du -sk "$DEST" | cut -f1)
echo "total: $(awk "BEGIN {printf \"%.2f\", $total_kb / 1024}") MiB, limit $LIMIT_MB MiB"
if [ "$total_kb" -gt $((LIMIT_MB * 1024)) ]; then
    echo "$DEST is larger than $LIMIT_MB MiB: the device call carries at most 64 MiB with the working tree" >&2
    exit 1
fi

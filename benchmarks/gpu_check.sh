#!/usr/bin/env bash
# The GPU check as one prepared command for a lent GPU machine (documentation/benchmarks.md, "GPU check"), run from a
# copy of the working tree with .whl/ carried (prepared by benchmarks/gpu_wheels.sh):
#
#   bash benchmarks/gpu_check.sh                  # the check on our pure path
#   BUILD_KERNELS=1 bash benchmarks/gpu_check.sh  # build mamba-ssm and causal-conv1d for sm_90 first, then the check
#
# Everything ends within TOTAL_S seconds (default 570, under the device's 10 minutes per command): the kernel build
# gets at most BUILD_S (default 300, timed, log in kernel_build.log), gpu_check.py what is left (--time-budget).
# Results go to $OUT (the device tool's output folder) or benchmarks/results; further arguments go to gpu_check.py
# (e.g. --sections ops kernels). Exit status: gpu_check.py's (0 passed, 1 a check failed, 3 out of time).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
TOTAL_S=${TOTAL_S:-570}
BUILD_S=${BUILD_S:-300}
RESULTS=${OUT:-benchmarks/results}
PYTHON=${PYTHON:-python3}
SITE=/tmp/gpu_check_site
mkdir -p "$RESULTS"

"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || exit 1
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

if [ "${BUILD_KERNELS:-0}" = 1 ]; then
    src=/tmp/gpu_check_kernels
    rm -rf "$src" && mkdir -p "$src"
    for sdist in .whl/sdist/*.tar.gz; do tar xzf "$sdist" -C "$src"; done
    # Their setup.py adds -gencode for every architecture from sm_75 on, whatever TORCH_CUDA_ARCH_LIST says (torch then
    # adds none): ten selective-scan .cu files for nine architectures outlast a command. Keep sm_90 (H100, H200) only.
    "$PYTHON" - "$src"/*/setup.py <<'PY' || exit 1
import re
import sys

for path in sys.argv[1:]:
    text = open(path).read()
    pattern = r'cc_flag\.append\("-gencode"\)\s*\n\s*cc_flag\.append\("arch=compute_(\w+),code=sm_\1"\)'
    text = re.sub(pattern, lambda m: m.group(0) if m.group(1) == "90" else "pass", text)
    if re.findall(r"arch=compute_\w+,code=sm_\w+", text) != ["arch=compute_90,code=sm_90"]:
        sys.exit(f"{path}: its -gencode flags changed; update the sm_90 patch in benchmarks/gpu_check.sh")
    open(path, "w").write(text)
PY
    build_start=$SECONDS
    # FORCE_BUILD: compile instead of downloading a prebuilt wheel (no network there); KEEP_CUDA_BUILD: mamba-ssm
    # sources after 2.3.2.post1 leave selective_scan_cuda out without it
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} MAMBA_FORCE_BUILD=TRUE MAMBA_KEEP_CUDA_BUILD=TRUE \
        CAUSAL_CONV1D_FORCE_BUILD=TRUE timeout "$BUILD_S" "$PYTHON" -m pip install --no-index --no-deps \
        --no-build-isolation --no-cache-dir --upgrade --target "$SITE" "$src"/causal_conv1d-*/ "$src"/mamba_ssm-*/ \
        > "$RESULTS/kernel_build.log" 2>&1
    echo "kernel build: exit status $? after $((SECONDS - build_start)) s of at most $BUILD_S" \
        | tee -a "$RESULTS/kernel_build.log"
fi

budget=$((TOTAL_S - (SECONDS - start) - 40))  # 40 s: gpu_check.py's watchdog grace and the interpreter's exit
exec "$PYTHON" benchmarks/gpu_check.py --device cuda --inputs .whl/gpu_check_inputs.json --time-budget "$budget" \
    --out "$RESULTS" "$@"

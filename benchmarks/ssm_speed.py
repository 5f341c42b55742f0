"""Speed and memory of our CPU SSM ops against the sequential reference and third-party pure-PyTorch code.

Mamba1 selective scan (batch 2, d_inner 640, N 16): sequential reference (L = 512 only: its autograd backward is
quadratic in L), mambapy's parallel scan, our pure-PyTorch scan ("pytorch") and ours as it runs by default ("ours":
the fused C++ CPU kernel when it builds). Mamba2 SSD (d_model 320, expand 2 -> 10 heads of 64, d_state 128,
batch 2): sequential reference (L = 512), mamba-ssm's ``ssd_minimal_discrete`` (chunk 64), ours. mambapy's Mamba2
calls mamba-ssm's Triton kernels, so it has no CPU path to measure. Every implementation computes the same function
(softplus of dt + bias, D skip; z gate for Mamba1) and is timed forward and forward+backward, each case in its own
process (peak RSS above its inputs). A second table divides the other implementations' forward+backward time and
peak memory by ours, from the same run. The baselines come with ``pip install -e ".[bench]"`` (mambapy; mamba-ssm's
source is fetched from PyPI by benchmarks/baselines.py). ``--skip reference`` leaves out the slowest case (its
backward takes seconds at L = 512).

    python benchmarks/ssm_speed.py [--lengths 512 4096 16384] [--threads 2] [--reps 3] [--skip IMPL ...]

Results: documentation/benchmarks.md ("SSM core"), rendered from documentation/results/ssm_speed.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Case, format_table, machine_info, run_case, write_json  # noqa: E402

MAMBA1 = dict(batch=2, dim=640, dstate=16)
MAMBA2 = dict(batch=2, nheads=10, headdim=64, dstate=128)


def _phases(forward, inputs):
    def fwd():
        with torch.no_grad():
            forward(*inputs)

    def fwd_bwd():
        for t in inputs:
            t.grad = None
        forward(*inputs).sum().backward()

    return {"forward": fwd, "forward_backward": fwd_bwd}


def setup_mamba1(impl: str, length: int):
    from nnunetv2_mamba.ssm import selective_scan
    from nnunetv2_mamba.ssm.ops.reference import selective_scan_ref

    b, d, n = MAMBA1["batch"], MAMBA1["dim"], MAMBA1["dstate"]
    inputs = [torch.randn(b, d, length), torch.randn(b, d, length) - 1, -torch.exp(torch.randn(d, n)),
              torch.randn(b, n, length), torch.randn(b, n, length), torch.ones(d), torch.randn(b, d, length),
              torch.randn(d) * 0.1]
    inputs = [t.requires_grad_() for t in inputs]
    if impl == "pytorch":
        from nnunetv2_mamba.ssm.ops.selective_scan_cpu import CPU_KERNEL_ENV

        os.environ[CPU_KERNEL_ENV] = "0"  # each case runs in its own process
    if impl == "mambapy":
        from baselines import mambapy_selective_scan
        core = mambapy_selective_scan()

        def forward(u, delta, A, B, C, D, z, bias):
            return (core(u, F.softplus(delta + bias[:, None]), A, B, C) + u * D[:, None]) * F.silu(z)
    else:
        scan = selective_scan_ref if impl == "reference" else selective_scan

        def forward(u, delta, A, B, C, D, z, bias):
            return scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    return _phases(forward, inputs)


def setup_mamba2(impl: str, length: int):
    from nnunetv2_mamba.ssm import ssd
    from nnunetv2_mamba.ssm.ops.reference import ssd_ref

    b, h, p, n = MAMBA2["batch"], MAMBA2["nheads"], MAMBA2["headdim"], MAMBA2["dstate"]
    inputs = [torch.randn(b, length, h, p), torch.randn(b, length, h) * 0.5, -torch.rand(h) * 15 - 1,
              torch.randn(b, length, 1, n), torch.randn(b, length, 1, n), torch.ones(h), torch.full((h,), -3.0)]
    inputs = [t.requires_grad_() for t in inputs]
    if impl == "ssd_minimal":
        from baselines import ssd_minimal_discrete, ssd_via_minimal
        forward = ssd_via_minimal(ssd_minimal_discrete())
    else:
        def forward(x, dt, A, B, C, D, dt_bias):
            if impl == "ours":
                return ssd(x, dt, A, B, C, 256, D=D, dt_bias=dt_bias, dt_softplus=True)
            return ssd_ref(x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)
    return _phases(forward, inputs)


COLUMNS = ["case", "impl", "length", "forward_s", "forward_backward_s", "peak_mb", "load_before", "error"]
BASELINES = {"mamba1": "mambapy", "mamba2": "ssd_minimal"}


def ratio(rows, key, num, den):
    a = next((r for r in rows if (r["case"], r["impl"], r["length"]) == num and key in r), None)
    b = next((r for r in rows if (r["case"], r["impl"], r["length"]) == den and key in r), None)
    return None if a is None or b is None else b[key] / a[key]


def ratios(rows: list[dict], lengths: list[int]) -> list[dict]:
    """Ours against each other implementation, per case and length, from rows of the same run."""
    summary = []
    for case, baseline in BASELINES.items():
        for length in lengths:
            summary.append({
                "case": case, "length": length,
                "fwd_bwd_speedup_vs_reference": ratio(rows, "forward_backward_s", (case, "ours", length),
                                                      (case, "reference", length)),
                f"fwd_bwd_speedup_vs_{baseline}": ratio(rows, "forward_backward_s", (case, "ours", length),
                                                        (case, baseline, length)),
                f"peak_memory_{baseline}_over_ours": ratio(rows, "peak_mb", (case, "ours", length),
                                                           (case, baseline, length)),
                **({"fwd_bwd_speedup_vs_pytorch": ratio(rows, "forward_backward_s", (case, "ours", length),
                                                        (case, "pytorch", length))} if case == "mamba1" else {}),
            })
    return summary


def tables(payload: dict) -> str:
    """The run's times and its ratios, as printed and as documentation/benchmarks.md shows them."""
    summary = payload["ratios"]
    return (format_table(payload["rows"], COLUMNS) + "\n\n"
            + format_table(summary, list(dict.fromkeys(k for s in summary for k in s))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096, 16384])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], help="implementations to leave out, e.g. reference")
    args = parser.parse_args()

    cases = []
    for length in args.lengths:
        for impl in ("reference", "mambapy", "pytorch", "ours"):
            if impl not in args.skip and (impl != "reference" or length <= 512):
                cases.append(Case("mamba1", setup_mamba1, dict(impl=impl, length=length),
                                  reps=1 if impl == "reference" else args.reps))
        for impl in ("reference", "ssd_minimal", "ours"):
            if impl not in args.skip and (impl != "reference" or length <= 512):
                cases.append(Case("mamba2", setup_mamba2, dict(impl=impl, length=length),
                                  reps=1 if impl == "reference" else args.reps))
    rows = []
    for case in cases:
        print(f"{case.name} {case.kwargs} ...", flush=True)
        rows.append(run_case(case, threads=args.threads))
        print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)

    payload = {"machine": machine_info(args.threads), "rows": rows, "ratios": ratios(rows, args.lengths)}
    print(tables(payload))
    print("written to", write_json("ssm_speed", payload))


if __name__ == "__main__":
    main()

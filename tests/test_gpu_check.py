"""benchmarks/gpu_check.py keeps working where no GPU is: its CPU dry run writes every section, and its kernel section
(which only runs on CUDA) compares kernels and weights correctly when given stand-in kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from nnunetv2_mamba.ssm.ops import backend, selective_scan_cpu
from nnunetv2_mamba.ssm.ops.reference import causal_conv1d_ref, selective_scan_ref, ssd_ref
from test_mamba_ssm_compat import mamba_ssm, reference_kernels  # noqa: F401 - fixtures used below

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
import torch  # noqa: E402


def test_cpu_dry_run_writes_every_section(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                             "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = payload["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    for name, section in sections.items():
        assert section["error"] is None and section["rows"], name
    assert {(r["op"], r["dtype"]) for r in sections["ops"]["rows"]} == {
        (op, dtype) for op in gpu_check.HALF_INPUTS for dtype in ("float32", "float16", "bfloat16")}
    networks = {row["case"]: row for row in sections["networks"]["rows"]}
    expected = {f"{gpu_check.RESENC} {c}" for c in ("2d", "3d_fullres")} | {
        f"{architecture} {c}" for architecture, configurations in gpu_check.NETWORKS for c in configurations}
    assert set(networks) == expected
    assert all(row["steps"] == gpu_check.QUICK_STEPS for row in networks.values())
    assert all(row["x_resenc"] > 0 for name, row in networks.items() if not name.startswith(gpu_check.RESENC))
    shares = [row["clean_share"] for row in sections["cross_supervision"]["rows"]]
    assert len(shares) == len(gpu_check.QUICK_CROSS_CASES) and all(0 < share < 1 for share in shares)
    assert payload["passed"], [r for s in sections.values() for r in s["rows"] if r.get("passed") is False]
    assert "## networks" in (tmp_path / "gpu_check.md").read_text()


def stand_in_kernels(monkeypatch) -> None:
    """The sequential references behind the kernels' calling conventions, dispatched to for any tensors."""
    kernels = {"selective_scan": selective_scan_ref,
               "ssd": lambda x, dt, A, B, C, chunk_size, **kw: ssd_ref(x, dt, A, B, C, **kw),
               "causal_conv1d": lambda x, weight, bias=None, activation=None: causal_conv1d_ref(x, weight, bias,
                                                                                              activation)}
    monkeypatch.setattr(backend, "_load", lambda op: (kernels[op], "ok"))
    monkeypatch.setattr(backend, "cuda_kernel", lambda op, *tensors: None if backend.force_pure() else kernels[op])
    monkeypatch.setenv(selective_scan_cpu.CPU_KERNEL_ENV, "0")  # CPU tensors would otherwise get the fused scan


def kernel_rows(monkeypatch, tmp_path) -> list[dict]:
    run = gpu_check.Run(torch.device("cpu"), True, time.monotonic() + 600, None, tmp_path,
                        cuda_kernels=True, payload={"sections": {"kernels": {"rows": []}}})
    monkeypatch.setattr(gpu_check.Run, "write", lambda self: None)
    gpu_check.check_kernels(run)
    return run.payload["sections"]["kernels"]["rows"]


def test_kernel_section_compares_each_op_with_our_path(monkeypatch, tmp_path):
    stand_in_kernels(monkeypatch)
    monkeypatch.setattr(gpu_check, "LAYERS", [])
    rows = kernel_rows(monkeypatch, tmp_path)
    assert [row["check"] for row in rows] == [f"{op}: kernel against our path" for op in gpu_check.HALF_INPUTS]
    assert all(row["passed"] and row["status"] == "ok" and row["grad_err"] < 1e-5 for row in rows), rows


def test_kernel_section_says_when_kernels_are_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(backend, "_load", lambda op: (None, "ModuleNotFoundError: No module named 'mamba_ssm'"))
    rows = kernel_rows(monkeypatch, tmp_path)
    assert len(rows) == len(gpu_check.HALF_INPUTS) + len(gpu_check.LAYERS)
    assert all(row["passed"] is None and row["status"].startswith("kernels not installed") for row in rows)


def test_kernel_section_moves_weights_both_ways(reference_kernels, monkeypatch, tmp_path):  # noqa: F811 - the fixture
    """mamba-ssm's own modules (from its published source, on its reference ops) against ours."""
    stand_in_kernels(monkeypatch)
    monkeypatch.setattr(gpu_check, "LAYER_TOKENS", 256)  # mamba-ssm's reference chunk scan takes whole chunks only
    rows = kernel_rows(monkeypatch, tmp_path)
    layers = [row for row in rows if "weights" in row["check"]]
    assert [row["check"] for row in layers] == [f"{name} weights both ways" for name, *_ in gpu_check.LAYERS]
    assert all(row["passed"] and row["value_err"] < 1e-4 for row in layers), layers

"""One prepared check for a lent GPU: the CUDA paths of the SSM ops, AMP, and training speed at real plans sizes.

Usage: ``python benchmarks/gpu_check.py [--device cuda] [--time-budget 480] [--inputs FILE] [--out DIR]``; the dry
run ``python benchmarks/gpu_check.py --device cpu --quick`` (tiny sizes, two steps) is what CI runs
(tests/test_gpu_check.py), so that the script keeps working between the rare GPU sessions. On the GPU machine,
``benchmarks/gpu_check.sh`` runs it; documentation/benchmarks.md ("GPU check") gives the command sequence.

Sections, each failing soft (an exception is recorded in its place and the others still run):

- ``ops``: our pure path of each SSM op (Mamba1 selective scan, Mamba2 chunked SSD, causal conv1d) on the device,
  float32 and fp16 / bf16 inputs under autocast, values and gradients against the float64 references on the CPU,
  with the CPU tests' inputs and tolerances (tests/test_ssm_ops.py; see FLOAT32_TOL below); TF32 is off meanwhile.
- ``kernels``: where mamba-ssm / causal-conv1d import, each op dispatched to its kernel against our pure path, and our
  ``Mamba`` / ``Mamba2`` weights loaded into mamba-ssm's modules and back (same outputs); otherwise one row saying
  why not ("kernels not installed"). This script builds nothing; gpu_check.sh can build them first.
- ``cross_supervision``: the share of a ``CrossSupervisionLoss`` forward + backward (WeakMamba's settings: three
  networks, pseudo labels cleaned by the "scribbled" rule) spent cleaning pseudo labels, at 2D batch 24 x 256^2 and 3D
  batch 2 x 128^3 with 10 and 40 classes, on random logits (an untrained network's pseudo label: the most components).
- ``networks``: every network at the plans size nnU-Net's ResEnc M planner gives an ACDC-like dataset, derived for
  each architecture as ``nnunetv2_mamba plans`` derives it (batch sizes included), trained on random data with
  nnU-Net's recipe (SGD, Dice + CE with deep supervision, ``torch.autocast`` fp16 with ``GradScaler``, gradient
  clipping at 12; eager, no ``torch.compile``): finite losses and gradients over 50 steps, median step time and peak
  memory; time per sample against ``ResidualEncoderUNet`` of the same configuration (each at its plans' batch size)
  in the same run. Each network gets an equal share of the time left, so the slowest may stop before 50 steps; the
  row says how many it ran.

Left out: a few hundred iterations of ``nnUNetTrainerWeakMamba`` on the ACDC scribbles. It needs nnU-Net's data
pipeline (SimpleITK, batchgeneratorsv2, acvl-utils, ...), which the GPU image lacks and the carried wheels do not hold.

The GPU image has no nnU-Net planner either, so the plans and WeakMamba's loss settings are prepared here
(``--write-inputs``, done by benchmarks/gpu_wheels.sh) and read there (``--inputs``); without ``--inputs`` they are
derived in this process. Results: ``gpu_check.json`` and ``gpu_check.md`` in ``--out``, rewritten after every row so
that a run cut short keeps what it measured; ``--time-budget`` bounds the whole run (a watchdog ends it shortly after).
Exit status: 0 every check passed, 1 one failed, 3 out of time.

The machines it was prepared for: one H100 or H200 with PyTorch 2.11, Python 3.12, Triton and nvcc 13, without
nnU-Net or network access, 15 minutes of device time a session and 10 a command. benchmarks/gpu_wheels.sh fills
``.whl/`` beforehand (the wheels of gpu_wheels.txt, installed there with ``--no-deps`` as the rest of their
dependencies serve nnU-Net's data pipeline; the mamba-ssm and causal-conv1d sources; this script's inputs; about
0.7 MiB). benchmarks/gpu_check.sh then takes 570 s, about 11 of the 15 minutes with the machine's start, so a session
runs it alone; ``BUILD_KERNELS=1`` (a kernel build for sm_90 only, of unknown length) needs a session of its own. A
pseudo-label cleaning share above 10 % of the cross-supervision loss on the GPU is follow-up work.

The dry run (``--quick``): stages 8x narrower, patches 64 x 64 and 4 x 64 x 64, batch 2, two training steps, the pure
path everywhere (no fused CPU scan), about half a minute on 2 CPU cores. Results: documentation/benchmarks.md ("GPU
check"), rendered from documentation/results/gpu_check_*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))  # the GPU machine runs the working tree without installing it

from common import RESULTS_DIR, format_table, machine_info, write_json  # noqa: E402

NAME = "gpu_check"
# (architecture, configurations of the ACDC plans it runs), each compared with ResEnc of the same configuration
NETWORKS = [("UMambaBot2", ("2d", "3d_fullres")), ("UMambaBot", ("2d",)), ("MambaUNet", ("2d",)),
            ("SwinUNet", ("2d",)), ("UMambaBot2Click", ("2d",)), ("SegMamba", ("3d_fullres",))]
RESENC = "ResidualEncoderUNet"
STEPS, QUICK_STEPS = 50, 2
QUICK_PATCH = {"2d": [64, 64], "3d_fullres": [4, 64, 64]}  # divisible by the ACDC plans' total strides
QUICK_WIDTH_DIVISOR = 8
# nnUNetTrainer's optimizer and gradient clipping
SGD_KWARGS = dict(lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
GRAD_CLIP = 12.0
AMP_DTYPE = torch.float16  # nnU-Net's autocast dtype, with GradScaler; CPU autocast takes it too (the dry run)
# (dimensions, batch, spatial shape, classes) of the cross-supervision cases, and their quick versions
CROSS_CASES = [(2, 24, (256, 256), 4), (3, 2, (128, 128, 128), 10), (3, 2, (128, 128, 128), 40)]
QUICK_CROSS_CASES = [(2, 2, (32, 32), 4), (3, 1, (16, 16, 16), 10), (3, 1, (16, 16, 16), 40)]
SCRIBBLE_DENSITY = 0.02
# Tolerances, relative to the reference's largest magnitude. float32 values and per-element gradients: 1e-5, as
# tests/test_ssm_ops.py. Gradients of per-channel parameters are sums over batch and sequence with cancellation: the
# tests hold them to 1e-5 too, but over 24 random draws of test_ssd_float32_accuracy's inputs float32 reached 2.7e-5
# on A and the dt bias (CPU, 2026-12-06), so they get 1e-4. The kernels are built with --use_fast_math: against our
# path they get causal-conv1d's own float32 test tolerance (atol 1e-3).
FLOAT32_TOL = 1e-5
REDUCED_TOL = 1e-4
REDUCED = ("A", "D", "delta_bias", "dt_bias", "weight", "bias")
KERNEL_TOL = 1e-3
GRACE_S = 20  # the watchdog ends the run this long after --time-budget
PACKAGES = ("torch", "triton", "nnunetv2", "dynamic-network-architectures", "timm", "mamba-ssm", "causal-conv1d")


# ---------------------------------------------------------------- results, budget

@dataclass
class Run:
    """What every section gets: the device, the sizes, the time budget and the report to add rows to."""

    device: torch.device
    quick: bool
    deadline: float
    inputs_file: Path | None
    out_dir: Path
    cuda_kernels: bool = False  # whether this device's tensors can reach mamba-ssm's kernels
    payload: dict[str, Any] = field(default_factory=dict)
    current: str = ""
    _inputs: dict[str, Any] | None = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def inputs(self) -> dict[str, Any]:
        """Plans and loss settings: read from ``inputs_file``, else derived here (once)."""
        if self._inputs is None:
            self._inputs = json.loads(self.inputs_file.read_text()) if self.inputs_file else prepare_inputs()
        return self._inputs

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.payload["sections"][section]["rows"].append(row)
        print(f"  {section}: " + ", ".join(f"{k}={_short(row[k])}" for k in COLUMNS[section] if k in row), flush=True)
        self.write()

    def write(self) -> None:
        write_json(NAME, self.payload, self.out_dir)
        (self.out_dir / f"{NAME}.md").write_text(markdown(self.payload))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def pure_path() -> Iterator[None]:
    """Our pure-PyTorch ops even where mamba-ssm's kernels import (NNUNETV2_MAMBA_FORCE_PURE)."""
    from nnunetv2_mamba.ssm.ops import backend

    saved = os.environ.get(backend.FORCE_PURE_ENV)
    os.environ[backend.FORCE_PURE_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[backend.FORCE_PURE_ENV]
        else:
            os.environ[backend.FORCE_PURE_ENV] = saved


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """float32 matrix products and convolutions without TF32 (cuDNN's default allows it): float32 means float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------- ops

# inputs that are half precision under AMP: the layers' activations (outputs of autocast linear layers) for the
# scans, whose A, D and biases stay float32; everything for the convolution, which autocast itself casts
HALF_INPUTS = {"selective_scan": ("u", "delta", "B", "C", "z"), "ssd": ("x", "dt", "B", "C", "z"),
               "causal_conv1d": ("x", "weight", "bias")}


def op_cases(quick: bool) -> dict[str, tuple[Callable, Callable, Callable[[], dict[str, torch.Tensor]], dict]]:
    """op -> (ours, float64 reference, float64 input maker, keyword arguments); the float32 tests' sizes."""
    from nnunetv2_mamba.ssm.ops import causal_conv1d, selective_scan, ssd
    from nnunetv2_mamba.ssm.ops.reference import (causal_conv1d_ref, scan_inputs, selective_scan_ref, ssd_inputs,
                                                   ssd_ref, with_mamba2_ranges)

    scan_size = (1, 8, 64, 4, 2, 2) if quick else (2, 40, 1500, 16, 2, 2)
    ssd_size = (1, 64, 2, 4, 1, 8) if quick else (2, 300, 4, 8, 1, 16)
    conv_size = (1, 8, 64) if quick else (2, 64, 1024)

    def conv_inputs() -> dict[str, torch.Tensor]:
        batch, dim, length = conv_size
        inputs = dict(x=torch.randn(batch, dim, length, dtype=torch.float64),
                      weight=torch.randn(dim, 4, dtype=torch.float64), bias=torch.randn(dim, dtype=torch.float64))
        return {k: v.requires_grad_() for k, v in inputs.items()}

    return {
        "selective_scan": (selective_scan, selective_scan_ref, lambda: scan_inputs(*scan_size),
                           dict(delta_softplus=True)),
        "ssd": (lambda **kw: ssd(chunk_size=256, **kw), ssd_ref, lambda: with_mamba2_ranges(ssd_inputs(*ssd_size)),
                dict(dt_softplus=True)),
        "causal_conv1d": (causal_conv1d, causal_conv1d_ref, conv_inputs, dict(activation="silu")),
    }


def values_and_grads(fn: Callable, inputs: dict[str, torch.Tensor], kwargs: dict, weight: torch.Tensor | None,
                     autocast: torch.dtype | None = None) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """``fn(**inputs, **kwargs)``, under autocast to ``autocast`` if given, and the gradients of ``sum(out * weight)``
    (a random weight drawn if None), computed outside autocast as PyTorch prescribes and nnU-Net does."""
    device_type = next(iter(inputs.values())).device.type
    with torch.autocast(device_type, dtype=autocast) if autocast else contextlib.nullcontext():
        out = fn(**inputs, **kwargs)
    if weight is None:
        weight = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad((out * weight.to(out.device, out.dtype)).sum(), list(inputs.values()))
    return out, list(grads), weight


def check_ops(run: Run) -> None:
    from nnunetv2_mamba.ssm.ops.reference import rel_err

    with pure_path(), no_tf32():
        for op, (ours, reference, make_inputs, kwargs) in op_cases(run.quick).items():
            inputs64 = make_inputs()
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                run.current = f"ops {op} {str(dtype).removeprefix('torch.')}"
                start = time.perf_counter()
                amp = dtype != torch.float32
                half = HALF_INPUTS[op] if amp else ()
                mine = {k: v.detach().to(run.device, dtype if k in half else torch.float32).requires_grad_()
                        for k, v in inputs64.items()}
                # the reference gets the half-precision inputs as rounded, the others as drawn (as the CPU tests)
                ref_inputs = {k: (v.detach().cpu().double() if k in half else inputs64[k].detach()).requires_grad_()
                              for k, v in mine.items()}
                ref, ref_grads, weight = values_and_grads(reference, ref_inputs, kwargs, None)
                out, grads, _ = values_and_grads(ours, mine, kwargs, weight, dtype if amp else None)
                synchronize(run.device)
                eps = torch.finfo(dtype).eps
                # under autocast the scans compute in float32; the convolution runs in half, then its SiLU (two
                # roundings, forward and backward); a half-precision input gets a half-precision gradient
                half_tol = 2 * eps if op == "causal_conv1d" else eps
                value_tol = half_tol if amp and op == "causal_conv1d" else FLOAT32_TOL
                grad_tols = {k: half_tol if k in half else REDUCED_TOL if k in REDUCED else FLOAT32_TOL for k in mine}
                grad_errs = {k: rel_err(g, g_ref) for k, g, g_ref in zip(mine, grads, ref_grads)}
                worst = max(mine, key=lambda k: grad_errs[k] / grad_tols[k])  # the gradient closest to failing
                value_err = rel_err(out, ref)
                run.add("ops", {
                    "op": op, "dtype": str(dtype).removeprefix("torch."), "autocast": amp,
                    "out_dtype": str(out.dtype).removeprefix("torch."), "value_err": value_err,
                    "value_tol": value_tol, "grad_worst": worst, "grad_err": grad_errs[worst],
                    "grad_tol": grad_tols[worst], "grad_errs": grad_errs,
                    "passed": value_err <= value_tol and grad_errs[worst] <= grad_tols[worst]
                    and all(math.isfinite(e) for e in grad_errs.values()),
                    "seconds": time.perf_counter() - start})


# ---------------------------------------------------------------- kernels

# mamba-ssm modules compared with ours, each with the ops its kernels need and U-Mamba2's 3D bottleneck sizes
LAYERS = [("Mamba", ("selective_scan",), "mamba_ssm.modules.mamba_simple",
           dict(d_model=320, d_state=16, d_conv=4, expand=2)),
          ("Mamba2", ("ssd",), "mamba_ssm.modules.mamba2", dict(d_model=320, d_state=32, d_conv=4, expand=2,
                                                              headdim=80))]
LAYER_TOKENS = 280  # the 3D ACDC bottleneck, 5 x 8 x 7 voxels: not a whole number of Mamba2's 256-step chunks


def check_kernels(run: Run) -> None:
    from nnunetv2_mamba.ssm.ops import backend

    if not run.cuda_kernels:
        run.add("kernels", {"check": "all", "status": "not run: CPU tensors never dispatch to the CUDA kernels",
                            "passed": None})
        return
    checks: list[tuple[str, tuple[str, ...], Callable[[], dict[str, Any]]]] = [
        (f"{op}: kernel against our path", (op,), lambda f=fn, m=make, kw=kw: kernel_against_pure(run, f, m, kw))
        for op, (fn, _, make, kw) in op_cases(run.quick).items()]
    checks += [(f"{name} weights both ways", ops, lambda layer=(name, module, kwargs): layer_both_ways(run, *layer))
               for name, ops, module, kwargs in LAYERS]
    with no_tf32():
        for check, ops, measure in checks:
            run.current = f"kernels {check}"
            missing = [backend.kernel_status(op) for op in ops if backend.kernel_status(op) != "ok"]
            if missing:
                row = {"status": f"kernels not installed: {missing[0]}", "passed": None}
            else:
                try:
                    row = {"status": "ok", **measure(), "tol": KERNEL_TOL}
                    errors = [row["value_err"], row.get("grad_err", 0.0)]
                    row["passed"] = all(math.isfinite(e) and e <= KERNEL_TOL for e in errors)
                except Exception as e:  # noqa: BLE001 - recorded; the other checks still run
                    row = {"status": f"{type(e).__name__}: {e}", "passed": False, "traceback": traceback.format_exc()}
            run.add("kernels", {"check": check, **row})


def kernel_against_pure(run: Run, ours: Callable, make_inputs: Callable, kwargs: dict) -> dict[str, float]:
    """An op dispatched to its kernel against our pure path on the same float32 inputs: values and gradients."""
    from nnunetv2_mamba.ssm.ops.reference import rel_err

    inputs = {k: v.detach().float().to(run.device).requires_grad_() for k, v in make_inputs().items()}
    with pure_path():
        out, grads, weight = values_and_grads(ours, inputs, kwargs, None)
    kernel_out, kernel_grads, _ = values_and_grads(ours, inputs, kwargs, weight)
    return {"value_err": rel_err(kernel_out, out),
            "grad_err": max(rel_err(g, h) for g, h in zip(kernel_grads, grads))}


def layer_both_ways(run: Run, name: str, module: str, kwargs: dict) -> dict[str, float]:
    """Weights from mamba-ssm's module (on its kernels) into ours (pure path) and from ours into a fresh one of
    theirs: the same outputs both ways; ``value_err`` is the larger of the two differences."""
    import importlib

    import nnunetv2_mamba.ssm as ours_module
    from nnunetv2_mamba.ssm.ops.reference import rel_err

    theirs_class = getattr(importlib.import_module(module), name)
    # their memory-efficient Mamba2 path needs causal-conv1d's compiled functions; the plain one only the SSD kernel
    theirs_kwargs = {"use_mem_eff_path": False} if name == "Mamba2" else {}
    ours = getattr(ours_module, name)(**kwargs).to(run.device)
    theirs = theirs_class(**kwargs, **theirs_kwargs).to(run.device)
    theirs_again = theirs_class(**kwargs, **theirs_kwargs).to(run.device)
    u = torch.randn(2, LAYER_TOKENS, kwargs["d_model"], device=run.device)
    with torch.no_grad():
        ours.load_state_dict(theirs.state_dict())
        with pure_path():
            ours_out = ours(u)
        theirs_to_ours = rel_err(ours_out, theirs(u))
        theirs_again.load_state_dict(ours.state_dict())
        ours_to_theirs = rel_err(theirs_again(u), ours_out)
    return {"value_err": max(theirs_to_ours, ours_to_theirs)}


# ---------------------------------------------------------------- cross-supervision loss

def check_cross_supervision(run: Run) -> None:
    import nnunetv2_mamba.training.loss.cross_supervision_loss as csl

    settings = run.inputs()["weak_mamba_loss"]
    clean_seconds: list[float] = []
    clean = csl.clean_pseudo_label

    def timed_clean(*args, **kwargs):
        synchronize(run.device)
        start = time.perf_counter()
        labels = clean(*args, **kwargs)
        synchronize(run.device)
        clean_seconds.append(time.perf_counter() - start)
        return labels

    csl.clean_pseudo_label = timed_clean  # the loss calls the module's function; restored below
    try:
        for dims, batch, shape, classes in QUICK_CROSS_CASES if run.quick else CROSS_CASES:
            run.current = f"cross_supervision {dims}d {classes} classes"
            if run.left() < 0:
                run.add("cross_supervision", {"case": f"{dims}d", "classes": classes, "passed": None,
                                              "note": "skipped: time budget"})
                continue
            loss = csl.CrossSupervisionLoss(
                classes, settings["pce_weight"], settings["pseudo_label_weight"], batch_dice=dims == 2,
                components=settings["components"], pseudo_label_loss=settings["pseudo_label_loss"],
                margin=settings["margin"], keep_scribbles=settings["keep_scribbles"])
            outputs, targets = cross_supervision_batch(run, settings["networks"][str(dims)], batch, shape, classes)
            totals, cleans = [], []
            for rep in range(2 if run.quick else 3):  # the first is a warm-up
                clean_seconds.clear()
                synchronize(run.device)
                start = time.perf_counter()
                with torch.autocast(run.device.type, dtype=AMP_DTYPE):
                    losses = loss(outputs, targets)
                sum(losses.values()).backward()
                synchronize(run.device)
                if rep:
                    totals.append(time.perf_counter() - start)
                    cleans.append(sum(clean_seconds))
                for scales in outputs.values():
                    for logits in scales:
                        logits.grad = None
            total, cleaning = statistics.median(totals), statistics.median(cleans)
            run.add("cross_supervision", {
                "case": f"{dims}d", "batch": batch, "shape": "x".join(map(str, shape)), "classes": classes,
                "networks": len(outputs), "loss_backward_s": total, "clean_s": cleaning,
                "clean_share": cleaning / total, "reps": len(totals)})
            del outputs, targets, losses
            _free(run.device)
    finally:
        csl.clean_pseudo_label = clean


def cross_supervision_batch(run: Run, networks: int, batch: int, shape: tuple[int, ...], classes: int
                            ) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    """Random logits (AMP dtype, deep supervision down to 1/16 as nnU-Net's plans give) of ``networks`` networks and
    scribbles (``SCRIBBLE_DENSITY`` of the voxels labelled, the rest the ignore label ``classes``) at every scale."""
    from nnunetv2_mamba.training.loss.cross_supervision_loss import resize_labels

    scales = [tuple(max(1, s // 2 ** i) for s in shape) for i in range(3 if run.quick else 5)]
    outputs = {f"net{i}": [torch.randn(batch, classes, *s, device=run.device, dtype=AMP_DTYPE)
                           .requires_grad_() for s in scales] for i in range(networks)}
    scribbles = torch.randint(0, classes, (batch, 1, *shape), device=run.device)
    scribbles[torch.rand(scribbles.shape, device=run.device) > SCRIBBLE_DENSITY] = classes
    return outputs, [resize_labels(scribbles, s) for s in scales]


# ---------------------------------------------------------------- networks

def prepare_inputs() -> dict[str, Any]:
    """The networks' plans and WeakMamba's loss settings, from nnU-Net's planner and our plans derivation (the way
    ``nnunetv2_mamba plans`` derives them) and from the trainer: everything the GPU image cannot import."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.nnunet_plans import DATASET, acdc_like_configurations
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    from nnunetv2_mamba.plans import derive_plans
    from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import nnUNetTrainerWeakMamba as Trainer

    with tempfile.TemporaryDirectory() as tmp:
        configurations = acdc_like_configurations(Path(tmp))
        dataset_json = json.loads((Path(tmp) / "raw" / DATASET / "dataset.json").read_text())
    base = {"dataset_name": DATASET, "plans_name": "nnUNetResEncUNetMPlans", "configurations": configurations}
    recursive_fix_for_json_export(base)
    base = json.loads(json.dumps(base))  # tuples -> lists, as read from a plans file
    cases = [network_case(RESENC, name, config, dataset_json) for name, config in base["configurations"].items()]
    for architecture, names in NETWORKS:
        plans, _ = derive_plans(base, architecture, list(names), dataset_json)
        cases += [network_case(architecture, name, plans["configurations"][name], dataset_json) for name in names]
    return {"networks": cases, "weak_mamba_loss": {
        "components": Trainer.pseudo_label_components, "pseudo_label_loss": Trainer.pseudo_label_loss,
        "margin": Trainer.pseudo_label_margin, "keep_scribbles": Trainer.pseudo_label_keeps_scribbles,
        "pce_weight": Trainer.pce_weight, "pseudo_label_weight": Trainer.pseudo_label_weight,
        "networks": {str(dims): len(members) for dims, members in Trainer.members.items()}}}


def network_case(architecture: str, configuration: str, config: dict, dataset_json: dict) -> dict[str, Any]:
    """One network to train: its plans configuration, and batch Dice as nnU-Net's planner sets it where there is no
    3d_lowres configuration (2d only; the planner adds it later than ``acdc_like_configurations`` stops)."""
    return {"case": f"{architecture} {configuration}", "configuration": configuration,
            "architecture": config["architecture"], "patch_size": config["patch_size"],
            "batch_size": config["batch_size"], "batch_dice": configuration == "2d",
            "input_channels": len(dataset_json["channel_names"]), "num_classes": len(dataset_json["labels"]),
            "reference": None if architecture == RESENC else f"{RESENC} {configuration}"}


def quick_case(case: dict[str, Any]) -> dict[str, Any]:
    """A case at CPU size: narrower stages, a small patch, batch 2; the same classes, topology and code paths."""
    from nnunetv2_mamba.plans.narrow import narrow_plans

    case = json.loads(json.dumps(case))
    narrow_plans({"configurations": {case["case"]: case}}, QUICK_WIDTH_DIVISOR)
    case.update(patch_size=QUICK_PATCH[case["configuration"]], batch_size=2)
    return case


def check_networks(run: Run) -> None:
    cases = run.inputs()["networks"]
    if run.quick:
        cases = [quick_case(c) for c in cases]
    rows: dict[str, dict[str, Any]] = {}
    for index, case in enumerate(cases):
        run.current = f"networks {case['case']}"
        if run.left() <= 0:
            run.add("networks", {"case": case["case"], "note": "skipped: time budget", "passed": None})
            continue
        share = run.left() / (len(cases) - index)  # an equal share of what is left
        try:
            row = train_steps(run, case, QUICK_STEPS if run.quick else STEPS, share)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: recorded, the next network still runs
            row = {"case": case["case"], "passed": False, "error": f"{type(e).__name__}: {e}"}
        _free(run.device)
        reference = rows.get(case["reference"] or "")
        if reference and reference.get("ms_per_sample") and row.get("ms_per_sample"):
            row["x_resenc"] = row["ms_per_sample"] / reference["ms_per_sample"]
        rows[case["case"]] = row
        run.add("networks", row)


def train_steps(run: Run, case: dict[str, Any], steps: int, seconds: float) -> dict[str, Any]:
    """nnU-Net's training step on one random batch, ``steps`` times, or fewer (at least one) where another step
    would overrun ``seconds`` or the run's budget."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunetv2_mamba.training.loss.cross_supervision_loss import deep_supervision_weights

    start = time.perf_counter()
    device, architecture = run.device, case["architecture"]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net
        torch.cuda.reset_peak_memory_stats(device)
    net = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                 architecture["_kw_requires_import"], case["input_channels"], case["num_classes"],
                                 allow_init=True, deep_supervision=True).to(device)
    x = network_input(case, device)
    optimizer = torch.optim.SGD(net.parameters(), **SGD_KWARGS)
    scaler = torch.amp.GradScaler(device.type)
    dice_kwargs = {"batch_dice": case["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False}
    dc_ce = DC_and_CE_loss(dice_kwargs, {}, weight_ce=1, weight_dice=1, ignore_label=None,
                           dice_class=MemoryEfficientSoftDiceLoss)
    loss_fn, targets = None, None
    losses, grad_norms, times = [], [], []
    while len(losses) < steps and (not times or min(seconds - (time.perf_counter() - start), run.left()) > times[-1]):
        step_start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=AMP_DTYPE):
            output = net(x)
            if loss_fn is None:  # targets at every deep-supervision scale the network outputs
                loss_fn = DeepSupervisionWrapper(dc_ce, deep_supervision_weights(len(output)))
                targets = [torch.randint(0, case["num_classes"], (o.shape[0], 1, *o.shape[2:]), device=device)
                           for o in output]
            loss = loss_fn(output, targets)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norms.append(torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP).item())
        scaler.step(optimizer)  # skipped when the gradients are not finite, as GradScaler finds its scale
        scaler.update()
        losses.append(loss.item())
        times.append(time.perf_counter() - step_start)
    step_s = statistics.median(times[1:] if len(times) > 1 else times)  # the first step tunes cuDNN
    # GradScaler starts at 2^16 and halves on every overflow: early steps may skip, later ones must not
    late = grad_norms[len(grad_norms) // 2:]
    passed = all(math.isfinite(v) for v in losses) and all(math.isfinite(v) for v in late)
    return {"case": case["case"], "batch": case["batch_size"], "patch": "x".join(map(str, case["patch_size"])),
            "steps": len(losses), "steps_asked": steps, "step_s": step_s,
            "ms_per_sample": 1000 * step_s / case["batch_size"],
            "peak_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None,
            "loss_first": losses[0], "loss_last": losses[-1],
            "nonfinite_grad_steps": sum(not math.isfinite(v) for v in grad_norms), "passed": passed,
            "note": "stopped by the time budget" if len(losses) < steps else ""}


def network_input(case: dict[str, Any], device: torch.device) -> torch.Tensor:
    """A random image batch; for a click-prompted network, followed by two clicks per foreground class."""
    import numpy as np

    from nnunetv2_mamba.nets.click_channels import Click, click_labels, encode_click_channels

    batch, patch = case["batch_size"], case["patch_size"]
    x = torch.randn(batch, case["input_channels"], *patch)
    if "Click" in case["architecture"]["network_class_name"]:
        labels = click_labels(case["num_classes"])
        clicks = [encode_click_channels([Click(label, tuple(float(torch.randint(0, n, ()).item()) for n in patch))
                                         for label in labels for _ in range(2)], patch, labels)
                  for _ in range(batch)]
        x = torch.cat([x, torch.from_numpy(np.stack(clicks))], dim=1)
    return x.to(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- report

SECTIONS: dict[str, Callable[[Run], None]] = {"ops": check_ops, "kernels": check_kernels,
                                              "cross_supervision": check_cross_supervision,
                                              "networks": check_networks}
COLUMNS = {
    "ops": ["op", "dtype", "out_dtype", "value_err", "value_tol", "grad_worst", "grad_err", "grad_tol", "passed",
            "seconds"],
    "kernels": ["check", "status", "value_err", "grad_err", "tol", "passed"],
    "cross_supervision": ["case", "batch", "shape", "classes", "networks", "loss_backward_s", "clean_s",
                          "clean_share", "reps", "note"],
    "networks": ["case", "batch", "patch", "steps", "step_s", "ms_per_sample", "x_resenc", "peak_mb", "loss_first",
                 "loss_last", "nonfinite_grad_steps", "passed", "note", "error"],
}


def markdown(payload: dict[str, Any]) -> str:
    machine = payload["machine"]
    lines = [f"# GPU check ({'quick, ' if payload['quick'] else ''}{payload['device']})", "",
             f"{machine['cuda'] or machine['cpu']}, torch {machine['torch']}, {machine['date']}; "
             f"passed: {payload['passed']}; {payload['elapsed_s']:.0f} s of a {payload['time_budget_s']:.0f} s budget",
             "", "Packages: " + ", ".join(f"{k} {v}" for k, v in payload["packages"].items() if v),
             "", "Backends for CUDA tensors: " + "; ".join(f"{k}: {v}" for k, v in payload["backends"].items())]
    for note in payload["notes"]:
        lines += ["", f"**{note}**"]
    return "\n".join(lines) + "\n\n" + tables(payload, "##", full=True) + "\n"


def tables(payload: dict[str, Any], heading: str = "####", full: bool = False) -> str:
    """Every section's table under a ``heading``-level title: the report's body (``##``, ``full``) and, by default,
    what documentation/benchmarks.md shows inside its "GPU check" section, where a dry run (``--quick``) shows the
    table of ``ops`` only: at tiny sizes the other sections' figures say no more than their verdicts, one line each."""
    lines: list[str] = []
    for name, section in payload["sections"].items():
        if payload["quick"] and not full and name != "ops":
            rows, failed = len(section["rows"]), sum(row.get("passed") is False for row in section["rows"])
            verdict = (f"failed: {section['error']}" if section["error"] else
                       f"{failed} of {rows} rows failed" if failed else f"{rows} row{'s' * (rows != 1)}, none failed")
            lines += ["", f"- `{name}`: {verdict}"]
            continue
        lines += ["", f"{heading} {name}", ""]
        if section["rows"]:
            lines.append(format_table(section["rows"], COLUMNS[name]))
        if section["error"]:
            lines += ["", f"section failed: {section['error']}"]
    return "\n".join(lines[1:])


def finish(payload: dict[str, Any], started: float) -> None:
    """Overall verdict: no section failed, every row with a verdict passed, and every section has rows."""
    sections = payload["sections"].values()
    payload["elapsed_s"] = time.monotonic() - started
    payload["passed"] = all(not s["error"] and s["rows"] and all(r.get("passed") is not False for r in s["rows"])
                            for s in sections)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages this check depends on (None: not installed)."""
    from importlib import metadata

    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes and two training steps (the CPU dry run)")
    parser.add_argument("--time-budget", type=float, default=480, help="seconds for the whole run [480]")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--inputs", type=Path, help="plans and loss settings written by --write-inputs")
    parser.add_argument("--write-inputs", type=Path, help="derive the plans and loss settings, write them, exit")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"folder for {NAME}.json and {NAME}.md")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (use --device cpu for the dry run)")
    started = time.monotonic()
    if args.write_inputs:
        args.write_inputs.parent.mkdir(parents=True, exist_ok=True)
        args.write_inputs.write_text(json.dumps(prepare_inputs(), indent=1))
        print("written to", args.write_inputs)
        return
    if args.device == "cpu":
        from nnunetv2_mamba.ssm.ops.selective_scan_cpu import CPU_KERNEL_ENV

        os.environ[CPU_KERNEL_ENV] = "0"  # the pure path, as on the GPU; and nothing to compile
    from nnunetv2_mamba.ssm.ops import backend

    torch.manual_seed(0)
    run = Run(torch.device(args.device), args.quick, started + args.time_budget, args.inputs, args.out,
              cuda_kernels=args.device == "cuda")
    run.out_dir.mkdir(parents=True, exist_ok=True)
    run.payload = {"machine": machine_info(torch.get_num_threads()), "device": args.device, "quick": args.quick,
                   "time_budget_s": args.time_budget, "elapsed_s": 0.0, "passed": None, "notes": [],
                   "backends": backend.backend_report(), "torch_cuda": torch.version.cuda, "packages": versions(),
                   "sections": {name: {"rows": [], "error": None, "seconds": None} for name in args.sections}}

    def expire() -> None:
        run.payload["notes"].append(f"stopped: the time budget ({args.time_budget:.0f} s + {GRACE_S} s) ran out "
                                    f"during {run.current}")
        finish(run.payload, started)
        run.payload["passed"] = False  # not everything was checked
        run.write()
        print(f"time budget exceeded during {run.current}; results so far in {run.out_dir}", flush=True)
        os._exit(3)

    watchdog = threading.Timer(max(0.0, run.left()) + GRACE_S, expire)
    watchdog.daemon = True
    watchdog.start()
    for name in args.sections:
        print(f"{name} ...", flush=True)
        section = run.payload["sections"][name]
        section_start = time.monotonic()
        try:
            SECTIONS[name](run)
        except Exception as e:  # noqa: BLE001 - recorded; the other sections still run
            section["error"] = f"{type(e).__name__}: {e}"
            section["traceback"] = traceback.format_exc()
            print(section["traceback"], flush=True)
        section["seconds"] = time.monotonic() - section_start
        finish(run.payload, started)
        run.write()
    watchdog.cancel()
    print(markdown(run.payload))
    print("written to", run.out_dir / f"{NAME}.json", "and", run.out_dir / f"{NAME}.md")
    sys.exit(0 if run.payload["passed"] else 1)


if __name__ == "__main__":
    main()

"""Check that nnU-Net and this plugin are set up: nnU-Net's folders, nnUNet_extTrainer (our trainers resolved by
nnU-Net's own lookup), the networks named by our plans overrides, and the SSM backend (torch, CUDA, mamba-ssm
kernels). Each problem is printed with the command that fixes it; the exit status is 1 if anything is broken.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import pydoc
from dataclasses import dataclass

HELP = "check nnU-Net paths, nnUNet_extTrainer, networks and the SSM backend; print what to fix"

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@dataclass
class Check:
    status: str  # "ok", "warn" (works, could be better) or "FAIL" (broken)
    subject: str
    detail: str
    fix: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    checks = check_folders() + check_ext_trainer() + check_networks() + check_backend()
    for check in checks:
        print(f"[{check.status:>4}] {check.subject}: {check.detail}")
        if check.fix:
            print(f"       fix: {check.fix}")
    failed = [c for c in checks if c.status == "FAIL"]
    print(f"\n{len(failed)} problem(s) found." if failed else "\nEverything is set up.")
    return 1 if failed else 0


def check_folders() -> list[Check]:
    """nnU-Net's three folders: set and existing."""
    checks = []
    for name in NNUNET_FOLDERS:
        value = os.environ.get(name)
        if not value:
            checks.append(Check("FAIL", name, "not set", f"export {name}=/path/to/{name}  (e.g. in ~/.bashrc)"))
        elif not os.path.isdir(value):
            checks.append(Check("FAIL", name, f"{value} does not exist", f"mkdir -p {value}"))
        else:
            checks.append(Check("ok", name, value))
    return checks


def check_ext_trainer() -> list[Check]:
    """nnUNet_extTrainer contains our shim folder and nnU-Net's lookup returns our classes."""
    from nnunetv2_mamba.ext_trainers import EXT_TRAINER_DIR, trainer_classes

    fix = "export nnUNet_extTrainer=$(nnunetv2_mamba ext-trainer-path)"
    value = os.environ.get("nnUNet_extTrainer")
    if not value:
        return [Check("FAIL", "nnUNet_extTrainer", "not set: nnUNetv2_train/predict cannot find our trainers", fix)]
    folders = [os.path.realpath(p) for p in value.split(os.pathsep) if p.strip()]
    if str(EXT_TRAINER_DIR) not in folders:
        return [Check("FAIL", "nnUNet_extTrainer", f"{value} does not contain {EXT_TRAINER_DIR}",
                      f'export nnUNet_extTrainer="$nnUNet_extTrainer{os.pathsep}{EXT_TRAINER_DIR}"')]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        trainers = list(trainer_classes().values())
    except Exception as e:  # noqa: BLE001 - a broken trainer module breaks every lookup; say which error
        return [Check("FAIL", "trainers", f"importing nnunetv2_mamba.training failed: {type(e).__name__}: {e}")]
    wrong = []
    for trainer in trainers:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            try:
                resolved = recursive_find_trainer_class_by_name(trainer.__name__)
            except Exception as e:  # noqa: BLE001 - report whatever the lookup raised
                resolved = e
        if resolved is not trainer:
            wrong.append(f"{trainer.__name__} -> {resolved!r}")
    if wrong:
        return [Check("FAIL", "trainers", "nnU-Net's lookup does not return our classes: " + "; ".join(wrong),
                      "rename trainer classes that clash with nnU-Net's own, or check nnUNet_extTrainer")]
    return [Check("ok", "nnUNet_extTrainer", value),
            Check("ok", "trainers", f"{len(trainers)} found by nnU-Net's lookup "
                                    f"({', '.join(sorted(t.__name__ for t in trainers))})")]


def check_networks() -> list[Check]:
    """The network class of every plans override imports."""
    from nnunetv2_mamba.plans import architectures, load_override

    broken = []
    for name in architectures():
        class_name = load_override(name)["architecture"]["network_class_name"]
        if pydoc.locate(class_name) is None:
            try:
                importlib.import_module(class_name.rpartition(".")[0])
                broken.append(f"{name}: {class_name} not found")
            except Exception as e:  # noqa: BLE001 - report whatever the import raised
                broken.append(f"{name}: {type(e).__name__}: {e}")
    if broken:
        return [Check("FAIL", "networks", "; ".join(broken), "reinstall: pip install -e .")]
    return [Check("ok", "networks", ", ".join(architectures()))]


def check_backend() -> list[Check]:
    """torch, CUDA, and which SSM implementation CPU and CUDA tensors get."""
    import torch

    from nnunetv2_mamba.ssm.ops import selective_scan_cpu
    from nnunetv2_mamba.ssm.ops.backend import backend_report

    checks = [Check("ok", "torch", f"{torch.__version__} ({torch.get_num_threads()} CPU threads)")]
    if torch.cuda.is_available():
        checks.append(Check("ok", "CUDA", f"{torch.version.cuda}, {torch.cuda.get_device_name(0)}"))
    else:
        checks.append(Check("warn", "CUDA", "not available: training runs on the CPU (nnUNetv2_train ... -device "
                                            "cpu), fine for the demo, slow for real data"))
    cpu_scan = selective_scan_cpu.status()
    checks.append(Check("ok" if cpu_scan.startswith("fused") else "warn", "ssm selective_scan (CPU)", cpu_scan,
                        "" if cpu_scan.startswith("fused") else "optional, several times faster on CPU: a C++ "
                                                                 "compiler with OpenMP (g++), see documentation/ssm.md"))
    report = backend_report()
    for op, backend in report.items():
        status = "ok" if backend.startswith("cuda-kernel") or not torch.cuda.is_available() else "warn"
        checks.append(Check(status, f"ssm {op} (CUDA)", backend,
                            "" if status == "ok" else "optional, faster on GPU: pip install -e '.[cuda]' "
                                                      "--no-build-isolation (see documentation/ssm.md)"))
    return checks

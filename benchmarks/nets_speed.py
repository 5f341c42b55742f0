"""CPU (or GPU) forward and forward+backward time and peak memory of our networks against nnU-Net's own, built
from the same plans, in one run. Usage: ``python benchmarks/nets_speed.py [--quick] [--threads 2] [--only 2d]``.

Each entry of ``CASES`` is a :class:`benchmarks.common.Case` whose setup returns ``{"forward": fn,
"forward_backward": fn}``; ratios in the table are against the case named in its ``reference`` kwarg.
Networks are built as nnU-Net's trainer builds them (``get_network_from_plans`` on a plans ``architecture`` block,
deep supervision on); forward+backward is one training step's network work (loss: mean squares of the outputs).
The 2d cases use ResEnc-M plans of an ACDC-like configuration (patch 256 x 224, batch 2, six stages up to 512
features); MambaUNet and SwinUNet run at 224 x 224 in their papers' configuration (embedding 96, patch 4), MambaUNet
also with the pure-PyTorch scan and the sequential reference scan; the 3d cases an isotropic 64 x 128 x 128 patch,
batch 1, where SegMamba takes nnU-Net's topology and keeps its own block counts.
On 2 CPU cores the 2d cases take under a minute each, the 3d ones one to two minutes.
Results: documentation/benchmarks.md ("Networks"), rendered from documentation/results/nets_speed_*.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Case, format_table, machine_info, run_case, write_json  # noqa: E402

_RESENC_COMMON = {
    "conv_bias": True, "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True}, "norm_op_kwargs": {"eps": 1e-05, "affine": True}}
_IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]
# Plans ``architecture`` blocks of nnU-Net's ResEnc M planner (nnUNetPlannerResEncM), with the patch sizes it plans:
# ACDC-like 2d (cine MRI, 1.5625 mm in-plane) and an isotropic 3d_fullres configuration at 64 x 128 x 128.
PLANS = {
    "acdc_2d": ({"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                 "arch_kwargs": {
                     "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 512, 512],
                     "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 6,
                     "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]],
                     "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
                     "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", **_RESENC_COMMON},
                 "_kw_requires_import": _IMPORTS}, [256, 224]),
    "iso_3d": ({"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                "arch_kwargs": {
                    "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
                    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                    "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", **_RESENC_COMMON},
                "_kw_requires_import": _IMPORTS}, [64, 128, 128]),
}
# nnU-Net's topology keys, which SegMamba takes unchanged (its decoder keeps SegMamba's block counts)
TOPOLOGY = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "conv_bias", "norm_op",
            "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs")

RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
UMAMBA_BOT2 = "nnunetv2_mamba.nets.umamba_bot.UMambaBot2"
UMAMBA_BOT = "nnunetv2_mamba.nets.umamba_bot.UMambaBot"
SEGMAMBA = "nnunetv2_mamba.nets.segmamba.SegMamba"


def build_network(network: str, plans: str, batch: int, arch_keys: tuple[str, ...] | None = None):
    """``network`` (a class name, as in plans) built from ``PLANS[plans]``, keeping only ``arch_keys`` if given, and
    a random input batch."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture, patch = PLANS[plans]
    kwargs = architecture["arch_kwargs"]
    if arch_keys is not None:
        kwargs = {key: kwargs[key] for key in arch_keys}
    net = get_network_from_plans(network, kwargs, architecture["_kw_requires_import"], 1, 4, deep_supervision=True)
    return net, torch.randn(batch, 1, *patch)


def phases_of(net: torch.nn.Module, x: torch.Tensor) -> dict:
    def forward():
        with torch.no_grad():
            net(x)

    def forward_backward():
        net.zero_grad(set_to_none=True)
        sum(out.float().square().mean() for out in net(x)).backward()

    return {"forward": forward, "forward_backward": forward_backward}


def setup_network(network: str, plans: str, batch: int, arch_keys: tuple[str, ...] | None = None,
                  reference: str | None = None):
    """Forward and forward+backward of :func:`build_network`. ``reference`` names the case the ratio columns compare
    against; the setup does not use it."""
    return phases_of(*build_network(network, plans, batch, arch_keys))


# MambaUNet / SwinUNet keep their paper configuration; the plans give them only the strides of their stages.
PLANS["token_2d"] = ({"arch_kwargs": {"strides": [[1, 1], [4, 4], [2, 2], [2, 2], [2, 2]]}, "_kw_requires_import": []},
                     [224, 224])
MAMBA_UNET = "nnunetv2_mamba.nets.mamba_unet.MambaUNet"
SWIN_UNET = "nnunetv2_mamba.nets.swin_unet.SwinUNet"


def setup_token_unet(network: str, batch: int, scan: str = "default", reference: str | None = None):
    """A token U-Net at 224 x 224 (Mamba-UNet's and Swin-Unet's input size), built like :func:`setup_network`.
    ``scan``: "default" (the fused CPU kernel when it builds), "pytorch" (the pure-PyTorch scan) or "reference"
    (the sequential ``selective_scan_ref``; forward only, as its per-step indexing makes the backward quadratic in the
    sequence length). For MambaUNet, the phase "scans" replays the selective scans of one forward, with their
    arguments: the scans' share of the forward, comparable across scan implementations."""
    import nnunetv2_mamba.ssm.modules.ss2d as ss2d

    if scan == "pytorch":
        from nnunetv2_mamba.ssm.ops.selective_scan_cpu import CPU_KERNEL_ENV

        os.environ[CPU_KERNEL_ENV] = "0"  # each case runs in its own process
    elif scan == "reference":
        from nnunetv2_mamba.ssm.ops.reference import selective_scan_ref

        ss2d.selective_scan = selective_scan_ref
    net, x = build_network(network, "token_2d", batch)
    phases = phases_of(net, x)
    if scan == "reference":
        del phases["forward_backward"]
    scan_fn, calls = ss2d.selective_scan, []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return scan_fn(*args, **kwargs)

    ss2d.selective_scan = recording
    phases["forward"]()
    ss2d.selective_scan = scan_fn
    if calls:
        def scans():
            with torch.no_grad():
                for args, kwargs in calls:
                    scan_fn(*args, **kwargs)

        phases["scans"] = scans
    return phases


MAMBA_UNET_REFERENCE = "MambaUNet 2d 224 b1 reference scan"
CASES: list[Case] = [
    Case("ResidualEncoderUNet 2d", setup_network, dict(network=RESENC, plans="acdc_2d", batch=2)),
    Case("UMambaBot2 2d", setup_network,
         dict(network=UMAMBA_BOT2, plans="acdc_2d", batch=2, reference="ResidualEncoderUNet 2d")),
    Case("UMambaBot 2d", setup_network,
         dict(network=UMAMBA_BOT, plans="acdc_2d", batch=2, reference="ResidualEncoderUNet 2d")),
    Case("ResidualEncoderUNet 3d", setup_network, dict(network=RESENC, plans="iso_3d", batch=1)),
    Case("UMambaBot2 3d", setup_network,
         dict(network=UMAMBA_BOT2, plans="iso_3d", batch=1, reference="ResidualEncoderUNet 3d")),
    Case("SegMamba 3d", setup_network,
         dict(network=SEGMAMBA, plans="iso_3d", batch=1, arch_keys=TOPOLOGY, reference="ResidualEncoderUNet 3d"),
         reps=1, warmup=0),  # half a minute per forward+backward on 2 cores: its first stage scans 32 x 64 x 64 voxels
    Case("MambaUNet 2d 224 b1", setup_token_unet, dict(network=MAMBA_UNET, batch=1, reference=MAMBA_UNET_REFERENCE)),
    Case("MambaUNet 2d 224 b1 pure-PyTorch scan", setup_token_unet,
         dict(network=MAMBA_UNET, batch=1, scan="pytorch", reference=MAMBA_UNET_REFERENCE)),
    Case("MambaUNet 2d 224 b8", setup_token_unet, dict(network=MAMBA_UNET, batch=8)),
    Case("SwinUNet 2d 224 b1", setup_token_unet, dict(network=SWIN_UNET, batch=1)),
    Case("SwinUNet 2d 224 b8", setup_token_unet, dict(network=SWIN_UNET, batch=8)),
    Case(MAMBA_UNET_REFERENCE, setup_token_unet, dict(network=MAMBA_UNET, batch=1, scan="reference"),
         reps=1, warmup=0),  # seconds per pass: the sequential scan walks 3136 steps in each stage-0 block
]

MEASURES = ("forward_s", "forward_backward_s", "scans_s", "peak_mb")


def add_ratios(rows: list[dict]) -> None:
    """``<measure>_x``: a row's measure over its reference's, both from this run; and forward seconds per image."""
    by_name = {row["case"]: row for row in rows}
    for row in rows:
        if row.get("forward_s"):
            row["forward_s_per_image"] = row["forward_s"] / row["batch"]
        ref = by_name.get(row.get("reference"))
        for measure in MEASURES:
            if ref is not None and row.get(measure) and ref.get(measure):
                row[f"{measure}_x"] = row[measure] / ref[measure]


COLUMNS = ["case", "forward_s", "forward_s_per_image", "forward_s_x", "forward_backward_s", "forward_backward_s_x",
           "scans_s", "scans_s_x", "peak_mb", "peak_mb_x", "load_before", "error"]


def tables(payload: dict) -> str:
    """The run's table, as printed and as documentation/benchmarks.md shows it."""
    return format_table(payload["rows"], COLUMNS)


def select(cases: list[Case], only: list[str] | None) -> list[Case]:
    """Cases whose name contains one of ``only`` (all if None), plus the references they are compared with."""
    if not only:
        return cases
    chosen = {c.name for c in cases if any(word in c.name for word in only)}
    chosen |= {c.kwargs["reference"] for c in cases if c.name in chosen and "reference" in c.kwargs}
    return [c for c in cases if c.name in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one repetition, for smoke tests")
    parser.add_argument("--only", nargs="*", help="run the cases whose name contains one of these (and their "
                                                  "references), e.g. --only 2d")
    args = parser.parse_args()
    rows = []
    for case in select(CASES, args.only):
        if args.quick:
            case.reps, case.warmup = 1, 0
        print(f"running {case.name} ...", flush=True)
        rows.append(run_case(case, threads=args.threads))
    add_ratios(rows)
    payload = {"machine": machine_info(args.threads), "rows": rows}
    print(tables(payload))
    print("written to", write_json("nets_speed", payload))


if __name__ == "__main__":
    main()

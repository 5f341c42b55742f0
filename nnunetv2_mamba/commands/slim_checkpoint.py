"""Shrink an nnU-Net checkpoint to what inference needs, as the U-Mamba2 authors did for their challenge containers:
the network weights (optionally in float16), the trainer name, its init arguments (configuration, plans) and the
mirroring axes. Optimizer and grad-scaler state and the training log are dropped, typically 2/3 of the file.

    nnunetv2_mamba slim-checkpoint $nnUNet_results/Dataset501_X/TRAINER__PLANS__CONFIG/fold_0/checkpoint_final.pth
    nnUNetv2_predict ... -chk checkpoint_final_slim.pth

A slimmed checkpoint loads in nnUNetPredictor (nnUNetv2_predict, nnUNetv2_export_model_to_zip -chk) but cannot
resume training. Float16 weights are cast back to the network's float32 on loading; predictions may then differ in
a few boundary voxels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "drop optimizer/logging state from an nnU-Net checkpoint (optionally fp16 weights) for inference/export"

# what nnUNetPredictor.initialize_from_trained_model_folder reads; current_epoch documents the checkpoint's age
KEPT = ("network_weights", "trainer_name", "init_args", "inference_allowed_mirroring_axes", "current_epoch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="an nnU-Net checkpoint, e.g. fold_0/checkpoint_final.pth")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output file (default: <checkpoint>_slim.pth beside it)")
    parser.add_argument("--fp16", action="store_true", help="store floating-point weights as float16 (half size)")


def run(args: argparse.Namespace) -> int:
    output = args.output or args.checkpoint.with_name(f"{args.checkpoint.stem}_slim.pth")
    try:
        before, after = slim_checkpoint(args.checkpoint, output, args.fp16)
    except (FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {output}: {after / 2**20:.1f} MiB (was {before / 2**20:.1f} MiB)")
    print(f"predict with: nnUNetv2_predict ... -chk {output.name}")
    return 0


def slim_checkpoint(source: Path, target: Path, fp16: bool = False) -> tuple[int, int]:
    """Write the inference-only version of ``source`` to ``target``; returns both file sizes in bytes."""
    import torch

    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    missing = [key for key in KEPT if key not in checkpoint]
    if missing:
        raise KeyError(f"{source} lacks {missing}: not an nnU-Net v2 training checkpoint")
    slim = {key: checkpoint[key] for key in KEPT}
    if fp16:
        slim["network_weights"] = half_weights(checkpoint["network_weights"])
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, target)
    return source.stat().st_size, target.stat().st_size


def half_weights(state_dict: dict) -> dict:
    """Floating-point tensors as float16, each shared tensor converted once: a state dict names a tensor that several
    modules hold (an ensemble's members, tied weights) once per module, and ``torch.save`` stores a shared tensor
    once; converting per name would store one copy per name."""
    import torch

    converted: dict[tuple, torch.Tensor] = {}
    result = {}
    for name, value in state_dict.items():
        if not value.is_floating_point():
            result[name] = value
            continue
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()))
        if key not in converted:
            converted[key] = value.half()
        result[name] = converted[key]
    return result

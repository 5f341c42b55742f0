"""Loading public checkpoints (ImageNet VMamba / Swin weights) into a network whose names differ, with a report.

Every checkpoint tensor is either loaded (possibly into several of our parameters), adapted, reported as a shape
mismatch, unexpected, or deliberately ignored; every parameter of ours is either filled or reported missing. The
model is then loaded strictly from its own state updated with what matched, so nothing is dropped silently.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from timm.models import adapt_input_conv

# checkpoint key -> our parameter names it initialises ([] if none exists here), or None to ignore it on purpose
KeyTargets = Callable[[str], list[str] | None]


@dataclass
class LoadReport:
    """What happened to each tensor of a checkpoint; lists hold names (checkpoint keys or ours, as labelled)."""

    path: str
    loaded: list[str] = field(default_factory=list)  # ours, copied from the checkpoint
    adapted: list[str] = field(default_factory=list)  # ours, from a 3-channel input conv (timm's adapt_input_conv)
    mismatched: list[str] = field(default_factory=list)  # "key -> ours: checkpoint shape vs our shape"
    missing: list[str] = field(default_factory=list)  # ours, left at their initialisation
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no parameter here
    ignored: list[str] = field(default_factory=list)  # checkpoint keys not wanted (classifier, recomputed buffers)

    def summary(self, listed: int = 6) -> str:
        lines = [f"Pretrained weights from {self.path}:"]
        for name in ("loaded", "adapted", "mismatched", "missing", "unexpected", "ignored"):
            items = getattr(self, name)
            shown = "" if not items or name == "loaded" else ": " + ", ".join(items[:listed])
            more = f", ... (+{len(items) - listed} more)" if shown and len(items) > listed else ""
            lines.append(f"  {name:<11}{len(items):>5}{shown}{more}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (unwrapping a ``model`` or ``state_dict`` entry), read with
    ``weights_only=True`` so that a file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist (arch_kwargs 'pretrained')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"pretrained checkpoint {path} holds more than tensors and cannot be read with weights_only=True "
            f"({str(e).splitlines()[0]}). If you trust it, keep only its weights: python -c \"import torch; "
            f"c = torch.load('{path}', weights_only=False); torch.save(c.get('model', c), 'weights.pth')\"") from e
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"pretrained checkpoint {path} is not a state dict (got {type(state).__name__})")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_pretrained(model: nn.Module, path: str | Path, targets: KeyTargets) -> LoadReport:
    """Copy the checkpoint at ``path`` into ``model`` through ``targets``; prints and returns the report."""
    own = model.state_dict()
    report = LoadReport(str(path))
    new: dict[str, torch.Tensor] = {}
    for key, value in read_state_dict(path).items():
        names = targets(key)
        if names is None:
            report.ignored.append(key)
            continue
        names = [n for n in names if n in own]
        if not names:
            report.unexpected.append(key)
        for name in names:
            if value.shape == own[name].shape:
                new[name] = value
                report.loaded.append(name)
            elif _is_input_conv_variant(value, own[name]):
                new[name] = adapt_input_conv(own[name].shape[1], value)
                report.adapted.append(name)
            else:
                report.mismatched.append(f"{key} -> {name}: {tuple(value.shape)} vs {tuple(own[name].shape)}")
    report.missing = [name for name in own if name not in new]
    model.load_state_dict({**own, **new})
    print(report.summary())
    return report


def _is_input_conv_variant(source: torch.Tensor, target: torch.Tensor) -> bool:
    """An RGB conv weight where ours takes another number of input channels (e.g. one MRI channel): summing or
    repeating its filters, as timm does, beats a random init (for grey input, summing equals repeating the grey
    channel to RGB, which is what Mamba-UNet and Swin-Unet do)."""
    return (source.dim() == target.dim() == 4 and source.shape[1] == 3
            and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:])

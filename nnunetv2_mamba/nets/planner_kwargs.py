"""nnU-Net planner ``arch_kwargs`` handed to one of our networks: what it takes, what it ignores, what it chooses.

Every nnU-Net planner writes the same U-Net topology (:data:`TOPOLOGY`) plus block counts: ``n_conv_per_stage``
(``nnUNetPlans``, PlainConvUNet) or ``n_blocks_per_stage`` (the ResEnc presets), and ``n_conv_per_stage_decoder``.
A plans file whose only change is ``network_class_name`` passes exactly these to our network, so each network's
``__init__`` is wrapped by :func:`accepts_planner_kwargs` with an adapter that maps them onto its own arguments, and
the result is logged once per process. ``nnunetv2_mamba plans`` (:mod:`nnunetv2_mamba.plans.translate`) builds on
the same functions to write plans with each architecture's own defaults instead.
"""

from __future__ import annotations

import functools
import logging
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Callable

TOPOLOGY = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "conv_bias", "norm_op",
            "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs")
# the planners' block counts: the first two tell planner arch_kwargs apart from a network's own
BLOCK_COUNTS = ("n_conv_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder")

# nnU-Net's ResEncUNetPlanner: residual blocks per encoder stage (one per decoder stage)
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)

ArchKwargs = dict[str, Any]

logger = logging.getLogger(__name__)
_reported: set[str] = set()


@dataclass
class Adapted:
    """A network's own arguments made from planner ``arch_kwargs``, and what the log line says about them."""

    kwargs: ArchKwargs
    ignored: list[str]  # planner keys the network does not use
    chose: ArchKwargs = field(default_factory=dict)  # arguments the network set itself, not taken from the plans


# (network name, the arch_kwargs it was given) -> its own arguments, or None where they already are its own
Adapter = Callable[[str, ArchKwargs], Adapted | None]


def is_planner_kwargs(kwargs: ArchKwargs) -> bool:
    """Whether ``kwargs`` hold a planner's block counts, which none of our networks takes as written."""
    return "n_conv_per_stage" in kwargs or "n_blocks_per_stage" in kwargs


def topology(kwargs: ArchKwargs, owner: str) -> ArchKwargs:
    """The topology keys of ``kwargs`` (copied), or an error naming ``owner`` (a network, or where in which plans)
    for arch_kwargs not written by an nnU-Net planner."""
    missing = [key for key in TOPOLOGY if key not in kwargs]
    if missing:
        raise ValueError(f"{owner}: its arch_kwargs lack {missing}, so there is no U-Net topology to translate. Start "
                         f"from plans written by nnU-Net's planners (nnUNetPlans, nnUNetResEncUNet*Plans).")
    return {key: deepcopy(kwargs[key]) for key in TOPOLOGY}


def without_block_counts(kwargs: ArchKwargs) -> ArchKwargs:
    """``kwargs`` without the planner's block counts (for networks whose blocks are their own)."""
    return {key: value for key, value in kwargs.items() if key not in BLOCK_COUNTS}


def residual_encoder_blocks(kwargs: ArchKwargs) -> ArchKwargs:
    """``ResidualEncoderUNet``'s block counts: those of ResEnc plans, or nnU-Net's ResEnc planner's (1, 3, 4, 6, 6,
    ...; one per decoder stage) for plain U-Net plans, whose convolution counts do not translate into blocks."""
    if "n_blocks_per_stage" in kwargs:
        return {key: deepcopy(kwargs[key]) for key in ("n_blocks_per_stage", "n_conv_per_stage_decoder")}
    n_stages = kwargs["n_stages"]
    return {"n_blocks_per_stage": list(RESENC_BLOCKS_PER_STAGE[:n_stages]),
            "n_conv_per_stage_decoder": [1] * (n_stages - 1)}


def accepts_planner_kwargs(adapt: Adapter) -> Callable[[Callable], Callable]:
    """Decorate a network's ``__init__`` so that planner arch_kwargs given as keywords become its own arguments
    through ``adapt`` (its own arguments pass unchanged), and say once per process what was ignored and chosen."""

    def decorate(init: Callable) -> Callable:
        @functools.wraps(init)
        def wrapped(self, *args: Any, **kwargs: Any) -> None:
            name = type(self).__name__
            adapted = adapt(name, kwargs) if is_planner_kwargs(kwargs) else None
            init(self, *args, **(kwargs if adapted is None else adapted.kwargs))
            if adapted is not None:  # reported once built, so that a network refusing the plans says only that
                _report_once(name, adapted)

        return wrapped

    return decorate


def _report_once(name: str, adapted: Adapted) -> None:
    chose = ", ".join(f"{key}={value}" for key, value in adapted.chose.items())
    message = (f"{name}: built from nnU-Net planner arch_kwargs; ignores {', '.join(adapted.ignored)}; chose "
               f"{chose}. For {name}'s own defaults use plans from `nnunetv2_mamba plans -a {name}`.")
    if message not in _reported:
        _reported.add(message)
        logger.warning(message)

"""nnunetv2-mamba: Mamba state-space networks and scribble-supervised training for nnU-Net v2."""

__version__ = "0.1.0"

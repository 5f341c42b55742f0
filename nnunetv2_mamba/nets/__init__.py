"""Segmentation networks built from nnU-Net plans (``architecture.network_class_name`` + ``arch_kwargs``)."""

import warnings

with warnings.catch_warnings():
    # importing timm registers its HRNet, which uses torch's deprecated jit.interface: a FutureWarning in every
    # command's output that the user can do nothing about
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
    import timm  # noqa: F401

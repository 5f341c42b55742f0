"""Segmentation networks built from nnU-Net plans (``architecture.network_class_name`` + ``arch_kwargs``)."""

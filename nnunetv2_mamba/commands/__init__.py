"""Subcommands of ``nnunetv2_mamba`` (see :mod:`nnunetv2_mamba.cli`)."""

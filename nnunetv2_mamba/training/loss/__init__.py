"""Losses of our trainers (nnU-Net's own live in ``nnunetv2.training.loss``)."""

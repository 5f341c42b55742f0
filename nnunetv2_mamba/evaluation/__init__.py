"""Segmentation metrics against dense references."""

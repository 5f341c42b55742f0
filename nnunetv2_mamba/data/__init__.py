"""Datasets in nnU-Net raw format: scribble datasets, converters, the synthetic demo dataset."""

"""Post-processing of nnU-Net prediction folders."""

"""Modules the tests share: plans built by nnU-Net's planner, an nnU-Net environment for CLI runs, scan selection and
autocast checks."""

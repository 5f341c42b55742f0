"""Helpers of the package's commands, benchmarks and tests that belong to no single concept of the pipeline."""

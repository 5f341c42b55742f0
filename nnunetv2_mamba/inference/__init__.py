"""Inference beyond nnU-Net's own predictor: prediction with click prompts."""

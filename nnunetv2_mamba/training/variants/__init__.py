"""Trainer variants that set a schedule (epochs, iterations, network sizes, mirroring), never a method option."""

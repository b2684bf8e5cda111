"""Benchmarks: our training step and PyTorch's, side by side."""

"""The GPU's kernels: CUDA C for CuPy, each with its NumPy twin (kernels.py)."""

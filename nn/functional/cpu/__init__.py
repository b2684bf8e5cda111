"""The fast kernels: blocked, threaded NumPy, in rooms of their own.

nn/functional/ holds each op's math, its readable reference implementation and the small
dispatcher that picks what runs; the kernels it picks live here, each tested against its op's
reference. They are written on the array module of their inputs, so today they are also what
runs on CuPy arrays (as one piece, without the threads); GPU kernels of their own will sit
beside them.

    threads.py   the thread pool and the one policy for cutting work into pieces
    passes.py    whole-array sums, copies and matrix products on every core
    scratch.py   arrays reused from call to call (column matrices, padded images)
    memory.py    keeping freed memory for reuse (glibc's malloc)
    conv.py      convolution as im2col + GEMM in channels-last memory, in chunks of images
    winograd.py  3x3 convolution by Winograd's F(2x2, 3x3)
    batch_norm.py, batch_norm_blocks.py   batch norm (+ residual + ReLU) in cache-sized blocks

What a program sets here: `set_num_threads(n)` (how many cores the passes use; default
$OMP_NUM_THREADS, else every core) and `reuse_freed_memory()` (once, at the start of a
training program).

Importing this package makes the engine sum the gradients that meet at a tensor, and copy a
leaf's gradient, on every core (autograd.set_gradient_passes): the engine runs no threads.
"""
import autograd

from . import passes
from .memory import reuse_freed_memory
from .threads import get_num_threads, set_num_threads

autograd.set_gradient_passes(add=passes.add, copy=passes.copy)

__all__ = ["set_num_threads", "get_num_threads", "reuse_freed_memory"]

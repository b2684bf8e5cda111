"""Keeping freed memory for reuse: the allocator setting that a training loop wants.

A training step allocates and frees the same large arrays (activations, gradients) step after
step. glibc's malloc hands every block over 128 KiB (up to 32 MiB after it adapts) straight to
the kernel with mmap and returns it with munmap when freed, so the next step's array of the
same size starts as fresh pages, which the kernel must fault in and zero one by one, page
after page, for every array of every step (and a ResNet-50 step allocates gigabytes), where
filling pages that are already mapped costs only the writes. `reuse_freed_memory()` tells
malloc to serve every size from its heap and never to give freed memory back to the kernel,
so a step reuses the pages of the last one. Peak memory stays what the step needs at its
peak (plus fragmentation), but the process does not shrink after it.

This is the same as starting Python with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>;
it only applies to glibc (Linux) and is a no-op elsewhere. A GPU's memory has a pool of its
own.
"""
import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4

_applied = None


def reuse_freed_memory():
    """Make glibc's malloc keep and reuse freed memory (see the module docstring).
    Returns True when it applied, False where there is no glibc. Safe to call twice."""
    global _applied
    if _applied is None:
        _applied = False
        path = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(path) if path else None
        except OSError:
            libc = None
        if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
            libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied

"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

There is no global switch. A tensor lives where its array lives, and every op asks
its input arrays for their module (``xp = array_module(a, b)``), so one code path
serves both libraries. CuPy is optional: nothing here imports it until an array
of CuPy's type actually shows up, or a user asks for the "cuda" device.
"""
import numpy

_cupy = None  # the cupy module once imported, False if it is not installed


def cupy_module():
    """Return the cupy module, or None when CuPy is not installed."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
            _cupy = cupy
        except ImportError:
            _cupy = False
    return _cupy or None


def is_cupy_array(a):
    """True if `a` is a cupy.ndarray (checked without importing CuPy)."""
    return type(a).__module__.startswith("cupy")


def array_module(*arrays):
    """The array module (numpy or cupy) of `arrays`; non-arrays are ignored.

    Raises a clear error when NumPy and CuPy arrays are mixed: an op runs on one device.
    """
    on_gpu = [is_cupy_array(a) for a in arrays if hasattr(a, "shape")]
    if any(on_gpu):
        if not all(on_gpu):
            raise RuntimeError(
                "an op received arrays on two devices (numpy on the CPU and cupy on the GPU); "
                "move every tensor to one device first, e.g. tensor.to('cuda') or tensor.to('cpu')"
            )
        return cupy_module()
    return numpy


def device_of(a):
    """'cuda' for a CuPy array, 'cpu' for a NumPy array."""
    return "cuda" if is_cupy_array(a) else "cpu"


def require_cupy():
    """Return cupy, or raise an error that says how to install it."""
    cp = cupy_module()
    if cp is None:
        raise RuntimeError(
            "the 'cuda' device needs CuPy, which is not installed; install the extra that "
            "matches your CUDA toolkit: pip install -e '.[cuda12]' or pip install -e '.[cuda13]'"
        )
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as error:  # CuPy present but no usable GPU or driver
        raise RuntimeError(f"CuPy is installed but no CUDA GPU is usable: {error}") from error
    return cp


def to_device(a, device):
    """Copy array `a` to `device` ('cpu' or 'cuda'); returns `a` itself if already there."""
    if device == "cpu":
        return a.get() if is_cupy_array(a) else a
    if device == "cuda":
        return a if is_cupy_array(a) else require_cupy().asarray(a)
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def to_numpy(a):
    """A NumPy array with the values of `a` (copied from the GPU when needed)."""
    return a.get() if is_cupy_array(a) else numpy.asarray(a)


def scatter_add(xp, target, index, values):
    """target[index] += values, adding repeated indices (unbuffered, like numpy.add.at)."""
    if xp is numpy:
        numpy.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)

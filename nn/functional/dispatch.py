"""Which implementation of an op runs: its reference, on purpose, or the kernel of its device.

Every op family in nn/functional/ with kernels has one file that starts with its math and its
reference implementation (the formulas as written, forward and a hand-written backward), and
ends with one dispatcher of the same shape:

    def implementation(x, ...):
        if reference_chosen():          # inside use_reference(): the textbook version
            return XReference
        if on_gpu(x):                   # CuPy arrays: the CUDA room's kernel (cuda/)
            return XCuda
        return XCpu                     # NumPy arrays: the CPU room's kernel (cpu/)

(a family whose reference is also its kernel on one device returns it there). Inside
`with use_reference():` every dispatcher picks the reference, in this thread: a learner can
step through the textbook version of a whole network, and a test or gradcheck can hold the
kernels to it.

    with use_reference():
        loss = model(x).sum()      # every conv2d, batch_norm, ... by its reference
"""
import contextlib
import threading

from autograd import Tensor
from autograd.backend import device_of

_local = threading.local()


@contextlib.contextmanager
def use_reference(enabled=True):
    """Run every op by its reference implementation inside the block (in this thread)."""
    previous = getattr(_local, "reference", False)
    _local.reference = bool(enabled)
    try:
        yield
    finally:
        _local.reference = previous


def reference_chosen():
    """Whether the calling thread is inside use_reference()."""
    return getattr(_local, "reference", False)


def on_gpu(x):
    """Whether x (a Tensor or an array) lives on a GPU: a CuPy array, for the CUDA room."""
    return device_of(x.data if isinstance(x, Tensor) else x) == "cuda"

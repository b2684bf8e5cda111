"""Which implementation of an op runs: its reference, on purpose, or its fastest kernel.

Every op family in nn/functional/ has a reference implementation, the math as written in
its docstring, and a small dispatcher that picks the kernel to run (nn/functional/cpu/).
Inside `with use_reference():` every dispatcher picks the reference instead, in this thread:
a learner can step through the textbook version of a whole network, and a test or gradcheck
can hold the kernels to it.

    with use_reference():
        loss = model(x).sum()      # every conv2d, batch_norm, ... by its reference
"""
import contextlib
import threading

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

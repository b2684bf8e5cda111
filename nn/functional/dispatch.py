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

`use_implementation(conv2d=MyConv2d, ...)` does the same with your own Functions in place of
the references of the families you name (a course's students run their ops in a ResNet so;
course/capstone.py): see its docstring.
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


# the op families whose reference use_implementation can replace, and that reference's name
FAMILIES = {"conv2d": "Conv2dReference", "batch_norm": "BatchNormReference",
            "linear": "LinearReference", "max_pool2d": "MaxPool2dReference",
            "cross_entropy": "CrossEntropy", "relu": "ReLU", "log_softmax": "LogSoftmax"}


def reference(family, function):
    """The reference Function of op family `family` for the calling thread: `function`, the
    family's own, or the Function that use_implementation put in its place."""
    return getattr(_local, "swapped", {}).get(family, function)


@contextlib.contextmanager
def use_implementation(**functions):
    """Run the named op families by the given Functions, every other one by its reference.

        with use_implementation(conv2d=MyConv2d, batch_norm=MyBatchNorm):
            loss = nt_xent(model(views))     # every conv2d by MyConv2d, ...

    Each Function takes the reference's place, so it must take the reference's arguments
    (the inputs its `apply` is given, the same keyword settings) and return what it returns:
    a copy of the reference with your own forward or backward is the intended use. Families
    (keyword: the reference it replaces): conv2d: Conv2dReference, batch_norm:
    BatchNormReference, linear: LinearReference, max_pool2d: MaxPool2dReference,
    cross_entropy: CrossEntropy, relu: ReLU, log_softmax: LogSoftmax.

    How: inside the block use_reference() holds, and each family's dispatcher (or its op, for
    relu and log_softmax, which have no other implementation) asks `reference(family, ...)`
    for the reference to run, which answers with yours. Like use_reference(), it is the calling
    thread's: another thread meanwhile runs the library's own ops.
    """
    from autograd import Function
    for family, function in functions.items():
        if family not in FAMILIES:
            raise ValueError(f"use_implementation: no op family {family!r}; expected some of "
                             f"{', '.join(FAMILIES)}")
        if not (isinstance(function, type) and issubclass(function, Function)):
            raise TypeError(f"use_implementation: {family}={function!r} is not a Function "
                            f"subclass (a class with static forward and backward)")
    previous = getattr(_local, "swapped", {})
    _local.swapped = {**previous, **functions}
    try:
        with use_reference():
            yield
    finally:
        _local.swapped = previous

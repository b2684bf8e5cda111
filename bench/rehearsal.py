"""The device path, rehearsed on the CPU: arrays that say they live on a GPU, and a module that
answers for CuPy (bench/rehearsal_cupy.py), both backed by NumPy.

What it checks: that code takes the device path everywhere (every operation on a device array
goes through `xp` = that module, cupyx, or the array's own methods and operators, never through
a NumPy function); that nothing crosses to the host except where the code asks for it, each
such read counted as a host synchronisation (CuPy waits for the device there): `get`,
`asnumpy`, `tolist`, `item`, `float`, `int`, `bool` (an `if` on a device value), a format, an
index taken from the device, `synchronize`, and what sizes its result by the data (a boolean
mask, read or assigned through; `nonzero`, `flatnonzero`, `argwhere`, `where` of a condition
alone, `unique`); and roughly how much a GPU would be asked to do: kernel launches, counted per
operation by LAUNCHES below. What it does not check: anything about CuPy's numerics, speed or
memory, or whether a CUDA kernel is right. Every value here is NumPy's; a GPU test is the only
proof of those. Nor can it see numpy.asarray(device_array): NumPy hands an ndarray subclass
through without asking it (CuPy would raise); test_device_path's scan of the names the code asks
of `xp` covers the other half of that risk.

    with rehearsal() as device:        # autograd's backend now hands out this module as cupy
        x = Tensor(device.xp.asarray(images))
        ...
        device.launches, device.syncs, device.transfers, device.sync_sites

Our own CUDA kernels (nn/functional/cuda/, nn/optim/lars_cuda.py, simclr/augment/cuda.py)
run here as their NumPy twins, one launch each (the rehearsal stands in for
nn.runtime.cuda.launch). `python -m bench.rehearse`
runs a whole program on the rehearsal (bench/gpu_check.sh --rehearse runs every stage so).
"""
import contextlib
import operator
import os
import threading
import traceback
import types

import numpy

# Launches a CuPy call makes, roughly (cupy's reductions and elementwise ops are one kernel
# each; a product is one cuBLAS call). Views and allocations without a fill make none. Names
# not listed count one.
LAUNCHES = {
    # views, shapes, allocations, metadata: no kernel
    "empty": 0, "empty_like": 0, "result_type": 0, "broadcast_to": 0, "moveaxis": 0,
    "expand_dims": 0, "split": 0, "squeeze": 0, "swapaxes": 0, "transpose": 0, "reshape": 0,
    "view": 0, "ravel": 0, "as_strided": 0, "shape": 0, "ndim": 0, "dtype": 0, "can_cast": 0,
    "promote_types": 0, "iscomplexobj": 0, "isscalar": 0, "get_array_module": 0,
    # several kernels
    "tensordot": 3, "einsum": 2, "argpartition": 3, "flatnonzero": 3, "nonzero": 3, "pad": 2,
    "kron": 2, "eye": 2, "var": 2, "std": 3, "norm": 2, "add.at": 1,
}
# Functions whose result's size is what they find in the data: CuPy counts it on the device and
# reads the count on the host to allocate the result, so each waits for the device (a sync).
# `where` with one argument is `nonzero`; indexing with a boolean device array is one too.
SIZED_BY_DATA = {"nonzero", "flatnonzero", "argwhere", "unique", "extract", "compress"}


class HostTouched(AssertionError):
    """Device data met the host where the code did not ask for it: a NumPy function on a
    device array, a host array mixed into a device operation, an implicit conversion."""


class NotRehearsed(Exception):
    """The code asked for something of CuPy's own that the rehearsal cannot stand in for
    (NCCL, CuPy's kernel classes, its memory pool, the device's properties): a run that meets
    it says so, rather than passing on NumPy's namesake or failing as if the code were wrong."""


class MissingName(NotRehearsed, AttributeError):
    """A name the rehearsal's cupy lacks: still an AttributeError, so hasattr() answers False."""


class Counts:
    """What a rehearsal saw: launches (kernels), syncs (device-to-host reads that wait for
    the device), transfers (host-to-device copies), the launches by operation name, and each
    sync by what caused it and the line of code that asked (sync_sites)."""

    def __init__(self):
        self.launches = self.syncs = self.transfers = 0
        self.by_name = {}
        self.sync_sites = {}

    def sync(self, what):
        """One host synchronisation, charged to `what` and to the first caller outside this
        file (the line to look at when a step that should never wait does)."""
        self.syncs += 1
        caller = next((frame for frame in reversed(traceback.extract_stack()[:-1])
                       if not _is_rehearsal(frame.filename)), None)
        site = f"{what} at {caller.filename}:{caller.lineno}" if caller else what
        self.sync_sites[site] = self.sync_sites.get(site, 0) + 1

    def launch(self, name, count=None):
        count = LAUNCHES.get(name, 1) if count is None else count
        if count:
            self.launches += count
            self.by_name[name] = self.by_name.get(name, 0) + count

    def snapshot(self):
        return self.launches, self.syncs, self.transfers


def _is_rehearsal(path):
    """Whether `path` is a file of the rehearsal itself (this one or rehearsal_cupy.py)."""
    path = os.path.abspath(path)
    return (os.path.dirname(path) == os.path.dirname(os.path.abspath(__file__))
            and os.path.basename(path).startswith("rehearsal"))


_state = threading.local()  # .depth: this thread's nesting of device calls
_active = [None]  # the Counts of the rehearsal under way


def _counts():
    if _active[0] is None:
        raise HostTouched("a device array was used outside a rehearsal")
    return _active[0]


@contextlib.contextmanager
def _inside(name, launches=None):
    """A device call: counted once at the top level, NumPy allowed inside."""
    depth = getattr(_state, "depth", 0)
    if depth == 0:
        _counts().launch(name, launches)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


def _plain(array):
    """The NumPy view of a device array (ndarray's own view: DeviceArray.view is a device call)."""
    return numpy.ndarray.view(array, numpy.ndarray)


def _as_device(array):
    return numpy.ndarray.view(array, DeviceArray)


def _host(value):
    """value with device arrays as plain NumPy views (recursively in lists and tuples)."""
    if isinstance(value, DeviceArray):
        return _plain(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_host(v) for v in value)
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    return value


def _device(value):
    """value with NumPy arrays and scalars as device arrays (CuPy's reductions return 0-d
    arrays, not scalars)."""
    if isinstance(value, DeviceArray):
        return value
    if isinstance(value, numpy.ndarray):
        return _as_device(value)
    if isinstance(value, numpy.generic):
        return _as_device(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    if isinstance(value, list):
        return [_device(v) for v in value]
    return value


def _refuse_host_arrays(name, args, kwargs):
    for value in list(args) + list(kwargs.values()):
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if type(v) is numpy.ndarray and v.ndim > 0:
                raise HostTouched(f"{name}: a host (NumPy) array of shape {v.shape} was mixed "
                                  f"into a device operation; move it with xp.asarray first")


def _device_call(name, function, launches=None, allow_host=False):
    def call(*args, **kwargs):
        if not allow_host:
            _refuse_host_arrays(name, args, kwargs)
        if getattr(_state, "depth", 0) == 0 and (
                name in SIZED_BY_DATA or (name == "where" and len(args) + len(kwargs) == 1)):
            _counts().sync(name)
        with _inside(name, launches):
            return _device(function(*_host(args), **_host(kwargs)))
    call.__name__ = name
    return call


class DeviceArray(numpy.ndarray):
    """A NumPy array that plays a cupy.ndarray: its type's module says "cupy", NumPy's own
    functions refuse it, and reading it on the host is a counted synchronisation."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # reached by an operator whose left operand is a NumPy scalar (2.0 * x is fine on
        # CuPy too), or by a NumPy ufunc called on a device array
        _refuse_host_arrays(f"numpy.{ufunc.__name__}", inputs, kwargs)
        with _inside(f"{ufunc.__name__}.{method}"):
            return _device(getattr(ufunc, method)(*_host(inputs), **_host(kwargs)))

    def __array_function__(self, func, types_, args, kwargs):
        if getattr(_state, "depth", 0) == 0:
            raise HostTouched(f"numpy.{func.__name__} was called on a device array: use xp "
                              f"(the array's module) instead")
        return _device(func(*_host(args), **_host(kwargs)))

    def __array__(self, dtype=None, copy=None):
        if getattr(_state, "depth", 0) == 0:
            raise TypeError("Implicit conversion to a NumPy array is not allowed (as CuPy): "
                            "use .get()")
        array = _plain(self)
        return array if dtype is None else array.astype(dtype)

    # ----- reading on the host: each a synchronisation (the readers are set after the class)
    def get(self, stream=None, order="C", out=None):
        _counts().sync("get")
        return numpy.array(_plain(self), order=order)

    @property
    def data(self):
        """The device pointer, as CuPy's `a.data.ptr` (here the host address)."""
        return types.SimpleNamespace(ptr=_plain(self).ctypes.data)

    def __repr__(self):
        if _active[0] is not None:   # CuPy copies the array to the host to print it
            _active[0].sync("repr")
        return f"device_array({_plain(self)!r})"

    __str__ = __repr__

    # ----- indexing: a view is free, a gather or a scatter is a kernel; a boolean mask sizes
    # its result by its count of True, which CuPy reads on the host: a sync ------------------
    def __getitem__(self, index):
        host = _plain(self)
        _refuse_host_arrays("__getitem__", _index_parts(index), {})
        _sync_on_mask("getitem", index)
        result = host[_host(index)]
        if isinstance(result, numpy.ndarray) and numpy.shares_memory(result, host):
            return _as_device(result)
        with _inside("getitem"):
            return _device(result)

    def __setitem__(self, index, value):
        _sync_on_mask("setitem", index)
        if type(value) is numpy.ndarray and value.ndim > 0:
            _counts().transfers += 1   # CuPy copies a host array over first
        with _inside("setitem"):
            _plain(self)[_host(index)] = _host(value)


def _index_parts(index):
    return list(index) if isinstance(index, tuple) else [index]


def _sync_on_mask(what, index):
    """Count a sync when `index` holds a boolean device array (a mask)."""
    if any(isinstance(part, DeviceArray) and part.dtype == bool for part in _index_parts(index)):
        _counts().sync(f"{what} with a boolean mask")


def _method(name, launches=None):
    def method(self, *args, **kwargs):
        _refuse_host_arrays(name, args, kwargs)
        if name in SIZED_BY_DATA and getattr(_state, "depth", 0) == 0:
            _counts().sync(name)
        host = _plain(self)
        result = getattr(numpy.ndarray, name)(host, *_host(args), **_host(kwargs))
        if name in ("reshape", "ravel", "astype", "copy", "flatten", "view"):
            count = 0 if (isinstance(result, numpy.ndarray) and result.size
                          and numpy.shares_memory(result, host)) else 1
            with _inside(name, count):
                return _device(result)
        with _inside(name, launches):
            return _device(result)
    method.__name__ = name
    return method


_OPERATORS = ["__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__",
              "__rmul__", "__imul__", "__truediv__", "__rtruediv__", "__itruediv__",
              "__floordiv__", "__rfloordiv__", "__mod__", "__pow__", "__rpow__", "__ipow__",
              "__matmul__", "__rmatmul__", "__neg__", "__pos__", "__abs__", "__invert__",
              "__and__", "__rand__", "__iand__", "__or__", "__ror__", "__ior__", "__xor__",
              "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"]
_METHODS = ["sum", "mean", "max", "min", "argmax", "argmin", "prod", "any", "all", "cumsum",
            "var", "std", "dot", "clip", "round", "fill", "sort", "argsort", "nonzero",
            "repeat", "take", "reshape", "ravel", "astype", "copy", "flatten", "view",
            "squeeze", "swapaxes", "transpose", "conj", "compress"]
for _name in _OPERATORS + _METHODS:
    setattr(DeviceArray, _name, _method(_name, 0 if _name in ("squeeze", "swapaxes",
                                                                "transpose") else None))


def _reader(name, convert):
    def read(self, *args):
        _counts().sync(name.strip("_"))
        return convert(_plain(self), *args)
    read.__name__ = name
    return read


# Reading a device array on the host waits for the device: each of these is a counted sync.
for _name, _convert in {"item": numpy.ndarray.item, "tolist": numpy.ndarray.tolist,
                        "__float__": float, "__int__": int, "__complex__": complex,
                        "__bool__": bool, "__index__": operator.index,
                        "__format__": format}.items():
    setattr(DeviceArray, _name, _reader(_name, _convert))
DeviceArray.__module__ = "cupy._core.core"  # what autograd.backend.is_cupy_array reads
DeviceArray.__hash__ = None


@contextlib.contextmanager
def rehearsal():
    """Within the block, autograd's backend hands out the rehearsal module as cupy (and
    `import cupyx` gives its cupyx): `--backend cupy`, Tensor.to("cuda") and every op's
    `xp` take the device path. Yields the Counts, with `.xp` the module."""
    import sys

    from autograd import backend
    from bench.rehearsal_cupy import CUPYX, MODULE, launch_twin
    from nn.runtime import cuda as kernels
    counts = Counts()
    counts.xp = MODULE
    saved = backend._cupy, sys.modules.get("cupyx"), _active[0], kernels.launch
    backend._cupy, sys.modules["cupyx"], _active[0] = MODULE, CUPYX, counts
    kernels.launch = launch_twin
    try:
        yield counts
    finally:
        backend._cupy, _active[0], kernels.launch = saved[0], saved[2], saved[3]
        if saved[1] is None:
            sys.modules.pop("cupyx", None)
        else:
            sys.modules["cupyx"] = saved[1]

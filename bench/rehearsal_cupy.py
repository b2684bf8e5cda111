"""The module that answers for `cupy` (and `cupyx`) in the rehearsal of the device path
(bench/rehearsal.py): NumPy's functions as device calls on its device arrays, the few names of
CuPy's own that the code uses (cuda.Device, asnumpy, random.default_rng, cupyx.scatter_add),
and our CUDA kernels run as their NumPy twins. Anything else of CuPy's own (NCCL, its kernel
classes, its memory pool, the device's properties) raises MissingName: the rehearsal cannot
stand in for it, and says so.
"""
import types

import numpy

from bench.rehearsal import (DeviceArray, MissingName, _counts, _device, _device_call, _host,
                             _inside, _plain, _refuse_host_arrays)


class _Namespace(types.SimpleNamespace):
    """A few attributes of a CuPy namespace (`where` says which, e.g. ".cuda"); any other is
    CuPy's own, and asking for it says so."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingName(f"cupy{self.__dict__.get('where', '')}.{name} (CuPy's own)")


def _cuda_device(index=None):
    return _Namespace(id=0 if index is None else index, synchronize=_count_sync,
                      where=".cuda.Device()")


class _DeviceGenerator:
    """cupy.random.Generator's stand-in: NumPy's generator, its draws made on the 'device'."""

    def __init__(self, seed=None):
        self.host = numpy.random.default_rng(seed)

    def __getattr__(self, name):
        return _device_call(f"random.{name}", getattr(self.host, name))


class RehearsalModule(types.ModuleType):
    """Answers for the cupy module: NumPy's functions as device calls, plus the few names of
    CuPy's own that the code uses (cuda.Device, asnumpy, random.default_rng, ...). A name
    NumPy lacks, or that CuPy means otherwise (show_config), raises MissingName."""
    CUPY_OWN = {"show_config", "fuse", "ElementwiseKernel", "ReductionKernel", "RawKernel",
                "RawModule", "get_default_memory_pool", "get_default_pinned_memory_pool"}

    def __init__(self):
        super().__init__("cupy")
        self.__version__ = f"rehearsal (NumPy {numpy.__version__})"
        self.cuda = _Namespace(Device=_cuda_device, where=".cuda",
                               runtime=_Namespace(getDeviceCount=lambda: 1, where=".cuda.runtime"),
                               get_current_stream=lambda: _Namespace(synchronize=_count_sync,
                                                                     where=".cuda.Stream()"))
        self.linalg = _Namespace(norm=_device_call("norm", numpy.linalg.norm), where=".linalg")
        self.lib = _Namespace(stride_tricks=_Namespace(
            as_strided=_device_call("as_strided", numpy.lib.stride_tricks.as_strided)))
        self.random = _Namespace(default_rng=_DeviceGenerator, where=".random")
        self.ndarray = DeviceArray

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self.CUPY_OWN or not hasattr(numpy, name):
            raise MissingName(f"cupy.{name} (CuPy's own)")
        value = getattr(numpy, name)
        if isinstance(value, type) or not callable(value):
            return value                         # dtypes, constants: the same as NumPy's
        return _device_call(name, value)

    # host -> device and back
    def asarray(self, a, dtype=None, order=None):
        if isinstance(a, DeviceArray):
            return self.__getattr__("asarray")(a, dtype=dtype, order=order)
        _counts().transfers += 1
        with _inside("asarray", 0):
            return numpy.array(a, dtype=dtype, order=order or "K").view(DeviceArray)

    array = asarray

    def asnumpy(self, a):
        if isinstance(a, DeviceArray):
            _counts().sync("asnumpy")
            return numpy.array(_plain(a))
        return numpy.asarray(a)

    def get_array_module(self, *arrays):
        return self

    def ascontiguousarray(self, a, dtype=None):
        host = _host(a)
        result = numpy.ascontiguousarray(host, dtype=dtype)
        with _inside("ascontiguousarray", 0 if numpy.shares_memory(result, host) else 1):
            return _device(result)

    def copyto(self, dst, src, casting="same_kind", where=True):
        _refuse_host_arrays("copyto", [src, where], {})
        with _inside("copyto"):
            numpy.copyto(_host(dst), _host(src), casting=casting, where=_host(where))


def launch_twin(kernel, xp, grid, block, args, types, shared_mem=0, twin_args=None):
    """One of our CUDA kernels, run as its NumPy twin: one launch, whatever the twin does."""
    _refuse_host_arrays(kernel.name, args, {})
    with _inside("kernel " + kernel.name, 1):
        kernel.twin(*_host(args if twin_args is None else twin_args))


def _count_sync():
    _counts().sync("synchronize")


def _scatter_add(target, index, values):
    _refuse_host_arrays("scatter_add", [index, values], {})
    with _inside("scatter_add"):
        numpy.add.at(_host(target), _host(index), _host(values))


MODULE = RehearsalModule()
CUPYX = types.ModuleType("cupyx")
CUPYX.scatter_add = _scatter_add

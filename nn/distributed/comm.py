"""Communicators: how the processes of a data-parallel run exchange arrays.

A communicator is one process's end of a group of `size` processes (ranks 0..size-1), and
offers the few collectives that data-parallel training needs. Every rank calls each
collective in the same order; each returns when every rank has joined it.

    allreduce(array)      in place: array = the sum of every rank's array (same shape, dtype)
    allgather(array)      every rank's array, concatenated along axis 0 in rank order
    any(flag)             a host bool: whether any rank said True (an agreement, e.g. to stop)
    abort(status)         end every rank now (one rank's failure must not leave the others
                          waiting in a collective forever)

Three kinds, one interface:

    MPIComm      mpi4py over MPI (Open MPI, ...): NumPy arrays, on one host or a cluster
    NCCLComm     NCCL through CuPy, for CuPy arrays on GPUs; MPI starts the ranks and hands
                 NCCL its unique id (ChainerMN's design); host agreements go over MPI
    LocalWorld   `size` ranks as threads of one process, for tests and for reading: the same
                 collectives written out with a barrier

The sums of MPIComm and LocalWorld are added in rank order, so every rank gets the same bits;
NCCL's ring all-reduce adds in an order of its own (the same on every rank).
"""
import threading

import numpy

from autograd.backend import array_module


class Communicator:
    """The interface (see the module docstring); `rank` and `size` say where this one is."""

    rank, size = 0, 1

    def allreduce(self, array):
        raise NotImplementedError

    def allgather(self, array):
        raise NotImplementedError

    def any(self, flag):
        raise NotImplementedError

    def abort(self, status=1):
        raise NotImplementedError


class LocalWorld:
    """`size` ranks in one process: `LocalWorld(3).run(fn)` calls fn(communicator) in three
    threads at once and returns their results in rank order (an exception in one is raised
    here, after the others are released)."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=120)
        self.slots = [None] * size
        self.communicators = [_LocalComm(self, rank) for rank in range(size)]

    def run(self, fn):
        results, errors = [None] * self.size, [None] * self.size

        def one(rank):
            try:
                results[rank] = fn(self.communicators[rank])
            except BaseException as error:  # noqa: B036 (re-raised below, in the caller)
                errors[rank] = error
                self.barrier.abort()   # the others, waiting in a collective, are let go
        threads = [threading.Thread(target=one, args=(rank,)) for rank in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for error in errors:
            if error is not None and not isinstance(error, threading.BrokenBarrierError):
                raise error
        for error in errors:
            if error is not None:
                raise error
        return results


class _LocalComm(Communicator):
    """One rank of a LocalWorld: each collective is deposit, wait, read, wait."""

    def __init__(self, world, rank):
        self.world, self.rank, self.size = world, rank, world.size

    def _exchange(self, value):
        """Every rank's value, in rank order."""
        world = self.world
        world.slots[self.rank] = value
        world.barrier.wait()
        values = list(world.slots)
        world.barrier.wait()  # no rank deposits its next value before all have read this one
        return values

    def allreduce(self, array):
        xp = array_module(array)
        values = self._exchange(array.copy())
        total = values[0].copy()
        for value in values[1:]:  # in rank order: every rank gets the same bits
            total += value
        xp.copyto(array, total)

    def allgather(self, array):
        return array_module(array).concatenate(self._exchange(array.copy()))

    def any(self, flag):
        return any(self._exchange(bool(flag)))

    def abort(self, status=1):
        self.world.barrier.abort()
        raise SystemExit(status)


class MPIComm(Communicator):
    """MPI through mpi4py, on NumPy arrays (CuPy arrays go through the host)."""

    def __init__(self, comm=None):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce(self, array):
        host = _host_contiguous(array)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        if host is not array:
            array[...] = array_module(array).asarray(host)

    def allgather(self, array):
        host = _host_contiguous(array)
        out = numpy.empty((self.size,) + host.shape, host.dtype)
        self.comm.Allgather(host, out)
        out = out.reshape((-1,) + host.shape[1:])
        return out if host is array else array_module(array).asarray(out)

    def any(self, flag):
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def abort(self, status=1):
        self.comm.Abort(status)

    def local_rank(self):
        """This rank's number among the ranks on its own host (which GPU it takes)."""
        shared = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        return shared.Get_rank()


def _host_contiguous(array):
    """array itself when it is a C-contiguous NumPy array, else a host copy of it."""
    if isinstance(array, numpy.ndarray) and array.flags.c_contiguous \
            and type(array).__module__ == "numpy":
        return array
    return numpy.ascontiguousarray(array.get() if hasattr(array, "get") else array)


class NCCLComm(Communicator):
    """NCCL through CuPy for CuPy arrays, one process per GPU. `mpi` (an MPIComm) started the
    ranks: it hands NCCL rank 0's unique id, picks the GPU by the rank's number on its host,
    and carries the host-side agreements (any, abort). Untested: no GPU has run it yet."""

    def __init__(self, mpi):
        import cupy
        from cupy.cuda import nccl
        self.mpi, self.cupy, self.nccl = mpi, cupy, nccl
        self.rank, self.size = mpi.rank, mpi.size
        cupy.cuda.Device(mpi.local_rank() % cupy.cuda.runtime.getDeviceCount()).use()
        unique_id = nccl.get_unique_id() if mpi.rank == 0 else None
        unique_id = mpi.comm.bcast(unique_id, root=0)
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def _type(self, array):
        types = {numpy.dtype("float32"): self.nccl.NCCL_FLOAT32,
                 numpy.dtype("float64"): self.nccl.NCCL_FLOAT64,
                 numpy.dtype("int64"): self.nccl.NCCL_INT64}
        return types[array.dtype]

    def allreduce(self, array):
        contiguous = self.cupy.ascontiguousarray(array)
        stream = self.cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(contiguous.data.ptr, contiguous.data.ptr, contiguous.size,
                            self._type(contiguous), self.nccl.NCCL_SUM, stream)
        if contiguous is not array:
            array[...] = contiguous

    def allgather(self, array):
        contiguous = self.cupy.ascontiguousarray(array)
        out = self.cupy.empty((self.size,) + contiguous.shape, contiguous.dtype)
        self.comm.allGather(contiguous.data.ptr, out.data.ptr, contiguous.size,
                            self._type(contiguous), self.cupy.cuda.get_current_stream().ptr)
        return out.reshape((-1,) + contiguous.shape[1:])

    def any(self, flag):
        return self.mpi.any(flag)

    def abort(self, status=1):
        self.mpi.abort(status)

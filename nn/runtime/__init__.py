"""What the kernels share: the CPU's threads and memory, and the launcher of CUDA kernels.

    threads.py   the thread pool and the one policy for cutting NumPy work into pieces
    parallel.py  whole-array sums, copies and matrix products on every core
    scratch.py   arrays the CPU's convolutions reuse from call to call
    memory.py    keeping freed memory for reuse (glibc's malloc)
    cuda.py      a CUDA kernel beside its NumPy twin: one launcher, one block size, one grid

Nothing here is set up by importing it. A program sets it up with explicit calls, once, at
its start (simclr.train does all three):

    set_num_threads(n)          how many cores the CPU kernels use (default $OMP_NUM_THREADS,
                                else every core)
    reuse_freed_memory()        keep freed memory for the next step instead of returning it
    use_threaded_gradients()    make the engine sum and copy gradients on every core
"""
from .memory import reuse_freed_memory
from .parallel import use_threaded_gradients
from .threads import get_num_threads, set_num_threads

__all__ = ["set_num_threads", "get_num_threads", "reuse_freed_memory", "use_threaded_gradients"]

"""How a program that trains sets up its process, once, before anything else runs
(python -m simclr.train, simclr.finetune, simclr.experiments)."""
import signal

from nn import runtime
from simclr import cli


def set_up_process(threads=None):
    """The CPU's threads (--threads; None: $OMP_NUM_THREADS, else every core) and memory, the
    engine's gradient passes on every core, and SIGTERM (a polite kill) ending the program as
    Ctrl-C does: before training starts as a KeyboardInterrupt, during training as a request to
    stop (interrupts.py)."""
    runtime.reuse_freed_memory()  # reuse last step's pages instead of faulting in new ones
    runtime.use_threaded_gradients()
    if threads is not None:
        cli.at_least("--threads", threads, 1)
        runtime.set_num_threads(threads)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

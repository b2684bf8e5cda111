"""A training run's --out folder: one process writes it at a time, and nothing in it is lost.

A folder holds one run: config.json, metrics.jsonl, checkpoint.npz and loss.png. Two processes
writing one folder would interleave their metrics and mix their checkpoints, so a training run
holds the folder's lock (`.lock`, with its process id) from start to end. The lock is the
operating system's (flock): it is released when the process ends, however it ends, so a crash
or a kill never leaves the folder locked. Where flock does not exist (Windows), there is no
lock.

A new run does not start in a folder that already holds a run (a checkpoint, or a metrics
log): that would overwrite its history. Continue it with --resume, or choose another --out.
"""
import os

from simclr.cli import UsageError

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunFolder:
    """`with RunFolder(path, flag):` creates the folder if needed and holds its lock; raises
    UsageError, naming `flag` (the option that chose the folder), if another process holds it."""

    def __init__(self, path, flag="--out"):
        self.path, self.flag, self._descriptor = path, flag, None

    def __enter__(self):
        try:
            os.makedirs(self.path, exist_ok=True)
        except FileExistsError:
            raise UsageError(f"{self.flag} {self.path}: exists and is not a folder") from None
        if fcntl is None:
            return self
        descriptor = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise UsageError(f"{self.flag} {self.path}: another training (process {holder}) is "
                             f"writing into this folder; wait for it to end or choose another "
                             f"{self.flag}") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor
        return self

    def __exit__(self, *exception):
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing releases the lock
            self._descriptor = None

    def file(self, name):
        return os.path.join(self.path, name)

    def check_holds_no_run(self):
        """Raise UsageError if this folder already holds a run that a new one would overwrite."""
        if os.path.exists(self.file("checkpoint.npz")):
            raise UsageError(f"{self.flag} {self.path}: already holds a training run "
                             f"(checkpoint.npz); continue it with --resume {self.path}, or "
                             f"choose another {self.flag}")
        metrics = self.file("metrics.jsonl")
        if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            raise UsageError(f"{self.flag} {self.path}: already holds the metrics.jsonl of a run "
                             f"that never saved a checkpoint; delete that file or choose "
                             f"another {self.flag}")

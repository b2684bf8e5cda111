"""A training run's --out folder: one process writes it at a time, and nothing in it is lost.

A folder holds one run: config.json, metrics.jsonl, checkpoint.npz and loss.png. Two processes
writing one folder would interleave their metrics and mix their checkpoints, so a training run
holds the folder's lock (`.lock`, with its process id) from start to end. The lock is the
operating system's (flock): it is released when the process ends, however it ends, so a crash
or a kill never leaves the folder locked. Where flock does not exist (Windows), there is no
lock.

A new run does not start in a folder that already holds a run (a checkpoint, or a metrics
log): that would overwrite its history. Continue it with --resume, or choose another --out.

Also here: what a run keeps in its folder as it trains (Checkpoints, prepare_folder), and
what the ranks other than 0 of a data-parallel run have instead (nothing is written there).
"""
import json
import os
import signal

from simclr.training import distributed
from simclr.training.checkpoint import NonFiniteState, TrainingDiverged, save_checkpoint
from simclr.cli import UsageError
from simclr.atomic_files import atomic_write, remove_temporaries
from simclr.training.interrupts import Interrupted
from simclr.training.report import MetricsLog, read_metrics

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


class Checkpoints:
    """The run's checkpoint.npz: written whole (simclr/atomic_files.py) after every epoch and on a
    stop, never while a signal could cut the write short, never with an inf or a NaN in it."""

    def __init__(self, path, run, stop):
        self.path, self.run, self.stop = path, run, stop
        self.saved_step = run.step if run.source is not None else None  # the step on disk

    def kept(self):
        return ("no checkpoint was written" if self.saved_step is None else
                f"the checkpoint of step {self.saved_step} is kept")

    def save(self):
        """Write the checkpoint (rank 0 of a data-parallel run; the others learn whether the
        model was finite, which every rank's is alike)."""
        run, diverged = self.run, None
        with self.stop.saving():
            try:
                if run.writes:
                    save_checkpoint(self.path, run.model, run.optimizer,
                                    {"step": run.step, "epoch": run.step // run.steps_per_epoch,
                                     "config": run.config})
            except NonFiniteState as error:
                diverged = f"{error}; {self.kept()}"
        if run.group is not None and distributed.host(run.group).any(diverged is not None):
            diverged = diverged or f"rank 0 found it so; {self.kept()}"
        if diverged is not None:
            raise TrainingDiverged(f"the model became non-finite by step {run.step}: "
                                   f"{diverged}. Try a lower --lr")
        self.saved_step = run.step

    def say_if_unsaved(self, interrupted, stream):
        """After a second signal stopped the run at once (Interrupted, not saved): say that the
        step in progress was lost and which checkpoint is kept."""
        if not interrupted.saved:
            stream.write(f"stopped at once: step {self.run.step + 1} was not finished; "
                         f"{self.kept()}\n")

    def save_on_stop(self, folder, stream):
        """After a stop request: save the step reached (unless it is saved), say how to
        continue, and end the run (Interrupted, saved)."""
        if self.saved_step != self.run.step:
            self.save()
        stream.write(f"stopped: checkpoint saved at step {self.run.step} in {folder}; "
                     f"continue with --resume {folder}\n")
        # a rank that got no signal itself stops as asked by another
        raise Interrupted(self.stop.signum or signal.SIGTERM, saved=True)


RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.npz", "loss.png")


def prepare_folder(folder, config, source, step):
    """Make the --out folder (held by this process) ready for a run that starts at `step`, and
    return its metrics log. A new run, or a resumed one that writes to another folder, needs a
    folder that holds no run. The temporaries of writes that a kill cut short are removed; the
    settings are written to config.json; the log starts with the history of the resumed run up
    to its checkpoint's step (the steps after it are done again)."""
    if source is None or os.path.realpath(source) != os.path.realpath(folder.path):
        folder.check_holds_no_run()
    for name in RUN_FILES:
        remove_temporaries(folder.file(name))
    history = ()
    if source is not None and os.path.exists(os.path.join(source, "metrics.jsonl")):
        history = read_metrics(os.path.join(source, "metrics.jsonl"), until_step=step)
    with atomic_write(folder.file("config.json"), "w") as file:
        json.dump(config, file, indent=2)
    return MetricsLog(folder.file("metrics.jsonl"), history)


class SilentStream:
    """A stream that shows nothing: the lines of ranks other than 0."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


class NoFolder:
    """What ranks other than 0 have instead of the run's folder: nothing is written."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        pass

    def file(self, name):
        return os.path.join(self.path, name)


class NoLog:
    """What ranks other than 0 have instead of metrics.jsonl."""

    def write(self, **record):
        pass

    def close(self):
        pass

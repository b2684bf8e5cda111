"""What a run shows and keeps as it trains: a progress line, and its metrics in metrics.jsonl (its
loss curve, loss.png, is drawn by simclr.plot)."""
import json
import sys
import time

from simclr.atomic_files import atomic_write


def format_duration(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class ProgressLine:
    """One line per epoch, redrawn in place: epoch, a bar, loss, images/s and time left."""

    def __init__(self, epochs, steps_per_epoch, stream=sys.stderr, width=24):
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.stream, self.width = stream, width
        self.interactive = stream.isatty()
        self.last_draw = 0.0

    def update(self, epoch, batch, loss, images_per_s, seconds_left, final=False):
        now = time.monotonic()
        if not final and self.interactive and now - self.last_draw < 0.2:
            return
        if not final and not self.interactive:
            return  # a log file gets one line per epoch, not a line per step
        self.last_draw = now
        filled = int(self.width * batch / self.steps_per_epoch)
        bar = "#" * filled + "." * (self.width - filled)
        line = (f"epoch {epoch + 1}/{self.epochs} [{bar}] {batch}/{self.steps_per_epoch} "
                f"loss {loss:.4f}  {images_per_s:.1f} img/s  ETA {format_duration(seconds_left)}")
        end = "\n" if final else ""
        self.stream.write(("\r" if self.interactive else "") + line + end)
        self.stream.flush()


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as training goes.

    history: the records the log starts with. A new run starts empty; a resumed run starts with
    its old records up to its checkpoint's step (the steps after it are redone). Starting a log
    replaces the file atomically (a temporary file, then a rename), so a kill at that moment
    leaves the old history whole, never an empty or half-written file."""

    def __init__(self, path, history=()):
        self.path = path
        with atomic_write(path, "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in history)
        self.file = open(path, "a")

    def write(self, **record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self):
        try:
            self.file.close()
        except OSError:  # a full disk: the last line may be torn, which read_metrics skips
            pass


def read_metrics(path, until_step=None):
    """The records of a metrics.jsonl (those with step <= until_step, if given). A line that is
    not whole JSON (the torn last line of a write that a full disk or a kill cut short) is
    skipped: the history before it is what it was."""
    records = []
    with open(path, errors="replace") as file:
        for line in file:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (until_step is None or record.get("step", 0) <= until_step):
                records.append(record)
    return records

"""Ctrl-C and SIGTERM during training: finish the step, save, stop.

Python turns Ctrl-C into a KeyboardInterrupt wherever the main thread happens to be. Inside a
training step that may be halfway through the optimiser's update (some parameters stepped,
others not, with the other threads still writing), or after the forward pass has already
moved batch norm's running statistics: a checkpoint saved from there would not be the state
after any whole number of steps, and a resumed run would differ from one never interrupted.

So during training the signal only asks for a stop (`StopRequest`): the handler records it and
returns, the step in progress runs to its end, and the loop, which asks between steps, saves a
checkpoint of that whole step and stops. A second signal while a step is still running stops
at once without saving (for a step that takes long), which keeps the previous checkpoint; while
the checkpoint is being written, further signals are noted and ignored (`saving`), so that the
write is never cut short. SIGTERM, a polite kill from a scheduler or `kill`, is treated as
Ctrl-C.
"""
import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal; `signum` says which, `saved` whether its step was saved."""

    def __init__(self, signum, saved):
        super().__init__(NAMES.get(signum, signum))
        self.signum, self.saved = signum, saved


class StopRequest:
    """`with StopRequest(stream, describe) as stop:` turns SIGINT and SIGTERM into a request,
    `stop.signum` (None until one arrives). `describe()` says, for the first signal's message,
    where the run will stop. Outside the main thread, signals cannot be caught: then nothing is
    installed and they keep their usual effect."""

    def __init__(self, stream, describe=lambda: "after this step"):
        self.stream, self.describe = stream, describe
        self.signum, self._saving, self._previous = None, False, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exception):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self._saving:
            self._say(f"{NAMES.get(signum, signum)}: the checkpoint is being written; "
                      f"stopping when it is whole")
            self.signum = self.signum or signum
            return
        if self.signum is None:
            self.signum = signum
            self._say(f"{NAMES[signum]}: stopping {self.describe()}, with a checkpoint "
                      f"(again to stop at once without one)")
            return
        raise Interrupted(signum, saved=False)

    def _say(self, line):
        self.stream.write("\n" + line + "\n")
        self.stream.flush()

    @contextlib.contextmanager
    def saving(self):
        """A section (writing a checkpoint) that no signal cuts short."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

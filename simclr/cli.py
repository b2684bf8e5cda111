"""What the command-line programs share: a user's mistake ends in one line, never a traceback;
the checks of a flag's value; which flags a command line gives.

A traceback is for a bug in this code. Anything the person at the keyboard can fix (a flag's
value, a missing, wrong or unreadable file, a full disk) is a `UsageError`: the program prints

    python -m simclr.train: error: --lr must be a positive finite number, got nan

on one line of standard error and exits with status 2 (as argparse does for a flag it cannot
parse). The message names the flag or the file, the value given and what is expected.
"""
import argparse
import errno
import math
import re
import signal
import sys

import numpy

from autograd.backend import require_cupy

EXIT_USAGE = 2

# OSErrors that say something about the machine or the path the user chose, not about this code
_USER_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.ENOENT: "no such file or folder",
                errno.ENOTDIR: "a part of the path is not a folder",
                errno.EISDIR: "it is a folder, not a file"}


class UsageError(Exception):
    """A mistake the user can fix: printed as one line `<prog>: error: <message>`, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors (a flag it cannot parse, a choice it does not know) are
    UsageErrors, printed as one line like every other mistake (argparse would print the usage
    first). `--help` still prints the usage. Flags must be spelled out (no abbreviations such
    as --epo for --epochs), so that a script means the same when a flag is added."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # a value such as -1e-4 is a negative number, not a flag (argparse knows only -1 and -.5)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message):
        raise UsageError(message)


def exit_program(status):
    """End the program with `status`. A Ctrl-C that arrives from here on (a second press just
    after training stopped, say) is ignored: the work is done and saved, and the interpreter's
    shutdown (joining the worker threads) would otherwise end in a KeyboardInterrupt."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(status)


def run(main, argv=None, prog=None):
    """main(argv), with a UsageError (or an OSError of the user's disk or path) printed as one
    line and returned as exit status 2, and Ctrl-C as exit status 130 (128 + SIGINT) without a
    traceback. main returns its exit status."""
    prog = prog or "python -m " + main.__module__
    try:
        return main(argv)
    except KeyboardInterrupt:  # Ctrl-C where the program has nothing to save
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        reason = _USER_ERRNOS.get(error.errno)
        if reason is None:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"{prog}: error: {where}{reason} ({error.strerror})", file=sys.stderr)
        return EXIT_USAGE


# Checks of a flag's value, for the programs' validate functions: each returns the value or
# raises a UsageError that names the flag, the value and what is expected. argparse's type=float
# accepts nan and inf, so every float flag goes through a finiteness check.

def at_least(flag, value, minimum):
    """An integer flag that must be >= minimum."""
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")
    return value


def positive_number(flag, value):
    """A float flag that must be finite and > 0."""
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a positive finite number, got {value}")
    return value


def non_negative_number(flag, value):
    """A float flag that must be finite and >= 0."""
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{flag} must be a finite number of at least 0, got {value}")
    return value


class BackendUnavailable(UsageError, RuntimeError):
    """--backend cupy on a machine without CuPy or without a usable GPU."""


def require_backend(name):
    """The array module for --backend `name`: numpy, or cupy when it and a GPU are usable."""
    if name == "numpy":
        return numpy
    try:
        return require_cupy()
    except RuntimeError as error:  # require_cupy's two refusals: no CuPy, no usable GPU
        raise BackendUnavailable(f"--backend cupy: {error}") from error


# Which settings a command line gives, for a resumed run that may change only a few of them.

def given_flags(argv):
    """The settings (config keys) that the command line `argv` gives explicitly: "--lr 2" and
    "--lr=2" give "lr", "--no-blur" (the negative form of a boolean flag; no flag's own name
    starts with no-) gives "blur". Abbreviated flags are not accepted (ArgumentParser), so
    every flag is spelled out."""
    given = set()
    for token in argv:
        if token == "--":
            break
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0]
            given.add(name.removeprefix("no-").replace("-", "_"))
    return given


def flag_name(key):
    """The flag of a setting: "batch_size" -> "--batch-size"."""
    return "--" + key.replace("_", "-")


def refuse_changed(resume, values, saved, keys, flag_of=flag_name):
    """Refuse, naming them, the settings among `keys` that the command line (`values`) gives
    with another value than the resumed run's `saved` ones: they would be ignored, or make
    another run."""
    changed = sorted(key for key in keys if key in values and values[key] != saved.get(key))
    if changed:
        flags = ", ".join(f"{flag_of(key)} {values[key]} (saved: {saved.get(key)})"
                          for key in changed)
        raise UsageError(f"--resume {resume}: {flags}: a resumed run keeps the settings it "
                         f"was started with; start a new run (another --out) to change them")

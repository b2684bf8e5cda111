"""What the command-line programs share: a user's mistake ends in one line, never a traceback.

A traceback is for a bug in this code. Anything the person at the keyboard can fix (a flag's
value, a missing, wrong or unreadable file, a full disk) is a `UsageError`: the program prints

    python -m simclr.train: error: --lr must be a positive finite number, got nan

on one line of standard error and exits with status 2 (as argparse does for a flag it cannot
parse). The message names the flag or the file, the value given and what is expected.
"""
import argparse
import errno
import sys

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
    first). `--help` still prints the usage."""

    def error(self, message):
        raise UsageError(message)


def run(main, argv=None, prog=None):
    """main(argv), with a UsageError (or an OSError of the user's disk or path) printed as one
    line and returned as exit status 2. main returns its exit status."""
    prog = prog or "python -m " + main.__module__
    try:
        return main(argv)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        reason = _USER_ERRNOS.get(error.errno)
        if reason is None:
            raise
        where = f" {error.filename}" if error.filename else ""
        print(f"{prog}: error: could not use{where}: {reason} ({error.strerror})", file=sys.stderr)
        return EXIT_USAGE

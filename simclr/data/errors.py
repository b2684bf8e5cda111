"""Errors a user causes with the data: a missing, empty, mixed or corrupt folder, a wrong
archive, a flag value the data cannot satisfy.

They are ValueErrors (and FileNotFoundErrors) for code that calls the loaders, and UsageErrors
for the command-line programs, which print them as one line (simclr/cli.py). Messages name the
flag and the keyword argument both: "pass --image-size S (image_size=S)".
"""
from simclr.cli import UsageError


class DataError(UsageError, ValueError):
    """The data (or a data flag) is not what the loader needs."""


class DataNotFound(UsageError, FileNotFoundError):
    """The data is not where the flags say."""

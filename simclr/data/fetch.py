"""Fetch a file over HTTP with a progress bar and a checksum, never leaving half a file behind."""
import hashlib
import http.client
import sys
import time
from pathlib import Path
from urllib.request import urlopen

from simclr.cli import UsageError
from simclr.data.errors import DataError
from simclr.atomic_files import atomic_write

CHUNK_BYTES = 1 << 20


class DownloadError(UsageError, RuntimeError):
    """A download failed (no network, server error, interrupted transfer)."""


class ChecksumError(DataError):
    """A file's MD5 is not the published one."""


def file_md5(path):
    """The hex MD5 digest of the file at `path`."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ProgressBar:
    """One line of plain text on stderr, redrawn at most ten times a second:
    `cifar-10-python.tar.gz:  42.0% (68.5 / 163.1 MB)`."""

    def __init__(self, label, total_bytes, stream=None):
        self.label, self.total, self.stream = label, total_bytes, stream or sys.stderr
        self.done, self.last_draw = 0, 0.0

    def update(self, num_bytes):
        self.done += num_bytes
        now = time.monotonic()
        if now - self.last_draw >= 0.1:
            self.last_draw = now
            self.draw()

    def draw(self):
        megabytes = self.done / 1e6
        if self.total:
            percent = 100 * self.done / self.total
            text = f"{self.label}: {percent:5.1f}% ({megabytes:.1f} / {self.total / 1e6:.1f} MB)"
        else:
            text = f"{self.label}: {megabytes:.1f} MB"
        self.stream.write("\r" + text)
        self.stream.flush()

    def close(self):
        self.draw()
        self.stream.write("\n")
        self.stream.flush()


def download(url, path, md5, *, manual_hint="", progress=True, timeout=60):
    """Download `url` to `path` and check its MD5 against `md5`.

    The bytes go to a temporary file beside `path`, which is renamed to `path` only once the
    whole file has arrived with the right MD5. Raises DownloadError when the transfer fails
    (offline, HTTP error, interrupted), ChecksumError when the MD5 differs; both messages say
    where to place the file by hand (`manual_hint` adds a sentence to that).
    """
    path = Path(path)
    by_hand = (f"Download it by hand from {url} (MD5 {md5}) and place it at {path}"
               + (f", {manual_hint}" if manual_hint else "") + ".")
    digest = hashlib.md5()
    try:
        with atomic_write(path) as file, urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = ProgressBar(path.name, total) if progress else None
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                file.write(chunk)
                digest.update(chunk)
                if bar:
                    bar.update(len(chunk))
            if bar:
                bar.close()
            if digest.hexdigest() != md5:
                raise ChecksumError(
                    f"the file downloaded from {url} has MD5 {digest.hexdigest()}, but the published "
                    f"MD5 is {md5}: the download is corrupt or the file has changed. Nothing was saved "
                    f"at {path}. Try again, or: {by_hand}")
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(
            f"could not download {url}: {error}. This machine may be offline or the server "
            f"unreachable. {by_hand}") from error
    return path

"""What bench.gpu_check keeps: CuPy's kernel cache between calls, and the files of OUT.

The kernel cache: CuPy compiles every kernel with NVRTC the first time it is used, and keeps
what it compiled in CUPY_CACHE_DIR. bench.gpu_check points that at .gpu-cache/cupy (git
ignores .gpu-cache), unpacks .gpu-cache/kernels.tar.gz into it before the first stage and packs
it again after each stage that added kernels, at most KERNEL_ARCHIVE_LIMIT bytes: the largest
file the device tool brings back.

OUT: summary.md and summary.json (each stage's status, seconds, the end of its log) and
logs.tar.gz (every log and result file; a log over BUNDLED_FILE_LIMIT keeps its head and tail,
any other file over it, a checkpoint, stays out and is named in left-out.txt), each written
through a temporary file, so that a call cut short leaves the last whole version.
"""
import io
import os
import shlex
import shutil
import tarfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_ROOT = os.path.join(REPO_ROOT, ".gpu-cache")
KERNEL_CACHE_DIR = os.path.join(CACHE_ROOT, "cupy")       # CUPY_CACHE_DIR of every stage
KERNEL_ARCHIVE = os.path.join(CACHE_ROOT, "kernels.tar.gz")
KERNEL_ARCHIVE_LIMIT = 16 * 2 ** 20   # the largest file the device tool brings back
LOG_TAIL_LINES = 25      # the end of each stage's log that summary.md shows
BUNDLED_FILE_LIMIT = 4 * 2 ** 20   # larger files (checkpoints) stay out of logs.tar.gz
LOG_HEAD_BYTES, LOG_TAIL_BYTES = 2 ** 20, 2 * 2 ** 20   # what a longer log keeps of itself


# --- the kernel cache -------------------------------------------------------------------------

def folder_files(folder):
    """Every file under `folder` (relative paths, sorted); [] when it does not exist."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, name), folder) for name in names]
    return sorted(found)


def fingerprint(folder):
    """(files, bytes, newest change) of `folder`: changes whenever CuPy adds a kernel."""
    paths = [os.path.join(folder, name) for name in folder_files(folder)]
    stats = [os.stat(path) for path in paths]
    return len(stats), sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0)


def count_files(count):
    """ "1 kernel file", "2 kernel files"."""
    return f"{count} kernel file" + ("" if count == 1 else "s")


def shown(path):
    """`path` as a reader wants it: relative to the repository when inside it."""
    relative = os.path.relpath(path, REPO_ROOT)
    return path if relative.startswith("..") else relative


def restore_kernels(archive, cache_dir):
    """Unpack the kernel archive into cache_dir; a line that says what happened."""
    if not os.path.isfile(archive):
        return f"no archive at {shown(archive)}: kernels compile afresh"
    os.makedirs(cache_dir, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            # the "data" filter refuses absolute paths, links out of cache_dir and devices
            tar.extractall(cache_dir, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        return f"could not unpack {shown(archive)} ({error}): kernels compile afresh"
    files, size, _ = fingerprint(cache_dir)
    return f"{count_files(files)} ({size / 2 ** 20:.1f} MiB) restored from {shown(archive)}"


def save_kernels(cache_dir, archive, limit=KERNEL_ARCHIVE_LIMIT):
    """Pack cache_dir into `archive` (through a temporary file, so that a kill leaves the old
    archive whole). An archive larger than `limit` bytes could not be brought back: then the old
    archive stays. Returns (saved, a line that says what happened)."""
    names = folder_files(cache_dir)
    if not names:
        return False, "the kernel cache is empty: nothing to save"
    os.makedirs(os.path.dirname(archive), exist_ok=True)
    partial = archive + ".partial"
    with tarfile.open(partial, "w:gz") as tar:
        for name in names:
            tar.add(os.path.join(cache_dir, name), arcname=name)
    size = os.path.getsize(partial)
    if size > limit:
        os.remove(partial)
        return False, (f"not saved: {count_files(len(names))} pack to "
                       f"{size / 2 ** 20:.1f} MiB, over the {limit / 2 ** 20:.0f} MiB "
                       f"that can be brought back")
    os.replace(partial, archive)
    return True, f"{count_files(len(names))} saved, {size / 2 ** 20:.1f} MiB"


def copy_into(source, folder):
    """Copy the file `source` into `folder` under its own name, atomically."""
    target = os.path.join(folder, os.path.basename(source))
    shutil.copyfile(source, target + ".partial")
    os.replace(target + ".partial", target)


# --- what goes to OUT -------------------------------------------------------------------------

def log_tail(path, lines=LOG_TAIL_LINES):
    """The last `lines` lines of a log; a line redrawn with carriage returns counts once, as
    its last drawing."""
    try:
        with open(path, errors="replace") as file:
            text = file.read()
    except OSError:
        return ""
    return "\n".join(line.split("\r")[-1] for line in text.splitlines()[-lines:])


def read_notes(path):
    """The distinct lines of a stage's notes file, in order; [] when there is none."""
    try:
        with open(path, errors="replace") as file:
            return list(dict.fromkeys(line.strip() for line in file if line.strip()))
    except OSError:
        return []


def summary_data(stages, facts):
    """summary.json: the facts of the call (GPU, kernel cache, deadline) and every stage."""
    return {**facts, "stages": [
        {"name": s.name, "status": s.status, "seconds": s.seconds, "timeout_s": s.timeout,
         "commands": [shlex.join(c) for c in s.commands], "notes": s.notes,
         "log": f"logs.tar.gz: {s.name}/log.txt" if s.log else None} for s in stages]}


def summary_markdown(stages, facts):
    """summary.md: the stages' table, then the end of each log, readable without unpacking."""
    lines = [f"# GPU check, {facts['started']}", ""]
    if facts.get("rehearsal"):
        lines += [f"**{facts['rehearsal']}**", ""]
    lines += [f"GPU: {facts['gpu']}", f"Kernel cache: {'; '.join(facts['kernel_cache'])}",
              f"Wheels: {facts.get('wheels', 'none carried')}",
             f"Deadline {facts['deadline_s']} s; elapsed {facts['elapsed_s']} s"
             + ("" if facts["finished"] else " (still running or stopped)"), "",
             "| stage | status | seconds | timeout s |", "| --- | --- | --- | --- |"]
    for stage in stages:
        lines.append(f"| {stage.name} | {stage.status.replace('|', '/')} | "
                     f"{'' if stage.seconds is None else stage.seconds} | "
                     f"{'' if stage.timeout is None else stage.timeout} |")
    for stage in stages:
        if stage.log:
            lines += ["", f"## {stage.name}: {stage.status}", "", "```",
                      log_tail(stage.log), "```"]
    return "\n".join(lines) + "\n"


def write_atomic(path, text):
    """Write through a temporary file: a kill mid-write leaves the previous version whole."""
    with open(path + ".partial", "w") as file:
        file.write(text)
    os.replace(path + ".partial", path)


def head_and_tail(path, head, tail):
    """A long log's first `head` and last `tail` bytes (cut at line ends), with a line between
    them that says how much was cut: the start (the command, the first error) and the end
    (where it stopped) are what a reader needs. Returns bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        first = file.read(head)
        first = first[:first.rfind(b"\n") + 1] or first
        file.seek(len(first))
        middle_lines, cut = 0, size - len(first) - tail
        while file.tell() < size - tail:   # count the lines cut, a chunk at a time
            chunk = file.read(min(2 ** 20, size - tail - file.tell()))
            middle_lines += chunk.count(b"\n")
        last = file.read()
    if b"\n" in last[:-1]:   # start the tail at a line's beginning
        skipped = last.index(b"\n") + 1
        middle_lines, cut, last = middle_lines + 1, cut + skipped, last[skipped:]
    mark = (f"\n[... {cut} bytes ({middle_lines} lines) cut here: the log has {size} bytes, "
            f"more than the {(head + tail) / 2 ** 20:g} MiB kept of it ...]\n\n")
    return first + mark.encode() + last


def bundle(work, out):
    """logs.tar.gz in OUT: everything under `work`. A log (.txt, .log) over BUNDLED_FILE_LIMIT
    keeps its head and tail (head_and_tail); any other file over it (a checkpoint) stays out,
    and left-out.txt in the archive names it with its size."""
    path = os.path.join(out, "logs.tar.gz")
    left_out = []
    with tarfile.open(path + ".partial", "w:gz") as tar:
        for name in folder_files(work):
            source = os.path.join(work, name)
            size = os.path.getsize(source)
            if size <= BUNDLED_FILE_LIMIT:
                tar.add(source, arcname=name)
            elif name.endswith((".txt", ".log")):
                _add_bytes(tar, name, head_and_tail(source, LOG_HEAD_BYTES, LOG_TAIL_BYTES))
            else:
                left_out.append(f"{name}: {size} bytes, over the "
                                f"{BUNDLED_FILE_LIMIT / 2 ** 20:g} MiB that a file may take here")
        if left_out:
            _add_bytes(tar, "left-out.txt", ("\n".join(left_out) + "\n").encode())
    os.replace(path + ".partial", path)


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))

"""What bench.gpu_check keeps: CuPy's kernel cache between calls, and the files of OUT.

The kernel cache: CuPy compiles every kernel with NVRTC the first time it is used, and keeps
what it compiled in CUPY_CACHE_DIR. bench.gpu_check points that at .gpu-cache/cupy (git
ignores .gpu-cache), unpacks .gpu-cache/kernels.tar.gz into it before the first stage and packs
it again after each stage that added kernels, at most KERNEL_ARCHIVE_LIMIT bytes: the largest
file the device tool brings back.

OUT: summary.md and summary.json (each stage's status, seconds, the end of its log) and
logs.tar.gz (every log and result file, but none over BUNDLED_FILE_LIMIT: a checkpoint), each
written through a temporary file, so that a call cut short leaves the last whole version.
"""
import os
import shlex
import shutil
import tarfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_ROOT = os.path.join(REPO_ROOT, ".gpu-cache")
KERNEL_CACHE_DIR = os.path.join(CACHE_ROOT, "cupy")       # CUPY_CACHE_DIR of every stage
KERNEL_ARCHIVE = os.path.join(CACHE_ROOT, "kernels.tar.gz")
KERNEL_ARCHIVE_LIMIT = 16 * 2 ** 20   # the largest file the device tool brings back
LOG_TAIL_LINES = 25      # the end of each stage's log that summary.md shows
BUNDLED_FILE_LIMIT = 4 * 2 ** 20   # larger files (checkpoints) stay out of logs.tar.gz


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


def summary_data(stages, facts):
    """summary.json: the facts of the call (GPU, kernel cache, deadline) and every stage."""
    return {**facts, "stages": [
        {"name": s.name, "status": s.status, "seconds": s.seconds, "timeout_s": s.timeout,
         "commands": [shlex.join(c) for c in s.commands],
         "log": f"logs.tar.gz: {s.name}/log.txt" if s.log else None} for s in stages]}


def summary_markdown(stages, facts):
    """summary.md: the stages' table, then the end of each log, readable without unpacking."""
    lines = [f"# GPU check, {facts['started']}", "",
             f"GPU: {facts['gpu']}", f"Kernel cache: {'; '.join(facts['kernel_cache'])}",
             f"Deadline {facts['deadline_s']} s; elapsed {facts['elapsed_s']} s"
             + ("" if facts["finished"] else " (still running or stopped)"), "",
             "| stage | status | seconds | timeout s |", "| --- | --- | --- | --- |"]
    for stage in stages:
        lines.append(f"| {stage.name} | {stage.status} | "
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


def bundle(work, out):
    """logs.tar.gz in OUT: everything under `work` but files over BUNDLED_FILE_LIMIT."""
    path = os.path.join(out, "logs.tar.gz")
    with tarfile.open(path + ".partial", "w:gz") as tar:
        for name in folder_files(work):
            if os.path.getsize(os.path.join(work, name)) <= BUNDLED_FILE_LIMIT:
                tar.add(os.path.join(work, name), arcname=name)
    os.replace(path + ".partial", path)

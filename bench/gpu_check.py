"""python -m bench.gpu_check OUT: every GPU check in one command, each stage under its own clock.

GPU time comes in a few lent minutes, now and then. This driver (run through bench/gpu_check.sh)
turns one such call into a full set of results: it runs the stages below in order, each under its
own timeout inside one overall deadline, and writes what it has to OUT after every stage, so a
stage that hangs costs only its own time and a call cut short still brings back the stages done.
The order is the order of need (budgets in seconds; bench/gpu_stages.py holds the list):

    probe        20  versions; mpiexec, mpi4py and NCCL (what the nccl stage needs); the device;
                     an elementwise kernel and a 4096^2 GEMM timed; cupy.show_config; nvidia-smi
    kernels      50  tests/test_cuda_kernels.py: each of our CUDA kernels against its twin
    selfcheck    45  python -m nn.selfcheck --backend cupy: every op's gradient, every case
                     reported (a case that raises does not hide the next)
    train        70  a 6-step ResNet-50 SimCLR run on synthetic images, k-NN on a held-out split
    step-resnet50-tf32-off  70  bench.step against PyTorch, ResNet-50 at batch 256
    tests        90  the other tests marked gpu, each named as it finishes (pytest -v), the 15
                     slowest at the end, with xdist and per-test timeouts when they import
    resume       15  the run resumed to 12 steps (a second epoch, a second k-NN)
    linear-eval  15  linear evaluation of its checkpoint
    step-resnet50-tf32-on   40  the same comparison with TensorFloat-32
    step-resnet18           30  ResNet-18 at batch 512
    nccl         20  mpiexec -n 1 python -m simclr.train --distributed: a world of one NCCL
                     rank (skipped, saying how to carry one, where there is no mpiexec)
    profile      20  python -m bench.profile: ResNet-50 at batch 256, op by op
    micro-batch  40  bench.micro_batch: ResNet-50 at batch 4,096 in micro-batches of 128 beside
                     the plain step of 128 (images/s, GPU peak MiB, ratio), its table ending its
                     log; last, it takes the slack left before it (the whole table: gpu_check.sh)

A comparison's sides fail alone (bench/common.py): a broken side of ours is recorded as failed,
with the last lines of its stderr, and PyTorch's is still measured. What a stage's programs note
(bench.common.note: a side that failed, a section not measured) joins its status.

The clock: the whole check has --deadline seconds (default 9 minutes), of which the last
RESERVE_SECONDS pack OUT. Each stage has a budget, and the budgets add up to the default deadline;
a stage may run for its budget plus the slack that earlier stages left by finishing early, less
what the stages after it are owed. A stage past its timeout is ended with every process it
started, and the next one begins; a stage left too little time reads "skipped: deadline". The
budgets are sized for a first call on a fresh machine, where NVRTC compiles every kernel for
the first time (tens of kernels, up to a few seconds each, mostly in kernels, selfcheck and
train); the kernel cache (below) makes a second call's stages shorter, never the first's.

Without a GPU (CuPy missing, or no device it can use) every stage reads "skipped: no GPU" and the
exit status is 0. With --rehearse every stage runs on the CPU's rehearsal of a GPU instead
(bench/rehearse.py; --tiny at toy sizes): the same commands, each started through `python -m
bench.rehearse`, the same timeouts, needs and OUT, with numbers that are NumPy's (the summary
says so), and "not rehearsed: WHAT" where the rehearsal cannot stand in. CI runs both
(tests/test_gpu_check.py, tests/test_gpu_rehearsal.py).

What OUT holds, and why so few files: the device tool brings back at most 8 files from $OUT.

    summary.md       each stage's status, seconds and timeout, then the last lines of its log
    summary.json     the same as data, with each stage's notes
    logs.tar.gz      every stage's log (a long one keeps its head and tail) and result files
                     (the step JSONs, the run's metrics and config; never a checkpoint)
    kernels.tar.gz   the CuPy kernel cache, to carry to the next call (see below)

The kernel cache: CuPy compiles every kernel with NVRTC the first time it is used and keeps what
it compiled in CUPY_CACHE_DIR; this driver points that at .gpu-cache/cupy (git ignores
.gpu-cache), unpacks .gpu-cache/kernels.tar.gz into it before the first stage, and packs it again
(at most 16 MiB) after each stage that added kernels. Copy OUT's kernels.tar.gz to .gpu-cache/
here and carry .gpu-cache to the next call: its stages then start with every kernel built.

Exit status: 0 when no stage failed (stages skipped or not rehearsed included), 1 when one
failed or timed out, 2 for a bad argument, 128 + the signal's number when stopped by a signal.
"""
import argparse
import datetime
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.common import NOT_REHEARSED, NOTES_VARIABLE
from bench.gpu_out import (KERNEL_ARCHIVE, KERNEL_CACHE_DIR, REPO_ROOT, bundle, copy_into,
                           fingerprint, read_notes, restore_kernels, save_kernels, summary_data,
                           summary_markdown, write_atomic)
from bench.gpu_probe import mpi_runtime
from bench.gpu_stages import FULL, TINY, plan

NO_GPU = "skipped: no GPU"
REHEARSAL = "rehearsal: numbers are NumPy's, not a GPU's"
REHEARSED_GPU = ("the CPU's rehearsal of a GPU (NumPy arrays standing in for CuPy's, "
                 "bench/rehearse.py)")
DEADLINE_SECONDS = 540   # 9 minutes: the device tool's 10-minute limit, less a margin
RESERVE_SECONDS = 15     # kept back from the stages for the last packing of logs and kernels
MIN_STAGE_SECONDS = 5    # a stage left less than this is skipped, not started
KILL_GRACE_SECONDS = 5   # after SIGTERM, how long a timed-out stage has before SIGKILL


def stage_timeout(remaining, budget, later_budgets):
    """Seconds a stage may run: its own budget, plus whatever slack the stages after it do not
    need (earlier stages that finished early leave slack), never more than `remaining`.

    remaining: seconds to the deadline, the reserve already taken off; later_budgets: the sum
    of the budgets of the stages still to run after this one. A stage that hangs thus uses up
    its budget and the slack, never the later stages' budgets; a slow first compile can borrow
    the slack instead of timing out."""
    return max(0.0, min(remaining, max(budget, remaining - later_budgets)))


def find_gpu(python, timeout=60):
    """(True, "NAME, N device(s)") when CuPy imports and sees a CUDA device, else (False, why).
    Asked in a child process so that this driver never holds a CUDA context itself."""
    if importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed"
    code = ("import cupy; n = cupy.cuda.runtime.getDeviceCount(); "
            "name = cupy.cuda.runtime.getDeviceProperties(0)['name']; "
            "print(n, name.decode() if isinstance(name, bytes) else name)")
    try:
        found = subprocess.run([python, "-c", code], capture_output=True, text=True,
                               timeout=timeout, env=child_environment())
    except subprocess.TimeoutExpired:
        return False, f"CuPy did not answer within {timeout} s"
    if found.returncode != 0:
        last = (found.stderr.strip().splitlines() or ["no message"])[-1]
        return False, f"CuPy is installed but no CUDA GPU is usable: {last}"
    count, name = (found.stdout.strip().splitlines() or ["0 none"])[-1].split(" ", 1)
    if int(count) < 1:
        return False, "CuPy is installed but sees no CUDA device"
    return True, f"{name}, {count} device(s)"


def child_environment():
    """Every stage's environment: the repository importable from anywhere, CuPy's kernel cache
    in .gpu-cache/cupy, and Python's output unbuffered (a killed stage's log keeps its end)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["CUPY_CACHE_DIR"] = KERNEL_CACHE_DIR
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")            # the nccl stage's mpiexec, as root
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def run_command(command, log, timeout, env=None):
    """Run `command` with its output appended to the open file `log`; its exit status, or None
    when it ran past `timeout` seconds. It runs in a process group of its own, so that a
    timeout ends its children too (pytest's workers, bench.step's measuring processes): SIGTERM
    to the group, then SIGKILL after a grace period. The group stays in this process's session,
    so whatever ends this driver's session ends the stage as well."""
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    # a process group of its own: process_group=0 (Python 3.11), os.setpgrp before that
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    try:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env or child_environment(),
                                   stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, **group)
    except OSError as error:   # e.g. nvidia-smi not on PATH
        log.write(f"cannot start {command[0]}: {error.strerror}\n")
        return 127
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:   # a timeout, or a signal that stops this driver: end the whole group
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process, signum):
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def command_name(command):
    """A short name for a command in a status line: the module of `python -m MODULE`."""
    if "-m" in command[:-1]:
        return command[command.index("-m") + 1]
    return os.path.basename(command[0]) + (" -c" if "-c" in command else "")


def run_stage(stage, work, timeout, rehearse=False):
    """Run the stage's commands within `timeout` seconds together; sets its status, with the
    notes its programs left (bench.common.note) after it. On the rehearsal, a command that
    exits with NOT_REHEARSED has said what it could not stand in for: a note, not a failure."""
    os.makedirs(os.path.join(work, stage.name), exist_ok=True)
    stage.log = os.path.join(work, stage.name, "log.txt")
    notes = os.path.join(work, stage.name, "notes.txt")
    env = dict(child_environment(), **{NOTES_VARIABLE: notes})
    stage.timeout = round(timeout)
    ends = time.monotonic() + timeout
    start = time.monotonic()
    failures, not_rehearsed = [], 0
    with open(stage.log, "a") as log:
        log.write(f"# stage {stage.name}, timeout {timeout:.0f} s\n")
        for index, command in enumerate(stage.commands, 1):
            left = ends - time.monotonic()
            status = run_command(command, log, left, env) if left > 0 else None
            where = ""
            if len(stage.commands) > 1:
                where = f" (command {index} of {len(stage.commands)}: {command_name(command)})"
            if status is None:
                failures.append(f"timed out after {timeout:.0f} s{where}")
                break
            if rehearse and status == NOT_REHEARSED:
                not_rehearsed += 1
            elif status != 0:
                failures.append(f"failed: exit status {status}{where}")
                if not stage.keep_going:
                    break
        stage.seconds = round(time.monotonic() - start, 1)
        stage.notes = read_notes(notes)
        head = failures or ([] if not_rehearsed == len(stage.commands) else ["passed"])
        stage.status = "; ".join(head + stage.notes) or "not rehearsed"
        log.write(f"# {stage.status}, {stage.seconds} s\n")


# --- the program --------------------------------------------------------------------------------

class Stopped(Exception):
    """This driver was sent SIGTERM (or SIGINT): the stage under way is ended, the rest skipped,
    and what is done is still written to OUT."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes are one line (argparse prints the usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv):
    names = [stage.name for stage in plan("", "python", set())]
    parser = ArgumentParser(
        prog="bash bench/gpu_check.sh", description=__doc__.split("\n")[0],
        epilog="stages: " + ", ".join(names))
    parser.add_argument("out", metavar="OUT", help="folder for the results (made if missing)")
    parser.add_argument("--deadline", type=float, default=DEADLINE_SECONDS,
                        help=f"seconds for the whole check (default {DEADLINE_SECONDS})")
    parser.add_argument("--only", metavar="STAGE[,STAGE]",
                        help="run these stages alone (the others read 'skipped: not selected')")
    parser.add_argument("--rehearse", action="store_true",
                        help="run every stage on the CPU's rehearsal of a GPU, GPU or not "
                             "(numbers mean nothing; CI's dry run)")
    parser.add_argument("--tiny", action="store_true",
                        help="every stage at toy sizes (for the rehearsal in CI)")
    args = parser.parse_args(argv)
    if not args.deadline > RESERVE_SECONDS + MIN_STAGE_SECONDS:
        parser.error(f"--deadline must be more than {RESERVE_SECONDS + MIN_STAGE_SECONDS} "
                     f"seconds, got {args.deadline:g}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"OUT {args.out} is a file, not a folder")
    if args.only:
        args.only = args.only.split(",")
        unknown = [name for name in args.only if name not in names]
        if unknown:
            parser.error(f"--only: no stage named {', '.join(unknown)}; the stages: "
                         f"{', '.join(names)}")
    return args


class Check:
    """One call of the check: its stages, the clock they share, what OUT holds, the kernels."""

    def __init__(self, out, deadline, only=None, rehearse=False, tiny=False):
        self.started = time.monotonic()
        self.deadline = self.started + deadline - RESERVE_SECONDS   # when the stages must end
        self.out = os.path.abspath(out)
        os.makedirs(self.out, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="gpu-check-")   # logs and runs; packed into OUT
        python = sys.executable
        plugins = {name for name in ("xdist", "pytest_timeout")
                   if importlib.util.find_spec(name)}
        self.rehearse = rehearse
        self.has_gpu, gpu = (False, REHEARSED_GPU) if rehearse else find_gpu(python)
        runs = self.has_gpu or rehearse
        self.stages = plan(self.work, python, plugins, mpi_runtime() if runs else None,
                           rehearse, TINY if tiny else FULL)
        self.facts = {
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "gpu": gpu if self.has_gpu else f"none: {gpu}", "deadline_s": deadline,
            "elapsed_s": 0, "finished": False, "pytest_plugins": sorted(plugins),
            "sizes": "tiny (--tiny)" if tiny else "full", "kernel_cache": [],
            "wheels": os.environ.get("GPU_CHECK_WHEELS_INSTALLED", "none carried")}
        if rehearse:
            self.facts["rehearsal"] = REHEARSAL
        for stage in self.stages:
            if not runs:
                stage.status = NO_GPU
            elif only and stage.name not in only:
                stage.status = "skipped: not selected"
            elif stage.skip:
                stage.status = stage.skip
        self.kernels_seen = None   # the kernel cache's fingerprint when last saved

    def write_out(self):
        """summary.json, summary.md and logs.tar.gz in OUT, as things stand."""
        self.facts["elapsed_s"] = round(time.monotonic() - self.started, 1)
        write_atomic(os.path.join(self.out, "summary.json"),
                     json.dumps(summary_data(self.stages, self.facts), indent=1) + "\n")
        write_atomic(os.path.join(self.out, "summary.md"),
                     summary_markdown(self.stages, self.facts))
        bundle(self.work, self.out)

    def restore_kernels(self):
        self.facts["kernel_cache"] = [restore_kernels(KERNEL_ARCHIVE, KERNEL_CACHE_DIR)]
        self.kernels_seen = fingerprint(KERNEL_CACHE_DIR)

    def keep_kernels(self):
        """Save the kernel cache when a stage added kernels, and put the archive in OUT."""
        if fingerprint(KERNEL_CACHE_DIR) != self.kernels_seen:
            _, line = save_kernels(KERNEL_CACHE_DIR, KERNEL_ARCHIVE)
            self.kernels_seen = fingerprint(KERNEL_CACHE_DIR)
            self.facts["kernel_cache"][1:] = [line]   # after the line of the restore
        if os.path.isfile(KERNEL_ARCHIVE):
            copy_into(KERNEL_ARCHIVE, self.out)

    def run_next(self, index):
        """Run stage `index` if it is to run and there is time left for it."""
        stage = self.stages[index]
        if stage.status != "pending":
            return
        if stage.needs and stage.needs not in {s.name for s in self.stages
                                               if s.status == "passed"}:
            stage.status = f"skipped: {stage.needs} did not pass"
            return
        later = sum(s.budget for s in self.stages[index + 1:] if s.status == "pending")
        timeout = stage_timeout(self.deadline - time.monotonic(), stage.budget, later)
        if timeout < MIN_STAGE_SECONDS:
            stage.status = "skipped: deadline"
            return
        stage.status = "running"
        self.write_out()
        print(f"gpu_check: {stage.name} (timeout {timeout:.0f} s)", file=sys.stderr, flush=True)
        run_stage(stage, self.work, timeout, self.rehearse)
        print(f"gpu_check: {stage.name}: {stage.status}, {stage.seconds} s", file=sys.stderr,
              flush=True)
        if self.has_gpu:
            self.keep_kernels()
        self.write_out()

    def run(self):
        """Every stage in order; the exit status (see the module's docstring)."""
        if self.has_gpu:
            self.restore_kernels()
        else:
            self.facts["kernel_cache"] = ["rehearsal: no kernel compiled" if self.rehearse
                                          else NO_GPU]
        handlers = {signum: signal.signal(signum, _stop)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
        stopped = None
        try:
            self.write_out()
            for index in range(len(self.stages)):
                self.run_next(index)
        except Stopped as stop:
            stopped = stop.signum
            for stage in self.stages:
                if stage.status == "running":
                    stage.status = f"stopped by {stop}"
                elif stage.status == "pending":
                    stage.status = f"skipped: stopped by {stop}"
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self.facts["finished"] = True
            if self.has_gpu:
                self.keep_kernels()
            self.write_out()
            shutil.rmtree(self.work, ignore_errors=True)
            site = os.environ.get("GPU_CHECK_SITE", "")   # bench/gpu_check.sh's wheels
            if os.path.basename(site).startswith("gpu-check-site."):
                shutil.rmtree(site, ignore_errors=True)
        print(f"gpu_check: summary in {os.path.join(self.out, 'summary.md')}", file=sys.stderr)
        if stopped is not None:
            return 128 + stopped
        failed = [s for s in self.stages
                  if not s.status.startswith(("passed", "skipped", "not rehearsed"))]
        return 1 if failed else 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return Check(args.out, args.deadline, args.only, args.rehearse, args.tiny).run()


if __name__ == "__main__":
    sys.exit(main())

"""The stages of bench.gpu_check: what runs on a lent GPU, in order, and each one's budget.

bench/gpu_check.py's docstring says what each stage does and how the clock is shared; this
file is the list itself, the one place to change when a check is added.

The order is the order of need: a first call on a fresh machine, whose kernels all compile
for the first time, must bring back the probe, the kernel tests, the self-check, a training
run and one comparison with PyTorch before anything optional starts.
"""
import os
from dataclasses import dataclass, field

# pytest's test list for the tests stage, less what the kernels stage has already run
KERNEL_TESTS = "tests/test_cuda_kernels.py"
# --tiny: the tests stage's sample (fast files whose gpu tests cover the engine and the loss)
TINY_TESTS = ["tests/test_engine.py", "tests/test_nt_xent.py"]


@dataclass
class Stage:
    """One stage: commands run in order in the repository root, sharing one timeout.

    budget: the seconds this stage is guaranteed (see stage_timeout); the budgets of all stages
    add up to the default deadline less the reserve. needs: a stage that must have passed in
    this call first (a resumed run needs the run). keep_going: run every command even after one
    fails (the probe's commands are independent). skip: why this stage cannot run on this
    machine (no MPI runtime), known before it starts. notes: lines its programs added (a side
    that failed, something not rehearsed), shown with its status."""
    name: str
    budget: float
    commands: list
    needs: str = None
    keep_going: bool = False
    skip: str = None
    status: str = "pending"
    seconds: float = None
    timeout: float = None
    log: str = None
    notes: list = field(default_factory=list)


@dataclass
class Sizes:
    """The sizes the stages run at. FULL on a GPU; TINY (--tiny) only for the rehearsal in CI,
    where every number is NumPy's anyway: the same commands, at toy sizes."""
    arch: str = "resnet50"
    width: str = "1"
    batch: int = 64            # the training run's
    images: int = 480          # synthetic images: a fifth held out, 384 to train, 6 steps of 64
    step_batch: int = 256      # bench.step's and bench.profile's, ResNet-50
    step18_batch: int = 512
    warmup: int = 3
    steps: int = 10
    nccl_width: str = "0.25"   # the nccl stage's ResNet-18
    micro_batches: str = "4096"   # the micro-batch stage's B (a comma list), at arch and width
    micro_batch: int = 128        # its M: one step of B is B/M micro-batches x 3 passes
    micro_plain_up_to: int = 128  # the plain step of B only up to this B: here, M's alone
    micro_steps: int = 1          # warm-up steps and timed steps per process, each
    tests: list = field(default_factory=list)   # the tests stage's files: all when empty


FULL = Sizes()
TINY = Sizes(arch="resnet18", width="0.0625", batch=8, images=60, step_batch=4, step18_batch=4,
             warmup=1, steps=2, nccl_width="0.0625", tests=TINY_TESTS, micro_batches="8",
             micro_batch=4, micro_plain_up_to=8)


def pytest_command(python, plugins, junit, tests, timeout):
    """pytest on the gpu tests, naming each test as it finishes (-v, flushed line by line:
    a stage cut short still says what passed) and the slowest at the end (--durations)."""
    command = [python, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
               "--durations", "15", "--junitxml", junit, *tests]
    if "xdist" in plugins:
        command += ["-n", "8"]   # NVRTC compiles on the CPU: workers compile side by side
    if "pytest_timeout" in plugins:
        command += ["--timeout", str(timeout)]
    return command


def mpi_stage(python, mpi, data, sizes, out):
    """The nccl stage: a world of one NCCL rank started by MPI. Skipped, with how to carry one,
    when the machine has no mpiexec; Open MPI's --oversubscribe only where mpiexec is Open MPI
    (a container may report fewer slots than ranks)."""
    command = [python, "-m", "simclr.train", *data, "--arch", "resnet18", "--width",
               sizes.nccl_width, "--batch-size", str(sizes.batch), "--epochs", "1",
               "--max-steps", "3", "--distributed", "--backend", "cupy", "--out", out]
    if not mpi or not mpi.get("mpiexec"):
        return Stage("nccl", 20, [["mpiexec", "-n", "1", *command]],
                     skip="skipped: no MPI runtime (carry Open MPI's wheel in "
                          ".gpu-cache/wheels: bench/gpu_check.sh's header says how)")
    flags = ["--oversubscribe"] if mpi.get("flavour") == "Open MPI" else []
    return Stage("nccl", 20, [[mpi["mpiexec"], *flags, "-n", "1", *command]])


def micro_batch_stage(python, sizes, json_path):
    """The micro-batch stage: bench.micro_batch's step of B in micro-batches of M beside the
    plain step of M (images/s, GPU peak MiB and its ratio), its table at the end of the log.
    Last, with a modest budget: it may take all the slack the stages before it leave. At full
    size, ResNet-50 at B = 4,096: a warm-up step, a timed one and the memory step, each 32
    micro-batches x 3 passes; the kernels are compiled by then (the plain step of M warms
    up first). bench/gpu_check.sh's header gives the command of the whole table."""
    return Stage("micro-batch", 40, [[
        python, "-m", "bench.micro_batch", "--backend", "cupy", "--archs", sizes.arch,
        "--width", sizes.width, "--batches", sizes.micro_batches, "--micro-batch",
        str(sizes.micro_batch), "--plain-up-to", str(sizes.micro_plain_up_to), "--warmup",
        str(sizes.micro_steps), "--steps", str(sizes.micro_steps), "--json", json_path]])


def rehearsed(command, python):
    """`command` run on the CPU's rehearsal of a GPU (bench/rehearse.py): `python -m M` and
    `python -c` (also after mpiexec) through the wrapper; any other program is named to it,
    and it says that it cannot stand in for that program."""
    if python not in command:
        return [python, "-m", "bench.rehearse", "--program", *command]
    at = command.index(python) + 1
    return command[:at] + ["-m", "bench.rehearse"] + command[at + (command[at] == "-m"):]


def plan(work, python, plugins, mpi=None, rehearse=False, sizes=FULL):
    """The stages, their commands writing under the folder `work`. `plugins` is the set of
    pytest plugins that import ("xdist", "pytest_timeout"); `mpi` what
    bench.gpu_probe.mpi_runtime found; `rehearse`: every command on the CPU's rehearsal."""
    def folder(name):
        return os.path.join(work, name)

    run = folder("run")   # the training run that train, resume and linear-eval share
    data = ["--dataset", "synthetic", "--synthetic-size", str(sizes.images), "--val-fraction",
            "0.2"]
    model = ["--arch", sizes.arch, "--width", sizes.width]
    timed = ["--warmup", str(sizes.warmup), "--steps", str(sizes.steps)]
    plugins = set() if rehearse else plugins   # xdist's workers would not rehearse

    def step(name, budget, arch, batch, tf32):
        return Stage(name, budget, [[
            python, "-m", "bench.step", "--arch", arch, "--width", sizes.width, "--cifar-stem",
            "--batch-size", str(batch), "--backend", "cupy", "--compare", "torch", "--tf32",
            tf32, *timed, "--side-timeout", str(round(0.6 * budget)), "--json",
            os.path.join(folder(name), "step.json")]])

    stages = [
        Stage("probe", 20, [[python, "-m", "bench.gpu_probe",
                             os.path.join(folder("probe"), "probe.json")],
                            [python, "-c", "import cupy; cupy.show_config()"],
                            ["nvidia-smi"]], keep_going=True),
        Stage("kernels", 50, [pytest_command(python, plugins & {"pytest_timeout"},
                                             os.path.join(folder("kernels"), "junit.xml"),
                                             [KERNEL_TESTS], 45)]),
        Stage("selfcheck", 45, [[python, "-m", "nn.selfcheck", "--backend", "cupy"]]),
        Stage("train", 70, [[python, "-m", "simclr.train", *data, *model, "--batch-size",
                             str(sizes.batch), "--epochs", "1", "--max-steps", "6",
                             "--knn-every", "1", "--backend", "cupy", "--out", run]]),
        step("step-resnet50-tf32-off", 70, sizes.arch, sizes.step_batch, "off"),
        Stage("tests", 90, [pytest_command(python, plugins,
                                           os.path.join(folder("tests"), "junit.xml"),
                                           sizes.tests or ["--ignore", KERNEL_TESTS], 60)]),
        Stage("resume", 15, [[python, "-m", "simclr.train", "--resume", run, "--epochs", "2",
                              "--max-steps", "12", "--backend", "cupy"]], needs="train"),
        Stage("linear-eval", 15, [[python, "-m", "simclr.linear_eval", "--checkpoint", run,
                                   *data, "--backend", "cupy", "--epochs", "1"]],
              needs="train"),
        step("step-resnet50-tf32-on", 40, sizes.arch, sizes.step_batch, "on"),
        step("step-resnet18", 30, "resnet18", sizes.step18_batch, "off"),
        mpi_stage(python, mpi, data, sizes, folder("nccl-run")),
        Stage("profile", 20, [[python, "-m", "bench.profile", *model, "--cifar-stem",
                               "--batch-size", str(sizes.step_batch), "--backend", "cupy",
                               "--warmup", "2", "--steps", "3", "--json",
                               os.path.join(folder("profile"), "profile.json")]]),
        micro_batch_stage(python, sizes, os.path.join(folder("micro-batch"), "micro-batch.json")),
    ]
    if rehearse:
        for stage in stages:
            stage.commands = [rehearsed(command, python) for command in stage.commands]
    return stages

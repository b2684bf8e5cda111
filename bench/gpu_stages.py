"""The stages of bench.gpu_check: what runs on a lent GPU, in order, and each one's budget.

bench/gpu_check.py's docstring says what each stage does and how the clock is shared; this
file is the list itself, the one place to change when a check is added.
"""
import os
import shutil
from dataclasses import dataclass


@dataclass
class Stage:
    """One stage: commands run in order in the repository root, sharing one timeout.

    budget: the seconds this stage is guaranteed (see stage_timeout); the budgets of all stages
    add up to the default deadline less the reserve. needs: a stage that must have passed in
    this call first (a resumed run needs the run). keep_going: run every command even after one
    fails (the probe's commands are independent)."""
    name: str
    budget: float
    commands: list
    needs: str = None
    keep_going: bool = False
    status: str = "pending"
    seconds: float = None
    timeout: float = None
    log: str = None


def plan(work, python, plugins):
    """The stages, their commands writing under the folder `work`. `plugins` is the set of
    pytest plugins that import ("xdist", "pytest_timeout")."""
    def folder(name):
        return os.path.join(work, name)

    run = folder("run")   # the training run that train, resume and linear-eval share
    data = ["--dataset", "synthetic", "--synthetic-size", "480", "--val-fraction", "0.2"]
    # 480 synthetic images, a fifth of each class held out: 384 to train on, 6 steps of 64,
    # so that the 6 steps of train end an epoch (and its k-NN), as the 12 of resume do
    pytest = [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
              "--junitxml", os.path.join(folder("tests"), "junit.xml")]
    if "xdist" in plugins:
        pytest += ["-n", "4"]
    if "pytest_timeout" in plugins:
        pytest += ["--timeout", "120"]

    # a world of one NCCL rank, started by MPI (the GPU machine has mpi4py and NCCL): its
    # loss all-reduced by NCCL every step; as root, Open MPI asks for leave (as in a container)
    mpiexec = shutil.which("mpiexec") or "mpiexec"

    def step(name, arch, batch, tf32):
        return Stage(name, 60 if arch == "resnet50" else 40, [[
            python, "-m", "bench.step", "--arch", arch, "--cifar-stem", "--batch-size",
            str(batch), "--backend", "cupy", "--compare", "torch", "--tf32", tf32,
            "--warmup", "3", "--steps", "10", "--json", os.path.join(folder(name), "step.json")]])

    return [
        Stage("probe", 30, [[python, "-m", "bench.gpu_probe",
                             os.path.join(folder("probe"), "probe.json")],
                            [python, "-c", "import cupy; cupy.show_config()"],
                            ["nvidia-smi"]], keep_going=True),
        Stage("selfcheck", 45, [[python, "-m", "nn.selfcheck", "--backend", "cupy"]]),
        Stage("tests", 105, [pytest]),
        Stage("train", 60, [[python, "-m", "simclr.train", *data, "--arch", "resnet50",
                             "--batch-size", "64", "--epochs", "1", "--max-steps", "6",
                             "--knn-every", "1", "--backend", "cupy", "--out", run]]),
        Stage("resume", 35, [[python, "-m", "simclr.train", "--resume", run, "--epochs", "2",
                              "--max-steps", "12", "--backend", "cupy"]], needs="train"),
        Stage("linear-eval", 30, [[python, "-m", "simclr.linear_eval", "--checkpoint", run,
                                   *data, "--backend", "cupy", "--epochs", "1"]],
              needs="train"),
        step("step-resnet50-tf32-on", "resnet50", 256, "on"),
        step("step-resnet50-tf32-off", "resnet50", 256, "off"),
        step("step-resnet18", "resnet18", 512, "off"),
        Stage("nccl", 25, [[mpiexec, "--oversubscribe", "-n", "1", python, "-m",
                            "simclr.train", *data, "--arch", "resnet18", "--width", "0.25",
                            "--batch-size", "64", "--epochs", "1", "--max-steps", "3",
                            "--distributed", "--backend", "cupy", "--out", folder("nccl-run")]]),
        Stage("profile", 35, [[python, "-m", "bench.profile", "--arch", "resnet50", "--cifar-stem",
                               "--batch-size", "256", "--backend", "cupy", "--warmup", "2",
                               "--steps", "3", "--json",
                               os.path.join(folder("profile"), "profile.json")]]),
    ]

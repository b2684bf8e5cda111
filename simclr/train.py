"""python -m simclr.train: SimCLR pre-training.

The flags are checked (simclr/pretraining_settings.py), the process is set up (threads, memory,
SIGTERM as Ctrl-C), and simclr.pretraining.train runs the steps (simclr/pretraining.py: the
step; simclr/training/loop.py: the loop, its metrics and checkpoints). With --distributed this
is one rank of a data-parallel run started by mpiexec (simclr/training/distributed.py).
"""
import sys

from simclr import cli
from simclr.cli import given_flags
from simclr.pretraining import train
from simclr.pretraining_settings import parse_args, resolve_config
from simclr.training import distributed
from simclr.training.checkpoint import TrainingDiverged
from simclr.training.interrupts import Interrupted
from simclr.training.process import set_up_process

PROG = "python -m simclr.train"


def main(argv=None):
    """The program: exit status 0 when done, 2 for a user's mistake (one line, see
    simclr/cli.py), 130 after Ctrl-C, 1 when training diverged."""
    return cli.run(_main, argv, prog=PROG)


def _main(argv):
    argv = sys.argv[1:] if argv is None else argv
    if "--distributed" in argv:  # MPI first: the ranks then agree on every mistake (one line)
        return _main_of_a_rank(argv, distributed.start())
    args = parse_args(argv)
    set_up_process(args.threads)
    config, resumed = resolve_config(args, given_flags(argv))
    return _train(config, resumed)


def _main_of_a_rank(argv, mpi):
    """One rank of a data-parallel run (simclr/training/distributed.py): the flags checked on
    every rank alike, the settings (and a checkpoint to resume) from rank 0, training together;
    a failure during training ends every rank."""
    try:
        args = distributed.agree(mpi, lambda: parse_args(argv))
        distributed.agree(mpi, lambda: set_up_process(args.threads))
        config, resumed = distributed.broadcast(
            mpi, lambda: resolve_config(args, given_flags(argv)))
        group = distributed.agree(mpi, lambda: distributed.for_backend(mpi, config["backend"]))
    except distributed.ElsewhereFailed:
        return cli.EXIT_USAGE  # the rank that failed said why
    return _train(config, resumed, group)


def _train(config, resumed, group=None):
    try:
        train(config, resumed, group=group)
    except Interrupted as interrupted:
        return 128 + interrupted.signum
    except TrainingDiverged as error:
        if group is None or group.rank == 0:
            print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except distributed.ElsewhereFailed:
        return cli.EXIT_USAGE
    except BaseException as error:
        if group is None or getattr(error, "agreed", False):
            raise
        distributed.fail_together(group, PROG, error)
    return 0


if __name__ == "__main__":
    cli.exit_program(main())

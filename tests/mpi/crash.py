"""Run by tests/test_distributed_mpi.py under mpiexec: simclr.train --distributed, where rank
1 fails in its third step; the job must end, every rank, with a line that names rank 1."""
import sys

from simclr import cli, pretraining, train
from simclr.training import distributed

real_step, calls = pretraining.training_step, []


def failing_step(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3 and distributed.start().rank == 1:
        raise ArithmeticError("the third step of rank 1 failed")
    return real_step(*args, **kwargs)


pretraining.training_step = failing_step
cli.exit_program(train.main(sys.argv[1:]))

"""A data-parallel training run over MPI: how its processes start, agree and fail together.

    mpiexec -n 4 python -m simclr.train --distributed ...          # CPU ranks, over MPI
    mpiexec -n 8 python -m simclr.train --distributed --backend cupy ...   # one per GPU, NCCL

Every rank runs the same program on the same settings. --batch-size is the global batch; each
rank takes rows rank * B .. (rank + 1) * B - 1 of it (B = batch size / ranks), in the epoch's
order that every rank draws alike from (seed, epoch); the augmentation draws are those of the
whole batch (simclr.augment.SimCLRAugment's rows), so an image gets the same views whatever
the number of ranks. Every rank builds the model from the seed alike (and checks that it did),
batch norm takes the global batch's statistics, NT-Xent compares each rank's rows with every
rank's, and the averaged gradients make every rank's update the same
(nn/distributed/collectives.py). Rank 0 alone writes the run's folder (config, metrics,
checkpoints), and reads a checkpoint to resume from, which it hands to the others: nothing
assumes that the ranks share a disk or a host.

Together, or not at all: a rank that cannot start (a missing file on its host, say) makes
every rank stop before training, each with exit status 2 (its own line from the rank that
failed); a Ctrl-C or SIGTERM, which mpiexec passes to every rank, is agreed on at every step,
so that all stop after the same one; and a rank that fails during training prints what
happened, with its number, and aborts the whole job (MPI_Abort), so that no rank waits forever
in a collective for one that is gone.
"""
import sys
import traceback

from simclr.cli import UsageError

INSTALL = ("--distributed needs MPI and mpi4py: pip install -e '.[mpi]' (Open MPI and mpi4py "
           "from PyPI), then start the ranks with mpiexec -n RANKS python -m simclr.train "
           "--distributed ...")


class ElsewhereFailed(UsageError):
    """Another rank could not start; it said why. This rank stops too, without a line."""


def start():
    """This process's MPI communicator in an MPI job (one clear line where mpi4py is
    missing)."""
    try:
        from nn.distributed import MPIComm
        return MPIComm()
    except ImportError:
        raise UsageError(INSTALL) from None


def for_backend(mpi, backend):
    """The communicator for the arrays of `backend`: MPI itself for numpy, NCCL (its unique
    id handed over by MPI) for cupy."""
    if backend != "cupy":
        return mpi
    from nn.distributed import NCCLComm
    return NCCLComm(mpi)


def host(group):
    """The communicator for host-side agreements and objects (MPI under NCCL)."""
    return getattr(group, "mpi", group)


def agree(group, setup):
    """setup() on every rank, then one collective: if it failed on any rank, every rank
    stops, each with exit status 2. The line that says why comes from rank 0 when it failed
    (every rank failed alike: a bad flag), else from each rank that failed, with its number;
    the others stop with ElsewhereFailed, quietly."""
    error = None
    try:
        result = setup()
    except (UsageError, OSError) as raised:
        error = raised
    failed = host(group).comm.allgather(error is not None)
    if error is None and any(failed):
        raise ElsewhereFailed("another rank could not start")
    if error is not None:
        if failed[0] and group.rank != 0:
            raise ElsewhereFailed(str(error))
        if group.rank != 0:
            error = UsageError(f"rank {group.rank} of {group.size}: {error}")
        error.agreed = True  # every rank stops alike: no need to abort the job
        raise error
    return result


def broadcast(group, make):
    """make() on rank 0, its result handed to every rank (the others do not call it). An
    error there stops every rank: rank 0 raises it, the others ElsewhereFailed."""
    outcome = None
    if group.rank == 0:
        try:
            outcome = ("done", make())
        except (UsageError, OSError) as error:
            outcome = ("failed", error)
    outcome = host(group).comm.bcast(outcome, root=0)
    if outcome[0] == "failed":
        if group.rank == 0:
            outcome[1].agreed = True
            raise outcome[1]
        raise ElsewhereFailed("rank 0 could not start")
    return outcome[1]


def fail_together(group, prog, error):
    """During training, `error` ended this rank: say so, with the rank, and end every rank."""
    print(f"{prog}: rank {group.rank} of {group.size} failed: "
          f"{type(error).__name__}: {error}", file=sys.stderr)
    if not isinstance(error, UsageError):
        traceback.print_exception(error, file=sys.stderr)
    sys.stderr.flush()
    host(group).abort(1)

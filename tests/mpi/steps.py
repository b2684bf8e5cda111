"""Run by tests/test_distributed_mpi.py under mpiexec: this rank's three SimCLR steps of
test_distributed's tiny model on its share of the views, over MPI; the results to OUT."""
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import test_distributed as steps  # noqa: E402  (the same steps as the world of threads)
from nn.distributed import MPIComm  # noqa: E402
from nn.runtime import threads  # noqa: E402

threads.set_num_threads(1)
group = MPIComm()
views = steps._views(group.size)
losses, grads, buffers, weights = steps._steps(steps._rank_views(views, group.size, group.rank),
                                               group)
numpy.savez(os.path.join(sys.argv[1], f"rank{group.rank}.npz"), losses=losses,
            **{f"grad{i}": g for i, g in enumerate(grads)},
            **{f"weight{i}": w for i, w in enumerate(weights)},
            **{f"buffer:{name}": b for name, b in buffers.items()})

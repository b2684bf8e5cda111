"""Run by tests/test_micro_batch.py under mpiexec: this rank's two micro-batched SimCLR steps
(M = 2) of test_micro_batch's tiny model on its share of the views, over MPI; the results to
OUT."""
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import test_micro_batch as steps  # noqa: E402  (the same steps as the world of threads)
from nn.distributed import MPIComm  # noqa: E402
from nn.runtime import threads  # noqa: E402

threads.set_num_threads(1)
group = MPIComm()
share = steps.IMAGES // group.size
views = steps._views()[:, :, group.rank * share:(group.rank + 1) * share]
losses, grads, buffers, weights = steps._micro_batched_steps(views, 2, group)
numpy.savez(os.path.join(sys.argv[1], f"rank{group.rank}.npz"), losses=losses,
            **{f"grad{i}": g for i, g in enumerate(grads)},
            **{f"weight{i}": w for i, w in enumerate(weights)},
            **{f"buffer:{name}": b for name, b in buffers.items()})

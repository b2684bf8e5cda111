"""Data-parallel training: several processes, each with a shard of every batch, acting as one.

Read comm.py first (the communicators: MPI, NCCL, and a world of threads for tests), then
collectives.py (the all-gather that NT-Xent differentiates through, the global batch norm's
moments, the average of the gradients). simclr/distributed.py starts a run over MPI, and
nn.synchronize_batch_norm(model, group) makes a model's batch norms take the global batch's
statistics.
"""
from .collectives import (AllGather, all_gather, average_gradients, global_moments,
                          same_on_every_rank)
from .comm import Communicator, LocalWorld, MPIComm, NCCLComm

__all__ = ["Communicator", "LocalWorld", "MPIComm", "NCCLComm", "AllGather", "all_gather",
           "average_gradients", "global_moments", "same_on_every_rank"]

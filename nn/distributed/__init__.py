"""Data-parallel training: several processes, each with a shard of every batch, acting as one.

Read comm.py first (the communicators: MPI, NCCL, and a world of threads for tests), then
collectives.py (the all-gather that NT-Xent differentiates through, the global batch norm's
moments, the average of the gradients). simclr/distributed.py starts a run over MPI.
"""
from .collectives import (AllGather, all_gather, average_gradients, global_moments,
                          same_on_every_rank, synchronize_batch_norm)
from .comm import Communicator, LocalWorld, MPIComm, NCCLComm

__all__ = ["Communicator", "LocalWorld", "MPIComm", "NCCLComm", "AllGather", "all_gather",
           "average_gradients", "global_moments", "synchronize_batch_norm",
           "same_on_every_rank"]

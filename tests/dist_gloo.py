"""Imported by the distributed test workers (tests/dist_*_worker.py): lets fastai's `DistributedDL` run over gloo on CPU.

fastai's `DistributedDL._broadcast` moves the indices to CUDA (for NCCL); gloo on CPU broadcasts CPU tensors."""
import torch.distributed as dist
from fastai.vision.all import LongTensor
from fastai.distributed import DistributedDL

def _broadcast_cpu(self, t, rank):
    "fastai's `DistributedDL._broadcast`, on CPU tensors"
    t = LongTensor(t)
    dist.broadcast(t, rank)
    return t.tolist()
DistributedDL._broadcast = _broadcast_cpu

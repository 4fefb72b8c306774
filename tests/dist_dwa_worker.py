"""One process of the distributed DWA test (`tests/test_distributed.py` starts two with `torch.distributed.run`).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_dwa_worker.py OUT_DIR

Each rank trains a tiny model with `DWA` inside `learn.distrib_ctx()` on CPU (gloo backend) and writes to
`OUT_DIR/rank{r}.json` the DWA history (reduced over the ranks) and its own, unreduced, per-epoch sums and counts.
"""
import json, sys, warnings
from pathlib import Path
import torch, torch.distributed as dist
from torch import nn
from fastai.vision.all import Callback, ConvLayer, ProgressCallback, set_seed
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
import dist_gloo  # noqa: F401  (fastai's DistributedDL over gloo on CPU)
from fastai_mtl.weighting import DWA, TaskLossSums
from fastai_mtl.recorder import TaskLossRecorder


class LocalSums(Callback):
    "This rank's own per-task sums and counts for each epoch, without reduction"
    def before_fit(self): self.rows = []
    def before_train(self): self.sums = TaskLossSums(len(self.learn.loss_func.tasks))
    def after_loss(self):
        if self.training: self.sums.add(self.learn.loss_func.last_losses, self.learn.loss_func.last_counts)
    def after_train(self): self.rows.append((self.sums.sums.tolist(), self.sums.counts.tolist()))

def main(out):
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    path, df = synth_shapes(96, size=32, seed=0, missing={'mask': 0.5, 'colour': 0.2, 'box': 0.3})
    tasks = [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('colour'), BoxTask()]
    dls = MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=8, num_workers=0)
    set_seed(rank, reproducible=True)  # different seeds: DDP must broadcast rank 0's initial weights
    body = nn.Sequential(ConvLayer(3, 8, stride=2), ConvLayer(8, 16, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    learn = mtl_learner(dls, body, pretrained=False, cut=-3, decoder='light', weighting='dwa', cbs=[LocalSums(), TaskLossRecorder()])
    learn.remove_cb(ProgressCallback)
    with warnings.catch_warnings(), learn.distrib_ctx(sync_bn=False, cpu=True):  # gloo on CPU; SyncBatchNorm needs a GPU
        warnings.simplefilter('ignore')
        learn.fit(4, 1e-2)
    h = learn.weighting.history_
    res = dict(rank=rank, world_size=dist.get_world_size(), losses=h['losses'].tolist(), counts=h['counts'].tolist(),
               weights=h['weights'].tolist(), local=learn.local_sums.rows,
               recorder=learn.task_loss_recorder.df.filter(like='_train').values.tolist())
    Path(out, f'rank{rank}.json').write_text(json.dumps(res))
    dist.destroy_process_group()

if __name__ == '__main__': main(sys.argv[1])

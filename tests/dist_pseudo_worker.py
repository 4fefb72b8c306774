"""One process of the distributed PseudoLabel test (`tests/test_distributed.py` starts two with `torch.distributed.run`).

Each rank trains the same model (same seed) with `PseudoLabel` inside `learn.distrib_ctx()` (gloo on CPU): the student's
second forward pass (the strong view) happens before the one backward pass, which DDP must accept; the ranks' models
and teachers must stay identical. Writes `OUT_DIR/rank{r}.json`.
"""
import json, sys, warnings
from pathlib import Path
import torch, torch.distributed as dist
from fastai.vision.all import ProgressCallback, set_seed
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
from fastai_mtl.demo import demo_body
from fastai_mtl.pseudo import PseudoLabel
import dist_gloo  # noqa: F401  (fastai's DistributedDL over gloo on CPU)

def main(out):
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    set_seed(0, reproducible=True)
    path, df = synth_shapes(100, size=32, seed=0, missing={'mask': 0.5, 'colour': 0.2, 'box': 0.3})
    tasks = [SegmentationTask('mask', SHAPE_CODES, decoder='light'), ClassificationTask('colour'), BoxTask()]
    dls = MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=10, num_workers=0)
    pl = PseudoLabel(thresholds={'mask': 0., 'colour': 0., 'box': 0.}, ramp=0.)
    learn = mtl_learner(dls, demo_body(widths=(8, 16)), pretrained=False, cbs=pl)
    learn.remove_cb(ProgressCallback)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with learn.distrib_ctx(sync_bn=False, cpu=True), learn.no_logging(): learn.fit(1, 3e-3)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()]).tolist()
    Path(out, f'rank{rank}.json').write_text(json.dumps(dict(rank=rank, history=pl.df.to_dict('records'),
                                                             model=flat(learn.model), teacher=flat(pl.teacher))))
    dist.destroy_process_group()

if __name__ == '__main__': main(sys.argv[1])

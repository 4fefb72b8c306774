"""One process of the distributed metrics test (`tests/test_distributed.py` starts two with `torch.distributed.run`).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_metrics_worker.py OUT_DIR

Each rank builds the same DataLoaders and model (same seed), validates inside `learn.distrib_ctx()` (each rank sees
half of the validation set, gloo on CPU), and writes `OUT_DIR/rank{r}.json`: the per-task validation metrics, and
those of a plain single-process `validate` of the same model on the whole set.
"""
import json, sys, warnings
from pathlib import Path
import torch, torch.distributed as dist
from fastai.vision.all import ProgressCallback, set_seed
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
import dist_gloo  # noqa: F401  (fastai's DistributedDL over gloo on CPU)
from fastai_mtl.demo import demo_body

def main(out):
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    set_seed(0, reproducible=True)                         # the same model and batches in every process
    path, df = synth_shapes(100, size=32, seed=0, missing={'mask': 0.5, 'colour': 0.2, 'box': 0.3})
    tasks = [SegmentationTask('mask', SHAPE_CODES, decoder='light'), ClassificationTask('colour'), BoxTask()]
    # 20 validation images in batches of 5: two per rank and batch, no padding (a padded set would repeat items)
    dls = MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=10, num_workers=0)
    learn = mtl_learner(dls, demo_body(widths=(8, 16)), pretrained=False)
    learn.remove_cb(ProgressCallback)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with learn.no_logging(): learn.fit(2, 3e-3)          # some training, in this process alone: not a fresh model
        names = learn.recorder.metric_names[2:-1]           # valid_loss, then the per-task metrics
        single = learn.validate()                           # every rank: the recorder's reductions are collective
        with learn.distrib_ctx(sync_bn=False, cpu=True), learn.no_logging():
            res = learn.validate(dl=dls.valid.new(bs=5))
    Path(out, f'rank{rank}.json').write_text(json.dumps(dict(
        rank=rank, world_size=dist.get_world_size(), names=list(names), n_valid=len(dls.valid.dataset),
        ddp=[None if v is None else float(v) for v in res], single=None if single is None else [None if v is None else float(v) for v in single])))
    dist.destroy_process_group()

if __name__ == '__main__': main(sys.argv[1])
